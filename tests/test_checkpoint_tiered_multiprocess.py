"""``nm.TieredCheckpointer`` on a 2-process job joined with ``jax.distributed``.

README.md, "Two checkpoint tiers" ("Multi-host"): each process writes its own local tier
(``local_dir/process_<i>``), the persistent tier is one checkpoint of all processes, all
processes restore the same step, and one process without its local tier (a new VM) makes
all of them read the persistent tier. ``tests/_ckpt_scripts/tiered_multiprocess_worker.py``
runs each phase (2 processes on the loopback address, 4 CPU devices each, a model sharded
over the 8-device mesh); restores are compared bit for bit with the arrays saved. A local
tier holds whole arrays: one ordinary 1-device process restores one, too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_checkpointer_multiprocess import TIMEOUT, _free_port, _report, _wait_all

pytestmark = pytest.mark.slow  # subprocesses joined with jax.distributed

WORKER = Path(__file__).parent / "_ckpt_scripts" / "tiered_multiprocess_worker.py"
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _phase(mode: str, root: Path, *args: object) -> None:
    """Runs ``mode`` in 2 new processes; both must print their OK line and exit 0."""
    env = _env()
    port = _free_port()
    paths = (root / "local", root / "persistent", root / "expected")
    procs = {
        f"{mode} {i}": subprocess.Popen(
            [sys.executable, str(WORKER), mode, *map(str, (*paths, port, i, *args))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    }
    results = _wait_all(procs)
    for name, (rc, out, _) in results.items():
        assert rc == 0 and f"OK {mode} process {name.split()[-1]}" in out, _report(results)


def test_local_tiers_per_process_then_the_persistent_tier_on_a_new_vm(tmp_path):
    _phase("train", tmp_path)
    for i in range(2):  # each process wrote its own local tier
        assert sorted(p.name for p in (tmp_path / "local" / f"process_{i}").iterdir()) == [
            "2",
            "3",
        ]
    _phase("restore", tmp_path, 3, "local")  # new processes: the newest, local step
    # Each local tier holds whole arrays: one process with 1 device restores it too.
    proc = subprocess.run(
        [sys.executable, str(WORKER), "single", tmp_path / "local" / "process_1"]
        + [tmp_path / "expected", "3"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0 and "OK single" in proc.stdout, proc.stderr[-4000:]
    shutil.rmtree(tmp_path / "local" / "process_1")  # process 1 is on a new VM
    _phase("restore", tmp_path, 2, "persistent")  # both fall back to the persistent tier
