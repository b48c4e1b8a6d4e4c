"""The examples and the quickstart notebook run, end to end.

Each example runs in a subprocess with this interpreter (``sys.executable``),
as a user would run it; the notebook runs in a Jupyter kernel started with this
interpreter too. Every command an example's docstring gives is run, in order, as
written: the docstrings are the examples' documentation, so they must not rot.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # examples in subprocesses, the notebook in a kernel

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.py"))


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }


def run_example(name: str, *args: str, cwd: Path) -> str:
    return run_example_full(name, *args, cwd=cwd).stdout


def run_example_full(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{name} {args} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def docstring_commands(name: str) -> list[list[str]]:
    """The command lines in an example's docstring: each ``python examples/...`` line, split
    as a shell would split it (a trailing ``# comment`` dropped)."""
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text())) or ""
    return [
        shlex.split(line, comments=True)
        for line in map(str.strip, doc.splitlines())
        if line.startswith("python examples/")
    ]


# What each docstring command must print, by example and position; every command must exit 0.
def _check_train_digits(runs: list[subprocess.CompletedProcess[str]]) -> None:
    fresh, again, preempted, resumed, longer = (run.stdout for run in runs)
    # The README's first command, on a fresh directory: it trains and ends with the accuracy.
    assert fresh.splitlines()[-1].startswith("test_accuracy="), fresh
    accuracy = float(fresh.splitlines()[-1].removeprefix("test_accuracy="))
    assert accuracy >= 0.95, fresh
    assert re.search(r"lr=\d\.\d+e-\d\d", fresh), fresh  # the cosine's end, not lr=0.0000
    # Again: a finished run has nothing to train and prints no (empty) progress bar.
    assert "resuming from step 3000" in again and "nothing to train" in again, again
    assert "train:" not in runs[1].stderr, runs[1].stderr
    assert again.splitlines()[-1] == fresh.splitlines()[-1]
    # Preempted, then resumed: the same run, to the same accuracy.
    assert "stopped after step 1000" in preempted and "test_accuracy" not in preempted
    assert "resuming from step 1000" in resumed, resumed
    assert resumed.splitlines()[-1] == fresh.splitlines()[-1], (fresh, resumed)
    # Another schedule in its own directory.
    assert "resuming" not in longer and longer.splitlines()[-1].startswith("test_accuracy=")


def _check_braintools_style(runs: list[subprocess.CompletedProcess[str]]) -> None:
    for run, epochs in zip(runs, (5, 8), strict=True):
        sections = run.stdout.split(":\n")[1:4]
        assert len(sections) == 3, run.stdout
        for section in sections:
            losses = [
                float(line.split("loss ")[1].split()[0])
                for line in section.splitlines()
                if "loss " in line
            ]
            assert len(losses) == epochs and losses[-1] < losses[0] / 4, run.stdout
        assert "state_dict() keys: ['lr', 'opt_state', 'step']" in run.stdout


def _check_sharded_resume(runs: list[subprocess.CompletedProcess[str]]) -> None:
    for run, device_counts in zip(runs, ((8, 2, 1), (4, 1)), strict=True):
        out = run.stdout
        assert "split over 8 device(s)" in out, out
        for devices in device_counts:
            assert f"in a new process on {devices} device(s)" in out, out
        assert out.count("matches the uninterrupted run") == len(device_counts), out
    assert "matches the uninterrupted run bit for bit" in runs[0].stdout  # the same 8 devices


CHECKS = {
    "train_digits.py": _check_train_digits,
    "braintools_style.py": _check_braintools_style,
    "sharded_resume.py": _check_sharded_resume,
}


