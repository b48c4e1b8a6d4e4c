"""Composite schedules: ``ChainedScheduler`` and ``SequentialLR``.

Their children are sub-nodes (an ``nnx.List``), so the children's state is
part of the composite's state, its ``state_dict`` and every checkpoint. The
children must drive the same parameter groups (the same number of LRs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nnx_momentum.schedulers._support import (
    LAYOUT_0_2,
    ArrayLike,
    _f32,
    _increasing_ints,
    _read,
    _write,
)
from nnx_momentum.schedulers.base import LRScheduler, SchedulerState
from nnx_momentum.schedulers.stateful import ReduceLROnPlateau
from nnx_momentum.tree import flatten, is_optional, live_variables

__all__ = ["ChainedScheduler", "SequentialLR"]


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
    first = children[0]
    for k, child in enumerate(children[1:], start=1):
        if child._grouped != first._grouped or child.n_groups != first.n_groups:

            def form(c: LRScheduler) -> str:
                return f"a list of {c.n_groups} base LRs" if c._grouped else "a float base LR"

            raise ValueError(
                f"{name} must all drive the same parameter groups: {name}[0] "
                f"({type(first).__name__}) has {form(first)}, {name}[{k}] "
                f"({type(child).__name__}) has {form(child)}."
            )
    return children


def _first_base(child: LRScheduler) -> Any:
    """A child's base LR argument: a float, or its list of base LRs."""
    return child.base_lrs if child._grouped else child.base_lr


def _check_child_states(
    owner: LRScheduler, children: Sequence[LRScheduler], given: Any, what: str
) -> None:
    """Refuses child states of another number or kind than ``children`` (naming ``schedulers``)."""
    name = type(owner).__name__
    if isinstance(given, dict):
        items = {str(k): v for k, v in given.items()}
    elif isinstance(given, (list, tuple)):
        items = {str(k): v for k, v in enumerate(given)}
    else:
        raise ValueError(
            f"{what}: schedulers must hold one state dict per child scheduler, "
            f"got {type(given).__name__}."
        )
    expected = {str(k) for k in range(len(children))}
    if set(items) != expected:
        raise ValueError(
            f"{what}: schedulers: the state holds {len(items)} child scheduler(s) "
            f"(keys {sorted(items)}), this {name} has {len(children)}; it was saved from "
            "another composition of schedulers."
        )
    for k, child in enumerate(children):
        child_state = items[str(k)]
        if not isinstance(child_state, dict):
            raise ValueError(
                f"{what}: schedulers/{k} must be a state dict, got {type(child_state).__name__}."
            )
        live = flatten(nnx.state(child, SchedulerState))
        saved = set(flatten(child_state))
        missing = sorted("/".join(p) for p in set(live) - saved if not is_optional(live[p]))
        unknown = sorted("/".join(p) for p in saved - set(live))
        if missing or unknown:
            raise ValueError(
                f"{what}: schedulers/{k} does not match this {name}'s child "
                f"{type(child).__name__} (missing {missing}, unknown {unknown}): the state was "
                "saved from another kind of scheduler."
            )
        child._check_state_dict(child_state, f"{what}: schedulers/{k}")


