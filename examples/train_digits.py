"""Train an MLP on sklearn's 8x8 digits with momentum, a cosine schedule and checkpoints.

Run it (about 10 seconds on 2 CPU cores; it ends with a line ``test_accuracy=...``):

    python examples/train_digits.py
    python examples/train_digits.py --steps 4000 --lr 0.05 --ckpt-dir runs/digits

Start it again with the same ``--ckpt-dir`` and it resumes from the newest
checkpoint: the model, the velocity, the step counter and the scheduler come
back from ``nm.Checkpointer``; the data position is a pure function of
``(seed, step)``, so the resumed run sees exactly the batches an uninterrupted
run would and ends with the same parameters. ``--stop-after N`` simulates a
preemption after step N. ``loss.png`` (loss, accuracy and LR curves) is
written next to the checkpoints.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import nnx_momentum as nm


class MLP(nnx.Module):
    def __init__(self, din: int, dhidden: int, dout: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, dhidden, rngs=rngs)
        self.out = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x)))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = model(x)
    loss = jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    return loss, jnp.mean(jnp.argmax(logits, axis=1) == y)


def batch_rows(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """The rows of batch ``step``: a pure function of (seed, step), so resuming is exact.

    Each epoch is a fresh permutation seeded by (seed, epoch); the ragged last
    batch is dropped.
    """
    epoch, position = divmod(step, n // batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[position * batch_size : (position + 1) * batch_size]


def save_plot(history: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    titles = {"loss": "train loss", "acc": "train accuracy", "lr": "learning rate"}
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        ax.plot(history["step"], history[key])
        ax.set(xlabel="step", title=title)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def flat_arrays(model: MLP, optimizer: nm.MomentumOptimizer) -> dict[str, np.ndarray]:
    """Every parameter and optimizer array by path (for ``--save-params``)."""
    trees = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)), "opt": optimizer.state_dict()}
    leaves = jax.tree_util.tree_leaves_with_path(trees)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="run (and schedule) length")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-dir", default="runs/digits", help="checkpoints and loss.png go here")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--log-every", type=int, default=25, help="progress bar/curve every N steps")
    p.add_argument("--stop-after", type=int, default=None, help="stop (as if preempted) after N")
    p.add_argument("--save-params", default=None, help="write final arrays to this .npz")
    args = p.parse_args()

    # Data: 1797 images of 8x8 pixels in [0, 16]; a fixed 80/20 split.
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype(np.int32), test_size=0.2, random_state=0, stratify=digits.target
    )

    # Model, per-step cosine schedule, optimizer: the schedule spans the whole run.
    model = MLP(64, args.hidden, 10, rngs=nnx.Rngs(args.seed))
    schedule = nm.CosineAnnealingLR(args.lr, T_max=args.steps)
    optimizer = nm.MomentumOptimizer(
        model, lr=schedule, momentum=args.momentum, weight_decay=args.weight_decay
    )

    history: dict[str, list[float]] = {"step": [], "loss": [], "acc": [], "lr": []}
    with nm.Checkpointer(args.ckpt_dir, max_to_keep=3) as ckpt:
        try:
            start = ckpt.restore(model, optimizer) or 0  # None when there is nothing to restore
        except ValueError as e:  # e.g. another --steps changes the schedule's length
            p.error(f"cannot resume from {args.ckpt_dir}: {e}\nUse another --ckpt-dir.")
        if start:
            extra = ckpt.metadata(start)["extra"]
            if extra["seed"] != args.seed:
                p.error(f"--seed {args.seed} differs from the checkpoint's seed {extra['seed']}")
            history = extra["history"]
            print(f"resuming from step {start} (epoch {extra['epoch']}, batch {extra['batch']})")

        # Compiled once; donates the model and optimizer buffers (updated in place).
        train_step = nm.make_train_step(loss_fn, model, optimizer, has_aux=True)
        stop = min(args.steps, args.stop_after or args.steps)
        losses, accs = [], []
        with tqdm(range(start, stop), initial=start, total=args.steps, desc="train") as bar:
            for step in bar:
                rows = batch_rows(args.seed, step, len(x_train), args.batch_size)
                lr = optimizer.current_lr if (step + 1) % args.log_every == 0 else None
                loss, acc = train_step(x_train[rows], y_train[rows])
                optimizer.lr.step()  # per-step schedule: one scheduler "epoch" per update
                losses.append(loss)
                accs.append(acc)
                done = step + 1
                if lr is not None:
                    mean_loss, mean_acc = float(np.mean(losses)), float(np.mean(accs))
                    losses, accs = [], []
                    for key, value in zip(history, (done, mean_loss, mean_acc, lr), strict=True):
                        history[key].append(value)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{mean_acc:.3f}", lr=f"{lr:.4f}")
                if done % args.save_every == 0 or done == stop:
                    epoch, batch = divmod(done, len(x_train) // args.batch_size)  # what comes next
                    curves = {key: list(values) for key, values in history.items()}
                    extra = {"seed": args.seed, "epoch": epoch, "batch": batch, "history": curves}
                    ckpt.save(done, model, optimizer, extra=extra, metrics={"loss": float(loss)})
        if start >= stop:
            print(f"nothing to do: the checkpoint is at step {start}, --steps is {args.steps}")

    if history["step"]:
        save_plot(history, os.path.join(args.ckpt_dir, "loss.png"))
    if args.save_params:
        np.savez(args.save_params, **flat_arrays(model, optimizer))
    if stop < args.steps:
        print(f"stopped after step {stop}; run again with the same --ckpt-dir to resume")
        return
    logits = model(jnp.asarray(x_test))
    print(f"test_accuracy={float(jnp.mean(jnp.argmax(logits, axis=1) == y_test)):.4f}")


if __name__ == "__main__":
    main()
