"""Small models, data and gradient sources shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class MLP(nnx.Module):
    """Two layers, so two sub-modules both own a ``kernel`` and a ``bias``."""

    def __init__(self, rngs: nnx.Rngs, din: int = 4, dh: int = 8, dout: int = 3):
        self.l1 = nnx.Linear(din, dh, rngs=rngs)
        self.l2 = nnx.Linear(dh, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def batches(n: int, seed: int = 0, din: int = 4, dout: int = 3):
    rng = np.random.default_rng(seed)
    return [
        (
            jnp.asarray(rng.normal(size=(6, din)), jnp.float32),
            jnp.asarray(rng.normal(size=(6, dout)), jnp.float32),
        )
        for _ in range(n)
    ]


def params_np(model) -> dict[str, np.ndarray]:
    """``{'l1/kernel': array, ...}`` copies of the model's parameters."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, p)): np.array(v.get_value()) for p, v in flat}


def grads_np(model, batch) -> dict[str, np.ndarray]:
    g = nnx.grad(loss_fn)(model, *batch)
    return {"/".join(map(str, p)): np.array(v.get_value()) for p, v in nnx.to_flat_state(g)}


def reference_grads_fn(template_model, batch_seq):
    """A ``grads_fn(params)`` for the numpy reference, using jax only for the gradient."""
    model = nnx.clone(template_model)  # never touch the model under test
    state_iter = iter(batch_seq)

    def grads_fn(params64):
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            var.set_value(jnp.asarray(params64["/".join(map(str, path))], jnp.float32))
        return grads_np(model, next(state_iter))

    return grads_fn


def assert_params_close(model, want: dict[str, np.ndarray], rtol=2e-5, atol=2e-6):
    got = params_np(model)
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def tree_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))
