"""The on-disk format of the array items: plain orbax reads it, older formats still restore.

nnx_momentum.checkpoint.items: ``model`` and ``optimizer`` are written by orbax's
``PyTreeCheckpointHandler`` with ``use_zarr3=True, use_compression=False`` (OCDBT kept),
the fastest setting in ``benchmarks/checkpoint.py``. A checkpoint written so is read by
orbax alone -- a ``CheckpointManager`` with the handlers a 0.1 user registered, a
``StandardCheckpointer`` or a ``PyTreeCheckpointer`` -- bit for bit; one written with
orbax's defaults (zarr2, zstd: nnx_momentum 0.1) restores next to new steps
in the same directory. A restore validates from the JSON item's ``arrays`` and reads both
array items in one orbax call; for an old step it falls back to orbax's metadata.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import nnx_momentum as nm
from nnx_momentum.checkpoint import Checkpointer

sys.path.insert(0, str(Path(__file__).parent / "_ckpt_scripts"))
import common  # noqa: E402

V0_1 = Path(__file__).parent / "data" / "ckpt_v0_1"


def _trained(seed: int = 0, steps: int = 2):
    model = common.Net(seed=seed)  # Params, BatchStats, Dropout RNG keys
    opt = common.make_optimizer("opt", model)
    for i in range(steps):
        common.train_step("opt", model, opt, i)
    return model, opt


def _nest(flat: dict[str, np.ndarray], prefix: str) -> dict:
    """``{'model/fc1/kernel': x} -> {'fc1': {'kernel': x}}`` for one prefix."""
    out: dict = {}
    for key, value in flat.items():
        head, *path = key.split("/")
        if head != prefix:
            continue
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def _abstract(tree: dict) -> dict:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), tree)


def _same_tree(got: dict, want: dict) -> None:
    got_flat, want_flat = (
        {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(t)}
        for t in (got, want)
    )
    assert got_flat.keys() == want_flat.keys()
    for key, value in want_flat.items():
        assert got_flat[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got_flat[key], value, err_msg=key)


def _pytree_metadata(item_dir: Path) -> dict:
    with open(item_dir / "_METADATA") as f:
        meta = json.load(f)
    return {k: v for k, v in meta.items() if k != "tree_metadata"}


@pytest.mark.parametrize("async_save", [True, False])
def test_new_checkpoints_are_readable_by_plain_orbax(tmp_path, async_save):
    model, opt = _trained()
    with Checkpointer(tmp_path, async_save=async_save) as ckpt:
        assert ckpt.save(2, model, opt, extra={"next": 2})
    step_dir = tmp_path / "2"
    for item in ("model", "optimizer"):
        assert _pytree_metadata(step_dir / item)["use_zarr3"] is True
        assert _pytree_metadata(step_dir / item)["use_ocdbt"] is True
    want = common.flat_arrays(model, opt)
    want_model, want_opt = _nest(want, "model"), _nest(want, "opt")

    # 1. A CheckpointManager with the handlers a 0.1 user registered.
    handlers = {
        "model": ocp.StandardCheckpointHandler(),
        "optimizer": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }
    with ocp.CheckpointManager(tmp_path, item_handlers=handlers) as manager:
        assert manager.all_steps() == [2]
        out = manager.restore(
            2,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(_abstract(want_model)),
                optimizer=ocp.args.StandardRestore(_abstract(want_opt)),
                meta=ocp.args.JsonRestore(),
            ),
        )
    _same_tree(out["model"], want_model)
    _same_tree(out["optimizer"], want_opt)
    assert out["meta"]["extra"] == {"next": 2}

    # 2. The one-item checkpointers, on the item folders.
    got = ocp.StandardCheckpointer().restore(step_dir / "model", _abstract(want_model))
    _same_tree(got, want_model)
    target = _abstract(want_opt)
    with ocp.PyTreeCheckpointer() as plain:  # its default is zarr2 + zstd: read from metadata
        got = plain.restore(
            step_dir / "optimizer",
            args=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
            ),
        )
    _same_tree(got, want_opt)


def test_array_items_are_not_compressed(tmp_path):
    # Zeros compress to almost nothing with zstd: uncompressed, the bytes are all there.
    model = nnx.Linear(256, 256, kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)  # zero velocity too
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model, opt)
    for item in ("model", "optimizer"):
        files = [p for p in (tmp_path / "1" / item).rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in files) >= 256 * 256 * 4, item


def test_restore_reads_both_items_in_one_orbax_call(tmp_path, monkeypatch):
    model, opt = _trained()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, model, opt)
    calls: list[list[str]] = []
    metadata_calls: list[int] = []
    restore = ocp.CheckpointManager.restore
    item_metadata = ocp.CheckpointManager.item_metadata

    def counting(self, step, *args, **kwargs):
        calls.append(sorted(kwargs["args"].keys()))
        return restore(self, step, *args, **kwargs)

    def counting_metadata(self, step):
        metadata_calls.append(step)
        return item_metadata(self, step)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", counting)
    monkeypatch.setattr(ocp.CheckpointManager, "item_metadata", counting_metadata)
    fresh = common.Net(seed=5)
    fresh_opt = common.make_optimizer("opt", fresh)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore(fresh, fresh_opt) == 2
        assert calls == [["model", "optimizer"]]
        assert ckpt.restore(fresh) == 2
        assert calls[-1] == ["model"]
        meta = ckpt.metadata()
    assert len(calls) == 2  # the JSON item is read without the manager
    # the array items' own metadata is read once per restore, to check the JSON item
    assert metadata_calls == [2, 2]
    assert meta["arrays"]["model"]["fc1/kernel"] == {"shape": [8, 16], "dtype": "float32"}
    assert meta["arrays"]["model"]["drop/rngs/key"] == {"shape": [2], "dtype": "uint32"}
    assert meta["arrays"]["optimizer"].keys() == set(
        k.removeprefix("opt/") for k in common.flat_arrays(model, opt) if k.startswith("opt/")
    )
    _same = common.flat_arrays(fresh, fresh_opt)
    for key, value in common.flat_arrays(model, opt).items():
        np.testing.assert_array_equal(_same[key], value, err_msg=key)


def test_json_item_disagreeing_with_the_array_item_is_refused(tmp_path):
    """A bfloat16 array item whose JSON says float32 never restores with a silent cast."""
    model = nnx.Linear(2, 3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    model.kernel[...] = jnp.full((2, 3), 1.3, jnp.bfloat16)  # 1.296875 in bfloat16
    opt = nm.MomentumOptimizer(model, lr=0.1)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, model, opt)
    meta_file = tmp_path / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    for item in ("model", "optimizer"):
        for info in meta["arrays"][item].values():
            info["dtype"] = info["dtype"].replace("bfloat16", "float32")
    meta_file.write_text(json.dumps(meta))
    live = nnx.Linear(2, 3, rngs=nnx.Rngs(1))  # float32, as the altered JSON says
    before = np.asarray(live.kernel[...])
    with (
        Checkpointer(tmp_path) as ckpt,
        pytest.raises(
            ValueError,
            match=r"disagree.*kernel: JSON \(\(2, 3\), 'float32'\), "
            r"array item \(\(2, 3\), 'bfloat16'\)",
        ),
    ):
        ckpt.restore(live)
    np.testing.assert_array_equal(live.kernel[...], before)


def test_old_and_new_format_steps_restore_side_by_side(tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(V0_1, directory)  # step 3: nnx_momentum 0.1.0, zarr2 + zstd
    model = common.Net(seed=7)
    opt = common.make_optimizer("opt", model)
    with Checkpointer(directory) as ckpt:
        assert ckpt.restore(model, opt) == 3
        old = common.flat_arrays(model, opt)
        common.train_step("opt", model, opt, 3)
        assert ckpt.save(4, model, opt)
        new = common.flat_arrays(model, opt)
        assert ckpt.all_steps() == [3, 4]
        for step, want in ((4, new), (3, old), (4, new)):
            fresh = common.Net(seed=8)
            fresh_opt = common.make_optimizer("opt", fresh)
            assert ckpt.restore(fresh, fresh_opt, step=step) == step
            got = common.flat_arrays(fresh, fresh_opt)
            for key, value in want.items():
                np.testing.assert_array_equal(got[key], value, err_msg=f"step {step}: {key}")
    assert _pytree_metadata(directory / "3" / "model")["use_zarr3"] is False
    assert _pytree_metadata(directory / "4" / "model")["use_zarr3"] is True
    assert "arrays" not in json.loads((directory / "3" / "meta" / "metadata").read_text())


def test_old_format_step_is_validated_from_orbax_metadata(tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(V0_1, directory)
    model = common.Net(seed=7)
    model.fc1 = nnx.Linear(8, 17, rngs=nnx.Rngs(0))  # another shape
    opt = common.make_optimizer("opt", model)
    before = common.flat_arrays(model, opt)
    with (
        Checkpointer(directory) as ckpt,
        pytest.raises(
            ValueError,
            match=r"do not match step 3.*\n.*\n  shape +model fc1/bias: \(16,\) -> \(17,\)",
        ),
    ):
        ckpt.restore(model, opt)
    after = common.flat_arrays(model, opt)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_missing_array_item_is_named_and_nothing_is_written(tmp_path):
    model, opt = _trained()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, model, opt)
    shutil.rmtree(tmp_path / "2" / "optimizer")
    fresh = common.Net(seed=5)
    fresh_opt = common.make_optimizer("opt", fresh)
    before = common.flat_arrays(fresh, fresh_opt)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match=r"could not read item 'optimizer' of step 2"):
            ckpt.restore(fresh, fresh_opt)
        after = common.flat_arrays(fresh, fresh_opt)
        for key, value in before.items():
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        assert ckpt.restore(fresh) == 2  # the model item alone is intact
    np.testing.assert_array_equal(fresh.fc1.kernel[...], model.fc1.kernel[...])


def test_recorded_layout_matches_the_arrays_orbax_wrote(tmp_path):
    model = nnx.Linear(3, 5, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    model.count = nnx.BatchStat(7)  # a Python scalar: saved as int32
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model, opt)
        recorded = ckpt.metadata()["arrays"]
    handlers = {item: ocp.PyTreeCheckpointHandler() for item in ("model", "optimizer")}
    with ocp.CheckpointManager(tmp_path, item_handlers=handlers) as manager:
        saved = manager.item_metadata(1)
    for item in ("model", "optimizer"):
        tree = saved[item].tree
        flat = {
            "/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }
        assert flat.keys() == recorded[item].keys(), item
        for key, leaf in flat.items():
            want = {"shape": list(leaf.shape), "dtype": np.dtype(leaf.dtype).name}
            assert recorded[item][key] == want, (item, key)
    assert recorded["model"]["kernel"] == {"shape": [3, 5], "dtype": "bfloat16"}
    assert recorded["model"]["count"] == {"shape": [], "dtype": "int32"}
