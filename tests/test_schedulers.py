"""Tests for nnx_momentum.schedulers: values, jit, jumps, state, errors, braintools parity."""

from __future__ import annotations

import json
import math
import warnings

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
def test_reference_table_eager(name):
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
def test_reference_table_inside_nnx_jit_traces_once(name):
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
    for bad in ("0.1", None, True):
        with pytest.raises(TypeError, match="lr"):
            sch.as_scheduler(bad)
    groups = sch.as_scheduler([0.1, 0.01])  # one fixed LR per parameter group
    assert isinstance(groups, sch.FixedLR) and groups.get_last_lr() == [0.1, 0.01]
    assert sch.as_scheduler((0.1,)).current_lr[...].shape == (1,)
    for bad, name in (([], "lr"), ([0.1, -1.0], "lr\\[1\\]")):
        with pytest.raises(ValueError, match=name):
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
        if name in ("FixedLR", "LRScheduler", "SchedulerState", "as_scheduler", "reported_lr"):
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


# --------------------------------------------------------------------------
# Parameter groups: a list of base LRs, one schedule per group
# --------------------------------------------------------------------------
def _cyclic_np(base, peak, t, up=2, down=2):
    total = up + down
    cycle = np.floor(1 + t / total)
    x = 1 + t / total - cycle
    r = up / total
    h = np.where(x <= r, x / r, (x - 1) / (r - 1))
    return base + (peak - base) * h


def _onecycle_np(peak, t, n=8, pct=0.3, div=25.0, final=1e4):
    w = pct * n
    base, low = peak / div, peak / final
    a = np.clip((t - w) / ((1 - pct) * n), 0, 1)
    return np.where(
        t <= w,
        base + min(t / w, 1) * (peak - base),
        low + (1 + np.cos(np.pi * a)) / 2 * (peak - low),
    )


def _scale(b, c):
    return [x * c for x in b] if isinstance(b, list) else b * c


# name: (factory of a base LR -- a float or a list --, closed form (base, t) in numpy float64)
FORMS = {
    "FixedLR": (lambda b: sch.FixedLR(b), lambda b, t: b),
    "StepLR": (lambda b: sch.StepLR(b, 3, 0.1), lambda b, t: b * 0.1 ** np.floor(t / 3)),
    "MultiStepLR": (
        lambda b: sch.MultiStepLR(b, [2, 5], 0.1),
        lambda b, t: b * 0.1 ** ((2 <= t) + (5 <= t)),
    ),
    "ExponentialLR": (lambda b: sch.ExponentialLR(b, 0.5), lambda b, t: b * 0.5**t),
    "ExponentialDecayLR": (
        lambda b: sch.ExponentialDecayLR(b, 2, 0.5),
        lambda b, t: b * 0.5 ** (t / 2),
    ),
    "ExponentialDecayLR-staircase": (
        lambda b: sch.ExponentialDecayLR(b, 2, 0.5, staircase=True),
        lambda b, t: b * 0.5 ** np.floor(t / 2),
    ),
    "CosineAnnealingLR": (
        lambda b: sch.CosineAnnealingLR(b, 4, 0.001),
        lambda b, t: 0.001 + (b - 0.001) * (1 + np.cos(np.pi * min(t, 4) / 4)) / 2,
    ),
    "PolynomialLR": (
        lambda b: sch.PolynomialLR(b, 4, 2.0),
        lambda b, t: b * (1 - min(t, 4) / 4) ** 2,
    ),
    "WarmupScheduler": (
        lambda b: sch.WarmupScheduler(b, 4, 0.001),
        lambda b, t: 0.001 + (b - 0.001) * min(t / 4, 1),
    ),
    "CyclicLR": (
        lambda b: sch.CyclicLR(b, _scale(b, 10), 2),
        lambda b, t: _cyclic_np(b, 10 * b, t),
    ),
    "OneCycleLR": (lambda b: sch.OneCycleLR(b, 8), lambda b, t: _onecycle_np(b, t)),
    "LinearLR": (
        lambda b: sch.LinearLR(b, 0.25, 1.0, 4),
        lambda b, t: b * (0.25 + 0.75 * np.clip(t / 4, 0, 1)),
    ),
    "ConstantLR": (
        lambda b: sch.ConstantLR(b, 0.5, 3),
        lambda b, t: b * (0.5 if np.floor(t) < 3 else 1.0),
    ),
    "CosineAnnealingWarmRestarts": (
        lambda b: sch.CosineAnnealingWarmRestarts(b, 3, 1, 0.001),
        lambda b, t: 0.001 + (b - 0.001) * (1 + np.cos(np.pi * (t % 3) / 3)) / 2,
    ),
    "CosineAnnealingWarmRestarts-Tmult": (
        lambda b: sch.CosineAnnealingWarmRestarts(b, 2, 2),
        # periods [0, 2), [2, 6), [6, 14)
        lambda b, t: (
            b
            * (1 + np.cos(np.pi * (t / 2 if t < 2 else (t - 2) / 4 if t < 6 else (t - 6) / 8)))
            / 2
        ),
    ),
    "WarmupCosineSchedule": (
        lambda b: sch.WarmupCosineSchedule(b, 2, 6, 0.0, 0.001),
        lambda b, t: (
            b * t / 2
            if t < 2
            else 0.001 + (b - 0.001) * (1 + np.cos(np.pi * np.clip((t - 2) / 4, 0, 1))) / 2
        ),
    ),
    "PiecewiseConstantSchedule": (
        lambda b: sch.PiecewiseConstantSchedule(b, [2, 5], [0.1, 0.01, 0.001]),
        lambda b, t: [0.1, 0.01, 0.001][int((2 <= t) + (5 <= t))],
    ),
    "ChainedScheduler": (
        lambda b: sch.ChainedScheduler([sch.LinearLR(b, 0.5, 1.0, 2), sch.ExponentialLR(b, 0.5)]),
        lambda b, t: b * (0.5 + 0.5 * np.clip(t / 2, 0, 1)) * 0.5**t,
    ),
    "SequentialLR": (
        lambda b: sch.SequentialLR([sch.StepLR(b, 2, 0.5), sch.ExponentialLR(b, 0.5)], [3]),
        lambda b, t: b * 0.5 ** np.floor(t / 2) if t < 3 else b * 0.5 ** (t - 3),
    ),
}
GROUP_LRS = [0.1, 0.02, 0.3]
EPOCHS = [0, 1, 2, 2.5, 3, 3.75, 4, 5.5, 6, 7, 9.25, 13]


