"""Composite schedules: ``ChainedScheduler`` and ``SequentialLR``.

Their children are sub-nodes (an ``nnx.List``), so the children's state is
part of the composite's state, its ``state_dict`` and every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nnx_momentum.schedulers.base import LRScheduler, _epoch_int, _f32, _increasing_ints
from nnx_momentum.schedulers.stateful import ReduceLROnPlateau
from nnx_momentum.tree import live_variables

__all__ = ["ChainedScheduler", "SequentialLR"]

ArrayLike = jax.typing.ArrayLike


def _check_children(name: str, schedulers: Any) -> list[LRScheduler]:
    if isinstance(schedulers, LRScheduler) or not isinstance(schedulers, (list, tuple, nnx.List)):
        raise TypeError(f"{name} must be a list of LRScheduler, got {schedulers!r}.")
    children = list(schedulers)
    if not children:
        raise ValueError(f"{name} must not be empty, got {schedulers!r}.")
    for child in children:
        if not isinstance(child, LRScheduler):
            raise TypeError(
                f"{name} must contain only LRScheduler instances, got {type(child).__name__}."
            )
    if len({id(c) for c in children}) != len(children):
        raise ValueError(f"{name} must not contain the same scheduler twice.")
    return children


class ChainedScheduler(LRScheduler):
    r"""Applies several schedulers at once: their LR factors multiply.

    With :math:`\eta^{(k)}_t` and :math:`\eta^{(k)}_0` the LR and base LR of child
    :math:`k` (a child with a zero base LR contributes a factor 0):

    .. math:: \eta_t = \eta^{(1)}_0 \prod_k \frac{\eta^{(k)}_t}{\eta^{(k)}_0}

    The children are sub-nodes (an ``nnx.List``), so their state is part of
    this scheduler's state. ``step()`` steps every child; a
    ``ReduceLROnPlateau`` child needs ``step(metric=...)``.

    Args:
      schedulers: a non-empty list of schedulers.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ChainedScheduler([
      ...     sch.LinearLR(0.1, start_factor=0.5, total_iters=2),
      ...     sch.ExponentialLR(0.1, gamma=0.5)])
      >>> s.step()
      >>> round(s.get_last_lr()[0], 6)
      0.0375
    """

    def __init__(self, schedulers: Sequence[LRScheduler]):
        children = _check_children("schedulers", schedulers)
        self.schedulers = nnx.List(children)
        super().__init__(children[0].base_lr, 0)

    def _described_arg(self, name: str) -> Any:
        return list(self.schedulers) if name == "schedulers" else super()._described_arg(name)

    def _combine(self, lrs: Sequence[jax.Array]) -> jax.Array:
        lr = jnp.float32(self.base_lr)
        for child, child_lr in zip(self.schedulers, lrs, strict=True):
            if child.base_lr == 0:
                lr = lr * 0.0
            else:
                lr = lr * (child_lr / child.base_lr)
        return _f32(lr)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        return self._combine([child.lr_at(epoch) for child in self.schedulers])

    def get_lr(self) -> jax.Array:
        return self._combine([child.get_lr() for child in self.schedulers])

    def step(self, epoch: ArrayLike | None = None, *, metric: ArrayLike | None = None) -> None:
        """Steps every child (passing ``metric`` to ``ReduceLROnPlateau`` children)."""
        plateau = any(isinstance(c, ReduceLROnPlateau) for c in self.schedulers)
        if plateau and metric is None:
            raise TypeError(
                "ChainedScheduler.step() holds a ReduceLROnPlateau: call step(metric=...)."
            )
        for child in self.schedulers:
            if isinstance(child, ReduceLROnPlateau):
                child.step(metric, epoch)
            else:
                child.step(epoch)
        self.last_epoch[...] = self._next_epoch(epoch)
        self.current_lr[...] = self.get_lr()


class SequentialLR(LRScheduler):
    r"""Runs schedulers one after another, switching at the milestone epochs.

    With milestones :math:`m_1 < \dots < m_{K-1}` and :math:`m_0 = 0`, epoch
    :math:`t` belongs to child :math:`k = \#\{i \ge 1 : m_i \le t\}`, which is
    stepped to its own epoch :math:`t - m_k`:

    .. math:: \eta_t = \eta^{(k)}_{t - m_k}

    Only the active child's state changes at a step. The children are
    sub-nodes (an ``nnx.List``).

    Args:
      schedulers: ``K`` schedulers (not ``ReduceLROnPlateau``).
      milestones: ``K - 1`` strictly increasing epochs.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.SequentialLR(
      ...     [sch.ConstantLR(0.1, factor=1.0, total_iters=0), sch.ExponentialLR(0.1, gamma=0.5)],
      ...     milestones=[3])
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 3, 4, 5)]
      [0.1, 0.1, 0.05, 0.025]
    """

    def __init__(
        self, schedulers: Sequence[LRScheduler], milestones: Sequence[int], last_epoch: int = 0
    ):
        children = _check_children("schedulers", schedulers)
        for child in children:
            if isinstance(child, ReduceLROnPlateau):
                raise TypeError(
                    "schedulers must not contain ReduceLROnPlateau in SequentialLR "
                    "(it needs a metric at every step)."
                )
        self.milestones = _increasing_ints("milestones", milestones)
        if len(self.milestones) != len(children) - 1:
            raise ValueError(
                "milestones must have len(schedulers) - 1 elements; got "
                f"milestones={list(self.milestones)} for {len(children)} schedulers."
            )
        self.schedulers = nnx.List(children)
        super().__init__(children[0].base_lr, last_epoch)

    def _described_arg(self, name: str) -> Any:
        return list(self.schedulers) if name == "schedulers" else super()._described_arg(name)

    @property
    def _offsets(self) -> tuple[int, ...]:
        return (0, *self.milestones)

    def _index(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_int(epoch)
        idx = jnp.zeros(jnp.shape(e), jnp.int32)
        for m in self.milestones:
            idx = idx + (e >= m).astype(jnp.int32)
        return idx

    @staticmethod
    def _select(idx: jax.Array, values: Sequence[jax.Array]) -> jax.Array:
        out = _f32(values[0])
        for k, v in enumerate(values[1:], start=1):
            out = jnp.where(idx == k, _f32(v), out)
        return out

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_int(epoch)
        lrs = [c.lr_at(e - off) for c, off in zip(self.schedulers, self._offsets, strict=True)]
        return self._select(self._index(e), lrs)

    def get_lr(self) -> jax.Array:
        return self._select(
            self._index(self.last_epoch[...]), [c.get_lr() for c in self.schedulers]
        )

    def step(self, epoch: ArrayLike | None = None) -> None:
        new_epoch = self._next_epoch(epoch)
        idx = self._index(new_epoch)
        for k, (child, off) in enumerate(zip(self.schedulers, self._offsets, strict=True)):
            variables = list(live_variables(child, f"SequentialLR child {k}").values())
            before = [var[...] for var in variables]
            child.step(new_epoch - off)
            for var, old in zip(variables, before, strict=True):
                var[...] = jnp.where(idx == k, var[...], old)
        self.last_epoch[...] = new_epoch
        self.current_lr[...] = self.get_lr()
