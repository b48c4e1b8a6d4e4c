"""MomentumConfig, and the one-core facts built on it: both faces share one config and one tx."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from models import MLP, batches, loss_fn

import nnx_momentum as nm
from nnx_momentum.transform import from_config

FIELDS = [f.name for f in dataclasses.fields(nm.MomentumConfig)]


def test_fields_are_the_transform_keywords():
    """Every hyperparameter of nm.momentum (besides the LR) is a config field, and back."""
    import inspect

    params = list(inspect.signature(nm.momentum).parameters)
    assert params[0] == "learning_rate" and sorted(params[1:]) == sorted(FIELDS)
    opt_params = set(inspect.signature(nm.MomentumOptimizer).parameters)
    assert set(FIELDS) <= opt_params


def test_normalised_equality_and_json_round_trip():
    a = nm.MomentumConfig(momentum=np.float64(0.5), weight_decay=1, accumulator_dtype=jnp.bfloat16)
    b = nm.MomentumConfig(momentum=0.5, weight_decay=1.0, accumulator_dtype="bfloat16")
    assert a == b and hash(a) == hash(b)
    assert type(a.momentum) is float and a.accumulator_dtype == "bfloat16"
    data = json.loads(json.dumps(a.to_json()))
    assert nm.MomentumConfig.from_json(data) == a
    assert nm.MomentumConfig.from_json({**data, "optimizer": "Momentum", "lr": {}}) == a
    assert a != dataclasses.replace(a, nesterov=True)


def test_frozen():
    config = nm.MomentumConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.momentum = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": float("nan")}, "momentum"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm"),
        ({"grad_clip_value": -2.0}, "grad_clip_value"),
        ({"accumulator_dtype": jnp.int32}, "accumulator_dtype"),
    ],
)
def test_validated_once_with_the_field_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        nm.MomentumConfig(**kwargs)


def test_from_json_fills_missing_fields_with_defaults_and_validates():
    """A checkpoint written before a field existed lacks it: it reads as the default."""
    full = nm.MomentumConfig(momentum=0.5, nesterov=True, grad_clip_value=0.3).to_json()
    for name in FIELDS:
        old = {k: v for k, v in full.items() if k != name}
        expected = dataclasses.replace(
            nm.MomentumConfig(**old), **{name: nm.MomentumConfig.__dataclass_fields__[name].default}
        )
        assert nm.MomentumConfig.from_json(old) == expected
    assert nm.MomentumConfig.from_json({}) == nm.MomentumConfig()
    with pytest.raises(ValueError, match="grad_clip_value"):
        nm.MomentumConfig.from_json({"grad_clip_value": -1.0, "lr": 0.1})


def test_both_faces_hold_the_same_config():
    model = MLP(nnx.Rngs(0))
    kw = dict(momentum=0.8, weight_decay=1e-3, grad_clip_norm=1.0)
    opt = nm.MomentumOptimizer(model, lr=0.1, nesterov=True, **kw)
    bt = nm.MomentumNesterov(lr=0.1, **kw)
    assert opt.config == bt.config == nm.MomentumConfig(nesterov=True, **kw)
    bt.register_trainable_weights(nnx.state(model, nnx.Param))
    assert bt.config is bt.optimizer.config
    assert {k: v for k, v in opt.hyperparams.items() if k != "optimizer"} == {
        k: v for k, v in bt.hyperparams.items() if k != "optimizer"
    }
    assert (opt.momentum, opt.nesterov, opt.weight_decay) == (0.8, True, 1e-3)


@pytest.mark.parametrize("compiled", [False, True])
def test_default_tx_by_hand_is_bit_for_bit_what_step_applies(compiled):
    model = MLP(nnx.Rngs(0))
    sched = nm.StepLR(0.1, step_size=1, gamma=0.5)
    opt = nm.Momentum(lr=sched, momentum=0.9, weight_decay=1e-2, grad_clip_norm=0.5)
    opt.register_trainable_weights(nnx.state(model, nnx.Param))
    tx = opt.default_tx()
    assert tx is opt.optimizer.tx  # the transformation actually applied
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    state = tx.init(params)

    def by_hand(params, state, grads, lr):
        state = nm.with_learning_rate(state, lr)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    if compiled:
        by_hand = jax.jit(by_hand)
        step = nnx.jit(lambda opt, grads: opt.step(grads))
    else:
        step = lambda opt, grads: opt.step(grads)  # noqa: E731
    for batch in batches(4):
        grads = nnx.grad(loss_fn)(model, *batch)
        params, state = by_hand(params, state, nnx.to_pure_dict(grads), opt.lr.current_lr[...])
        step(opt, grads)
        sched.step()
        got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_from_config_equals_momentum():
    config = nm.MomentumConfig(momentum=0.7, weight_decay=0.1, grad_clip_value=0.3)
    params = {"w": jnp.arange(3.0)}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    a, b = from_config(config, 0.1), nm.momentum(0.1, **config.to_json())
    sa, sb = a.init(params), b.init(params)
    for _ in range(3):
        ua, sa = a.update(grads, sa, params)
        ub, sb = b.update(grads, sb, params)
        np.testing.assert_array_equal(ua["w"], ub["w"])
    assert jax.tree.structure(sa) == jax.tree.structure(sb)


def test_lr_is_always_a_scheduler():
    model = MLP(nnx.Rngs(0))
    fixed = nm.MomentumOptimizer(model, lr=0.1)
    assert isinstance(fixed.lr, nm.FixedLR)
    sched = nm.MomentumOptimizer(model, lr=optax.linear_schedule(0.1, 0.0, 10))
    assert isinstance(sched.lr, nm.LRScheduler)
    assert "lr" not in nnx.to_pure_dict(sched.state_tree())  # stateless: same layout as before
    with pytest.raises(TypeError, match="optax schedule"):
        sched.lr.step()
    assert sched.hyperparams["lr"]["name"] == "optax_schedule"
