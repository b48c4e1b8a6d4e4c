"""Change a run on resume (README, "Change a run on resume"): each change is shown, refused
unless allowed, and loaded exactly when allowed.

For each change: save a trained run, build the changed live objects, check the refusal
names the change and leaves them untouched, then resume with the permission and check
the diff logged, the loaded state and the numbers of the next steps.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nnx_momentum as nm
from nnx_momentum import layout


class Net(nnx.Module):
    def __init__(self, seed: int = 0, extra: bool = False):
        rngs = nnx.Rngs(seed)
        self.fc1 = nnx.Linear(4, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 2, rngs=rngs)
        if extra:
            self.head = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
        y = self.fc2(jax.nn.relu(self.fc1(x)))
        return self.head(y) if hasattr(self, "head") else y


def _batch(i: int):
    k = jax.random.fold_in(jax.random.key(7), i)
    return jax.random.normal(k, (16, 4)), jnp.ones((16, 2))


def _loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def _train(model, opt, steps: int, start: int = 0) -> None:
    for i in range(start, start + steps):
        grads = nnx.grad(_loss)(model, *_batch(i))
        opt.update(model, grads)


def _velocity(opt) -> dict[str, np.ndarray]:
    return {
        layout.param_path(r): np.asarray(v.get_value())
        for r, v in layout.live_roles(opt.state_tree()).items()
        if layout.param_path(r) is not None
    }


def _saved_run(tmp_path, **kwargs):
    """A run of 5 steps saved at step 5; returns its model, optimizer and directory."""
    model = Net(0)
    opt = nm.MomentumOptimizer(model, **{"lr": 0.1, **kwargs})
    _train(model, opt, 5)
    with nm.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, model, opt)
    return model, opt


def _refused_then_resumed(tmp_path, model, opt, changes, names, caplog):
    """Restore is refused (naming ``names``, nothing written), then allowed by ``changes``."""
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state((model, opt))))
    with nm.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError) as refused:
            ckpt.restore(model, opt)
        for name in names:
            assert name in str(refused.value)
        assert "ResumeChanges(" in str(refused.value)
        after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state((model, opt))))
        jax.tree.map(np.testing.assert_array_equal, after, before)
        with caplog.at_level(logging.WARNING, logger="nnx_momentum"):
            assert ckpt.restore(model, opt, changes=changes) == 5
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for name in names:
        assert name in logged
    return str(refused.value)


@pytest.mark.parametrize(
    "change, diff_line",
    [
        (dict(weight_decay=1e-4), "hyperparams    weight_decay: 0.0 -> 0.0001"),
        (dict(grad_clip_norm=1.0), "hyperparams    grad_clip_norm: (absent) -> 1.0"),
        (dict(grad_clip_value=0.5), "hyperparams    grad_clip_value: (absent) -> 0.5"),
        (dict(nesterov=True), "hyperparams    nesterov: False -> True"),
        (dict(momentum=0.5), "hyperparams    momentum: 0.9 -> 0.5"),
    ],
)
def test_hyperparameter_change(tmp_path, caplog, change, diff_line):
    saved_model, saved_opt = _saved_run(tmp_path)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=0.1, **change)
    message = _refused_then_resumed(
        tmp_path, model, opt, nm.ResumeChanges(hyperparams=True), [diff_line], caplog
    )
    assert "hyperparams=True" in message
    v_saved, v_live = _velocity(saved_opt), _velocity(opt)
    for key in v_saved:
        np.testing.assert_array_equal(v_live[key], v_saved[key])
    assert opt.step_count == 5
    # the next steps run with the new hyperparameters from the saved velocity: the same
    # as a run built with them that carries the saved state over by hand
    ref_model = Net(2)
    nnx.update(ref_model, nnx.state(saved_model))
    ref_opt = nm.MomentumOptimizer(ref_model, lr=0.1, **change)
    ref_opt.load_state_dict(opt.state_dict())
    _train(model, opt, 3, start=5)
    _train(ref_model, ref_opt, 3, start=5)
    np.testing.assert_array_equal(model.fc1.kernel[...], ref_model.fc1.kernel[...])


def test_hyperparameter_change_with_check_hyperparams_off_needs_no_permission(tmp_path):
    _saved_run(tmp_path)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=0.1, weight_decay=1e-4, grad_clip_norm=1.0)
    with nm.Checkpointer(tmp_path, check_hyperparams=False) as ckpt:
        assert ckpt.restore(model, opt) == 5  # 0.2 refused this: the velocity moved


def test_lower_lr_after_a_spike(tmp_path, caplog):
    _saved_run(tmp_path, lr=nm.FixedLR(0.1))
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=0.05)
    _refused_then_resumed(
        tmp_path,
        model,
        opt,
        nm.ResumeChanges(schedule="from_step"),
        ["schedule       lr: FixedLR(base_lr=0.1) -> FixedLR(base_lr=0.05)"],
        caplog,
    )
    assert opt.current_lr == 0.05


def _cosine_run_at_epoch(tmp_path, epochs: int):
    model = Net(0)
    opt = nm.MomentumOptimizer(model, lr=nm.CosineAnnealingLR(0.1, T_max=10))
    _train(model, opt, 5)
    for _ in range(epochs):
        opt.lr.step()
    with nm.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, model, opt)
    return opt


def test_extended_schedule_continues_from_the_saved_epoch(tmp_path, caplog):
    saved_opt = _cosine_run_at_epoch(tmp_path, 6)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=nm.CosineAnnealingLR(0.1, T_max=40))
    _refused_then_resumed(
        tmp_path, model, opt, nm.ResumeChanges(schedule="from_step"), ["T_max=40"], caplog
    )
    assert int(opt.lr.last_epoch[...]) == 6
    want = float(nm.CosineAnnealingLR(0.1, T_max=40).lr_at(6))
    assert opt.current_lr == pytest.approx(want, rel=1e-6)
    assert opt.current_lr != pytest.approx(saved_opt.current_lr)
    opt.lr.step()
    assert opt.current_lr == pytest.approx(float(opt.lr.lr_at(7)), rel=1e-6)


def test_replaced_schedule_continues_from_the_saved_lr(tmp_path, caplog):
    saved_opt = _cosine_run_at_epoch(tmp_path, 6)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=nm.ExponentialLR(1.0, gamma=0.5))
    _refused_then_resumed(
        tmp_path,
        model,
        opt,
        nm.ResumeChanges(schedule="from_lr"),
        ["CosineAnnealingLR(", "-> ExponentialLR("],
        caplog,
    )
    assert int(opt.lr.last_epoch[...]) == 0
    assert opt.current_lr == pytest.approx(saved_opt.current_lr, rel=1e-6)
    opt.lr.step()
    assert opt.current_lr == pytest.approx(saved_opt.current_lr * 0.5, rel=1e-6)


def test_from_lr_refuses_a_schedule_that_does_not_start_at_its_base(tmp_path):
    _cosine_run_at_epoch(tmp_path, 6)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=nm.WarmupScheduler(0.1, warmup_epochs=3))
    before = float(model.fc1.kernel[0, 0])
    with nm.Checkpointer(tmp_path) as ckpt, pytest.raises(ValueError, match="does not start at"):
        ckpt.restore(model, opt, changes=nm.ResumeChanges(schedule="from_lr"))
    assert float(model.fc1.kernel[0, 0]) == before and opt.step_count == 0


def test_add_a_parameter_group(tmp_path, caplog):
    _, saved_opt = _saved_run(tmp_path, weight_decay=1e-4)
    model = Net(1)
    group = nm.ParamGroup(nnx.PathContains("fc2"), weight_decay=0.0)
    opt = nm.MomentumOptimizer(model, lr=[0.1, 0.1], weight_decay=1e-4, groups=[group])
    _refused_then_resumed(
        tmp_path,
        model,
        opt,
        nm.ResumeChanges(groups=True, schedule="from_step"),
        ["groups         parameter groups: 1 -> 2", "velocity/fc2/kernel: group 0 -> group 1"],
        caplog,
    )
    v_saved, v_live = _velocity(saved_opt), _velocity(opt)
    assert v_saved.keys() == v_live.keys()
    for key in v_saved:
        np.testing.assert_array_equal(v_live[key], v_saved[key])
    roles = layout.live_roles(opt.state_tree())
    assert int(roles["count/1"].get_value()) == int(roles["count/0"].get_value()) == 5
    assert opt.get_last_lr() == [0.1, 0.1]


def test_velocity_to_bfloat16(tmp_path, caplog):
    _, saved_opt = _saved_run(tmp_path)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=0.1, accumulator_dtype=jnp.bfloat16)
    _refused_then_resumed(
        tmp_path,
        model,
        opt,
        nm.ResumeChanges(velocity_dtype=True),
        [
            "velocity dtype accumulator_dtype: (absent) -> bfloat16",
            "velocity dtype optimizer velocity/fc1/kernel: float32 -> bfloat16",
        ],
        caplog,
    )
    v_saved, v_live = _velocity(saved_opt), _velocity(opt)
    for key in v_saved:
        assert v_live[key].dtype == jnp.bfloat16
        np.testing.assert_array_equal(v_live[key], v_saved[key].astype(jnp.bfloat16))


def test_new_parameters_start_with_zero_velocity(tmp_path, caplog):
    saved_model, saved_opt = _saved_run(tmp_path)
    model = Net(1, extra=True)
    head = np.asarray(model.head.kernel[...])
    opt = nm.MomentumOptimizer(model, lr=0.1)
    _refused_then_resumed(
        tmp_path,
        model,
        opt,
        nm.ResumeChanges(new_params=True),
        [
            "new params     model head/kernel: (absent) -> (2, 2) float32",
            "new params     optimizer velocity/head/kernel",
        ],
        caplog,
    )
    np.testing.assert_array_equal(model.fc1.kernel[...], saved_model.fc1.kernel[...])
    np.testing.assert_array_equal(model.head.kernel[...], head)
    v = _velocity(opt)
    assert not v["head/kernel"].any() and not v["head/bias"].any()
    np.testing.assert_array_equal(v["fc1/kernel"], _velocity(saved_opt)["fc1/kernel"])


def test_removed_parameters_and_other_shapes_are_never_loaded(tmp_path):
    _saved_run(tmp_path)
    model = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1)
    everything = nm.ResumeChanges(
        hyperparams=True, schedule="from_step", groups=True, velocity_dtype=True, new_params=True
    )
    with nm.Checkpointer(tmp_path) as ckpt, pytest.raises(ValueError, match="tree +model fc1/bias"):
        ckpt.restore(model, opt, changes=everything)


def test_same_objects_log_nothing(tmp_path, caplog):
    _saved_run(tmp_path)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=0.1)
    with nm.Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING, "nnx_momentum"):
        assert ckpt.restore(model, opt) == 5
    assert not caplog.records


def test_resume_changes_validates_schedule():
    with pytest.raises(ValueError, match="schedule must be None, 'from_step' or 'from_lr'"):
        nm.ResumeChanges(schedule="continue")  # type: ignore[arg-type]


def test_remove_a_parameter_group(tmp_path, caplog):
    """Fewer groups: the dropped group's state is read and left behind, its velocity kept."""
    model = Net(0)
    group = nm.ParamGroup(nnx.PathContains("fc2"), momentum=0.5)
    saved_opt = nm.MomentumOptimizer(model, lr=0.1, groups=[group])
    _train(model, saved_opt, 5)
    with nm.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, model, saved_opt)
    live = Net(1)
    opt = nm.MomentumOptimizer(live, lr=0.1)
    _refused_then_resumed(
        tmp_path,
        live,
        opt,
        nm.ResumeChanges(groups=True, hyperparams=True),
        ["groups         parameter groups: 2 -> 1", "velocity/fc2/kernel: group 1 -> group 0"],
        caplog,
    )
    v_saved, v_live = _velocity(saved_opt), _velocity(opt)
    for key in v_saved:
        np.testing.assert_array_equal(v_live[key], v_saved[key])
    assert opt.step_count == 5


