"""Carrying a run in (README "Bring a run from optax, torch or braintools").

Each source library trains K steps, its state is imported into a fresh nnx_momentum
optimizer (either face), and N more steps on both sides must agree -- against the
source library's own N steps, not against this package.
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from models import MLP, batches, loss_fn, params_np

import nnx_momentum as nm
from nnx_momentum import layout

K, N = 5, 20


def _close(got, want, what=""):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=f"{what}{k}")


def _train(model, optimizer, data, scheduler=None):
    """N steps on either face; ``scheduler.step()`` after each (a per-iteration schedule)."""
    for x, y in data:
        grads = nnx.grad(loss_fn)(model, x, y)
        if isinstance(optimizer, nm.MomentumOptimizer):
            optimizer.update(model, grads)
        else:
            optimizer.step(grads)
        if scheduler is not None:
            scheduler.step()


# -- optax: plain orbax checkpoints of nnx.Optimizer(model, optax.sgd(...)) --------------


def _save_optax_run(directory, layout, tx):
    """K steps of a plain nnx.Optimizer, saved as the flax/orbax guides do; then N more."""
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    data = batches(K + N)
    _train_plain(model, optimizer, data[:K])
    with ocp.CheckpointManager(directory) as manager:
        if layout == "one item":
            args = ocp.args.StandardSave(nnx.state((model, optimizer)))
        elif layout == "two items":
            args = ocp.args.Composite(
                model=ocp.args.StandardSave(nnx.state(model)),
                optimizer=ocp.args.StandardSave(nnx.state(optimizer)),
            )
        else:  # pure dicts, as flax's guide also shows
            args = ocp.args.StandardSave(nnx.to_pure_dict(nnx.state((model, optimizer))))
        manager.save(K, args=args)
    _train_plain(model, optimizer, data[K:])
    return params_np(model), data[K:]


def _train_plain(model, optimizer, data):
    for x, y in data:
        optimizer.update(model, nnx.grad(loss_fn)(model, x, y))


@pytest.mark.parametrize(
    "layout, face, nesterov",
    [("one item", "nnx", False), ("two items", "braintools", True), ("pure dicts", "nnx", True)],
)
def test_optax_checkpoint_continues_as_optax(tmp_path, layout, face, nesterov):
    want, rest = _save_optax_run(tmp_path, layout, optax.sgd(0.1, momentum=0.9, nesterov=nesterov))
    model = MLP(nnx.Rngs(7))  # other initial weights: all must come from the checkpoint
    if face == "nnx":
        opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9, nesterov=nesterov)
    else:
        cls = nm.MomentumNesterov if nesterov else nm.Momentum
        opt = cls(lr=0.1, momentum=0.9).register_trainable_weights(model)
    assert nm.import_optax_checkpoint(tmp_path, model, opt) == K
    assert opt.step_count == K
    _train(model, opt, rest)
    _close(params_np(model), want)


def test_optax_schedule_continues_from_the_saved_count(tmp_path):
    schedule = optax.exponential_decay(0.1, transition_steps=3, decay_rate=0.5)
    want, rest = _save_optax_run(tmp_path, "one item", optax.sgd(schedule, momentum=0.9))
    model = MLP(nnx.Rngs(7))
    opt = nm.MomentumOptimizer(model, lr=schedule, momentum=0.9)
    nm.import_optax_checkpoint(tmp_path, model, opt)
    assert opt.current_lr == pytest.approx(float(schedule(K)), rel=1e-6)
    _train(model, opt, rest)
    _close(params_np(model), want)


def test_optax_sgd_without_momentum_needs_momentum_zero(tmp_path):
    want, rest = _save_optax_run(tmp_path, "two items", optax.sgd(0.1))
    model = MLP(nnx.Rngs(7))
    with pytest.raises(ValueError, match="momentum=0.0"):
        nm.import_optax_checkpoint(tmp_path, model, nm.MomentumOptimizer(model, lr=0.1))
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.0)
    nm.import_optax_checkpoint(tmp_path, model, opt)
    _train(model, opt, rest)
    _close(params_np(model), want)


def test_optax_state_other_than_sgd_is_refused_by_name(tmp_path):
    _save_optax_run(tmp_path, "one item", optax.adam(0.1))
    model = MLP(nnx.Rngs(7))
    opt = nm.MomentumOptimizer(model, lr=0.1)
    before = params_np(model)
    with pytest.raises(ValueError, match=r"optax.sgd does not: \['opt_state/0/mu/l1/bias', "):
        nm.import_optax_checkpoint(tmp_path, model, opt)
    _untouched(model, opt, before, 0)


def test_checkpointer_names_a_foreign_checkpoint_and_the_import(tmp_path):
    _save_optax_run(tmp_path, "one item", optax.sgd(0.1, momentum=0.9))
    model = MLP(nnx.Rngs(7))
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
    with nm.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="not an nnx_momentum checkpoint") as e:
            ckpt.restore(model, opt)
    assert "nm.import_optax_checkpoint" in str(e.value)


def test_optax_import_refuses_an_nnx_momentum_checkpoint(tmp_path):
    model = MLP(nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
    with nm.Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, model, opt)
    with pytest.raises(ValueError, match=r"nnx_momentum checkpoint: restore it with nm\.Check"):
        nm.import_optax_checkpoint(tmp_path, model, opt)


def test_optax_import_of_another_model_changes_nothing(tmp_path):
    _save_optax_run(tmp_path, "two items", optax.sgd(0.1, momentum=0.9))
    model = MLP(nnx.Rngs(7), dh=5)  # other hidden size: every l1/l2 shape differs
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
    before = params_np(model)
    with pytest.raises(ValueError, match=r"weight 'l1/kernel': shape \(4, 8\), the live one"):
        nm.import_optax_checkpoint(tmp_path, model, opt)
    _untouched(model, opt, before, 0)


# -- torch: torch.optim.SGD + lr_scheduler ----------------------------------------------


class _TorchMLP:
    """A torch twin of tests/models.MLP: same names (l1, l2), torch's (out, in) layout."""

    def __new__(cls, model):
        torch = pytest.importorskip("torch")

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.l1 = torch.nn.Linear(4, 8)
                self.l2 = torch.nn.Linear(8, 3)

            def forward(self, x):
                return self.l2(torch.tanh(self.l1(x)))

        net = Net()
        with torch.no_grad():
            for name, p in net.named_parameters():
                layer, kind = name.split(".")
                value = np.asarray(
                    getattr(model, layer).kernel[...]
                    if kind == "weight"
                    else getattr(model, layer).bias[...]
                )
                p.copy_(torch.tensor(value.T if kind == "weight" else value))
        return net


