"""``nm.TieredCheckpointer``: a local tier saved often, a persistent tier saved rarely.

README.md, "Two checkpoint tiers": ``save`` writes to the tiers that are due (both with
``force=True``); ``restore``/``metadata``/``latest_step`` see the newest committed step
of either tier, the local one when both hold it; a missing or empty local tier (a new VM)
falls back to the persistent one. The fault tests kill a real training process with
SIGKILL (``tests/_ckpt_scripts/tiered_worker.py``) and resume, bit for bit against an
uninterrupted run, from the local tier, and with the local tier deleted, from the
persistent one -- on a local disk and on ``gs://`` (the GCS emulator of ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import nnx_momentum as nm

SCRIPTS = Path(__file__).parent / "_ckpt_scripts"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))

import common  # noqa: E402
import tiered_worker  # noqa: E402

TIMEOUT = 300


def _filled(value: float):
    """A model and optimizer whose float arrays all hold ``value`` (an independent reference)."""
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
    common.fill(model, opt, value)
    return model, opt


def _value(model) -> float:
    (value,) = np.unique(np.asarray(model.kernel[...]))
    return float(value)


def _tiers(tmp_path, local_every=4, persistent_every=3, **kwargs):
    return nm.TieredCheckpointer(
        tmp_path / "local",
        tmp_path / "persistent",
        local_options=nm.CheckpointOptions(save_interval_steps=local_every, **kwargs),
        persistent_options=nm.CheckpointOptions(save_interval_steps=persistent_every),
    )


def test_each_tier_saves_on_its_own_interval_and_restore_takes_the_newest(tmp_path):
    with _tiers(tmp_path, max_to_keep=1) as ckpt:
        for step in range(1, 7):
            saved = ckpt.save(step, *_filled(float(step)), extra={"step": step})
            assert saved == (step % 4 == 0 or step % 3 == 0), step
        assert ckpt.local.all_steps() == [4]
        assert ckpt.persistent.all_steps() == [3, 6]
        assert ckpt.all_steps() == [3, 4, 6] and ckpt.latest_step() == 6
        # The newest is in the persistent tier only.
        model, opt = _filled(0.0)
        assert ckpt.tier_of() == "persistent" and ckpt.restore(model, opt) == 6
        assert _value(model) == 6.0 and opt.step_count == 0  # filled, never updated
        assert ckpt.metadata()["extra"] == {"step": 6}
        # Now the newest is local (8), and the older local step 4 went by max_to_keep=1.
        assert ckpt.save(8, *_filled(8.0), extra={"step": 8})
        assert ckpt.local.all_steps() == [8] and ckpt.persistent.all_steps() == [3, 6]
        assert ckpt.tier_of() == "local" and ckpt.restore(model, opt) == 8
        assert _value(model) == 8.0 and ckpt.metadata()["extra"] == {"step": 8}
        # An explicit step comes from the tier that holds it.
        assert ckpt.restore(model, opt, step=3) == 3 and _value(model) == 3.0
        assert ckpt.metadata(3)["extra"] == {"step": 3}
        with pytest.raises(ValueError, match=r"step 5 is in neither tier.*\[8\].*\[3, 6\]"):
            ckpt.restore(model, opt, step=5)
        assert _value(model) == 3.0  # untouched


def test_force_saves_to_both_tiers_and_a_step_in_both_is_read_locally(tmp_path):
    with _tiers(tmp_path, local_every=100, persistent_every=100) as ckpt:
        assert not ckpt.save(7, *_filled(7.0))
        assert ckpt.save(7, *_filled(7.0), force=True)
        assert ckpt.local.all_steps() == ckpt.persistent.all_steps() == [7]
        assert ckpt.tier_of(7) == "local"
    # The local copy differs from the persistent one: restore must read the local one.
    shutil.rmtree(tmp_path / "local")
    with nm.Checkpointer(tmp_path / "local") as local:
        local.save(7, *_filled(70.0))
    with _tiers(tmp_path) as ckpt:
        model, opt = _filled(0.0)
        assert ckpt.restore(model, opt) == 7 and _value(model) == 70.0


@pytest.mark.parametrize("gone", ["deleted", "empty"])
def test_a_missing_or_empty_local_tier_falls_back_to_the_persistent_one(tmp_path, gone):
    with _tiers(tmp_path, local_every=1) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, *_filled(float(step)))
    shutil.rmtree(tmp_path / "local")
    if gone == "empty":
        (tmp_path / "local").mkdir()
    with _tiers(tmp_path) as ckpt:  # a new VM
        model, opt = _filled(0.0)
        assert ckpt.latest_step() == 3 and ckpt.tier_of() == "persistent"
        assert ckpt.restore(model, opt) == 3 and _value(model) == 3.0
        # Training goes on; the next local save lands in the new local tier.
        assert ckpt.save(4, *_filled(4.0))
        assert ckpt.local.all_steps() == [4] and ckpt.restore(model, opt) == 4
        assert _value(model) == 4.0


def test_nothing_saved_restores_none(tmp_path):
    with _tiers(tmp_path) as ckpt:
        model, opt = _filled(1.0)
        assert ckpt.restore(model, opt) is None and ckpt.metadata() is None
        assert ckpt.tier_of() is None and ckpt.latest_step() is None
        assert _value(model) == 1.0


def test_bad_arguments_are_refused_and_nothing_is_saved(tmp_path):
    with pytest.raises(ValueError, match=r"two separate directories"):
        nm.TieredCheckpointer(tmp_path / "a", tmp_path / "a")
    with pytest.raises(ValueError, match=r"neither inside the other"):
        nm.TieredCheckpointer(tmp_path / "a", tmp_path / "a" / "drive")
    with pytest.raises(TypeError, match=r"local_options must be a CheckpointOptions"):
        nm.TieredCheckpointer(tmp_path / "a", tmp_path / "b", local_options={"max_to_keep": 2})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with _tiers(tmp_path, local_every=1) as ckpt:
        with pytest.raises(TypeError):
            ckpt.save(1, *_filled(1.0), extra={"bad": object()})
        with pytest.raises(ValueError, match=r"non-negative int"):
            ckpt.save(-3, *_filled(1.0), force=True)
        assert ckpt.all_steps() == []


def test_close_is_idempotent_and_closes_both_tiers(tmp_path):
    ckpt = _tiers(tmp_path, local_every=1, persistent_every=1)
    ckpt.save(1, *_filled(1.0))
    ckpt.close()
    ckpt.close()
    for tier in (ckpt.local, ckpt.persistent):
        with pytest.raises(RuntimeError, match=r"is closed"):
            tier.save(2, *_filled(2.0))
        assert tier.all_steps() == [1]  # committed by close()


# ---------------------------------------------------------------------------------------
# kill -9, then resume from the local tier, and with it deleted from the persistent one
# ---------------------------------------------------------------------------------------
STEPS, KILL_AT = 40, 25


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, **(extra or {}), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _worker(local, persistent, out, pace_s, env, **kwargs) -> subprocess.Popen[str]:
    args = [str(local), str(persistent), str(STEPS), str(out), str(pace_s)]
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / "tiered_worker.py"), *args], env=env, text=True, **kwargs
    )


def _resume_and_finish(local, persistent) -> tuple[int, str | None, dict[str, np.ndarray]]:
    """A new process's resume (here, in this one): restore, train to STEPS; the arrays."""
    model = common.Net(seed=9)  # other weights and RNG keys: restore must overwrite them all
    opt = common.make_optimizer("opt", model)
    with tiered_worker.tiers(str(local), str(persistent)) as ckpt:
        start = ckpt.restore(model, opt)
        tier = ckpt.tier_of(start) if start is not None else None
        assert start is not None and ckpt.metadata(start)["extra"] == {"next_batch": start}
    for i in range(start, STEPS):
        common.train_step("opt", model, opt, i)
    return start, tier, common.flat_arrays(model, opt)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["disk", "gs"])
