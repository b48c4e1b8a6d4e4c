"""The benchmark suite runs end to end at smoke sizes, so it never rots."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # the benchmark suite in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")
SECTIONS = (
    "1. Per-step overhead",
    "2. Update bandwidth",
    "3. Memory",
    "4. Checkpoints",
    "5. Scaling",
    "6. Sharded optimizer state",
    "7. Checkpoint tiers",
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def test_help_documents_every_benchmark() -> None:
    out = subprocess.run(
        [sys.executable, RUN, "--help"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    names = ("overhead", "bandwidth", "memory", "checkpoint", "scaling", "sharding", "tiers")
    for name in (*names, "--smoke"):
        assert name in out.stdout


def test_smoke_suite_writes_table_and_chart(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, RUN, "--smoke", "--out", str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    table = (tmp_path / "latest.md").read_text()
    for section in SECTIONS:
        assert section in table, section
    assert "## Targets" in table
    assert "| yes |" in table or "| **no** |" in table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "latest.png").stat().st_size > 0
