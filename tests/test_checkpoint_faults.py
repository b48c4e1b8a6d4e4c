"""A save that fails on a full disk is reported, cleaned up, and loses no committed step.

README.md, "Checkpoint and resume" ("Atomic and async"): the failure surfaces as an
exception from the next call that can report it (the failing save itself when
synchronous; the next ``save`` or ``all_steps`` when asynchronous); the same instance
then lists and restores the committed steps, the uncommitted step folder is deleted,
and saving goes on. The disk is really full for the writer: the worker
(``tests/_ckpt_scripts/worker.py full_disk``) caps its file size with RLIMIT_FSIZE, so
TensorStore's write fails with EFBIG (``File too large``), as on a full volume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses

WORKER = Path(__file__).parent / "_ckpt_scripts" / "worker.py"
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


@pytest.mark.parametrize("how", ["sync", "async-save", "async-steps"])
def test_full_disk(tmp_path, how):
    directory = tmp_path / "ckpt"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(WORKER), "full_disk", str(directory), how],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "File too large" in report["error"] and "step 2" in report["error"], report
    assert "committed steps: [1]" in report["error"]
    if how == "sync":
        assert "save 2" not in report  # the failing save raised
    else:
        assert report["save 2"] is True  # started; the failure came from the next call
    assert "save 3" not in report
    assert report["steps after"] == [1]  # step 1 is still listed (max_to_keep=1)
    assert report["entries"] == ["1"]  # the uncommitted step 2 is gone
    assert report["restored"] == 1 and report["kernel ok"] is True
    assert report["save 4"] is True  # saving goes on
    assert report["steps in a new instance"] == [4]
    assert report["entries at the end"] == ["4"]