def _torch_steps(torch, net, opt, sched, data):
    for x, y in data:
        opt.zero_grad()
        out = net(torch.tensor(np.asarray(x)))
        ((out - torch.tensor(np.asarray(y))) ** 2).mean().backward()
        opt.step()
        sched.step()


def _torch_params(net):
    return {
        n.replace(".weight", "/kernel").replace(".bias", "/bias"): (
            p.detach().numpy().T if n.endswith("weight") else p.detach().numpy()
        )
        for n, p in net.named_parameters()
    }


def _torch_run(make_opt, make_sched):
    """K torch steps, the state_dicts (copied), then N more: (states, torch's params, data)."""
    torch = pytest.importorskip("torch")
    net = _TorchMLP(MLP(nnx.Rngs(0)))
    opt = make_opt(net)
    sched = make_sched(opt)
    data = batches(K + N)
    _torch_steps(torch, net, opt, sched, data[:K])
    states = copy.deepcopy((opt.state_dict(), net.state_dict(), sched.state_dict()))
    _torch_steps(torch, net, opt, sched, data[K:])
    return states, _torch_params(net), data[K:]


def _torch_groups_opt(net):
    torch = pytest.importorskip("torch")
    named = dict(net.named_parameters())
    return torch.optim.SGD(
        [
            {"params": [("l2.weight", named["l2.weight"])]},
            {"params": [(n, named[n]) for n in ("l1.bias", "l2.bias")], "weight_decay": 0.0},
            {
                "params": [("l1.weight", named["l1.weight"])],
                "lr": 0.01,
                "momentum": 0.5,
                "nesterov": True,
            },
        ],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-2,
    )


def test_torch_sgd_param_groups_and_step_lr_continue_as_torch():
    torch = pytest.importorskip("torch")
    states, want, rest = _torch_run(
        _torch_groups_opt, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)
    )
    sgd_state, model_state, sched_state = states
    model = MLP(nnx.Rngs(7))
    groups = [
        nm.ParamGroup(nnx.PathContains("bias"), weight_decay=0.0),
        nm.ParamGroup(nnx.PathContains("l1"), momentum=0.5, nesterov=True),
    ]
    sched = nm.StepLR([0.1, 0.1, 0.01], step_size=3, gamma=0.5)
    opt = nm.MomentumOptimizer(model, lr=sched, momentum=0.9, weight_decay=1e-2, groups=groups)
    nm.import_torch_sgd(model, opt, sgd_state, model_state, scheduler_state=sched_state, step=K)
    assert sched.last_epoch[...] == K and opt.step_count == K
    assert opt.get_last_lr() == pytest.approx(
        [g["lr"] for g in (sgd_state["param_groups"][i] for i in (0, 1, 2))], rel=1e-6
    )
    _train(model, opt, rest, sched)
    _close(params_np(model), want)