def _closed(name, base, t):
    return float(FORMS[name][1](base, t))


@pytest.mark.parametrize("name", list(FORMS))
def test_every_group_follows_its_closed_form(name):
    make, _ = FORMS[name]
    s = make(GROUP_LRS)
    assert s.n_groups == 3 and s.current_lr[...].shape == (3,) and s.lr_at(0).shape == (3,)
    assert s.current_lr[...].dtype == jnp.float32 and s.get_lr().shape == (3,)
    want = [[_closed(name, b, t) for b in GROUP_LRS] for t in EPOCHS]
    np.testing.assert_allclose(s.lr_at(jnp.asarray(EPOCHS)), want, rtol=RTOL, atol=ATOL)
    for t, row in zip(EPOCHS, want, strict=True):
        np.testing.assert_allclose(s.lr_at(t), row, rtol=RTOL, atol=ATOL)
        s.step(t)
        assert len(s.get_last_lr()) == 3
        np.testing.assert_allclose(s.get_last_lr(), row, rtol=RTOL, atol=ATOL)
    # integer steps from the start, then the scalar scheduler of each group agrees exactly
    grouped, singles = make(GROUP_LRS), [make(b) for b in GROUP_LRS]
    for _ in range(9):
        grouped.step()
        for single in singles:
            single.step()
        assert grouped.get_last_lr() == [x.get_last_lr()[0] for x in singles]
        for g, single in enumerate(singles):
            assert single.current_lr[...].shape == ()
            assert float(grouped.current_lr[...][g]) == float(single.current_lr[...])


@pytest.mark.parametrize("name", list(FORMS))
def test_scalar_and_grouped_attributes(name):
    make, _ = FORMS[name]
    scalar, grouped, one = make(0.1), make([0.1, 0.02]), make([0.1])
    assert (
        scalar.n_groups == 1
        and scalar.current_lr[...].shape == ()
        and scalar.base_lrs == [scalar.base_lr]
    )
    assert isinstance(scalar.base_lr, float) and isinstance(grouped.base_lr, float)
    assert grouped.n_groups == 2 and len(grouped.base_lrs) == 2
    assert grouped.base_lr == grouped.base_lrs[0]
    assert all(isinstance(b, float) for b in grouped.base_lrs)
    assert one.n_groups == 1 and one.current_lr[...].shape == (1,)
    assert one.get_last_lr() == scalar.get_last_lr()
    d = json.loads(json.dumps(grouped.describe()))
    assert d == grouped.describe()
    if not isinstance(grouped, (sch.ChainedScheduler, sch.SequentialLR)):
        # the description rebuilds the scheduler: list-valued arguments are lists
        rebuilt = getattr(sch, d["name"])(**{k: v for k, v in d.items() if k != "name"})
        assert rebuilt.describe() == d and rebuilt.get_last_lr() == grouped.get_last_lr()
    else:
        assert [c["base_lr"] for c in d["schedulers"]] == [[0.1, 0.02]] * 2


def test_braintools_style_base_lrs():
    assert sch.StepLR([0.1, 0.01]).base_lrs == [0.1, 0.01]
    assert sch.StepLR((0.1, 0.01)).n_groups == 2  # a tuple too
    s = sch.OneCycleLR([0.1, 0.2], total_steps=10)
    assert s.base_lrs == [0.1 / 25, 0.2 / 25] and s.max_lrs == [0.1, 0.2]
    assert s.min_lrs == [0.1 / 1e4, 0.2 / 1e4] and s.get_last_lr() == [0.004, 0.008]
    c = sch.CyclicLR(0.01, max_lr=[0.1, 0.2], step_size_up=2)  # a float base is shared
    assert c.base_lrs == [0.01, 0.01] and c.max_lrs == [0.1, 0.2]
    p = sch.PiecewiseConstantSchedule([0.5, 0.6], [2], [0.1, 0.01])
    assert p.base_lrs == [0.1, 0.1] and p.describe()["base_lr"] == [0.5, 0.6]
    r = sch.ReduceLROnPlateau([0.1, 0.2, 0.3], min_lr=[0.05, 0.01])  # padded, as braintools
    assert r.min_lrs == [0.05, 0.01, 0.01]
    assert sch.ReduceLROnPlateau([0.1, 0.2], min_lr=0.01).min_lrs == [0.01, 0.01]


GROUP_BAD_ARGS = [
    (lambda: sch.StepLR([]), "base_lr"),
    (lambda: sch.StepLR([0.1, -0.1]), "base_lr[1]"),
    (lambda: sch.StepLR([0.1, float("nan")]), "base_lr[1]"),
    (lambda: sch.CyclicLR([0.1, 0.2], max_lr=[1.0, 2.0, 3.0]), "max_lr"),
    (lambda: sch.CyclicLR([0.1, 0.2], max_lr=[1.0, -2.0]), "max_lr[1]"),
    (lambda: sch.OneCycleLR([0.1, -0.2], total_steps=5), "max_lr[1]"),
    (lambda: sch.ReduceLROnPlateau([0.1, 0.2], min_lr=[0.0, 0.0, 0.0]), "min_lr"),
    (lambda: sch.ReduceLROnPlateau(0.1, min_lr=[0.0, 0.0]), "min_lr"),
    (lambda: sch.ReduceLROnPlateau([0.1], min_lr=[-1.0]), "min_lr[0]"),
    (
        lambda: sch.ChainedScheduler([sch.StepLR([0.1, 0.2]), sch.StepLR([0.1, 0.2, 0.3])]),
        "schedulers",
    ),
    (lambda: sch.ChainedScheduler([sch.StepLR([0.1]), sch.StepLR(0.1)]), "schedulers"),
    (
        lambda: sch.SequentialLR([sch.StepLR(0.1), sch.StepLR([0.1, 0.2])], milestones=[2]),
        "schedulers",
    ),
]


