"""Shared test set-up: make ``tests/`` importable for the reference module."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Not collected, not even imported for doctests (``--doctest-modules``):
# - typecheck/: a user script that mypy checks (.ci/run), not a test;
# - data/: the fixture generator, run by hand only -- importing it must never risk
#   rewriting the committed checkpoint.
collect_ignore = ["typecheck", "data"]
