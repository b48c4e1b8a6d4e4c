"""MomentumConfig, and the one-core facts built on it: both faces share one config and one tx."""

from __future__ import annotations

import dataclasses
import json
import os

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


# -- one field, seen everywhere ----------------------------------------------------------
# A value other than the default for every field (a new field needs one here, and nothing
# else in the package: the tests below then check it reaches every layer).
OTHER = {
    "momentum": 0.5,
    "nesterov": True,
    "weight_decay": 0.1,
    "grad_clip_norm": 1.0,
    "grad_clip_value": 0.5,
    "accumulator_dtype": "bfloat16",
}


def test_other_values_cover_every_field():
    assert set(OTHER) == set(FIELDS)
    defaults = nm.MomentumConfig()
    assert all(getattr(defaults, k) != v for k, v in OTHER.items())


def test_config_attributes_are_generated_one_per_field():
    from nnx_momentum.config import ConfigAttributes

    properties = {k for k, v in vars(ConfigAttributes).items() if isinstance(v, property)}
    assert properties == set(FIELDS)


def test_every_field_reaches_both_faces_whole():
    """``config=`` on both faces: one object held; each field an attribute, in hyperparams."""
    config = nm.MomentumConfig(**OTHER)
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, 0.1, config=config)
    bt = nm.SGD(0.1, config=config)
    bt.register_trainable_weights(nnx.state(MLP(nnx.Rngs(0)), nnx.Param))
    assert opt.config is config and bt.config is config and bt.optimizer.config is config
    for face in (opt, bt):
        for name in FIELDS:
            assert getattr(face, name) == getattr(config, name), name
            assert face.hyperparams[name] == config.to_json()[name], name
    assert nm.MomentumConfig.from_json(bt.hyperparams) == config
    # the update is that config's: the braintools face's velocity has its dtype
    bt.step(nnx.grad(loss_fn)(MLP(nnx.Rngs(0)), *next(iter(batches(1)))))
    assert {x.dtype for x in jax.tree.leaves(bt.opt_state)} >= {jnp.dtype(jnp.bfloat16)}
    for a, b in zip(
        jax.tree.leaves(opt.tx.init({"w": jnp.ones(2)})),
        jax.tree.leaves(from_config(config, 0.1).init({"w": jnp.ones(2)})),
        strict=True,
    ):
        assert a.dtype == b.dtype and a.shape == b.shape


@pytest.mark.parametrize("name", sorted(OTHER))
def test_the_restore_check_names_each_field(name):
    from nnx_momentum.checkpoint.metadata import hyperparam_differences, live_hyperparams

    model = MLP(nnx.Rngs(0))
    saved = live_hyperparams(nm.MomentumOptimizer(model, 0.1, config=nm.MomentumConfig()))
    kw = {"momentum": 0.5, name: OTHER[name]}  # nesterov needs momentum > 0
    live = live_hyperparams(nm.MomentumOptimizer(model, 0.1, config=nm.MomentumConfig(**kw)))
    assert name in [n for n, _, _ in hyperparam_differences(saved, live)]
    assert hyperparam_differences(live, live) == []


@pytest.mark.parametrize("missing", sorted(OTHER))
def test_the_restore_check_reads_a_missing_field_as_its_default(missing):
    """A checkpoint written before a field existed: it was written with the default's behaviour."""
    from nnx_momentum.checkpoint.metadata import hyperparam_differences, live_hyperparams

    model = MLP(nnx.Rngs(0))
    # a group's own value of the field would not have been the default when it was saved
    override = {"momentum": 0.5} if missing == "weight_decay" else {"weight_decay": 0.1}
    group = nm.ParamGroup(nnx.PathContains("bias"), **override)
    live = live_hyperparams(nm.MomentumOptimizer(model, 0.1, groups=[group]))
    old = {k: v for k, v in live.items() if k != missing}
    old["groups"] = [{k: v for k, v in g.items() if k != missing} for g in live["groups"]]
    assert hyperparam_differences(old, live) == []
    kw = {"momentum": 0.5, missing: OTHER[missing]}  # nesterov needs momentum > 0
    changed = nm.MomentumOptimizer(model, 0.1, groups=[group], **kw)
    assert missing in [n for n, _, _ in hyperparam_differences(old, live_hyperparams(changed))]