class ChainedScheduler(LRScheduler):
    r"""Applies several schedulers at once: their LR factors multiply.

    With :math:`\eta^{(k)}_t` and :math:`\eta^{(k)}_0` the LR and base LR of child
    :math:`k` (per parameter group; a child with a zero base LR contributes a
    factor 0):

    .. math:: \eta_t = \eta^{(1)}_0 \prod_k \frac{\eta^{(k)}_t}{\eta^{(k)}_0}

    The children are sub-nodes (an ``nnx.List``), so their state is part of
    this scheduler's state. ``step()`` steps every child; a
    ``ReduceLROnPlateau`` child needs ``step(metric=...)``.

    Args:
      schedulers: a non-empty list of schedulers, all with a float base LR or
        all with lists of the same length (the same parameter groups).

    Raises:
      TypeError: ``schedulers`` is not a list of schedulers.
      ValueError: it is empty, holds a scheduler twice, or its children drive
        different parameter groups (the message names ``schedulers``).

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ChainedScheduler([
      ...     sch.LinearLR(0.1, start_factor=0.5, total_iters=2),
      ...     sch.ExponentialLR(0.1, gamma=0.5)])
      >>> s.step()
      >>> s.get_last_lr()
      [0.0375]
    """

    def __init__(self, schedulers: Sequence[LRScheduler]):
        children = _check_children("schedulers", schedulers)
        self.schedulers = nnx.List(children)
        super().__init__(_first_base(children[0]), 0)

    def _described_arg(self, name: str) -> Any:
        return list(self.schedulers) if name == "schedulers" else super()._described_arg(name)

    def _combine(self, lrs: Sequence[jax.Array]) -> jax.Array:
        lr = self._base_array()
        for child, child_lr in zip(self.schedulers, lrs, strict=True):
            base = child._base_array()
            nonzero = base != 0
            lr = lr * jnp.where(nonzero, child_lr / jnp.where(nonzero, base, 1), 0.0)
        return _f32(lr)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        return self._combine([child.lr_at(epoch) for child in self.schedulers])

    def get_lr(self) -> jax.Array:
        return self._combine([child.get_lr() for child in self.schedulers])

    def _has_plateau(self) -> bool:
        return any(isinstance(c, ReduceLROnPlateau) for c in self.schedulers)

    def step(self, epoch: ArrayLike | None = None, *, metric: ArrayLike | None = None) -> None:
        """Steps every child (passing ``metric`` to ``ReduceLROnPlateau`` children).

        Args:
          epoch: the epoch to move to (default: the next one), as for every scheduler.
          metric: the monitored value, required when a child is a ``ReduceLROnPlateau``.

        Raises:
          TypeError: a ``ReduceLROnPlateau`` child and no ``metric``.
          ValueError: a negative or non-finite ``epoch``; no child moves.
        """
        if self._has_plateau() and metric is None:
            raise TypeError(
                "ChainedScheduler.step() holds a ReduceLROnPlateau: call step(metric=...)."
            )
        target = self._next_epoch(epoch)  # checks epoch before any child moves
        for child in self.schedulers:
            if isinstance(child, ReduceLROnPlateau):
                child.step(metric, epoch)
            else:
                child.step(epoch)
        super()._step_to(*target)

    def _step_to(self, whole: jax.Array, frac: jax.Array) -> None:
        if self._has_plateau():
            raise TypeError(
                "a ChainedScheduler holding a ReduceLROnPlateau needs step(metric=...)."
            )
        for child in self.schedulers:
            child._step_to(whole, frac)
        super()._step_to(whole, frac)

    def _check_state_dict(self, state_dict: dict[str, Any], what: str) -> None:
        if "schedulers" in state_dict:
            _check_child_states(self, list(self.schedulers), state_dict["schedulers"], what)


