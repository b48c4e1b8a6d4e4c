"""The scheduler base: :class:`SchedulerState`, :class:`LRScheduler`, :func:`reported_lr`.

The private helpers the scheduler modules share live in
:mod:`nnx_momentum.schedulers._support`; :func:`~nnx_momentum.schedulers.as_scheduler`
(a float becomes ``FixedLR``) lives with ``FixedLR`` in
:mod:`nnx_momentum.schedulers.closed_form`.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nnx_momentum import _validation
from nnx_momentum.schedulers._support import (
    LAYOUT_0_2,
    ArrayLike,
    BaseLR,
    _check_state_values,
    _checked_epoch,
    _f32,
    _group_values,
    _read,
    _split_epoch,
    _stored,
    _write,
)
from nnx_momentum.tree import load_into

__all__ = ["LRScheduler", "SchedulerState", "reported_lr"]


def _describe_value(value: Any) -> Any:
    """``value`` as JSON data for :meth:`LRScheduler.describe` (children nest)."""
    if isinstance(value, nnx.Pytree) and callable(getattr(value, "describe", None)):
        return cast(Any, value).describe()  # a scheduler (a child of a composite)
    if isinstance(value, nnx.Variable):
        value = value.get_value()
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and not isinstance(value, bool):
        if _validation.is_traced(value):
            return repr(value)
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating):
            return np.vectorize(reported_lr, otypes=[object])(array).tolist()
        return array.tolist()
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

    def __get__(self, obj: object, cls: type | None = None) -> inspect.Signature:
        if obj is not None or cls is None:
            raise AttributeError("__signature__")
        signature = inspect.signature(cls.__init__)  # type: ignore[misc]  # the class's own
        return signature.replace(parameters=list(signature.parameters.values())[1:])


_HOST_VALUES = (bool, int, float, np.generic, np.ndarray, list, tuple)


def reported_lr(x: ArrayLike) -> float:
    r"""The shortest decimal that rounds to the same float32 as ``x``: the LR as written.

    LRs are applied as float32, so ``0.01`` is held as ``0.009999999776...``;
    reported, it reads ``0.01`` again. Only the report is rounded -- the applied
    value stays the float32.

    .. math:: \text{reported}(x) = \text{the shortest decimal } d
        \text{ with } \mathrm{fl}_{32}(d) = \mathrm{fl}_{32}(x)

    Args:
      x: a real scalar (a Python float, a numpy or a concrete jax scalar).

    Returns:
      A Python float.

    Raises:
      TypeError: ``x`` is not a scalar (e.g. a list), or is a tracer (eager only).

    Example:
      >>> from nnx_momentum.schedulers import reported_lr
      >>> reported_lr(0.009999999776482582), reported_lr(1e-4), float(0.01) == reported_lr(0.01)
      (0.01, 0.0001, True)
    """
    if np.ndim(x) != 0:
        raise TypeError(f"reported_lr takes a scalar, got shape {np.shape(x)}.")
    return float(str(np.asarray(x, np.float32)[()]))


class SchedulerState(nnx.OptState):
    """Scheduler state (epoch counter, current LR, extras): a kind of ``nnx.OptState``.

    Being an ``OptState``, it is selected by ``nnx.state(optimizer, nnx.OptState)``
    together with the velocity and the step counter.

    ``.value`` reads and writes it as in braintools (without flax's deprecation
    warning). A Python, numpy or weakly typed jax value written to it is
    normalised to the state's own dtype and shape (``scheduler.last_epoch.value
    = 10`` stores an int32 scalar; a float written to ``current_lr`` of several
    groups fills every group), so a compiled step sees the same types and never
    retraces.

    Raises:
      ValueError: (on writing) a non-integer number written to an integer state
        (use ``scheduler.step(2.5)`` for a fractional epoch), or a value whose
        shape cannot be broadcast to the state's.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> from flax import nnx
      >>> s = sch.StepLR(0.1)
      >>> sorted(nnx.state(s, sch.SchedulerState))
      ['current_lr', 'epoch_fraction', 'last_epoch']
      >>> s.last_epoch.value = 10
      >>> s.last_epoch.value.dtype, s.epoch_fraction.get_metadata()["since"]
      (dtype('int32'), '0.2.0')
    """

    @property
    def value(self) -> Any:
        """The held value (braintools' accessor)."""
        return self.get_value()

    @value.setter
    def value(self, value: Any) -> None:
        self.set_value(value)

    def set_value(self, value: Any, **kwargs: Any) -> None:
        """Writes ``value``; Python, numpy and weakly typed values take the state's dtype
        and shape."""
        raw = self.get_raw_value()
        dtype, shape = getattr(raw, "dtype", None), getattr(raw, "shape", None)
        if kwargs or dtype is None or shape is None:
            super().set_value(value, **kwargs)
            return
        if isinstance(value, _HOST_VALUES):
            host = np.asarray(value)
            self._check_integral(dtype, host, value)
            value = np.broadcast_to(host.astype(dtype), shape)
            if isinstance(raw, jax.Array):  # in place: keeps the live sharding
                kwargs = {"index": ...}
            else:
                value = jnp.asarray(value)
        elif isinstance(value, jax.Array) and value.weak_type:  # e.g. jnp.asarray(10)
            if not _validation.is_traced(value):
                self._check_integral(dtype, np.asarray(value), value)
            value = jnp.broadcast_to(value.astype(dtype), shape)
        super().set_value(value, **kwargs)

    def _check_integral(self, dtype: Any, host: np.ndarray, value: Any) -> None:
        if (
            jnp.issubdtype(dtype, jnp.integer)
            and not np.issubdtype(host.dtype, np.integer)
            and not np.all(np.floor(host) == host)
        ):
            raise ValueError(
                f"this {type(self).__name__} holds {dtype} values; got {value!r}, "
                "which is not an integer (step(epoch) takes fractional epochs)."
            )


class LRScheduler(nnx.Pytree):
    r"""Base class: an epoch-indexed learning rate (one per parameter group) held in NNX state.

    Subclasses implement :meth:`lr_at` (the LR as a pure function of the
    epoch); stateful schedules such as ``ReduceLROnPlateau`` override
    :meth:`step` instead.

    **Parameter groups.** ``base_lr`` is a float or a list of floats, one per
    parameter group, as in braintools: each group follows the schedule from its
    own base LR,

    .. math:: \eta^{(g)}_t = \text{schedule}(\eta^{(g)}_0, t), \qquad g = 0, \dots, n - 1.

    A float gives scalar LRs (shape ``()``); a list of ``n`` gives shape ``(n,)``.

    **Epochs.** The epoch is ``last_epoch + epoch_fraction``: ``step()`` adds 1
    (keeping any fraction, as braintools and torch do), ``step(e)`` jumps to
    ``e``, which may be fractional (``step(2.5)``; e.g. ``CosineAnnealingWarmRestarts``
    stepped by 0.1). The whole part is int32, so integer epochs stay exact in
    long runs; schedules that change at whole epochs (``StepLR``, ...) use it
    alone.

    Attributes:
      base_lr: the (first group's) initial learning rate (a Python float, static).
      base_lrs: the initial learning rate of each group (list, braintools' name).
      n_groups: the number of parameter groups (LRs) driven.
      last_epoch: ``SchedulerState`` int32 scalar, the whole current epoch (0 at start).
      epoch_fraction: ``SchedulerState`` float32 scalar in ``[0, 1)``, the
        fractional part of the epoch (0 unless ``step`` got a fractional epoch).
      current_lr: ``SchedulerState`` float32 of shape ``()`` (a float ``base_lr``)
        or ``(n_groups,)``, the LR(s) the optimizer applies at its next step.
        ``step()`` recomputes it; an optimizer's ``current_lr`` setter overwrites
        it until the next ``step()``.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.StepLR(0.1, step_size=2, gamma=0.5)
      >>> s.step(); s.step()
      >>> s.get_last_lr(), int(s.last_epoch[...])
      ([0.05], 2)
      >>> g = sch.StepLR([0.1, 0.01], step_size=2, gamma=0.5)
      >>> g.n_groups, g.base_lrs, g.lr_at(2).shape, g.get_last_lr()
      (2, [0.1, 0.01], (2,), [0.1, 0.01])
    """

    __signature__ = _ConstructorSignature()
    _grouped = False  # a list of base LRs (shape (n,)); a class default for subclasses
    _truncates: ClassVar[bool] = False  # the schedule changes at whole epochs only

    def __init__(self, base_lr: BaseLR, last_epoch: int = 0):
        lrs, grouped = _group_values("base_lr", base_lr)
        self._set_base_lrs(lrs, grouped)
        self._initial_epoch = _validation.non_negative_int("last_epoch", last_epoch)
        self.last_epoch = SchedulerState(jnp.asarray(last_epoch, jnp.int32))
        self.epoch_fraction = SchedulerState(jnp.zeros((), jnp.float32), since=LAYOUT_0_2)
        self.current_lr = SchedulerState(_f32(self._initial_lr()))

    def __setattr__(self, name: str, value: Any) -> None:
        # An array hyperparameter (traced: built under jit/vmap/eval_shape, or a
        # runtime value) is graph data; nnx would take a tracer for a static
        # attribute and leak it out of the transform.
        if isinstance(value, jax.Array) and not isinstance(value, nnx.Variable):
            value = nnx.data(value)
        super().__setattr__(name, value)

    def _set_base_lrs(self, lrs: Sequence[Any], grouped: bool) -> None:
        self._grouped = grouped
        if grouped:
            self._base_lrs = _stored(lrs)
        self.base_lr = lrs[0]

    def _initial_lr(self) -> ArrayLike:
        return self.get_lr()

    # -- groups ------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        """The number of parameter groups (LRs) this scheduler drives: ``len(base_lrs)``."""
        return len(self._base_lrs) if self._grouped else 1

    @property
    def base_lrs(self) -> list[Any]:
        """The initial LR of each parameter group (braintools' name): ``[base_lr]`` for a float."""
        return list(self._base_lrs) if self._grouped else [self.base_lr]

    def _base(self, group: int) -> Any:
        return self._base_lrs[group] if self._grouped else self.base_lr

    def _base_array(self) -> jax.Array:
        """The base LRs as float32, shaped like ``current_lr``."""
        return _f32(self._base_lrs) if self._grouped else _f32(self.base_lr)

    def _per_group(self, lr_of_group: Callable[[int], ArrayLike]) -> jax.Array:
        """``lr_of_group(g)`` for every group, stacked on a last axis (none for a float)."""
        if not self._grouped:
            return _f32(lr_of_group(0))
        return jnp.stack([_f32(lr_of_group(g)) for g in range(self.n_groups)], axis=-1)

    # -- the schedule ------------------------------------------------------
    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        """The LR at ``epoch`` as a pure, traceable function (float32).

        Args:
          epoch: an epoch, or an array of epochs; integer or fractional.

        Returns:
          float32 of shape ``jnp.shape(epoch)``, plus a last axis of
          ``n_groups`` for a list of base LRs.

        Raises:
          NotImplementedError: on the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement lr_at(epoch).")

    def __call__(self, count: ArrayLike) -> jax.Array:
        """Use the scheduler as an optax schedule: the LR at epoch ``count``."""
        return self.lr_at(count)

    @property
    def epoch(self) -> jax.Array:
        """The current epoch ``last_epoch + epoch_fraction`` (float32, read-only).

        float32 holds integers exactly only up to 2**24; the schedules read the
        int32 ``last_epoch`` and the fraction separately.

        Example:
          >>> import nnx_momentum.schedulers as sch
          >>> s = sch.CosineAnnealingLR(0.1, T_max=10)
          >>> s.step(2.5); s.step()
          >>> float(s.epoch), int(s.last_epoch[...])
          (3.5, 3)
        """
        return _read(self.last_epoch).astype(jnp.float32) + _read(self.epoch_fraction)

    def _schedule_epoch(self) -> jax.Array:
        """The current epoch as the schedule reads it (exact int32 if it truncates)."""
        whole = _read(self.last_epoch)
        if self._truncates:
            return whole
        return whole.astype(jnp.float32) + _read(self.epoch_fraction)

    # -- braintools API ----------------------------------------------------
    def get_lr(self) -> jax.Array:
        """The LR(s) at the current epoch (what ``step()`` stores in ``current_lr``).

        Returns:
          float32 of shape ``()`` or ``(n_groups,)``.
        """
        return _f32(self.lr_at(self._schedule_epoch()))

    def step(self, epoch: ArrayLike | None = None) -> None:
        """Advance one epoch, or jump to ``epoch`` (may be fractional); recompute ``current_lr``.

        Args:
          epoch: ``None`` (``last_epoch + 1``, the fraction kept) or the epoch to
            jump to: an int, a float (``2.5``) or a scalar array, traced or not,
            in ``[0, 2**31 - 1]``. A traced epoch (inside ``jit``) has no value
            to check and is used as given: check it before you trace the step.

        Raises:
          ValueError: a concrete ``epoch`` that is negative, NaN, infinite or
            beyond ``2**31 - 1`` (the message names it); the scheduler is unchanged.
          TypeError: ``epoch`` is not a real scalar.

        Example:
          >>> import nnx_momentum.schedulers as sch
          >>> s = sch.ExponentialLR(0.1, gamma=0.5)
          >>> s.step(2)
          >>> try:
          ...     s.step(float("nan"))
          ... except ValueError as e:
          ...     print(e)
          ExponentialLR.step: epoch must be a finite number in [0, 2147483647], got nan; ...
          >>> int(s.last_epoch[...]), s.get_last_lr()
          (2, [0.025])
        """
        self._step_to(*self._next_epoch(epoch))

    def _next_epoch(self, epoch: ArrayLike | None) -> tuple[jax.Array, jax.Array]:
        """``(whole, fraction)`` of the epoch ``step(epoch)`` moves to; ``epoch`` checked."""
        if epoch is None:
            return _read(self.last_epoch) + 1, _read(self.epoch_fraction)
        return _split_epoch(_checked_epoch(epoch, f"{type(self).__name__}.step"))

    def _step_to(self, whole: jax.Array, frac: jax.Array) -> None:
        """Moves to epoch ``whole + frac`` (already split) and recomputes ``current_lr``."""
        _write(self.last_epoch, whole)
        _write(self.epoch_fraction, frac)
        _write(self.current_lr, self.get_lr())

    def step_epoch(self) -> None:
        """Advance one epoch: ``step()`` (braintools' ``step_epoch``).

        Example:
          >>> import nnx_momentum.schedulers as sch
          >>> s = sch.ExponentialLR(0.1, gamma=0.5)
          >>> s.step_epoch()
          >>> s.get_last_lr()
          [0.05]
        """
        self.step()

    def apply(self, apply_fn: Callable[[jax.Array], ArrayLike]) -> None:
        """Sets ``current_lr`` to ``apply_fn`` of each group's LR at the current epoch.

        As braintools' ``apply``: ``apply_fn`` receives each group's
        :meth:`get_lr` value (for ``ReduceLROnPlateau``, its current LR), one
        scalar at a time, and its results are the LRs until the next ``step()``.
        Traceable: it may run inside a compiled step.

        Args:
          apply_fn: ``lr -> new lr`` (a scalar function, e.g. ``lambda lr: lr * 0.5``).

        Raises:
          ValueError: ``apply_fn`` returns something that is not a scalar.

        Example:
          >>> import nnx_momentum.schedulers as sch
          >>> s = sch.StepLR([0.1, 0.02], step_size=5)
          >>> s.apply(lambda lr: lr * 0.5)
          >>> s.get_last_lr()
          [0.05, 0.01]
        """
        lrs = self.get_lr()

        def one(lr: jax.Array) -> jax.Array:
            new = _f32(apply_fn(lr))
            if new.shape != ():
                raise ValueError(
                    f"apply_fn must return a scalar LR, got shape {new.shape} for {lr!r}."
                )
            return new

        if self._grouped:
            new = jnp.stack([one(lrs[g]) for g in range(self.n_groups)])
        else:
            new = one(lrs)
        _write(self.current_lr, new)

    def attach_optimizer(self, optimizer: Any) -> None:
        """Makes this scheduler drive ``optimizer``'s LR: ``optimizer.attach_scheduler(self)``.

        Args:
          optimizer: an optimizer with an ``attach_scheduler(scheduler)`` method
            (``nm.Momentum``, ``nm.MomentumNesterov``, ``nm.SGD``).

        Raises:
          TypeError: ``optimizer`` has no ``attach_scheduler``.

        Example:
          >>> import nnx_momentum.schedulers as sch
          >>> class Recorder:
          ...     def attach_scheduler(self, scheduler):
          ...         self.scheduler = scheduler
          >>> opt, s = Recorder(), sch.StepLR(0.1)
          >>> s.attach_optimizer(opt)
          >>> opt.scheduler is s
          True
        """
        attach = getattr(optimizer, "attach_scheduler", None)
        if not callable(attach):
            raise TypeError(
                "attach_optimizer needs an optimizer with attach_scheduler(scheduler) "
                f"(nm.Momentum, nm.MomentumNesterov, nm.SGD); got {type(optimizer).__name__}."
            )
        attach(self)

    def get_last_lr(self) -> list[float]:
        """The current LR of each group, as Python floats (eager only, like braintools).

        Each is :func:`reported_lr` of the applied float32 (``StepLR(0.01)``
        reports ``[0.01]``, not ``[0.009999999776]``).

        Returns:
          A list of ``n_groups`` floats.
        """
        values = np.atleast_1d(np.asarray(_read(self.current_lr)))
        return [reported_lr(v) for v in values]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state as a pure nested dict of arrays.

        The arrays are copies, so a later donated compiled step cannot delete them.
        Only the ``SchedulerState`` variables are state: hyperparameters given as
        arrays (graph data) are configuration and not part of it.

        Returns:
          ``{'last_epoch', 'epoch_fraction', 'current_lr', ...extras, 'schedulers'?}``.
        """
        state = nnx.state(self, SchedulerState)
        pure: dict[str, Any] = jax.tree.map(jnp.copy, nnx.to_pure_dict(state))
        return pure

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads what :meth:`state_dict` returned, by the rule of :mod:`nnx_momentum.tree`.

        Every path, shape and dtype is checked before anything is written (a
        value of another dtype is refused, not cast), so a mismatched dict
        leaves the scheduler untouched. Each value lands on its live variable's
        current sharding, as a copy. Keys may be ints or strings (``'0'``, as a
        checkpoint restored without a target gives). State added in 0.2.0
        (``epoch_fraction``, ``SequentialLR``'s ``milestones``) may be absent, as
        in a dict saved by 0.1.0: its live value is kept.

        Raises:
          TypeError: ``state_dict`` is not a dict.
          ValueError: a path is missing or unknown, or a shape or dtype differs;
            an epoch (``last_epoch``, ``epoch_fraction``, ``T_cur``, ``T_i``) or a
            ``current_lr`` is negative or non-finite (``epoch_fraction`` must be
            below 1); the message names the path (``'schedulers/1/current_lr'``). For
            composites, a state with another number or kind of children (or of
            milestones) is refused naming ``schedulers`` (``milestones``).
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict must be a dict as returned by {type(self).__name__}.state_dict(), "
                f"got {type(state_dict).__name__}."
            )
        what = f"{type(self).__name__}.load_state_dict"
        self._check_state_dict(state_dict, what)
        self._check_state_values(state_dict, what)
        load_into(nnx.state(self, SchedulerState), state_dict, what=what)

    def _check_state_dict(self, state_dict: dict[str, Any], what: str) -> None:
        """Composites refuse another composition here, before the tree rule runs."""

    def _check_state_values(self, state_dict: Any, what: str) -> None:
        """Refuses a state whose epoch or LR is negative or non-finite (naming the path).

        The optimizers call it on the ``lr`` part of their state dicts, so an
        epoch is checked wherever a state is loaded.
        """
        _check_state_values(state_dict, what)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description: class name and constructor arguments.

        Returns:
          ``{'name': class name, <argument>: value, ...}`` (children nest).
        """
        out: dict[str, Any] = {"name": type(self).__name__}
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                out[name] = _describe_value(self._described_arg(name))
        return out

    def _described_arg(self, name: str) -> Any:
        if name == "last_epoch":
            return self._initial_epoch
        if name == "base_lr":
            return self.base_lrs if self._grouped else self.base_lr
        return getattr(self, name)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"
