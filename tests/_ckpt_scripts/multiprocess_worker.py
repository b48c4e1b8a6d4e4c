"""Multi-process checkpoint worker: 2 processes joined with ``jax.distributed``.

What it checks is README.md's "Checkpoint and resume" ("Any devices") across processes.

Run by ``tests/test_checkpointer_multiprocess.py``. Each mode sets ``JAX_PLATFORMS=cpu``
and ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` itself, before jax is
imported, so it can also be run by hand (from the repository root)::

    export PYTHONPATH=$PWD
    D=$(mktemp -d); W=tests/_ckpt_scripts/multiprocess_worker.py; A="$D/ckpt $D/expected.npz"
    # phase 1: 2 processes x 4 CPU devices; train 2 steps, save step 2, restore in-process
    python $W save $A 12345 0 & python $W save $A 12345 1; wait
    # phase 2: 2 fresh processes restore the checkpoint
    python $W restore $A 12346 0 & python $W restore $A 12346 1; wait
    # phase 3: one ordinary process with 1 device restores it (cross-topology)
    python $W single $A

(any free port on 127.0.0.1 will do for 12345/12346).

Each process prints ``OK <mode> process <i>`` (``OK single``) and exits 0 on success.

Modes:
  save DIR EXPECTED PORT PID     2 processes (PID 0 and 1, coordinator 127.0.0.1:PORT):
                                 a model sharded over the global 8-device mesh and an
                                 nm.MomentumOptimizer take 2 steps (nm.make_train_step),
                                 save step 2 with nm.Checkpointer(DIR); process 0 writes
                                 every array, gathered to the host, to EXPECTED (.npz).
                                 Then fresh objects (other seed) restore step 2 in the same
                                 processes: values must equal EXPECTED exactly, and the
                                 live shardings must be kept; then one more step.
  restore DIR EXPECTED PORT PID  2 new processes restore into fresh objects; same checks.
  single DIR EXPECTED            1 process, 1 device, no jax.distributed: restore the
                                 2-process checkpoint; values must equal EXPECTED exactly.
  preempt DIR EXPECTED PORT PID  2 processes train forever, calling ckpt.save every step
                                 (save_interval_steps=1000, save_on_sigterm()) and writing
                                 each step to DIR.progress.PID; the parent sends SIGTERM to
                                 one of them. Both must make the same final save and exit 0,
                                 printing ``FINAL <step>``; process 0 writes that step's
                                 arrays to EXPECTED.
  final DIR EXPECTED             1 process, 1 device: the directory holds exactly the final
                                 step; restore it and compare with EXPECTED; print
                                 ``OK final <step>``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Before jax is imported: CPU only, 4 devices per process (1 for the single-process
    # mode). Only when run as a script: pytest's --doctest-modules imports this file too,
    # and must not get its environment changed.
    _devices = 1 if sys.argv[1:2] in (["single"], ["final"]) else 4
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_devices}"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 4
STEPS = 2
TIMEOUT_S = 60  # jax.distributed start-up and orbax's cross-process barriers


def _initialize(port: str, pid: str) -> int:
    """Joins the 2-process run on the loopback address; returns this process's id."""
    # gloo is the default CPU collectives implementation in jax 0.10 and 0.12; set it
    # anyway, so a changed default cannot make cross-process collectives fail.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{int(port)}",
        num_processes=NUM_PROCESSES,
        process_id=int(pid),
        initialization_timeout=TIMEOUT_S,
    )
    assert jax.process_count() == NUM_PROCESSES, jax.process_count()
    assert len(jax.local_devices()) == DEVICES_PER_PROCESS, jax.local_devices()
    assert len(jax.devices()) == NUM_PROCESSES * DEVICES_PER_PROCESS, jax.devices()
    return jax.process_index()


# Imported after jax.distributed.initialize in the multi-process modes (nothing in them
# touches a backend at import time, but keep the order the jax docs ask for).
def _imports():
    global common, nm, Checkpointer
    import common  # noqa: PLC0415

    import nnx_momentum as nm  # noqa: PLC0415
    from nnx_momentum.checkpoint import Checkpointer  # noqa: PLC0415


def _build(seed: int):
    """common.ShardedNet (kernels sharded over 'model') and its MomentumOptimizer."""
    model = common.ShardedNet(seed=seed)
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2, gamma=0.5), **common.HYPER)
    return model, opt


def _leaves(model, opt) -> dict[str, jax.Array]:
    out = {}
    for prefix, state in (("model", nnx.state(model)), ("opt", opt.state_tree())):
        for path, var in nnx.to_flat_state(state):
            v = var.get_value()
            if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
                v = jax.random.key_data(v)
            out["/".join([prefix, *map(str, path)])] = v
    return out


def _gathered(model, opt) -> dict[str, np.ndarray]:
    """Every array as a full host copy (a cross-process all-gather where it is global)."""
    out = {}
    for key, v in _leaves(model, opt).items():
        if isinstance(v, jax.Array) and not v.is_fully_addressable:
            v = multihost_utils.process_allgather(v, tiled=True)
        out[key] = np.asarray(v)
    return out


