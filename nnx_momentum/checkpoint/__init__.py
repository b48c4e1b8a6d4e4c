"""Orbax checkpoint and exact resume of a model and its optimizer.

One concept per module:

- ``options``: :class:`CheckpointOptions` (retention, interval, async saves);
- ``checkpointer``: :class:`Checkpointer`, save / restore / metadata;
- ``manager``: the orbax manager behind it: bounded waits, failed saves;
- ``tiered``: :class:`TieredCheckpointer`, a local tier saved often and a persistent one;
- ``targets``: restore targets built from the live objects, PRNG key arrays;
- ``metadata``: the JSON item of each step and the hyperparameter check;
- ``resume``: :class:`ResumeChanges`, the diff a restore shows and what it may load;
- ``lifecycle``: SIGTERM (preemption) and interpreter-exit handling.

Example:
  >>> from nnx_momentum.checkpoint import Checkpointer, CheckpointOptions
  >>> CheckpointOptions(max_to_keep=2).max_to_keep
  2
"""

from nnx_momentum.checkpoint.checkpointer import Checkpointer
from nnx_momentum.checkpoint.options import CheckpointOptions
from nnx_momentum.checkpoint.resume import ResumeChanges
from nnx_momentum.checkpoint.tiered import TieredCheckpointer

__all__ = ["CheckpointOptions", "Checkpointer", "ResumeChanges", "TieredCheckpointer"]
