"""Tests for nnx_momentum.checkpointer: resume, topology, faults, retention, bad input.

Fault and topology tests use real subprocesses (tests/_ckpt_scripts/worker.py);
XLA_FLAGS is set for each child before it imports jax.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nnx_momentum as nm
from nnx_momentum.checkpoint import Checkpointer, CheckpointOptions

SCRIPTS = Path(__file__).parent / "_ckpt_scripts"
WORKER = SCRIPTS / "worker.py"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))

import common  # noqa: E402

TIMEOUT = 180


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _popen(mode: str, directory: Path, *args, devices: int = 1, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(directory), *map(str, args)],
        env=_env(devices),
        text=True,
        **kwargs,
    )


def _run_all(*procs: subprocess.Popen) -> list[str]:
    """Waits for workers started with stdout/stderr pipes; fails with their output."""
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, f"worker failed ({p.returncode}):\n{out}\n{err}"
        outs.append(out)
    return outs


def _start(mode, directory, *args, devices=1):
    return _popen(
        mode, directory, *args, devices=devices, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _small():
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    return model, nm.MomentumOptimizer(
        model, lr=nm.StepLR(0.1, step_size=2), momentum=0.9, grad_clip_norm=0.5
    )


def _arrays(model, optimizer):
    return {k: v.copy() for k, v in common.flat_arrays(model, optimizer).items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------------------------------
# resume equivalence (bit-exact), both faces and cross-face
# ---------------------------------------------------------------------------------------
STEPS, SAVE_AT = 6, 3


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Starts the slow straight-run workers at once, so they overlap."""
    root = tmp_path_factory.mktemp("workers")
    procs = {
        face: _start("train", root / face, face, STEPS, SAVE_AT, root / f"{face}.npz")
        for face in ("opt", "bt")
    }
    procs["sharded"] = _start(
        "sharded", root / "sharded", STEPS, SAVE_AT, root / "sharded.npz", devices=8
    )
    yield root, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def trained(workers):
    """Per face: a worker trained STEPS steps straight, saving at SAVE_AT."""
    root, procs = workers
    _run_all(procs["opt"], procs["bt"])
    return {face: (root / face, dict(np.load(root / f"{face}.npz"))) for face in ("opt", "bt")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "saved_face,resumed_face", [("opt", "opt"), ("bt", "bt"), ("opt", "bt"), ("bt", "opt")]
)
def test_resume_is_bit_exact(trained, saved_face, resumed_face):
    directory, straight = trained[saved_face]
    model = common.Net(seed=9)  # other weights and RNG keys: restore must overwrite them all
    opt = common.make_optimizer(resumed_face, model)
    with Checkpointer(directory) as ckpt:
        assert ckpt.all_steps() == [SAVE_AT]
        assert ckpt.restore(model, opt) == SAVE_AT
        assert ckpt.metadata()["extra"] == {"next_batch": SAVE_AT}
    assert opt.step_count == SAVE_AT
    assert opt.lr.last_epoch[...] == SAVE_AT
    for i in range(SAVE_AT, STEPS):
        common.train_step(resumed_face, model, opt, i)
    _assert_same(common.flat_arrays(model, opt), straight)


@pytest.mark.slow
def test_both_faces_have_the_same_layout(trained):
    _assert_same(trained["opt"][1], trained["bt"][1])


