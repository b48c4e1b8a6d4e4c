"""Checkpointer costs over a long run: memory per save vs orbax, and exception-unwind cost.

    python benchmarks/checkpoint_process.py            # 2 x 2000 saves, ~1-2 minutes
    python benchmarks/checkpoint_process.py --saves 300

Memory: one process saves a small model and its optimizer thousands of times
with ``nm.Checkpointer`` and with a bare orbax ``CheckpointManager`` writing
the same items (two ``StandardSave`` array items and a JSON item, async,
``max_to_keep=2``), in interleaved blocks (A B A B ...), so both see the same
allocator and load; each block's resident-set growth is charged to the
candidate that ran it. The result is KiB per save for each, and their ratio
(the target: no worse than orbax's own, <= 1.10 with noise).

Unwind: the cost of an exception raised and caught through 5 frames, before a
Checkpointer exists, while one is open (with a pending save committed), and
after ``close()`` -- what any code of the process pays for the checkpointer's
exit machinery (the target: unchanged).

Also ``run(smoke)`` in the suite's result format (``benchmarks/_common.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from flax import nnx  # noqa: E402

import nnx_momentum as nm  # noqa: E402
from nnx_momentum.checkpoint import Checkpointer, targets  # noqa: E402

KIB = 1024


def _rss() -> int:
    """Resident set size in bytes (Linux ``/proc``; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # noqa: PLC0415

        return int(psutil.Process().memory_info().rss)


def _objects() -> tuple[Any, Any]:
    model = nnx.Linear(16, 16, rngs=nnx.Rngs(0))
    return model, nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=10), momentum=0.9)


class _BareOrbax:
    """What a user of orbax alone writes: the same three items, async, max_to_keep=2."""

    def __init__(self, directory: str) -> None:
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True),
            item_handlers={
                "model": ocp.StandardCheckpointHandler(),
                "optimizer": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def save(self, step: int, model: Any, optimizer: Any) -> None:
        items = {
            "model": nnx.to_pure_dict(nnx.state(model)),
            "optimizer": nnx.to_pure_dict(targets.optimizer_state(optimizer)),
        }
        args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
        meta = {"step": step, "extra": {"i": step}}
        self.manager.save(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonSave(meta)))

    def close(self) -> None:
        self.manager.close()


class _Ours:
    def __init__(self, directory: str) -> None:
        self.ckpt = Checkpointer(directory, max_to_keep=2)

    def save(self, step: int, model: Any, optimizer: Any) -> None:
        self.ckpt.save(step, model, optimizer, extra={"i": step})

    def close(self) -> None:
        self.ckpt.close()


def memory_per_save(saves: int, blocks: int = 8, warmup: int = 100) -> dict[str, float]:
    """KiB of resident memory per save, for orbax alone and the Checkpointer."""
    model, opt = _objects()
    root = tempfile.mkdtemp(prefix="nnx_momentum_bench_mem_")
    candidates = {
        "orbax": _BareOrbax(os.path.join(root, "orbax")),
        "nnx_momentum": _Ours(os.path.join(root, "ours")),
    }
    step = dict.fromkeys(candidates, 0)
    growth = dict.fromkeys(candidates, 0)
    timing = dict.fromkeys(candidates, 0.0)
    try:
        for name, c in candidates.items():  # warm-up: caches, compiled functions, pools
            for _ in range(warmup):
                step[name] += 1
                c.save(step[name], model, opt)
        per_block = max(1, saves // blocks)
        for _ in range(blocks):
            for name, c in candidates.items():
                gc.collect()
                before, t0 = _rss(), time.perf_counter()
                for _ in range(per_block):
                    step[name] += 1
                    c.save(step[name], model, opt)
                gc.collect()
                timing[name] += time.perf_counter() - t0
                growth[name] += _rss() - before
    finally:
        for c in candidates.values():
            c.close()
        import shutil  # noqa: PLC0415

        shutil.rmtree(root, ignore_errors=True)
    n = per_block * blocks
    out = {f"{name} KiB/save": growth[name] / n / KIB for name in candidates}
    out.update({f"{name} ms/save": timing[name] / n * 1e3 for name in candidates})
    out["saves each"] = n
    floor = max(out["orbax KiB/save"], 1.0)  # a ratio to ~0 growth says nothing
    out["ratio"] = out["nnx_momentum KiB/save"] / floor
    return out


def _raise(depth: int) -> None:
    if depth:
        _raise(depth - 1)
    raise KeyError(depth)


def _unwind_ns(n: int = 10000, repeats: int = 15) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            try:
                _raise(5)
            except KeyError:
                pass
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e9


def unwind_cost() -> dict[str, float]:
    """ns per raise-and-catch through 5 frames: before, with a Checkpointer open, after close."""
    model, opt = _objects()
    before = _unwind_ns()
    with tempfile.TemporaryDirectory() as d:
        ckpt = Checkpointer(d)
        ckpt.save(1, model, opt)
        ckpt.wait_until_finished()
        during = _unwind_ns()
        ckpt.close()
    after = _unwind_ns()
    return {
        "before ns": before,
        "open ns": during,
        "after close ns": after,
        "open ratio": during / before,
        "after ratio": after / before,
    }


def run(smoke: bool) -> dict[str, Any]:
    """The suite's result: memory per save (vs orbax) and the unwind cost."""
    mem = memory_per_save(200 if smoke else 2000, warmup=20 if smoke else 100)
    unwind = unwind_cost()
    rows = [
        [
            "orbax CheckpointManager alone",
            f"{mem['orbax KiB/save']:.1f}",
            f"{mem['orbax ms/save']:.1f}",
        ],
        [
            "nm.Checkpointer",
            f"{mem['nnx_momentum KiB/save']:.1f}",
            f"{mem['nnx_momentum ms/save']:.1f}",
        ],
    ]
    checks = [
        {
            "name": f"memory growth per save vs orbax alone ({mem['saves each']} saves each)",
            "target": "<= 1.10x",
            "value": f"{mem['ratio']:.2f}x",
            "ok": None if smoke else mem["ratio"] <= 1.10,
        },
        {
            "name": "exception unwind with a Checkpointer open vs before",
            "target": "<= 1.10x",
            "value": f"{unwind['open ratio']:.2f}x ({unwind['before ns']:.0f} -> "
            f"{unwind['open ns']:.0f} ns)",
            "ok": None if smoke else unwind["open ratio"] <= 1.10,
        },
    ]
    return {
        "title": "4b. Checkpointer over a long run (memory per save, unwind cost)",
        "columns": ["writer", "KiB per save (RSS growth)", "ms per save"],
        "rows": rows,
        "notes": [f"jax {jax.__version__}, Python {sys.version.split()[0]}"],
        "checks": checks,
        "memory": mem,
        "unwind": unwind,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--saves", type=int, default=2000, help="saves per candidate")
    args = p.parse_args()
    print(json.dumps({"memory": memory_per_save(args.saves), "unwind": unwind_cost()}, indent=1))


if __name__ == "__main__":
    main()
