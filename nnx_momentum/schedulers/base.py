"""The scheduler base: :class:`SchedulerState`, :class:`LRScheduler`, :func:`as_scheduler`.

Also the private helpers the scheduler modules share (epoch casts, evaluating
an optax schedule, argument checks, the ``describe()`` encoding).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nnx_momentum import _validation
from nnx_momentum.tree import load_into

__all__ = ["LRScheduler", "SchedulerState", "as_scheduler"]

ArrayLike = jax.typing.ArrayLike
Schedule = Callable[[jax.Array], ArrayLike]  # an optax schedule


# ---------------------------------------------------------------------------
# private helpers
# ---------------------------------------------------------------------------
def _f32(x: ArrayLike) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _epoch_int(epoch: ArrayLike) -> jax.Array:
    """The epoch truncated to int32 (schedules that step at whole epochs)."""
    return jnp.asarray(epoch).astype(jnp.int32)


def _epoch_float(epoch: ArrayLike) -> jax.Array:
    """The epoch as float32 (schedules defined between whole epochs too)."""
    return jnp.asarray(epoch).astype(jnp.float32)


def _evaluate(schedule: Schedule, count: jax.Array) -> jax.Array:
    """``schedule(count)`` as float32, shaped like ``count`` (optax constants are scalars)."""
    return jnp.broadcast_to(_f32(schedule(count)), jnp.shape(count))


def _cosine(peak: float, end: float, steps: int) -> Schedule:
    """``end + (peak - end)(1 + cos(pi min(t, steps) / steps)) / 2`` via optax's cosine decay.

    ``optax.cosine_decay_schedule`` ends at ``alpha * peak``; passing it the
    amplitude ``peak - end`` (alpha 0) keeps braintools' form for any ``peak``,
    ``0`` included.
    """
    decay = optax.cosine_decay_schedule(peak - end, steps)
    return lambda t: end + decay(t)


def _increasing_ints(name: str, value: Any, *, minimum: int = 0) -> tuple[int, ...]:
    """A sequence of strictly increasing integers ``>= minimum``, as a tuple."""
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}.") from None
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral) or item < minimum:
            raise ValueError(f"{name} must contain integers >= {minimum}, got {value!r}.")
        out.append(int(item))
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"{name} must be strictly increasing, got {value!r}.")
    return tuple(out)


def _describe_value(value: Any) -> Any:
    """``value`` as JSON data for :meth:`LRScheduler.describe` (children nest)."""
    if isinstance(value, LRScheduler):
        return value.describe()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple, nnx.List)):
        return [_describe_value(v) for v in value]
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return repr(value)


class _ConstructorSignature:
    """``cls.__signature__``: the constructor's parameters, for ``help()`` and ``inspect``.

    nnx's Pytree metaclass defines ``__call__(cls, *args, **kwargs)``, which
    ``inspect.signature(cls)`` would report. Looked up on an instance this
    raises ``AttributeError``, so a scheduler *instance* keeps the signature of
    its ``__call__(count)`` (it is an optax schedule).
    """

    def __get__(self, obj: object, cls: type[LRScheduler] | None = None) -> inspect.Signature:
        if obj is not None or cls is None:
            raise AttributeError("__signature__")
        signature = inspect.signature(cls.__init__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])


# ---------------------------------------------------------------------------
# base
# ---------------------------------------------------------------------------
class SchedulerState(nnx.OptState):
    """Scheduler state (epoch counter, current LR, extras): a kind of ``nnx.OptState``.

    Being an ``OptState``, it is selected by ``nnx.state(optimizer, nnx.OptState)``
    together with the velocity and the step counter.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> from flax import nnx
      >>> s = sch.StepLR(0.1)
      >>> sorted(nnx.state(s, sch.SchedulerState))
      ['current_lr', 'last_epoch']
    """


class LRScheduler(nnx.Pytree):
    r"""Base class: an epoch-indexed learning rate held in NNX state.

    Subclasses implement :meth:`lr_at` (the LR as a pure function of the
    epoch); stateful schedules such as ``ReduceLROnPlateau`` override
    :meth:`step` instead.

    Attributes:
      base_lr: the initial learning rate (a Python float, static).
      last_epoch: ``SchedulerState`` int32 scalar, the current epoch (0 at start).
      current_lr: ``SchedulerState`` float32 scalar, the LR the optimizer applies
        at its next step. ``step()`` recomputes it; an optimizer's ``current_lr``
        setter overwrites it until the next ``step()``.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.StepLR(0.1, step_size=2, gamma=0.5)
      >>> s.step(); s.step()
      >>> round(float(s.current_lr[...]), 6), int(s.last_epoch[...])
      (0.05, 2)
    """

    __signature__ = _ConstructorSignature()

    def __init__(self, base_lr: float, last_epoch: int = 0):
        self.base_lr = _validation.non_negative("base_lr", base_lr)
        self._initial_epoch = _validation.non_negative_int("last_epoch", last_epoch)
        self.last_epoch = SchedulerState(jnp.asarray(last_epoch, jnp.int32))
        self.current_lr = SchedulerState(_f32(self._initial_lr()))

    def _initial_lr(self) -> ArrayLike:
        return self.get_lr()

    # -- the schedule ------------------------------------------------------
    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        """The LR at ``epoch`` as a pure, traceable function (float32)."""
        raise NotImplementedError

    def __call__(self, count: ArrayLike) -> jax.Array:
        """Use the scheduler as an optax schedule: the LR at epoch ``count``."""
        return self.lr_at(count)

    # -- braintools API ----------------------------------------------------
    def get_lr(self) -> jax.Array:
        """The LR for the current ``last_epoch`` (what ``step()`` stores)."""
        return _f32(self.lr_at(self.last_epoch[...]))

    def step(self, epoch: ArrayLike | None = None) -> None:
        """Advance one epoch, or jump to ``epoch``; recompute ``current_lr``."""
        self.last_epoch[...] = self._next_epoch(epoch)
        self.current_lr[...] = self.get_lr()

    def _next_epoch(self, epoch: ArrayLike | None) -> jax.Array:
        if epoch is None:
            return self.last_epoch[...] + 1
        return _epoch_int(epoch)

    def get_last_lr(self) -> list[float]:
        """``[current LR]`` as Python floats (eager only, like braintools)."""
        return [float(self.current_lr[...])]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state as a pure nested dict of arrays.

        The arrays are copies, so a later donated compiled step cannot delete them.
        """
        pure: dict[str, Any] = jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(self)))
        return pure

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads what :meth:`state_dict` returned, by the rule of :mod:`nnx_momentum.tree`.

        Every path, shape and dtype is checked before anything is written (a
        value of another dtype is refused, not cast), so a mismatched dict
        leaves the scheduler untouched. Each value lands on its live variable's
        current sharding, as a copy. Keys may be ints or strings (``'0'``, as a
        checkpoint restored without a target gives).

        Raises:
          TypeError: ``state_dict`` is not a dict.
          ValueError: a path is missing or unknown, or a shape or dtype differs;
            the message names the path (``'schedulers/1/current_lr'``).
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict must be a dict as returned by {type(self).__name__}.state_dict(), "
                f"got {type(state_dict).__name__}."
            )
        load_into(nnx.state(self), state_dict, what=f"{type(self).__name__}.load_state_dict")

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description: class name and constructor arguments."""
        out: dict[str, Any] = {"name": type(self).__name__}
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                out[name] = _describe_value(self._described_arg(name))
        return out

    def _described_arg(self, name: str) -> Any:
        if name == "last_epoch":
            return self._initial_epoch
        return getattr(self, name)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


def as_scheduler(lr: float | LRScheduler) -> LRScheduler:
    """A scheduler from an optimizer's ``lr`` argument.

    A real number (validated: ``>= 0``, not NaN) becomes :class:`FixedLR`; an
    :class:`LRScheduler` is returned as is.

    Args:
      lr: a float or an ``LRScheduler``.

    Returns:
      An ``LRScheduler``.

    Raises:
      ValueError: ``lr`` is negative or NaN.
      TypeError: ``lr`` is anything else (plain callables such as optax
        schedules are handled by the optimizers, not here).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> type(sch.as_scheduler(0.1)).__name__
      'FixedLR'
    """
    # closed_form imports this module, so FixedLR is imported at call time
    from nnx_momentum.schedulers.closed_form import FixedLR

    if isinstance(lr, LRScheduler):
        return lr
    if isinstance(lr, (numbers.Real, np.ndarray, jax.Array)) and not isinstance(lr, bool):
        if np.ndim(lr) != 0:
            raise TypeError(
                f"lr must be a scalar or an LRScheduler, got an array of shape {np.shape(lr)}."
            )
        return FixedLR(_validation.non_negative("lr", lr))
    if callable(lr):
        raise TypeError(
            f"lr must be a float or an LRScheduler, got the callable {lr!r}; plain schedule "
            "functions (e.g. optax schedules) are accepted by the optimizers, not by as_scheduler."
        )
    raise TypeError(f"lr must be a float or an LRScheduler, got {type(lr).__name__}: {lr!r}.")