@pytest.mark.parametrize("make,arg", GROUP_BAD_ARGS, ids=[a for _, a in GROUP_BAD_ARGS])
def test_bad_group_arguments_name_the_argument(make, arg):
    with pytest.raises(ValueError) as info:
        make()
    assert arg in str(info.value)


def test_plateau_reduces_every_group_to_its_floor():
    s = sch.ReduceLROnPlateau([1.0, 0.1], factor=0.5, patience=0, min_lr=[0.3, 0.0], eps=1e-3)
    got = []
    for m in [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]:
        s.step(m)
        got.append(s.get_last_lr())
    # the floors and eps apply per group: group 1 stops at 0.00125 (a smaller step than eps)
    assert got == [
        [1.0, 0.1],
        [0.5, 0.05],
        [0.3, 0.025],
        [0.3, 0.0125],
        [0.3, 0.0125],
        [0.3, 0.00625],
    ]


def test_groups_inside_nnx_jit_trace_once_and_round_trip():
    holder = Holder(FORMS["SequentialLR"][0](GROUP_LRS))
    traces = []

    @nnx.jit
    def step(h, e):
        traces.append(1)
        h.sched.step(e)

    for e in [1, 4, 2, 7]:
        step(holder, jnp.float32(e + 0.5))
        want = [_closed("SequentialLR", b, e + 0.5) for b in GROUP_LRS]
        np.testing.assert_allclose(holder.sched.get_last_lr(), want, rtol=RTOL)
    assert len(traces) == 1
    fresh = FORMS["SequentialLR"][0](GROUP_LRS)
    fresh.load_state_dict(holder.sched.state_dict())
    assert fresh.get_last_lr() == holder.sched.get_last_lr() and float(fresh.epoch) == 7.5
    with pytest.raises(ValueError, match="current_lr: expected shape \\(2,\\), got \\(3,\\)"):
        FORMS["SequentialLR"][0]([0.1, 0.2]).load_state_dict(holder.sched.state_dict())


def _group_configs(lib):
    """(id, scheduler, metrics or None) with per-group LRs, from ours or braintools.optim."""
    b2, b3 = [0.1, 0.05], [0.2, 0.1, 0.03]
    return [
        ("step", lib.StepLR(b2, 3, 0.5), None),
        ("multistep", lib.MultiStepLR(b3, [2, 5, 11], 0.3), None),
        ("exp", lib.ExponentialLR(b2, 0.8), None),
        ("expdecay", lib.ExponentialDecayLR(b3, 3, 0.7, 2, True, 0.01), None),
        ("cos", lib.CosineAnnealingLR(b2, 7, 0.01), None),
        ("poly", lib.PolynomialLR(b3, 6, 2.0), None),
        ("warmup", lib.WarmupScheduler(b2, 5, 0.01), None),
        ("cyclic", lib.CyclicLR([0.01, 0.02], [0.1, 0.3], 3, 2, "triangular2"), None),
        ("cyclic_exp", lib.CyclicLR([0.01, 0.02], [0.1, 0.3], 2, 4, "exp_range", 0.9), None),
        ("onecycle", lib.OneCycleLR([0.1, 0.4], 20, pct_start=0.25), None),
        (
            "plateau",
            lib.ReduceLROnPlateau(b3, "min", 0.5, 1, cooldown=1, min_lr=[0.02, 0.01, 0.001]),
            _plateau_metrics,
        ),
        (
            "plateau_shared_min",
            lib.ReduceLROnPlateau(b2, "min", 0.3, 0, min_lr=0.01),
            _plateau_metrics,
        ),
        ("linear", lib.LinearLR(b3, 0.2, 0.8, 6), None),
        ("constant", lib.ConstantLR(b2, 0.25, 4), None),
        (
            "chained",
            lib.ChainedScheduler([lib.StepLR(b2, 3, 0.5), lib.WarmupScheduler(b2, 4, 0.02)]),
            None,
        ),
        (
            "sequential",
            lib.SequentialLR(
                [lib.LinearLR(b2, 0.1, 1.0, 3), lib.CosineAnnealingLR(b2, 5), lib.StepLR(b2, 2)],
                [3, 8],
            ),
            None,
        ),
        ("restarts", lib.CosineAnnealingWarmRestarts(b2, 3, 2, 0.01), None),
        ("warmcos", lib.WarmupCosineSchedule(b3, 3, 15, 0.01, 0.001), None),
        ("piecewise", lib.PiecewiseConstantSchedule(b2, [3, 7], [0.1, 0.05, 0.02]), None),
    ]


def _bt_lrs(ref):
    return [float(np.asarray(v)) for v in ref.get_last_lr()]


def test_groups_match_braintools_over_20_epochs():
    bt = pytest.importorskip("braintools").optim
    for (cid, s, metrics), (_, ref, _) in zip(_group_configs(sch), _group_configs(bt), strict=True):
        if cid != "piecewise":  # ours are values[0]: its base_lr is ignored (documented)
            assert s.base_lrs == pytest.approx(ref.base_lrs, rel=1e-7), cid
        ms = metrics(N_EPOCHS) if metrics else [None] * N_EPOCHS
        got, want = [s.get_last_lr()], [_bt_lrs(ref)]
        for m in ms:
            if m is None:
                s.step()
                ref.step()
            else:
                s.step(m)
                ref.step(m)
            got.append(s.get_last_lr())
            want.append(_bt_lrs(ref))
        assert all(len(g) == s.n_groups for g in got), cid
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=cid)