def test_every_example_is_checked():
    assert sorted(CHECKS) == EXAMPLE_FILES


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_docstring_commands_run_in_sequence(name, tmp_path):
    """Each command of the docstring, in order, in one fresh directory, as written (``python``
    is this interpreter and ``examples/`` this checkout's)."""
    commands = docstring_commands(name)
    assert commands and commands[0] == ["python", f"examples/{name}"], commands
    runs = []
    for argv in commands:
        assert argv[:2] == ["python", f"examples/{name}"], f"{name}'s docstring runs {argv}"
        runs.append(run_example_full(name, *argv[2:], cwd=tmp_path))
    CHECKS[name](runs)


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_help_shows_every_default_and_does_no_work(name, tmp_path):
    proc = run_example_full(name, "--help", cwd=tmp_path)
    assert proc.stdout.startswith("usage:"), proc.stdout
    options = re.findall(r"^  (--[a-z-]+)", proc.stdout, re.MULTILINE)
    assert options, proc.stdout
    flat = " ".join(proc.stdout.split())  # argparse wraps long help lines
    assert flat.count("(default: ") == len(options), proc.stdout
    assert list(tmp_path.iterdir()) == [], "--help wrote files"


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_importing_an_example_does_nothing(name, tmp_path):
    """No work at import: all of it is in ``main()`` (an unknown argument would make a
    module-level parser exit)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('example', {str(EXAMPLES / name)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.argv = ['example', '--no-such-option']\n"
        "spec.loader.exec_module(module)\n"
        "assert callable(module.main)\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized(), 'it started a jax backend'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


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


def test_train_digits_refuses_another_schedule_in_the_same_directory(tmp_path):
    run_example("train_digits.py", "--steps", "30", "--ckpt-dir", "run", cwd=tmp_path)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_digits.py"), "--steps", "40", "--ckpt-dir", "run"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "T_max" in proc.stderr and "needs its own --ckpt-dir" in proc.stderr, proc.stderr


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
    """Runs the notebook in a new kernel (a new "runtime"); all its text output, stderr too."""
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


def _quickstart(steps: int):
    """The committed notebook, with a smaller STEPS in its parameters cell."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        "notebooks/quickstart.ipynb has stored outputs; clear them before committing"
    )
    (params,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert "STEPS = 300" in params.source and "START_OVER = False" in params.source
    params.source = params.source.replace("STEPS = 300", f"STEPS = {steps}")
    return nb


def test_quickstart_notebook_runs_twice_and_resumes(kernel, tmp_path, monkeypatch):
    """Run all, then Run all again in a new kernel with the same CKPT_DIR after the local tier
    is gone (as after a Colab disconnect, with the checkpoints on Drive): the second run
    resumes from the finished checkpoint in the persistent tier, trains nothing, deletes
    nothing and reports the same accuracy.

    Two simulated CPU devices, so the mesh cell has several devices to show."""
    ckpt_dir, local_dir = tmp_path / "drive" / "quickstart", tmp_path / "content" / "quickstart"
    monkeypatch.setenv("CKPT_DIR", str(ckpt_dir))
    monkeypatch.setenv("LOCAL_CKPT_DIR", str(local_dir))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()

    first = _execute(_quickstart(steps=40), kernel, tmp_path / "first")
    assert "no checkpoint in" in first, first
    # The simulated disconnect keeps the runtime's disk: the local tier has step 20.
    assert "resuming from step 20 of 40 (local tier" in first, first
    assert "2 device(s)" in first and "split over the 'data' axis" in first, first
    assert "kernel_before deleted by the step: True" in first, first
    assert "IProgress" not in first, first
    accuracy = re.findall(r"test_accuracy=\S+", first)
    assert len(accuracy) == 1, first
    steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    assert steps == [36, 40], steps  # every SAVE_EVERY=6 steps, the end too; 2 kept
    local_steps = sorted(int(p.name) for p in local_dir.iterdir() if p.name.isdigit())
    assert local_steps == [39, 40], local_steps  # every LOCAL_EVERY=1 step; 2 kept

    shutil.rmtree(local_dir)  # a new runtime: its disk is new, Drive is still there
    second = _execute(_quickstart(steps=40), kernel, tmp_path / "second")
    assert "no checkpoint in" not in second, second
    assert second.count("resuming from step 40 of 40 (persistent tier") == 2, second
    assert "START_OVER: deleted" not in second, second
    assert re.findall(r"test_accuracy=\S+", second) == accuracy, second
    assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == steps


def _stderr_lines(text: str) -> list[str]:
    """stderr's lines, a progress bar's ``\\r`` redraws split off (they are not errors)."""
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def _one_line_error(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Runs the example, which must fail with exit status 1 and one line on stderr: that line."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-4000:]
    (line,) = _stderr_lines(proc.stderr)
    assert line.startswith(f"{name}: Checkpointer: "), line
    return line


@pytest.mark.parametrize("name", ["train_digits.py", "sharded_resume.py"])
def test_an_unwritable_directory_is_one_line(name, tmp_path):
    (tmp_path / "file").write_text("")  # stops root too: a directory cannot be made under it
    line = _one_line_error(name, "--ckpt-dir", "file/ckpt", cwd=tmp_path)
    assert "cannot create" in line and "pass a directory you can write" in line, line


@pytest.mark.parametrize("name", ["train_digits.py", "sharded_resume.py"])
def test_gs_without_gcsfs_is_one_line(name, tmp_path):
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "gcsfs.py").write_text("raise ImportError('gcsfs is blocked by the test')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), _env()["PYTHONPATH"]])}
    line = _one_line_error(name, "--ckpt-dir", "gs://bucket/run", cwd=tmp_path, env=env)
    assert line.endswith("needs gcsfs to write gs:// (pip install gcsfs)."), line


def test_train_digits_says_where_it_writes_and_an_unwritable_plot_is_one_line(tmp_path):
    args = ("--steps", "30", "--ckpt-dir", "run")
    first = run_example_full("train_digits.py", *args, cwd=tmp_path)
    assert first.stdout.splitlines()[0] == f"checkpoints and loss.png go to {tmp_path / 'run'}"
    (tmp_path / "run" / "loss.png").unlink()
    (tmp_path / "run" / "loss.png").mkdir()  # the plot cannot be written (as root too)
    again = run_example_full("train_digits.py", *args, cwd=tmp_path)
    assert again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]  # test_accuracy=
    (line,) = _stderr_lines(again.stderr)
    assert line.startswith(f"train_digits.py: could not write the plot {tmp_path}/run/loss.png:")


def _interrupt(name: str, *args: str, cwd: Path, ready) -> subprocess.CompletedProcess[str]:
    """Starts the example, sends SIGINT (Ctrl-C) once ``ready(stdout so far)`` holds.

    Its output goes to files (a progress bar could fill a pipe nobody reads meanwhile).
    """
    out_file, err_file = cwd / "stdout.txt", cwd / "stderr.txt"
    with out_file.open("w") as out, err_file.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), *args],
            cwd=cwd,
            env={**_env(), "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 300
            while not ready(out_file.read_text()):
                assert proc.poll() is None, f"{name} ended first:\n{out_file.read_text()}"
                assert time.monotonic() < deadline, f"{name} never got ready"
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, out_file.read_text(), err_file.read_text()
    )


