"""Train an MLP on sklearn's 8x8 digits with momentum, a cosine schedule and checkpoints.

Run these in turn from the repository root (each takes seconds on 2 CPU cores):

    python examples/train_digits.py
    python examples/train_digits.py
    python examples/train_digits.py --ckpt-dir runs/preempted --stop-after 1000
    python examples/train_digits.py --ckpt-dir runs/preempted
    python examples/train_digits.py --steps 4000 --lr 0.05 --ckpt-dir runs/digits-4000

The first trains for 3000 steps, checkpointing into ``--ckpt-dir`` (``runs/digits``
by default), and ends with a line ``test_accuracy=...``. The second finds that run
finished in the same directory: nothing to train, it just evaluates. The third
stops after step 1000, as if preempted; the fourth, with the same ``--ckpt-dir``,
resumes from its newest checkpoint -- the model, the velocity, the step counter
and the scheduler come back from ``nm.Checkpointer``, and the data position is a
pure function of ``(seed, step)`` -- so it ends with the same parameters, and the
same test accuracy, as the uninterrupted first run. The fifth is a run with
another schedule, so it gets its own ``--ckpt-dir``: ``--steps`` is the length of
the cosine schedule, which each checkpoint records, and resuming a run with
another schedule is refused with an error that says so.

``loss.png`` (train loss; train and held-out accuracy; the LR) is written next
to the checkpoints; the first line printed says where. Ctrl-C saves the step and stops, with
one line saying from which step the same command resumes; a directory that
cannot be used (read-only, ``gs://`` without gcsfs or credentials) is one line too.
"""

from __future__ import annotations

import argparse
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
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


@nnx.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(model(x), axis=1) == y)


HISTORY = ("step", "loss", "acc", "test_acc", "lr")  # the curves, one point per --log-every


def save_plot(history: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps = history["step"]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    ax_loss.plot(steps, history["loss"])
    ax_loss.set(yscale="log", title="train loss", ylabel="cross-entropy (log scale)")
    ax_acc.plot(steps, history["acc"], label="train batches (mean between points)")
    ax_acc.plot(steps, history["test_acc"], label="held-out test set")
    ax_acc.set(title="accuracy", ylabel="accuracy", ylim=(0, 1.02))
    ax_acc.legend(loc="lower right")
    ax_lr.plot(steps, history["lr"])
    ax_lr.set(title="learning rate (cosine, per step)", ylabel="learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    # Through etils.epath (orbax's own path library), so a gs:// directory works too.
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def flat_arrays(model: MLP, optimizer: nm.MomentumOptimizer) -> dict[str, np.ndarray]:
    """Every parameter and optimizer array by path (for ``--save-params``)."""
    trees = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)), "opt": optimizer.state_dict()}
    leaves = jax.tree_util.tree_leaves_with_path(trees)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


