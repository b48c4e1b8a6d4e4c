"""Closed-form decays: schedules whose LR is a pure function of the epoch.

Each :meth:`lr_at` builds the matching ``optax.schedules`` function and
evaluates it, so the math is optax's (its values are braintools' to float32
rounding). ``StepLR``, ``MultiStepLR``, ``ConstantLR`` and
``PiecewiseConstantSchedule`` step at whole epochs and truncate a fractional
epoch; the others are evaluated between epochs too. With a list of base LRs
(one per parameter group) the schedule runs once per group, from that group's
base LR. The rising closed-form schedules (warmups, cycles) are in
:mod:`nnx_momentum.schedulers.warmup`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnx_momentum import _validation
from nnx_momentum.schedulers._support import (
    ArrayLike,
    BaseLR,
    _cosine,
    _epoch_float,
    _epoch_int,
    _evaluate,
    _group_values,
    _increasing_ints,
    _stored,
)
from nnx_momentum.schedulers.base import LRScheduler

__all__ = [
    "ConstantLR",
    "CosineAnnealingLR",
    "ExponentialDecayLR",
    "ExponentialLR",
    "FixedLR",
    "LinearLR",
    "MultiStepLR",
    "PiecewiseConstantSchedule",
    "PolynomialLR",
    "StepLR",
    "as_scheduler",
]


class FixedLR(LRScheduler):
    r"""A constant learning rate (what a float ``lr`` becomes).

    .. math:: \eta_t = \eta_0

    Args:
      base_lr: the learning rate, ``>= 0``; or a list, one per parameter group.
      last_epoch: initial epoch.

    Raises:
      ValueError: a negative, NaN or infinite LR, or an empty list.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.FixedLR(0.1)
      >>> s.step()
      >>> s.get_last_lr(), sch.FixedLR([0.1, 0.01]).get_last_lr()
      ([0.1], [0.1, 0.01])
    """

    def __init__(self, base_lr: BaseLR = 1e-3, last_epoch: int = 0):
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = jnp.asarray(epoch)
        return self._per_group(lambda g: _evaluate(optax.constant_schedule(self._base(g)), e))


class StepLR(LRScheduler):
    r"""Decays the LR by ``gamma`` every ``step_size`` epochs.

    .. math:: \eta_t = \eta_0 \, \gamma^{\lfloor t / s \rfloor}

    Computed by ``optax.exponential_decay(..., staircase=True)``; ``t`` is
    truncated to an integer.

    Args:
      base_lr: initial learning rate :math:`\eta_0`; or a list, one per parameter group.
      step_size: period :math:`s` of the decay, an integer ``>= 1``.
      gamma: multiplicative factor :math:`\gamma > 0`.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.StepLR(0.1, step_size=3, gamma=0.1)
      >>> [round(float(s.lr_at(t)), 6) for t in range(7)]
      [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001]
      >>> groups = sch.StepLR([0.1, 0.2], step_size=3, gamma=0.5)  # one LR per group
      >>> groups.step(3); groups.get_last_lr(), groups.lr_at(3).shape
      ([0.05, 0.1], (2,))
    """

    _truncates = True

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        step_size: int = 30,
        gamma: float = 0.1,
        last_epoch: int = 0,
    ):
        self.step_size = _validation.positive_int("step_size", step_size)
        self.gamma = _validation.positive("gamma", gamma)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_int(epoch)

        def lr(g: int) -> jax.Array:
            schedule = optax.exponential_decay(
                self._base(g), self.step_size, self.gamma, staircase=True
            )
            return _evaluate(schedule, e)

        return self._per_group(lr)


class MultiStepLR(LRScheduler):
    r"""Decays the LR by ``gamma`` at each milestone epoch.

    .. math:: \eta_t = \eta_0 \, \gamma^{\#\{m \in \text{milestones} : m \le t\}}

    Computed by ``optax.piecewise_constant_schedule`` (scale ``gamma`` at each
    milestone); ``t`` is truncated to an integer.

    Args:
      base_lr: initial learning rate :math:`\eta_0`; or a list, one per parameter group.
      milestones: strictly increasing epochs (integers ``>= 0``).
      gamma: multiplicative factor :math:`\gamma > 0`.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.MultiStepLR(0.1, milestones=[2, 5], gamma=0.1)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 5)]
      [0.1, 0.01, 0.001]
    """

    _truncates = True

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        milestones: Sequence[int] = (30, 60, 90),
        gamma: float = 0.1,
        last_epoch: int = 0,
    ):
        self.milestones = _increasing_ints("milestones", milestones)
        self.gamma = _validation.positive("gamma", gamma)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        scales = {m: self.gamma for m in self.milestones}
        e = _epoch_int(epoch)
        return self._per_group(
            lambda g: _evaluate(optax.piecewise_constant_schedule(self._base(g), scales), e)
        )


class ExponentialLR(LRScheduler):
    r"""Decays the LR by ``gamma`` every epoch.

    .. math:: \eta_t = \eta_0 \, \gamma^{t}

    Computed by ``optax.exponential_decay`` with one-epoch steps.

    Args:
      base_lr: initial learning rate :math:`\eta_0`; or a list, one per parameter group.
      gamma: multiplicative factor per epoch, :math:`\gamma > 0`.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ExponentialLR(0.1, gamma=0.5)
      >>> s.step(); s.step()
      >>> round(s.get_last_lr()[0], 6)
      0.025
    """

    def __init__(self, base_lr: BaseLR = 1e-3, gamma: float = 0.95, last_epoch: int = 0):
        self.gamma = _validation.positive("gamma", gamma)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)
        return self._per_group(
            lambda g: _evaluate(optax.exponential_decay(self._base(g), 1, self.gamma), e)
        )


class ExponentialDecayLR(LRScheduler):
    r"""Exponential decay with a delayed start, optional staircase and bound (optax style).

    .. math::
        r_t = \frac{\max(t - t_0, 0)}{T}\ (\text{floored if staircase}), \qquad
        \eta_t = \eta_0 \, \rho^{r_t}

    clipped from below (``decay_rate < 1``) or above (``decay_rate > 1``) at
    ``end_value`` when given. Computed by ``optax.exponential_decay``.

    Args:
      base_lr: initial learning rate :math:`\eta_0`; or a list, one per parameter group.
      decay_steps: :math:`T`, integer ``>= 1``.
      decay_rate: :math:`\rho > 0`.
      transition_begin: :math:`t_0`, epochs held at ``base_lr`` (integer ``>= 0``).
      staircase: decay in discrete steps.
      end_value: optional bound on the LR (``>= 0``), the same for every group.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ExponentialDecayLR(0.1, decay_steps=2, decay_rate=0.5)
      >>> [round(float(s.lr_at(t)), 6) for t in range(3)]
      [0.1, 0.070711, 0.05]
    """

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        decay_steps: int = 1000,
        decay_rate: float = 0.96,
        transition_begin: int = 0,
        staircase: bool = False,
        end_value: float | None = None,
        last_epoch: int = 0,
    ):
        self.decay_steps = _validation.positive_int("decay_steps", decay_steps)
        self.decay_rate = _validation.positive("decay_rate", decay_rate)
        self.transition_begin = _validation.non_negative_int("transition_begin", transition_begin)
        self.staircase = bool(staircase)
        self.end_value = (
            None if end_value is None else _validation.non_negative("end_value", end_value)
        )
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)

        def lr(g: int) -> jax.Array:
            schedule = optax.exponential_decay(
                self._base(g),
                self.decay_steps,
                self.decay_rate,
                transition_begin=self.transition_begin,
                staircase=self.staircase,
                end_value=self.end_value,
            )
            return _evaluate(schedule, e)

        return self._per_group(lr)


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from ``base_lr`` to ``eta_min`` over ``T_max`` epochs, then held.

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min})\,
        \frac{1 + \cos(\pi \min(t, T_{max}) / T_{max})}{2}

    Computed by ``optax.cosine_decay_schedule``.

    Args:
      base_lr: initial learning rate :math:`\eta_0`; or a list, one per parameter group.
      T_max: length of the annealing, integer ``>= 1``.
      eta_min: final learning rate, ``>= 0`` (every group's).
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.CosineAnnealingLR(0.1, T_max=4)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 4, 9)]
      [0.1, 0.05, 0.0, 0.0]
    """

    def __init__(
        self, base_lr: BaseLR = 1e-3, T_max: int = 50, eta_min: float = 0.0, last_epoch: int = 0
    ):
        self.T_max = _validation.positive_int("T_max", T_max)
        self.eta_min = _validation.non_negative("eta_min", eta_min)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)
        return self._per_group(
            lambda g: _evaluate(_cosine(self._base(g), self.eta_min, self.T_max), e)
        )