def test_torch_sgd_into_the_braintools_face_with_cosine_and_unnamed_params():
    torch = pytest.importorskip("torch")
    states, want, rest = _torch_run(
        lambda net: torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3),
        # T_max past the last step: after T_max torch's cosine rises again, ours holds eta_min
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=K + N + 5),
    )
    sgd_state, model_state, sched_state = states
    model = MLP(nnx.Rngs(7))
    sched = nm.CosineAnnealingLR(0.1, T_max=K + N + 5)
    opt = nm.Momentum(lr=sched, momentum=0.9, weight_decay=1e-3).register_trainable_weights(model)
    with pytest.raises(ValueError, match="param_names="):
        nm.import_torch_sgd(model, opt, sgd_state, model_state, scheduler_state=sched_state)
    nm.import_torch_sgd(
        model,
        opt,
        sgd_state,
        model_state,
        scheduler_state=sched_state,
        param_names=list(model_state),  # SGD(net.parameters()): named_parameters' order
    )
    _train(model, opt, rest, sched)
    _close(params_np(model), want)


def _simple_torch_state():
    torch = pytest.importorskip("torch")
    return _torch_run(
        lambda net: torch.optim.SGD(net.named_parameters(), lr=0.1, momentum=0.9),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    )[0]


def _untouched(model, opt, before_params, before_epoch):
    _close(params_np(model), before_params)
    assert int(opt.lr.last_epoch[...]) == before_epoch and opt.step_count == 0
    velocity = [
        v for r, v in layout.live_roles(opt.state_tree()).items() if r.startswith("velocity/")
    ]
    assert velocity and all(not np.any(np.asarray(v.get_value())) for v in velocity)


def test_torch_dampening_is_refused():
    sgd_state, model_state, _ = _simple_torch_state()
    sgd_state["param_groups"][0]["dampening"] = 0.1
    model = MLP(nnx.Rngs(7))
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="dampening=0.1"):
        nm.import_torch_sgd(model, opt, sgd_state, model_state)


def test_torch_unmatched_names_are_all_named_both_ways_and_nothing_changes():
    sgd_state, model_state, sched_state = _simple_torch_state()
    rename = {"l1": "fc1", "l2": "fc2"}
    renamed = {rename[k.split(".")[0]] + "." + k.split(".")[1]: v for k, v in model_state.items()}
    sgd_state["param_groups"][0]["param_names"] = [
        rename[n.split(".")[0]] + "." + n.split(".")[1]
        for n in sgd_state["param_groups"][0]["param_names"]
    ]
    model = MLP(nnx.Rngs(7))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2, gamma=0.5), momentum=0.9)
    before = params_np(model)
    with pytest.raises(ValueError) as e:
        nm.import_torch_sgd(model, opt, sgd_state, renamed, scheduler_state=sched_state)
    message = str(e.value)
    for name in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]:
        assert name in message
    for path in ["'l1/kernel'", "'l1/bias'", "'l2/kernel'", "'l2/bias'"]:
        assert path in message
    _untouched(model, opt, before, 0)
    # the mapping fixes it
    names = {
        f"{new}.{kind}": f"{old}/{'kernel' if kind == 'weight' else 'bias'}"
        for old, new in rename.items()
        for kind in ("weight", "bias")
    }
    nm.import_torch_sgd(model, opt, sgd_state, renamed, scheduler_state=sched_state, names=names)
    np.testing.assert_array_equal(params_np(model)["l1/kernel"], renamed["fc1.weight"].numpy().T)


def test_torch_wrong_lr_or_momentum_is_refused_and_the_scheduler_put_back():
    sgd_state, model_state, sched_state = _simple_torch_state()
    model = MLP(nnx.Rngs(7))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=3, gamma=0.5), momentum=0.9)
    before = params_np(model)
    with pytest.raises(ValueError, match="next LR differs"):
        nm.import_torch_sgd(model, opt, sgd_state, model_state, scheduler_state=sched_state)
    _untouched(model, opt, before, 0)
    other = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2, gamma=0.5), momentum=0.8)
    with pytest.raises(ValueError, match=r"momentum of 'l1/kernel' \(from 'l1.weight'\): 0.9"):
        nm.import_torch_sgd(model, other, sgd_state, model_state, scheduler_state=sched_state)
    _untouched(model, other, before, 0)


