"""Coordinated preemption: on a 2-process job, a SIGTERM to one host gives one final save.

README.md, "Checkpoint and resume" ("Preemption"): after ``jax.distributed.initialize``
jax's preemption sync manager owns SIGTERM, and every process learns of it at the same
step (orbax's ``CheckpointManager.reached_preemption``), so both processes save one
identical final step and exit -- although only one got the signal. A new process then
restores exactly that step. The single-process SIGTERM path is
tests/test_checkpointer.py::test_sigterm_turns_into_a_final_save.

The processes run ``tests/_ckpt_scripts/multiprocess_worker.py preempt`` on 127.0.0.1
(4 CPU devices each, a model sharded over all 8).
"""

from __future__ import annotations

import signal
import time

import pytest
from test_checkpointer_multiprocess import TIMEOUT, _free_port, _report, _start, _wait_all

pytestmark = pytest.mark.slow  # processes joined with jax.distributed


def _progress(directory, pid: int) -> int:
    try:
        return int((directory.parent / f"{directory.name}.progress.{pid}").read_text() or 0)
    except (OSError, ValueError):
        return 0


def test_sigterm_to_one_process_gives_one_identical_final_step(tmp_path):
    directory, expected = tmp_path / "ckpt", tmp_path / "expected.npz"
    port = _free_port()
    procs = {f"preempt {i}": _start("preempt", directory, expected, port, i) for i in range(2)}
    deadline = time.monotonic() + TIMEOUT
    while _progress(directory, 1) < 5:  # both are training, and compiled
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
            break
        time.sleep(0.1)
    procs["preempt 1"].send_signal(signal.SIGTERM)  # one host only
    results = _wait_all(procs)
    finals = set()
    for name, (rc, out, _) in results.items():
        assert rc == 0, _report(results)
        lines = [line for line in out.splitlines() if line.startswith("FINAL ")]
        assert lines, f"{name} made no final save\n{_report(results)}"
        finals.add(int(lines[-1].split()[1]))
    assert len(finals) == 1, f"the processes saved different final steps {finals}"
    (final,) = finals
    assert final >= 5
    with _start("final", directory, expected) as proc:
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and f"OK final {final}" in out, out + err[-4000:]
