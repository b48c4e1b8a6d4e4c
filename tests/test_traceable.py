"""Construction under jax.jit, nnx.jit, nnx.eval_shape and jax.vmap (traced hyperparameters)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nnx_momentum as nm


def test_inject_hyperparams_under_jit_equals_eager():
    tx = optax.inject_hyperparams(nm.momentum)(learning_rate=0.1, momentum=0.8)
    params = {"w": jnp.arange(3.0)}
    grads = {"w": jnp.array([1.0, -1.0, 0.5])}
    eager_state = jit_state = tx.init(params)
    for _ in range(3):
        eager_u, eager_state = tx.update(grads, eager_state, params)
        jit_u, jit_state = jax.jit(tx.update)(grads, jit_state, params)
        np.testing.assert_array_equal(eager_u["w"], jit_u["w"])
    plain = nm.momentum(0.1, momentum=0.8)
    state = plain.init(params)
    for _ in range(3):
        plain_u, state = plain.update(grads, state, params)
    np.testing.assert_allclose(plain_u["w"], jit_u["w"], rtol=1e-6)


def test_vmap_over_learning_rates():
    params = {"w": jnp.ones(2)}

    def two_steps(lr):
        tx = nm.momentum(lr, momentum=0.9)
        state = tx.init(params)
        u, state = tx.update(params, state)
        u, state = tx.update(params, state)
        return u["w"]

    lrs = jnp.array([0.1, 0.01, 0.0])
    np.testing.assert_allclose(
        jax.vmap(two_steps)(lrs), jnp.stack([two_steps(float(lr)) for lr in lrs]), rtol=1e-6
    )


@pytest.mark.parametrize("face", ["opt", "bt"])
@pytest.mark.parametrize("how", ["eval_shape", "nnx.jit"])
def test_both_faces_build_traced(face, how):
    def make():
        model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        sched = nm.CosineAnnealingLR(0.1, T_max=10)
        if face == "opt":
            return model, nm.MomentumOptimizer(model, lr=sched, weight_decay=1e-3)
        opt = nm.Momentum(lr=sched, weight_decay=1e-3)
        return model, opt.register_trainable_weights(nnx.state(model, nnx.Param))

    model, opt = nnx.eval_shape(make) if how == "eval_shape" else nnx.jit(make)()
    if how == "eval_shape":
        leaves = jax.tree.leaves(nnx.state(opt))
        assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
        return
    assert opt.step_count == 0 and opt.current_lr == 0.1
    x = jnp.ones((4, 3))
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    opt.update(model, grads) if face == "opt" else opt.step(grads)
    assert opt.step_count == 1


def test_complex_parameters_and_accumulator():
    tx = nm.momentum(0.1, accumulator_dtype=jnp.complex64)
    params = {"z": jnp.array([1 + 1j, 2 - 1j], jnp.complex64)}
    updates, state = tx.update(params, tx.init(params), params)
    assert state.inner_state[3].trace["z"].dtype == jnp.complex64
    np.testing.assert_allclose(updates["z"], -0.1 * params["z"], rtol=1e-6)


SHARDED_INIT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    import nnx_momentum as nm
    mesh = jax.make_mesh((2, 4), ("data", "model"))

    class MLP(nnx.Module):
        def __init__(self, rngs):
            init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
            self.l1 = nnx.Linear(8, 16, kernel_init=init, rngs=rngs)

        def __call__(self, x):
            return self.l1(x)

    @nnx.jit
    def create():  # flax's sharded-init recipe
        model = MLP(nnx.Rngs(0))
        optimizer = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2), momentum=0.9)
        state = nnx.state((model, optimizer))
        nnx.update((model, optimizer), jax.lax.with_sharding_constraint(
            state, nnx.get_partition_spec(state)))
        return model, optimizer

    with jax.set_mesh(mesh):
        model, optimizer = create()
        velocity = optimizer.opt_state.inner_state[3].trace["l1"]["kernel"].get_value()
        kernel = model.l1.kernel.get_value()
        assert kernel.sharding.spec == P(None, "model"), kernel.sharding
        assert velocity.sharding.is_equivalent_to(kernel.sharding, 2), velocity.sharding
        assert velocity.addressable_shards[0].data.shape == (8, 4)
        step = nm.make_train_step(lambda m, x: jnp.mean(m(x) ** 2), model, optimizer)
        step(jnp.ones((4, 8)))
    assert optimizer.step_count == 1 and optimizer.current_lr == 0.1
    print("OK")
    """
)


@pytest.mark.slow
def test_flax_sharded_init_recipe_on_8_devices():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_INIT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