def test_replace_a_scheduler_that_has_extra_state(tmp_path, caplog):
    """The old scheduler's own state (T_cur, T_i) is read and dropped, not a read error."""
    model = Net(0)
    saved_opt = nm.MomentumOptimizer(model, lr=nm.CosineAnnealingWarmRestarts(0.1, T_0=3))
    _train(model, saved_opt, 5)
    for _ in range(4):
        saved_opt.lr.step()
    with nm.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, model, saved_opt)
    live = Net(1)
    opt = nm.MomentumOptimizer(live, lr=nm.CosineAnnealingLR(0.1, T_max=10))
    _refused_then_resumed(
        tmp_path, live, opt, nm.ResumeChanges(schedule="from_step"), ["CosineAnnealingLR("], caplog
    )
    assert int(opt.lr.last_epoch[...]) == 4
    assert opt.current_lr == pytest.approx(float(opt.lr.lr_at(4)), rel=1e-6)


def test_add_a_group_into_abstract_objects(tmp_path, caplog):
    """nnx.eval_shape objects: the new group's count and LR come from group 0, concrete."""
    _saved_run(tmp_path, weight_decay=1e-4)

    def build(lr):
        m = Net(1)
        group = nm.ParamGroup(nnx.PathContains("fc2"), weight_decay=0.0)
        return m, nm.MomentumOptimizer(m, lr=lr, weight_decay=1e-4, groups=[group])

    # A new scheduler has no state to take from an abstract object: refused, named.
    model, opt = nnx.eval_shape(lambda: build([0.1, 0.1]))
    changes = nm.ResumeChanges(groups=True, schedule="from_step")
    with (
        nm.Checkpointer(tmp_path) as ckpt,
        pytest.raises(ValueError, match=r"optimizer lr/last_epoch: \(absent\) -> abstract"),
    ):
        ckpt.restore(model, opt, changes=changes)
    # One scheduler driving both groups: the groups alone change.
    model, opt = nnx.eval_shape(lambda: build(0.1))
    changes = nm.ResumeChanges(groups=True)
    with nm.Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING, "nnx_momentum"):
        assert ckpt.restore(model, opt, changes=changes) == 5
    roles = layout.live_roles(opt.state_tree())
    assert int(roles["count/1"].get_value()) == 5
    assert isinstance(roles["learning_rate/1"].get_value(), jax.Array)
    _train(model, opt, 1, start=5)  # concrete and trainable
    assert opt.step_count == 6


def test_changes_must_be_resume_changes(tmp_path):
    _saved_run(tmp_path)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=0.1)
    with nm.Checkpointer(tmp_path) as ckpt:
        for wrong in ({"hyperparams": True}, True, "hyperparams"):
            with pytest.raises(TypeError, match="changes must be an nm.ResumeChanges"):
                ckpt.restore(model, opt, changes=wrong)  # type: ignore[arg-type]


def test_a_refused_from_lr_logs_nothing(tmp_path, caplog):
    _cosine_run_at_epoch(tmp_path, 6)
    model = Net(1)
    opt = nm.MomentumOptimizer(model, lr=nm.WarmupScheduler(0.1, warmup_epochs=3))
    with (
        nm.Checkpointer(tmp_path) as ckpt,
        caplog.at_level(logging.INFO, "nnx_momentum"),
        pytest.raises(ValueError, match="does not start at"),
    ):
        ckpt.restore(model, opt, changes=nm.ResumeChanges(schedule="from_lr"))
    assert not caplog.records
