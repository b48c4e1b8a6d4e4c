"""The nnx.Optimizer face: MomentumOptimizer."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from models import MLP, batches, loss_fn, params_np, tree_equal

import nnx_momentum as nm

CONFIGS = [
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(momentum=0.5, weight_decay=0.1, grad_clip_norm=0.5, grad_clip_value=0.05),
]


def _optax_reference(
    lr, momentum, nesterov=False, weight_decay=0.0, grad_clip_norm=None, grad_clip_value=None
):
    steps = []
    if grad_clip_norm:
        steps.append(optax.clip_by_global_norm(grad_clip_norm))
    if grad_clip_value:
        steps.append(optax.clip(grad_clip_value))
    steps.append(optax.add_decayed_weights(weight_decay))
    steps.append(optax.sgd(lr, momentum=momentum, nesterov=nesterov))
    return optax.chain(*steps)


def _update(model, optimizer, x, y):
    optimizer.update(model, nnx.grad(loss_fn)(model, x, y))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_equals_optax_inside_nnx_optimizer(config, jit):
    step = nnx.jit(_update) if jit else _update
    ours_model, ref_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    ours = nm.MomentumOptimizer(ours_model, lr=0.1, **config)
    ref = nnx.Optimizer(ref_model, _optax_reference(0.1, **config), wrt=nnx.Param)
    for batch in batches(5):
        step(ours_model, ours, *batch)
        step(ref_model, ref, *batch)
    assert tree_equal(nnx.state(ours_model), nnx.state(ref_model))
    assert isinstance(ours, nnx.Optimizer) and ours.step_count == 5


def test_signature():
    params = inspect.signature(nm.MomentumOptimizer).parameters
    assert list(params)[:3] == ["model", "lr", "momentum"]
    assert params["wrt"].default is nnx.Param and params["momentum"].default == 0.9


@pytest.mark.parametrize(
    "lr, expected",
    [
        (0.1, [0.1] * 4),
        (optax.linear_schedule(0.1, 0.0, 4), [0.1, 0.075, 0.05, 0.025]),
        (nm.StepLR(0.1, step_size=2), [0.1, 0.1, 0.01, 0.01]),
    ],
    ids=["float", "optax-schedule", "scheduler"],
)
def test_lr_kinds(lr, expected):
    w = nnx.Param(jnp.zeros(()))
    holder = nnx.Dict(w=w)
    opt = nm.MomentumOptimizer(holder, lr=lr, momentum=0.0)
    applied = []
    for _ in range(4):
        assert opt.current_lr == pytest.approx(expected[len(applied)])
        before = float(w[...])
        opt.update(holder, nnx.State({"w": nnx.Param(jnp.ones(()))}))
        applied.append(before - float(w[...]))
        if isinstance(lr, nm.LRScheduler):
            lr.step()
    np.testing.assert_allclose(applied, expected, rtol=1e-6)


def test_optax_schedule_lr_cannot_be_set():
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=optax.constant_schedule(0.1))
    with pytest.raises(TypeError, match="optax schedule"):
        opt.current_lr = 0.2


def test_scheduler_state_lives_in_optimizer_state():
    model = MLP(nnx.Rngs(0))
    sched = nm.StepLR(0.1, step_size=1)
    opt = nm.MomentumOptimizer(model, lr=sched)
    for _ in range(3):
        sched.step()
    fresh = nm.MomentumOptimizer(MLP(nnx.Rngs(1)), lr=nm.StepLR(0.1, step_size=1))
    nnx.update(fresh, nnx.state(opt))
    assert fresh.current_lr == pytest.approx(1e-4) and int(fresh.lr.last_epoch[...]) == 3
    assert "lr" in nnx.state(opt, nnx.OptState)


def test_jax_jit_when_returned():
    model, opt = MLP(nnx.Rngs(0)), None
    opt = nm.MomentumOptimizer(model, lr=0.1, weight_decay=0.01)
    graphdef, state = nnx.split((model, opt))

    @jax.jit
    def step(state, x, y):
        model, opt = nnx.merge(graphdef, state)
        _update(model, opt, x, y)
        return nnx.state((model, opt))

    ref_model = MLP(nnx.Rngs(0))
    ref_opt = nm.MomentumOptimizer(ref_model, lr=0.1, weight_decay=0.01)
    for batch in batches(3):
        state = step(state, *batch)
        _update(ref_model, ref_opt, *batch)
    nnx.update((model, opt), state)
    for k, v in params_np(ref_model).items():
        np.testing.assert_allclose(params_np(model)[k], v, rtol=1e-6)
    assert opt.step_count == 3


def test_scan_carry_equals_loop_and_broadcast_loses_updates():
    data = batches(4)
    xs, ys = jnp.stack([b[0] for b in data]), jnp.stack([b[1] for b in data])

    loop_model = MLP(nnx.Rngs(0))
    loop_opt = nm.MomentumOptimizer(loop_model, lr=nm.ExponentialLR(0.1, gamma=0.5))
    for batch in data:
        _update(loop_model, loop_opt, *batch)
        loop_opt.lr.step()

    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=nm.ExponentialLR(0.1, gamma=0.5))

    @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
    def carry_run(carry, x, y):
        model, opt = carry
        _update(model, opt, x, y)
        opt.lr.step()
        return model, opt

    carry_run((model, opt), xs, ys)
    for k, v in params_np(loop_model).items():
        np.testing.assert_allclose(params_np(model)[k], v, rtol=1e-6, atol=1e-7)
    assert opt.step_count == 4 and opt.current_lr == pytest.approx(0.1 * 0.5**4)

    # The documented flax pitfall: an optimizer broadcast (in_axes=None) to nnx.scan
    # is not carried: its velocity restarts from zero at every iteration (so the run
    # is plain SGD) and its step count never advances.
    model, sgd_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
    sgd = nm.MomentumOptimizer(sgd_model, lr=0.1, momentum=0.0)

    @nnx.scan(in_axes=(nnx.Carry, None, 0, 0), out_axes=nnx.Carry)
    def broadcast_run(model, opt, x, y):
        _update(model, opt, x, y)
        return model

    broadcast_run(model, opt, xs, ys)
    for batch in data:
        _update(sgd_model, sgd, *batch)
    assert opt.step_count == 0
    for k, v in params_np(sgd_model).items():
        np.testing.assert_allclose(params_np(model)[k], v, rtol=1e-6, atol=1e-7)


def test_state_layout_shared_with_braintools_face():
    data = batches(6)
    a_model, b_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    a = nm.MomentumOptimizer(a_model, lr=nm.StepLR(0.1, step_size=2), weight_decay=0.01)
    b = nm.Momentum(lr=nm.StepLR(0.1, step_size=2), weight_decay=0.01)
    b.register_trainable_weights(b_model)
    for batch in data[:3]:
        _update(a_model, a, *batch)
        a.lr.step()
    # a braintools-style optimizer resumes from the nnx.Optimizer's state, and back
    nnx.update(b_model, nnx.state(a_model))
    b.load_state_dict(a.state_dict())
    assert jax.tree.structure(a.state_dict()) == jax.tree.structure(b.state_dict())
    for batch in data[3:]:
        _update(a_model, a, *batch)
        a.lr.step()
        b.step(nnx.grad(loss_fn)(b_model, *batch))
        b.lr.step()
    assert tree_equal(nnx.state(a_model), nnx.state(b_model))
    assert tree_equal(a.state_dict(), b.state_dict())
    c_model = MLP(nnx.Rngs(0))
    c = nm.MomentumOptimizer(c_model, lr=nm.StepLR(0.1, step_size=2), weight_decay=0.01)
    c.load_state_dict(b.state_dict())
    assert tree_equal(c.state_dict(), a.state_dict())


def test_load_state_dict_mismatch_changes_nothing():
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1, grad_clip_norm=1.0)
    other = nm.MomentumOptimizer(MLP(nnx.Rngs(0), dh=5), lr=0.1, grad_clip_norm=1.0)
    before = opt.state_dict()
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other.state_dict())
    sched_other = nm.MomentumOptimizer(MLP(nnx.Rngs(0)), lr=nm.ReduceLROnPlateau(0.1))
    with pytest.raises(ValueError, match="missing paths|unknown paths"):
        opt.load_state_dict(sched_other.state_dict())
    assert tree_equal(before, opt.state_dict())


SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from flax import nnx
    from jax.sharding import Mesh, PartitionSpec as P, NamedSharding
    import nnx_momentum as nm
    assert jax.device_count() == 8
    mesh = Mesh(jax.devices(), ("data",))

    class Model(nnx.Module):
        def __init__(self, rngs):
            init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "data"))
            self.a = nnx.Linear(4, 16, kernel_init=init, rngs=rngs)
            self.b = nnx.Param(jnp.zeros((16, 8)), sharding=(None, "data"),
                               optimizer_sharding=("data", None))

        def __call__(self, x):
            return self.a(x) @ self.b

    with jax.set_mesh(mesh):
        model = Model(nnx.Rngs(0))
        opt = nm.MomentumOptimizer(model, lr=0.1)
        step = nm.make_train_step(lambda m, x: jnp.mean(m(x) ** 2), model, opt)
        step(jnp.ones((8, 4)))
        step(jnp.ones((8, 4)))
    trace = opt.opt_state.inner_state[3].trace
    ka = model.a.kernel.get_value().sharding
    va = trace["a"]["kernel"].get_value().sharding
    vb = trace["b"].get_value().sharding
    print("A", ka.spec, va.spec, "B", model.b.get_value().sharding.spec, vb.spec)
    assert va.spec == ka.spec == P(None, "data"), (ka, va)
    assert vb.is_equivalent_to(NamedSharding(mesh, P("data", None)), 2), vb
    assert opt.step_count == 2
    print("OK")
    """
)


