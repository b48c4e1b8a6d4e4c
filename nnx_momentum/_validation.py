"""Argument checks shared by the transform, the optimizers and the schedulers.

Every check raises ``ValueError`` naming the argument, the value received and
what was expected, so bad hyperparameters fail at construction, before any
state is created or mutated.

Traced values (an optimizer built under ``jax.jit``, ``nnx.jit``,
``nnx.eval_shape`` or ``jax.vmap``, e.g. ``optax.inject_hyperparams(nm.momentum)``
or a sweep over learning rates) cannot be inspected: they pass through
unchecked, and checks apply to concrete values only.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, cast

import jax
import numpy as np


def is_traced(value: Any) -> bool:
    """Whether ``value`` is a jax tracer (its value is unknown until run time)."""
    return isinstance(value, jax.core.Tracer)


def _as_float(name: str, value: Any) -> Any:
    """``value`` as a finite Python float (float32-representable), or a tracer as is."""
    if is_traced(value):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Real, np.ndarray, np.generic, jax.Array)
    ):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    array = np.asarray(cast(Any, value))
    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be a real scalar, got {value!r}.")
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"{name} must not be NaN, got {value!r}.")
    if not math.isfinite(result) or not math.isfinite(float(np.float32(result))):
        raise ValueError(f"{name} must be finite (also in float32), got {value!r}.")
    # A jax array stays an array: it is a runtime hyperparameter (inject_hyperparams),
    # which must keep its kind between init (concrete) and update (traced).
    return value if isinstance(value, jax.Array) else result


def boolean(name: str, value: Any) -> bool:
    """Returns ``value`` if it is a bool (or a numpy bool), else raises."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def non_negative(name: str, value: Any) -> Any:
    """Returns ``value`` as a float, or raises if it is NaN, infinite or negative."""
    result = _as_float(name, value)
    if not is_traced(result) and float(result) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}.")
    return result


def positive(name: str, value: Any) -> Any:
    """Returns ``value`` as a float, or raises if it is NaN, infinite or not > 0."""
    result = _as_float(name, value)
    if not is_traced(result) and not float(result) > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    return result


def optional_positive(name: str, value: Any) -> Any:
    """``None`` passes through; anything else must be a float > 0."""
    return None if value is None else positive(name, value)


def in_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> Any:
    """Returns ``value`` as a float in ``[0, 1)`` (``[0, 1]`` if ``closed_right``)."""
    result = _as_float(name, value)
    if is_traced(result):
        return result
    x = float(result)
    upper_ok = x <= 1 if closed_right else x < 1
    if not (x >= 0 and upper_ok):
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return result


def momentum_args(momentum: Any, nesterov: bool) -> Any:
    """Checks ``momentum`` in ``[0, 1)``, and ``> 0`` when ``nesterov``."""
    mu = in_unit_interval("momentum", momentum)
    if nesterov and not is_traced(mu) and float(mu) == 0:
        raise ValueError(f"nesterov=True needs momentum > 0, got momentum={momentum!r}.")
    return mu


def positive_int(name: str, value: Any) -> int:
    """Returns ``value`` if it is an integer >= 1, else raises."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """Returns ``value`` if it is an integer >= 0, else raises."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return value


def one_of(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """Returns ``value`` if it is one of ``choices``, else raises."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def inexact_dtype(name: str, value: Any) -> Any:
    """Returns ``value`` if it names a floating or complex dtype (``jnp.bfloat16``, ``'c64'``)."""
    import jax.numpy as jnp

    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{name} must be a floating or complex dtype, got {value!r}.") from None
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"{name} must be a floating or complex dtype, got {value!r}.")
    return value
