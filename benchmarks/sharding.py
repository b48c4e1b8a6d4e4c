"""6. Sharded optimizer state (ZeRO-1): per-device memory and step time on 8 devices.

Data parallelism over a ``data`` mesh axis of 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set by ``run.py`` for this
benchmark's process): the parameters are replicated, the batch is split. Side by
side: ``nm.MomentumOptimizer(model, ...)`` (the velocity replicated like the
parameters) and ``nm.MomentumOptimizer(model, ..., shard_state_over="data")``
(each velocity leaf split over the axis). Per-device sizes come from the live
arrays' shards and from XLA's compiled memory analysis of the ``make_train_step``
program (an SPMD program: its sizes are per device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.nnx.training.optimizer import OptVariable
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nnx_momentum as nm
from benchmarks._common import MLP, batch, best, check, fmt, median, mse, n_params, time_interleaved

MB = 2**20
N = 8
MODES = {"replicated velocity": None, "shard_state_over='data'": "data"}


def _build(sizes: list[int], mesh: jax.sharding.Mesh, shard: str | None) -> tuple[Any, Any, Any]:
    with jax.set_mesh(mesh):
        model = MLP(sizes, rngs=nnx.Rngs(0))
        for _, var in nnx.to_flat_state(nnx.state(model)):
            var.set_value(jax.device_put(var.get_value(), NamedSharding(mesh, P())))
        opt = nm.MomentumOptimizer(model, lr=1e-3, momentum=0.9, shard_state_over=shard)
        step = nm.make_train_step(mse, model, opt)
    return model, opt, step


def _velocity_bytes(opt: Any) -> tuple[int, int]:
    """(bytes on device 0, bytes of the whole arrays) of the leaves that mirror parameters."""
    leaves = [
        v.get_value() for _, v in nnx.to_flat_state(opt.state_tree()) if isinstance(v, OptVariable)
    ]
    return (
        sum(x.addressable_shards[0].data.nbytes for x in leaves),
        sum(x.nbytes for x in leaves),
    )


def _analysis(step: Any, data: tuple) -> dict[str, float] | None:
    try:
        stats = step.lower(*data).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - a backend without the analysis
        return None
    if stats is None:
        return None
    arg, out = stats.argument_size_in_bytes, stats.output_size_in_bytes
    alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    return {"arg": arg, "out": out, "alias": alias, "temp": temp, "peak": arg + out - alias + temp}


def _runner(step: Any, data: tuple) -> Callable[[int], Any]:
    def run(n: int) -> None:
        for _ in range(n):
            # One step in flight at a time: with several queued, the simulated devices'
            # threads can enter different steps' collectives and deadlock (XLA:CPU).
            jax.block_until_ready(step(*data))

    return run


def _max_diff(a: Any, b: Any) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def run(smoke: bool) -> dict[str, Any]:
    if jax.device_count() < N:
        return {
            "title": "6. Sharded optimizer state (ZeRO-1, 8 devices)",
            "error": f"needs {N} devices, found {jax.device_count()}: run it through "
            "benchmarks/run.py, which sets XLA_FLAGS=--xla_force_host_platform_device_count=8.",
        }
    sizes, bs = ([16, 64, 32, 8], 16) if smoke else ([1024, 2048, 2048, 1024], 64)
    iters, repeats, steps = (2, 2, 3) if smoke else (5, 5, 20)
    mesh = jax.make_mesh((N,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x, y = batch(sizes, bs)
    data = tuple(jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, y))

    built = {name: _build(sizes, mesh, shard) for name, shard in MODES.items()}
    n = n_params(built["replicated velocity"][0])
    rows, analyses, velocity = [], {}, {}
    for name, (_, opt, step) in built.items():
        with jax.set_mesh(mesh):
            a = _analysis(step, data)
        per_device, whole = _velocity_bytes(opt)
        velocity[name] = per_device
        analyses[name] = a
        keys = ("arg", "out", "alias", "temp", "peak")
        cells = [fmt(a[k] / MB) for k in keys] if a else ["n/a"] * len(keys)
        rows.append([name, fmt(per_device / MB), fmt(whole / MB), *cells])

    with jax.set_mesh(mesh):
        samples = time_interleaved(
            {name: _runner(step, data) for name, (_, _, step) in built.items()},
            iters=iters,
            repeats=repeats,
            warmup=1,
        )
    t = {name: best(s) for name, s in samples.items()}

    # The same numbers: fresh runs of `steps` steps from the same initialisation.
    finals = {}
    for name, shard in MODES.items():
        model, opt, step = _build(sizes, mesh, shard)
        with jax.set_mesh(mesh):
            for _ in range(steps):
                jax.block_until_ready(step(*data))
        finals[name] = (nnx.state(model, nnx.Param), opt.state_dict())
    diff = _max_diff(*finals.values())

    rep, sh = "replicated velocity", "shard_state_over='data'"
    ratio = velocity[sh] / velocity[rep]
    checks = [
        check(
            "shard_state_over: velocity bytes per device vs replicated (8 devices)",
            f"1/{N} = {1 / N:.3f} (divisible leaves)",
            f"{ratio:.3f}",
            ratio <= 1 / N + 0.01,
        ),
        check(
            f"shard_state_over: max |difference| after {steps} steps vs replicated",
            "<= 1e-6",
            f"{diff:.1e}",
            diff <= 1e-6,
        ),
        check(
            "shard_state_over: step time vs replicated (8 simulated devices, 2 cores)",
            "reported",
            f"{t[sh] / t[rep]:.2f}x",
            None,
        ),
    ]
    rep_analysis, sh_analysis = analyses[rep], analyses[sh]
    if rep_analysis and sh_analysis:
        saved = rep_analysis["peak"] - sh_analysis["peak"]
        expected = velocity[rep] - velocity[sh]
        checks.insert(
            1,
            check(
                "shard_state_over: compiled step peak per device, saving vs 7/8 of the velocity",
                "~1x",
                f"{fmt(saved / MB)} MB / {fmt(expected / MB)} MB = {saved / expected:.2f}x",
                saved >= 0.9 * expected,
            ),
        )
    for row, name in zip(rows, built, strict=True):
        row += [fmt(t[name] * 1e3), fmt(median(samples[name]) * 1e3)]
    notes = [
        f"MLP {'-'.join(map(str, sizes))} ({n:,} params, {fmt(4 * n / MB)} MB of f32 params), "
        f"batch {bs} split over a {N}-device 'data' axis (simulated CPU devices on this "
        "machine's cores, Auto axis types); the parameters are replicated on every device. "
        "'velocity/device' sums the velocity's shards on device 0; the other sizes are XLA's "
        "compiled memory analysis of the make_train_step program, per device (peak = arguments "
        "+ outputs - aliased (donated) + temporaries).",
        f"Leaves with no dimension divisible by {N} (none in this model) stay replicated. The "
        "update slices the (replicated) gradient and parameter to the velocity's shard, updates "
        "it there and all-gathers the parameter update: the step's arithmetic is the same, so "
        "the numbers agree to float32 rounding.",
        f"Step time: best of {repeats} interleaved repeats of {iters} steps (ms/step, min and "
        "median), one step in flight at a time. The 8 simulated devices share this machine's "
        "cores, so the sharded step is faster here (each device updates 1/8 of the velocity, "
        "and the all-gather is a memory copy); on real devices the update is a small part of "
        "a step and the all-gather of the updates is what it adds.",
    ]
    return {
        "title": "6. Sharded optimizer state (ZeRO-1, 8 devices)",
        "columns": [
            "optimizer",
            "velocity/device MB",
            "velocity total MB",
            "arguments MB",
            "outputs MB",
            "aliased MB",
            "temporaries MB",
            "peak MB/device",
            "ms/step (min)",
            "ms/step (median)",
        ],
        "rows": rows,
        "notes": notes,
        "checks": checks,
        "plot": {
            "kind": "barh",
            "labels": [f"{name}: {what}" for name in built for what in ("velocity", "peak")],
            "values": [
                v / MB
                for name in built
                for v in (velocity[name], (analyses[name] or {"peak": 0})["peak"])
            ],
            "xlabel": "MB per device",
        },
    }
