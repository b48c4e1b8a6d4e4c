"""Private helpers the scheduler modules share (none of them is public).

Type aliases, epoch casts and splits, the checks of a requested epoch and of a
loaded state, per-group base LRs, evaluating an optax schedule, argument checks,
and reading/writing state Variables. The public names live in the modules that
define them (:mod:`nnx_momentum.schedulers.base` holds ``SchedulerState`` and
``reported_lr``); every module imports its shared helpers from here and this
module imports none of them, so there is no import circle.
"""

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nnx_momentum import _validation
from nnx_momentum.tree import flatten, path_str

__all__: list[str] = []

ArrayLike = jax.typing.ArrayLike
Schedule = Callable[[jax.Array], ArrayLike]  # an optax schedule
BaseLR = float | Sequence[float]  # one LR, or one per parameter group

LAYOUT_0_2 = "0.2.0"
"""``since`` of the state added in 0.2.0 (``epoch_fraction``, ``SequentialLR.milestones``)."""


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


MAX_EPOCH = int(np.iinfo(np.int32).max)
"""The largest epoch: ``last_epoch`` is int32."""


def _checked_epoch(epoch: Any, what: str) -> Any:
    """``epoch`` if it is a real number in ``[0, MAX_EPOCH]``; a traced epoch as is.

    A traced epoch (inside ``jit``) has no value to check: it is used as given.

    Raises:
      TypeError: ``epoch`` is not a real scalar (e.g. a string, or an array of shape ``(n,)``).
      ValueError: ``epoch`` is negative, NaN, infinite or beyond ``MAX_EPOCH``.
    """
    if _validation.is_traced(epoch):
        return epoch
    value = np.asarray(epoch)
    if value.shape != () or value.dtype.kind not in "biuf":
        raise TypeError(f"{what}: epoch must be a real scalar (an int or a float), got {epoch!r}.")
    if not (np.isfinite(value) and 0 <= value <= MAX_EPOCH):
        raise ValueError(
            f"{what}: epoch must be a finite number in [0, {MAX_EPOCH}], got {epoch!r}; "
            "nothing was changed."
        )
    return epoch


# The range of each kind of scheduler state, by its name: (low, high, high included).
_STATE_RANGES = {
    "last_epoch": (0, MAX_EPOCH, True),
    "epoch_fraction": (0, 1, False),
    "current_lr": (0, np.inf, False),
    "T_cur": (0, MAX_EPOCH, True),
    "T_i": (1, MAX_EPOCH, True),
}


def _check_state_values(state_dict: Any, what: str) -> None:
    """Refuses a scheduler state holding a negative or non-finite epoch or LR, naming its path.

    Checks the values of the states named in ``_STATE_RANGES`` wherever they sit
    in ``state_dict`` (children of composites included); other paths, traced
    values and values that are not numbers are left to the tree rule
    (:func:`nnx_momentum.tree.load_into`).

    Raises:
      ValueError: ``'<what> at <path>: ... must be ...'``.
    """
    for path, leaf in flatten(state_dict).items():
        bounds = _STATE_RANGES.get(path[-1]) if path else None
        value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        if bounds is None or _validation.is_traced(value):
            continue
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):
            continue
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            continue
        low, high, closed = bounds
        inside = np.isfinite(array) & (array >= low) & (array <= high if closed else array < high)
        if not np.all(inside):
            interval = f"[{low}, {high}]" if closed else f"[{low}, {high})"
            raise ValueError(
                f"{what} at {path_str(path)}: {path[-1]} must be finite and in {interval}, "
                f"got {array.tolist()}; nothing was loaded."
            )