# --------------------------------------------------------------------------
# Reported values: the shortest decimal of the applied float32
# --------------------------------------------------------------------------
def test_reported_values_equal_given_values():
    assert sch.StepLR(0.01).get_last_lr() == [0.01]
    assert sch.FixedLR([0.01, 0.003]).get_last_lr() == [0.01, 0.003]
    s = sch.ExponentialLR(0.1, gamma=0.5)
    for _ in range(3):
        s.step()
    assert s.get_last_lr() == [0.0125]
    assert sch.StepLR(0.01).lr_at(0) == 0.01  # the array compares equal to the float32
    assert s.current_lr[...].dtype == jnp.float32  # the applied value stays float32
    assert sch.reported_lr(np.float32(0.1)) == 0.1 and sch.reported_lr(1e-4) == 1e-4
    assert sch.reported_lr(jnp.float32(0.3)) == 0.3 and sch.reported_lr(0) == 0.0
    assert sch.reported_lr(0.1 + 1e-12) == 0.1  # float64 noise below float32 precision
    with pytest.raises(TypeError, match="scalar"):
        sch.reported_lr([0.1, 0.2])


@pytest.mark.parametrize("name", list(TABLE))
def test_get_last_lr_reports_the_float32_exactly(name):
    factory, _ = TABLE[name]
    s = factory()
    for i in range(6):
        _step(s, i)
        (value,) = s.get_last_lr()
        assert np.float32(value) == s.current_lr[...]
        assert len(repr(value)) <= len(repr(float(s.current_lr[...])))


# --------------------------------------------------------------------------
# Fractional epochs
# --------------------------------------------------------------------------
TRUNCATING = {"StepLR", "MultiStepLR", "ConstantLR", "PiecewiseConstantSchedule"}


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_fractional_step_evaluates_the_schedule_there(name):
    factory, _ = TABLE[name]
    s = factory()
    s.step(2.5)
    assert int(s.last_epoch[...]) == 2 and float(s.epoch_fraction[...]) == 0.5
    assert float(s.epoch) == 2.5
    assert float(s.current_lr[...]) == float(s.lr_at(2.5))
    if name in TRUNCATING:
        assert float(s.lr_at(2.5)) == float(s.lr_at(2))
    s.step()  # one epoch on, the fraction kept (braintools and torch)
    assert int(s.last_epoch[...]) == 3 and float(s.epoch) == 3.5
    np.testing.assert_allclose(float(s.current_lr[...]), float(s.lr_at(3.5)), rtol=RTOL)
    s.step(4)  # an integer jump clears the fraction
    assert float(s.epoch_fraction[...]) == 0.0
    np.testing.assert_allclose(float(s.current_lr[...]), float(s.lr_at(4)), rtol=RTOL)


@pytest.mark.parametrize("name", list(FORMS))
def test_fractional_steps_follow_the_closed_form(name):
    make, _ = FORMS[name]
    s = make(0.1)
    for k in range(1, 60):
        t = k / 8
        s.step(t)
        np.testing.assert_allclose(
            s.get_last_lr()[0], _closed(name, 0.1, t), rtol=RTOL, atol=ATOL, err_msg=str(t)
        )
    s.step(0.25)
    for k in range(1, 12):  # step() after a fractional jump: +1, fraction kept
        s.step()
        np.testing.assert_allclose(
            s.get_last_lr()[0], _closed(name, 0.1, k + 0.25), rtol=RTOL, atol=ATOL
        )


def test_integer_epochs_stay_exact_past_float32():
    big = 2**24  # float32 cannot tell big + 1 from big
    s = sch.MultiStepLR(0.1, milestones=[big + 1], gamma=0.5, last_epoch=big)
    assert s.get_last_lr() == [0.1]
    s.step()
    assert int(s.last_epoch[...]) == big + 1 and s.get_last_lr() == [0.05]
    s.step(big)
    assert s.get_last_lr() == [0.1]
    s.step(jnp.int32(big + 1))
    assert s.get_last_lr() == [0.05]
    assert s.lr_at(big + 1) == 0.05  # the float32 array equals the float32 of 0.05
    steps = sch.StepLR(1.0, step_size=big + 1, gamma=0.5, last_epoch=big)
    steps.step()
    assert steps.get_last_lr() == [0.5]


def test_split_epoch_edge_cases():
    s = sch.ExponentialLR(0.1, gamma=0.5)
    s.step(np.float64(3 - 1e-12))  # the fraction rounds to 1 in float32: carried
    assert int(s.last_epoch[...]) == 3 and float(s.epoch_fraction[...]) == 0.0
    s.step(np.float64(3.75))
    assert int(s.last_epoch[...]) == 3 and float(s.epoch_fraction[...]) == 0.75
    s.step(True)  # integer-like values stay integers
    assert int(s.last_epoch[...]) == 1 and float(s.epoch_fraction[...]) == 0.0


def test_fractional_steps_inside_nnx_jit_trace_once():
    name = "CosineAnnealingWarmRestarts-Tmult"
    holder = Holder(FORMS[name][0](0.1))
    traces = []

    @nnx.jit
    def at(h, e):
        traces.append(1)
        h.sched.step(e)
        return h.sched.current_lr[...]

    @nnx.jit
    def nxt(h):
        traces.append(1)
        h.sched.step()

    for k in range(40):
        t = float(np.float32(k * 0.3))
        np.testing.assert_allclose(
            float(at(holder, jnp.float32(t))), _closed(name, 0.1, t), rtol=RTOL, atol=ATOL
        )
    holder.sched.step(2.5)  # eagerly between compiled calls
    nxt(holder)
    assert float(holder.sched.epoch) == 3.5
    np.testing.assert_allclose(holder.sched.get_last_lr()[0], _closed(name, 0.1, 3.5), rtol=RTOL)
    holder.sched.step(1)
    nxt(holder)
    assert len(traces) == 2
    assert float(holder.sched.epoch) == 2.0


