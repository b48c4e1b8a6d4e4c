"""The braintools ``Momentum`` reference page, done for real on Flax NNX.

    python examples/braintools_style.py
    python examples/braintools_style.py --epochs 8

The three examples of ``braintools.optim.Momentum``'s docs -- plain momentum,
momentum with weight decay, and momentum with a ``StepLR`` stepped once per
epoch -- on an ``nnx.Linear(10, 5)`` fitting a noisy linear map. Where braintools
writes ``model.states(brainstate.ParamState)``, NNX writes
``nnx.state(model, nnx.Param)``: live Variables, so ``optimizer.step(grads)``
updates the model in place.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import nnx_momentum as nm

BATCHES_PER_EPOCH = 10
CTRL_C = threading.Event()  # set by Ctrl-C (see the end of this file)


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed teacher, ``y = x @ W + noise``: one epoch of 10 batches of 32."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(10, 5)).astype(np.float32)
    x = rng.normal(size=(BATCHES_PER_EPOCH, 32, 10)).astype(np.float32)
    y = x @ w + 0.1 * rng.normal(size=(BATCHES_PER_EPOCH, 32, 5)).astype(np.float32)
    return x, y


def loss_fn(model: nnx.Linear, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit  # optional: eager calls give the same numbers, only slower
def train_step(model: nnx.Linear, optimizer: nm.Momentum, x: jax.Array, y: jax.Array) -> None:
    grads = nnx.grad(loss_fn)(model, x, y)  # an nnx.State keyed like the weights
    optimizer.step(grads)


def train(
    model: nnx.Linear,
    optimizer: nm.Momentum,
    data: tuple[np.ndarray, np.ndarray],
    epochs: int,
    scheduler: nm.LRScheduler | None = None,
) -> None:
    xs, ys = data
    for epoch in range(epochs):
        for x, y in zip(xs, ys, strict=True):
            train_step(model, optimizer, x, y)
        if scheduler is not None:
            scheduler.step()  # once per epoch, as in braintools
        loss = float(loss_fn(model, xs[0], ys[0]))
        print(f"  epoch {epoch}: loss {loss:.4f}  lr {optimizer.current_lr:.4g}")
        if CTRL_C.is_set():  # stop between epochs, never inside a jax call
            raise KeyboardInterrupt


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help``: the module docstring as written, and every option's default."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per example")
    parser.add_argument("--seed", type=int, default=0, help="the data and the model init")
    args = parser.parse_args()
    data = make_data(args.seed)

    print("Basic momentum:")
    model = nnx.Linear(10, 5, rngs=nnx.Rngs(args.seed))
    optimizer = nm.Momentum(lr=0.01, momentum=0.9)
    optimizer.register_trainable_weights(nnx.state(model, nnx.Param))
    train(model, optimizer, data, args.epochs)

    print("Momentum with weight decay:")
    model = nnx.Linear(10, 5, rngs=nnx.Rngs(args.seed))
    optimizer = nm.Momentum(lr=0.01, momentum=0.9, weight_decay=0.0001)
    optimizer.register_trainable_weights(nnx.state(model, nnx.Param))
    train(model, optimizer, data, args.epochs)

    print("Momentum with learning rate scheduling (StepLR, stepped per epoch):")
    model = nnx.Linear(10, 5, rngs=nnx.Rngs(args.seed))
    scheduler = nm.StepLR(base_lr=0.05, step_size=2, gamma=0.5)
    optimizer = nm.Momentum(lr=scheduler, momentum=0.9)
    optimizer.register_trainable_weights(nnx.state(model, nnx.Param))
    train(model, optimizer, data, args.epochs, scheduler=scheduler)

    # What the optimizer holds: the optax transform it runs, its step count and its
    # state -- velocity, step and the scheduler's epoch -- as a plain dict.
    print("default_tx():", type(optimizer.default_tx()).__name__)
    print("step_count:", optimizer.step_count, " get_last_lr():", optimizer.get_last_lr())
    print("state_dict() keys:", sorted(optimizer.state_dict()))
    print("scheduler epoch in the state:", int(optimizer.state_dict()["lr"]["last_epoch"]))


def _ctrl_c(signum: int, frame: object) -> None:
    if CTRL_C.is_set():  # a second Ctrl-C: at once
        raise KeyboardInterrupt
    CTRL_C.set()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _ctrl_c)
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print(
            "braintools_style.py: interrupted; it keeps no checkpoints: run it again",
            file=sys.stderr,
        )
        sys.exit(130)