def test_torch_conv_kernel_layout():
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(2, 3, kernel_size=(2, 3))  # no padding: nnx's 'VALID'
    opt_t = torch.optim.SGD(conv.named_parameters(), lr=0.1, momentum=0.9)
    conv(torch.ones(1, 2, 5, 5)).sum().backward()
    opt_t.step()
    model = nnx.Conv(2, 3, kernel_size=(2, 3), padding="VALID", rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
    nm.import_torch_sgd(model, opt, opt_t.state_dict(), conv.state_dict())
    np.testing.assert_array_equal(
        model.kernel[...], conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    )
    x = np.ones((1, 5, 5, 2), np.float32)
    want = conv(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(model(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)


# -- braintools: braintools.optim.Momentum --------------------------------------------------


@pytest.mark.parametrize("face", ["nnx", "braintools"])
def test_braintools_momentum_continues_as_braintools(face):
    braintools = pytest.importorskip("braintools")
    brainstate = pytest.importorskip("brainstate")
    source_model = MLP(nnx.Rngs(0))
    flat0 = params_np(source_model)
    weights = {k.replace("/", "_"): brainstate.ParamState(jnp.asarray(v)) for k, v in flat0.items()}
    sched = braintools.optim.StepLR(base_lr=0.1, step_size=2, gamma=0.5)
    bt = braintools.optim.Momentum(lr=sched, momentum=0.9, weight_decay=0.01, grad_clip_norm=1.0)
    bt.register_trainable_weights(weights)
    data = batches(K + N)
    for i, (x, y) in enumerate(data):
        if i == K:
            state_dict, sched_state = bt.state_dict(), sched.state_dict()
        g = nnx.grad(loss_fn)(source_model, x, y)
        bt.step({"_".join(p): v.get_value() for p, v in nnx.to_flat_state(g)})
        sched.step()
        for k, v in weights.items():  # keep the nnx twin on braintools' weights for the grads
            layer, kind = k.split("_")
            getattr(getattr(source_model, layer), kind)[...] = v.value
    want = {k.replace("_", "/"): np.asarray(v.value) for k, v in weights.items()}

    model = MLP(nnx.Rngs(7))
    ours_sched = nm.StepLR(0.1, step_size=2, gamma=0.5)
    config = dict(momentum=0.9, weight_decay=0.01, grad_clip_norm=1.0)
    if face == "nnx":
        opt = nm.MomentumOptimizer(model, lr=ours_sched, **config)
    else:
        opt = nm.Momentum(lr=ours_sched, **config).register_trainable_weights(model)
    names = {k: k.replace("_", "/") for k in weights}
    nm.import_braintools_momentum(model, opt, state_dict, scheduler_state=sched_state, names=names)
    assert opt.step_count == K and int(ours_sched.last_epoch[...]) == K
    _train(model, opt, data[K:], ours_sched)
    _close(params_np(model), want)


def test_braintools_shape_of_state_dict_without_braintools():
    """The format the importer reads, built by hand (runs where braintools does not)."""
    model = MLP(nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    trace = {
        k: {n: np.full_like(np.asarray(a), 0.5) for n, a in v.items()} for k, v in params.items()
    }
    state_dict = {
        "step_count": 4,
        "lr": 0.05,
        "base_lr": 0.1,
        "param_groups_opt_states": {},
        "param_groups": {"0": {"params": params, "lr": 0.05, "weight_decay": 0.0}},
        "opt_state": (
            optax.EmptyState(),
            optax.TraceState(trace=trace),
            optax.ScaleByScheduleState(count=jnp.asarray(4, jnp.int32)),
        ),
    }
    fresh = MLP(nnx.Rngs(7))
    sched = nm.StepLR(0.1, step_size=2, gamma=0.5)
    opt = nm.Momentum(lr=sched, momentum=0.9).register_trainable_weights(fresh)
    with pytest.raises(ValueError, match="next LR differs"):  # the scheduler's epoch is needed
        nm.import_braintools_momentum(fresh, opt, state_dict)
    nm.import_braintools_momentum(fresh, opt, state_dict, scheduler_state={"last_epoch": 2})
    assert opt.step_count == 4 and opt.current_lr == pytest.approx(0.05)
    velocity = layout.live_roles(opt.state_tree())["velocity/l1/kernel"]
    assert np.all(np.asarray(velocity.get_value()) == 0.5)
    state_dict["param_groups_opt_states"] = {"0": ()}
    with pytest.raises(ValueError, match="Adam"):
        nm.import_braintools_momentum(fresh, opt, state_dict)


def test_braintools_face_must_be_registered_on_the_model(tmp_path):
    _save_optax_run(tmp_path, "one item", optax.sgd(0.1, momentum=0.9))
    model = MLP(nnx.Rngs(7))
    opt = nm.Momentum(lr=0.1).register_trainable_weights(MLP(nnx.Rngs(8)))  # another model
    before = params_np(model)
    with pytest.raises(ValueError, match=r"registered weights \['l1/bias', .* not the model's"):
        nm.import_optax_checkpoint(tmp_path, model, opt)
    _close(params_np(model), before)
    with pytest.raises(ValueError, match="register_trainable_weights"):
        nm.import_optax_checkpoint(tmp_path, model, nm.Momentum(lr=0.1))
