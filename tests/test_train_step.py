"""make_train_step: same numbers as the plain step, one compile, live objects stay true."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models import MLP, batches, loss_fn, params_np

import nnx_momentum as nm


def _faces(model, lr):
    return {
        "MomentumOptimizer": nm.MomentumOptimizer(
            model, lr=lr, weight_decay=0.01, grad_clip_norm=1.0
        ),
        "Momentum": nm.Momentum(
            lr=lr, weight_decay=0.01, grad_clip_norm=1.0
        ).register_trainable_weights(model),
    }


def _plain_step(model, opt, x, y):
    grads = nnx.grad(loss_fn)(model, x, y)
    if isinstance(opt, nnx.Optimizer):
        opt.update(model, grads)
    else:
        opt.step(grads)
    return loss_fn(model, x, y)


@pytest.mark.parametrize("face", ["MomentumOptimizer", "Momentum"])
@pytest.mark.parametrize("donate", [True, False], ids=["donate", "no-donate"])
def test_equals_plain_nnx_jit_step(face, donate):
    data = batches(6)
    fast_model, plain_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    fast_sched, plain_sched = nm.StepLR(0.1, step_size=2), nm.StepLR(0.1, step_size=2)
    fast = _faces(fast_model, fast_sched)[face]
    plain = _faces(plain_model, plain_sched)[face]
    step = nm.make_train_step(loss_fn, fast_model, fast, donate=donate)
    plain_step = nnx.jit(_plain_step)
    for x, y in data:
        step(x, y)
        plain_step(plain_model, plain, x, y)
        fast_sched.step()
        plain_sched.step()
    for k, v in params_np(plain_model).items():
        np.testing.assert_allclose(params_np(fast_model)[k], v, rtol=1e-6, atol=1e-7)
    assert fast.step_count == plain.step_count == 6
    assert jnp.allclose(fast.current_lr, plain.current_lr)


def test_compiles_once_across_scheduler_steps_and_lr_changes():
    model = MLP(nnx.Rngs(0))
    sched = nm.CosineAnnealingLR(0.1, T_max=4)
    opt = nm.MomentumOptimizer(model, lr=sched)
    traces = []

    def counted(model, x, y):
        traces.append(1)
        return loss_fn(model, x, y)

    step = nm.make_train_step(counted, model, opt)
    for i, (x, y) in enumerate(batches(8)):
        step(x, y)
        sched.step()
        if i == 3:
            opt.current_lr = 0.5
    assert len(traces) == 1


def test_live_objects_stay_the_source_of_truth():
    data = batches(6)
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1)
    ref_model = MLP(nnx.Rngs(0))
    ref_opt = nm.MomentumOptimizer(ref_model, lr=0.1)
    step = nm.make_train_step(loss_fn, model, opt)
    plain_step = nnx.jit(_plain_step)
    for x, y in data[:3]:
        step(x, y)
        plain_step(ref_model, ref_opt, x, y)
    # switch to a plain nnx.jit step on the same objects: it sees the fast steps
    for x, y in data[3:]:
        plain_step(model, opt, x, y)
        plain_step(ref_model, ref_opt, x, y)
    assert opt.step_count == ref_opt.step_count == 6
    for a, b in zip(
        jax.tree.leaves(opt.state_dict()), jax.tree.leaves(ref_opt.state_dict()), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for k, v in params_np(ref_model).items():
        np.testing.assert_allclose(params_np(model)[k], v, rtol=1e-6, atol=1e-7)


def test_has_aux_and_model_state_updates():
    class WithCounter(nnx.Module):
        def __init__(self):
            self.mlp = MLP(nnx.Rngs(0))
            self.calls = nnx.BatchStat(jnp.zeros((), jnp.int32))

        def __call__(self, x):
            self.calls[...] += 1
            return self.mlp(x)

    model = WithCounter()
    opt = nm.MomentumOptimizer(model, lr=0.1)

    def loss_with_aux(model, x, y):
        pred = model(x)
        return jnp.mean((pred - y) ** 2), {"mean_pred": pred.mean()}

    step = nm.make_train_step(loss_with_aux, model, opt, has_aux=True)
    for x, y in batches(3):
        loss, aux = step(x, y)
    assert set(aux) == {"mean_pred"} and loss.shape == ()
    assert int(model.calls[...]) == 3


def test_rejects_non_optimizer():
    with pytest.raises(TypeError, match="optimizer"):
        nm.make_train_step(loss_fn, MLP(nnx.Rngs(0)), object())


def test_lower_gives_the_compiled_program():
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1)
    step = nm.make_train_step(loss_fn, model, opt)
    x, y = batches(1)[0]
    compiled = step.lower(x, y).compile()
    assert "HloModule" in (compiled.as_text() or "")
    step(x, y)  # lowering did not consume (donate) the live buffers
    assert opt.step_count == 1


def test_runtime_lr_and_counters_are_those_of_an_eager_update():
    """After each call the optimizer's state is exactly what ``update`` leaves: the runtime LR
    is the scheduler's current LR (the same array, as an eager update leaves it), the update
    count and step advance, and a scheduler stepped between calls takes effect."""
    fast_model, eager_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    fast = nm.MomentumOptimizer(fast_model, lr=nm.StepLR(0.1, step_size=1, gamma=0.5))
    eager = nm.MomentumOptimizer(eager_model, lr=nm.StepLR(0.1, step_size=1, gamma=0.5))
    step = nm.make_train_step(loss_fn, fast_model, fast)
    for x, y in batches(4):
        step(x, y)
        eager.update(eager_model, nnx.grad(loss_fn)(eager_model, x, y))
        lr = fast.opt_state.hyperparams["learning_rate"]
        assert lr.get_raw_value() is fast.lr.current_lr.get_raw_value()
        fast.lr.step()
        eager.lr.step()
    assert fast.step_count == int(fast.opt_state.count[...]) == 4
    for a, b in zip(
        jax.tree.leaves(fast.state_dict()), jax.tree.leaves(eager.state_dict()), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_values_set_between_calls_are_used():
    """The live Variables are read at every call: edits, overrides and loaded states between
    calls are what the next step starts from."""
    data = batches(4)
    model, ref_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    opt, ref_opt = nm.MomentumOptimizer(model, lr=0.1), nm.MomentumOptimizer(ref_model, lr=0.1)
    step = nm.make_train_step(loss_fn, model, opt)
    plain_step = nnx.jit(_plain_step)
    step(*data[0])
    plain_step(ref_model, ref_opt, *data[0])
    for m, o in ((model, opt), (ref_model, ref_opt)):
        m.l1.kernel[...] = jnp.zeros_like(m.l1.kernel[...])  # a manual edit
        o.current_lr = 0.05  # an LR override
        o.load_state_dict(o.state_dict())  # fresh buffers, as a restore writes
    for x, y in data[1:]:
        step(x, y)
        plain_step(ref_model, ref_opt, x, y)
    for k, v in params_np(ref_model).items():
        np.testing.assert_allclose(params_np(model)[k], v, rtol=1e-6, atol=1e-7)
    assert opt.step_count == ref_opt.step_count == 4 and opt.current_lr == 0.05


def test_called_inside_a_transformation_is_refused():
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1)
    step = nm.make_train_step(loss_fn, model, opt, donate=False)
    x, y = batches(1)[0]
    with pytest.raises(RuntimeError, match="inside a jax transformation"):
        jax.jit(lambda x, y: step(x, y))(x, y)
    assert opt.step_count == 0  # nothing was written
    step(x, y)
    assert opt.step_count == 1


def test_without_the_fast_slot_access_the_numbers_are_the_same(monkeypatch):
    """The fallback (get/set_raw_value per Variable, for a flax without the array slot)."""
    from nnx_momentum import train_step as train_step_lib

    data = batches(4)
    models, opts = [], []
    for fast in (True, False):
        monkeypatch.setattr(train_step_lib, "_raw_slot_works", lambda variables, f=fast: f)
        model = MLP(nnx.Rngs(0))
        opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=1))
        step = nm.make_train_step(loss_fn, model, opt)
        assert isinstance(step, train_step_lib._TrainStep) and step._fast is fast
        for x, y in data:
            step(x, y)
            opt.lr.step()
        models.append(model)
        opts.append(opt)
    for k, v in params_np(models[0]).items():
        np.testing.assert_array_equal(params_np(models[1])[k], v)
    for a, b in zip(
        jax.tree.leaves(opts[0].state_dict()), jax.tree.leaves(opts[1].state_dict()), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_state_the_step_does_not_read_is_not_passed():
    """Kept Variables the step neither reads nor changes (the scheduler's epoch) are no
    input of the compiled program; the ones it reads (the LR, the counters) are."""
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=1))
    step = nm.make_train_step(loss_fn, model, opt)
    x, y = batches(1)[0]
    (_, read, *_), _ = step.lower(x, y).args_info
    kept = [v for v in jax.tree.leaves(nnx.state((model, opt))) if np.ndim(v) == 0]
    assert len(read) == 3 < len(kept)  # current LR, update count, step
    for _ in range(3):
        step(x, y)
        opt.lr.step()  # changes the unread epoch: still no input, still no retrace
    assert opt.step_count == 3 and opt.current_lr == pytest.approx(0.1 * 0.1**3)


def test_a_retrace_that_reads_more_state_is_refused():
    class Gated(nnx.Module):
        def __init__(self):
            self.mlp = MLP(nnx.Rngs(0))
            self.scale = nnx.Variable(jnp.float32(2.0))  # a kept scalar, not trained

        def __call__(self, x):
            out = self.mlp(x)
            return out * self.scale[...] if x.shape[0] > 2 else out

    model = Gated()
    opt = nm.MomentumOptimizer(model, lr=0.1)
    step = nm.make_train_step(loss_fn, model, opt)
    x, y = batches(1)[0]
    step(x[:2], y[:2])  # this shape never reads scale: it is not passed
    with pytest.raises(RuntimeError, match="reads state the first trace did not"):
        step(x, y)
    assert opt.step_count == 1  # the refused call wrote nothing
