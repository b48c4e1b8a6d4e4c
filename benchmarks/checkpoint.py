"""4. Checkpoints: Checkpointer save/restore against np.save of the same bytes.

The state (model + optimizer velocity) is written to the same disk three ways:
a synchronous ``Checkpointer`` save, an asynchronous one (timing both how
long ``save`` blocks the training loop and how long until it is committed),
and ``np.save`` of every array (the plain-file floor). Restore is compared
with ``np.load``. Neither side calls fsync: both measure writes into the page
cache plus whatever the kernel flushes meanwhile, as a training loop sees them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

import nnx_momentum as nm
from benchmarks._common import MLP, check, fmt, n_params
from nnx_momentum.checkpoint import Checkpointer

MB = 2**20


def _arrays(model: Any, opt: Any) -> list[np.ndarray]:
    leaves = jax.tree.leaves(nnx.state(model)) + jax.tree.leaves(nnx.state(opt, nnx.OptState))
    return [np.asarray(x) for x in leaves if hasattr(x, "shape")]


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(smoke: bool) -> dict[str, Any]:
    sizes = [16, 32, 10] if smoke else [2048, 4096, 2048]
    repeats = 2 if smoke else 3
    model = MLP(sizes, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=1e-3, momentum=0.9)
    # Non-zero velocity, as in training.
    grads = jax.tree.map(lambda v: v * 1e-3, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    n_bytes = sum(a.nbytes for a in _arrays(model, opt))
    root = tempfile.mkdtemp(prefix="nnx_momentum_bench_ckpt_")
    times: dict[str, list[float]] = {
        k: []
        for k in ("np.save", "np.load", "sync save", "async blocking", "async total", "restore")
    }
    try:
        sync_dir, async_dir, np_dir = (os.path.join(root, d) for d in ("sync", "async", "np"))
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
                times["sync save"].append(_timed(lambda s=step: sync.save(s, model, opt)))
                t0 = time.perf_counter()
                asyn.save(step, model, opt)
                times["async blocking"].append(time.perf_counter() - t0)
                asyn.wait_until_finished()
                times["async total"].append(time.perf_counter() - t0)
                times["restore"].append(_timed(lambda s=step: sync.restore(model, opt, step=s)))
        on_disk = _du(os.path.join(sync_dir, str(repeats)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    t = {k: min(v) for k, v in times.items()}
    mb = n_bytes / MB
    rows = [
        [
            "np.save, one .npy per array (floor)",
            fmt(t["np.save"] * 1e3),
            fmt(mb / t["np.save"]),
            "1",
        ],
        [
            "Checkpointer.save, synchronous",
            fmt(t["sync save"] * 1e3),
            fmt(mb / t["sync save"]),
            fmt(t["sync save"] / t["np.save"]),
        ],
        [
            "Checkpointer.save, async: time save() blocks",
            fmt(t["async blocking"] * 1e3),
            "",
            fmt(t["async blocking"] / t["np.save"]),
        ],
        [
            "Checkpointer.save, async: until committed",
            fmt(t["async total"] * 1e3),
            fmt(mb / t["async total"]),
            fmt(t["async total"] / t["np.save"]),
        ],
        ["np.load (floor)", fmt(t["np.load"] * 1e3), fmt(mb / t["np.load"]), ""],
        [
            "Checkpointer.restore (into the live model + optimizer)",
            fmt(t["restore"] * 1e3),
            fmt(mb / t["restore"]),
            f"{fmt(t['restore'] / t['np.load'])} x np.load",
        ],
    ]
    blocking = t["async blocking"] / t["sync save"]
    checks = [
        check(
            "async save: time the loop is blocked vs a synchronous save",
            "<= 10%",
            f"{blocking:.0%}",
            blocking <= 0.10,
        ),
        check(
            "sync save time vs np.save of the same bytes",
            "reported",
            f"{t['sync save'] / t['np.save']:.2f}x",
            None,
        ),
        check(
            "restore time vs np.load of the same bytes",
            "reported",
            f"{t['restore'] / t['np.load']:.2f}x",
            None,
        ),
    ]
    notes = [
        f"State: MLP {'-'.join(map(str, sizes))} ({n_params(model):,} params) + MomentumOptimizer "
        f"(velocity, step, schedule) = {fmt(mb)} MB in {len(_arrays(model, opt))} arrays "
        f"({fmt(on_disk / MB)} MB on disk per checkpoint); best of {repeats} repeats; one "
        f"temporary directory on the same disk for every writer ({tempfile.gettempdir()}).",
    ]
    if smoke:
        notes.append(
            "Smoke sizes: fixed per-save costs (orbax set-up, JSON item, commit file) dominate."
        )
    return {
        "title": "4. Checkpoints (save/restore vs plain files)",
        "columns": ["operation", "ms (min)", "MB/s", "x np.save"],
        "rows": rows,
        "notes": notes,
        "checks": checks,
        "plot": {
            "kind": "barh",
            "labels": [r[0] for r in rows],
            "values": [float(r[1].replace(",", "")) for r in rows],
            "xlabel": f"ms for {fmt(mb)} MB",
        },
    }
