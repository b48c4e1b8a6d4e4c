"""``MomentumOptimizer``: a drop-in ``flax.nnx.Optimizer`` running :func:`momentum`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import optax
from flax import nnx

from nnx_momentum._face import MomentumFace, match_grads, public_signature
from nnx_momentum.schedulers import LRScheduler
from nnx_momentum.transform import LEARNING_RATE

__all__ = ["MomentumOptimizer"]

M = TypeVar("M")


@public_signature
class MomentumOptimizer(MomentumFace, nnx.Optimizer[M]):
    r"""A real ``nnx.Optimizer`` subclass applying heavy-ball momentum.

    Each ``update(model, grads)`` applies (SPEC section 2; see
    :func:`nnx_momentum.momentum`): clip by global norm, clip by value,
    :math:`g \leftarrow g + \lambda p`, :math:`v \leftarrow \mu v + g`,
    :math:`p \leftarrow p - \eta\,v` (or the Nesterov form), with :math:`\eta`
    the scheduler's current LR. The state is flax's (``step``, ``opt_state``)
    plus ``lr``, the scheduler, so ``nnx.state(optimizer)`` -- and any
    checkpoint of it -- carries the schedule.

    Under transforms: pass the optimizer (and model) to ``nnx.jit``, return it
    from ``jax.jit`` (``nnx.split``/``nnx.merge``), and keep it in the *carry* of
    ``nnx.scan``. Passed to ``nnx.scan`` as a broadcast (``in_axes=None``) its
    updates are silently dropped by flax: the velocity restarts from zero at every
    iteration and ``step`` never advances (``tests/test_nnx_optimizer.py`` shows it).

    Args:
      model: the NNX module whose ``wrt`` variables are optimized.
      lr: a float, an ``nnx_momentum`` scheduler (stepped by you with
        ``optimizer.lr.step()``), or an optax schedule of the update count.
      momentum: :math:`\mu \in [0, 1)`.
      wrt: the variable filter to optimize (as in ``nnx.Optimizer``).
      nesterov, weight_decay, grad_clip_norm, grad_clip_value,
      accumulator_dtype: as in :func:`nnx_momentum.momentum`.
      graph: graph mode (``True``) or tree mode (``False``), as in ``nnx.Optimizer``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> optimizer = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2))
      >>> loss_fn = lambda m: jnp.mean((m(jnp.ones((4, 2))) - 1.0) ** 2)
      >>> for epoch in range(3):
      ...     grads = nnx.grad(loss_fn)(model)
      ...     _ = optimizer.update(model, grads)
      ...     optimizer.lr.step()
      >>> optimizer.step_count, round(optimizer.current_lr, 6)
      (3, 0.01)
    """

    def __init__(
        self,
        model: M,
        lr: float | LRScheduler | Callable[[Any], Any] = 0.001,
        momentum: float = 0.9,
        *,
        wrt: Any = nnx.Param,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        grad_clip_norm: float | None = None,
        grad_clip_value: float | None = None,
        accumulator_dtype: Any = None,
        graph: bool | None = None,
    ):
        tx, scheduler = self._configure(
            lr,
            momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,
            grad_clip_value=grad_clip_value,
            accumulator_dtype=accumulator_dtype,
        )
        super().__init__(model, tx, wrt=wrt, graph=graph)
        self.lr = scheduler

    def update(self, model: M, grads: Any, /, **kwargs: Any) -> optax.Updates:
        """Applies one momentum step to ``model`` (flax's ``Optimizer.update``).

        ``grads`` (the State ``nnx.grad`` returns, or its pure-dict form) is first
        matched by path to the ``wrt`` variables of ``model``; a missing or unknown
        path, or a shape or dtype mismatch, raises ``ValueError`` naming it, before
        anything is written. Then the scheduler's current LR is written into the
        optax state -- a runtime value, so stepping the scheduler never retraces --
        and flax's own update runs.
        """
        grads = match_grads(nnx.state(model, self.wrt, graph=self.graph), grads)
        lr = self._lr_to_apply()
        if lr is not None:
            self.opt_state.hyperparams[LEARNING_RATE][...] = lr
        return super().update(model, grads, **kwargs)

    def state_tree(self) -> nnx.State:
        """``{'step', 'opt_state', 'lr'}`` as live Variables (see ``MomentumFace``)."""
        return nnx.state(self, nnx.OptState)