# ---------------------------------------------------------------------------------------
# topology: saved on 8 devices, resumed on 4, 2 and 1
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_fewer_devices(workers, tmp_path):
    root, procs = workers
    _run_all(procs["sharded"])  # 8 devices, kernels sharded over a mesh
    directory = root / "sharded"
    straight = dict(np.load(root / "sharded.npz"))
    procs = {
        n: _start("resume_sharded", directory, STEPS, tmp_path / f"r{n}.npz", devices=n)
        for n in (4, 2, 1)
    }
    outs = _run_all(*procs.values())
    for n, out in zip(procs, outs, strict=True):
        report = json.loads(out.strip().splitlines()[-1])
        assert report == {
            "start": SAVE_AT,
            "same_shardings": True,
            "kernel_devices": n,
            "devices": n,
        }
        resumed = dict(np.load(tmp_path / f"r{n}.npz"))
        assert resumed.keys() == straight.keys()
        for k in straight:
            np.testing.assert_allclose(resumed[k], straight[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_abstract_mesh_target_is_refused(tmp_path):
    model, opt = _small()
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, model, opt)
        mesh = jax.sharding.AbstractMesh((1,), ("x",))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        abstract = nnx.eval_shape(lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
        for _, var in nnx.to_flat_state(nnx.state(abstract)):
            v = var.get_value()
            var.set_value(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding))
        with pytest.raises(ValueError, match="abstract mesh"):
            ckpt.restore(abstract, opt)


# ---------------------------------------------------------------------------------------
# faults: kill -9 mid-save, partial folders, exit without close, SIGTERM
# ---------------------------------------------------------------------------------------
def _restore_big(directory):
    model = common.big_model()
    opt = nm.MomentumOptimizer(model, lr=0.1)
    with Checkpointer(directory) as ckpt:
        step = ckpt.restore(model, opt)
        extra = None if step is None else ckpt.metadata()["extra"]
    return step, extra, model, opt


@pytest.mark.slow
@pytest.mark.parametrize("kill_after,delay", [(1, 0.0), (3, 0.02), (4, 0.15)])
def test_kill_9_mid_save_keeps_last_committed_step(tmp_path, kill_after, delay):
    directory = tmp_path / "ckpt"
    # ``with``: the pipe is closed and the process reaped, whatever happens.
    with _popen("kill_saves", directory, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            for line in proc.stdout:
                if line.strip() == f"SAVING {kill_after}":
                    break
            else:
                pytest.fail("worker ended before saving")
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    step, extra, model, opt = _restore_big(directory)
    # save n starts only once save n-1 is committed, so n-1 must be there.
    assert step is not None or kill_after == 1
    if step is None:
        return
    assert step >= kill_after - 1
    assert extra == {"step": step}
    np.testing.assert_array_equal(np.unique(np.asarray(model.kernel[...])), [float(step)])
    np.testing.assert_array_equal(np.unique(np.asarray(model.bias[...])), [float(step)])
    trace = opt.opt_state.inner_state[3].trace if hasattr(opt.opt_state, "inner_state") else None
    velocity = [
        np.asarray(v.get_value())
        for _, v in nnx.to_flat_state(opt.state_tree()["opt_state"])
        if v.get_value().ndim > 0
    ]
    assert velocity and all(np.all(v == float(step)) for v in velocity), trace
    # training can go on: a new save over a partially written step folder works.
    nxt = step + 1
    common.fill(model, opt, float(nxt))
    with Checkpointer(directory) as ckpt:
        assert ckpt.save(nxt, model, opt, extra={"step": nxt})
    assert _restore_big(directory)[:2] == (nxt, {"step": nxt})


def test_empty_and_partial_step_folders_are_ignored(tmp_path):
    model, opt = _small()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model, opt)
    (tmp_path / "7").mkdir()  # empty step folder
    shutil.copytree(tmp_path / "1", tmp_path / "8")  # complete files, but no commit marker
    for marker in (tmp_path / "8").rglob("commit_success.txt"):
        marker.unlink()
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1]
        assert ckpt.latest_step() == 1
        assert ckpt.restore(model, opt) == 1


@pytest.mark.slow
def test_async_save_is_not_lost_at_exit(tmp_path):
    directory = tmp_path / "ckpt"
    (out,) = _run_all(_start("exit_without_close", directory))
    assert "RETURNING" in out
    step, extra, model, _ = _restore_big(directory)
    assert (step, extra) == (3, {"step": 3})
    assert np.all(np.asarray(model.kernel[...]) == 3.0)