class SequentialLR(LRScheduler):
    r"""Runs schedulers one after another, switching at the milestone epochs.

    With milestones :math:`m_1 < \dots < m_{K-1}` and :math:`m_0 = 0`, epoch
    :math:`t` belongs to child :math:`k = \#\{i \ge 1 : m_i \le t\}`, which is
    stepped to its own epoch :math:`t - m_k` (a fractional :math:`t` keeps its
    fraction):

    .. math:: \eta_t = \eta^{(k)}_{t - m_k}

    Only the active child's state changes at a step. The children are
    sub-nodes (an ``nnx.List``). The milestones are state too
    (``SchedulerState`` int32 of shape ``(K - 1,)``): a ``state_dict`` or a
    checkpoint restores them, as braintools does, and reading them at run time
    means a restored value never recompiles a step.

    Args:
      schedulers: ``K`` schedulers (not ``ReduceLROnPlateau``), driving the
        same parameter groups.
      milestones: ``K - 1`` strictly increasing epochs.
      last_epoch: initial epoch.

    Raises:
      TypeError: ``schedulers`` is not a list of schedulers, or holds a
        ``ReduceLROnPlateau``.
      ValueError: ``milestones`` are not ``K - 1`` increasing integers ``>= 0``,
        or the children drive different parameter groups (the message names
        the argument); in :meth:`load_state_dict`, a state of another number
        of children or milestones.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.SequentialLR(
      ...     [sch.ConstantLR(0.1, factor=1.0, total_iters=0), sch.ExponentialLR(0.1, gamma=0.5)],
      ...     milestones=[3])
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 3, 4, 5)]
      [0.1, 0.1, 0.05, 0.025]
      >>> s.milestones[...].tolist(), s.describe()["milestones"]
      ([3], [3])
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
        checked = _increasing_ints("milestones", milestones)
        if len(checked) != len(children) - 1:
            raise ValueError(
                "milestones must have len(schedulers) - 1 elements; got "
                f"milestones={list(checked)} for {len(children)} schedulers."
            )
        self.milestones = SchedulerState(
            jnp.asarray(checked, jnp.int32).reshape(len(checked)), since=LAYOUT_0_2
        )
        self.schedulers = nnx.List(children)
        super().__init__(_first_base(children[0]), last_epoch)

    def _described_arg(self, name: str) -> Any:
        if name == "schedulers":
            return list(self.schedulers)
        if name == "milestones":
            return _read(self.milestones)
        return super()._described_arg(name)

    def _offsets(self) -> list[Any]:
        ms = _read(self.milestones)
        return [0, *(ms[k] for k in range(len(self.schedulers) - 1))]

    def _index(self, epoch: jax.Array) -> jax.Array:
        ms = _read(self.milestones)
        return jnp.sum(epoch[..., None] >= ms, axis=-1, dtype=jnp.int32)

    @staticmethod
    def _select(idx: jax.Array, values: Sequence[jax.Array]) -> jax.Array:
        out = _f32(values[0])
        idx = idx.reshape(idx.shape + (1,) * (out.ndim - idx.ndim))  # over a group axis
        for k, v in enumerate(values[1:], start=1):
            out = jnp.where(idx == k, _f32(v), out)
        return out

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = jnp.asarray(epoch)
        lrs = [c.lr_at(e - off) for c, off in zip(self.schedulers, self._offsets(), strict=True)]
        return self._select(self._index(e), lrs)

    def get_lr(self) -> jax.Array:
        idx = self._index(_read(self.last_epoch))
        return self._select(idx, [c.get_lr() for c in self.schedulers])

    def _step_to(self, whole: jax.Array, frac: jax.Array) -> None:
        idx = self._index(whole)
        for k, (child, off) in enumerate(zip(self.schedulers, self._offsets(), strict=True)):
            state = nnx.state(child, SchedulerState)
            variables = list(live_variables(state, f"SequentialLR child {k}").values())
            before = [_read(var) for var in variables]
            child._step_to(whole - off, frac)
            for var, old in zip(variables, before, strict=True):
                _write(var, jnp.where(idx == k, _read(var), old))
        super()._step_to(whole, frac)

    def _check_state_dict(self, state_dict: dict[str, Any], what: str) -> None:
        if "schedulers" in state_dict:
            _check_child_states(self, list(self.schedulers), state_dict["schedulers"], what)
        if "milestones" in state_dict:
            saved = np.asarray(state_dict["milestones"])
            expected = len(self.schedulers) - 1
            if saved.shape != (expected,):
                raise ValueError(
                    f"{what}: milestones: the state holds {saved.size} milestone(s) "
                    f"{saved.reshape(-1).tolist()}, this SequentialLR has {expected} (for "
                    f"{len(self.schedulers)} schedulers); it was saved from another composition."
                )
            if np.issubdtype(saved.dtype, np.integer):
                _increasing_ints(f"{what}: milestones", saved.tolist())