@pytest.mark.slow
def test_velocity_sharding_on_8_devices():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


def test_bf16_params_bit_exact_with_optax_sgd():
    def make():
        model = MLP(nnx.Rngs(0))
        for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            var.set_value(var.get_value().astype(jnp.bfloat16))
        return model

    def bf16_loss(model, x, y):
        return loss_fn(model, x.astype(jnp.bfloat16), y.astype(jnp.bfloat16))

    ours_model, ref_model = make(), make()
    ours = nm.MomentumOptimizer(ours_model, lr=0.1, momentum=0.9, nesterov=True)
    ref = nnx.Optimizer(ref_model, optax.sgd(0.1, momentum=0.9, nesterov=True), wrt=nnx.Param)
    for x, y in batches(10):
        ours.update(ours_model, nnx.grad(bf16_loss)(ours_model, x, y))
        ref.update(ref_model, nnx.grad(bf16_loss)(ref_model, x, y))
    assert ours_model.l1.kernel.get_value().dtype == jnp.bfloat16
    assert tree_equal(nnx.state(ours_model), nnx.state(ref_model))


@pytest.mark.parametrize("kind", ["missing", "unknown", "shape", "dtype"])
def test_bad_grads_name_the_path_and_change_nothing(kind):
    model = MLP(nnx.Rngs(0))
    sched = nm.FixedLR(0.1)
    opt = nm.MomentumOptimizer(model, lr=sched)
    good = nnx.to_pure_dict(nnx.grad(loss_fn)(model, *batches(1)[0]))
    opt.update(model, good)
    sched.current_lr[...] = jnp.float32(0.01)  # would be written into opt_state by a step
    bad = jax.tree.map(lambda x: x, good)
    if kind == "missing":
        del bad["l2"]["bias"]
    elif kind == "unknown":
        bad["l3"] = {"bias": jnp.zeros(3)}
    elif kind == "shape":
        bad["l2"]["bias"] = jnp.zeros((2, 3))
    else:
        bad["l2"]["bias"] = bad["l2"]["bias"].astype(jnp.float16)
    before_model = nnx.to_pure_dict(nnx.state(model))
    before_opt = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(opt)))
    with pytest.raises(ValueError, match="l3/bias" if kind == "unknown" else "l2/bias"):
        opt.update(model, bad)
    assert tree_equal(before_model, nnx.to_pure_dict(nnx.state(model)))
    assert tree_equal(before_opt, nnx.to_pure_dict(nnx.state(opt)))


