"""The functional core ``nm.momentum`` against the numpy reference and optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import momentum_reference

import nnx_momentum as nm

CONFIGS = [
    dict(momentum=0.9),
    dict(momentum=0.0),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.5, weight_decay=0.1),
    dict(momentum=0.9, grad_clip_norm=0.5),
    dict(momentum=0.9, grad_clip_value=0.3),
    dict(momentum=0.8, nesterov=True, weight_decay=0.05, grad_clip_norm=1.0, grad_clip_value=0.2),
]
LRS = [0.1, 0.1, 0.05, 0.05, 0.2, 0.01, 0.0, 0.1]


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {
        "a": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=(5,)).astype(np.float32),
    }
    grads = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in LRS
    ]
    return params, grads


def _run(tx, params, grads, lrs, *, jit: bool):
    def one(p, s, g, lr):
        s = nm.with_learning_rate(s, lr)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    one = jax.jit(one) if jit else one
    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    out = []
    for g, lr in zip(grads, lrs, strict=True):
        p, s = one(p, s, g, lr)
        out.append(p)
    return out, s


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_matches_numpy_reference(config, jit):
    params, grads = _problem()
    got, _ = _run(nm.momentum(LRS[0], **config), params, grads, LRS, jit=jit)
    want = momentum_reference(params, grads, LRS, **config)
    for g, w in zip(got, want, strict=True):
        for k in params:
            np.testing.assert_allclose(g[k], w[k], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_equals_optax_chain_bit_for_bit(config):
    params, grads = _problem(1)
    mu = config["momentum"]
    steps = []
    if config.get("grad_clip_norm"):
        steps.append(optax.clip_by_global_norm(config["grad_clip_norm"]))
    if config.get("grad_clip_value"):
        steps.append(optax.clip(config["grad_clip_value"]))
    steps.append(optax.add_decayed_weights(config.get("weight_decay", 0.0)))
    steps.append(optax.trace(mu, nesterov=config.get("nesterov", False)))
    steps.append(optax.scale(-0.1))
    ref = optax.chain(*steps)
    ours = nm.momentum(0.1, **config)
    p_ref = p_ours = jax.tree.map(jnp.asarray, params)
    s_ref, s_ours = ref.init(p_ref), ours.init(p_ours)
    for g in grads:
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
    for k in params:
        np.testing.assert_array_equal(p_ours[k], p_ref[k])


def test_lr_is_runtime_value_no_retrace():
    tx = nm.momentum(0.1)
    traces = []

    @jax.jit
    def step(p, s, g, lr):
        traces.append(1)
        u, s = tx.update(g, nm.with_learning_rate(s, lr), p)
        return optax.apply_updates(p, u), s

    params, grads = _problem()
    s = tx.init(params)
    for g, lr in zip(grads, LRS, strict=True):
        params, s = step(params, s, g, lr)
    assert len(traces) == 1
    assert float(nm.learning_rate_of(s)) == pytest.approx(LRS[-1])


def test_lr_held_in_state_can_be_changed():
    tx = nm.momentum(0.1, momentum=0.0)
    s = tx.init({"w": jnp.zeros(2)})
    s.hyperparams["learning_rate"] = jnp.asarray(0.5)
    u, _ = tx.update({"w": jnp.ones(2)}, s)
    np.testing.assert_allclose(u["w"], [-0.5, -0.5])


def test_schedule_of_update_count():
    schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
    tx = nm.momentum(schedule, momentum=0.0)
    p = {"w": jnp.zeros(())}
    s = tx.init(p)
    applied = []
    for _ in range(5):
        u, s = tx.update({"w": jnp.ones(())}, s, p)
        applied.append(-float(u["w"]))
    np.testing.assert_allclose(applied, [0.1, 0.075, 0.05, 0.025, 0.0], atol=1e-7)


def test_accumulator_dtype_bf16():
    params, grads = _problem(3)
    tx = nm.momentum(0.1, momentum=0.9, accumulator_dtype=jnp.bfloat16)
    got, state = _run(tx, params, grads, [0.1] * len(grads), jit=True)
    assert {x.dtype for x in jax.tree.leaves(state.inner_state)} == {jnp.dtype(jnp.bfloat16)}
    assert got[-1]["a"].dtype == jnp.float32
    want = momentum_reference(params, grads, [0.1] * len(grads), momentum=0.9)[-1]
    for k in params:  # a bf16 velocity keeps ~3 significant digits
        np.testing.assert_allclose(got[-1][k], want[k], rtol=2e-2, atol=2e-2)


def test_bad_accumulator_dtype():
    with pytest.raises(ValueError, match="accumulator_dtype"):
        nm.momentum(0.1, accumulator_dtype=jnp.int32)


def test_first_step_velocity_is_gradient():
    tx = nm.momentum(1.0, momentum=0.9)
    p = {"w": jnp.zeros(3)}
    u, _ = tx.update({"w": jnp.array([1.0, -2.0, 3.0])}, tx.init(p), p)
    np.testing.assert_array_equal(u["w"], [-1.0, 2.0, -3.0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(learning_rate=0.1, momentum=1.0), "momentum"),
        (dict(learning_rate=0.1, momentum=-0.1), "momentum"),
        (dict(learning_rate=0.1, momentum=float("nan")), "momentum"),
        (dict(learning_rate=0.1, momentum=0.0, nesterov=True), "momentum"),
        (dict(learning_rate=0.1, weight_decay=-1e-4), "weight_decay"),
        (dict(learning_rate=0.1, weight_decay=float("nan")), "weight_decay"),
        (dict(learning_rate=0.1, grad_clip_norm=0.0), "grad_clip_norm"),
        (dict(learning_rate=0.1, grad_clip_value=-1.0), "grad_clip_value"),
        (dict(learning_rate=0.1, grad_clip_value=float("nan")), "grad_clip_value"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        nm.momentum(**kwargs)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_torch_sgd_agrees(config):
    torch = pytest.importorskip("torch")
    params, grads = _problem(2)
    got, _ = _run(nm.momentum(0.1, **config), params, grads, [0.1] * len(grads), jit=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    sgd_args = {k: v for k, v in config.items() if not k.startswith("grad_clip")}
    opt = torch.optim.SGD(list(tp.values()), lr=0.1, **sgd_args)
    for g in grads:
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        if config.get("grad_clip_norm"):
            torch.nn.utils.clip_grad_norm_(list(tp.values()), config["grad_clip_norm"])
        if config.get("grad_clip_value"):
            torch.nn.utils.clip_grad_value_(list(tp.values()), config["grad_clip_value"])
        opt.step()
    for k in params:
        np.testing.assert_allclose(got[-1][k], tp[k].detach().numpy(), rtol=1e-5, atol=1e-6)