class CtrlC:
    """Ctrl-C as a flag the loop reads between steps: the run saves that step and stops.

    No step or save is cut in half; a second Ctrl-C stops at once (``KeyboardInterrupt``).
    """

    def __init__(self) -> None:
        self.pressed = False

    def __enter__(self) -> CtrlC:
        self._previous = signal.signal(signal.SIGINT, self._press)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _press(self, signum: int, frame: object) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help``: the module docstring as written, and every option's default."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="run length = cosine schedule length")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="momentum coefficient")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="coupled L2 weight decay")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step")
    p.add_argument("--hidden", type=int, default=128, help="hidden units of the MLP")
    p.add_argument("--seed", type=int, default=0, help="model init and data order")
    p.add_argument("--ckpt-dir", default="runs/digits", help="checkpoints and loss.png go here")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument(
        "--log-every", type=int, default=25, help="progress bar and curves every N steps"
    )
    p.add_argument(
        "--stop-after", type=int, default=None, help="stop after step N, as if preempted"
    )
    p.add_argument("--save-params", default=None, help="write the final arrays to this .npz")
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

    history: dict[str, list[float]] = {key: [] for key in HISTORY}
    x_test_j, y_test_j = jnp.asarray(x_test), jnp.asarray(y_test)
    # The directory is checked here: a read-only one, gs:// without gcsfs or credentials,
    # or an unreachable bucket is one line, not a traceback after a save interval.
    try:
        ckpt = nm.Checkpointer(args.ckpt_dir, max_to_keep=3)
    except (ImportError, OSError, ValueError) as e:
        sys.exit(f"train_digits.py: {e}")
    print(f"checkpoints and loss.png go to {ckpt.directory}")
    saved = 0  # the newest checkpoint, for the message on Ctrl-C
    ctrl_c = CtrlC()
    try:
        with ckpt:  # leaving it (Ctrl-C too) waits for the save in flight
            try:
                start = ckpt.restore(model, optimizer) or 0  # None when there is nothing to restore
                saved = start
            except ValueError as e:  # e.g. another --steps changes the schedule's length
                p.error(
                    f"cannot resume from {args.ckpt_dir}: {e}\n"
                    "A run with another schedule (--steps, --lr) or model needs its own --ckpt-dir."
                )
            if start:
                extra = ckpt.metadata(start)["extra"]
                if extra["seed"] != args.seed:
                    p.error(
                        f"--seed {args.seed} differs from the checkpoint's seed {extra['seed']}"
                    )
                if sorted(extra["history"]) != sorted(HISTORY):
                    p.error(f"{args.ckpt_dir} was written by another version of this example")
                history = extra["history"]
                print(
                    f"resuming from step {start} (epoch {extra['epoch']}, batch {extra['batch']})"
                )

            stop = max(start, min(args.steps, args.stop_after or args.steps))
            if start == stop:  # no progress bar: there is nothing to show progress on
                print(f"nothing to train: the checkpoint is at step {start} of {args.steps}")
            else:
                # Compiled once; donates the model and optimizer buffers (updated in place).
                train_step = nm.make_train_step(loss_fn, model, optimizer, has_aux=True)
                losses, accs = [], []
                steps = range(start, stop)
                with tqdm(steps, initial=start, total=args.steps, desc="train") as bar, ctrl_c:
                    for step in bar:
                        rows = batch_rows(args.seed, step, len(x_train), args.batch_size)
                        done = step + 1
                        log = done % args.log_every == 0 or done == stop
                        lr = optimizer.current_lr if log else None  # the LR this step applies
                        loss, acc = train_step(x_train[rows], y_train[rows])
                        optimizer.lr.step()  # per-step schedule: one scheduler "epoch" per update
                        losses.append(loss)
                        accs.append(acc)
                        if lr is not None:  # read only when logging: a read waits for the device
                            point = {
                                "step": done,
                                "loss": float(np.mean(losses)),
                                "acc": float(np.mean(accs)),
                                "test_acc": float(accuracy(model, x_test_j, y_test_j)),
                                "lr": lr,
                            }
                            losses, accs = [], []
                            for key in HISTORY:
                                history[key].append(point[key])
                            bar.set_postfix(
                                loss=f"{point['loss']:.4f}",
                                acc=f"{point['acc']:.3f}",
                                test_acc=f"{point['test_acc']:.3f}",
                                lr=f"{lr:.3g}",  # 2.74e-08, not 0.0000, at the end of the cosine
                            )
                        if done % args.save_every == 0 or done == stop or ctrl_c.pressed:
                            epoch, batch = divmod(done, len(x_train) // args.batch_size)  # up next
                            extra = {
                                "seed": args.seed,
                                "epoch": epoch,
                                "batch": batch,
                                "history": {key: list(values) for key, values in history.items()},
                            }
                            ckpt.save(
                                done, model, optimizer, extra=extra, metrics={"loss": float(loss)}
                            )
                            saved = done
                        if ctrl_c.pressed:  # saved just above: stop here
                            break
            if ctrl_c.pressed:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        since = f"from step {saved}" if saved else "from the start (no checkpoint yet)"
        print(
            f"train_digits.py: interrupted; run the same command again to resume {since} "
            f"({ckpt.directory})",
            file=sys.stderr,
        )
        sys.exit(130)

    if history["step"]:
        plot = epath.Path(ckpt.directory) / "loss.png"
        try:
            save_plot(history, str(plot))
        except OSError as e:  # e.g. a read-only directory: the run itself is saved
            print(f"train_digits.py: could not write the plot {plot}: {e}", file=sys.stderr)
    if args.save_params:
        np.savez(args.save_params, **flat_arrays(model, optimizer))
    if stop < args.steps:
        print(f"stopped after step {stop}; run again with the same --ckpt-dir to resume")
        return
    if history["step"]:
        print(
            f"step {history['step'][-1]}: loss={history['loss'][-1]:.4f} "
            f"lr={history['lr'][-1]:.3g}"  # e.g. lr=2.74e-08 at the end of the cosine
        )
    print(f"test_accuracy={float(accuracy(model, x_test_j, y_test_j)):.4f}")


if __name__ == "__main__":
    main()
