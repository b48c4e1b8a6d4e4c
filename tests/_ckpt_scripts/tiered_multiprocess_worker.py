"""Two checkpoint tiers on a 2-process job joined with ``jax.distributed``.

What it checks is README.md's "Two checkpoint tiers" ("Multi-host"): each process
writes its own local tier (``LOCAL/process_<i>``), the persistent tier is one
checkpoint of both processes, and both processes restore the same step.

Run by ``tests/test_checkpoint_tiered_multiprocess.py``; the helpers (model sharded
over the global 8-device mesh, 4 CPU devices per process) are those of
``multiprocess_worker.py``. By hand, from the repository root::

    export PYTHONPATH=$PWD W=tests/_ckpt_scripts/tiered_multiprocess_worker.py
    D=$(mktemp -d); A="$D/local $D/persistent $D/expected"
    python $W train $A 12345 0 & python $W train $A 12345 1; wait
    python $W restore $A 12346 0 3 local & python $W restore $A 12346 1 3 local; wait
    rm -r $D/local/process_1   # process 1 is on a new VM
    python $W restore $A 12347 0 2 persistent & python $W restore $A 12347 1 2 persistent

Modes (each process prints ``OK <mode> process <i>`` and exits 0 on success):
  train LOCAL PERSISTENT EXPECTED PORT PID
      3 training steps, ``save`` after each: local tier every step (2 kept),
      persistent every 2nd; process 0 writes each step's arrays, gathered, to
      EXPECTED.<step>.npz.
  restore LOCAL PERSISTENT EXPECTED PORT PID STEP TIER
      new processes, fresh objects (another seed): ``tier_of()`` must be TIER, and
      ``restore`` must return STEP with exactly EXPECTED.<STEP>.npz's values and
      the live shardings unchanged.
  single DIR EXPECTED STEP
      one ordinary process, 1 device: ``nm.Checkpointer(DIR)`` on one process's
      local tier restores STEP with exactly EXPECTED.<STEP>.npz's values (each
      array was saved whole).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    _devices = 1 if sys.argv[1:2] == ["single"] else 4
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_devices}"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

STEPS = 3


def single(directory: str, expected: str, step: str) -> None:
    import jax  # noqa: PLC0415
    import multiprocess_worker as mw  # noqa: PLC0415

    mw._imports()
    assert jax.process_count() == 1 and len(jax.devices()) == 1, jax.devices()
    wanted = dict(np.load(f"{expected}.{step}.npz"))
    with jax.set_mesh(mw.common.make_mesh()):
        model, opt = mw._build(seed=5)
        with mw.Checkpointer(directory) as ckpt:
            assert ckpt.restore(model, opt) == int(step), ckpt.all_steps()
        mw._assert_equal(mw._gathered(model, opt), wanted, f"{directory} on 1 device")
    print("OK single", flush=True)


def main(mode: str, local: str, persistent: str, expected: str, port: str, pid: str, *rest: str):
    import jax  # noqa: PLC0415
    import multiprocess_worker as mw  # noqa: PLC0415

    index = mw._initialize(port, pid)
    mw._imports()
    nm = mw.nm

    def tiers():
        return nm.TieredCheckpointer(
            local,
            persistent,
            local_options=nm.CheckpointOptions(max_to_keep=2),
            persistent_options=nm.CheckpointOptions(save_interval_steps=2),
        )

    with jax.set_mesh(mw.common.make_mesh()):  # 8 devices over both processes
        if mode == "train":
            model, opt = mw._build(seed=0)
            assert not model.a.kernel[...].is_fully_addressable
            train = nm.make_train_step(mw._loss, model, opt)
            with tiers() as ckpt:
                assert ckpt.local.directory == os.path.join(local, f"process_{index}")
                for step in range(1, STEPS + 1):
                    train(mw._batch(step))
                    opt.lr.step()
                    saved = mw._gathered(model, opt)  # a collective: both processes
                    if index == 0:
                        np.savez(f"{expected}.{step}.npz", **saved)
                    ckpt.save(step, model, opt, extra={"next_batch": step})
                ckpt.wait_until_finished()
                assert ckpt.local.all_steps() == [2, 3], ckpt.local.all_steps()
                assert ckpt.persistent.all_steps() == [2], ckpt.persistent.all_steps()
                assert ckpt.tier_of() == "local"
        elif mode == "restore":
            want_step, want_tier = int(rest[0]), rest[1]
            model, opt = mw._build(seed=5)
            wanted = dict(np.load(f"{expected}.{want_step}.npz"))
            fresh = mw._gathered(model, opt)
            assert any(not np.array_equal(fresh[k], wanted[k]) for k in wanted)
            before = mw._shardings(model, opt)
            with tiers() as ckpt:
                assert ckpt.tier_of() == want_tier, (ckpt.tier_of(), ckpt.local.all_steps())
                assert ckpt.latest_step() == want_step, ckpt.all_steps()
                assert ckpt.restore(model, opt) == want_step
                assert ckpt.metadata()["extra"] == {"next_batch": want_step}
            assert mw._shardings(model, opt) == before, "restore changed shardings"
            assert opt.step_count == want_step
            mw._assert_equal(mw._gathered(model, opt), wanted, f"{want_tier} step {want_step}")
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    print(f"OK {mode} process {index}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "single":
        single(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
