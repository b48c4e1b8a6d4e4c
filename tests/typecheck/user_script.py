"""A typical user script, type-checked (never run by pytest): ``mypy tests/typecheck``.

It uses the public API the way README.md does -- both optimizer faces, a scheduler,
``make_train_step`` and the checkpointer -- with the annotations a typed user writes, so
mypy fails here when a public signature or attribute type would reject (or wrongly
accept) ordinary README code: e.g. ``optimizer.lr.step()`` on an ``lr`` typed as optional.
"""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
from flax import nnx

import nnx_momentum as nm


def loss_fn(model: nnx.Linear, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def main() -> None:
    x, y = jnp.ones((8, 3)), jnp.zeros((8, 1))

    # The nnx.Optimizer face, with a scheduler (README: "Learning-rate schedulers").
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    optimizer = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2, gamma=0.5))
    for _ in range(4):
        grads = nnx.grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        optimizer.lr.step()  # the scheduler is optimizer.lr
    lr: float = optimizer.current_lr
    optimizer.current_lr = 0.01
    count: int = optimizer.step_count
    last: list[float] = optimizer.get_last_lr()
    assert isinstance(optimizer, nnx.Optimizer)

    # The fast path (README: "The fast path: make_train_step").
    step = nm.make_train_step(loss_fn, model, optimizer)
    loss = step(x, y)
    hlo: str = step.lower(x, y).as_text()

    # The braintools face (README: "Quickstart: the braintools face").
    bt_model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    scheduler = nm.StepLR(base_lr=0.1, step_size=30, gamma=0.1)
    opt = nm.Momentum(lr=scheduler, momentum=0.9, weight_decay=1e-4)
    opt.register_trainable_weights(nnx.state(bt_model, nnx.Param))
    opt.step(nnx.grad(loss_fn)(bt_model, x, y))
    scheduler.step()
    state = opt.state_dict()
    opt.load_state_dict(state)

    # Checkpoint and resume (README: "Checkpoint and resume").
    ckpt_dir = tempfile.mkdtemp()
    with nm.Checkpointer(ckpt_dir, max_to_keep=3) as ckpt:
        saved: bool = ckpt.save(
            4, model, optimizer, metrics={"loss": float(loss)}, extra={"next_batch": 4}
        )
    with nm.Checkpointer(ckpt_dir) as ckpt:
        start: int | None = ckpt.restore(model, optimizer)
        steps: list[int] = ckpt.all_steps()
        latest: int | None = ckpt.latest_step()
        meta = ckpt.metadata(start)
        extra = meta["extra"] if meta is not None else None
    print(lr, count, last, len(hlo), saved, start, steps, latest, extra)


if __name__ == "__main__":
    main()
