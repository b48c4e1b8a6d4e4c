"""Shared helpers for the benchmark suite: timing, models, labels.

Every benchmark module exposes ``run(smoke: bool) -> dict`` returning a
*result*: ``{"title", "columns", "rows", "notes", "checks", "plot"}``.
``benchmarks/run.py`` runs each module in its own process and renders the
results into ``results/latest.md`` and ``results/latest.png``.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def device_label() -> str:
    """``'cpu (2 devices: cpu)'``-style label of what jax runs on."""
    devices = jax.devices()
    kind = getattr(devices[0], "device_kind", devices[0].platform)
    return f"{devices[0].platform} x{len(devices)} ({kind})"


def environment() -> dict[str, str]:
    """Versions and machine facts, for the header of the report."""
    import flax
    import optax

    import nnx_momentum

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "nnx_momentum": nnx_momentum.__version__,
        "device": device_label(),
        "machine": f"{platform.machine()}, {_cpu_count()} cores",
    }


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def block(tree: Any) -> None:
    """Waits for every array in ``tree``."""
    jax.block_until_ready(tree)


def time_interleaved(
    runners: Mapping[str, Callable[[int], Any]],
    *,
    iters: int,
    repeats: int,
    warmup: int = 3,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per iteration of each runner, one sample per repeat.

    ``runners[name](n)`` runs ``n`` iterations and blocks until they are done.
    Repeats are interleaved so that background load on a shared machine hits
    every candidate alike, and each repeat starts one candidate later
    (A B C, B C A, C A B, ...) so that none always runs right after the same
    other one (caches, allocator state); take the min or the median.
    With ``cpu``, it also receives this process's CPU seconds per iteration
    (``time.process_time``: all its threads), which other processes' load on a
    shared machine disturbs less than wall time.
    """
    for run in runners.values():
        run(warmup)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    if cpu is not None:
        cpu.update({name: [] for name in runners})
    gc.collect()
    gc.disable()
    try:
        order = list(runners.items())
        for r in range(repeats):
            k = r % len(order)
            for name, run in order[k:] + order[:k]:
                c0, t0 = time.process_time(), time.perf_counter()
                run(iters)
                samples[name].append((time.perf_counter() - t0) / iters)
                if cpu is not None:
                    cpu[name].append((time.process_time() - c0) / iters)
    finally:
        gc.enable()
    return samples


def best(samples: list[float]) -> float:
    """The min over repeats: the least-disturbed measurement."""
    return min(samples)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def fmt(x: float, digits: int = 3) -> str:
    """A compact number for a markdown cell."""
    if x != x:  # NaN
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def check(name: str, target: str, value: str, ok: bool | None) -> dict[str, Any]:
    """One row of the targets table (``ok=None``: not applicable here)."""
    return {"name": name, "target": target, "value": value, "ok": ok}


class MLP(nnx.Module):
    """A ReLU MLP with ``len(sizes) - 1`` ``nnx.Linear`` layers."""

    def __init__(self, sizes: list[int], *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, rngs=rngs, param_dtype=dtype, dtype=dtype)
                for a, b in zip(sizes[:-1], sizes[1:], strict=False)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


def mse(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def n_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def batch(sizes: list[int], batch_size: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (batch_size, sizes[0]), jnp.float32)
    y = jax.random.normal(ky, (batch_size, sizes[-1]), jnp.float32)
    return x, y
