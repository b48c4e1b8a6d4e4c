"""Learning-rate schedulers with braintools' names, signatures and values.

A scheduler is a small NNX graph node. Its state -- the epoch counter
``last_epoch`` (starting at 0), the LR the optimizer applies next
(``current_lr``) and any extras (plateau counters, ...) -- lives in
:class:`SchedulerState` variables. When a scheduler is handed to an optimizer
it becomes part of the optimizer's graph, so ``nnx.state(optimizer)`` and every
checkpoint carry it.

Because the state is held in variables (runtime values, never Python
constants), ``scheduler.step()`` may be called eagerly or inside a compiled
step, and neither stepping nor changing the LR retraces anything. The static
configuration (``base_lr``, ``gamma``, ...) is plain Python data and is part of
the graph definition.

Unlike braintools, every scheduler drives a single learning rate (no list of
per-parameter-group LRs).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nnx_momentum import _validation

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialDecayLR",
    "ExponentialLR",
    "FixedLR",
    "LRScheduler",
    "LinearLR",
    "MultiStepLR",
    "OneCycleLR",
    "PiecewiseConstantSchedule",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SchedulerState",
    "SequentialLR",
    "StepLR",
    "WarmupCosineSchedule",
    "WarmupScheduler",
    "as_scheduler",
]

ArrayLike = jax.typing.ArrayLike


# ---------------------------------------------------------------------------
# private helpers
# ---------------------------------------------------------------------------
def _f32(x: ArrayLike) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _epoch_int(epoch: ArrayLike) -> jax.Array:
    return jnp.asarray(epoch).astype(jnp.int32)


def _epoch_float(epoch: ArrayLike) -> jax.Array:
    return jnp.asarray(epoch).astype(jnp.float32)


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


def _live_variables(node: Any) -> list[tuple[tuple[str, ...], nnx.Variable]]:
    """The live ``Variable`` objects of ``node`` with their string paths."""
    return [
        (tuple(str(k) for k in path), var)
        for path, var in nnx.iter_graph(node)
        if isinstance(var, nnx.Variable)
    ]


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        out: dict[tuple[str, ...], Any] = {}
        for key, sub in tree.items():
            out.update(_flatten(sub, (*prefix, str(key))))
        return out
    return {prefix: tree}


def _jsonable(value: Any) -> Any:
    if isinstance(value, LRScheduler):
        return value.describe()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple, nnx.List)):
        return [_jsonable(v) for v in value]
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return repr(value)


# ---------------------------------------------------------------------------
# base
# ---------------------------------------------------------------------------
class SchedulerState(nnx.OptState):
    """Scheduler state (epoch counter, current LR, extras): a kind of ``nnx.OptState``.

    Being an ``OptState``, it is selected by ``nnx.state(optimizer, nnx.OptState)``
    together with the velocity and the step counter.
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
        return jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(self)))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads what :meth:`state_dict` returned.

        Every key and shape is checked before anything is written, so a
        mismatched dict leaves the scheduler untouched.

        Raises:
          ValueError: a key is missing or unexpected, or a shape differs; the
            message names the key path.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict must be a dict as returned by {type(self).__name__}.state_dict(), "
                f"got {type(state_dict).__name__}."
            )
        targets = dict(_live_variables(self))
        given = _flatten(state_dict)
        for path in targets:
            if path not in given:
                raise ValueError(
                    f"state_dict is missing key {'/'.join(path)!r} for {type(self).__name__}."
                )
        for path, value in given.items():
            key = "/".join(path)
            if path not in targets:
                raise ValueError(
                    f"state_dict has unexpected key {key!r} for {type(self).__name__} "
                    f"(expected keys: {sorted('/'.join(p) for p in targets)})."
                )
            expected = tuple(targets[path].shape)
            if tuple(np.shape(value)) != expected:
                raise ValueError(
                    f"state_dict[{key!r}] has shape {tuple(np.shape(value))}, expected {expected}."
                )
        for path, var in targets.items():
            var[...] = jnp.array(given[path], dtype=var.dtype, copy=True)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description: class name and constructor arguments."""
        out: dict[str, Any] = {"name": type(self).__name__}
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                out[name] = _jsonable(self._described_arg(name))
        return out

    def _described_arg(self, name: str) -> Any:
        if name == "last_epoch":
            return self._initial_epoch
        return getattr(self, name)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------
# closed-form schedules
# ---------------------------------------------------------------------------
class FixedLR(LRScheduler):
    r"""A constant learning rate (what a float ``lr`` becomes).

    .. math:: \eta_t = \eta_0

    Args:
      base_lr: the learning rate, ``>= 0``.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.FixedLR(0.1)
      >>> s.step()
      >>> round(s.get_last_lr()[0], 6)
      0.1
    """

    def __init__(self, base_lr: float = 1e-3, last_epoch: int = 0):
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        return jnp.full(jnp.shape(epoch), self.base_lr, jnp.float32)


class StepLR(LRScheduler):
    r"""Decays the LR by ``gamma`` every ``step_size`` epochs.

    .. math:: \eta_t = \eta_0 \, \gamma^{\lfloor t / s \rfloor}

    Args:
      base_lr: initial learning rate :math:`\eta_0`.
      step_size: period :math:`s` of the decay, an integer ``>= 1``.
      gamma: multiplicative factor :math:`\gamma > 0`.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.StepLR(0.1, step_size=3, gamma=0.1)
      >>> [round(float(s.lr_at(t)), 6) for t in range(7)]
      [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001]
    """

    def __init__(
        self, base_lr: float = 1e-3, step_size: int = 30, gamma: float = 0.1, last_epoch: int = 0
    ):
        self.step_size = _validation.positive_int("step_size", step_size)
        self.gamma = _validation.positive("gamma", gamma)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        n = (_epoch_int(epoch) // self.step_size).astype(jnp.float32)
        return _f32(self.base_lr * jnp.power(jnp.float32(self.gamma), n))


class MultiStepLR(LRScheduler):
    r"""Decays the LR by ``gamma`` at each milestone epoch.

    .. math:: \eta_t = \eta_0 \, \gamma^{\#\{m \in \text{milestones} : m \le t\}}

    Args:
      base_lr: initial learning rate :math:`\eta_0`.
      milestones: strictly increasing epochs (integers ``>= 0``).
      gamma: multiplicative factor :math:`\gamma > 0`.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.MultiStepLR(0.1, milestones=[2, 5], gamma=0.1)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 5)]
      [0.1, 0.01, 0.001]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
        milestones: Sequence[int] = (30, 60, 90),
        gamma: float = 0.1,
        last_epoch: int = 0,
    ):
        self.milestones = _increasing_ints("milestones", milestones)
        self.gamma = _validation.positive("gamma", gamma)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_int(epoch)
        count = jnp.zeros(jnp.shape(e), jnp.float32)
        for m in self.milestones:
            count = count + (e >= m).astype(jnp.float32)
        return _f32(self.base_lr * jnp.power(jnp.float32(self.gamma), count))