def test_ctrl_c_says_how_to_resume_train_digits(tmp_path):
    args = ("--steps", "100000", "--save-every", "20", "--ckpt-dir", "run")
    done = _interrupt(
        "train_digits.py", *args, cwd=tmp_path, ready=lambda _: (tmp_path / "run" / "40").is_dir()
    )
    assert done.returncode == 130, done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr
    last = _stderr_lines(done.stderr)[-1]
    match = re.fullmatch(
        r"train_digits\.py: interrupted; run the same command again to resume from step "
        rf"(\d+) \({re.escape(str(tmp_path / 'run'))}\)",
        last,
    )
    assert match, last
    step = int(match.group(1))
    again = run_example("train_digits.py", *args, "--stop-after", str(step + 1), cwd=tmp_path)
    assert f"resuming from step {step} " in again, again


def test_ctrl_c_ends_braintools_style_with_one_line(tmp_path):
    done = _interrupt(
        "braintools_style.py", "--epochs", "100000", cwd=tmp_path, ready=lambda s: "epoch 1" in s
    )
    assert done.returncode == 130, done.stderr[-4000:]
    assert _stderr_lines(done.stderr) == [
        "braintools_style.py: interrupted; it keeps no checkpoints: run it again"
    ]


def test_ctrl_c_says_how_to_resume_sharded_resume(tmp_path):
    args = ("--steps", "40", "--save-at", "20", "--resume-on", "1", "--ckpt-dir", "run")
    done = _interrupt("sharded_resume.py", *args, cwd=tmp_path, ready=lambda s: "final loss" in s)
    assert done.returncode == 130, done.stderr[-4000:]
    (line,) = _stderr_lines(done.stderr)
    prefix = "sharded_resume.py: interrupted; to resume from the checkpoint of step 20: python "
    assert line.startswith(prefix), line
    command = shlex.split(line.removeprefix(prefix))
    proc = run_example_full("sharded_resume.py", *command[1:], cwd=tmp_path)
    assert len(json.loads(proc.stdout.splitlines()[-1])) == 20  # steps 20..39, resumed