class PolynomialLR(LRScheduler):
    r"""Polynomial decay to zero over ``total_iters`` epochs.

    .. math:: \eta_t = \eta_0 \left(1 - \frac{\min(t, N)}{N}\right)^{p}

    Computed by ``optax.polynomial_schedule`` (end value 0).

    Args:
      base_lr: initial learning rate :math:`\eta_0`; or a list, one per parameter group.
      total_iters: :math:`N`, integer ``>= 1``.
      power: :math:`p \ge 0`.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.PolynomialLR(0.1, total_iters=4, power=1.0)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 1, 4, 6)]
      [0.1, 0.075, 0.0, 0.0]
    """

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        total_iters: int = 5,
        power: float = 1.0,
        last_epoch: int = 0,
    ):
        self.total_iters = _validation.positive_int("total_iters", total_iters)
        self.power = _validation.non_negative("power", power)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)
        return self._per_group(
            lambda g: _evaluate(
                optax.polynomial_schedule(self._base(g), 0.0, self.power, self.total_iters), e
            )
        )


class LinearLR(LRScheduler):
    r"""Scales ``base_lr`` by a factor moving linearly from ``start_factor`` to ``end_factor``.

    .. math::
        \eta_t = \eta_0 \left(f_s + (f_e - f_s)\,\mathrm{clip}(t / N, 0, 1)\right)

    Computed by ``optax.linear_schedule`` from :math:`\eta_0 f_s` to :math:`\eta_0 f_e`.

    Args:
      base_lr: :math:`\eta_0`; or a list, one per parameter group.
      start_factor: :math:`f_s \ge 0`.
      end_factor: :math:`f_e \ge 0`.
      total_iters: :math:`N`, integer ``>= 0`` (0: ``end_factor`` from the start).
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.LinearLR(0.1, start_factor=0.25, total_iters=4)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 4, 5)]
      [0.025, 0.0625, 0.1, 0.1]
    """

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = 0,
    ):
        self.start_factor = _validation.non_negative("start_factor", start_factor)
        self.end_factor = _validation.non_negative("end_factor", end_factor)
        self.total_iters = _validation.non_negative_int("total_iters", total_iters)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)

        def lr(g: int) -> jax.Array:
            base = self._base(g)
            start, end = base * self.start_factor, base * self.end_factor
            if self.total_iters == 0:  # optax's 0-step linear schedule would hold the start LR
                schedule = optax.constant_schedule(end)
            else:
                schedule = optax.linear_schedule(start, end, self.total_iters)
            return _evaluate(schedule, e)

        return self._per_group(lr)


