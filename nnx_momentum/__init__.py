"""nnx_momentum: heavy-ball momentum for Flax NNX, with schedulers and orbax checkpoints.

The public names, re-exported from one module per concept:

- ``config``: :class:`MomentumConfig`, the hyperparameters, written once;
- ``transform``: :func:`momentum`, the functional core (an optax transformation);
- ``optimizers``: :class:`Momentum`, :class:`MomentumNesterov`, :class:`SGD` (braintools-style);
- ``nnx_optimizer``: :class:`MomentumOptimizer` (an ``nnx.Optimizer`` subclass);
- ``schedulers``: the LR schedulers;
- ``train_step``: :func:`make_train_step`, the fast compiled step;
- ``checkpoint``: :class:`Checkpointer`, orbax checkpoint and exact resume;
  :class:`TieredCheckpointer`, a fast local tier and a persistent one;
- ``groups``: :class:`ParamGroup`, per-group hyperparameters;
- ``sharding``: the ZeRO-1 layout behind ``shard_state_over=``;
- ``learning_rate``: :class:`OptaxSchedule`, what an optimizer's ``lr`` becomes;
- ``carry_in``: :func:`import_optax_checkpoint`, :func:`import_torch_sgd`,
  :func:`import_braintools_momentum`, a run from another library continued here.
"""

from nnx_momentum._version import __version__ as __version__
from nnx_momentum.carry_in import (
    import_braintools_momentum,
    import_optax_checkpoint,
    import_torch_sgd,
)
from nnx_momentum.checkpoint import (
    Checkpointer,
    CheckpointOptions,
    ResumeChanges,
    TieredCheckpointer,
)
from nnx_momentum.config import MomentumConfig
from nnx_momentum.groups import ParamGroup
from nnx_momentum.learning_rate import OptaxSchedule
from nnx_momentum.nnx_optimizer import MomentumOptimizer
from nnx_momentum.optimizers import SGD, Momentum, MomentumNesterov
from nnx_momentum.schedulers import (
    ChainedScheduler,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialDecayLR,
    ExponentialLR,
    FixedLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    PiecewiseConstantSchedule,
    PolynomialLR,
    ReduceLROnPlateau,
    SchedulerState,
    SequentialLR,
    StepLR,
    WarmupCosineSchedule,
    WarmupScheduler,
)
from nnx_momentum.train_step import TrainStep, make_train_step
from nnx_momentum.transform import learning_rate_of, momentum, with_learning_rate

__all__ = [
    "SGD",
    "ChainedScheduler",
    "CheckpointOptions",
    "Checkpointer",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialDecayLR",
    "ExponentialLR",
    "FixedLR",
    "LRScheduler",
    "LinearLR",
    "Momentum",
    "MomentumConfig",
    "MomentumNesterov",
    "MomentumOptimizer",
    "MultiStepLR",
    "OneCycleLR",
    "OptaxSchedule",
    "ParamGroup",
    "PiecewiseConstantSchedule",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "ResumeChanges",
    "SchedulerState",
    "SequentialLR",
    "StepLR",
    "TieredCheckpointer",
    "TrainStep",
    "WarmupCosineSchedule",
    "WarmupScheduler",
    "import_braintools_momentum",
    "import_optax_checkpoint",
    "import_torch_sgd",
    "learning_rate_of",
    "make_train_step",
    "momentum",
    "with_learning_rate",
]