def test_a_checkpoint_lacking_fields_restores(tmp_path):
    """Checkpointer.restore of a step whose JSON item predates two fields (edited out)."""
    model = MLP(nnx.Rngs(0))
    opt = nm.Momentum(0.1)
    opt.register_trainable_weights(nnx.state(model, nnx.Param))
    opt.step(nnx.grad(loss_fn)(model, *next(iter(batches(1)))))
    with nm.Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, model, opt)
    path = tmp_path / "c" / "1" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    for name in ("nesterov", "weight_decay"):
        del meta["hyperparams"][name]
    path.write_text(json.dumps(meta))
    live = nm.Momentum(0.1)
    live.register_trainable_weights(nnx.state(MLP(nnx.Rngs(1)), nnx.Param))
    with nm.Checkpointer(tmp_path / "c") as ckpt:
        assert ckpt.restore(MLP(nnx.Rngs(1)), live) == 1
        other = nm.Momentum(0.1, weight_decay=0.1)
        other.register_trainable_weights(nnx.state(MLP(nnx.Rngs(1)), nnx.Param))
        with pytest.raises(ValueError, match="hyperparams    weight_decay: 0.0 -> 0.1"):
            ckpt.restore(MLP(nnx.Rngs(1)), other)
    assert live.step_count == 1


def test_config_or_keywords_not_both():
    model = MLP(nnx.Rngs(0))
    config = nm.MomentumConfig(momentum=0.5)
    with pytest.raises(TypeError, match=r"MomentumOptimizer: .*\['momentum', 'weight_decay'\]"):
        nm.MomentumOptimizer(model, 0.1, momentum=0.8, weight_decay=0.1, config=config)
    with pytest.raises(TypeError, match=r"Momentum: .*\['grad_clip_norm'\]"):
        nm.Momentum(0.1, grad_clip_norm=1.0, config=config)
    with pytest.raises(TypeError, match=r"SGD: .*\['nesterov'\]"):
        nm.SGD(0.1, nesterov=True, config=config)
    with pytest.raises(TypeError, match="config must be an nm.MomentumConfig, got dict"):
        nm.MomentumOptimizer(model, 0.1, config={"momentum": 0.5})  # type: ignore[arg-type]
    # a keyword left at its default is no second source
    assert nm.MomentumOptimizer(model, 0.1, momentum=0.9, config=config).momentum == 0.5


def test_momentum_classes_fix_nesterov():
    """MomentumNesterov is Momentum with nesterov=True; SGD is the base with its defaults."""
    assert "__init__" not in vars(nm.MomentumNesterov) and "__init__" not in vars(nm.SGD)
    assert nm.MomentumNesterov(0.1, config=nm.MomentumConfig(nesterov=True)).nesterov
    with pytest.raises(ValueError, match="MomentumNesterov: config has nesterov=False"):
        nm.MomentumNesterov(0.1, config=nm.MomentumConfig())
    with pytest.raises(ValueError, match="Momentum: config has nesterov=True"):
        nm.Momentum(0.1, config=nm.MomentumConfig(nesterov=True))
    assert not nm.Momentum(0.1).nesterov and nm.MomentumNesterov(0.1).nesterov


_NEW_FIELD_SCRIPT = """
import dataclasses
from flax import nnx
import nnx_momentum as nm
from nnx_momentum.checkpoint.metadata import hyperparam_differences, live_hyperparams

assert nm.__file__.startswith(%(root)r), nm.__file__
model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
config = nm.MomentumConfig(dampening=0.25)
assert nm.MomentumConfig.from_json(config.to_json()) == config != nm.MomentumConfig()
opt = nm.MomentumOptimizer(model, 0.1, config=config)
bt = nm.Momentum(0.1, config=config).register_trainable_weights(nnx.state(model, nnx.Param))
for face in (opt, bt):
    assert face.dampening == 0.25 and face.hyperparams["dampening"] == 0.25
    assert face.config is config
# a checkpoint saved before the field existed reads it as its default ...
old = {k: v for k, v in live_hyperparams(nm.MomentumOptimizer(model, 0.1)).items()
       if k != "dampening"}
assert hyperparam_differences(old, live_hyperparams(nm.MomentumOptimizer(model, 0.1))) == []
# ... and a live optimizer with another value is named
diffs = hyperparam_differences(old, live_hyperparams(opt))
assert ("dampening", 0.0, 0.25) in diffs, diffs
print("new field seen everywhere")
"""


@pytest.mark.slow
def test_adding_a_field_is_one_edit(tmp_path):
    """Copy the package, add one field to the config, and check every layer sees it."""
    import pathlib
    import shutil
    import subprocess
    import sys

    package = pathlib.Path(nm.__file__).parent
    root = tmp_path / "copy"
    shutil.copytree(package, root / "nnx_momentum", ignore=shutil.ignore_patterns("__pycache__"))
    config_py = root / "nnx_momentum" / "config.py"
    source = config_py.read_text()
    anchor = "    accumulator_dtype: DTypeLike | None = None\n"
    assert source.count(anchor) == 1
    config_py.write_text(source.replace(anchor, anchor + "    dampening: float = 0.0\n"))
    result = subprocess.run(
        [sys.executable, "-c", _NEW_FIELD_SCRIPT % {"root": str(root)}],
        env={**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new field seen everywhere" in result.stdout