@pytest.mark.slow
def test_sigterm_turns_into_a_final_save(tmp_path):
    directory = tmp_path / "ckpt"
    printed = []
    with _popen("sigterm", directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        for line in proc.stdout:
            printed.append(int(line.split()[1]))
            if printed[-1] == 3:
                proc.send_signal(signal.SIGTERM)
                break
        proc.wait(timeout=TIMEOUT)
        # read() includes the lines the iterator buffered (communicate() would skip them)
        rest, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0, err
    printed += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("STEP")]
    model = nnx.Linear(256, 256, rngs=nnx.Rngs(1))
    opt = nm.MomentumOptimizer(model, lr=0.01)
    with Checkpointer(directory) as ckpt:
        assert len(ckpt.all_steps()) == 1  # the interval skipped every other save
        step = ckpt.restore(model, opt)
        meta = ckpt.metadata()
    assert step in (printed[-1], printed[-1] + 1)
    assert opt.step_count == step  # saved at a step boundary, never mid-update
    assert meta["extra"] == {"reason": "sigterm", "preempted": True}


# ---------------------------------------------------------------------------------------
# retention
# ---------------------------------------------------------------------------------------
def _save_steps(directory, values, **options):
    model, opt = _small()
    with Checkpointer(directory, **options) as ckpt:
        for step, value in enumerate(values, start=1):
            ckpt.save(step, model, opt, metrics={"score": value})
    with Checkpointer(directory) as ckpt:  # what is really on disk
        return ckpt.all_steps()


def test_keep_last_n(tmp_path):
    assert _save_steps(tmp_path, [0] * 5, max_to_keep=2) == [4, 5]


def test_best_n_min_keeps_newest(tmp_path):
    steps = _save_steps(
        tmp_path,
        [5, 1, 4, 0.5, 3, 6],
        best_n=2,
        best_metric="score",
        best_mode="min",
        max_to_keep=1,
    )
    assert steps == [2, 4, 6]


def test_best_n_max_and_last_n(tmp_path):
    steps = _save_steps(
        tmp_path,
        [9, 1, 4, 0.5, 8, 2, 3],
        best_n=2,
        best_metric="score",
        best_mode="max",
        max_to_keep=2,
    )
    assert steps == [1, 5, 6, 7]


def test_save_interval_steps(tmp_path):
    model, opt = _small()
    with Checkpointer(tmp_path, CheckpointOptions(save_interval_steps=3, async_save=False)) as ckpt:
        saved = [ckpt.save(s, model, opt) for s in range(8)]
        assert saved == [True, False, False, True, False, False, True, False]
        assert ckpt.save(7, model, opt, force=True)
        assert ckpt.all_steps() == [0, 3, 6, 7]


def test_bad_options():
    with pytest.raises(ValueError, match="best_metric"):
        CheckpointOptions(best_n=2)
    with pytest.raises(ValueError, match="max_to_keep"):
        CheckpointOptions(max_to_keep=0)
    with pytest.raises(ValueError, match="best_mode"):
        CheckpointOptions(best_mode="lowest")
    for timeout in (0, -1.0, float("nan"), float("inf"), True, "60"):
        with pytest.raises(ValueError, match="save_timeout_secs"):
            CheckpointOptions(save_timeout_secs=timeout)
    assert CheckpointOptions(save_timeout_secs=0.5).save_timeout_secs == 0.5


# ---------------------------------------------------------------------------------------
# bad input: clear errors, live objects unchanged
# ---------------------------------------------------------------------------------------
def test_regular_file_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin.*regular file"):
        Checkpointer(path)


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="holds no orbax checkpoint"):
        Checkpointer(tmp_path)


def test_missing_directory(tmp_path):
    model, opt = _small()
    with Checkpointer(tmp_path / "new") as ckpt:  # create=True: an empty root
        assert ckpt.restore(model, opt) is None
        assert ckpt.metadata() is None
        assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match="absent"):
        Checkpointer(tmp_path / "absent", create=False)


