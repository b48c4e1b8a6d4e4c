"""Multi-process checkpointing: 2 processes joined with ``jax.distributed``.

README.md, "Checkpoint and resume" ("Any devices"): a checkpoint restores onto any number
of devices, here across processes and topologies.

Each phase runs ``tests/_ckpt_scripts/multiprocess_worker.py`` (its docstring says how to
run it by hand) on the loopback address, 4 CPU devices per process:

1. 2 processes build a model sharded over the global 8-device mesh, take 2 steps, save
   one checkpoint with ``nm.Checkpointer``, and restore it into fresh objects;
2. 2 *new* processes restore it;
3. one ordinary process with a single device restores it (cross-topology);

every restore must give back exactly the saved arrays. Phases 2 and 3 run concurrently.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses joined with jax.distributed

WORKER = Path(__file__).parent / "_ckpt_scripts" / "multiprocess_worker.py"
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180  # per phase; a stuck process group is killed, not waited on forever


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args: object) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # The worker sets JAX_PLATFORMS and XLA_FLAGS itself, before importing jax.
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_all(procs: dict[str, subprocess.Popen]) -> dict[str, tuple[int, str, str]]:
    """Waits for every process; if one fails or time runs out, the others are killed
    (a peer of a dead process would otherwise wait in jax.distributed's barriers)."""
    deadline = time.monotonic() + TIMEOUT
    while any(p.poll() is None for p in procs.values()):
        failed = any(p.poll() not in (None, 0) for p in procs.values())
        if failed or time.monotonic() > deadline:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.1)
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=30)
        results[name] = (p.returncode, out, err)
    return results


def _report(results: dict[str, tuple[int, str, str]]) -> str:
    return "\n".join(
        f"--- {name}: exit {rc}\nstdout:\n{out}\nstderr (tail):\n{err[-4000:]}"
        for name, (rc, out, err) in results.items()
    )


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    directory, expected = root / "ckpt", root / "expected.npz"
    port = _free_port()
    results = _wait_all(
        {f"save {i}": _start("save", directory, expected, port, i) for i in range(2)}
    )
    if any(rc != 0 for rc, _, _ in results.values()):
        return results
    port = _free_port()
    procs = {f"restore {i}": _start("restore", directory, expected, port, i) for i in range(2)}
    procs["single"] = _start("single", directory, expected)
    results.update(_wait_all(procs))
    return results


def _check(phases, names: list[str], expected_lines: list[str]) -> None:
    missing = [n for n in names if n not in phases]
    assert not missing, f"{missing} did not run: an earlier phase failed\n{_report(phases)}"
    for name, line in zip(names, expected_lines, strict=True):
        rc, out, _ = phases[name]
        # A substring test: gloo's C++ logging shares stdout and may interleave with it.
        assert rc == 0 and line in out, (
            f"{name}: expected exit 0 and {line!r}\n{_report({n: phases[n] for n in names})}"
        )


def test_two_processes_save_and_restore(phases):
    _check(phases, ["save 0", "save 1"], ["OK save process 0", "OK save process 1"])


def test_new_processes_restore(phases):
    _check(phases, ["restore 0", "restore 1"], ["OK restore process 0", "OK restore process 1"])


def test_single_process_restores_two_process_checkpoint(phases):
    _check(phases, ["single"], ["OK single"])
