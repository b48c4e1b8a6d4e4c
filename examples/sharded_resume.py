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

The simulated CPU devices come from ``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
which must be set before jax starts its CPU backend: this file sets it at the
top, before ``import jax``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices to train on")
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--save-at", type=int, default=30, help="step of the checkpoint to resume from")
parser.add_argument("--resume-on", default="8,2,1", help="device counts to resume on, in turn")
parser.add_argument("--ckpt-dir", default=None, help="default: a temporary directory")
parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # child process mode
ARGS = parser.parse_args()

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import nnx_momentum as nm  # noqa: E402


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


def train(start: int, stop: int, ckpt: nm.Checkpointer | None = None) -> list[float]:
    """Builds model and optimizer on this process's devices, restores or saves, trains."""
    auto = (jax.sharding.AxisType.Auto,)
    mesh = jax.make_mesh((jax.device_count(),), ("model",), axis_types=auto)
    with jax.set_mesh(mesh):
        model = MLP(nnx.Rngs(0))
        schedule = nm.WarmupCosineSchedule(0.1, warmup_steps=10, total_steps=ARGS.steps)
        optimizer = nm.MomentumOptimizer(model, lr=schedule, momentum=0.9, weight_decay=1e-4)
        if start:
            assert ckpt.restore(model, optimizer, step=start) == start
        step_fn = nm.make_train_step(loss_fn, model, optimizer)
        losses = []
        for step in range(start, stop):
            losses.append(float(step_fn(*batch(step))))
            optimizer.lr.step()
            if ckpt is not None and not start and step + 1 == ARGS.save_at:
                ckpt.save(step + 1, model, optimizer)
        kernel = model.up.kernel[...]
        print(
            f"  up.kernel {kernel.shape} is split over {len(kernel.sharding.device_set)} "
            f"device(s): {kernel.sharding.spec}"
        )
    return losses


if ARGS.resume:  # a fresh process: restore the checkpoint on ARGS.devices devices, finish the run
    with nm.Checkpointer(ARGS.ckpt_dir) as ckpt:
        losses = train(ARGS.save_at, ARGS.steps, ckpt)
    print(json.dumps(losses))
    sys.exit()

directory = ARGS.ckpt_dir or tempfile.mkdtemp(prefix="sharded_resume_")
print(
    f"training {ARGS.steps} steps on {jax.device_count()} devices, checkpoint at step "
    f"{ARGS.save_at} in {directory}"
)
with nm.Checkpointer(directory) as ckpt:
    reference = train(0, ARGS.steps, ckpt)
for step in range(0, ARGS.steps, 10):
    print(f"  step {step:4d}  loss {reference[step]:.6f}")
print(f"  final loss {reference[-1]:.6f}")

for devices in map(int, ARGS.resume_on.split(",")):
    flags = f"--resume --devices {devices} --steps {ARGS.steps} --save-at {ARGS.save_at}".split()
    cmd = [sys.executable, __file__, *flags, "--ckpt-dir", directory]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    *child_lines, last = out.splitlines()
    resumed = json.loads(last)
    print(f"resumed at step {ARGS.save_at} in a new process on {devices} device(s)")
    print(*child_lines, sep="\n")
    want = np.array(reference[ARGS.save_at :])
    diff = np.max(np.abs(np.array(resumed) - want) / np.abs(want))
    same = "bit for bit" if diff == 0 else f"max relative difference {diff:.1e}"
    print(f"  final loss {resumed[-1]:.6f}: matches the uninterrupted run {same}")
    assert diff < 1e-4, f"resumed run on {devices} devices diverged: {diff}"
if not ARGS.ckpt_dir:
    shutil.rmtree(directory)