def test_kill_9_resumes_from_the_local_tier_then_from_the_persistent_one(tmp_path, where, request):
    env = _env()
    persistent: str | Path = tmp_path / "persistent"
    if where == "gs":
        env = _env(request.getfixturevalue("gcs"))
        persistent = f"gs://bucket/tiered-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "local"
    straight = _worker(
        tmp_path / "s-local", tmp_path / "s-persistent", tmp_path / "straight.npz", 0, env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    with _worker(
        local, persistent, "-", 0.05, env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == f"STEP {KILL_AT}":
                    proc.send_signal(signal.SIGKILL)
                    break
            else:
                pytest.fail("the worker ended before it was killed")
        finally:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    _, err = straight.communicate(timeout=TIMEOUT)
    assert straight.returncode == 0, err[-4000:]
    reference = dict(np.load(tmp_path / "straight.npz"))

    def assert_same(resumed: dict[str, np.ndarray]) -> None:
        assert resumed.keys() == reference.keys()
        for key in reference:
            np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)

    # save n of a tier starts only once its save n-1 is committed: when STEP 25 was
    # printed, local step 22 (and persistent step 10) were committed.
    local_every, persistent_every = tiered_worker.LOCAL_EVERY, tiered_worker.PERSISTENT_EVERY
    start, tier, resumed = _resume_and_finish(local, persistent)
    assert tier == "local" and start % local_every == 0, (start, tier)
    assert KILL_AT // local_every * local_every - local_every <= start < STEPS, start
    assert_same(resumed)

    shutil.rmtree(local)  # a new VM: only the persistent tier is left
    start, tier, resumed = _resume_and_finish(local, persistent)
    assert tier == "persistent" and start % persistent_every == 0, (start, tier)
    assert KILL_AT // persistent_every * persistent_every - persistent_every <= start, start
    assert 0 < start <= KILL_AT + 5, start
    assert_same(resumed)


@pytest.mark.slow
def test_sigterm_saves_the_step_to_the_persistent_tier_and_exits(tmp_path):
    code = (
        "import sys, time, os, signal\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "import common, tiered_worker\n"
        "model = common.Net(); opt = common.make_optimizer('opt', model)\n"
        "ckpt = tiered_worker.tiers(sys.argv[1], sys.argv[2])\n"
        "ckpt.save_on_sigterm(exit_code=7)\n"
        "for i in range(1000):\n"
        "    common.train_step('opt', model, opt, i)\n"
        "    if i + 1 == 13: os.kill(os.getpid(), signal.SIGTERM)\n"
        "    ckpt.save(i + 1, model, opt)\n"
        "print('not reached')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "local"), str(tmp_path / "persistent")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 7, proc.stderr[-4000:]
    assert "not reached" not in proc.stdout
    with tiered_worker.tiers(str(tmp_path / "local"), str(tmp_path / "persistent")) as ckpt:
        assert ckpt.persistent.all_steps() == [10, 13]
        assert ckpt.local.all_steps() == [10, 12]  # closed before the final save
        assert ckpt.metadata(13)["extra"] == {"preempted": True}
