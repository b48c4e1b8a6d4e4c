"""Schedules with state beyond the epoch: ``CosineAnnealingWarmRestarts``, ``ReduceLROnPlateau``.

Their extra counters (restart position, plateau tracking) are
``SchedulerState`` variables, so they are checkpointed and may be stepped
inside a compiled step like the epoch counter.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from nnx_momentum import _validation
from nnx_momentum.schedulers._support import (
    ArrayLike,
    BaseLR,
    _f32,
    _group_values,
    _read,
    _split_epoch,
    _stored,
    _write,
)
from nnx_momentum.schedulers.base import LRScheduler, SchedulerState

__all__ = ["CosineAnnealingWarmRestarts", "ReduceLROnPlateau"]


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing with warm restarts (SGDR), periods growing by ``T_mult``.

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min}) \frac{1 + \cos(\pi T_{cur} / T_i)}{2}

    where :math:`T_{cur}` counts epochs since the last restart and :math:`T_i`
    is the current period (:math:`T_0, T_0 T_{mult}, T_0 T_{mult}^2, \dots`).
    Both are ``SchedulerState`` extras (whole epochs; :math:`T_{cur}` adds the
    ``epoch_fraction``); ``step()`` advances them, ``step(epoch)`` recomputes
    them in closed form, fractional epochs included (``step(epoch + i / iters)``
    within an epoch, as in torch and braintools).

    After a fractional jump, ``step()`` keeps the fraction across a restart
    (torch's ``T_cur - T_i``, which is also the closed form at that epoch);
    braintools 0.4.0 resets :math:`T_{cur}` to 0 there.

    Args:
      base_lr: :math:`\eta_0`; or a list, one per parameter group.
      T_0: first period, integer ``>= 1``.
      T_mult: period multiplier, integer ``>= 1``.
      eta_min: :math:`\eta_{min} \ge 0` (every group's).
      last_epoch: initial epoch (braintools starts the first period there).

    Raises:
      ValueError: an argument out of range (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.CosineAnnealingWarmRestarts(0.1, T_0=3)
      >>> lrs = []
      >>> for _ in range(4):
      ...     s.step(); lrs.append(round(s.get_last_lr()[0], 6))
      >>> lrs
      [0.075, 0.025, 0.1, 0.075]
      >>> s.step(1.5); round(s.get_last_lr()[0], 6)
      0.05
    """

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        T_0: int = 10,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = 0,
    ):
        self.T_0 = _validation.positive_int("T_0", T_0)
        self.T_mult = _validation.positive_int("T_mult", T_mult)
        self.eta_min = _validation.non_negative("eta_min", eta_min)
        self.T_cur = SchedulerState(jnp.asarray(0, jnp.int32))
        self.T_i = SchedulerState(jnp.asarray(T_0, jnp.int32))
        super().__init__(base_lr, last_epoch)

    def _position(self, whole: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(T_cur, T_i)`` at the whole epoch ``whole`` counted from a restart at epoch 0."""
        e = jnp.asarray(whole, jnp.int32)
        t0, m = self.T_0, self.T_mult
        if m == 1:
            return e % t0, jnp.full(jnp.shape(e), t0, jnp.int32)
        n = jnp.floor(jnp.log(e.astype(jnp.float32) / t0 * (m - 1) + 1) / math.log(m))
        n = jnp.maximum(jnp.nan_to_num(n), 0).astype(jnp.int32)

        def start(k: jax.Array) -> jax.Array:  # first epoch of period k
            return t0 * (jnp.power(m, k) - 1) // (m - 1)

        # correct float rounding of the logarithm at period boundaries
        n = jnp.where(start(n + 1) <= e, n + 1, n)
        n = jnp.where((n > 0) & (start(n) > e), n - 1, n)
        return e - start(n), t0 * jnp.power(m, n)

    def _lr(self, t_cur: jax.Array, frac: jax.Array, t_i: jax.Array) -> jax.Array:
        ratio = (jnp.asarray(t_cur).astype(jnp.float32) + frac) / jnp.asarray(t_i).astype(
            jnp.float32
        )
        cos = (1 + jnp.cos(jnp.pi * ratio)) / 2
        return self._per_group(lambda g: self.eta_min + (self._base(g) - self.eta_min) * cos)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        whole, frac = _split_epoch(epoch)
        t_cur, t_i = self._position(whole)
        return self._lr(t_cur, frac, t_i)

    def get_lr(self) -> jax.Array:
        return self._lr(_read(self.T_cur), _read(self.epoch_fraction), _read(self.T_i))

    def step(self, epoch: ArrayLike | None = None) -> None:
        if epoch is not None:
            self._step_to(*self._next_epoch(epoch))
            return
        t_cur, t_i = _read(self.T_cur) + 1, _read(self.T_i)
        restart = t_cur >= t_i
        _write(self.T_cur, jnp.where(restart, 0, t_cur))
        _write(self.T_i, jnp.where(restart, t_i * self.T_mult, t_i))
        super()._step_to(*self._next_epoch(None))

    def _step_to(self, whole: jax.Array, frac: jax.Array) -> None:
        t_cur, t_i = self._position(whole)
        _write(self.T_cur, t_cur)
        _write(self.T_i, t_i)
        super()._step_to(whole, frac)


class ReduceLROnPlateau(LRScheduler):
    r"""Multiplies the LR by ``factor`` when a metric stops improving.

    A metric :math:`m` improves on the best so far :math:`b` when (``mode='min'``)
    :math:`m < b(1-\theta)` (``rel``) or :math:`m < b - \theta` (``abs``), and
    symmetrically for ``'max'``. After more than ``patience`` epochs without
    improvement (outside a cooldown), every parameter group's LR is reduced:

    .. math:: \eta^{(g)} \leftarrow \max(\eta^{(g)} \cdot \text{factor},\ \eta^{(g)}_{min})

    each applied only if it lowers :math:`\eta^{(g)}` by more than ``eps``; then
    ``cooldown`` epochs follow during which bad epochs are not counted.
    ``best``, ``num_bad_epochs`` and ``cooldown_counter`` are ``SchedulerState``.

    The LR depends on the metric history, so there is no :meth:`lr_at` and the
    scheduler cannot serve as an optax schedule (``__call__`` raises ``TypeError``).

    Args:
      base_lr: initial learning rate; or a list, one per parameter group.
      mode: ``'min'`` or ``'max'``.
      factor: reduction factor in ``[0, 1)``.
      patience: bad epochs tolerated before a reduction (integer ``>= 0``).
      threshold: :math:`\theta \ge 0`.
      threshold_mode: ``'rel'`` or ``'abs'``.
      cooldown: epochs to wait after a reduction (integer ``>= 0``).
      min_lr: lower bound :math:`\eta_{min} \ge 0`, shared; or a list, one per
        group (a shorter list is padded with its last value, as in braintools).
      eps: minimal decay ``>= 0``.
      last_epoch: initial epoch.

    Raises:
      ValueError: an argument out of range, or more ``min_lr`` values than
        groups (the message names it).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ReduceLROnPlateau(0.1, factor=0.5, patience=1)
      >>> for loss in [1.0, 1.0, 1.0]:
      ...     s.step(loss)
      >>> s.get_last_lr()
      [0.05]
      >>> g = sch.ReduceLROnPlateau([0.1, 0.2], factor=0.5, patience=0, min_lr=[0.08, 0.0])
      >>> for loss in [1.0, 1.0]:
      ...     g.step(loss)
      >>> g.get_last_lr()
      [0.08, 0.1]
    """

    def __init__(
        self,
        base_lr: BaseLR = 1e-3,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: BaseLR = 0.0,
        eps: float = 1e-8,
        last_epoch: int = 0,
    ):
        self.mode = _validation.one_of("mode", mode, ("min", "max"))
        self.factor = _validation.in_unit_interval("factor", factor)
        self.patience = _validation.non_negative_int("patience", patience)
        self.threshold = _validation.non_negative("threshold", threshold)
        self.threshold_mode = _validation.one_of("threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = _validation.non_negative_int("cooldown", cooldown)
        n_groups = len(_group_values("base_lr", base_lr)[0])
        mins, listed = _group_values("min_lr", min_lr)
        if len(mins) > n_groups:
            raise ValueError(
                f"min_lr has {len(mins)} values for {n_groups} parameter group(s) (base_lr): "
                "give a float or at most one per group."
            )
        self.min_lr = mins[0]
        self._min_listed = listed
        if listed:
            self._min_lrs = _stored(mins + mins[-1:] * (n_groups - len(mins)))
        self.eps = _validation.non_negative("eps", eps)
        worst = jnp.inf if mode == "min" else -jnp.inf
        self.best = SchedulerState(jnp.asarray(worst, jnp.float32))
        self.num_bad_epochs = SchedulerState(jnp.asarray(0, jnp.int32))
        self.cooldown_counter = SchedulerState(jnp.asarray(0, jnp.int32))
        super().__init__(base_lr, last_epoch)

    @property
    def min_lrs(self) -> list[Any]:
        """The lower bound of each parameter group (braintools' name)."""
        return list(self._min_lrs) if self._min_listed else [self.min_lr] * self.n_groups

    def _min_array(self) -> Any:
        if self._grouped and self._min_listed:
            return _f32(self._min_lrs)
        return self.min_lr  # shared (and a float's list of one)

    def _described_arg(self, name: str) -> Any:
        if name == "min_lr":
            return self.min_lrs if self._min_listed else self.min_lr
        return super()._described_arg(name)

    def _initial_lr(self) -> ArrayLike:
        return self._base_array()

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        raise TypeError(
            "ReduceLROnPlateau has no closed-form LR: it depends on the metrics passed to "
            "step(metric). It cannot be used as an optax schedule; read current_lr instead."
        )

    def get_lr(self) -> jax.Array:
        return _f32(_read(self.current_lr))

    def _is_better(self, metric: jax.Array, best: jax.Array) -> jax.Array:
        t = self.threshold
        if self.mode == "min":
            return metric < (best * (1 - t) if self.threshold_mode == "rel" else best - t)
        return metric > (best * (1 + t) if self.threshold_mode == "rel" else best + t)

    # The override is deliberate: braintools' ReduceLROnPlateau.step takes the metric first.
    def step(  # type: ignore[override]
        self, metric: ArrayLike | None = None, epoch: ArrayLike | None = None
    ) -> None:
        """Records ``metric`` for the next epoch (or ``epoch``) and maybe reduces the LRs.

        Args:
          metric: the monitored value (a scalar; traced or not).
          epoch: the epoch to move to (default: the next one).

        Raises:
          TypeError: ``metric`` is missing.
          ValueError: a negative or non-finite ``epoch`` (nothing is changed).
        """
        if metric is None:
            raise TypeError("ReduceLROnPlateau.step() needs the metric: call step(metric).")
        m = _f32(metric)
        whole, frac = self._next_epoch(epoch)
        _write(self.last_epoch, whole)
        _write(self.epoch_fraction, frac)
        cooldown = _read(self.cooldown_counter)
        best = _read(self.best)
        bad = _read(self.num_bad_epochs)
        in_cooldown = cooldown > 0
        better = self._is_better(m, best)
        new_best = jnp.where(~in_cooldown & better, m, best)
        new_bad = jnp.where(in_cooldown, bad, jnp.where(better, 0, bad + 1))
        reduce = ~in_cooldown & (new_bad > self.patience)
        _write(self.best, new_best)
        _write(self.num_bad_epochs, jnp.where(reduce, 0, new_bad))
        _write(
            self.cooldown_counter,
            jnp.where(reduce, self.cooldown, jnp.where(in_cooldown, cooldown - 1, cooldown)),
        )
        lr = _read(self.current_lr)
        reduced = jnp.maximum(lr * self.factor, self._min_array())
        apply = reduce & (lr - reduced > self.eps)
        _write(self.current_lr, _f32(jnp.where(apply, reduced, lr)))

    def _step_to(self, whole: jax.Array, frac: jax.Array) -> None:
        raise TypeError("ReduceLROnPlateau needs a metric at every step: call step(metric).")