def test_warm_restarts_fractional_steps_match_braintools():
    bt = pytest.importorskip("braintools").optim
    for kwargs in (dict(T_0=3), dict(T_0=3, T_mult=2, eta_min=0.01), dict(T_0=2, T_mult=3)):
        s, ref = (
            sch.CosineAnnealingWarmRestarts(0.1, **kwargs),
            bt.CosineAnnealingWarmRestarts(0.1, **kwargs),
        )
        for k in range(1, 120):  # stepped by 0.1 within epochs, as the SGDR paper does
            e = round(0.1 * k, 10)
            s.step(e)
            ref.step(e)
            np.testing.assert_allclose(
                s.get_last_lr()[0], _bt_lrs(ref)[0], rtol=RTOL, atol=ATOL, err_msg=f"{kwargs} {e}"
            )


def test_warm_restarts_fraction_across_a_restart_is_torchs():
    torch = pytest.importorskip("torch")
    param = [torch.nn.Parameter(torch.zeros(1))]
    for kwargs in (dict(T_0=3), dict(T_0=2, T_mult=2, eta_min=0.01)):
        optim = torch.optim.SGD(param, lr=0.1)
        ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optim, **kwargs)
        s = sch.CosineAnnealingWarmRestarts(0.1, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates step(epoch)
            for e in (0.5, 2.5):
                s.step(e)
                ref.step(e)
                for _ in range(8):
                    s.step()
                    ref.step()
                    np.testing.assert_allclose(
                        s.get_last_lr()[0], ref.get_last_lr()[0], rtol=RTOL, atol=ATOL
                    )


# braintools' SequentialLR cannot step to a fractional epoch (its lax.switch branches
# disagree on dtypes); ReduceLROnPlateau has no epoch-indexed LR.
NOT_FRACTIONAL_IN_BRAINTOOLS = ("plateau", "sequential")


def _fractional_configs(lib, exclude=NOT_FRACTIONAL_IN_BRAINTOOLS):
    return [c for c in _configs(lib) if not c[0].startswith(exclude)]


def test_fractional_epochs_match_braintools():
    bt = pytest.importorskip("braintools").optim
    epochs = [0.5, 1.25, 2.5, 3.75, 7.5, 4.1, 11.9, 0.3, 16.6]
    for (cid, s, _), (_, ref, _) in zip(
        _fractional_configs(sch), _fractional_configs(bt), strict=True
    ):
        for e in epochs:
            s.step(e)
            ref.step(e)
            np.testing.assert_allclose(
                s.get_last_lr(), _bt_lrs(ref), rtol=RTOL, atol=ATOL, err_msg=f"{cid} {e}"
            )
    # step() after a fractional epoch keeps the fraction, as braintools' last_epoch += 1
    # (CosineAnnealingWarmRestarts: braintools drops it at a restart; torch's is above)
    exclude = (*NOT_FRACTIONAL_IN_BRAINTOOLS, "restarts")
    for (cid, s, _), (_, ref, _) in zip(
        _fractional_configs(sch, exclude), _fractional_configs(bt, exclude), strict=True
    ):
        s.step(1.5)
        ref.step(1.5)
        for _ in range(10):
            s.step()
            ref.step()
            np.testing.assert_allclose(
                s.get_last_lr(), _bt_lrs(ref), rtol=RTOL, atol=ATOL, err_msg=cid
            )


def test_fractional_groups_match_braintools():
    bt = pytest.importorskip("braintools").optim
    ours = [c for c in _group_configs(sch) if not c[0].startswith(NOT_FRACTIONAL_IN_BRAINTOOLS)]
    theirs = [c for c in _group_configs(bt) if not c[0].startswith(NOT_FRACTIONAL_IN_BRAINTOOLS)]
    for (cid, s, _), (_, ref, _) in zip(ours, theirs, strict=True):
        for e in [0.5, 2.25, 6.5, 3.1, 9.75]:
            s.step(e)
            ref.step(e)
            np.testing.assert_allclose(
                s.get_last_lr(), _bt_lrs(ref), rtol=RTOL, atol=ATOL, err_msg=f"{cid} {e}"
            )


def test_state_saved_before_fractional_epochs_loads():
    """A 0.1.0 state_dict has no epoch_fraction: it loads, the live fraction is kept."""
    s = sch.StepLR(0.1, step_size=2, gamma=0.5)
    old = {k: v for k, v in s.state_dict().items() if k != "epoch_fraction"}
    old["last_epoch"] = jnp.asarray(4, jnp.int32)
    old["current_lr"] = jnp.asarray(0.025, jnp.float32)
    fresh = sch.StepLR(0.1, step_size=2, gamma=0.5)
    fresh.load_state_dict(old)
    assert fresh.get_last_lr() == [0.025] and float(fresh.epoch) == 4.0
    assert nnx.state(fresh)["epoch_fraction"].get_metadata()["since"] == "0.2.0"
    seq = TABLE["SequentialLR"][0]()
    old = seq.state_dict()
    for d in (old, *old["schedulers"].values()):
        del d["epoch_fraction"]
    del old["milestones"]
    seq.load_state_dict(old)  # every 0.2.0 addition may be absent
    assert seq.milestones[...].tolist() == [3]


# --------------------------------------------------------------------------
# Composites: the state restores their configuration, or is refused
# --------------------------------------------------------------------------
def _sequential(milestones, n=None):
    n = len(milestones) + 1 if n is None else n
    children = [sch.ExponentialLR(0.1 * (k + 1), gamma=0.5) for k in range(n)]
    return sch.SequentialLR(children, milestones)


def test_sequential_state_restores_milestones_without_recompiling():
    saved = _sequential([2])
    saved.step(6)
    holder = Holder(_sequential([5]))
    traces = []

    @nnx.jit
    def step(h):
        traces.append(1)
        h.sched.step()

    step(holder)
    holder.sched.load_state_dict(saved.state_dict())
    assert holder.sched.milestones[...].tolist() == [2]
    assert holder.sched.describe()["milestones"] == [2]
    assert holder.sched.get_last_lr() == saved.get_last_lr()
    step(holder)
    saved.step()
    assert holder.sched.get_last_lr() == saved.get_last_lr() == [0.2 * 0.5**5]
    np.testing.assert_allclose(holder.sched.lr_at(jnp.arange(4)), saved.lr_at(jnp.arange(4)))
    assert len(traces) == 1


def test_sequential_refuses_another_number_of_children_or_milestones():
    two, three = _sequential([3]), _sequential([2, 5])
    before = two.state_dict()
    with pytest.raises(ValueError, match="schedulers: the state holds 3 child"):
        two.load_state_dict(three.state_dict())
    with pytest.raises(ValueError, match="schedulers: the state holds 2 child"):
        three.load_state_dict(two.state_dict())
    sd = two.state_dict()
    sd["milestones"] = jnp.asarray([1, 2], jnp.int32)
    with pytest.raises(ValueError, match="milestones: the state holds 2 milestone"):
        two.load_state_dict(sd)
    sd["milestones"] = jnp.asarray([-4], jnp.int32)
    with pytest.raises(ValueError, match="milestones must contain integers >= 0"):
        two.load_state_dict(sd)
    after = two.state_dict()
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), before, after))


