"""The package version, written once: ``pyproject.toml`` reads it for the distribution's
metadata, and ``nnx_momentum.__version__`` re-exports it."""

__version__ = "0.3.0"