class ExponentialLR(LRScheduler):
    r"""Decays the LR by ``gamma`` every epoch.

    .. math:: \eta_t = \eta_0 \, \gamma^{t}

    Args:
      base_lr: initial learning rate :math:`\eta_0`.
      gamma: multiplicative factor per epoch, :math:`\gamma > 0`.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ExponentialLR(0.1, gamma=0.5)
      >>> s.step(); s.step()
      >>> round(s.get_last_lr()[0], 6)
      0.025
    """

    def __init__(self, base_lr: float = 1e-3, gamma: float = 0.95, last_epoch: int = 0):
        self.gamma = _validation.positive("gamma", gamma)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        return _f32(self.base_lr * jnp.power(jnp.float32(self.gamma), _epoch_float(epoch)))


class ExponentialDecayLR(LRScheduler):
    r"""Exponential decay with a delayed start, optional staircase and bound (optax style).

    .. math::
        r_t = \frac{\max(t - t_0, 0)}{T}\ (\text{floored if staircase}), \qquad
        \eta_t = \eta_0 \, \rho^{r_t}

    clipped from below (``decay_rate < 1``) or above (``decay_rate > 1``) at
    ``end_value`` when given.

    Args:
      base_lr: initial learning rate :math:`\eta_0`.
      decay_steps: :math:`T`, integer ``>= 1``.
      decay_rate: :math:`\rho > 0`.
      transition_begin: :math:`t_0`, epochs held at ``base_lr`` (integer ``>= 0``).
      staircase: decay in discrete steps.
      end_value: optional bound on the LR (``>= 0``).
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ExponentialDecayLR(0.1, decay_steps=2, decay_rate=0.5)
      >>> [round(float(s.lr_at(t)), 6) for t in range(3)]
      [0.1, 0.070711, 0.05]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
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
        since = jnp.maximum(_epoch_float(epoch) - self.transition_begin, 0.0)
        rate = since / self.decay_steps
        if self.staircase:
            rate = jnp.floor(rate)
        lr = self.base_lr * jnp.power(jnp.float32(self.decay_rate), rate)
        if self.end_value is not None:
            bound = jnp.maximum if self.decay_rate < 1 else jnp.minimum
            lr = bound(lr, self.end_value)
        return _f32(lr)


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from ``base_lr`` to ``eta_min`` over ``T_max`` epochs, then held.

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min})\,
        \frac{1 + \cos(\pi \min(t, T_{max}) / T_{max})}{2}

    Args:
      base_lr: initial learning rate :math:`\eta_0`.
      T_max: length of the annealing, integer ``>= 1``.
      eta_min: final learning rate, ``>= 0``.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.CosineAnnealingLR(0.1, T_max=4)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 4, 9)]
      [0.1, 0.05, 0.0, 0.0]
    """

    def __init__(
        self, base_lr: float = 1e-3, T_max: int = 50, eta_min: float = 0.0, last_epoch: int = 0
    ):
        self.T_max = _validation.positive_int("T_max", T_max)
        self.eta_min = _validation.non_negative("eta_min", eta_min)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = jnp.minimum(_epoch_float(epoch), self.T_max)
        factor = (1 + jnp.cos(jnp.pi * e / self.T_max)) / 2
        return _f32(self.eta_min + (self.base_lr - self.eta_min) * factor)


