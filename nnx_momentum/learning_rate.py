"""The learning rate an optimizer applies: a scheduler, always.

An optimizer's ``lr`` argument is a float, an :class:`~nnx_momentum.LRScheduler`
or an optax schedule of the update count. :func:`as_lr` turns each into an
``LRScheduler``, so ``optimizer.lr`` has one type on both faces:

- a float becomes :class:`~nnx_momentum.FixedLR`;
- an ``LRScheduler`` is kept as is (its state is the optimizer's ``lr`` state);
- an optax schedule becomes :class:`OptaxSchedule`, which holds no state: the
  transformation evaluates it at its own update count
  (``optax.inject_hyperparams``), so there is nothing to step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnx_momentum import _validation
from nnx_momentum.schedulers import FixedLR, LRScheduler, as_scheduler

__all__ = [
    "LROption",
    "OptaxSchedule",
    "as_lr",
    "group_initial_lrs",
    "initial_learning_rate",
    "lr_value",
    "reported",
    "set_lr_value",
]

LROption = float | Sequence[float] | LRScheduler | Callable[[Any], Any]
"""What an optimizer's ``lr`` argument may be (a list: one fixed LR per parameter group)."""


class OptaxSchedule(LRScheduler):
    """An optax schedule ``count -> lr`` as an optimizer's ``lr``; stateless.

    The momentum transformation evaluates the schedule at its update count, so
    the LR follows the optimizer's steps by itself: :meth:`step` refuses, and
    ``current_lr`` is read from the optimizer (``optimizer.current_lr``).

    Args:
      schedule: an optax schedule, e.g. ``optax.cosine_decay_schedule(0.1, 100)``.

    Example:
      >>> import optax
      >>> from nnx_momentum.learning_rate import OptaxSchedule
      >>> s = OptaxSchedule(optax.linear_schedule(0.1, 0.0, 10))
      >>> round(float(s.lr_at(5)), 6), round(s.base_lr, 6)
      (0.05, 0.1)
    """

    def __init__(self, schedule: Callable[[Any], Any]):
        # No epoch and no current LR: the transformation's update count drives it,
        # so this node adds nothing to the optimizer's state.
        self.schedule = schedule
        self.base_lr = float(schedule(0))

    def lr_at(self, epoch: jax.typing.ArrayLike) -> jax.Array:
        """The schedule's value at update count ``epoch`` (float32)."""
        return jnp.asarray(self.schedule(epoch), jnp.float32)

    def get_lr(self) -> jax.Array:
        """Refused: the value depends on the optimizer's count (``optimizer.current_lr``)."""
        raise TypeError(
            "an optax schedule follows the optimizer's update count; read optimizer.current_lr."
        )

    def step(self, epoch: jax.typing.ArrayLike | None = None) -> None:
        """Refused: an optax schedule advances with the optimizer's updates."""
        raise TypeError(
            "lr is an optax schedule of the update count: it advances with every update and "
            "has nothing to step. Pass a float or an nnx_momentum scheduler to step it yourself."
        )

    def state_dict(self) -> dict[str, Any]:
        """``{}``: nothing to save (the count lives in the optimizer's state)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Accepts only ``{}``, what :meth:`state_dict` returns."""
        if state_dict:
            raise ValueError(
                f"OptaxSchedule holds no state; load_state_dict got keys {sorted(state_dict)}."
            )

    def describe(self) -> dict[str, Any]:
        """A stable description (no memory address): the schedule function's name."""
        schedule = self.schedule
        name = getattr(schedule, "__qualname__", type(schedule).__qualname__)
        return {"name": "optax_schedule", "function": f"{schedule.__module__}.{name}"}


def as_lr(lr: LROption) -> LRScheduler:
    """An optimizer's ``lr`` argument as a scheduler (see the module docstring).

    Raises:
      ValueError: a negative or NaN float.
      TypeError: anything that is neither a number, a scheduler nor a callable.

    Example:
      >>> import optax
      >>> from nnx_momentum.learning_rate import as_lr
      >>> type(as_lr(0.1)).__name__, type(as_lr(optax.constant_schedule(0.1))).__name__
      ('FixedLR', 'OptaxSchedule')
    """
    if callable(lr) and not isinstance(lr, LRScheduler):
        return OptaxSchedule(lr)
    if isinstance(lr, (list, tuple)):
        return FixedLR(list(lr))
    return as_scheduler(lr)


def lr_value(lr: LRScheduler, count: jax.typing.ArrayLike) -> jax.Array:
    """The LR the next update applies, for an optimizer whose update count is ``count``."""
    if isinstance(lr, OptaxSchedule):
        return lr.lr_at(count)
    return lr.current_lr[...]


def set_lr_value(lr: LRScheduler, value: float) -> None:
    """Overwrites the scheduler's current LR until its next ``step()``.

    Raises:
      TypeError: ``lr`` is an optax schedule (its value comes from the count).
      ValueError: ``value`` is negative or NaN.
    """
    if isinstance(lr, OptaxSchedule):
        raise TypeError(
            "current_lr cannot be set: lr is an optax schedule of the step. Pass a "
            "float or an nnx_momentum scheduler as lr to control it at run time."
        )
    lr.current_lr[...] = jnp.asarray(_validation.non_negative("current_lr", value), jnp.float32)


def reported(value: float) -> float:
    """The shortest decimal that rounds to the same float32: what the user wrote.

    ``lr=0.01`` is applied as float32 (0.009999999776...); reported, it reads 0.01.

    Example:
      >>> from nnx_momentum.learning_rate import reported
      >>> reported(0.009999999776482582), reported(0.0125)
      (0.01, 0.0125)
    """
    return float(str(np.float32(value)))


def group_initial_lrs(lr: LRScheduler, n_groups: int) -> list[Any]:
    """Each group's initial LR: the schedule (optax), or the scheduler's LR for the group.

    Raises:
      ValueError: the scheduler drives neither 1 nor ``n_groups`` LRs.
    """
    if isinstance(lr, OptaxSchedule):
        return [lr.schedule] * n_groups
    current = lr.current_lr[...]
    if current.ndim == 0:
        return [current] * n_groups
    if current.shape != (n_groups,):
        raise ValueError(
            f"lr drives {current.shape[0]} LRs (one per base LR), but there are {n_groups} "
            f"parameter groups: give it 1 base LR (shared) or {n_groups}."
        )
    return [current[k] for k in range(n_groups)]


def initial_learning_rate(lr: LRScheduler) -> jax.Array | optax.Schedule:
    """What the transformation is built with: the schedule itself, or the first LR.

    The first LR stays an array (never ``float()``), so an optimizer can be built
    under ``nnx.jit`` or ``nnx.eval_shape``, where it is traced.
    """
    if isinstance(lr, OptaxSchedule):
        return lr.schedule
    current = lr.current_lr[...]
    # One LR per group: group 0's until groups exist (braintools' add_param_group comes
    # after construction); the update checks the count then.
    return current if current.ndim == 0 else current[0]
