"""Train on 8 simulated devices, checkpoint, and resume in a new process on fewer devices.

The long-TPU-run story in miniature. An MLP whose weights are sharded over a mesh
of 8 devices trains with a warmup-cosine schedule and is checkpointed half-way;
then the job "is preempted" and comes back on a smaller slice: each resume is a
fresh process with its own device count (8, 2 and 1 by default) that restores
the checkpoint onto its own mesh -- ``nm.Checkpointer.restore`` reads every
array straight into the sharding the live model has now -- and finishes the run.
The resumed losses match the uninterrupted run: bit for bit on the same 8
devices, and to float32 rounding on fewer (a matmul split over fewer devices
sums in another order).

    python examples/sharded_resume.py
    python examples/sharded_resume.py --steps 200 --save-at 120 --resume-on 4,1

The simulated CPU devices come from jax's ``jax_num_cpu_devices`` option, which
must be set before jax starts its CPU backend: ``main()`` sets it first thing,
before any array exists (importing jax starts no backend). On a real multi-device
machine, drop that line and build the mesh over ``jax.devices()``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import nnx_momentum as nm


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help``: the module docstring as written, and every option's default."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices to train on")
    p.add_argument("--steps", type=int, default=60, help="run length = schedule length")
    p.add_argument("--save-at", type=int, default=30, help="step of the checkpoint to resume from")
    p.add_argument("--resume-on", default="8,2,1", help="device counts to resume on, in turn")
    p.add_argument("--ckpt-dir", default=None, help="checkpoint directory (None: a temporary one)")
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # child process mode
    return p.parse_args()


class MLP(nnx.Module):
    """Hidden units split over the mesh axis "model" (tensor parallel)."""

    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.up = nnx.Linear(
            16,
            64,
            kernel_init=nnx.with_partitioning(init, (None, "model")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("model",)),
            rngs=rngs,
        )
        self.down = nnx.Linear(
            64, 1, kernel_init=nnx.with_partitioning(init, ("model", None)), rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jnp.tanh(self.up(x)))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` as a pure function of the step: a resumed run sees the same data."""
    x = np.random.default_rng([0, step]).normal(size=(128, 16)).astype(np.float32)
    return x, np.sin(x.sum(axis=1, keepdims=True))


def train(
    args: argparse.Namespace, start: int, stop: int, ckpt: nm.Checkpointer | None = None
) -> list[float]:
    """Builds model and optimizer on this process's devices, restores or saves, trains."""
    auto = (jax.sharding.AxisType.Auto,)
    mesh = jax.make_mesh((jax.device_count(),), ("model",), axis_types=auto)
    with jax.set_mesh(mesh):
        model = MLP(nnx.Rngs(0))
        schedule = nm.WarmupCosineSchedule(0.1, warmup_steps=10, total_steps=args.steps)
        optimizer = nm.MomentumOptimizer(model, lr=schedule, momentum=0.9, weight_decay=1e-4)
        if start:
            assert ckpt is not None and ckpt.restore(model, optimizer, step=start) == start
        step_fn = nm.make_train_step(loss_fn, model, optimizer)
        losses = []
        for step in range(start, stop):
            losses.append(float(step_fn(*batch(step))))
            optimizer.lr.step()
            if ckpt is not None and not start and step + 1 == args.save_at:
                ckpt.save(step + 1, model, optimizer)
        kernel = model.up.kernel[...]
        print(
            f"  up.kernel {kernel.shape} is split over {len(kernel.sharding.device_set)} "
            f"device(s): {kernel.sharding.spec}"
        )
    return losses


def open_checkpointer(directory: str) -> nm.Checkpointer:
    """``nm.Checkpointer(directory)``; a directory it cannot use ends the run with one line."""
    try:
        return nm.Checkpointer(directory)
    except (ImportError, OSError, ValueError) as e:  # gcsfs, credentials, a read-only dir
        sys.exit(f"sharded_resume.py: {e}")


def resume_here(args: argparse.Namespace) -> None:
    """The child process: restore the checkpoint on ``args.devices`` devices, finish the run."""
    with open_checkpointer(args.ckpt_dir) as ckpt:
        losses = train(args, args.save_at, args.steps, ckpt)
    print(json.dumps(losses))


def resume_command(args: argparse.Namespace, directory: str) -> str:
    """The command line that resumes from the checkpoint in ``directory`` on one device."""
    flags = f"--resume --devices 1 --steps {args.steps} --save-at {args.save_at}"
    return f"python {sys.argv[0]} {flags} --ckpt-dir {directory}"


def main() -> None:
    args = parse_args()
    # Before anything touches a device: simulated CPU devices, as many as asked for.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.resume:
        try:
            resume_here(args)
        except KeyboardInterrupt:
            sys.exit(130)  # Ctrl-C reaches the parent too: it says what to do
        return

    directory = args.ckpt_dir or tempfile.mkdtemp(prefix="sharded_resume_")
    ckpt = open_checkpointer(directory)
    try:
        compare(args, directory, ckpt)
    except KeyboardInterrupt:
        if args.save_at in ckpt.all_steps():  # ckpt is closed by now: this lists what is on disk
            print(
                "sharded_resume.py: interrupted; to resume from the checkpoint of step "
                f"{args.save_at}: {resume_command(args, directory)}",
                file=sys.stderr,
            )
        else:
            if not args.ckpt_dir:
                shutil.rmtree(directory, ignore_errors=True)
            print(
                f"sharded_resume.py: interrupted before the checkpoint of step {args.save_at}; "
                "run the same command again",
                file=sys.stderr,
            )
        sys.exit(130)
    if not args.ckpt_dir:
        shutil.rmtree(directory)


def compare(args: argparse.Namespace, directory: str, ckpt: nm.Checkpointer) -> None:
    """Trains straight through (checkpointing once), then resumes in new processes."""
    print(
        f"training {args.steps} steps on {jax.device_count()} devices, checkpoint at step "
        f"{args.save_at} in {directory}"
    )
    with ckpt:
        reference = train(args, 0, args.steps, ckpt)
    for step in range(0, args.steps, 10):
        print(f"  step {step:4d}  loss {reference[step]:.6f}")
    print(f"  final loss {reference[-1]:.6f}")

    for devices in map(int, args.resume_on.split(",")):
        flags = f"--resume --devices {devices} --steps {args.steps} --save-at {args.save_at}"
        cmd = [sys.executable, __file__, *flags.split(), "--ckpt-dir", directory]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        *child_lines, last = out.splitlines()
        resumed = json.loads(last)
        print(f"resumed at step {args.save_at} in a new process on {devices} device(s)")
        print(*child_lines, sep="\n")
        want = np.array(reference[args.save_at :])
        diff = np.max(np.abs(np.array(resumed) - want) / np.abs(want))
        same = "bit for bit" if diff == 0 else f"max relative difference {diff:.1e}"
        print(f"  final loss {resumed[-1]:.6f}: matches the uninterrupted run {same}")
        if diff >= 1e-4:
            sys.exit(f"the resumed run on {devices} device(s) diverged: {diff:.1e}")


if __name__ == "__main__":
    main()