def _shardings(model, opt) -> dict[str, object]:
    return {k: v.sharding for k, v in _leaves(model, opt).items()}


def _assert_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str) -> None:
    assert got.keys() == expected.keys(), (what, sorted(got.keys() ^ expected.keys()))
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{what}: {key}")


def _restore_and_check(directory: str, expected_path: str, what: str, train: bool = False) -> None:
    """Restores into fresh objects (other seed): exact values, unchanged live shardings."""
    model, opt = _build(seed=5)
    expected = dict(np.load(expected_path))
    fresh = _gathered(model, opt)
    assert any(not np.array_equal(fresh[k], expected[k]) for k in expected), (
        "fresh objects already hold the saved values: the check would prove nothing"
    )
    before = _shardings(model, opt)
    with Checkpointer(directory) as ckpt:
        assert ckpt.all_steps() == [STEPS], ckpt.all_steps()
        assert ckpt.restore(model, opt) == STEPS
        assert ckpt.metadata()["extra"] == {"next_batch": STEPS}
    after = _shardings(model, opt)
    assert after == before, f"{what}: restore changed shardings"
    assert opt.step_count == STEPS and int(opt.lr.last_epoch[...]) == STEPS
    _assert_equal(_gathered(model, opt), expected, what)
    if train:  # training goes on from the restored state (skipped elsewhere: compile time)
        step = nm.make_train_step(_loss, model, opt)
        loss = step(_batch(STEPS))
        assert opt.step_count == STEPS + 1 and bool(jnp.isfinite(loss))


def _loss(model, x):
    return jnp.mean((model(x) - 1.0) ** 2)


def _batch(i: int) -> jax.Array:
    return jax.random.normal(jax.random.fold_in(jax.random.key(7), i), (8, 16))


def _preempt(directory: str, expected_path: str, pid: int) -> None:
    """Train until a (coordinated) preemption makes ``save`` the final save and exit."""
    import time  # noqa: PLC0415

    model, opt = _build(seed=0)
    train = nm.make_train_step(_loss, model, opt)
    ckpt = Checkpointer(directory, save_interval_steps=1000)
    ckpt.save_on_sigterm(exit_code=0)
    step, saved = 0, {}
    try:
        while step < 10_000:
            train(_batch(step))
            opt.lr.step()
            step += 1
            saved = _gathered(model, opt)  # a collective: both processes, every step
            ckpt.save(step, model, opt, extra={"next_batch": step})
            with open(f"{directory}.progress.{pid}", "w") as f:
                f.write(str(step))
            time.sleep(0.05)
    except SystemExit:
        print(f"FINAL {step}", flush=True)
        if pid == 0:
            np.savez(expected_path, **saved)
        raise
    raise SystemExit("no preemption arrived")


def main(mode: str, *args: str) -> None:
    if mode == "final":
        directory, expected_path = args
        _imports()
        with jax.set_mesh(common.make_mesh()):
            model, opt = _build(seed=5)
            with Checkpointer(directory) as ckpt:
                (step,) = ckpt.all_steps()
                assert ckpt.restore(model, opt) == step
                assert ckpt.metadata()["extra"] == {"next_batch": step, "preempted": True}
            assert opt.step_count == step
            _assert_equal(_gathered(model, opt), dict(np.load(expected_path)), "final step")
        print(f"OK final {step}", flush=True)
        return
    if mode == "single":
        directory, expected_path = args
        _imports()
        assert jax.process_count() == 1 and len(jax.devices()) == 1, jax.devices()
        with jax.set_mesh(common.make_mesh()):
            _restore_and_check(directory, expected_path, "single process, 1 device")
        print("OK single", flush=True)
        return

    directory, expected_path, port, pid = args
    pid = _initialize(port, pid)
    _imports()
    mesh = common.make_mesh()  # 8 devices over both processes
    with jax.set_mesh(mesh):
        if mode == "save":
            model, opt = _build(seed=0)
            kernel = model.a.kernel[...]
            assert not kernel.is_fully_addressable and len(kernel.sharding.device_set) == 8
            velocity = [
                v
                for k, v in _leaves(model, opt).items()
                if k.startswith("opt/opt_state/") and k.endswith("/a/kernel")
            ]
            assert velocity and all(v.sharding == kernel.sharding for v in velocity), (
                "the velocity does not have the parameter's sharding"
            )
            step = nm.make_train_step(_loss, model, opt)
            for i in range(STEPS):
                step(_batch(i))
                opt.lr.step()
            saved = _gathered(model, opt)
            if pid == 0:
                np.savez(expected_path, **saved)
            with Checkpointer(directory) as ckpt:
                assert ckpt.save(STEPS, model, opt, extra={"next_batch": STEPS})
            # Process 1 must not read EXPECTED before process 0 has written it.
            multihost_utils.sync_global_devices("expected written")
            _restore_and_check(
                directory, expected_path, f"same processes, process {pid}", train=True
            )
        elif mode == "restore":
            _restore_and_check(directory, expected_path, f"new processes, process {pid}")
        elif mode == "preempt":
            _preempt(directory, expected_path, pid)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    print(f"OK {mode} process {pid}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
