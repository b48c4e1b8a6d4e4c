"""Parameter groups on both faces, against torch.optim.SGD param groups (and each other)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nnx_momentum as nm


class Net(nnx.Module):
    def __init__(self, seed: int = 0):
        self.backbone = nnx.Linear(4, 8, rngs=nnx.Rngs(seed))
        self.head = nnx.Linear(8, 2, rngs=nnx.Rngs(seed + 1))

    def __call__(self, x):
        return self.head(jnp.tanh(self.backbone(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def data(n: int):
    rng = np.random.default_rng(0)
    return [
        (
            jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
        )
        for _ in range(n)
    ]


GROUPS = [
    nm.ParamGroup(nnx.PathContains("bias"), weight_decay=0.0),
    nm.ParamGroup(nnx.PathContains("backbone"), lr=0.01, momentum=0.5, nesterov=True),
]


def _torch_run(model, n, *, clip=None):
    torch = pytest.importorskip("torch")
    p = {
        k: torch.tensor(np.asarray(v), requires_grad=True)
        for k, v in {
            "bk": model.backbone.kernel[...],
            "bb": model.backbone.bias[...],
            "hk": model.head.kernel[...],
            "hb": model.head.bias[...],
        }.items()
    }
    opt = torch.optim.SGD(
        [
            {"params": [p["hk"]]},
            {"params": [p["bb"], p["hb"]], "weight_decay": 0.0},
            {"params": [p["bk"]], "lr": 0.01, "momentum": 0.5, "nesterov": True},
        ],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-2,
    )
    for x, y in data(n):
        opt.zero_grad()
        xt, yt = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y))
        out = torch.tanh(xt @ p["bk"] + p["bb"]) @ p["hk"] + p["hb"]
        ((out - yt) ** 2).mean().backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(p.values()), clip)
        opt.step()
    return {k: v.detach().numpy() for k, v in p.items()}


def _ours(model):
    return {
        "bk": np.asarray(model.backbone.kernel[...]),
        "bb": np.asarray(model.backbone.bias[...]),
        "hk": np.asarray(model.head.kernel[...]),
        "hb": np.asarray(model.head.bias[...]),
    }


def _assert_close(a, b):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=2e-6, err_msg=k)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_nnx_face_groups_equal_torch_param_groups(compiled, clip):
    model = Net()
    want = _torch_run(nnx.clone(model), 6, clip=clip)
    opt = nm.MomentumOptimizer(
        model, lr=0.1, momentum=0.9, weight_decay=1e-2, grad_clip_norm=clip, groups=GROUPS
    )

    def step(model, opt, x, y):
        opt.update(model, nnx.grad(loss_fn)(model, x, y))

    step = nnx.jit(step) if compiled else step
    for x, y in data(6):
        step(model, opt, x, y)
    _assert_close(_ours(model), want)
    assert opt.get_last_lr() == [0.1, 0.1, 0.01]
    assert [g["params"] for g in opt.param_groups] == [
        ["head/kernel"],
        ["backbone/bias", "head/bias"],
        ["backbone/kernel"],
    ]


def test_braintools_face_groups_equal_the_nnx_face_and_share_its_layout():
    a, b = Net(), Net()
    opt = nm.MomentumOptimizer(a, lr=0.1, momentum=0.9, weight_decay=1e-2, groups=GROUPS[1:])
    bt = nm.Momentum(lr=0.1, momentum=0.9, weight_decay=1e-2)
    bt.register_trainable_weights({"head": nnx.state(b.head, nnx.Param)})
    bt.add_param_group(
        {"backbone": nnx.state(b.backbone, nnx.Param)}, lr=0.01, momentum=0.5, nesterov=True
    )
    step = nm.make_train_step(loss_fn, b, bt)  # compiled, donated
    for x, y in data(5):
        opt.update(a, nnx.grad(loss_fn)(a, x, y))
        step(x, y)
    for k, v in _ours(a).items():
        np.testing.assert_allclose(v, _ours(b)[k], rtol=1e-6, atol=1e-7)
    sa, sb = opt.state_dict(), bt.state_dict()
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    fresh = nm.Momentum(lr=0.1, momentum=0.9, weight_decay=1e-2)
    fresh.register_trainable_weights({"head": nnx.state(Net().head, nnx.Param)})
    fresh.add_param_group(
        {"backbone": nnx.state(Net().backbone, nnx.Param)}, lr=0.01, momentum=0.5, nesterov=True
    )
    fresh.load_state_dict(sa)  # one face's state loads into the other
    assert fresh.step_count == 5 and fresh.get_last_lr() == [0.1, 0.01]
    assert [g["lr"] for g in bt.param_groups] == [0.1, 0.01]
    assert set(bt.param_groups[1]["params"]) == {"backbone/bias", "backbone/kernel"}


def test_groups_with_a_per_group_scheduler():
    model = Net()
    sched = nm.StepLR([0.1, 0.01], step_size=1, gamma=0.5)
    opt = nm.MomentumOptimizer(
        model, lr=sched, groups=[nm.ParamGroup(nnx.PathContains("backbone"))]
    )
    x, y = data(1)[0]
    opt.update(model, nnx.grad(loss_fn)(model, x, y))
    sched.step()
    assert opt.get_last_lr() == [0.05, 0.005]
    lrs = [s.hyperparams["learning_rate"][...] for s in opt._lr_states()]
    assert [float(v) for v in lrs] == pytest.approx([0.1, 0.01])  # applied at the first step
    with pytest.raises(ValueError, match="groups\\[0\\].lr"):
        nm.MomentumOptimizer(model, lr=sched, groups=[nm.ParamGroup(nnx.PathContains("b"), lr=0.1)])


def test_single_group_is_exactly_the_plain_optimizer():
    a, b = Net(), Net()
    plain = nm.MomentumOptimizer(a, lr=0.1, weight_decay=1e-3)
    same = nm.MomentumOptimizer(b, lr=0.1, weight_decay=1e-3, groups=())
    assert jax.tree.structure(plain.state_dict()) == jax.tree.structure(same.state_dict())
    assert "groups" not in plain.hyperparams


def test_group_errors_name_the_argument():
    model = Net()
    with pytest.raises(ValueError, match="groups\\[0\\].*selects no parameter"):
        nm.MomentumOptimizer(model, groups=[nm.ParamGroup(nnx.PathContains("nothing"))])
    with pytest.raises(ValueError, match="groups\\[0\\]: momentum"):
        nm.MomentumOptimizer(model, groups=[nm.ParamGroup(nnx.PathContains("bias"), momentum=2.0)])
    with pytest.raises(TypeError, match="groups\\[0\\]"):
        nm.MomentumOptimizer(model, groups=[{"filter": nnx.Param}])
    bt = nm.Momentum(lr=0.1)
    with pytest.raises(ValueError, match="before add_param_group"):
        bt.add_param_group(nnx.state(model.head, nnx.Param))
    bt.register_trainable_weights(model)
    with pytest.raises(ValueError, match="already registered"):
        bt.add_param_group(nnx.state(model, nnx.Param))
    with pytest.raises(TypeError, match="dampening"):
        bt.add_param_group({"x": nnx.Param(jnp.ones(2))}, dampening=0.1)


def test_tx_wrapper_multisteps_keeps_the_runtime_lr_and_scheduler():
    model, ref_model = Net(), Net()
    sched = nm.StepLR(0.1, step_size=1, gamma=0.5)
    opt = nm.MomentumOptimizer(
        model, lr=sched, tx_wrapper=lambda tx: optax.MultiSteps(tx, every_k_schedule=2)
    )
    # The reference: optax's own accumulation around optax's sgd, the LR set by hand
    # before every call (applied to the mean gradient when the k-th call updates).
    ref = optax.MultiSteps(
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9), every_k_schedule=2
    )
    ref_params = nnx.to_pure_dict(nnx.state(ref_model, nnx.Param))
    ref_state = ref.init(ref_params)
    for x, y in data(4):
        lr = sched.current_lr[...]
        grads = nnx.grad(loss_fn)(model, x, y)
        opt.update(model, grads)
        inner = ref_state.inner_opt_state
        inner = inner._replace(hyperparams={**inner.hyperparams, "learning_rate": lr})
        ref_state = ref_state._replace(inner_opt_state=inner)
        upd, ref_state = ref.update(nnx.to_pure_dict(grads), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, upd)
        sched.step()
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert opt.step_count == 4 and opt.get_last_lr() == [0.00625]


def test_non_float_parameters_are_refused():
    class WithCounter(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))
            self.n = nnx.Param(jnp.zeros((), jnp.int32))

    with pytest.raises(ValueError, match="'n' has dtype int32"):
        nm.MomentumOptimizer(WithCounter())


def test_against_braintools_param_groups():
    """braintools 0.4.0 with two groups and a per-group StepLR, step by step.

    Group 0 runs braintools' Momentum in both; braintools runs Adam scaling for an
    *added* group (its add_param_group always does), so for group 1 we compare the
    API -- param_groups, the per-group LRs the scheduler reports -- and take the
    numbers from torch (test_nnx_face_groups_equal_torch_param_groups).
    """
    braintools = pytest.importorskip("braintools")
    brainstate = pytest.importorskip("brainstate")
    model = Net()
    head = {
        k: brainstate.ParamState(jnp.asarray(v)) for k, v in _ours(model).items() if k[0] == "h"
    }
    back = {
        k: brainstate.ParamState(jnp.asarray(v)) for k, v in _ours(model).items() if k[0] == "b"
    }
    sched = braintools.optim.StepLR(base_lr=[0.1, 0.01], step_size=2, gamma=0.5)
    bt = braintools.optim.Momentum(lr=sched, momentum=0.9, weight_decay=0.01)
    bt.register_trainable_weights(head)
    bt.add_param_group(back)
    ours_sched = nm.StepLR(base_lr=[0.1, 0.01], step_size=2, gamma=0.5)
    ours = nm.Momentum(lr=ours_sched, momentum=0.9, weight_decay=0.01)
    ours.register_trainable_weights({"head": nnx.state(model.head, nnx.Param)})
    ours.add_param_group({"backbone": nnx.state(model.backbone, nnx.Param)})
    step = nnx.jit(lambda opt, g: opt.step(g))
    names = {"hk": ("head", "kernel"), "hb": ("head", "bias")}
    for x, y in data(6):
        g = nnx.grad(loss_fn)(model, x, y)
        flat = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(g)}
        bt.step(
            {
                "hk": flat["head/kernel"],
                "hb": flat["head/bias"],
                "bk": flat["backbone/kernel"],
                "bb": flat["backbone/bias"],
            }
        )
        step(ours, g)
        sched.step()
        ours_sched.step()
        assert ours.get_last_lr() == pytest.approx(sched.get_last_lr(), rel=1e-6)
        for k, (mod, leaf) in names.items():
            got = np.asarray(getattr(getattr(model, mod), leaf)[...])
            np.testing.assert_allclose(got, np.asarray(head[k].value), rtol=1e-5, atol=1e-6)
    assert len(ours.param_groups) == len(bt.param_groups) == 2
    assert [g["weight_decay"] for g in ours.param_groups] == [
        g["weight_decay"] for g in bt.param_groups
    ]
