"""Models, optimizers and training loops shared by the checkpointer tests and their workers.

Workers run as separate processes (``worker.py``); the test process imports
this module too, so a run saved by a worker is resumed with the same code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import nnx_momentum as nm

HYPER = dict(momentum=0.9, weight_decay=1e-3, grad_clip_norm=0.5)


class Net(nnx.Module):
    """Linear -> BatchNorm -> relu -> Dropout -> Linear: Params, BatchStats and RNG state."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(params=seed, dropout=seed + 100)
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.fc2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.drop(jax.nn.relu(self.bn(self.fc1(x)))))


def make_optimizer(face: str, model: nnx.Module, **overrides):
    """``face`` 'opt' -> nm.MomentumOptimizer, 'bt' -> nm.Momentum (registered on the model)."""
    hyper = {**HYPER, **overrides}
    scheduler = nm.StepLR(0.1, step_size=2, gamma=0.5)
    if face == "opt":
        return nm.MomentumOptimizer(model, lr=scheduler, **hyper)
    if face == "bt":
        opt = nm.Momentum(lr=scheduler, **hyper)
        return opt.register_trainable_weights(nnx.state(model, nnx.Param))
    raise ValueError(face)


def batch(i: int):
    key = jax.random.fold_in(jax.random.key(1234), i)
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (32, 8)), jax.random.normal(ky, (32, 4))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit(static_argnums=0)
def _update(face: str, model, optimizer, x, y):
    grads = nnx.grad(loss_fn)(model, x, y)
    if face == "opt":
        optimizer.update(model, grads)
    else:
        optimizer.step(grads)


def train_step(face: str, model, optimizer, i: int) -> None:
    """One compiled update on batch ``i``, then one (eager) scheduler step."""
    x, y = batch(i)
    _update(face, model, optimizer, x, y)
    optimizer.lr.step()


def flat_arrays(model, optimizer) -> dict[str, np.ndarray]:
    """Every model and optimizer array (key arrays as key data), by path."""
    out = {}
    for prefix, state in (("model", nnx.state(model)), ("opt", optimizer.state_tree())):
        for path, var in nnx.to_flat_state(state):
            v = var.get_value()
            if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
                v = jax.random.key_data(v)
            out["/".join([prefix, *map(str, path)])] = np.asarray(v)
    return out


# -- sharded model (topology tests) ---------------------------------------------------------
def make_mesh():
    n = len(jax.devices())
    return jax.make_mesh((n,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))


class ShardedNet(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        init = nnx.initializers.lecun_normal()
        self.a = nnx.Linear(
            16, 32, kernel_init=nnx.with_partitioning(init, (None, "model")), rngs=rngs
        )
        self.b = nnx.Linear(
            32, 8, kernel_init=nnx.with_partitioning(init, ("model", None)), rngs=rngs
        )

    def __call__(self, x):
        return self.b(jax.nn.relu(self.a(x)))


@nnx.jit
def _sharded_update(model, optimizer, x):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
    optimizer.update(model, grads)


def sharded_step(model, optimizer, i: int) -> None:
    key = jax.random.fold_in(jax.random.key(7), i)
    _sharded_update(model, optimizer, jax.random.normal(key, (8, 16)))
    optimizer.lr.step()


# -- big model (kill -9 tests) ------------------------------------------------------------
def big_model():
    return nnx.Linear(1024, 2048, rngs=nnx.Rngs(0))  # 8 MB kernel + 8 MB velocity


def fill(model, optimizer, value: float) -> None:
    """Sets every float array of the model and the optimizer's velocity to ``value``."""
    for state in (nnx.state(model, nnx.Param), optimizer.state_tree()["opt_state"]):
        for _, var in nnx.to_flat_state(state):
            v = var.get_value()
            if jnp.issubdtype(v.dtype, jnp.floating) and v.ndim > 0:
                var.set_value(jnp.full(v.shape, value, v.dtype))
