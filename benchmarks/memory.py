"""3. Memory: compiled peak of a train step against params + grads + velocity.

XLA's compiled memory analysis (``lower(...).compile().memory_analysis()``) gives
the bytes of the arguments, the outputs, the outputs aliased onto donated
arguments, and the temporaries. The step's peak is ``arguments + outputs -
aliased + temporaries``; the unavoidable minimum is parameters + gradients +
velocity. A bf16 velocity (``accumulator_dtype=jnp.bfloat16``) saves 2 bytes per
parameter; its time cost (converting on every update) is measured side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import nnx_momentum as nm
from benchmarks._common import MLP, batch, best, check, fmt, mse, n_params, time_interleaved

MB = 2**20


def _step(
    sizes: list[int], bs: int, *, accumulator_dtype: Any = None, donate: bool = True
) -> tuple[Any, Any, tuple]:
    model = MLP(sizes, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=1e-3, momentum=0.9, accumulator_dtype=accumulator_dtype)
    step = nm.make_train_step(mse, model, opt, donate=donate)
    return step, model, batch(sizes, bs)


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
            loss = step(*data)
        jax.block_until_ready(loss)

    return run


def _update_runner(n: int, accumulator_dtype: Any) -> Callable[[int], Any]:
    tx = nm.momentum(1e-3, momentum=0.9, accumulator_dtype=accumulator_dtype)
    params = {"w": jnp.full((n,), 0.01, jnp.float32)}
    grads = {"w": jnp.full((n,), 1e-3, jnp.float32)}
    state = [params, tx.init(params)]

    def update(p: Any, s: Any, g: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    fn = jax.jit(update, donate_argnums=(0, 1))

    def run(k: int) -> None:
        p, s = state
        for _ in range(k):
            p, s = fn(p, s, grads)
        state[:] = [p, s]
        jax.block_until_ready(p)

    return run


def run(smoke: bool) -> dict[str, Any]:
    sizes, bs = ([16, 64, 32, 10], 8) if smoke else ([1024, 2048, 2048, 1024], 8)
    iters, repeats = (2, 2) if smoke else (10, 5)
    f32, data = _step(sizes, bs)[::2]
    model = _step(sizes, bs)[1]
    n = n_params(model)
    bf16, _, _ = _step(sizes, bs, accumulator_dtype=jnp.bfloat16)
    nodonate, _, _ = _step(sizes, bs, donate=False)
    minimum_f32 = 12 * n  # params + grads + velocity, f32
    minimum_bf16 = 10 * n  # bf16 velocity
    rows, peaks = [], {}
    for name, step, minimum in (
        ("make_train_step, f32 velocity (donated)", f32, minimum_f32),
        ("make_train_step, bf16 velocity (donated)", bf16, minimum_bf16),
        ("make_train_step, f32 velocity, donate=False", nodonate, minimum_f32),
    ):
        a = _analysis(step, data)
        if a is None:
            rows.append([name, "n/a", "n/a", "n/a", "n/a", "n/a", fmt(minimum / MB), "n/a"])
            continue
        peaks[name] = a["peak"]
        rows.append(
            [
                name,
                fmt(a["arg"] / MB),
                fmt(a["out"] / MB),
                fmt(a["alias"] / MB),
                fmt(a["temp"] / MB),
                fmt(a["peak"] / MB),
                fmt(minimum / MB),
                fmt(a["peak"] / minimum),
            ]
        )
    samples = time_interleaved(
        {
            "step f32": _runner(f32, data),
            "step bf16": _runner(bf16, data),
            "update f32": _update_runner(n, None),
            "update bf16": _update_runner(n, jnp.bfloat16),
        },
        iters=iters,
        repeats=repeats,
        warmup=1,
    )
    t = {k: best(v) for k, v in samples.items()}
    step_cost, update_cost = t["step bf16"] / t["step f32"], t["update bf16"] / t["update f32"]
    checks = []
    f32_name, bf16_name = (
        "make_train_step, f32 velocity (donated)",
        "make_train_step, bf16 velocity (donated)",
    )
    if f32_name in peaks:
        ratio = peaks[f32_name] / minimum_f32
        checks.append(
            check(
                "train-step peak memory vs params+grads+velocity",
                "~1x (no extra copies)",
                f"{ratio:.2f}x",
                ratio <= 1.25,
            )
        )
    if f32_name in peaks and bf16_name in peaks:
        saving = 1 - peaks[bf16_name] / peaks[f32_name]
        checks.append(
            check(
                "bf16 velocity: peak-memory saving",
                "reported",
                f"{saving:.0%} ({fmt((peaks[f32_name] - peaks[bf16_name]) / MB)} MB)",
                None,
            )
        )
    checks.append(
        check(
            "bf16 velocity: time cost, full step / update only",
            "reported",
            f"{step_cost:.2f}x / {update_cost:.2f}x",
            None,
        )
    )
    notes = [
        f"MLP {'-'.join(map(str, sizes))} ({n:,} params, {fmt(4 * n / MB)} MB of f32 params), "
        f"batch {bs}. Sizes in MB from XLA's compiled memory analysis: peak = arguments + "
        "outputs - aliased (donated) + temporaries. 'minimum' = params + grads + velocity "
        "(12 bytes/param in f32, 10 with a bf16 velocity). A peak below 1x is possible: the "
        "gradients never all exist at once, each is consumed by its layer's update.",
        "The f32 temporaries are XLA copies of the two largest kernels made before their "
        "in-place (donated) update, because the backward pass still reads the old kernel; the "
        "donated pure jax.jit + optax.sgd step compiles to the same copies (an XLA scheduling "
        "choice, not this package).",
        f"Time, best of {repeats} interleaved repeats: full step f32 {fmt(t['step f32'] * 1e3)} ms "
        f"vs bf16 {fmt(t['step bf16'] * 1e3)} ms ({step_cost:.2f}x); update only ({n:,} params, "
        f"one leaf) f32 {fmt(t['update f32'] * 1e3)} ms vs bf16 {fmt(t['update bf16'] * 1e3)} ms "
        f"({update_cost:.2f}x).",
    ]
    if jax.devices()[0].platform == "cpu":
        notes.append(
            "On this CPU a bf16 velocity shrinks the resident state (arguments) by 2 bytes/param "
            "but not the step's peak, and costs time: optax.trace updates p with the unrounded "
            "f32 velocity, so both the v-loop and the p-loop read the old bf16 v, and with v "
            "donated XLA first copies every velocity leaf (bf16 copy ops in the HLO); the "
            "f32<->bf16 converts add work on a CPU without native bf16 arithmetic."
        )
    plot = {
        "kind": "barh",
        "labels": [r[0] for r in rows if r[5] != "n/a"],
        "values": [peaks[r[0]] / MB for r in rows if r[5] != "n/a"],
        "xlabel": "compiled peak MB (red: params+grads+velocity, f32)",
        "vline": minimum_f32 / MB,
    }
    return {
        "title": "3. Memory of a train step (compiled memory analysis)",
        "columns": [
            "step",
            "arguments MB",
            "outputs MB",
            "aliased MB",
            "temporaries MB",
            "peak MB",
            "minimum MB",
            "peak / minimum",
        ],
        "rows": rows,
        "notes": notes,
        "checks": checks,
        "plot": plot,
    }
