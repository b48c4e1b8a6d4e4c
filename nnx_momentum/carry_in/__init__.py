"""Carry a run in: continue an optax, torch or braintools run with the same numbers.

Each importer reads one source -- a plain orbax checkpoint of
``nnx.Optimizer(model, optax.sgd(...))``, a ``torch.optim.SGD`` state_dict
(with its ``lr_scheduler``'s), or a braintools ``Momentum`` state_dict --
and writes the model's weights, the velocity, the update count and the
scheduler's position into live ``nnx_momentum`` objects of either face
(``nm.MomentumOptimizer``, or ``nm.Momentum`` registered on the model). The
next steps are then the steps the source library would have taken.

One rule for every source: the source is turned into values by *role*
(:mod:`nnx_momentum.layout`: ``velocity/<param path>``, ``step``,
``count/<g>``, ``learning_rate/<g>``), everything is checked -- every name
in both directions, shapes, dtypes (never cast), the hyperparameters the
source records, and the LR the source would apply next against the live
scheduler's -- and only then is anything written. A failed import leaves
the live objects as they were.

One module per source, and one for what they share:

- ``optax_checkpoint``: :func:`import_optax_checkpoint`;
- ``torch_sgd``: :func:`import_torch_sgd`;
- ``braintools_momentum``: :func:`import_braintools_momentum`;
- ``_apply``: the run by role, its checks, the scheduler's position and the write.
"""

from nnx_momentum.carry_in.braintools_momentum import import_braintools_momentum
from nnx_momentum.carry_in.optax_checkpoint import import_optax_checkpoint
from nnx_momentum.carry_in.torch_sgd import import_torch_sgd

__all__ = ["import_braintools_momentum", "import_optax_checkpoint", "import_torch_sgd"]
