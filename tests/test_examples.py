"""The examples and the quickstart notebook run, end to end, with small step counts.

Each example runs in a subprocess with this interpreter (``sys.executable``),
as a user would run it; the notebook runs in a Jupyter kernel started with this
interpreter too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_train_digits_trains_and_resumes_exactly(tmp_path):
    """It learns; and stopped after 70 of 150 steps and run again, it ends with the same
    arrays (parameters and velocity) as one straight run.

    Compared bit for bit: both runs execute the same compiled programs on the same
    machine, the batches are a pure function of (seed, step), and the checkpoint
    stores float32 arrays exactly, so there is no source of rounding difference.
    """
    common = ["--steps", "150", "--save-every", "50", "--batch-size", "64"]
    out = run_example(
        "train_digits.py",
        *common,
        "--ckpt-dir",
        "straight",
        "--save-params",
        "straight.npz",
        cwd=tmp_path,
    )
    assert float(out.strip().splitlines()[-1].removeprefix("test_accuracy=")) >= 0.9, out
    assert (tmp_path / "straight" / "loss.png").stat().st_size > 0
    assert {p.name for p in (tmp_path / "straight").iterdir()} == {"50", "100", "150", "loss.png"}
    first = run_example(
        "train_digits.py", *common, "--ckpt-dir", "split", "--stop-after", "70", cwd=tmp_path
    )
    assert "stopped after step 70" in first and "test_accuracy" not in first
    second = run_example(
        "train_digits.py",
        *common,
        "--ckpt-dir",
        "split",
        "--save-params",
        "split.npz",
        cwd=tmp_path,
    )
    assert "resuming from step 70" in second

    straight, split = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "split.npz")
    assert sorted(straight.files) == sorted(split.files)
    assert any("trace" in k for k in straight.files)  # the velocity is compared too
    for key in straight.files:
        np.testing.assert_array_equal(split[key], straight[key], err_msg=key)


def test_braintools_style(tmp_path):
    out = run_example("braintools_style.py", cwd=tmp_path)
    for section in out.split(":\n")[1:4]:
        losses = [
            float(line.split("loss ")[1].split()[0])
            for line in section.splitlines()
            if "loss " in line
        ]
        assert len(losses) == 5 and losses[-1] < losses[0] / 4, out
    assert "state_dict() keys: ['lr', 'opt_state', 'step']" in out


def test_sharded_resume(tmp_path):
    out = run_example(
        "sharded_resume.py",
        "--steps",
        "16",
        "--save-at",
        "8",
        "--resume-on",
        "2",
        "--ckpt-dir",
        str(tmp_path / "ckpt"),
        cwd=tmp_path,
    )
    assert "split over 8 device(s)" in out and "split over 2 device(s)" in out, out
    assert "in a new process on 2 device(s)" in out, out
    assert out.count("matches the uninterrupted run") == 1, out


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A Jupyter kernel spec that starts this very interpreter (not `python` on PATH)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "nnx-momentum-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nnx_momentum tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    return "nnx-momentum-test"


def _execute(nb, kernel_name, path):
    import nbclient

    nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=240, resources={"metadata": {"path": str(path)}}
    ).execute()
    return "\n".join(
        out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs
    )


def test_checkpointer_lives_across_notebook_cells(kernel, tmp_path):
    """A Checkpointer made in one cell still saves in the next (no exit hook fires early)."""
    import nbformat

    cells = [
        "import nnx_momentum as nm\nfrom flax import nnx\nckpt = nm.Checkpointer('ckpt')\n"
        "model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))\n"
        "opt = nm.MomentumOptimizer(model, lr=0.1)",
        "ckpt.save(1, model, opt)\nckpt.wait_until_finished()",
        "ckpt.save(2, model, opt)\nckpt.close()\nprint('steps', ckpt.all_steps())",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    assert "steps [1, 2]" in _execute(nb, kernel, tmp_path)


def test_quickstart_notebook_runs(kernel, tmp_path):
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "notebooks/quickstart.ipynb has stored outputs; clear them before committing"
    )
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    params[0].source = 'STEPS = 40\nCKPT_DIR = "ckpt"'

    text = _execute(nb, kernel, tmp_path)
    assert "resuming from step 18" in text, text  # checkpoints every 40 // 6 = 6 steps
    assert "test_accuracy=" in text
