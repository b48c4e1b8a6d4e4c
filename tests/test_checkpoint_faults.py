"""A save that fails is reported, cleaned up, loses no committed step, and never hangs exit.

README.md, "Checkpoint and resume" ("Atomic and async"): the failure surfaces as an
exception from the next call that can report it (the failing save itself when
synchronous; the next ``save``, ``all_steps`` or ``wait_until_finished`` when
asynchronous); the same instance then lists and restores the committed steps, the
uncommitted step folder is deleted, and saving goes on -- the next ``save`` writes its
step and then raises naming both. A process that lost a save ends within seconds with
status 1 and a stderr line naming the step. The disk is really full for the writer:
the worker (``tests/_ckpt_scripts/worker.py``) caps its file size with RLIMIT_FSIZE, so
TensorStore's write fails with EFBIG (``File too large``), as on a full volume; or the
directory is replaced by a regular file under the running process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses

WORKER = Path(__file__).parent / "_ckpt_scripts" / "worker.py"
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(WORKER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _lost_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "was NOT committed" in line]


@pytest.mark.parametrize("how", ["sync", "async-wait", "async-steps"])
def test_full_disk(tmp_path, how):
    directory = tmp_path / "ckpt"
    out = _run("full_disk", str(directory), how)
    # step 2 was lost (the program caught the error): status 1, one line naming it
    assert out.returncode == 1, out.stderr[-4000:]
    assert [line.split(" was")[0] for line in _lost_lines(out.stderr)] == [
        "nnx_momentum.Checkpointer: step 2"
    ], out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "File too large" in report["error"] and "step 2" in report["error"], report
    assert "committed steps: [1]" in report["error"]
    if how == "sync":
        assert "save 2" not in report  # the failing save raised
    else:
        assert report["save 2"] is True  # started; the failure came from the next call
    assert report["steps after"] == [1]  # step 1 is still listed (max_to_keep=1)
    assert report["entries"] == ["1"]  # the uncommitted step 2 is gone
    assert report["restored"] == 1 and report["kernel ok"] is True
    assert report["save 4"] is True  # saving goes on
    assert report["steps in a new instance"] == [4]
    assert report["entries at the end"] == ["4"]


def test_a_failed_async_save_does_not_swallow_the_next_one(tmp_path):
    """Step 3 fails (EFBIG); save(4) still writes step 4, then raises naming steps 3 and 4."""
    out = _run("transient", str(tmp_path / "ckpt"))
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["steps"] == [1, 2, 4, 5], report
    assert report["save 3"] is True  # started; its failure comes from the next call
    error = report["save 4"]
    assert "save of step 3" in error and "File too large" in error, error
    assert "committed steps: [1, 2]" in error and "step 4, was started" in error, error
    assert report["save 5"] is True
    assert out.returncode == 1 and len(_lost_lines(out.stderr)) == 1, out.stderr[-4000:]
    assert "step 3 was NOT committed" in out.stderr


@pytest.mark.parametrize(
    "fault, end", [("rlimit", "close"), ("replaced", "close"), ("replaced", "return")]
)
def test_a_failed_save_never_hangs_exit(tmp_path, fault, end):
    """A save that fails mid-run: the process ends within 30 s, status 1, the step named.

    Without the fix the 'replaced' runs hung ~300 s at exit (orbax's threads of the
    failed save wait for signals that never come) and 'close' runs exited with status 0.
    """
    out = _run("fail_exit", str(tmp_path / "ckpt"), fault, end, timeout=120)
    ended = time.time()
    fault_at = float(out.stdout.split("FAULT_AT ", 1)[1].split()[0])
    assert ended - fault_at < 30, ended - fault_at
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-4000:]
    assert "RETURNING" in out.stdout
    if end == "close":
        assert "CAUGHT Checkpointer: the save of step 2" in out.stdout
    lost = _lost_lines(out.stderr)
    assert len(lost) == 1 and "step 2 was NOT committed" in lost[0], out.stderr[-4000:]
