"""Closed-form schedules that rise: warmups and cycles (pure functions of the epoch).

``WarmupScheduler`` and ``WarmupCosineSchedule`` evaluate ``optax.schedules``
functions; ``CyclicLR`` (no optax counterpart) and ``OneCycleLR`` (optax's
ends elsewhere) are written out, each saying why. All are evaluated between
epochs too (a fractional epoch is not truncated), and run once per parameter
group for a list of base LRs (``max_lr`` for ``CyclicLR`` and ``OneCycleLR``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nnx_momentum import _validation
from nnx_momentum.schedulers._support import (
    ArrayLike,
    BaseLR,
    _cosine,
    _epoch_float,
    _evaluate,
    _group_values,
    _stored,
)
from nnx_momentum.schedulers.base import LRScheduler

__all__ = [
    "CyclicLR",
    "OneCycleLR",
    "WarmupCosineSchedule",
    "WarmupScheduler",
]


class WarmupScheduler(LRScheduler):
    r"""Linear warmup from ``warmup_start_lr`` to ``base_lr``, then constant.

    .. math:: \eta_t = \eta_s + (\eta_0 - \eta_s) \min(t / W, 1)

    Computed by ``optax.linear_schedule``.

    Args:
      base_lr: learning rate after warmup :math:`\eta_0`; or a list, one per
        parameter group.
      warmup_epochs: :math:`W`, integer ``>= 0`` (0: no warmup).
      warmup_start_lr: :math:`\eta_s`, ``>= 0`` (every group's).
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.WarmupScheduler(0.1, warmup_epochs=4)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 1, 4, 8)]
      [0.0, 0.025, 0.1, 0.1]
    """

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        warmup_epochs: int = 5,
        warmup_start_lr: float = 0.0,
        last_epoch: int = 0,
    ):
        self.warmup_epochs = _validation.non_negative_int("warmup_epochs", warmup_epochs)
        self.warmup_start_lr = _validation.non_negative("warmup_start_lr", warmup_start_lr)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)

        def lr(g: int) -> jax.Array:
            if self.warmup_epochs == 0:  # optax's 0-step linear schedule would hold the start
                schedule = optax.constant_schedule(self._base(g))
            else:
                schedule = optax.linear_schedule(
                    self.warmup_start_lr, self._base(g), self.warmup_epochs
                )
            return _evaluate(schedule, e)

        return self._per_group(lr)


class WarmupCosineSchedule(LRScheduler):
    r"""Linear warmup to ``base_lr`` over ``warmup_steps``, then cosine decay to ``eta_min``.

    With :math:`W` = ``warmup_steps`` and :math:`N` = ``total_steps``:

    .. math::
        \eta_t = \begin{cases}
          \eta_s + (\eta_0 - \eta_s)\, t / W & t < W \\
          \eta_{min} + (\eta_0 - \eta_{min}) \frac{1 + \cos(\pi p_t)}{2} & t \ge W
        \end{cases},\qquad
        p_t = \mathrm{clip}\!\left(\frac{t - W}{\max(N - W, 1)}, 0, 1\right)

    Computed by ``optax.join_schedules`` of ``optax.linear_schedule`` and
    ``optax.cosine_decay_schedule`` (what ``optax.warmup_cosine_decay_schedule``
    joins, there with a decay of ``N - W`` steps, which is refused for
    ``N = W``, and an end value that cannot be reached from a peak of 0).

    Args:
      base_lr: peak learning rate :math:`\eta_0`; or a list, one per parameter group.
      warmup_steps: :math:`W`, integer ``>= 0``.
      total_steps: :math:`N`, integer ``>= 1`` and ``>= warmup_steps``.
      warmup_start_lr: :math:`\eta_s \ge 0` (every group's).
      eta_min: final learning rate :math:`\eta_{min} \ge 0` (every group's).
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.WarmupCosineSchedule(0.1, warmup_steps=2, total_steps=6)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 1, 2, 4, 6)]
      [0.0, 0.05, 0.1, 0.05, 0.0]
    """

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        warmup_steps: int = 1000,
        total_steps: int = 10000,
        warmup_start_lr: float = 0.0,
        eta_min: float = 0.0,
        last_epoch: int = 0,
    ):
        self.warmup_steps = _validation.non_negative_int("warmup_steps", warmup_steps)
        self.total_steps = _validation.positive_int("total_steps", total_steps)
        if self.total_steps < self.warmup_steps:
            raise ValueError(
                f"total_steps must be >= warmup_steps ({warmup_steps!r}), got {total_steps!r}."
            )
        self.warmup_start_lr = _validation.non_negative("warmup_start_lr", warmup_start_lr)
        self.eta_min = _validation.non_negative("eta_min", eta_min)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)
        w = self.warmup_steps

        def lr(g: int) -> jax.Array:
            base = self._base(g)
            warmup: Any = (
                optax.linear_schedule(self.warmup_start_lr, base, w)
                if w > 0
                else optax.constant_schedule(self.warmup_start_lr)  # never reached for t >= 0
            )
            decay = _cosine(base, self.eta_min, max(self.total_steps - w, 1))
            return _evaluate(optax.join_schedules([warmup, decay], [w]), e)

        return self._per_group(lr)


def _paired_groups(
    base_name: str, base: Any, other_name: str, other: Any
) -> tuple[list[Any], list[Any], bool]:
    """Two per-group arguments (each a float or a list), broadcast to one length."""
    bases, base_listed = _group_values(base_name, base)
    others, other_listed = _group_values(other_name, other)
    if base_listed and other_listed and len(bases) != len(others):
        raise ValueError(
            f"{other_name} must be a float or a list as long as {base_name} (one per "
            f"parameter group); got {len(others)} values for {len(bases)} groups."
        )
    n = max(len(bases), len(others))
    if len(bases) < n:
        bases = bases * n
    if len(others) < n:
        others = others * n
    return bases, others, base_listed or other_listed


class CyclicLR(LRScheduler):
    r"""Cyclical LR between ``base_lr`` and ``max_lr`` (Smith, 2017).

    With :math:`L = u + d` the cycle length (``step_size_up`` + ``step_size_down``),
    :math:`c = \lfloor 1 + t/L \rfloor`, :math:`x = 1 + t/L - c` and
    :math:`r = u / L`:

    .. math::
        h = \begin{cases} x / r & x \le r \\ (x - 1)/(r - 1) & \text{otherwise}\end{cases},
        \qquad \eta_t = \eta_0 + (\eta_{max} - \eta_0)\, h \, \sigma

    with the scale :math:`\sigma = 1` (``triangular``), :math:`2^{1-c}`
    (``triangular2``), :math:`\gamma^t` (``exp_range``), or
    ``scale_fn(c)`` / ``scale_fn(t)`` (``scale_mode`` ``'cycle'`` / ``'iterations'``).
    Each parameter group cycles between its own :math:`\eta_0` and :math:`\eta_{max}`.

    Args:
      base_lr: lower bound :math:`\eta_0`; or a list, one per parameter group.
      max_lr: upper bound :math:`\eta_{max}`; or a list, one per parameter group
        (a float is shared by every group, and a list makes groups of a float
        ``base_lr`` too).
      step_size_up: epochs of the rising half, integer ``>= 1``.
      step_size_down: epochs of the falling half (default ``step_size_up``).
      mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``.
      gamma: :math:`\gamma > 0` for ``exp_range``.
      scale_fn: optional traceable scale function; overrides ``mode``.
      scale_mode: ``'cycle'`` or ``'iterations'``: what ``scale_fn`` receives.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range, or lists of different lengths for
        ``base_lr`` and ``max_lr`` (the message names it).
      TypeError: ``scale_fn`` is not callable.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.CyclicLR(0.01, max_lr=0.1, step_size_up=2)
      >>> [round(float(s.lr_at(t)), 6) for t in range(5)]
      [0.01, 0.055, 0.1, 0.055, 0.01]
      >>> sch.CyclicLR([0.01, 0.02], max_lr=[0.1, 0.3], step_size_up=2).max_lrs
      [0.1, 0.3]
    """

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        max_lr: BaseLR = 1e-2,
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[jax.Array], ArrayLike] | None = None,
        scale_mode: str = "cycle",
        last_epoch: int = 0,
    ):
        bases, maxes, grouped = _paired_groups("base_lr", base_lr, "max_lr", max_lr)
        self.max_lr = maxes[0]
        if grouped:
            self._max_lrs = _stored(maxes)
        self.step_size_up = _validation.positive_int("step_size_up", step_size_up)
        self.step_size_down = (
            None
            if step_size_down is None
            else _validation.positive_int("step_size_down", step_size_down)
        )
        self.mode = _validation.one_of("mode", mode, ("triangular", "triangular2", "exp_range"))
        self.gamma = _validation.positive("gamma", gamma)
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be a callable or None, got {scale_fn!r}.")
        self.scale_fn = scale_fn
        self.scale_mode = _validation.one_of("scale_mode", scale_mode, ("cycle", "iterations"))
        super().__init__(bases if grouped else bases[0], last_epoch)

    @property
    def max_lrs(self) -> list[Any]:
        """The upper bound of each parameter group (braintools' name)."""
        return list(self._max_lrs) if self._grouped else [self.max_lr]

    def _max(self, group: int) -> Any:
        return self._max_lrs[group] if self._grouped else self.max_lr

    def _described_arg(self, name: str) -> Any:
        if name == "max_lr":
            return self.max_lrs if self._grouped else self.max_lr
        return super()._described_arg(name)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        # hand-written: optax has no cyclical schedule (nor triangular2/exp_range scaling)
        e = _epoch_float(epoch)
        down = self.step_size_down or self.step_size_up
        total = self.step_size_up + down
        ratio = self.step_size_up / total
        cycle = jnp.floor(1 + e / total)
        x = 1.0 + e / total - cycle
        height = jnp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        scale: ArrayLike
        if self.scale_fn is not None:
            scale = self.scale_fn(cycle if self.scale_mode == "cycle" else e)
        elif self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1.0 / jnp.power(2.0, cycle - 1)
        else:
            scale = jnp.power(jnp.float32(self.gamma), e)
        return self._per_group(
            lambda g: self._base(g) + (self._max(g) - self._base(g)) * scale * height
        )


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy: warm up to ``max_lr``, then anneal to a tiny LR.

    With :math:`W = p\,N` (``pct_start`` times ``total_steps``),
    :math:`\eta_0 = \eta_{max}/\text{div\_factor}` and
    :math:`\eta_{min} = \eta_{max}/\text{final\_div\_factor}`:

    .. math::
        \eta_t = \begin{cases}
          \eta_0 + \min(t/W, 1)(\eta_{max} - \eta_0) & t \le W \\
          \eta_{min} + f(a_t)(\eta_{max} - \eta_{min}) & t > W
        \end{cases},\quad a_t = \mathrm{clip}\!\left(\frac{t - W}{(1-p)N}, 0, 1\right)

    with :math:`f(a) = (1 + \cos \pi a)/2` (``'cos'``) or :math:`1 - a` (``'linear'``),
    per parameter group for a list of ``max_lr``. The schedule has no ``base_lr``
    argument; the ``base_lr`` attribute is the initial LR :math:`\eta_0`
    (``base_lrs``: each group's). (braintools 0.4.0 has no ``three_phase`` option.)

    Args:
      max_lr: peak learning rate; or a list, one per parameter group.
      total_steps: :math:`N`; or give both ``epochs`` and ``steps_per_epoch``.
      epochs: number of epochs (with ``steps_per_epoch``).
      steps_per_epoch: steps per epoch (with ``epochs``).
      pct_start: :math:`p \in (0, 1)`, fraction of the cycle spent warming up.
      anneal_strategy: ``'cos'`` or ``'linear'``.
      div_factor: :math:`\eta_{max}/\eta_0 > 0`.
      final_div_factor: :math:`\eta_{max}/\eta_{min} > 0`.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range, or neither ``total_steps`` nor both
        ``epochs`` and ``steps_per_epoch`` (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.OneCycleLR(max_lr=0.1, total_steps=8)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 1, 3)]
      [0.004, 0.044, 0.097194]
      >>> sch.OneCycleLR(max_lr=[0.1, 0.2], total_steps=8).get_last_lr()
      [0.004, 0.008]
    """

    def __init__(
        self,
        max_lr: BaseLR = 1e-2,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        last_epoch: int = 0,
    ):
        maxes, grouped = _group_values("max_lr", max_lr)
        self.max_lr = maxes[0]
        if grouped:
            self._max_lrs = _stored(maxes)
        self.epochs = None if epochs is None else _validation.positive_int("epochs", epochs)
        self.steps_per_epoch = (
            None
            if steps_per_epoch is None
            else _validation.positive_int("steps_per_epoch", steps_per_epoch)
        )
        self.total_steps: int | None
        if total_steps is not None:
            self.total_steps = _validation.positive_int("total_steps", total_steps)
        elif self.epochs is None or self.steps_per_epoch is None:
            raise ValueError(
                "total_steps is required unless both epochs and steps_per_epoch are given; got "
                f"total_steps=None, epochs={epochs!r}, steps_per_epoch={steps_per_epoch!r}."
            )
        else:
            self.total_steps = None
        pct = _validation.in_unit_interval("pct_start", pct_start)
        if not _validation.is_traced(pct) and pct == 0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}.")
        self.pct_start = pct
        self.anneal_strategy = _validation.one_of(
            "anneal_strategy", anneal_strategy, ("cos", "linear")
        )
        self.div_factor = _validation.positive("div_factor", div_factor)
        self.final_div_factor = _validation.positive("final_div_factor", final_div_factor)
        self.min_lr = self.max_lr / self.final_div_factor
        bases = [m / self.div_factor for m in maxes]
        super().__init__(bases if grouped else bases[0], last_epoch)

    @property
    def n_steps(self) -> int:
        """The cycle length: ``total_steps`` or ``epochs * steps_per_epoch``."""
        if self.total_steps is not None:
            return self.total_steps
        assert self.epochs is not None and self.steps_per_epoch is not None
        return self.epochs * self.steps_per_epoch

    @property
    def max_lrs(self) -> list[Any]:
        """The peak LR of each parameter group (braintools' name)."""
        return list(self._max_lrs) if self._grouped else [self.max_lr]

    @property
    def min_lrs(self) -> list[Any]:
        """The final LR of each parameter group: ``max_lr / final_div_factor``."""
        return [m / self.final_div_factor for m in self.max_lrs]

    def _max(self, group: int) -> Any:
        return self._max_lrs[group] if self._grouped else self.max_lr

    def _described_arg(self, name: str) -> Any:
        if name == "max_lr":
            return self.max_lrs if self._grouped else self.max_lr
        return super()._described_arg(name)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        # hand-written: optax's 1cycle ends at max_lr/div/final_div, braintools' at max_lr/final_div
        e = _epoch_float(epoch)
        n = self.n_steps
        warmup = self.pct_start * n
        up = jnp.minimum(e / warmup, 1.0)
        a = jnp.clip((e - warmup) / ((1 - self.pct_start) * n), 0.0, 1.0)
        f = (1 + jnp.cos(jnp.pi * a)) / 2 if self.anneal_strategy == "cos" else 1 - a
        in_warmup = e <= warmup

        def lr(g: int) -> jax.Array:
            base, peak = self._base(g), self._max(g)
            low = self.min_lr if not self._grouped else peak / self.final_div_factor
            warm_lr = base + up * (peak - base)
            anneal_lr = low + f * (peak - low)
            return jnp.where(in_warmup, warm_lr, anneal_lr)

        return self._per_group(lr)
