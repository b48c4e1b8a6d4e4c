"""4. Checkpoints: Checkpointer, bare orbax and np.save of the same arrays; orbax settings.

The state (model + optimizer velocity, 128 MB) is written to the same disk by:

- ``nm.Checkpointer``: a synchronous save, an asynchronous one (how long ``save``
  blocks the training loop, and how long until it is committed), and ``restore``
  into the live objects;
- a bare orbax ``CheckpointManager`` with the same items and handler
  (``StandardCheckpointHandler``: OCDBT, zarr2, zstd) -- what the Checkpointer
  costs over orbax itself;
- ``np.save`` / ``np.load`` of every array (the plain-file floor);
- bare orbax with other settings (compression, OCDBT, zarr3, concurrency and
  OCDBT file/chunk sizes), on this state and on one of many small leaves, all
  restored by a plain ``StandardCheckpointHandler`` to check they stay readable.

Every candidate runs in interleaved repeats (A B C ... A B C ...) and the best
repeat counts. No side calls fsync: all measure writes into the page cache plus
whatever the kernel flushes meanwhile, as a training loop sees them.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

import nnx_momentum as nm
from benchmarks._common import MLP, check, fmt, n_params
from nnx_momentum.checkpoint import Checkpointer

MB = 2**20
DEFAULT = "orbax default: OCDBT, zarr2, zstd (the Checkpointer's)"


def _arrays(model: Any, opt: Any) -> list[np.ndarray]:
    leaves = jax.tree.leaves(nnx.state(model)) + jax.tree.leaves(nnx.state(opt, nnx.OptState))
    return [np.asarray(x) for x in leaves if hasattr(x, "shape")]


def _items(model: Any, opt: Any) -> dict[str, Any]:
    """The two array items a Checkpointer writes, as plain nested dicts of arrays."""
    return {"model": nnx.to_pure_dict(nnx.state(model)), "optimizer": opt.state_dict()}


def _du(path: str) -> tuple[int, int]:
    """(bytes, files) under ``path``."""
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files]
    return sum(sizes), len(sizes)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- bare orbax with a setting -------------------------------------------------------------
class _Orbax:
    """A bare ``CheckpointManager`` (synchronous) writing ``items`` with one setting."""

    def __init__(self, directory: str, setting: dict[str, Any], items: dict[str, Any]) -> None:
        self.pytree = setting.get("pytree", False)
        handler_kw = setting.get("handler", {})
        self.save_kw = dict(setting.get("save", {}))
        chunk = self.save_kw.pop("chunk_byte_size", None)

        def handler() -> Any:
            if self.pytree:
                return ocp.PyTreeCheckpointHandler(**handler_kw)
            return ocp.StandardCheckpointHandler(**handler_kw)

        self.directory = directory
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False, max_to_keep=1, create=True
            ),
            item_handlers={name: handler() for name in items},
        )
        self.items = items
        self.targets = {
            name: jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), item
            )
            for name, item in items.items()
        }
        self.save_args = {
            name: jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=chunk), item)
            if chunk
            else None
            for name, item in items.items()
        }

    def save(self, step: int) -> None:
        args = {}
        for name, item in self.items.items():
            if self.pytree:
                save_args = self.save_args[name]
                args[name] = ocp.args.PyTreeSave(item, save_args=save_args, **self.save_kw)
            else:
                args[name] = ocp.args.StandardSave(item)
        self.manager.save(step, args=ocp.args.Composite(**args))
        self.manager.wait_until_finished()

    def restore(self, step: int) -> Any:
        args = {}
        for name, target in self.targets.items():
            if self.pytree:
                restore_args = ocp.checkpoint_utils.construct_restore_args(target)
                args[name] = ocp.args.PyTreeRestore(target, restore_args=restore_args)
            else:
                args[name] = ocp.args.StandardRestore(target)
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        restored = {name: out[name] for name in self.items}
        jax.block_until_ready(restored)
        return restored

    def readable_by_plain_orbax(self, step: int) -> bool:
        """Whether a default ``StandardCheckpointHandler`` restores the step exactly."""
        with ocp.CheckpointManager(
            self.directory, item_handlers={n: ocp.StandardCheckpointHandler() for n in self.items}
        ) as plain:
            out = plain.restore(
                step,
                args=ocp.args.Composite(
                    **{n: ocp.args.StandardRestore(t) for n, t in self.targets.items()}
                ),
            )
            return all(
                np.array_equal(np.asarray(a), np.asarray(b))
                for name in self.items
                for a, b in zip(
                    jax.tree.leaves(out[name]), jax.tree.leaves(self.items[name]), strict=True
                )
            )

    def close(self) -> None:
        self.manager.close()


SETTINGS: dict[str, dict[str, Any]] = {
    DEFAULT: {},
    "use_compression=False (OCDBT, zarr2)": {
        "pytree": True,
        "handler": {"use_compression": False},
    },
    "use_zarr3=True, use_compression=False (OCDBT)": {
        "pytree": True,
        "handler": {"use_zarr3": True, "use_compression": False},
    },
    "zarr3, no compression, 16 MB OCDBT files and chunks": {
        "pytree": True,
        "handler": {"use_zarr3": True, "use_compression": False},
        "save": {"ocdbt_target_data_file_size": 16 * MB, "chunk_byte_size": 16 * MB},
    },
    "use_ocdbt=False (zarr2, zstd)": {"handler": {"use_ocdbt": False}},
    "use_ocdbt=False, use_compression=False": {
        "pytree": True,
        "handler": {"use_ocdbt": False, "use_compression": False},
    },
    "no compression, save/restore_concurrent_gb=1": {
        "pytree": True,
        "handler": {"use_compression": False, "save_concurrent_gb": 1, "restore_concurrent_gb": 1},
    },
}
MANY_LEAVES = (
    DEFAULT,
    "use_compression=False (OCDBT, zarr2)",
    "use_zarr3=True, use_compression=False (OCDBT)",
    "use_ocdbt=False, use_compression=False",
)


def _state(sizes: list[int]) -> tuple[Any, Any]:
    model = MLP(sizes, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=1e-3, momentum=0.9)
    # Non-zero velocity, as in training.
    grads = jax.tree.map(lambda v: v * 1e-3, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    return model, opt


def _sweep(
    root: str, label: str, items: dict[str, Any], names: tuple[str, ...], repeats: int
) -> list[dict[str, Any]]:
    """Save + restore with each setting, interleaved; the best repeat of each."""
    writers = {
        name: _Orbax(os.path.join(root, f"{label}-{i}"), SETTINGS[name], items)
        for i, name in enumerate(names)
    }
    times: dict[str, list[list[float]]] = {name: [[], []] for name in names}
    try:
        for r in range(repeats):
            for name, w in writers.items():
                times[name][0].append(_timed(functools.partial(w.save, r + 1)))
                times[name][1].append(_timed(functools.partial(w.restore, r + 1)))
        out = []
        for name, w in writers.items():
            size, files = _du(os.path.join(w.directory, str(repeats)))
            out.append(
                {
                    "setting": name,
                    "save": min(times[name][0]),
                    "restore": min(times[name][1]),
                    "bytes": size,
                    "files": files,
                    "readable": w.readable_by_plain_orbax(repeats),
                }
            )
        return out
    finally:
        for w in writers.values():
            w.close()


def run(smoke: bool) -> dict[str, Any]:
    sizes = [16, 32, 10] if smoke else [2048, 4096, 2048]
    many_sizes = [16] * 5 if smoke else [512] * 65  # 64 layers: 256 arrays, 128 MB
    repeats = 2 if smoke else 5
    model, opt = _state(sizes)
    items = _items(model, opt)
    n_bytes = sum(a.nbytes for a in _arrays(model, opt))
    root = tempfile.mkdtemp(prefix="nnx_momentum_bench_ckpt_")
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "np.save",
            "np.load",
            "sync save",
            "async blocking",
            "async total",
            "restore",
            "orbax save",
            "orbax restore",
        )
    }
    try:
        sync_dir, async_dir, np_dir = (os.path.join(root, d) for d in ("sync", "async", "np"))
        bare = _Orbax(os.path.join(root, "orbax"), SETTINGS[DEFAULT], items)
        with (
            Checkpointer(sync_dir, async_save=False, max_to_keep=2) as sync,
            Checkpointer(async_dir, async_save=True, max_to_keep=2) as asyn,
        ):
            for r in range(repeats):
                step = r + 1
                shutil.rmtree(np_dir, ignore_errors=True)
                os.makedirs(np_dir)

                def np_save() -> None:
                    for i, a in enumerate(_arrays(model, opt)):
                        np.save(os.path.join(np_dir, f"{i}.npy"), a)

                times["np.save"].append(_timed(np_save))
                times["np.load"].append(
                    _timed(
                        lambda: [
                            np.load(os.path.join(np_dir, f)) for f in sorted(os.listdir(np_dir))
                        ]
                    )
                )
                times["orbax save"].append(_timed(functools.partial(bare.save, step)))
                times["orbax restore"].append(_timed(functools.partial(bare.restore, step)))
                times["sync save"].append(_timed(functools.partial(sync.save, step, model, opt)))
                t0 = time.perf_counter()
                asyn.save(step, model, opt)
                times["async blocking"].append(time.perf_counter() - t0)
                asyn.wait_until_finished()
                times["async total"].append(time.perf_counter() - t0)
                times["restore"].append(
                    _timed(functools.partial(sync.restore, model, opt, step=step))
                )
        bare.close()
        on_disk = _du(os.path.join(sync_dir, str(repeats)))[0]
        sweep = _sweep(root, "few", items, tuple(SETTINGS), repeats)
        many_model, many_opt = _state(many_sizes)
        many_items = _items(many_model, many_opt)
        many_bytes = sum(a.nbytes for a in _arrays(many_model, many_opt))
        many_arrays = len(_arrays(many_model, many_opt))
        many = _sweep(root, "many", many_items, MANY_LEAVES, max(2, repeats - 2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    t = {k: min(v) for k, v in times.items()}
    mb = n_bytes / MB
    n_arrays = len(_arrays(model, opt))
    rows = [
        [
            "np.save, one .npy per array (floor)",
            fmt(t["np.save"] * 1e3),
            fmt(mb / t["np.save"]),
            "1",
            "",
        ],
        [
            "bare orbax CheckpointManager save (default settings)",
            fmt(t["orbax save"] * 1e3),
            fmt(mb / t["orbax save"]),
            fmt(t["orbax save"] / t["np.save"]),
            "1",
        ],
        [
            "Checkpointer.save, synchronous",
            fmt(t["sync save"] * 1e3),
            fmt(mb / t["sync save"]),
            fmt(t["sync save"] / t["np.save"]),
            fmt(t["sync save"] / t["orbax save"]),
        ],
        [
            "Checkpointer.save, async: time save() blocks",
            fmt(t["async blocking"] * 1e3),
            "",
            fmt(t["async blocking"] / t["np.save"]),
            fmt(t["async blocking"] / t["orbax save"]),
        ],
        [
            "Checkpointer.save, async: until committed",
            fmt(t["async total"] * 1e3),
            fmt(mb / t["async total"]),
            fmt(t["async total"] / t["np.save"]),
            fmt(t["async total"] / t["orbax save"]),
        ],
        ["np.load (floor)", fmt(t["np.load"] * 1e3), fmt(mb / t["np.load"]), "", ""],
        [
            "bare orbax CheckpointManager restore (default settings)",
            fmt(t["orbax restore"] * 1e3),
            fmt(mb / t["orbax restore"]),
            f"{fmt(t['orbax restore'] / t['np.load'])} x np.load",
            "1",
        ],
        [
            "Checkpointer.restore (into the live model + optimizer)",
            fmt(t["restore"] * 1e3),
            fmt(mb / t["restore"]),
            f"{fmt(t['restore'] / t['np.load'])} x np.load",
            fmt(t["restore"] / t["orbax restore"]),
        ],
    ]
    base = {res["setting"]: res for res in sweep}[DEFAULT]
    many_base = {res["setting"]: res for res in many}[DEFAULT]
    setting_rows = []
    for label, results, ref in (
        (f"{n_arrays} arrays, {fmt(mb)} MB", sweep, base),
        (f"{many_arrays} arrays, {fmt(many_bytes / MB)} MB", many, many_base),
    ):
        for res in results:
            setting_rows.append(
                [
                    label,
                    res["setting"],
                    fmt(res["save"] * 1e3),
                    fmt(res["restore"] * 1e3),
                    f"{res['save'] / ref['save']:.2f}",
                    f"{res['restore'] / ref['restore']:.2f}",
                    fmt(res["bytes"] / MB),
                    str(res["files"]),
                    "yes" if res["readable"] else "**no**",
                ]
            )
    fastest = min(sweep, key=lambda res: float(res["save"] + res["restore"]))
    blocking = t["async blocking"] / t["sync save"]
    checks = [
        check(
            "async save: time the loop is blocked vs a synchronous save",
            "<= 10%",
            f"{blocking:.0%}",
            blocking <= 0.10,
        ),
        check(
            "Checkpointer sync save vs bare orbax save of the same arrays (same settings)",
            "reported (~1x)",
            f"{t['sync save'] / t['orbax save']:.2f}x",
            None,
        ),
        check(
            "Checkpointer restore vs bare orbax restore of the same arrays",
            "reported (~1x)",
            f"{t['restore'] / t['orbax restore']:.2f}x",
            None,
        ),
        check(
            "sync save / restore vs np.save / np.load of the same bytes",
            "reported",
            f"{t['sync save'] / t['np.save']:.2f}x / {t['restore'] / t['np.load']:.2f}x",
            None,
        ),
        check(
            f"fastest orbax setting here ({n_arrays} arrays), save + restore vs the default",
            "reported",
            f"{fastest['setting']}: {fastest['save'] / base['save']:.2f}x save, "
            f"{fastest['restore'] / base['restore']:.2f}x restore",
            None,
        ),
    ]
    notes = [
        f"State: MLP {'-'.join(map(str, sizes))} ({n_params(model):,} params) + MomentumOptimizer "
        f"(velocity, step, schedule) = {fmt(mb)} MB in {n_arrays} arrays "
        f"({fmt(on_disk / MB)} MB on disk per Checkpointer step); best of {repeats} interleaved "
        f"repeats; one temporary directory on the same disk for every writer "
        f"({tempfile.gettempdir()}). Last column: time relative to the bare orbax default.",
        f"Settings: bare orbax CheckpointManager, synchronous, the same two items; the "
        f"'{many_arrays} arrays' rows use an MLP of {len(many_sizes) - 1} layers of "
        f"{many_sizes[0]}x{many_sizes[0]} ({fmt(many_bytes / MB)} MB). PyTreeCheckpointHandler "
        "takes use_compression (StandardCheckpointHandler does not); 'readable by plain orbax' "
        "means a default StandardCheckpointHandler restored the step bit for bit (the format "
        "is recorded in the checkpoint's metadata, so readers need no setting).",
        "f32 optimizer state barely compresses (zstd saves ~8% here) while compressing it "
        "costs CPU on every save; OCDBT keeps the file count flat, which matters with many "
        "leaves (one directory per array without it).",
    ]
    if smoke:
        notes.append(
            "Smoke sizes: fixed per-save costs (orbax set-up, JSON item, commit file) dominate."
        )
    return {
        "title": "4. Checkpoints (save/restore vs bare orbax and plain files; orbax settings)",
        "columns": ["operation", "ms (min)", "MB/s", "x np.save", "x bare orbax"],
        "rows": rows,
        "notes": notes,
        "checks": checks,
        "tables": [
            {
                "title": "orbax settings (bare CheckpointManager, synchronous, same arrays)",
                "columns": [
                    "state",
                    "setting",
                    "save ms (min)",
                    "restore ms (min)",
                    "save x default",
                    "restore x default",
                    "on disk MB",
                    "files",
                    "plain orbax reads it",
                ],
                "rows": setting_rows,
            }
        ],
        "plot": {
            "kind": "barh",
            "labels": [r[0] for r in rows],
            "values": [float(r[1].replace(",", "")) for r in rows],
            "xlabel": f"ms for {fmt(mb)} MB",
        },
    }
