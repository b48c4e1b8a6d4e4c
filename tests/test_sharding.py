"""``shard_state_over``: the optimizer state sharded over a mesh axis (ZeRO stage 1).

README.md, "The fast path" (sharded optimizer state): with the parameters replicated over
the ``data`` axis, each velocity leaf with a dimension divisible by the axis size is split
over it, so a device holds 1/N of it; the numbers are those of the unsharded run, and
checkpoints move between sharded and unsharded optimizers.

The multi-device checks run in one subprocess with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before jax is
imported): ``python tests/test_sharding.py`` runs them all and prints one JSON line of
results, which the ``slow`` tests below read. The rest runs in-process on one device.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx.training.optimizer import OptVariable
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nnx_momentum as nm
from nnx_momentum.sharding import state_spec

N = 8
DIN, DH, DOUT = 16, 32, 3  # l2's bias (3,) has no dimension divisible by 8
STEPS = 20
CHECKS: dict[str, Callable[[], None]] = {}


def _check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS[fn.__name__] = fn
    return fn


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, din: int = DIN, dh: int = DH, dout: int = DOUT):
        self.l1 = nnx.Linear(din, dh, rngs=rngs)
        self.l2 = nnx.Linear(dh, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(jnp.tanh(self.l1(x)))


class AnnotatedMLP(MLP):
    """:class:`MLP` with flax sharding metadata (replicated), for the sharded-init recipe."""

    def __init__(self, rngs: nnx.Rngs):
        init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None))
        self.l1 = nnx.Linear(DIN, DH, kernel_init=init, rngs=rngs)
        self.l2 = nnx.Linear(DH, DOUT, kernel_init=init, rngs=rngs)


def loss_fn(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def _data(n: int = STEPS, batch: int = 16) -> list[tuple[jax.Array, jax.Array]]:
    rng = np.random.default_rng(0)
    return [
        (
            jnp.asarray(rng.normal(size=(batch, DIN)), jnp.float32),
            jnp.asarray(rng.normal(size=(batch, DOUT)), jnp.float32),
        )
        for _ in range(n)
    ]


# -- helpers for the 8-device checks -----------------------------------------------------------
def _meshes() -> dict[str, jax.sharding.Mesh]:
    auto = jax.make_mesh((N,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    explicit = jax.make_mesh((N,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    return {"auto": auto, "explicit": explicit}


def _replicated_model(mesh: jax.sharding.Mesh, cls: type = MLP) -> Any:
    """The data-parallel layout: every parameter replicated over the mesh."""
    model = cls(nnx.Rngs(0))
    for _, var in nnx.to_flat_state(nnx.state(model)):
        var.set_value(jax.device_put(var.get_value(), NamedSharding(mesh, P())))
    return model


def _batch_on(mesh: jax.sharding.Mesh, batch: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return tuple(jax.device_put(a, NamedSharding(mesh, P("data"))) for a in batch)


def _velocities(optimizer: Any) -> dict[str, jax.Array]:
    """The state leaves that mirror a parameter (flax's OptVariable), by path."""
    state = optimizer.state_tree() if hasattr(optimizer, "state_tree") else optimizer
    return {
        "/".join(map(str, p)): v.get_value()
        for p, v in nnx.to_flat_state(state)
        if isinstance(v, OptVariable)
    }


def _assert_one_nth(optimizer: Any, axis: str = "data", n: int = N) -> int:
    """Each divisible velocity's per-device shard is 1/n of it; others are whole.

    Returns how many leaves were split.
    """
    split = 0
    velocities = _velocities(optimizer)
    assert velocities
    for path, v in velocities.items():
        shard = v.addressable_shards[0].data
        divisible = any(d % n == 0 and d > 0 for d in v.shape)
        if divisible:
            assert shard.size * n == v.size, (path, v.shape, shard.shape, v.sharding)
            assert any(axis in str(entry) for entry in _spec(v)), (path, v.sharding)
            split += 1
        else:
            assert shard.size == v.size, (path, v.shape, shard.shape)
    return split


def _spec(x: jax.Array) -> tuple[Any, ...]:
    """``x``'s PartitionSpec with one entry per dimension (Auto meshes drop trailing Nones)."""
    spec = tuple(cast(NamedSharding, x.sharding).spec)
    return spec + (None,) * (x.ndim - len(spec))


def _sync(out: Any) -> Any:
    """Waits for a step: one step in flight at a time. With several queued, the simulated
    devices' threads can enter different steps' collectives and deadlock (XLA:CPU)."""
    return jax.block_until_ready(out)


def _assert_close(a: Any, b: Any, tol: float = 1e-6) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _params(model: nnx.Module) -> dict[str, np.ndarray]:
    return {
        "/".join(map(str, p)): np.asarray(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def _param_specs(model: nnx.Module) -> set[tuple[Any, ...]]:
    return {
        tuple(s for s in v.get_value().sharding.spec if s is not None)
        for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def _train(mesh: jax.sharding.Mesh, shard: str | None, how: str, **kwargs: Any) -> tuple:
    with jax.set_mesh(mesh):
        model = _replicated_model(mesh)
        opt = nm.MomentumOptimizer(
            model,
            lr=nm.CosineAnnealingLR(0.1, T_max=STEPS),
            momentum=0.9,
            weight_decay=1e-3,
            grad_clip_norm=1.0,
            shard_state_over=shard,
            **kwargs,
        )
        data = [_batch_on(mesh, b) for b in _data()]
        if how == "make_train_step":
            step = nm.make_train_step(loss_fn, model, opt)
            for x, y in data:
                _sync(step(x, y))
                opt.lr.step()
        elif how == "nnx.jit":

            @nnx.jit
            def jit_step(model: MLP, opt: nm.MomentumOptimizer, x: jax.Array, y: jax.Array) -> None:
                opt.update(model, nnx.grad(loss_fn)(model, x, y))

            for x, y in data:
                jit_step(model, opt, x, y)
                _sync(nnx.state(opt))
                opt.lr.step()
        else:  # eager
            for x, y in data[:4]:
                opt.update(model, nnx.grad(loss_fn)(model, x, y))
                opt.lr.step()
    return model, opt


# -- the 8-device checks ----------------------------------------------------------------------
@_check
def replicated_params_make_train_step() -> None:
    """Done-when: 1/8 per device, 20 steps equal to the unsharded run, params replicated."""
    for mesh in _meshes().values():
        ref_model, ref_opt = _train(mesh, None, "make_train_step")
        model, opt = _train(mesh, "data", "make_train_step")
        assert _assert_one_nth(opt) == 3  # l1 kernel, l1 bias, l2 kernel; not l2's (3,) bias
        assert _param_specs(model) == {()}  # the parameters stay replicated
        _assert_close(_params(model), _params(ref_model))
        _assert_close(opt.state_dict(), ref_opt.state_dict())
        assert opt.step_count == ref_opt.step_count == STEPS
        # the unsharded run's velocity is whole on every device
        assert all(
            v.addressable_shards[0].data.size == v.size for v in _velocities(ref_opt).values()
        )


@_check
def eager_update_and_nnx_jit() -> None:
    for mesh in _meshes().values():
        for how in ("eager", "nnx.jit"):
            ref_model, ref_opt = _train(mesh, None, how)
            model, opt = _train(mesh, "data", how)
            assert _assert_one_nth(opt) == 3
            assert _param_specs(model) == {()}
            _assert_close(_params(model), _params(ref_model))
            _assert_close(opt.state_dict(), ref_opt.state_dict())


@_check
def parameter_groups_and_tx_wrapper() -> None:
    mesh = _meshes()["explicit"]
    groups = [nm.ParamGroup(nnx.PathContains("bias"), weight_decay=0.0, momentum=0.5)]
    ref_model, ref_opt = _train(mesh, None, "make_train_step", groups=groups)
    model, opt = _train(mesh, "data", "make_train_step", groups=groups)
    assert _assert_one_nth(opt) == 3
    _assert_close(_params(model), _params(ref_model))
    _assert_close(opt.state_dict(), ref_opt.state_dict())
    assert opt.get_last_lr() == ref_opt.get_last_lr()

    def accumulate(tx: optax.GradientTransformation) -> Any:
        return optax.MultiSteps(tx, every_k_schedule=2)

    ref_model, ref_opt = _train(mesh, None, "make_train_step", tx_wrapper=accumulate)
    model, opt = _train(mesh, "data", "make_train_step", tx_wrapper=accumulate)
    # the accumulated gradients mirror the parameters too: split as well
    acc = {p: v for p, v in _velocities(opt).items() if "acc_grads" in p}
    assert acc and all(
        v.addressable_shards[0].data.size * N == v.size
        for p, v in acc.items()
        if "l2/bias" not in p
    )
    _assert_close(_params(model), _params(ref_model))
    _assert_close(opt.state_dict(), ref_opt.state_dict())


@_check
def braintools_face() -> None:
    for mesh in _meshes().values():
        out = []
        for shard in (None, "data"):
            with jax.set_mesh(mesh):
                model = _replicated_model(mesh)
                opt = nm.Momentum(
                    lr=0.1, momentum=0.9, weight_decay=1e-3, shard_state_over=shard
                ).register_trainable_weights(model)
                step = nm.make_train_step(loss_fn, model, opt)
                for batch in _data():
                    _sync(step(*_batch_on(mesh, batch)))
            out.append((model, opt))
        (ref_model, ref_opt), (model, opt) = out
        assert _assert_one_nth(opt) == 3
        assert opt.optimizer.shard_state_over == "data"
        _assert_close(_params(model), _params(ref_model))
        _assert_close(opt.state_dict(), ref_opt.state_dict())


@_check
def built_under_nnx_jit() -> None:
    """flax's sharded-init recipe: model and optimizer created inside ``nnx.jit``."""
    for mesh in _meshes().values():
        runs = []
        for shard in (None, "data"):
            with jax.set_mesh(mesh):

                @nnx.jit
                def create(shard: str | None = shard) -> tuple:
                    model = AnnotatedMLP(nnx.Rngs(0))
                    opt = nm.MomentumOptimizer(model, lr=0.1, shard_state_over=shard)
                    state = nnx.state((model, opt))
                    specs = nnx.get_partition_spec(state)
                    nnx.update((model, opt), jax.lax.with_sharding_constraint(state, specs))
                    return model, opt

                model, opt = create()
                step = nm.make_train_step(loss_fn, model, opt)
                for batch in _data(5):
                    _sync(step(*_batch_on(mesh, batch)))
            runs.append((model, opt))
        (ref_model, ref_opt), (model, opt) = runs
        assert _assert_one_nth(opt) == 3
        assert _param_specs(model) == {()}
        _assert_close(_params(model), _params(ref_model))
        _assert_close(opt.state_dict(), ref_opt.state_dict())


@_check
def whatever_the_parameter_sharding() -> None:
    """Already split over the axis: kept; over another axis: the axis is added; and
    ``optimizer_sharding`` metadata is the starting point."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)

    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            tp = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
            dp = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "data"))
            self.a = nnx.Linear(DIN, DH, kernel_init=tp, use_bias=False, rngs=rngs)
            self.b = nnx.Linear(DH, DH, kernel_init=dp, use_bias=False, rngs=rngs)
            self.c = nnx.Param(
                jnp.full((DH, DOUT), 0.1),
                out_sharding=(None, None),
                optimizer_sharding=(None, None),
            )

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.b(self.a(x)) @ self.c

    runs = []
    for shard in (None, "data"):
        with jax.set_mesh(mesh):
            model = Model(nnx.Rngs(0))
            opt = nm.MomentumOptimizer(model, lr=0.1, shard_state_over=shard)
            step = nm.make_train_step(loss_fn, model, opt)
            for batch in _data(5):
                _sync(step(*_batch_on(mesh, batch)))
        runs.append((model, opt))
    (ref_model, ref_opt), (model, opt) = runs
    trace = {k.split("trace/")[-1]: _spec(v) for k, v in _velocities(opt).items()}
    assert trace == {"a/kernel": ("data", "model"), "b/kernel": (None, "data"), "c": ("data", None)}
    assert _spec(model.a.kernel.get_value()) == (None, "model")
    assert _spec(model.b.kernel.get_value()) == (None, "data")
    assert _spec(model.c.get_value()) == (None, None)
    _assert_close(_params(model), _params(ref_model))
    _assert_close(opt.state_dict(), ref_opt.state_dict())


@_check
def errors_name_shard_state_over() -> None:
    mesh = _meshes()["auto"]
    with jax.set_mesh(mesh):
        model = _replicated_model(mesh)
        with pytest.raises(ValueError, match="shard_state_over='model'.*no axis 'model'"):
            nm.MomentumOptimizer(model, lr=0.1, shard_state_over="model")


@_check
def checkpoints_between_sharded_and_unsharded() -> None:
    """Saved sharded, restored onto one device and onto the mesh unsharded; and back."""
    mesh = _meshes()["auto"]
    data = _data(6)

    def sharded(shard: str | None) -> tuple:
        with jax.set_mesh(mesh):
            model = _replicated_model(mesh)
            return model, nm.MomentumOptimizer(model, lr=0.1, shard_state_over=shard)

    def single_device() -> tuple:
        model = MLP(nnx.Rngs(1))  # on one device, no mesh
        return model, nm.MomentumOptimizer(model, lr=0.1)

    def train(model: Any, opt: Any, batches: list, on_mesh: bool) -> None:
        step = nm.make_train_step(loss_fn, model, opt)
        for batch in batches:
            _sync(step(*(_batch_on(mesh, batch) if on_mesh else batch)))

    with tempfile.TemporaryDirectory() as root:
        # 1. sharded -> 1 device, mesh without sharding, sharded
        model, opt = sharded("data")
        train(model, opt, data[:3], True)
        with nm.Checkpointer(os.path.join(root, "a")) as ckpt:
            ckpt.save(3, model, opt)
        saved = (_params(model), opt.state_dict())
        for kind, (fresh, fresh_opt) in {
            "1 device": single_device(),
            "mesh, unsharded": sharded(None),
            "mesh, sharded": sharded("data"),
        }.items():
            with nm.Checkpointer(os.path.join(root, "a")) as ckpt:
                assert ckpt.restore(fresh, fresh_opt) == 3, kind
            _assert_close((_params(fresh), fresh_opt.state_dict()), saved, tol=0)
            if kind == "mesh, sharded":
                _assert_one_nth(fresh_opt)
            else:
                assert all(
                    v.addressable_shards[0].data.size == v.size
                    for v in _velocities(fresh_opt).values()
                ), kind
            # training goes on from the restored state with the same numbers
            train(fresh, fresh_opt, data[3:], kind != "1 device")
            if kind == "mesh, unsharded":
                expected = (_params(fresh), fresh_opt.state_dict())
        train(model, opt, data[3:], True)
        _assert_close((_params(model), opt.state_dict()), expected)

        # 2. one device -> sharded
        model, opt = single_device()
        train(model, opt, data[:3], False)
        with nm.Checkpointer(os.path.join(root, "b")) as ckpt:
            ckpt.save(3, model, opt)
        fresh, fresh_opt = sharded("data")
        with nm.Checkpointer(os.path.join(root, "b")) as ckpt:
            assert ckpt.restore(fresh, fresh_opt) == 3
        _assert_close(
            (_params(fresh), fresh_opt.state_dict()), (_params(model), opt.state_dict()), 0
        )
        _assert_one_nth(fresh_opt)
        assert _param_specs(fresh) == {()}


@_check
def restore_diff_shows_the_sharding_change() -> None:
    """A ZeRO-1 checkpoint restored onto one device: the diff (logged at INFO) says so."""
    mesh = _meshes()["explicit"]
    with jax.set_mesh(mesh):
        model = _replicated_model(mesh)
        opt = nm.MomentumOptimizer(model, lr=0.1, shard_state_over="data")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("nnx_momentum")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory() as root:
            with nm.Checkpointer(root, async_save=False) as ckpt:
                ckpt.save(1, model, opt)
            fresh = MLP(nnx.Rngs(1))
            with nm.Checkpointer(root) as ckpt:
                assert ckpt.restore(fresh, nm.MomentumOptimizer(fresh, lr=0.1)) == 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    (record,) = records
    assert record.levelno == logging.INFO, record
    text = record.getMessage()
    assert "sharding       model (4 arrays): mesh (data=8) () -> 1 device" in text, text
    # the velocity split over 'data' (ZeRO-1), the rest replicated
    assert "optimizer (2 arrays): mesh (data=8) ('data', None) -> 1 device" in text, text
    assert "optimizer (1 arrays): mesh (data=8) ('data',) -> 1 device" in text, text


@_check
def compiled_memory_per_device_drops() -> None:
    """The compiled step's per-device arguments shrink by 7/8 of the split velocity."""
    mesh = _meshes()["explicit"]
    x, y = _batch_on(mesh, _data(1)[0])
    sizes = {}
    for shard in (None, "data"):
        with jax.set_mesh(mesh):
            model = _replicated_model(mesh)
            opt = nm.MomentumOptimizer(model, lr=0.1, shard_state_over=shard)
            stats = nm.make_train_step(loss_fn, model, opt).lower(x, y).compile().memory_analysis()
        if stats is None:  # a backend without the analysis
            return
        sizes[shard] = stats.argument_size_in_bytes
    split_bytes = (DIN * DH + DH + DH * DOUT) * 4  # l1 kernel, l1 bias, l2 kernel (f32)
    assert sizes[None] - sizes["data"] == split_bytes * (N - 1) // N, sizes


def _main() -> None:
    """Runs every check (8 devices) and prints ``{name: 'ok' | traceback}`` as JSON."""
    assert jax.device_count() == N, jax.devices()
    results = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - reported to the test that owns the check
            results[name] = traceback.format_exc()
    print(json.dumps(results))


# -- the tests -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results_on_8_devices() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={N}")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    results: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.slow
@pytest.mark.parametrize("check", list(CHECKS))
def test_on_8_devices(results_on_8_devices: dict[str, str], check: str) -> None:
    assert results_on_8_devices[check] == "ok", results_on_8_devices[check]


@pytest.mark.parametrize(
    ("spec", "shape", "sizes", "want"),
    [
        (P(), (16, 10), {"data": 8}, ("data", None)),
        (P(), (10, 16), {"data": 8}, (None, "data")),  # the first divisible dimension
        (P(), (3,), {"data": 8}, (None,)),  # none divisible: as it is
        (P(), (), {"data": 8}, ()),  # a scalar
        (P("data"), (16,), {"data": 8}, ("data",)),  # already over the axis
        (P(None, "model"), (10, 32), {"data": 8, "model": 2}, (None, ("model", "data"))),
        (P(None, "model"), (16, 32), {"data": 8, "model": 2}, ("data", "model")),
        (P(None, "model"), (10, 6), {"data": 8, "model": 2}, (None, "model")),
        (P(), (0, 8), {"data": 8}, (None, "data")),  # an empty dimension is skipped
    ],
)
def test_state_spec(spec: P, shape: tuple, sizes: dict, want: tuple) -> None:
    assert tuple(state_spec(spec, shape, "data", sizes)) == want


def test_no_mesh_is_a_clear_error() -> None:
    model = MLP(nnx.Rngs(0))
    with pytest.raises(ValueError, match="shard_state_over='data' needs a device mesh"):
        nm.MomentumOptimizer(model, lr=0.1, shard_state_over="data")
    with pytest.raises(ValueError, match="shard_state_over"):
        nm.Momentum(lr=0.1, shard_state_over="data").register_trainable_weights(model)
    with pytest.raises(TypeError, match="shard_state_over"):
        nm.MomentumOptimizer(model, lr=0.1, shard_state_over=0)  # type: ignore[arg-type]


def test_one_device_mesh_equals_unsharded() -> None:
    """On a 1-device mesh the option is a no-op on the numbers (and builds before weights)."""
    mesh = jax.make_mesh((1,), ("data",))
    empty = nm.Momentum(lr=0.1, shard_state_over="data")  # no weights yet: nothing to place
    assert empty.step_count == 0
    models, opts = [], []
    for shard in (None, "data"):
        with jax.set_mesh(mesh):
            model = MLP(nnx.Rngs(0))
            opt = nm.MomentumOptimizer(model, lr=0.1, weight_decay=1e-2, shard_state_over=shard)
            step = nm.make_train_step(loss_fn, model, opt)
            for x, y in _data(5):
                step(x, y)
        models.append(model)
        opts.append(opt)
    _assert_close(_params(models[0]), _params(models[1]), tol=0)
    _assert_close(opts[0].state_dict(), opts[1].state_dict(), tol=0)
    assert opts[1].shard_state_over == "data" and opts[0].shard_state_over is None


if __name__ == "__main__":
    _main()
