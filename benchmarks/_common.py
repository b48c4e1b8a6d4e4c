"""Shared helpers for the benchmark suite: timing, models, labels.

Every benchmark module exposes ``run(smoke: bool) -> dict`` returning a
*result*: ``{"title", "columns", "rows", "notes", "checks", "plot"}``.
``benchmarks/run.py`` runs each module in its own process and renders the
results into ``results/latest.md`` and ``results/latest.png``.
"""

from __future__ import annotations

import gc
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

T = TypeVar("T")


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


def rounds(candidates: list[T], repeats: int) -> Iterator[list[T]]:
    """``repeats`` orders of ``candidates``, one per repeat: a seeded shuffle.

    The same every run, and no candidate always runs right after the same other
    one (caches, allocator state, a slow candidate's garbage or dirty pages).
    Rotating the start (A B C, B C A, ...) would not do: every candidate would
    keep its predecessor.
    """
    order, shuffle = list(candidates), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        yield list(order)


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
    every candidate alike, each repeat in its own order (:func:`rounds`); take
    the min or the median.
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
        for order in rounds(list(runners.items()), repeats):
            for name, run in order:
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


def paired(a: list[float], b: list[float]) -> float:
    """The median over repeats of ``a[r] / b[r]``: two candidates timed in the same repeat.

    Each repeat's two samples share that moment's machine load, so their ratio
    is steadier than ``best(a) / best(b)``, which pairs two unrelated lucky
    repeats (on this shared 2-core VM the best-of ratio moves by ~0.1 between
    runs).
    """
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


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
