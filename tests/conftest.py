"""Shared test set-up: make ``tests/`` importable for the reference module."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