class ConstantLR(LRScheduler):
    r"""Scales ``base_lr`` by ``factor`` for the first ``total_iters`` epochs.

    .. math:: \eta_t = \eta_0 \cdot \begin{cases} f & t < N \\ 1 & t \ge N\end{cases}

    Computed by ``optax.join_schedules`` of two constant schedules; ``t`` is
    truncated to an integer.

    Args:
      base_lr: :math:`\eta_0`; or a list, one per parameter group.
      factor: :math:`f \ge 0`.
      total_iters: :math:`N`, integer ``>= 0``.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ConstantLR(0.1, factor=0.5, total_iters=3)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 3)]
      [0.05, 0.05, 0.1]
    """

    _truncates = True

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = 0,
    ):
        self.factor = _validation.non_negative("factor", factor)
        self.total_iters = _validation.non_negative_int("total_iters", total_iters)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_int(epoch)

        def lr(g: int) -> jax.Array:
            pieces = [self._base(g) * self.factor, self._base(g)]
            schedule = optax.join_schedules(
                [optax.constant_schedule(v) for v in pieces], [self.total_iters]
            )
            return _evaluate(schedule, e)

        return self._per_group(lr)


class PiecewiseConstantSchedule(LRScheduler):
    r"""Absolute LR values that change at boundary epochs.

    .. math:: \eta_t = v_k, \qquad k = \#\{b \in \text{boundaries} : b \le t\}

    Computed by ``optax.join_schedules`` of constant schedules (exact values,
    unlike ``optax.piecewise_constant_schedule``'s products of ratios); ``t``
    is truncated to an integer. As in braintools, every parameter group gets
    the same values.

    Args:
      base_lr: accepted for braintools compatibility and ignored (the values are
        absolute learning rates), except that a list of ``n`` gives ``n``
        parameter groups; the ``base_lr`` attribute (each of ``base_lrs``) is
        ``values[0]``.
      boundaries: strictly increasing epochs (integers ``>= 0``); default ``[1000, 2000]``.
      values: ``len(boundaries) + 1`` learning rates ``>= 0``; default ``[1.0, 0.1, 0.01]``.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range, or ``values`` not one longer than
        ``boundaries`` (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.PiecewiseConstantSchedule(boundaries=[2, 5], values=[0.1, 0.01, 0.001])
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 5)]
      [0.1, 0.01, 0.001]
    """

    _truncates = True

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        boundaries: Sequence[int] | None = None,
        values: Sequence[float] | None = None,
        last_epoch: int = 0,
    ):
        given_base, grouped = _group_values("base_lr", base_lr)
        self._base_lr_arg = _stored(given_base) if grouped else given_base[0]
        self.boundaries = _increasing_ints(
            "boundaries", [1000, 2000] if boundaries is None else boundaries
        )
        given = [1.0, 0.1, 0.01] if values is None else list(values)
        checked = [_validation.non_negative("values", v) for v in given]
        if len(checked) != len(self.boundaries) + 1:
            raise ValueError(
                "values must have exactly one more element than boundaries; got "
                f"len(values)={len(checked)}, len(boundaries)={len(self.boundaries)}."
            )
        self.values = _stored(checked)
        first = checked[0]
        super().__init__([first] * len(given_base) if grouped else first, last_epoch)

    def _described_arg(self, name: str) -> Any:
        if name == "base_lr":
            return self._base_lr_arg
        return super()._described_arg(name)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        schedule = optax.join_schedules(
            [optax.constant_schedule(v) for v in self.values], list(self.boundaries)
        )
        lr = _evaluate(schedule, _epoch_int(epoch))
        return self._per_group(lambda g: lr)