class PolynomialLR(LRScheduler):
    r"""Polynomial decay to zero over ``total_iters`` epochs.

    .. math:: \eta_t = \eta_0 \left(1 - \frac{\min(t, N)}{N}\right)^{p}

    Args:
      base_lr: initial learning rate :math:`\eta_0`.
      total_iters: :math:`N`, integer ``>= 1``.
      power: :math:`p \ge 0`.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.PolynomialLR(0.1, total_iters=4, power=1.0)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 1, 4, 6)]
      [0.1, 0.075, 0.0, 0.0]
    """

    def __init__(
        self, base_lr: float = 1e-3, total_iters: int = 5, power: float = 1.0, last_epoch: int = 0
    ):
        self.total_iters = _validation.positive_int("total_iters", total_iters)
        self.power = _validation.non_negative("power", power)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        frac = jnp.minimum(_epoch_float(epoch), self.total_iters) / self.total_iters
        return _f32(self.base_lr * jnp.power(1 - frac, self.power))


class WarmupScheduler(LRScheduler):
    r"""Linear warmup from ``warmup_start_lr`` to ``base_lr``, then constant.

    .. math:: \eta_t = \eta_s + (\eta_0 - \eta_s) \min(t / W, 1)

    Args:
      base_lr: learning rate after warmup :math:`\eta_0`.
      warmup_epochs: :math:`W`, integer ``>= 0`` (0: no warmup).
      warmup_start_lr: :math:`\eta_s`, ``>= 0``.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.WarmupScheduler(0.1, warmup_epochs=4)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 1, 4, 8)]
      [0.0, 0.025, 0.1, 0.1]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
        warmup_epochs: int = 5,
        warmup_start_lr: float = 0.0,
        last_epoch: int = 0,
    ):
        self.warmup_epochs = _validation.non_negative_int("warmup_epochs", warmup_epochs)
        self.warmup_start_lr = _validation.non_negative("warmup_start_lr", warmup_start_lr)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)
        if self.warmup_epochs == 0:
            return jnp.full(jnp.shape(e), self.base_lr, jnp.float32)
        alpha = jnp.minimum(e / self.warmup_epochs, 1.0)
        return _f32(self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * alpha)


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

    Args:
      base_lr: lower bound :math:`\eta_0`.
      max_lr: upper bound :math:`\eta_{max}`.
      step_size_up: epochs of the rising half, integer ``>= 1``.
      step_size_down: epochs of the falling half (default ``step_size_up``).
      mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``.
      gamma: :math:`\gamma > 0` for ``exp_range``.
      scale_fn: optional traceable scale function; overrides ``mode``.
      scale_mode: ``'cycle'`` or ``'iterations'``: what ``scale_fn`` receives.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.CyclicLR(0.01, max_lr=0.1, step_size_up=2)
      >>> [round(float(s.lr_at(t)), 6) for t in range(5)]
      [0.01, 0.055, 0.1, 0.055, 0.01]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
        max_lr: float = 1e-2,
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[jax.Array], jax.Array] | None = None,
        scale_mode: str = "cycle",
        last_epoch: int = 0,
    ):
        self.max_lr = _validation.non_negative("max_lr", max_lr)
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
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)
        down = self.step_size_down or self.step_size_up
        total = self.step_size_up + down
        ratio = self.step_size_up / total
        cycle = jnp.floor(1 + e / total)
        x = 1.0 + e / total - cycle
        height = jnp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        if self.scale_fn is not None:
            scale = self.scale_fn(cycle if self.scale_mode == "cycle" else e)
        elif self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1.0 / jnp.power(2.0, cycle - 1)
        else:
            scale = jnp.power(jnp.float32(self.gamma), e)
        return _f32(self.base_lr + (self.max_lr - self.base_lr) * scale * height)


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

    with :math:`f(a) = (1 + \cos \pi a)/2` (``'cos'``) or :math:`1 - a` (``'linear'``).
    The schedule has no ``base_lr`` argument; the ``base_lr`` attribute is the
    initial LR :math:`\eta_0`. (braintools 0.4.0 has no ``three_phase`` option.)

    Args:
      max_lr: peak learning rate.
      total_steps: :math:`N`; or give both ``epochs`` and ``steps_per_epoch``.
      epochs: number of epochs (with ``steps_per_epoch``).
      steps_per_epoch: steps per epoch (with ``epochs``).
      pct_start: :math:`p \in (0, 1)`, fraction of the cycle spent warming up.
      anneal_strategy: ``'cos'`` or ``'linear'``.
      div_factor: :math:`\eta_{max}/\eta_0 > 0`.
      final_div_factor: :math:`\eta_{max}/\eta_{min} > 0`.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.OneCycleLR(max_lr=0.1, total_steps=8)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 1, 3)]
      [0.004, 0.044, 0.097194]
    """

    def __init__(
        self,
        max_lr: float = 1e-2,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        last_epoch: int = 0,
    ):
        self.max_lr = _validation.non_negative("max_lr", max_lr)
        self.epochs = None if epochs is None else _validation.positive_int("epochs", epochs)
        self.steps_per_epoch = (
            None
            if steps_per_epoch is None
            else _validation.positive_int("steps_per_epoch", steps_per_epoch)
        )
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
        if pct == 0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}.")
        self.pct_start = pct
        self.anneal_strategy = _validation.one_of(
            "anneal_strategy", anneal_strategy, ("cos", "linear")
        )
        self.div_factor = _validation.positive("div_factor", div_factor)
        self.final_div_factor = _validation.positive("final_div_factor", final_div_factor)
        self.min_lr = self.max_lr / self.final_div_factor
        super().__init__(self.max_lr / self.div_factor, last_epoch)

    @property
    def n_steps(self) -> int:
        """The cycle length: ``total_steps`` or ``epochs * steps_per_epoch``."""
        if self.total_steps is not None:
            return self.total_steps
        assert self.epochs is not None and self.steps_per_epoch is not None
        return self.epochs * self.steps_per_epoch

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_float(epoch)
        n = self.n_steps
        warmup = self.pct_start * n
        up = jnp.minimum(e / warmup, 1.0)
        warm_lr = self.base_lr + up * (self.max_lr - self.base_lr)
        a = jnp.clip((e - warmup) / ((1 - self.pct_start) * n), 0.0, 1.0)
        f = (1 + jnp.cos(jnp.pi * a)) / 2 if self.anneal_strategy == "cos" else 1 - a
        anneal_lr = self.min_lr + f * (self.max_lr - self.min_lr)
        return _f32(jnp.where(e <= warmup, warm_lr, anneal_lr))


