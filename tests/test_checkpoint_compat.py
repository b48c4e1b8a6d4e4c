"""Checkpoints written by nnx_momentum 0.1.0 and 0.2.0 still restore, bit for bit, into both faces.

``tests/data/ckpt_v0_1`` was saved by ``tests/data/make_ckpt_v0_1.py`` at the 0.1.0
release (3 updates of ``common.Net`` with ``MomentumOptimizer`` and a ``StepLR``);
``tests/data/ckpt_v0_2_*`` by ``make_ckpt_v0_2.py`` at 0.2.0 (clip-by-value with
Nesterov; two parameter groups). Each ``*_expected.npz`` holds every array it saved,
by path. Those releases placed the velocity by the hyperparameter values
(``inner_state/1``, ``/2``, ...); 0.3 keeps one path per leaf, so the optimizer state
is compared by role (README, "Change a run on resume").
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import nnx_momentum as nm
from nnx_momentum import layout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ckpt_scripts"))
import common  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


def _v0_2_optimizer(name: str, model: nnx.Module):
    spec = importlib.util.spec_from_file_location(
        "make_v0_2", os.path.join(DATA, "make_ckpt_v0_2.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_optimizer(name, model)


def _by_role(model, optimizer) -> dict[str, np.ndarray]:
    """Model arrays by path, optimizer arrays by role (key arrays as key data)."""
    out = {}
    for prefix, state in (("model", nnx.state(model)), ("optimizer", optimizer.state_tree())):
        flat = {}
        for path, var in nnx.to_flat_state(state):
            value = var.get_value()
            if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
                value = jax.random.key_data(value)
            flat["/".join(map(str, path))] = np.asarray(value)
        if prefix == "optimizer":
            flat = layout.rekey(flat)
        out.update({f"{prefix}/{k}": v for k, v in flat.items()})
    return out


def _expected(name: str) -> dict[str, np.ndarray]:
    want = dict(np.load(os.path.join(DATA, f"{name}_expected.npz")))
    model = {k: v for k, v in want.items() if k.startswith("model/")}
    opt = {k.removeprefix("optimizer/"): v for k, v in want.items() if k.startswith("optimizer/")}
    return {**model, **{f"optimizer/{k}": v for k, v in layout.rekey(opt).items()}}


CASES = [
    ("ckpt_v0_1", "opt"),
    ("ckpt_v0_1", "bt"),
    ("ckpt_v0_2_plain", "opt"),
    ("ckpt_v0_2_groups", "opt"),
]


@pytest.mark.parametrize("name, face", CASES)
def test_old_checkpoint_restores_bit_exact(tmp_path, name, face):
    directory = tmp_path / "ckpt"
    shutil.copytree(os.path.join(DATA, name), directory)
    model = common.Net(seed=7)  # other initial values: the restore must overwrite them
    if name == "ckpt_v0_1":
        optimizer = common.make_optimizer(face, model)
    else:
        optimizer = _v0_2_optimizer(name.removeprefix("ckpt_v0_2_"), model)
    with nm.Checkpointer(str(directory)) as ckpt:
        assert ckpt.all_steps() == [3]
        assert ckpt.restore(model, optimizer) == 3
        meta = ckpt.metadata()
    assert meta is not None and meta["extra"] == {"epoch": 1}
    assert meta["format"] == "nnx_momentum.checkpoint/1"
    want, got = _expected(name), _by_role(model, optimizer)
    # State added since 0.1.0 (``since`` metadata) is absent from that checkpoint: it
    # keeps its live value.
    added = {"optimizer/lr/epoch_fraction"} if name == "ckpt_v0_1" else set()
    assert got.keys() - added == want.keys()
    for key in added:
        assert float(got[key]) == 0.0
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert optimizer.step_count == 3
    assert int(optimizer.lr.last_epoch[...]) == (6 if name == "ckpt_v0_1" else 3)


def test_old_checkpoint_refuses_other_hyperparameters(tmp_path):
    """The legacy layout is read by role, but a real difference is still refused."""
    directory = tmp_path / "ckpt"
    shutil.copytree(os.path.join(DATA, "ckpt_v0_1"), directory)
    model = common.Net(seed=7)
    optimizer = common.make_optimizer("opt", model, weight_decay=0.0)
    with nm.Checkpointer(str(directory)) as ckpt:
        with pytest.raises(ValueError, match=r"(?s)hyperparams +weight_decay: 0.001 -> 0.0"):
            ckpt.restore(model, optimizer)


@pytest.mark.parametrize("name", ["ckpt_v0_2_plain", "ckpt_v0_2_groups"])
def test_old_state_dict_loads_by_role(name):
    """A state_dict() saved by 0.2 (the velocity where its hyperparameters put it) loads."""
    want = dict(np.load(os.path.join(DATA, f"{name}_expected.npz")))
    old_paths = {
        tuple(k.removeprefix("optimizer/").split("/")): v
        for k, v in want.items()
        if k.startswith("optimizer/")
    }
    assert any("1" in p and "trace" in p for p in old_paths)  # truly the old layout
    from nnx_momentum import tree

    optimizer = _v0_2_optimizer(name.removeprefix("ckpt_v0_2_"), common.Net(seed=7))
    optimizer.load_state_dict(tree.nest(old_paths))
    got = _by_role(common.Net(seed=7), optimizer)
    for key, value in _expected(name).items():
        if key.startswith("optimizer/"):
            np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert optimizer.step_count == 3
