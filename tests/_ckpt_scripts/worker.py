"""Subprocess worker for tests/test_checkpointer.py.

Usage: worker.py MODE DIR [ARGS...]; XLA_FLAGS is set by the parent before jax loads.

Modes:
  train FACE STEPS SAVE_AT OUT   train STEPS steps, save at SAVE_AT, write final arrays to OUT.npz
  sharded STEPS SAVE_AT OUT      sharded model on all devices: train STEPS, save at SAVE_AT
  resume_sharded STEPS OUT       restore on this process's devices, train to STEPS, write OUT.npz
  kill_saves                     save big checkpoints 1, 2, ... forever (the parent kills us)
  exit_without_close             one async big save, then return without close()
  sigterm                        make_train_step forever, save_on_sigterm (parent sends SIGTERM)
  full_disk HOW                   max_to_keep=1: save step 1, then limit file sizes to 1 MB
                                 (RLIMIT_FSIZE, a real EFBIG on write) and save step 2; HOW
                                 ('sync', 'async-wait', 'async-steps') says which call must
                                 report the failure; print what the instance sees (JSON)
  transient                      files are limited to 32 MB; async saves 1..5, step 3 carrying
                                 a 40 MB `extra` (its JSON item fails with EFBIG); print what
                                 each save returned or raised and the steps (JSON)
  fail_exit FAULT END            save step 1; FAULT ('rlimit': files limited to 1 MB,
                                 'replaced': the directory replaced by a regular file); save 2;
                                 END 'close' (error caught) or 'return' (no close); prints
                                 FAULT_AT <time.time()> before the save
  lost_bucket PID HOW            save_timeout_secs=5 on gs://bucket/lost: save 1, save 2 and
                                 kill -9 the GCS emulator PID at once; HOW 'wait'
                                 (wait_until_finished, error caught) or 'return'
  scored START LOSS...           best_n=2 by 'loss' (max_to_keep=1): save steps START, START+1,
                                 ... with these losses, then print the steps on disk (JSON)
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import nnx_momentum as nm  # noqa: E402
from nnx_momentum.checkpoint import Checkpointer  # noqa: E402


def main(mode: str, directory: str, *args: str) -> None:
    if mode == "train":
        face, steps, save_at, out = args[0], int(args[1]), int(args[2]), args[3]
        model = common.Net()
        opt = common.make_optimizer(face, model)
        with Checkpointer(directory) as ckpt:
            for i in range(steps):
                common.train_step(face, model, opt, i)
                if i + 1 == save_at:
                    ckpt.save(save_at, model, opt, extra={"next_batch": save_at})
        np.savez(out, **common.flat_arrays(model, opt))

    elif mode == "sharded":
        steps, save_at, out = int(args[0]), int(args[1]), args[2]
        with jax.set_mesh(common.make_mesh()):
            model = common.ShardedNet()
            opt = nm.MomentumOptimizer(
                model, lr=nm.StepLR(0.1, step_size=2, gamma=0.5), **common.HYPER
            )
            assert len(model.a.kernel[...].sharding.device_set) == len(jax.devices()) == 8
            with Checkpointer(directory) as ckpt:
                for i in range(steps):
                    common.sharded_step(model, opt, i)
                    if i + 1 == save_at:
                        ckpt.save(save_at, model, opt)
        np.savez(out, **common.flat_arrays(model, opt))

    elif mode == "resume_sharded":
        steps, out = int(args[0]), args[1]
        with jax.set_mesh(common.make_mesh()):
            model = common.ShardedNet(seed=5)
            opt = nm.MomentumOptimizer(
                model, lr=nm.StepLR(0.1, step_size=2, gamma=0.5), **common.HYPER
            )
            before = {
                k: v.get_value().sharding
                for k, v in nnx.to_flat_state(nnx.state((model, opt.state_tree())))
            }
            with Checkpointer(directory) as ckpt:
                start = ckpt.restore(model, opt)
            after = {
                k: v.get_value().sharding
                for k, v in nnx.to_flat_state(nnx.state((model, opt.state_tree())))
            }
            same = all(after[k] == before[k] for k in before)
            n_dev = len(model.a.kernel[...].sharding.device_set)
            for i in range(start, steps):
                common.sharded_step(model, opt, i)
        np.savez(out, **common.flat_arrays(model, opt))
        print(
            json.dumps(
                {
                    "start": start,
                    "same_shardings": same,
                    "kernel_devices": n_dev,
                    "devices": len(jax.devices()),
                }
            )
        )

    elif mode == "kill_saves":
        model = common.big_model()
        opt = nm.MomentumOptimizer(model, lr=0.1)
        ckpt = Checkpointer(directory, max_to_keep=2)
        step = 0
        while True:
            step += 1
            common.fill(model, opt, float(step))
            ckpt.save(step, model, opt, extra={"step": step})
            print(f"SAVING {step}", flush=True)

    elif mode == "exit_without_close":
        model = common.big_model()
        opt = nm.MomentumOptimizer(model, lr=0.1)
        common.fill(model, opt, 3.0)
        ckpt = Checkpointer(directory)
        ckpt.save(3, model, opt, extra={"step": 3})
        print("RETURNING", flush=True)  # no close(): the atexit hook must wait

    elif mode == "sigterm":
        # A donated make_train_step loop with no signal masking: SIGTERM may land
        # while a step writes the model back; the final save must still be whole.
        model = nnx.Linear(256, 256, rngs=nnx.Rngs(0))
        opt = nm.MomentumOptimizer(model, lr=0.01)
        train_step = nm.make_train_step(lambda m, x: jax.numpy.mean(m(x) ** 2), model, opt)
        x = jax.numpy.ones((64, 256))
        ckpt = Checkpointer(directory, save_interval_steps=1000)
        ckpt.save_on_sigterm()
        step = 0
        while True:
            train_step(x)
            step += 1
            # Off the interval this is a no-op, until SIGTERM makes it the final save.
            ckpt.save(step, model, opt, extra={"reason": "sigterm"})
            print(f"STEP {step}", flush=True)

    elif mode == "full_disk":
        print(json.dumps(full_disk(directory, args[0])), flush=True)

    elif mode == "transient":
        print(json.dumps(transient(directory)), flush=True)

    elif mode == "fail_exit":
        fail_exit(directory, *args)

    elif mode == "lost_bucket":
        lost_bucket(int(args[0]), args[1])

    elif mode == "scored":
        start, losses = int(args[0]), [float(x) for x in args[1:]]
        model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
        opt = nm.MomentumOptimizer(model, lr=0.1)
        options = dict(best_n=2, best_metric="loss", best_mode="min", max_to_keep=1)
        with Checkpointer(directory, **options) as ckpt:
            for step, loss in enumerate(losses, start=start):
                common.fill(model, opt, float(step))
                ckpt.save(step, model, opt, metrics={"loss": loss})
            print(json.dumps(ckpt.all_steps()))

    else:
        raise SystemExit(f"unknown mode {mode}")


def full_disk(directory: str, how: str) -> dict[str, object]:
    """A save that hits a full disk; what the same instance reports and keeps afterwards."""
    model = common.big_model()
    opt = nm.MomentumOptimizer(model, lr=0.1)
    kernel = jax.random.normal(jax.random.key(0), model.kernel.shape)  # incompressible

    def fill(value: float) -> None:
        common.fill(model, opt, value)
        model.kernel.set_value(kernel + value)

    report: dict[str, object] = {}
    ckpt = Checkpointer(directory, max_to_keep=1, async_save=how != "sync")
    fill(1.0)
    ckpt.save(1, model, opt, extra={"step": 1})
    ckpt.wait_until_finished()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))
    fill(2.0)
    try:
        report["save 2"] = ckpt.save(2, model, opt, extra={"step": 2})
        # the next call that can report it
        if how == "async-wait":
            ckpt.wait_until_finished()
        else:
            report["steps"] = ckpt.all_steps()
            for _ in range(600):  # the failure is reported once the write has failed
                time.sleep(0.05)
                report["steps"] = ckpt.all_steps()
    except RuntimeError as e:
        report["error"] = str(e)
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    report["steps after"] = ckpt.all_steps()
    report["entries"] = sorted(os.listdir(directory))
    fresh = common.big_model()
    fresh_opt = nm.MomentumOptimizer(fresh, lr=0.1)
    report["restored"] = ckpt.restore(fresh, fresh_opt)
    report["kernel ok"] = bool((fresh.kernel[...] == kernel + 1.0).all())
    fill(4.0)
    report["save 4"] = ckpt.save(4, model, opt, extra={"step": 4})
    ckpt.close()
    with Checkpointer(directory) as again:
        report["steps in a new instance"] = again.all_steps()
    report["entries at the end"] = sorted(os.listdir(directory))
    return report


def _limit_file_size(size: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def transient(directory: str) -> dict[str, object]:
    """Step 3 fails to write (its JSON item is too large); what saves 4 and 5 do."""
    _limit_file_size(32 << 20)
    model = common.big_model()
    opt = nm.MomentumOptimizer(model, lr=0.1)
    report: dict[str, object] = {}
    ckpt = Checkpointer(directory)
    for step in range(1, 6):
        common.fill(model, opt, float(step))
        extra = {"blob": "x" * (40 << 20)} if step == 3 else {"step": step}
        try:
            report[f"save {step}"] = ckpt.save(step, model, opt, extra=extra)
        except RuntimeError as e:
            report[f"save {step}"] = str(e)
    ckpt.close()
    with Checkpointer(directory) as again:
        report["steps"] = again.all_steps()
    return report


def fail_exit(directory: str, fault: str, end: str) -> None:
    """A save that fails mid-run; the script then ends (after close(), or without)."""
    model = common.big_model()
    opt = nm.MomentumOptimizer(model, lr=0.1)
    model.kernel.set_value(jax.random.normal(jax.random.key(0), model.kernel.shape))
    ckpt = Checkpointer(directory)
    ckpt.save(1, model, opt)
    ckpt.wait_until_finished()
    print(f"FAULT_AT {time.time()}", flush=True)
    if fault == "rlimit":
        _limit_file_size(1 << 20)
    else:  # the directory goes away under the run (a lost mount): a file in its place
        os.rename(directory, directory + ".moved")
        with open(directory, "w"):
            pass
    ckpt.save(2, model, opt)
    if end == "close":
        try:
            ckpt.close()
        except RuntimeError as e:
            print(f"CAUGHT {e}", flush=True)
    print("RETURNING", flush=True)


def lost_bucket(server_pid: int, how: str) -> None:
    """An async save to a bucket whose server dies (kill -9) at once."""
    model = common.big_model()
    opt = nm.MomentumOptimizer(model, lr=0.1)
    ckpt = Checkpointer("gs://bucket/lost", save_timeout_secs=5)
    ckpt.save(1, model, opt)
    ckpt.wait_until_finished()
    model.kernel.set_value(jax.random.normal(jax.random.key(0), model.kernel.shape))
    ckpt.save(2, model, opt)
    os.kill(server_pid, signal.SIGKILL)
    print(f"KILLED {time.time()}", flush=True)
    if how == "wait":
        t0 = time.monotonic()
        try:
            ckpt.wait_until_finished()
            print("WAITED", flush=True)
        except RuntimeError as e:
            print(f"RAISED after {time.monotonic() - t0:.1f} s: {e}", flush=True)
    print("RETURNING", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