class LinearLR(LRScheduler):
    r"""Scales ``base_lr`` by a factor moving linearly from ``start_factor`` to ``end_factor``.

    .. math::
        \eta_t = \eta_0 \left(f_s + (f_e - f_s)\,\mathrm{clip}(t / N, 0, 1)\right)

    Args:
      base_lr: :math:`\eta_0`.
      start_factor: :math:`f_s \ge 0`.
      end_factor: :math:`f_e \ge 0`.
      total_iters: :math:`N`, integer ``>= 0`` (0: ``end_factor`` from the start).
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.LinearLR(0.1, start_factor=0.25, total_iters=4)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 4, 5)]
      [0.025, 0.0625, 0.1, 0.1]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
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
        if self.total_iters == 0:
            return jnp.full(jnp.shape(e), self.base_lr * self.end_factor, jnp.float32)
        s = jnp.clip(e / self.total_iters, 0.0, 1.0)
        factor = self.start_factor + (self.end_factor - self.start_factor) * s
        return _f32(self.base_lr * factor)


class ConstantLR(LRScheduler):
    r"""Scales ``base_lr`` by ``factor`` for the first ``total_iters`` epochs.

    .. math:: \eta_t = \eta_0 \cdot \begin{cases} f & t < N \\ 1 & t \ge N\end{cases}

    Args:
      base_lr: :math:`\eta_0`.
      factor: :math:`f \ge 0`.
      total_iters: :math:`N`, integer ``>= 0``.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.ConstantLR(0.1, factor=0.5, total_iters=3)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 3)]
      [0.05, 0.05, 0.1]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = 0,
    ):
        self.factor = _validation.non_negative("factor", factor)
        self.total_iters = _validation.non_negative_int("total_iters", total_iters)
        super().__init__(base_lr, last_epoch)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_int(epoch)
        return _f32(self.base_lr * jnp.where(e < self.total_iters, self.factor, 1.0))