def as_scheduler(lr: float | Sequence[float] | LRScheduler) -> LRScheduler:
    """A scheduler from an optimizer's ``lr`` argument.

    A real number (validated: ``>= 0``, not NaN) becomes :class:`FixedLR`, and
    so does a list or tuple of them (one fixed LR per parameter group); an
    :class:`LRScheduler` is returned as is.

    Args:
      lr: a float, a list of floats or an ``LRScheduler``.

    Returns:
      An ``LRScheduler``.

    Raises:
      ValueError: ``lr`` (or an entry, ``lr[k]``) is negative or NaN, or the list is empty.
      TypeError: ``lr`` is anything else (plain callables such as optax
        schedules are handled by the optimizers, not here).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> type(sch.as_scheduler(0.1)).__name__, sch.as_scheduler([0.1, 0.01]).get_last_lr()
      ('FixedLR', [0.1, 0.01])
    """
    if isinstance(lr, LRScheduler):
        return lr
    if isinstance(lr, (list, tuple)):
        return FixedLR(_group_values("lr", list(lr))[0])  # checked: named lr[k]
    if isinstance(lr, (numbers.Real, np.ndarray, jax.Array)) and not isinstance(lr, bool):
        if np.ndim(lr) != 0:
            raise TypeError(
                f"lr must be a scalar, a list or an LRScheduler, got an array of shape "
                f"{np.shape(lr)}."
            )
        return FixedLR(_validation.non_negative("lr", lr))
    if callable(lr):
        raise TypeError(
            f"lr must be a float or an LRScheduler, got the callable {lr!r}; plain schedule "
            "functions (e.g. optax schedules) are accepted by the optimizers, not by as_scheduler."
        )
    raise TypeError(f"lr must be a float or an LRScheduler, got {type(lr).__name__}: {lr!r}.")
