"""Learning-rate schedulers with braintools' names, signatures and values.

A scheduler is a small NNX graph node. Its state -- the epoch counter
``last_epoch`` (starting at 0), the LR the optimizer applies next
(``current_lr``) and any extras (plateau counters, ...) -- lives in
:class:`SchedulerState` variables. When a scheduler is handed to an optimizer
it becomes part of the optimizer's graph, so ``nnx.state(optimizer)`` and every
checkpoint carry it.

Because the state is held in variables (runtime values, never Python
constants), ``scheduler.step()`` may be called eagerly or inside a compiled
step, and neither stepping nor changing the LR retraces anything. The static
configuration (``base_lr``, ``gamma``, ...) is plain Python data and is part of
the graph definition (traced hyperparameters, e.g. under ``jax.vmap``, are
graph data instead).

As in braintools, ``base_lr`` is a float or a list of floats, one per
parameter group (``base_lrs``, ``n_groups``); ``current_lr`` then holds one LR
per group, and ``get_last_lr()`` lists them. Epochs may be fractional
(``step(2.5)``): the whole epoch stays an exact int32 (``last_epoch``), the
fraction is ``epoch_fraction``.

The package is split by kind, and every name is importable from here:

- ``base``: :class:`SchedulerState`, :class:`LRScheduler`, :func:`reported_lr`;
- ``closed_form``: decays that are a pure function of the epoch, computed by
  ``optax.schedules`` (optax's values are braintools'), and :func:`as_scheduler`;
- ``warmup``: warmups and cycles, also pure functions of the epoch;
- ``stateful``: :class:`ReduceLROnPlateau`, :class:`CosineAnnealingWarmRestarts`;
- ``composite``: :class:`ChainedScheduler`, :class:`SequentialLR`;
- ``_support``: the private helpers they share.

Example:
  >>> import nnx_momentum.schedulers as sch
  >>> from nnx_momentum.schedulers import StepLR
  >>> sch.StepLR is StepLR
  True
"""

from nnx_momentum.schedulers.base import LRScheduler, SchedulerState, reported_lr
from nnx_momentum.schedulers.closed_form import (
    ConstantLR,
    CosineAnnealingLR,
    ExponentialDecayLR,
    ExponentialLR,
    FixedLR,
    LinearLR,
    MultiStepLR,
    PiecewiseConstantSchedule,
    PolynomialLR,
    StepLR,
    as_scheduler,
)
from nnx_momentum.schedulers.composite import ChainedScheduler, SequentialLR
from nnx_momentum.schedulers.stateful import CosineAnnealingWarmRestarts, ReduceLROnPlateau
from nnx_momentum.schedulers.warmup import (
    CyclicLR,
    OneCycleLR,
    WarmupCosineSchedule,
    WarmupScheduler,
)

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialDecayLR",
    "ExponentialLR",
    "FixedLR",
    "LRScheduler",
    "LinearLR",
    "MultiStepLR",
    "OneCycleLR",
    "PiecewiseConstantSchedule",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SchedulerState",
    "SequentialLR",
    "StepLR",
    "WarmupCosineSchedule",
    "WarmupScheduler",
    "as_scheduler",
    "reported_lr",
]
