"""What the scheduler modules share: the state Variable, the reported LR, helpers.

:class:`SchedulerState` (the Variable type of every scheduler's state) and
:func:`reported_lr`, and the private helpers: epoch casts and splits, per-group base
LRs, evaluating an optax schedule, argument checks, the ``describe()`` encoding.
"""

import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nnx_momentum import _validation

__all__ = ["SchedulerState", "reported_lr"]

ArrayLike = jax.typing.ArrayLike
Schedule = Callable[[jax.Array], ArrayLike]  # an optax schedule
BaseLR = float | Sequence[float]  # one LR, or one per parameter group

LAYOUT_0_2 = "0.2.0"
"""``since`` of the state added in 0.2.0 (``epoch_fraction``, ``SequentialLR.milestones``)."""


# ---------------------------------------------------------------------------
# private helpers
# ---------------------------------------------------------------------------
def _f32(x: Any) -> jax.Array:
    if isinstance(x, jax.Array) and x.dtype == jnp.float32 and not x.weak_type:
        return x  # the common case, without jnp.asarray's dispatch cost
    return jnp.asarray(x, jnp.float32)


def _read(var: nnx.Variable) -> jax.Array:
    """A state Variable's value as an array, whatever a user assigned to it."""
    value = var.get_value()
    return value if isinstance(value, jax.Array) else jnp.asarray(value)


def _write(var: nnx.Variable, value: jax.Array) -> None:
    """``var[...] = value``, replacing the buffer outright when nothing would change but it.

    (flax's ``var[...] = value`` indexes the old value to compare shapes first.)
    """
    raw = var.get_raw_value()
    if (
        isinstance(raw, jax.Array)
        and isinstance(value, jax.Array)
        and value.shape == raw.shape
        and value.dtype == raw.dtype
        and value.weak_type == raw.weak_type  # a weak type would change the traced signature
        and getattr(value, "sharding", None) == getattr(raw, "sharding", None)
    ):
        var.set_value(value)
    else:
        var[...] = value


def _epoch_int(epoch: ArrayLike) -> jax.Array:
    """The epoch truncated to int32 (schedules that step at whole epochs)."""
    return jnp.asarray(epoch).astype(jnp.int32)


def _epoch_float(epoch: ArrayLike) -> jax.Array:
    """The epoch as float32 (schedules defined between whole epochs too)."""
    return jnp.asarray(epoch).astype(jnp.float32)


def _split_epoch(epoch: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``epoch`` as ``(whole, fraction)``: int32 ``floor(epoch)`` and float32 in ``[0, 1)``.

    An integer epoch stays exact (fraction 0); it is never routed through float32.
    """
    e = jnp.asarray(epoch)
    if not jnp.issubdtype(e.dtype, jnp.floating):
        return e.astype(jnp.int32), jnp.zeros(jnp.shape(e), jnp.float32)
    whole = jnp.floor(e)
    frac = (e - whole).astype(jnp.float32)
    carry = frac >= 1  # a tiny negative fraction rounds to 1 in float32
    return (
        whole.astype(jnp.int32) + carry.astype(jnp.int32),
        jnp.where(carry, jnp.float32(0), frac),
    )


def _group_values(
    name: str, value: Any, check: Callable[[str, Any], Any] = _validation.non_negative
) -> tuple[list[Any], bool]:
    """``(values, listed)``: ``value`` checked, as a list; ``listed`` if it was a list/tuple."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(
                f"{name} must be a float or a non-empty list of floats (one per parameter "
                f"group), got {value!r}."
            )
        return [check(f"{name}[{k}]", v) for k, v in enumerate(value)], True
    return [check(name, value)], False


def _stored(values: Sequence[Any]) -> tuple[float, ...] | jax.Array:
    """Per-group values as NNX can hold them: a static tuple of floats, or a float32
    array (graph data) when any value is an array (traced, or a runtime hyperparameter)."""
    if any(isinstance(v, jax.Array) for v in values):
        return jnp.stack([_f32(v) for v in values])
    return tuple(float(v) for v in values)


def _evaluate(schedule: Schedule, count: jax.Array) -> jax.Array:
    """``schedule(count)`` as float32, shaped like ``count`` (optax constants are scalars)."""
    return jnp.broadcast_to(_f32(schedule(count)), jnp.shape(count))


def _cosine(peak: Any, end: Any, steps: int) -> Schedule:
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


# ---------------------------------------------------------------------------
# public helpers
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# base
# ---------------------------------------------------------------------------
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