def test_lr_cannot_be_replaced_after_construction():
    opt = nm.MomentumOptimizer(MLP(nnx.Rngs(0)), lr=nm.StepLR(0.1, step_size=1))
    with pytest.raises(AttributeError, match="current_lr"):
        opt.lr = nm.FixedLR(0.5)
    assert isinstance(opt.lr, nm.StepLR)


@pytest.mark.slow
def test_hyperparams_are_json_and_stable_across_processes():
    import json

    code = (
        "import json, optax, nnx_momentum as nm\n"
        "from flax import nnx\n"
        "m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))\n"
        "lrs = (0.1, nm.OneCycleLR(0.1, total_steps=10), optax.cosine_decay_schedule(0.1, 5))\n"
        "for lr in lrs:\n"
        "    print(json.dumps(nm.MomentumOptimizer(m, lr=lr, grad_clip_norm=1.0).hyperparams,"
        " sort_keys=True))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    first = json.loads(runs[0].stdout.splitlines()[0])
    assert first["grad_clip_norm"] == 1.0 and first["lr"]["name"] == "FixedLR"


def test_load_state_dict_takes_a_python_int_step_and_float_lr():
    # torch's state dicts hold numbers; they take the live dtype when they fit
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2))
    src_model = MLP(nnx.Rngs(0))
    src = nm.MomentumOptimizer(src_model, lr=nm.StepLR(0.1, step_size=2))
    for x, y in batches(3):
        src.update(src_model, nnx.grad(loss_fn)(src_model, x, y))
    src.lr.step(3)
    sd = src.state_dict()
    sd["step"] = 3
    sd["lr"]["last_epoch"] = 3
    sd["lr"]["current_lr"] = 0.01
    opt.load_state_dict(sd)
    assert opt.step_count == 3 and opt.state_tree()["step"].get_value().dtype == jnp.uint32
    assert int(opt.lr.last_epoch[...]) == 3 and opt.get_last_lr() == [0.01]
    assert tree_equal(opt.state_dict()["opt_state"], src.state_dict()["opt_state"])


