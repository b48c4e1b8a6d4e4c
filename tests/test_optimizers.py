"""The braintools-style face: Momentum, MomentumNesterov, SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models import (
    MLP,
    assert_params_close,
    batches,
    loss_fn,
    params_np,
    reference_grads_fn,
    tree_equal,
)
from reference import momentum_reference

import nnx_momentum as nm

N = 6
CONFIGS = [
    (nm.Momentum, dict(momentum=0.9)),
    (nm.Momentum, dict(momentum=0.9, weight_decay=0.05, grad_clip_norm=0.5)),
    (nm.Momentum, dict(momentum=0.5, grad_clip_value=0.05)),
    (nm.MomentumNesterov, dict(momentum=0.9, weight_decay=0.01)),
    (nm.SGD, dict()),
    (nm.SGD, dict(momentum=0.8, nesterov=True, grad_clip_norm=0.3, grad_clip_value=0.1)),
]


def _reference_kwargs(cls, kwargs):
    ref = dict(momentum=kwargs.get("momentum", 0.0 if cls is nm.SGD else 0.9))
    ref["nesterov"] = cls is nm.MomentumNesterov or kwargs.get("nesterov", False)
    for key in ("weight_decay", "grad_clip_norm", "grad_clip_value"):
        if key in kwargs:
            ref[key] = kwargs[key]
    return ref


def _train(optimizer, model, data, scheduler, mode):
    def step(model, optimizer, x, y):
        optimizer.step(nnx.grad(loss_fn)(model, x, y))

    if mode == "eager":
        for x, y in data:
            step(model, optimizer, x, y)
            scheduler.step()
    elif mode == "jit":
        jitted = nnx.jit(step)
        for x, y in data:
            jitted(model, optimizer, x, y)
            scheduler.step()
    else:  # scan: model and optimizer in the carry, the scheduler stepped inside
        xs = jnp.stack([b[0] for b in data])
        ys = jnp.stack([b[1] for b in data])

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def run(carry, x, y):
            model, optimizer = carry
            step(model, optimizer, x, y)
            optimizer.lr.step()
            return model, optimizer

        run((model, optimizer), xs, ys)


@pytest.mark.parametrize("mode", ["eager", "jit", "scan"])
@pytest.mark.parametrize("cls, kwargs", CONFIGS, ids=lambda c: getattr(c, "__name__", str(c)))
def test_trajectory_matches_numpy_reference(cls, kwargs, mode):
    model = MLP(nnx.Rngs(0))
    data = batches(N)
    scheduler = nm.StepLR(0.1, step_size=2, gamma=0.5)
    lrs = [0.1 * 0.5 ** (t // 2) for t in range(N)]
    want = momentum_reference(
        params_np(model),
        None,
        lrs,
        grads_fn=reference_grads_fn(model, data),
        **_reference_kwargs(cls, kwargs),
    )[-1]
    optimizer = cls(lr=scheduler, **kwargs).register_trainable_weights(nnx.state(model, nnx.Param))
    _train(optimizer, model, data, scheduler, mode)
    assert_params_close(model, want)
    assert optimizer.step_count == N


def test_eager_jit_scan_identical():
    results = []
    for mode in ("eager", "jit", "scan"):
        model = MLP(nnx.Rngs(0))
        scheduler = nm.ExponentialLR(0.1, gamma=0.9)
        optimizer = nm.Momentum(lr=scheduler, weight_decay=1e-3).register_trainable_weights(model)
        _train(optimizer, model, batches(N), scheduler, mode)
        results.append((params_np(model), optimizer.state_dict()))
    for other in results[1:]:
        for k in results[0][0]:
            np.testing.assert_allclose(other[0][k], results[0][0][k], rtol=1e-6, atol=1e-7)
        assert jax.tree.structure(other[1]) == jax.tree.structure(results[0][1])
        for a, b in zip(jax.tree.leaves(other[1]), jax.tree.leaves(results[0][1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_current_lr_setter_changes_applied_lr():
    model = MLP(nnx.Rngs(0))
    optimizer = nm.SGD(lr=0.1).register_trainable_weights(model)
    optimizer.current_lr = 0.0
    before = params_np(model)
    optimizer.step(nnx.grad(loss_fn)(model, *batches(1)[0]))
    after = params_np(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert optimizer.current_lr == 0.0 and optimizer.base_lr == pytest.approx(0.1)


def test_lr_change_does_not_rescale_velocity():
    w = nnx.Param(jnp.zeros(()))
    optimizer = nm.Momentum(lr=1.0, momentum=0.5).register_trainable_weights({"w": w})
    optimizer.step({"w": jnp.ones(())})  # v = 1, w = -1
    optimizer.current_lr = 0.1
    optimizer.step({"w": jnp.ones(())})  # v = 1.5, w = -1 - 0.15
    assert float(w[...]) == pytest.approx(-1.15)


def test_one_trace_across_scheduler_steps_and_lr_changes():
    model = MLP(nnx.Rngs(0))
    scheduler = nm.CosineAnnealingLR(0.1, T_max=5)
    optimizer = nm.Momentum(lr=scheduler).register_trainable_weights(model)
    traces = []

    @nnx.jit
    def step(model, optimizer, x, y):
        traces.append(1)
        optimizer.step(nnx.grad(loss_fn)(model, x, y))

    for i, (x, y) in enumerate(batches(8)):
        step(model, optimizer, x, y)
        scheduler.step()
        if i == 4:
            optimizer.current_lr = 0.3
    assert len(traces) == 1


def test_state_dict_resume_equals_uninterrupted():
    data = batches(8)

    def make():
        model = MLP(nnx.Rngs(0))
        sched = nm.ReduceLROnPlateau(0.1, factor=0.5, patience=0)
        opt = nm.Momentum(lr=sched, weight_decay=0.01, grad_clip_norm=1.0)
        return model, sched, opt.register_trainable_weights(model)

    def run(model, sched, opt, part):
        for x, y in part:
            loss = loss_fn(model, x, y)
            opt.step(nnx.grad(loss_fn)(model, x, y))
            sched.step(loss)

    model, sched, opt = make()
    run(model, sched, opt, data)
    straight = params_np(model)

    model, sched, opt = make()
    run(model, sched, opt, data[:3])
    saved_state, saved_params = opt.state_dict(), nnx.to_pure_dict(nnx.state(model))
    assert "step" in saved_state and "lr" in saved_state and "opt_state" in saved_state
    model2, sched2, opt2 = make()
    nnx.update(model2, saved_params)
    opt2.load_state_dict(saved_state)
    assert opt2.current_lr == opt.current_lr and opt2.step_count == 3
    run(model2, sched2, opt2, data[3:])
    resumed = params_np(model2)
    assert all(np.array_equal(resumed[k], straight[k]) for k in straight)


def test_state_dict_has_no_weights():
    model = MLP(nnx.Rngs(0))
    opt = nm.Momentum(lr=0.1).register_trainable_weights(model)
    n_weights = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    n_state = sum(np.size(x) for x in jax.tree.leaves(opt.state_dict()))
    assert n_state < 2 * n_weights  # velocity + a few scalars, not velocity + weights


# -- registration ------------------------------------------------------------------
def test_register_model_or_state_or_dict_or_list():
    for weights in ("model", "state", "dict", "list"):
        model = MLP(nnx.Rngs(0))
        w = {
            "model": model,
            "state": nnx.state(model, nnx.Param),
            "dict": {"a": nnx.state(model.l1, nnx.Param), "b": nnx.state(model.l2, nnx.Param)},
            "list": [model.l1.kernel, model.l1.bias, model.l2.kernel, model.l2.bias],
        }[weights]
        opt = nm.Momentum(lr=0.1).register_trainable_weights(w)
        g = nnx.grad(loss_fn)(model, *batches(1)[0])
        grads = {
            "model": g,
            "state": g,
            "dict": {"a": g["l1"], "b": g["l2"]},
            "list": [g["l1"]["kernel"], g["l1"]["bias"], g["l2"]["kernel"], g["l2"]["bias"]],
        }[weights]
        before = params_np(model)
        opt.step(grads)
        after = params_np(model)
        assert all(not np.array_equal(before[k], after[k]) for k in before), weights


def test_registering_submodules_separately_never_overwrites():
    model = MLP(nnx.Rngs(0))
    opt = nm.Momentum(lr=0.1).register_trainable_weights(nnx.state(model.l1, nnx.Param))
    with pytest.raises(ValueError, match=r"\['bias', 'kernel'\]"):
        opt.register_trainable_weights(nnx.state(model.l2, nnx.Param))
    # the failed call changed nothing, and the same weights again is a no-op:
    opt.register_trainable_weights(nnx.state(model.l1, nnx.Param))
    g = nnx.grad(loss_fn)(model, *batches(1)[0])
    before = params_np(model)
    opt.step(g["l1"])
    after = params_np(model)
    assert not np.array_equal(before["l1/kernel"], after["l1/kernel"])
    assert np.array_equal(before["l2/kernel"], after["l2/kernel"])


def test_register_pure_arrays_rejected():
    model = MLP(nnx.Rngs(0))
    with pytest.raises(TypeError, match="l1/"):
        nm.Momentum().register_trainable_weights(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_new_weights_after_first_step_rejected():
    model = MLP(nnx.Rngs(0))
    opt = nm.Momentum(lr=0.1).register_trainable_weights({"l1": nnx.state(model.l1, nnx.Param)})
    g = nnx.grad(loss_fn)(model, *batches(1)[0])
    opt.step({"l1": g["l1"]})
    with pytest.raises(ValueError, match="before the first step"):
        opt.register_trainable_weights({"l2": nnx.state(model.l2, nnx.Param)})


# -- bad grads: error names the path, nothing is updated ---------------------------------
def _bad_grads(kind, g):
    pure = nnx.to_pure_dict(g)
    if kind == "missing":
        del pure["l2"]["bias"]
    elif kind == "unknown":
        pure["l3"] = {"kernel": jnp.zeros(3)}
    elif kind == "shape":
        pure["l2"]["bias"] = jnp.zeros(7)
    elif kind == "dtype":
        pure["l2"]["bias"] = pure["l2"]["bias"].astype(jnp.bfloat16)
    return pure


@pytest.mark.parametrize(
    "kind, path",
    [("missing", "l2/bias"), ("unknown", "l3/kernel"), ("shape", "l2/bias"), ("dtype", "l2/bias")],
)
def test_bad_grads_name_the_path_and_change_nothing(kind, path):
    model = MLP(nnx.Rngs(0))
    opt = nm.Momentum(lr=0.1).register_trainable_weights(model)
    g = nnx.grad(loss_fn)(model, *batches(1)[0])
    opt.step(g)
    before_params, before_state = params_np(model), opt.state_dict()
    with pytest.raises(ValueError, match=path):
        opt.step(_bad_grads(kind, g))
    after = params_np(model)
    assert all(np.array_equal(before_params[k], after[k]) for k in after)
    assert tree_equal(before_state, opt.state_dict())


def test_step_before_registration():
    with pytest.raises(RuntimeError, match="register_trainable_weights"):
        nm.Momentum().step({"w": jnp.zeros(2)})


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (nm.Momentum, dict(lr=-1.0), "lr"),
        (nm.Momentum, dict(lr=float("nan")), "lr"),
        (nm.Momentum, dict(momentum=1.5), "momentum"),
        (nm.Momentum, dict(weight_decay=-0.1), "weight_decay"),
        (nm.Momentum, dict(grad_clip_norm=0.0), "grad_clip_norm"),
        (nm.Momentum, dict(grad_clip_value=-2.0), "grad_clip_value"),
        (nm.MomentumNesterov, dict(momentum=0.0), "momentum"),
        (nm.SGD, dict(momentum=0.0, nesterov=True), "momentum"),
    ],
)
def test_bad_hyperparameters(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_braintools_signatures_and_attributes():
    import inspect

    def braintools_part(cls):
        """The positional parameters (braintools'); additions must be keyword-only."""
        items = list(inspect.signature(cls).parameters.items())
        extra = [p for _, p in items if p.kind is not p.POSITIONAL_OR_KEYWORD]
        assert all(p.kind is p.KEYWORD_ONLY for p in extra)
        return [(k, p) for k, p in items if p.kind is p.POSITIONAL_OR_KEYWORD]

    params = braintools_part(nm.Momentum)
    assert [(k, p.default) for k, p in params] == [
        ("lr", 0.001),
        ("momentum", 0.9),
        ("weight_decay", 0.0),
        ("grad_clip_norm", None),
        ("grad_clip_value", None),
    ]
    sgd = [(k, p.default) for k, p in braintools_part(nm.SGD)]
    assert sgd == [
        ("lr", 0.001),
        ("momentum", 0.0),
        ("weight_decay", 0.0),
        ("nesterov", False),
        ("grad_clip_norm", None),
        ("grad_clip_value", None),
    ]
    model = MLP(nnx.Rngs(0))
    opt = nm.Momentum(lr=nm.StepLR(0.1, step_size=1))
    assert opt.opt_state is None
    opt.register_trainable_weights(model)
    assert opt.update == opt.step or opt.update.__func__ is opt.step.__func__
    assert opt.default_tx() is opt.tx and opt.get_last_lr() == [pytest.approx(0.1)]
    assert opt.opt_state is not None and isinstance(opt.lr, nm.StepLR)


def test_matches_braintools_itself():
    braintools = pytest.importorskip("braintools")
    brainstate = pytest.importorskip("brainstate")
    model = MLP(nnx.Rngs(0))
    data = batches(N)
    flat0 = params_np(model)
    weights = {k.replace("/", "_"): brainstate.ParamState(jnp.asarray(v)) for k, v in flat0.items()}
    sched = braintools.optim.StepLR(base_lr=0.1, step_size=2, gamma=0.5)
    bt = braintools.optim.Momentum(lr=sched, momentum=0.9, weight_decay=0.01, grad_clip_norm=1.0)
    bt.register_trainable_weights(weights)
    ours_sched = nm.StepLR(base_lr=0.1, step_size=2, gamma=0.5)
    ours = nm.Momentum(lr=ours_sched, momentum=0.9, weight_decay=0.01, grad_clip_norm=1.0)
    ours.register_trainable_weights(model)
    for x, y in data:
        g = nnx.grad(loss_fn)(model, x, y)
        bt.step({"_".join(p): v.get_value() for p, v in nnx.to_flat_state(g)})
        ours.step(g)
        sched.step()
        ours_sched.step()
    for k, v in params_np(model).items():
        np.testing.assert_allclose(v, weights[k.replace("/", "_")].value, rtol=1e-5, atol=1e-6)


def test_failed_registration_changes_nothing():
    model = MLP(nnx.Rngs(0))
    sched = nm.StepLR(0.1, step_size=1)
    opt = nm.Momentum(lr=sched)
    bad = {"w": nnx.Param(jnp.zeros(2)), "x": nnx.Param("not an array")}
    with pytest.raises(Exception):  # noqa: B017 - whatever optax says, nothing may change
        opt.register_trainable_weights(bad)
    assert opt.lr is sched and opt.opt_state is None
    opt.register_trainable_weights(model)
    with pytest.raises(Exception):  # noqa: B017
        opt.register_trainable_weights({"extra": {"x": nnx.Param("not an array")}})
    opt.step(nnx.grad(loss_fn)(model, *batches(1)[0]))  # still exactly the model's weights
    assert opt.step_count == 1


def test_same_variable_under_two_paths_rejected():
    model = MLP(nnx.Rngs(0))
    opt = nm.Momentum(lr=0.1).register_trainable_weights(nnx.state(model.l1, nnx.Param))
    with pytest.raises(ValueError, match="registered twice"):
        opt.register_trainable_weights(model)


def test_state_dict_survives_donated_steps():
    model = MLP(nnx.Rngs(0))
    opt = nm.Momentum(lr=0.1).register_trainable_weights(model)
    step = nm.make_train_step(loss_fn, model, opt)
    data = batches(3)
    step(*data[0])
    snapshot = opt.state_dict()
    step(*data[1])
    other = nm.Momentum(lr=0.1).register_trainable_weights(MLP(nnx.Rngs(0)))
    other.load_state_dict(snapshot)  # the snapshot's buffers were not donated
    step(*data[2])
    assert other.step_count == 1 and opt.step_count == 3


def test_hyperparameter_attributes():
    opt = nm.SGD(lr=0.1, momentum=0.5, weight_decay=0.01, nesterov=True, grad_clip_value=1.0)
    assert (opt.momentum, opt.weight_decay, opt.nesterov) == (0.5, 0.01, True)
    assert (opt.grad_clip_norm, opt.grad_clip_value) == (None, 1.0)


def test_load_state_dict_takes_a_python_int_step():
    # as torch's optimizer.load_state_dict takes a number; a lossy one names the path
    model = MLP(nnx.Rngs(0))
    optimizer = nm.Momentum(lr=0.1).register_trainable_weights(model)
    state = optimizer.state_dict()
    state["step"] = 12
    optimizer.load_state_dict(state)
    assert optimizer.step_count == 12
    state["step"] = -1
    with pytest.raises(ValueError, match="at step: -1 does not fit the live uint32"):
        optimizer.load_state_dict(state)
    assert optimizer.step_count == 12
