"""Tests for nnx_momentum.schedulers: values, jit, jumps, state, errors, braintools parity."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nnx_momentum import schedulers as sch

RTOL = 1e-5
ATOL = 1e-7
TATOL = 6e-7  # the table is rounded to 6 decimals

# --------------------------------------------------------------------------
# The reference table: values[e] is current_lr after e calls to step().
# --------------------------------------------------------------------------
PLATEAU_METRICS = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]

TABLE = {
    "StepLR": (
        lambda: sch.StepLR(0.1, step_size=3, gamma=0.1),
        [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001],
    ),
    "MultiStepLR": (
        lambda: sch.MultiStepLR(0.1, milestones=[2, 5], gamma=0.1),
        [0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001],
    ),
    "ExponentialLR": (
        lambda: sch.ExponentialLR(0.1, gamma=0.5),
        [0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625, 0.00078125],
    ),
    "ExponentialDecayLR": (
        lambda: sch.ExponentialDecayLR(0.1, decay_steps=2, decay_rate=0.5),
        [0.1, 0.070711, 0.05, 0.035355, 0.025, 0.017678, 0.0125, 0.008839],
    ),
    "ExponentialDecayLR-staircase": (
        lambda: sch.ExponentialDecayLR(0.1, decay_steps=2, decay_rate=0.5, staircase=True),
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125],
    ),
    "CosineAnnealingLR": (
        lambda: sch.CosineAnnealingLR(0.1, T_max=4),
        [0.1, 0.085355, 0.05, 0.014645, 0, 0, 0, 0],
    ),
    "PolynomialLR": (
        lambda: sch.PolynomialLR(0.1, total_iters=4, power=1),
        [0.1, 0.075, 0.05, 0.025, 0, 0, 0, 0],
    ),
    "WarmupScheduler": (
        lambda: sch.WarmupScheduler(0.1, warmup_epochs=4, warmup_start_lr=0),
        [0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1],
    ),
    "CyclicLR": (
        lambda: sch.CyclicLR(0.01, max_lr=0.1, step_size_up=2),
        [0.01, 0.055, 0.1, 0.055, 0.01, 0.055, 0.1, 0.055],
    ),
    "OneCycleLR": (
        lambda: sch.OneCycleLR(max_lr=0.1, total_steps=8),
        [0.004, 0.044, 0.084, 0.097194, 0.081176, 0.055603, 0.028313, 0.007673],
    ),
    "LinearLR": (
        lambda: sch.LinearLR(0.1, start_factor=0.25, total_iters=4),
        [0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1, 0.1, 0.1],
    ),
    "ConstantLR": (
        lambda: sch.ConstantLR(0.1, factor=0.5, total_iters=3),
        [0.05, 0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1],
    ),
    "CosineAnnealingWarmRestarts": (
        lambda: sch.CosineAnnealingWarmRestarts(0.1, T_0=3),
        [0.1, 0.075, 0.025, 0.1, 0.075, 0.025, 0.1, 0.075],
    ),
    "WarmupCosineSchedule": (
        lambda: sch.WarmupCosineSchedule(0.1, warmup_steps=2, total_steps=6),
        [0, 0.05, 0.1, 0.085355, 0.05, 0.014645, 0, 0],
    ),
    "PiecewiseConstantSchedule": (
        lambda: sch.PiecewiseConstantSchedule(boundaries=[2, 5], values=[0.1, 0.01, 0.001]),
        [0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001],
    ),
    "ChainedScheduler": (
        lambda: sch.ChainedScheduler(
            [sch.LinearLR(0.1, start_factor=0.5, total_iters=2), sch.ExponentialLR(0.1, gamma=0.5)]
        ),
        [0.05, 0.0375, 0.025, 0.0125, 0.00625, 0.003125, 0.0015625, 0.00078125],
    ),
    "SequentialLR": (
        lambda: sch.SequentialLR(
            [sch.ConstantLR(0.1, factor=1, total_iters=0), sch.ExponentialLR(0.1, gamma=0.5)],
            milestones=[3],
        ),
        [0.1, 0.1, 0.1, 0.1, 0.05, 0.025, 0.0125, 0.00625],
    ),
    "ReduceLROnPlateau": (
        lambda: sch.ReduceLROnPlateau(0.1, factor=0.5, patience=1),
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025],
    ),
}
CLOSED_FORM = [k for k in TABLE if k != "ReduceLROnPlateau"]


def _step(s, i, epoch=None):
    """One step; ReduceLROnPlateau gets the i-th table metric."""
    if isinstance(s, sch.ReduceLROnPlateau):
        s.step(PLATEAU_METRICS[i], epoch)
    else:
        s.step(epoch)


def _run_eager(s, n):
    out = [float(s.current_lr[...])]
    for i in range(n):
        _step(s, i)
        out.append(s.get_last_lr()[0])
    return out


def test_all_required_names_exported():
    required = """StepLR MultiStepLR ExponentialLR ExponentialDecayLR CosineAnnealingLR
    PolynomialLR WarmupScheduler CyclicLR OneCycleLR ReduceLROnPlateau LinearLR ConstantLR
    ChainedScheduler SequentialLR CosineAnnealingWarmRestarts WarmupCosineSchedule
    PiecewiseConstantSchedule""".split()
    for name in [*required, "FixedLR", "LRScheduler", "SchedulerState", "as_scheduler"]:
        assert name in sch.__all__ and hasattr(sch, name)


SCHEDULER_CLASSES = [
    getattr(sch, n)
    for n in sch.__all__
    if isinstance(getattr(sch, n), type) and issubclass(getattr(sch, n), sch.LRScheduler)
]


@pytest.mark.parametrize("cls", SCHEDULER_CLASSES, ids=lambda c: c.__name__)
def test_signature_names_the_constructor_parameters(cls):
    """nnx's metaclass would show (*args, **kwargs); help() and inspect see __init__'s."""
    import inspect
    import pydoc

    params = list(inspect.signature(cls).parameters)
    assert params == list(inspect.signature(cls.__init__).parameters)[1:]
    assert "args" not in params and "kwargs" not in params and "self" not in params
    assert f"{cls.__name__}({params[0]}" in pydoc.render_doc(cls, renderer=pydoc.plaintext)


def test_signature_examples_and_instances_keep_call_signature():
    import inspect

    assert list(inspect.signature(sch.StepLR).parameters) == [
        "base_lr",
        "step_size",
        "gamma",
        "last_epoch",
    ]
    assert list(inspect.signature(sch.LRScheduler).parameters) == ["base_lr", "last_epoch"]
    assert list(inspect.signature(sch.ChainedScheduler).parameters) == ["schedulers"]
    # an instance is an optax schedule: its signature is __call__'s
    assert list(inspect.signature(sch.StepLR(0.1)).parameters) == ["count"]


@pytest.mark.parametrize("name", list(TABLE))
def test_spec_table_eager(name):
    factory, expected = TABLE[name]
    s = factory()
    assert int(s.last_epoch[...]) == 0
    np.testing.assert_allclose(_run_eager(s, 7), expected, rtol=RTOL, atol=TATOL)
    assert s.last_epoch[...].dtype == jnp.int32 and s.current_lr[...].dtype == jnp.float32
    assert isinstance(s.base_lr, float)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_lr_at_and_get_lr_match_table(name):
    factory, expected = TABLE[name]
    s = factory()
    np.testing.assert_allclose(s.lr_at(jnp.arange(8)), expected, rtol=RTOL, atol=TATOL)
    for e in range(8):
        np.testing.assert_allclose(float(s.get_lr()), expected[e], rtol=RTOL, atol=TATOL)
        s.step()


class Holder(nnx.Pytree):
    def __init__(self, sched):
        self.sched = sched


@pytest.mark.parametrize("name", list(TABLE))
def test_spec_table_inside_nnx_jit_traces_once(name):
    factory, expected = TABLE[name]
    holder = Holder(factory())
    traces = []

    @nnx.jit
    def train_epoch(h, metric):
        traces.append(1)
        if isinstance(h.sched, sch.ReduceLROnPlateau):
            h.sched.step(metric)
        else:
            h.sched.step()
        return h.sched.current_lr[...]

    got = [float(holder.sched.current_lr[...])]
    for i in range(7):
        returned = train_epoch(holder, jnp.float32(PLATEAU_METRICS[i]))
        got.append(float(holder.sched.current_lr[...]))
        assert float(returned) == got[-1]
    got.append(float(train_epoch(holder, jnp.float32(PLATEAU_METRICS[7]))))  # 8th call
    np.testing.assert_allclose(got[:8], expected, rtol=RTOL, atol=TATOL)
    assert len(traces) == 1
    assert int(holder.sched.last_epoch[...]) == 8


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_step_epoch_jumps(name):
    factory, expected = TABLE[name]
    s = factory()
    for e in [5, 2, 7, 0, 3]:
        s.step(e)
        assert int(s.last_epoch[...]) == e
        np.testing.assert_allclose(float(s.current_lr[...]), expected[e], rtol=RTOL, atol=TATOL)
    s.step()  # continues from the jumped-to epoch
    np.testing.assert_allclose(float(s.current_lr[...]), expected[4], rtol=RTOL, atol=TATOL)

    jumped = Holder(factory())
    traces = []

    @nnx.jit
    def jump(h, e):
        traces.append(1)
        h.sched.step(e)

    for e in [6, 1, 4]:
        jump(jumped, jnp.int32(e))
        np.testing.assert_allclose(
            float(jumped.sched.current_lr[...]), expected[e], rtol=RTOL, atol=TATOL
        )
    assert len(traces) == 1


def test_warm_restarts_tmult_jumps_match_incremental():
    a = sch.CosineAnnealingWarmRestarts(0.1, T_0=2, T_mult=3, eta_min=0.01)
    for e in range(1, 60):
        a.step()
        b = sch.CosineAnnealingWarmRestarts(0.1, T_0=2, T_mult=3, eta_min=0.01)
        b.step(e)
        assert int(b.T_cur[...]) == int(a.T_cur[...]) and int(b.T_i[...]) == int(a.T_i[...]), e
        np.testing.assert_allclose(float(b.current_lr[...]), float(a.current_lr[...]), rtol=RTOL)
        np.testing.assert_allclose(float(a.lr_at(e)), float(a.current_lr[...]), rtol=RTOL)


@pytest.mark.parametrize("name", list(TABLE))
def test_state_dict_round_trip_mid_schedule(name):
    factory, _ = TABLE[name]
    a = factory()
    for i in range(4):
        _step(a, i)
    sd = a.state_dict()
    assert all(isinstance(v, (jax.Array, dict)) for v in sd.values())
    b = factory()
    b.load_state_dict(sd)
    assert float(b.current_lr[...]) == float(a.current_lr[...])
    for i in range(4, 8):
        _step(a, i)
        _step(b, i)
        assert float(a.current_lr[...]) == float(b.current_lr[...])
    json.dumps(a.describe())
    assert a.describe() == b.describe() and a.describe()["name"] == type(a).__name__


def test_state_dict_carries_plateau_counters_and_children():
    s = sch.ReduceLROnPlateau(0.1, factor=0.5, patience=3, cooldown=2)
    for m in [1.0, 0.5, 0.6]:
        s.step(m)
    sd = s.state_dict()
    assert {"best", "num_bad_epochs", "cooldown_counter", "last_epoch", "current_lr"} <= set(sd)
    assert float(sd["best"]) == 0.5 and int(sd["num_bad_epochs"]) == 1

    chained = TABLE["ChainedScheduler"][0]()
    chained.step()
    sd = chained.state_dict()
    assert int(sd["schedulers"][0]["last_epoch"]) == 1
    # string keys (as a target-less checkpoint restore gives) load too
    sd_str = {**sd, "schedulers": {str(k): v for k, v in sd["schedulers"].items()}}
    fresh = TABLE["ChainedScheduler"][0]()
    fresh.load_state_dict(sd_str)
    assert int(fresh.schedulers[1].last_epoch[...]) == 1


def test_load_state_dict_validates_before_writing():
    s = sch.ReduceLROnPlateau(0.1)
    good = s.state_dict()
    before = {k: np.asarray(v) for k, v in good.items()}
    bad_shape = {**good, "best": jnp.zeros(3), "last_epoch": jnp.asarray(9, jnp.int32)}
    with pytest.raises(ValueError, match="best"):
        s.load_state_dict(bad_shape)
    missing = {k: v for k, v in good.items() if k != "num_bad_epochs"}
    with pytest.raises(ValueError, match="num_bad_epochs"):
        s.load_state_dict(missing)
    with pytest.raises(ValueError, match="bogus"):
        s.load_state_dict({**good, "bogus": jnp.zeros(())})
    # the package's loading rule (nnx_momentum.tree): another dtype is refused, never cast
    with pytest.raises(ValueError, match="num_bad_epochs.*dtype"):
        s.load_state_dict({**good, "num_bad_epochs": jnp.asarray(2.0, jnp.float32)})
    with pytest.raises(TypeError, match="dict"):
        s.load_state_dict([good])
    after = {k: np.asarray(v) for k, v in s.state_dict().items()}
    assert all(np.array_equal(before[k], after[k]) for k in before)

    seq = TABLE["SequentialLR"][0]()
    sd = seq.state_dict()
    sd["schedulers"][1]["current_lr"] = jnp.zeros((2,))
    with pytest.raises(ValueError, match="schedulers/1/current_lr"):
        seq.load_state_dict(sd)


def test_describe_composites_and_json():
    d = TABLE["SequentialLR"][0]().describe()
    assert d["name"] == "SequentialLR" and d["milestones"] == [3]
    assert [c["name"] for c in d["schedulers"]] == ["ConstantLR", "ExponentialLR"]
    d = sch.OneCycleLR(max_lr=0.1, epochs=2, steps_per_epoch=5).describe()
    assert d == {
        "name": "OneCycleLR",
        "max_lr": 0.1,
        "total_steps": None,
        "epochs": 2,
        "steps_per_epoch": 5,
        "pct_start": 0.3,
        "anneal_strategy": "cos",
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "last_epoch": 0,
    }
    assert json.loads(json.dumps(sch.CyclicLR(scale_fn=lambda c: 1.0 / c).describe()))
    assert sch.StepLR(0.1).describe() != sch.StepLR(0.2).describe()


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_call_is_an_optax_schedule(name):
    factory, expected = TABLE[name]
    s = factory()
    np.testing.assert_allclose(jax.jit(s)(jnp.arange(8)), expected, rtol=RTOL, atol=TATOL)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=s)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for e in range(4):  # the e-th sgd update applies lr_at(e)
        updates, state = update({"w": jnp.ones(2)}, state, params)
        np.testing.assert_allclose(-updates["w"], [expected[e]] * 2, rtol=RTOL, atol=TATOL)


def test_plateau_is_not_a_schedule_and_needs_metric():
    s = sch.ReduceLROnPlateau(0.1)
    with pytest.raises(TypeError, match="metric"):
        s(0)
    with pytest.raises(TypeError, match="metric"):
        s.step()
    c = sch.ChainedScheduler([sch.ExponentialLR(0.1, gamma=0.5), sch.ReduceLROnPlateau(0.1)])
    with pytest.raises(TypeError, match="metric"):
        c.step()
    c.step(metric=1.0)
    np.testing.assert_allclose(c.get_last_lr()[0], 0.05, rtol=RTOL)


def test_plateau_modes_cooldown_min_lr():
    s = sch.ReduceLROnPlateau(
        1.0,
        mode="max",
        factor=0.5,
        patience=0,
        threshold=0.1,
        threshold_mode="abs",
        cooldown=1,
        min_lr=0.2,
    )
    lrs = []
    for m in [1.0, 1.05, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]:
        s.step(m)
        lrs.append(round(s.get_last_lr()[0], 6))
    # 1.05 is not better by 0.1 -> reduce; cooldown skips one epoch; floors at 0.2
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2]


def test_as_scheduler():
    fixed = sch.as_scheduler(0.1)
    assert isinstance(fixed, sch.FixedLR) and fixed.base_lr == 0.1
    fixed.step(5)
    assert fixed.get_last_lr() == [pytest.approx(0.1)]
    s = sch.StepLR(0.1)
    assert sch.as_scheduler(s) is s
    assert isinstance(sch.as_scheduler(np.float32(0.5)), sch.FixedLR)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="lr"):
            sch.as_scheduler(bad)
    for bad in ("0.1", None, [0.1], True):
        with pytest.raises(TypeError, match="lr"):
            sch.as_scheduler(bad)
    with pytest.raises(TypeError, match="optimizers"):
        sch.as_scheduler(optax.constant_schedule(0.1))


BAD_ARGS = [
    (lambda: sch.StepLR(-0.1), "base_lr"),
    (lambda: sch.StepLR(float("nan")), "base_lr"),
    (lambda: sch.StepLR(0.1, step_size=0), "step_size"),
    (lambda: sch.StepLR(0.1, gamma=0.0), "gamma"),
    (lambda: sch.StepLR(0.1, last_epoch=-1), "last_epoch"),
    (lambda: sch.MultiStepLR(0.1, milestones=[5, 2]), "milestones"),
    (lambda: sch.MultiStepLR(0.1, milestones=[2, 2]), "milestones"),
    (lambda: sch.MultiStepLR(0.1, gamma=-1.0), "gamma"),
    (lambda: sch.ExponentialLR(0.1, gamma=0), "gamma"),
    (lambda: sch.ExponentialDecayLR(0.1, decay_steps=0), "decay_steps"),
    (lambda: sch.ExponentialDecayLR(0.1, decay_rate=0), "decay_rate"),
    (lambda: sch.ExponentialDecayLR(0.1, transition_begin=-1), "transition_begin"),
    (lambda: sch.CosineAnnealingLR(0.1, T_max=0), "T_max"),
    (lambda: sch.CosineAnnealingLR(0.1, eta_min=-1.0), "eta_min"),
    (lambda: sch.PolynomialLR(0.1, total_iters=0), "total_iters"),
    (lambda: sch.WarmupScheduler(0.1, warmup_epochs=-1), "warmup_epochs"),
    (lambda: sch.CyclicLR(0.01, step_size_up=0), "step_size_up"),
    (lambda: sch.CyclicLR(0.01, step_size_down=0), "step_size_down"),
    (lambda: sch.CyclicLR(0.01, mode="sawtooth"), "mode"),
    (lambda: sch.CyclicLR(0.01, scale_mode="epoch"), "scale_mode"),
    (lambda: sch.CyclicLR(0.01, max_lr=-1.0), "max_lr"),
    (lambda: sch.OneCycleLR(0.1), "total_steps"),
    (lambda: sch.OneCycleLR(0.1, total_steps=0), "total_steps"),
    (lambda: sch.OneCycleLR(0.1, total_steps=10, pct_start=1.0), "pct_start"),
    (lambda: sch.OneCycleLR(0.1, total_steps=10, pct_start=0.0), "pct_start"),
    (lambda: sch.OneCycleLR(0.1, total_steps=10, anneal_strategy="exp"), "anneal_strategy"),
    (lambda: sch.OneCycleLR(0.1, total_steps=10, div_factor=0), "div_factor"),
    (lambda: sch.ReduceLROnPlateau(0.1, mode="avg"), "mode"),
    (lambda: sch.ReduceLROnPlateau(0.1, factor=1.0), "factor"),
    (lambda: sch.ReduceLROnPlateau(0.1, threshold_mode="pct"), "threshold_mode"),
    (lambda: sch.ReduceLROnPlateau(0.1, patience=-1), "patience"),
    (lambda: sch.ReduceLROnPlateau(0.1, cooldown=-2), "cooldown"),
    (lambda: sch.ReduceLROnPlateau(0.1, min_lr=-1.0), "min_lr"),
    (lambda: sch.LinearLR(0.1, start_factor=-1.0), "start_factor"),
    (lambda: sch.LinearLR(0.1, total_iters=-1), "total_iters"),
    (lambda: sch.ConstantLR(0.1, factor=-0.5), "factor"),
    (lambda: sch.ConstantLR(0.1, total_iters=-1), "total_iters"),
    (lambda: sch.ChainedScheduler([]), "schedulers"),
    (lambda: sch.SequentialLR([sch.StepLR(0.1)], milestones=[3]), "milestones"),
    (lambda: sch.SequentialLR([sch.StepLR(0.1), sch.StepLR(0.1)], [-1]), "milestones"),
    (lambda: sch.CosineAnnealingWarmRestarts(0.1, T_0=0), "T_0"),
    (lambda: sch.CosineAnnealingWarmRestarts(0.1, T_mult=0), "T_mult"),
    (lambda: sch.WarmupCosineSchedule(0.1, warmup_steps=-1), "warmup_steps"),
    (lambda: sch.WarmupCosineSchedule(0.1, warmup_steps=10, total_steps=5), "total_steps"),
    (lambda: sch.PiecewiseConstantSchedule(boundaries=[2], values=[0.1]), "values"),
    (lambda: sch.PiecewiseConstantSchedule(boundaries=[4, 2], values=[1, 2, 3]), "boundaries"),
    (lambda: sch.PiecewiseConstantSchedule(boundaries=[2], values=[0.1, -1.0]), "values"),
]


@pytest.mark.parametrize("make,arg", BAD_ARGS, ids=[a for _, a in BAD_ARGS])
def test_bad_arguments_raise_value_error_naming_argument(make, arg):
    with pytest.raises(ValueError) as info:
        make()
    assert arg in str(info.value)


def test_bad_children_raise_type_error():
    with pytest.raises(TypeError, match="schedulers"):
        sch.ChainedScheduler([sch.StepLR(0.1), 0.1])
    with pytest.raises(TypeError, match="schedulers"):
        sch.SequentialLR([sch.StepLR(0.1), sch.ReduceLROnPlateau(0.1)], milestones=[2])
    with pytest.raises(TypeError, match="scale_fn"):
        sch.CyclicLR(0.01, scale_fn=3)


def test_stepping_does_not_retrace_an_optimizer_like_owner():
    """A Module owning a scheduler sees new LRs each call without retracing."""

    class Owner(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(3))
            self.lr = sch.ExponentialLR(1.0, gamma=0.5)

    owner = Owner()
    traces = []

    @nnx.jit
    def step(o):
        traces.append(1)
        o.w[...] = o.w[...] - o.lr.current_lr[...]
        o.lr.step()

    for _ in range(4):
        step(owner)
    owner.lr.current_lr[...] = jnp.float32(10.0)  # as an optimizer's current_lr setter would
    step(owner)
    np.testing.assert_allclose(owner.w[...], 1 - (1 + 0.5 + 0.25 + 0.125) - 10.0)
    assert len(traces) == 1
    assert len(nnx.state(owner, nnx.OptState)) > 0  # scheduler state is OptState


# --------------------------------------------------------------------------
# braintools parity (skipped where braintools is not installed)
# --------------------------------------------------------------------------
def _plateau_metrics(n):
    return [
        1.0,
        0.9,
        0.95,
        0.9,
        0.91,
        0.92,
        0.8,
        0.85,
        0.85,
        0.85,
        0.7,
        0.9,
        0.9,
        0.9,
        0.9,
        0.6,
        0.6,
        0.61,
        0.62,
        0.63,
        0.7,
        0.1,
    ][:n]


def _configs(lib):
    """(id, scheduler, metrics or None) triples built from ``lib`` (ours or braintools.optim)."""
    return [
        ("step", lib.StepLR(0.1, 3, 0.5), None),
        ("step2", lib.StepLR(0.2, step_size=1, gamma=0.9), None),
        ("multistep", lib.MultiStepLR(0.1, [2, 5, 11], 0.3), None),
        ("exp", lib.ExponentialLR(0.3, 0.8), None),
        ("expdecay", lib.ExponentialDecayLR(0.1, 4, 0.5), None),
        ("expdecay_stair", lib.ExponentialDecayLR(0.1, 3, 0.7, 2, True, 0.03), None),
        ("expdecay_grow", lib.ExponentialDecayLR(0.1, 2, 1.5, end_value=0.5), None),
        ("cos", lib.CosineAnnealingLR(0.1, 7, 0.01), None),
        ("poly", lib.PolynomialLR(0.1, 6, 2.0), None),
        ("warmup", lib.WarmupScheduler(0.1, 5, 0.01), None),
        ("warmup0", lib.WarmupScheduler(0.1, 0), None),
        ("cyclic_tri2", lib.CyclicLR(0.01, 0.1, 3, 2, "triangular2"), None),
        ("cyclic_exp", lib.CyclicLR(0.01, 0.1, 2, 4, "exp_range", 0.9), None),
        (
            "cyclic_fn",
            lib.CyclicLR(
                0.01, 0.1, 3, scale_fn=lambda x: 1 / (1 + 0.1 * x), scale_mode="iterations"
            ),
            None,
        ),
        ("onecycle_lin", lib.OneCycleLR(0.1, 20, pct_start=0.25, anneal_strategy="linear"), None),
        (
            "onecycle_ep",
            lib.OneCycleLR(
                0.05, epochs=4, steps_per_epoch=5, div_factor=10.0, final_div_factor=100.0
            ),
            None,
        ),
        ("plateau_min", lib.ReduceLROnPlateau(0.1, "min", 0.5, 1, cooldown=1), _plateau_metrics),
        (
            "plateau_max_abs",
            lib.ReduceLROnPlateau(0.1, "max", 0.3, 2, 0.05, "abs", 2, 0.005),
            lambda n: [-m for m in _plateau_metrics(n)],
        ),
        ("linear", lib.LinearLR(0.1, 0.2, 0.8, 6), None),
        ("linear0", lib.LinearLR(0.1, total_iters=0), None),
        ("constant", lib.ConstantLR(0.1, 0.25, 4), None),
        (
            "chained",
            lib.ChainedScheduler([lib.StepLR(0.1, 3, 0.5), lib.WarmupScheduler(0.1, 4, 0.02)]),
            None,
        ),
        (
            "sequential",
            lib.SequentialLR(
                [
                    lib.LinearLR(0.1, 0.1, 1.0, 3),
                    lib.CosineAnnealingLR(0.1, 5),
                    lib.StepLR(0.05, 2, 0.5),
                ],
                [3, 8],
            ),
            None,
        ),
        ("restarts", lib.CosineAnnealingWarmRestarts(0.1, 3, 2, 0.01), None),
        ("restarts1", lib.CosineAnnealingWarmRestarts(0.1, 4), None),
        ("warmcos", lib.WarmupCosineSchedule(0.1, 3, 15, 0.01, 0.001), None),
        (
            "piecewise",
            lib.PiecewiseConstantSchedule(0.5, [3, 7, 12], [0.1, 0.05, 0.02, 0.01]),
            None,
        ),
    ]


N_EPOCHS = 20


def test_matches_braintools_over_20_epochs():
    bt = pytest.importorskip("braintools").optim
    ours, theirs = _configs(sch), _configs(bt)
    for (cid, s, metrics), (_, ref, _) in zip(ours, theirs, strict=True):
        ms = metrics(N_EPOCHS) if metrics else [None] * N_EPOCHS
        got = [float(s.current_lr[...])]
        want = [float(ref.get_last_lr()[0])]
        for m in ms:
            if m is None:
                s.step()
                ref.step()
            else:
                s.step(m)
                ref.step(m)
            got.append(s.get_last_lr()[0])
            want.append(float(np.asarray(ref.get_last_lr()[0])))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=cid)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("StepLR", dict(base_lr=0.1, step_size=3, gamma=0.5)),
        ("ExponentialDecayLR", dict(base_lr=0.1, decay_steps=3, decay_rate=0.5)),
        ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=3, mode="triangular2")),
        ("OneCycleLR", dict(max_lr=0.1, total_steps=20)),
        ("CosineAnnealingWarmRestarts", dict(base_lr=0.1, T_0=3, T_mult=2)),
        ("CosineAnnealingWarmRestarts", dict(base_lr=0.1, T_0=3)),
        ("WarmupCosineSchedule", dict(base_lr=0.1, warmup_steps=3, total_steps=15)),
    ],
)
def test_step_epoch_jumps_match_braintools(name, kwargs):
    bt = pytest.importorskip("braintools").optim
    s, ref = getattr(sch, name)(**kwargs), getattr(bt, name)(**kwargs)
    for e in [4, 10, 2, 17, 9]:
        s.step(e)
        ref.step(e)
        np.testing.assert_allclose(
            s.get_last_lr()[0], float(np.asarray(ref.get_last_lr()[0])), rtol=RTOL, atol=ATOL
        )


def test_defaults_match_braintools_signatures():
    bt = pytest.importorskip("braintools").optim
    import inspect

    for name in sch.__all__:
        if name in ("FixedLR", "LRScheduler", "SchedulerState", "as_scheduler"):
            continue
        ours = inspect.signature(getattr(sch, name).__init__).parameters
        theirs = inspect.signature(getattr(bt, name).__init__).parameters
        assert list(ours) == list(theirs), name
        for arg in ours:
            a, b = ours[arg].default, theirs[arg].default
            if isinstance(b, float) and isinstance(a, float):
                assert math.isclose(a, b), (name, arg)
            elif isinstance(b, tuple) or isinstance(a, tuple):
                assert list(a) == list(b), (name, arg)
            else:
                assert a == b, (name, arg)