def test_chained_refuses_another_number_or_kind_of_children():
    chain = sch.ChainedScheduler([sch.StepLR(0.1), sch.ExponentialLR(0.1)])
    with pytest.raises(ValueError, match="schedulers: the state holds 1 child"):
        chain.load_state_dict(sch.ChainedScheduler([sch.StepLR(0.1)]).state_dict())
    other = sch.ChainedScheduler([sch.StepLR(0.1), sch.CosineAnnealingWarmRestarts(0.1)])
    with pytest.raises(ValueError, match="schedulers/1 does not match .* ExponentialLR"):
        chain.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="schedulers/1 does not match .* CosineAnnealing"):
        other.load_state_dict(chain.state_dict())
    nested = sch.ChainedScheduler([sch.StepLR(0.1), TABLE["ChainedScheduler"][0]()])
    with pytest.raises(ValueError, match="schedulers/1 does not match"):
        chain.load_state_dict(nested.state_dict())
    inner = sch.ChainedScheduler([sch.StepLR(0.1), TABLE["SequentialLR"][0]()])
    sd = inner.state_dict()
    sd["schedulers"][1]["milestones"] = jnp.asarray([-3], jnp.int32)
    with pytest.raises(ValueError, match="schedulers/1: milestones must contain integers"):
        inner.load_state_dict(sd)  # a nested composite checks its own state
    chain.load_state_dict(sch.ChainedScheduler([sch.StepLR(0.2), sch.StepLR(0.3)]).state_dict())


# --------------------------------------------------------------------------
# braintools-style access and methods
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TABLE))
def test_assigning_a_python_int_to_last_epoch(name):
    factory, expected = TABLE[name]
    holder = Holder(factory())
    traces = []

    @nnx.jit
    def step(h, metric):
        traces.append(1)
        if isinstance(h.sched, sch.ReduceLROnPlateau):
            h.sched.step(metric)
        else:
            h.sched.step()

    step(holder, jnp.float32(1.0))
    holder.sched.last_epoch.value = 5  # braintools style, with no deprecation warning
    assert holder.sched.last_epoch.value.dtype == jnp.int32
    # the schedules of the epoch alone follow it (the others keep their own counters,
    # T_cur or the children's epochs, as in braintools)
    follows = name not in ("ReduceLROnPlateau", "CosineAnnealingWarmRestarts", "ChainedScheduler")
    if follows and name != "SequentialLR":  # its children move at the next step
        np.testing.assert_allclose(float(holder.sched.get_lr()), expected[5], rtol=RTOL, atol=TATOL)
    step(holder, jnp.float32(1.0))  # the same compiled step: no retrace
    assert int(holder.sched.last_epoch[...]) == 6 and len(traces) == 1
    if follows:
        np.testing.assert_allclose(
            holder.sched.get_last_lr()[0], expected[6], rtol=RTOL, atol=TATOL
        )
    holder.sched.last_epoch.value = np.int64(2)
    _step(holder.sched, 0)
    assert int(holder.sched.last_epoch[...]) == 3


def test_state_value_writes_are_normalised():
    s = sch.StepLR([0.1, 0.2], step_size=2)
    s.last_epoch.value = 3.0  # an integral float is an epoch
    assert s.last_epoch.value.dtype == jnp.int32 and int(s.last_epoch.value) == 3
    with pytest.raises(ValueError, match="not an integer.*step\\(epoch\\)"):
        s.last_epoch.value = 2.5
    s.current_lr.value = 0.05  # one float for every group
    assert s.get_last_lr() == [0.05, 0.05] and s.current_lr.value.dtype == jnp.float32
    s.current_lr.value = [0.3, 0.4]  # braintools' list of current LRs
    assert s.get_last_lr() == [0.3, 0.4]
    with pytest.raises(ValueError):
        s.current_lr.value = [0.1, 0.2, 0.3]
    s.current_lr.value = jnp.asarray([0.5, 0.6], jnp.float32)  # arrays as flax does
    assert s.get_last_lr() == [0.5, 0.6]
    s.last_epoch.value = jnp.asarray(4)  # a weakly typed jax value: int32, not weak
    assert not s.last_epoch.value.weak_type and s.last_epoch.value.dtype == jnp.int32
    with pytest.raises(ValueError, match="not an integer"):
        s.last_epoch.value = jnp.asarray(4.5)
    s.last_epoch.set_raw_value(7)  # even a raw Python int is read as an array
    assert float(s.get_lr()[0]) == pytest.approx(0.1 * 0.1**3)
    assert float(s.epoch) == 7.0