def test_unknown_step(tmp_path):
    model, opt = _small()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, model, opt)
        with pytest.raises(ValueError, match=r"step 5 .*\[2\]"):
            ckpt.restore(model, opt, step=5)
        with pytest.raises(ValueError, match="already exists"):
            ckpt.save(2, model, opt, force=True)
        with pytest.raises(TypeError, match="JSON"):
            ckpt.save(3, model, opt, extra={"f": object()})


def _saved(tmp_path):
    model, opt = _small()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model, opt)
    return tmp_path


def _unchanged(model, opt):
    before = _arrays(model, opt)
    return lambda: _assert_same(_arrays(model, opt), before)


# orbax's aborted read leaves callbacks that land on its closed asyncio loop (third party),
# from TensorStore's threads, just after the read fails
@pytest.mark.filterwarnings(
    r"ignore:(?s)Exception ignored in. None.*RuntimeError. Event loop is closed"
    ":pytest.PytestUnraisableExceptionWarning"
)
def test_corrupted_array_file(tmp_path):
    _saved(tmp_path)
    files = [
        p for p in (tmp_path / "1" / "optimizer").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    assert files
    for p in files:
        p.write_bytes(b"\0garbage" * 64)
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(5))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2), grad_clip_norm=0.5)
    check = _unchanged(model, opt)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match=r"'optimizer' of step 1"):
            ckpt.restore(model, opt)
        # Those callbacks reach pytest from other threads: give them time to do so while
        # this test (and its filter) runs, not after it.
        time.sleep(0.5)
        assert ckpt.metadata(1)["step"] == 1  # the JSON item is still readable
    check()


def test_mismatched_model_shapes(tmp_path):
    _saved(tmp_path)
    model = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2), grad_clip_norm=0.5)
    check = _unchanged(model, opt)
    with (
        Checkpointer(tmp_path) as ckpt,
        pytest.raises(ValueError, match=r"shape +model kernel: \(3, 4\) -> \(3, 5\)"),
    ):
        ckpt.restore(model, opt)
    check()


def test_mismatched_model_tree(tmp_path):
    _saved(tmp_path)
    model = nnx.Linear(3, 4, use_bias=False, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2), grad_clip_norm=0.5)
    check = _unchanged(model, opt)
    with (
        Checkpointer(tmp_path) as ckpt,
        pytest.raises(ValueError, match="tree +model bias: \\(4,\\) float32 -> \\(absent\\)"),
    ):
        ckpt.restore(model, opt)
    check()


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(momentum=0.8, grad_clip_norm=0.5), "momentum"),
        (dict(momentum=0.9, grad_clip_norm=1.0), "grad_clip_norm"),
        (dict(momentum=0.9), "grad_clip_norm"),
    ],
)
def test_mismatched_optimizer_hyperparams(tmp_path, kwargs, field):
    _saved(tmp_path)
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(7))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2), **kwargs)
    check = _unchanged(model, opt)
    with Checkpointer(tmp_path) as ckpt, pytest.raises(ValueError, match=f"hyperparams +{field}: "):
        ckpt.restore(model, opt)
    check()


def test_mismatched_optimizer_tree(tmp_path):
    _saved(tmp_path)
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(7))
    opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)  # a plain nnx.Optimizer
    check = _unchanged_plain(model, opt)
    with (
        Checkpointer(tmp_path) as ckpt,
        pytest.raises(ValueError, match=r"(?s)do not match step 1.*tree +optimizer lr/"),
    ):
        ckpt.restore(model, opt)
    check()


def _unchanged_plain(model, opt):
    def arrays():
        return {
            str(k): np.asarray(v.get_value())
            for k, v in nnx.to_flat_state(nnx.state((model, nnx.state(opt, nnx.OptState))))
        }

    before = arrays()
    return lambda: _assert_same(arrays(), before)


