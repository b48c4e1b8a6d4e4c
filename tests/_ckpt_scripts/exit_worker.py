"""Interpreter-exit worker for tests/test_checkpoint_exit.py: a pending async save at exit.

Usage: exit_worker.py MODE DIR

Modes (each starts one asynchronous save of ``common.big_model()`` with a random
kernel -- slow enough to be pending at exit -- and never calls close()):
  main       from the main module's top level, then the script ends
  thread     the Checkpointer is made and saved from a worker thread, then the script ends
  sysexit    as main, then ``sys.exit(0)``
  late       the Checkpointer is made in the main module; a non-daemon thread saves after
             the main module has returned (the exit callback has run by then)
  unwind     prints the cost of an exception unwinding 5 frames before a Checkpointer,
             while one is open and after close(), and whether hooks remain (JSON)

The same code runs under ``python -c`` (see the test): ``run(mode, directory)``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import nnx_momentum as nm  # noqa: E402
from nnx_momentum.checkpoint import lifecycle  # noqa: E402


def saved_kernel() -> jax.Array:
    """The kernel the worker saves: 3 + random noise (incompressible: a slow write)."""
    return 3.0 + jax.random.uniform(jax.random.key(0), (1024, 2048), jnp.float32)


def pending_save(directory: str) -> nm.Checkpointer:
    """One asynchronous save of step 3 (kernel :func:`saved_kernel`), left pending."""
    model = common.big_model()
    opt = nm.MomentumOptimizer(model, lr=0.1)
    common.fill(model, opt, 3.0)
    model.kernel.set_value(saved_kernel())
    ckpt = nm.Checkpointer(directory)
    ckpt.save(3, model, opt, extra={"step": 3})
    print("RETURNING", flush=True)
    return ckpt


def _raise(depth: int) -> None:
    if depth:
        _raise(depth - 1)
    raise KeyError(depth)


def _unwind_cost(n: int = 10000, repeats: int = 15) -> float:
    """Best-of-``repeats`` seconds per raise-and-catch through 5 frames."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            try:
                _raise(5)
            except KeyError:
                pass
        best = min(best, time.perf_counter() - t0)
    return best / n


def unwind_report(directory: str) -> dict[str, object]:
    before = _unwind_cost()
    ckpt = pending_save(directory)
    ckpt.wait_until_finished()
    installed_while_open = lifecycle.exit_hooks_installed()
    monitoring = getattr(sys, "monitoring", None)
    global_events = (
        {i: monitoring.get_events(i) for i in range(6) if monitoring.get_tool(i)}
        if monitoring
        else {}
    )
    during = _unwind_cost()
    ckpt.close()
    after = _unwind_cost()
    tools = [monitoring.get_tool(i) for i in range(6)] if monitoring else []
    return {
        "before": before,
        "during": during,
        "after": after,
        "installed_while_open": installed_while_open,
        "global_events_while_open": global_events,
        "installed_after_close": lifecycle.exit_hooks_installed(),
        "threading_hooks": [
            getattr(h, "func", h).__name__
            for h in getattr(threading, "_threading_atexits", [])
            if getattr(getattr(h, "func", h), "__module__", "").startswith("nnx_momentum")
        ],
        "monitoring_tools": [t for t in tools if t],
    }


def run(mode: str, directory: str) -> None:
    if mode == "main":
        pending_save(directory)
    elif mode == "thread":
        worker = threading.Thread(target=pending_save, args=(directory,))
        worker.start()
        worker.join()
    elif mode == "late":
        ckpt = nm.Checkpointer(directory)

        def save_late() -> None:
            time.sleep(1.0)  # the main module has returned meanwhile
            model = common.big_model()
            opt = nm.MomentumOptimizer(model, lr=0.1)
            common.fill(model, opt, 3.0)
            model.kernel.set_value(saved_kernel())
            ckpt.save(3, model, opt, extra={"step": 3})

        threading.Thread(target=save_late).start()
        print("RETURNING", flush=True)
    elif mode == "sysexit":
        pending_save(directory)
        sys.exit(0)
    elif mode == "unwind":
        print(json.dumps(unwind_report(directory)), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    run(*sys.argv[1:])
