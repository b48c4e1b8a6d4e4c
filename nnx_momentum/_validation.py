"""Argument checks shared by the transform, the optimizers and the schedulers.

Every check raises ``ValueError`` naming the argument, the value received and
what was expected, so bad hyperparameters fail at construction, before any
state is created or mutated.
"""

from __future__ import annotations

import math
from typing import Any


def _as_float(name: str, value: Any) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}.") from None
    if math.isnan(result):
        raise ValueError(f"{name} must not be NaN, got {value!r}.")
    return result


def non_negative(name: str, value: Any) -> float:
    """Returns ``value`` as a float, or raises if it is NaN or negative."""
    result = _as_float(name, value)
    if result < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}.")
    return result


def positive(name: str, value: Any) -> float:
    """Returns ``value`` as a float, or raises if it is NaN or not > 0."""
    result = _as_float(name, value)
    if not result > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    return result


def optional_positive(name: str, value: Any) -> float | None:
    """``None`` passes through; anything else must be a float > 0."""
    return None if value is None else positive(name, value)


def in_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> float:
    """Returns ``value`` as a float in ``[0, 1)`` (``[0, 1]`` if ``closed_right``)."""
    result = _as_float(name, value)
    upper_ok = result <= 1 if closed_right else result < 1
    if not (result >= 0 and upper_ok):
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return result


def momentum_args(momentum: Any, nesterov: bool) -> float:
    """Checks ``momentum`` in ``[0, 1)``, and ``> 0`` when ``nesterov``."""
    mu = in_unit_interval("momentum", momentum)
    if nesterov and mu == 0:
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


def float_dtype(name: str, value: Any) -> Any:
    """Returns ``value`` if it names a floating dtype (``jnp.bfloat16``, ``'float32'``)."""
    import jax.numpy as jnp

    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{name} must be a floating dtype, got {value!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype, got {value!r}.")
    return value
