"""Schedules with state beyond the epoch: ``CosineAnnealingWarmRestarts``, ``ReduceLROnPlateau``.

Their extra counters (restart position, plateau tracking) are
``SchedulerState`` variables, so they are checkpointed and may be stepped
inside a compiled step like the epoch counter.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nnx_momentum import _validation
from nnx_momentum.schedulers.base import LRScheduler, SchedulerState, _epoch_int, _f32

__all__ = ["CosineAnnealingWarmRestarts", "ReduceLROnPlateau"]

ArrayLike = jax.typing.ArrayLike


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing with warm restarts (SGDR), periods growing by ``T_mult``.

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min}) \frac{1 + \cos(\pi T_{cur} / T_i)}{2}

    where :math:`T_{cur}` counts epochs since the last restart and :math:`T_i`
    is the current period (:math:`T_0, T_0 T_{mult}, T_0 T_{mult}^2, \dots`).
    Both are ``SchedulerState`` extras; ``step()`` advances them, ``step(epoch)``
    recomputes them in closed form.

    Args:
      base_lr: :math:`\eta_0`.
      T_0: first period, integer ``>= 1``.
      T_mult: period multiplier, integer ``>= 1``.
      eta_min: :math:`\eta_{min} \ge 0`.
      last_epoch: initial epoch (braintools starts the first period there).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.CosineAnnealingWarmRestarts(0.1, T_0=3)
      >>> lrs = []
      >>> for _ in range(4):
      ...     s.step(); lrs.append(round(s.get_last_lr()[0], 6))
      >>> lrs
      [0.075, 0.025, 0.1, 0.075]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
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

    def _position(self, epoch: ArrayLike) -> tuple[jax.Array, jax.Array]:
        """``(T_cur, T_i)`` at ``epoch`` counted from a restart at epoch 0."""
        e = _epoch_int(epoch)
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

    def _lr(self, t_cur: ArrayLike, t_i: ArrayLike) -> jax.Array:
        ratio = jnp.asarray(t_cur).astype(jnp.float32) / jnp.asarray(t_i).astype(jnp.float32)
        return _f32(
            self.eta_min + (self.base_lr - self.eta_min) * (1 + jnp.cos(jnp.pi * ratio)) / 2
        )

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        return self._lr(*self._position(epoch))

    def get_lr(self) -> jax.Array:
        return self._lr(self.T_cur[...], self.T_i[...])

    def step(self, epoch: ArrayLike | None = None) -> None:
        if epoch is None:
            t_cur = self.T_cur[...] + 1
            restart = t_cur >= self.T_i[...]
            self.T_cur[...] = jnp.where(restart, 0, t_cur)
            self.T_i[...] = jnp.where(restart, self.T_i[...] * self.T_mult, self.T_i[...])
        else:
            t_cur, t_i = self._position(epoch)
            self.T_cur[...] = t_cur
            self.T_i[...] = t_i
        self.last_epoch[...] = self._next_epoch(epoch)
        self.current_lr[...] = self.get_lr()


class ReduceLROnPlateau(LRScheduler):
    r"""Multiplies the LR by ``factor`` when a metric stops improving.

    A metric :math:`m` improves on the best so far :math:`b` when (``mode='min'``)
    :math:`m < b(1-\theta)` (``rel``) or :math:`m < b - \theta` (``abs``), and
    symmetrically for ``'max'``. After more than ``patience`` epochs without
    improvement (outside a cooldown):

    .. math:: \eta \leftarrow \max(\eta \cdot \text{factor},\ \eta_{min})

    applied only if it lowers :math:`\eta` by more than ``eps``; then
    ``cooldown`` epochs follow during which bad epochs are not counted.
    ``best``, ``num_bad_epochs`` and ``cooldown_counter`` are ``SchedulerState``.

    The LR depends on the metric history, so there is no :meth:`lr_at` and the
    scheduler cannot serve as an optax schedule (``__call__`` raises ``TypeError``).

    Args:
      base_lr: initial learning rate.
      mode: ``'min'`` or ``'max'``.
      factor: reduction factor in ``[0, 1)``.
      patience: bad epochs tolerated before a reduction (integer ``>= 0``).
      threshold: :math:`\theta \ge 0`.
      threshold_mode: ``'rel'`` or ``'abs'``.
      cooldown: epochs to wait after a reduction (integer ``>= 0``).
      min_lr: lower bound :math:`\eta_{min} \ge 0`.
      eps: minimal decay ``>= 0``.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ReduceLROnPlateau(0.1, factor=0.5, patience=1)
      >>> for loss in [1.0, 1.0, 1.0]:
      ...     s.step(loss)
      >>> round(s.get_last_lr()[0], 6)
      0.05
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
        last_epoch: int = 0,
    ):
        self.mode = _validation.one_of("mode", mode, ("min", "max"))
        self.factor = _validation.in_unit_interval("factor", factor)
        self.patience = _validation.non_negative_int("patience", patience)
        self.threshold = _validation.non_negative("threshold", threshold)
        self.threshold_mode = _validation.one_of("threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = _validation.non_negative_int("cooldown", cooldown)
        self.min_lr = _validation.non_negative("min_lr", min_lr)
        self.eps = _validation.non_negative("eps", eps)
        worst = jnp.inf if mode == "min" else -jnp.inf
        self.best = SchedulerState(jnp.asarray(worst, jnp.float32))
        self.num_bad_epochs = SchedulerState(jnp.asarray(0, jnp.int32))
        self.cooldown_counter = SchedulerState(jnp.asarray(0, jnp.int32))
        super().__init__(base_lr, last_epoch)

    def _initial_lr(self) -> ArrayLike:
        return self.base_lr

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        raise TypeError(
            "ReduceLROnPlateau has no closed-form LR: it depends on the metrics passed to "
            "step(metric). It cannot be used as an optax schedule; read current_lr instead."
        )

    def get_lr(self) -> jax.Array:
        return _f32(self.current_lr[...])

    def _is_better(self, metric: jax.Array, best: jax.Array) -> jax.Array:
        t = self.threshold
        if self.mode == "min":
            return metric < (best * (1 - t) if self.threshold_mode == "rel" else best - t)
        return metric > (best * (1 + t) if self.threshold_mode == "rel" else best + t)

    # The override is deliberate: braintools' ReduceLROnPlateau.step takes the metric first.
    def step(  # type: ignore[override]
        self, metric: ArrayLike | None = None, epoch: ArrayLike | None = None
    ) -> None:
        """Records ``metric`` for the next epoch (or ``epoch``) and maybe reduces the LR."""
        if metric is None:
            raise TypeError("ReduceLROnPlateau.step() needs the metric: call step(metric).")
        m = _f32(metric)
        self.last_epoch[...] = self._next_epoch(epoch)
        cooldown = self.cooldown_counter[...]
        best = self.best[...]
        bad = self.num_bad_epochs[...]
        in_cooldown = cooldown > 0
        better = self._is_better(m, best)
        new_best = jnp.where(~in_cooldown & better, m, best)
        new_bad = jnp.where(in_cooldown, bad, jnp.where(better, 0, bad + 1))
        reduce = ~in_cooldown & (new_bad > self.patience)
        self.best[...] = new_best
        self.num_bad_epochs[...] = jnp.where(reduce, 0, new_bad)
        self.cooldown_counter[...] = jnp.where(
            reduce, self.cooldown, jnp.where(in_cooldown, cooldown - 1, cooldown)
        )
        lr = self.current_lr[...]
        reduced = jnp.maximum(lr * self.factor, self.min_lr)
        apply = reduce & (lr - reduced > self.eps)
        self.current_lr[...] = _f32(jnp.where(apply, reduced, lr))