def test_apply_step_epoch_and_attach_optimizer():
    s = sch.StepLR([0.1, 0.02], step_size=1, gamma=0.5)
    s.step_epoch()
    assert s.get_last_lr() == [0.05, 0.01] and int(s.last_epoch[...]) == 1
    s.apply(lambda lr: lr * 2)
    assert s.get_last_lr() == [0.1, 0.02]
    s.apply(lambda lr: lr * 2)  # as braintools: fn of get_lr(), not compounded
    assert s.get_last_lr() == [0.1, 0.02]
    with pytest.raises(ValueError, match="scalar"):
        s.apply(lambda lr: jnp.stack([lr, lr]))

    holder = Holder(sch.ExponentialLR(0.1, gamma=0.5))
    traces = []

    @nnx.jit
    def halve(h, factor):
        traces.append(1)
        h.sched.apply(lambda lr: lr * factor)

    halve(holder, jnp.float32(0.5))
    halve(holder, jnp.float32(0.25))
    assert holder.sched.get_last_lr() == [0.025] and len(traces) == 1

    plateau = sch.ReduceLROnPlateau(0.1)
    plateau.current_lr.value = 0.04
    plateau.apply(lambda lr: lr / 2)  # its get_lr is the current LR
    assert plateau.get_last_lr() == [0.02]

    class Optimizer:
        def attach_scheduler(self, scheduler):
            self.scheduler = scheduler

    opt = Optimizer()
    s.attach_optimizer(opt)
    assert opt.scheduler is s
    with pytest.raises(TypeError, match="attach_scheduler"):
        s.attach_optimizer(object())


# --------------------------------------------------------------------------
# Traceable construction: traced base LRs under every transform
# --------------------------------------------------------------------------
def _traced_builders():
    def mul(lr, c):
        return [x * c for x in lr] if isinstance(lr, list) else lr * c

    return {
        "FixedLR": lambda lr: sch.FixedLR(lr),
        "StepLR": lambda lr: sch.StepLR(lr, 2, 0.5),
        "MultiStepLR": lambda lr: sch.MultiStepLR(lr, [2, 4], 0.5),
        "ExponentialLR": lambda lr: sch.ExponentialLR(lr, 0.5),
        "ExponentialDecayLR": lambda lr: sch.ExponentialDecayLR(lr, 2, 0.5, end_value=0.01),
        "CosineAnnealingLR": lambda lr: sch.CosineAnnealingLR(lr, 4),
        "PolynomialLR": lambda lr: sch.PolynomialLR(lr, 4),
        "WarmupScheduler": lambda lr: sch.WarmupScheduler(lr, 4),
        "CyclicLR": lambda lr: sch.CyclicLR(lr, mul(lr, 2), 2),
        "OneCycleLR": lambda lr: sch.OneCycleLR(lr, 8),
        "ReduceLROnPlateau": lambda lr: sch.ReduceLROnPlateau(lr, patience=0, min_lr=mul(lr, 0.5)),
        "LinearLR": lambda lr: sch.LinearLR(lr, 0.5, 1.0, 4),
        "ConstantLR": lambda lr: sch.ConstantLR(lr, 0.5, 2),
        "ChainedScheduler": lambda lr: sch.ChainedScheduler(
            [sch.StepLR(lr, 2), sch.ExponentialLR(lr, 0.5)]
        ),
        "SequentialLR": lambda lr: sch.SequentialLR(
            [sch.StepLR(lr, 2), sch.ExponentialLR(lr, 0.5)], [3]
        ),
        "CosineAnnealingWarmRestarts": lambda lr: sch.CosineAnnealingWarmRestarts(lr, 3, 2),
        "WarmupCosineSchedule": lambda lr: sch.WarmupCosineSchedule(lr, 2, 6),
        "PiecewiseConstantSchedule": lambda lr: sch.PiecewiseConstantSchedule(
            lr, [2], [0.1, mul(lr, 0.1) if not isinstance(lr, list) else 0.01]
        ),
    }


TRACED = _traced_builders()


def _advance(s, k=3):
    for _ in range(k):
        s.step(1.0) if isinstance(s, sch.ReduceLROnPlateau) else s.step()
    return s.current_lr[...]


@pytest.mark.parametrize("name", list(TRACED))
def test_construction_with_traced_base_lrs(name):
    make = TRACED[name]
    lrs = jnp.asarray([0.1, 0.2], jnp.float32)
    eager = [float(_advance(make(float(lr)))) for lr in lrs]
    # jax.vmap over a float base LR, and over the groups of a list
    np.testing.assert_allclose(jax.vmap(lambda lr: _advance(make(lr)))(lrs), eager, rtol=RTOL)
    grouped = jax.vmap(lambda lr: _advance(make([lr, lr * 2])))(lrs)
    assert grouped.shape == (2, 2)
    np.testing.assert_allclose(
        grouped, [_advance(make([float(lr), float(lr) * 2])) for lr in lrs], rtol=RTOL
    )
    # nnx.jit and nnx.eval_shape build it from a traced LR
    built = nnx.jit(make)(lrs[0])
    np.testing.assert_allclose(float(_advance(built)), eager[0], rtol=RTOL)
    abstract = nnx.eval_shape(make, lrs[0])
    assert abstract.current_lr.get_value().shape == () and abstract.n_groups == 1
    abstract = nnx.eval_shape(lambda lr: make([lr, lr]), lrs[0])
    assert abstract.current_lr.get_value().shape == (2,) and abstract.n_groups == 2
    # jax.jit through nnx.split / nnx.merge: the state leaves the compiled function
    graphdefs = []

    def init(lr):
        graphdef, state = nnx.split(make([lr, lr * 2]))
        graphdefs.append(graphdef)
        return state

    state = jax.jit(init)(lrs[0])
    merged = nnx.merge(graphdefs[0], state)
    np.testing.assert_allclose(
        _advance(merged), _advance(make([float(lrs[0]), float(lrs[0]) * 2])), rtol=RTOL
    )
    # a concrete scheduler still describes itself in JSON
    json.dumps(make(0.1).describe())
    json.dumps(make([0.1, 0.2]).describe())