@pytest.mark.parametrize(
    "key,value,message",
    [
        (("step",), -1, r"at step: -1 does not fit the live uint32"),
        (("step",), 2.5, r"at step: 2.5 does not fit the live uint32"),
        (("lr", "last_epoch"), -1, r"at lr/last_epoch: last_epoch must be finite"),
        (("lr", "last_epoch"), jnp.asarray(-1, jnp.int32), r"at lr/last_epoch: last_epoch"),
        (("lr", "current_lr"), float("nan"), r"at lr/current_lr: current_lr must be finite"),
    ],
)
def test_load_state_dict_refuses_lossy_numbers_and_bad_epochs_naming_the_path(key, value, message):
    opt = nm.MomentumOptimizer(MLP(nnx.Rngs(0)), lr=nm.StepLR(0.1, step_size=2))
    before = opt.state_dict()
    bad = opt.state_dict()
    node = bad
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    assert tree_equal(before, opt.state_dict())


def _sgd_inject(tx):
    return optax.chain(tx, optax.inject_hyperparams(optax.sgd)(learning_rate=0.5))


LOSING_WRAPPERS = {
    "identity": (lambda tx: optax.identity(), "holds no optax.inject_hyperparams state"),
    "chained-inject-sgd": (_sgd_inject, r"holds [23] optax.inject_hyperparams state\(s\)"),
    "replaced-by-inject-sgd": (
        lambda tx: optax.inject_hyperparams(optax.sgd)(learning_rate=0.5),
        r"holds 1 optax.inject_hyperparams state\(s\)",
    ),
    "tx-twice": (lambda tx: optax.chain(tx, tx), r"holds [24] optax.inject_hyperparams"),
}


@pytest.mark.parametrize("grouped", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("name", list(LOSING_WRAPPERS))
def test_tx_wrapper_that_would_lose_the_runtime_lr_is_refused(name, grouped):
    # before: identity built, then get_last_lr() raised IndexError and updates ran at
    # optax's LR; a chained inject_hyperparams(sgd) had its LR overwritten silently
    wrapper, message = LOSING_WRAPPERS[name]
    groups = [nm.ParamGroup(lambda path, v: "l2" in path, lr=0.01)] if grouped else []
    with pytest.raises(ValueError, match=rf"tx_wrapper returned .*{message}"):
        nm.MomentumOptimizer(MLP(nnx.Rngs(0)), lr=0.1, groups=groups, tx_wrapper=wrapper)


def test_tx_wrapper_whose_init_fails_or_is_no_transformation_is_a_type_error():
    def broken(tx):
        return optax.GradientTransformation(lambda params: params["no such key"], tx.update)

    with pytest.raises(TypeError, match="tx_wrapper returned a transformation whose init fails"):
        nm.MomentumOptimizer(MLP(nnx.Rngs(0)), lr=0.1, tx_wrapper=broken)
    with pytest.raises(TypeError, match="tx_wrapper must return an optax transformation"):
        nm.MomentumOptimizer(MLP(nnx.Rngs(0)), lr=0.1, tx_wrapper=lambda tx: 0.1)


@pytest.mark.parametrize("grouped", [False, True], ids=["one-group", "two-groups"])
def test_tx_wrapper_keeping_one_inject_state_per_group_works(grouped):
    groups = [nm.ParamGroup(lambda path, v: "l2" in path, lr=0.1)] if grouped else []
    model, ref_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(
        model, lr=0.1, groups=groups, tx_wrapper=lambda tx: optax.chain(optax.clip(0.01), tx)
    )
    ref = optax.chain(optax.clip(0.01), optax.sgd(0.1, momentum=0.9))
    ref_params = nnx.to_pure_dict(nnx.state(ref_model, nnx.Param))
    ref_state = ref.init(ref_params)
    for x, y in batches(3):
        grads = nnx.grad(loss_fn)(model, x, y)
        opt.update(model, grads)
        upd, ref_state = ref.update(nnx.to_pure_dict(grads), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, upd)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert opt.get_last_lr() == ([0.1, 0.1] if grouped else [0.1])