class WarmupCosineSchedule(LRScheduler):
    r"""Linear warmup to ``base_lr`` over ``warmup_steps``, then cosine decay to ``eta_min``.

    With :math:`W` = ``warmup_steps`` and :math:`N` = ``total_steps``:

    .. math::
        \eta_t = \begin{cases}
          \eta_s + (\eta_0 - \eta_s)\, t / W & t < W \\
          \eta_{min} + (\eta_0 - \eta_{min}) \frac{1 + \cos(\pi p_t)}{2} & t \ge W
        \end{cases},\qquad
        p_t = \mathrm{clip}\!\left(\frac{t - W}{\max(N - W, 1)}, 0, 1\right)

    Args:
      base_lr: peak learning rate :math:`\eta_0`.
      warmup_steps: :math:`W`, integer ``>= 0``.
      total_steps: :math:`N`, integer ``>= 1`` and ``>= warmup_steps``.
      warmup_start_lr: :math:`\eta_s \ge 0`.
      eta_min: final learning rate :math:`\eta_{min} \ge 0`.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.WarmupCosineSchedule(0.1, warmup_steps=2, total_steps=6)
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 1, 2, 4, 6)]
      [0.0, 0.05, 0.1, 0.05, 0.0]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
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
        alpha = jnp.clip(e / max(w, 1), 0.0, 1.0)
        warm_lr = self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * alpha
        progress = jnp.clip((e - w) / max(self.total_steps - w, 1), 0.0, 1.0)
        cos_lr = self.eta_min + (self.base_lr - self.eta_min) * (1 + jnp.cos(jnp.pi * progress)) / 2
        return _f32(jnp.where(e < w, warm_lr, cos_lr))


class PiecewiseConstantSchedule(LRScheduler):
    r"""Absolute LR values that change at boundary epochs.

    .. math:: \eta_t = v_k, \qquad k = \#\{b \in \text{boundaries} : b \le t\}

    Args:
      base_lr: accepted for braintools compatibility and ignored (the values are
        absolute learning rates); the ``base_lr`` attribute is ``values[0]``.
      boundaries: strictly increasing epochs (integers ``>= 0``); default ``[1000, 2000]``.
      values: ``len(boundaries) + 1`` learning rates ``>= 0``; default ``[1.0, 0.1, 0.01]``.
      last_epoch: initial epoch.

    Example:
      >>> import nnx_momentum.schedulers as sch
      >>> s = sch.PiecewiseConstantSchedule(boundaries=[2, 5], values=[0.1, 0.01, 0.001])
      >>> [round(float(s.lr_at(t)), 6) for t in (0, 2, 5)]
      [0.1, 0.01, 0.001]
    """

    def __init__(
        self,
        base_lr: float = 1e-3,
        boundaries: Sequence[int] | None = None,
        values: Sequence[float] | None = None,
        last_epoch: int = 0,
    ):
        self._base_lr_arg = _validation.non_negative("base_lr", base_lr)
        self.boundaries = _increasing_ints(
            "boundaries", [1000, 2000] if boundaries is None else boundaries
        )
        values = [1.0, 0.1, 0.01] if values is None else list(values)
        self.values = tuple(_validation.non_negative("values", v) for v in values)
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                "values must have exactly one more element than boundaries; got "
                f"len(values)={len(self.values)}, len(boundaries)={len(self.boundaries)}."
            )
        super().__init__(self.values[0], last_epoch)

    def _described_arg(self, name: str) -> Any:
        return self._base_lr_arg if name == "base_lr" else super()._described_arg(name)

    def lr_at(self, epoch: ArrayLike) -> jax.Array:
        e = _epoch_int(epoch)
        lr = jnp.full(jnp.shape(e), self.values[0], jnp.float32)
        for b, v in zip(self.boundaries, self.values[1:], strict=True):
            lr = jnp.where(e >= b, jnp.float32(v), lr)
        return lr


# ---------------------------------------------------------------------------
# stateful schedules
# ---------------------------------------------------------------------------
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

    def step(self, metric: ArrayLike | None = None, epoch: ArrayLike | None = None) -> None:  # type: ignore[override]
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


# ---------------------------------------------------------------------------
# composites
# ---------------------------------------------------------------------------
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
            variables = [var for _, var in _live_variables(child)]
            before = [var[...] for var in variables]
            child.step(new_epoch - off)
            for var, old in zip(variables, before, strict=True):
                var[...] = jnp.where(idx == k, var[...], old)
        self.last_epoch[...] = new_epoch
        self.current_lr[...] = self.get_lr()


# ---------------------------------------------------------------------------
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