# ---------------------------------------------------------------------------------------
# metadata, non-Param state, plain nnx.Optimizer
# ---------------------------------------------------------------------------------------
def test_metadata_without_reading_arrays(tmp_path):
    model, opt = _small()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(
            4,
            model,
            opt,
            metrics={"loss": jnp.float32(0.25)},
            extra={"loader": {"epoch": 2, "index": [1, 2]}},
        )
    for p in (tmp_path / "4").rglob("*"):  # destroy every array file
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"")
    with Checkpointer(tmp_path) as ckpt:
        meta = ckpt.metadata()
    assert meta["step"] == 4
    assert meta["extra"] == {"loader": {"epoch": 2, "index": [1, 2]}}
    assert meta["metrics"] == {"loss": 0.25}
    hp = meta["hyperparams"]
    assert hp["momentum"] == 0.9 and hp["grad_clip_norm"] == 0.5
    assert hp["lr"]["name"] == "StepLR"
    assert {"jax", "flax", "orbax-checkpoint", "nnx_momentum"} <= set(meta["versions"])


def test_batchnorm_dropout_rngs_round_trip(tmp_path):
    model = common.Net(seed=0)
    opt = common.make_optimizer("opt", model)
    for i in range(2):
        common.train_step("opt", model, opt, i)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, model, opt)
    other = common.Net(seed=3)
    other_opt = common.make_optimizer("opt", other)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore(other, other_opt) == 2
    _assert_same(common.flat_arrays(other, other_opt), common.flat_arrays(model, opt))
    key = other.drop.rngs.key.get_value() if hasattr(other.drop, "rngs") else None
    assert key is None or jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    x = jnp.ones((4, 8))
    np.testing.assert_array_equal(other(x), model(x))  # same dropout masks from here on


def test_plain_nnx_optimizer(tmp_path):
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(model)
    opt.update(model, grads)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.save(1, model, opt)
        model2 = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
        opt2 = nnx.Optimizer(model2, nm.momentum(0.1), wrt=nnx.Param)
        assert ckpt.restore(model2, opt2) == 1
    np.testing.assert_array_equal(model2.kernel[...], model.kernel[...])
    assert int(opt2.step[...]) == 1


def test_hyperparams_compared_to_float32_and_without_initial_epoch(tmp_path):
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2), momentum=0.9)
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, model, opt)
        fresh = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
        same = nm.MomentumOptimizer(
            fresh,
            lr=nm.StepLR(np.float32(0.1), step_size=2, last_epoch=5),
            momentum=np.float32(0.9),
        )
        assert ckpt.restore(fresh, same) == 1
        assert int(same.lr.last_epoch[...]) == 0  # the saved schedule position
        other = nm.MomentumOptimizer(fresh, lr=nm.StepLR(0.1, step_size=3), momentum=0.9)
        with pytest.raises(ValueError, match="step_size"):
            ckpt.restore(fresh, other)


def test_python_scalar_variable_round_trip(tmp_path):
    class Counter(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
            self.count = nnx.BatchStat(3)  # a Python int, not an array

    model = Counter()
    opt = nm.MomentumOptimizer(model, lr=0.1)
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, model, opt)
        fresh = Counter()
        fresh.count = nnx.BatchStat(0)
        assert ckpt.restore(fresh, nm.MomentumOptimizer(fresh, lr=0.1)) == 1
    assert int(np.asarray(fresh.count.get_value())) == 3


def test_an_older_step_is_refused_naming_both_steps(tmp_path):
    """README.md ("Atomic and async"): steps must increase; only off-interval saves skip."""
    model, opt = _small()
    with Checkpointer(tmp_path, save_interval_steps=10) as ckpt:
        assert ckpt.save(3000, model, opt) is True
        with pytest.raises(ValueError, match=r"step 30 is older than the latest step 3000"):
            ckpt.save(30, model, opt)
        with pytest.raises(ValueError, match=r"step 3000 already exists as the latest step"):
            ckpt.save(3000, model, opt, force=True)
        assert ckpt.save(3001, model, opt) is False  # newer, off the interval: skipped
    with Checkpointer(tmp_path) as ckpt:  # a new run in the same directory
        with pytest.raises(ValueError, match=r"step 30 is older than the latest step 3000"):
            ckpt.save(30, model, opt)
        assert ckpt.all_steps() == [3000]