# --------------------------------------------------------------------------
# step(epoch) and load_state_dict refuse negative and non-finite epochs
# --------------------------------------------------------------------------
BAD_EPOCHS = [
    -1,
    -0.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    np.float32("nan"),
    jnp.asarray(-2, jnp.int32),
    jnp.asarray(jnp.inf, jnp.float32),
    2**31,
]


def _host_state(s):
    return jax.tree.map(np.asarray, s.state_dict())


@pytest.mark.parametrize("name", list(TABLE))
def test_step_refuses_negative_and_non_finite_epochs_state_unchanged(name):
    s = TABLE[name][0]()
    for i in range(3):
        _step(s, i)
    before, lr_before = _host_state(s), s.get_last_lr()
    for epoch in BAD_EPOCHS:
        with pytest.raises(ValueError, match=rf"{type(s).__name__}\.step: epoch must be") as err:
            _step(s, 3, epoch)
        assert repr(epoch) in str(err.value)
        jax.tree.map(np.testing.assert_array_equal, _host_state(s), before)
        assert s.get_last_lr() == lr_before
    for epoch in (jnp.zeros(2), "3"):
        with pytest.raises(TypeError, match="epoch must be a real scalar"):
            _step(s, 3, epoch)
    jax.tree.map(np.testing.assert_array_equal, _host_state(s), before)
    _step(s, 3, 5)  # still steps normally
    assert int(s.last_epoch[...]) == 5


def test_step_refusals_from_the_issue():
    # each gave a silently wrong LR before: negative (ascent), NaN, and an epoch of NaN
    one_cycle = sch.OneCycleLR(max_lr=0.1, total_steps=8)
    with pytest.raises(ValueError, match=r"OneCycleLR\.step: epoch .* got -1"):
        one_cycle.step(-1)
    assert one_cycle.get_last_lr() == [0.004] and int(one_cycle.last_epoch[...]) == 0
    cosine = sch.CosineAnnealingLR(0.1, T_max=4)
    with pytest.raises(ValueError, match=r"CosineAnnealingLR\.step: epoch .* got nan"):
        cosine.step(float("nan"))
    assert cosine.get_last_lr() == [0.1]
    step_lr = sch.StepLR(0.1, step_size=3)
    with pytest.raises(ValueError, match=r"StepLR\.step: epoch .* got inf"):
        step_lr.step(float("inf"))
    assert float(step_lr.epoch) == 0.0 and step_lr.get_last_lr() == [0.1]
    # a chain refuses before any child moves
    chain = TABLE["ChainedScheduler"][0]()
    children = [_host_state(c) for c in chain.schedulers]
    with pytest.raises(ValueError, match=r"ChainedScheduler\.step"):
        chain.step(-3)
    for child, before in zip(chain.schedulers, children, strict=True):
        jax.tree.map(np.testing.assert_array_equal, _host_state(child), before)


def test_traced_epoch_is_used_as_given_inside_jit():
    # documented (LRScheduler.step): a traced epoch cannot be checked eagerly
    holder = Holder(sch.ExponentialLR(0.1, gamma=0.5))

    @nnx.jit
    def jump(h, e):
        h.sched.step(e)

    jump(holder, jnp.float32(2.0))
    assert holder.sched.get_last_lr() == [0.025]


BAD_STATES = [
    ("StepLR", ("last_epoch",), jnp.asarray(-1, jnp.int32)),
    ("CosineAnnealingLR", ("epoch_fraction",), jnp.asarray(jnp.nan, jnp.float32)),
    ("CosineAnnealingLR", ("epoch_fraction",), jnp.asarray(1.0, jnp.float32)),
    ("CosineAnnealingLR", ("epoch_fraction",), jnp.asarray(-0.25, jnp.float32)),
    ("OneCycleLR", ("current_lr",), jnp.asarray(-0.1, jnp.float32)),
    ("OneCycleLR", ("current_lr",), jnp.asarray(jnp.inf, jnp.float32)),
    ("ReduceLROnPlateau", ("current_lr",), jnp.asarray(jnp.nan, jnp.float32)),
    ("CosineAnnealingWarmRestarts", ("T_cur",), jnp.asarray(-1, jnp.int32)),
    ("CosineAnnealingWarmRestarts", ("T_i",), jnp.asarray(0, jnp.int32)),
    ("SequentialLR", ("schedulers", "1", "last_epoch"), jnp.asarray(-4, jnp.int32)),
    ("ChainedScheduler", ("schedulers", "0", "current_lr"), jnp.asarray(jnp.nan, jnp.float32)),
]


@pytest.mark.parametrize(
    "name,path,value", BAD_STATES, ids=[f"{n}-{'/'.join(p)}" for n, p, _ in BAD_STATES]
)
def test_load_state_dict_refuses_negative_and_non_finite_epochs_and_lrs(name, path, value):
    s = TABLE[name][0]()
    _step(s, 0)
    before = _host_state(s)
    bad = s.state_dict()
    node = bad
    for key in path[:-1]:
        node = node[int(key) if key.isdigit() else key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=rf"at {'/'.join(path)}: {path[-1]} must be finite"):
        s.load_state_dict(bad)
    jax.tree.map(np.testing.assert_array_equal, _host_state(s), before)
