"""The JSON item ``meta`` of a checkpoint, and the hyperparameter check on restore.

Every step folder holds, next to the ``model`` and ``optimizer`` arrays, a JSON
document (no pickle anywhere)::

    {"format": "nnx_momentum.checkpoint/2", "step", "time", "model_class",
     "optimizer_class", "hyperparams", "versions", "metrics", "extra", "prng_keys",
     "arrays"}

``hyperparams`` is the optimizer's ``hyperparams`` dict -- its class name, the
``lr`` (scheduler) description and the fields of
:class:`nnx_momentum.config.MomentumConfig` -- which :func:`hyperparam_differences`
compares with the live optimizer before a restore. ``arrays`` gives the shape
and dtype of every saved array, ``{item: {path: {"shape", "dtype"}}}`` (absent
from checkpoints of nnx_momentum 0.1); a restore checks it against the array
items' own metadata (:func:`nnx_momentum.checkpoint.items.saved_arrays`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from nnx_momentum._version import __version__
from nnx_momentum.checkpoint.options import CheckpointOptions
from nnx_momentum.config import MomentumConfig

__all__ = [
    "FORMAT",
    "READABLE_FORMATS",
    "check_format",
    "checked_metrics",
    "hyperparam_differences",
    "hyperparams",
    "json_copy",
    "live_hyperparams",
    "meta_item",
    "same_setting",
    "versions",
]

FORMAT = "nnx_momentum.checkpoint/2"
"""The ``format`` of the JSON item this version writes.

``/2`` (0.3): the optimizer state has one path per leaf whatever the
hyperparameter values. ``/1`` (0.1, 0.2) placed the velocity by how many clip
and decay steps were on; a restore still reads it, matching the optimizer
state by role (:mod:`nnx_momentum.layout`).
"""

READABLE_FORMATS = ("nnx_momentum.checkpoint/1", FORMAT)
"""The formats a restore reads; it refuses any other."""

_STACK = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")
_IGNORED = frozenset({"optimizer"})  # the faces share one state layout
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(MomentumConfig))


def json_copy(name: str, value: Any) -> Any:
    """A deep copy of ``value`` through JSON (so later changes to it cannot leak in).

    Args:
      name: the argument's name, for the message.
      value: a JSON-serialisable value (NaN and infinities allowed).

    Returns:
      ``value`` as it reads back from JSON (tuples become lists).

    Raises:
      TypeError: ``value`` is not JSON-serialisable; the message names ``name``.

    Example:
      >>> from nnx_momentum.checkpoint.metadata import json_copy
      >>> json_copy("extra", {"index": (1, 2)})
      {'index': [1, 2]}
      >>> json_copy("extra", {"f": object()})
      Traceback (most recent call last):
      ...
      TypeError: Checkpointer.save: extra must be JSON-serialisable (no pickle is used): ...
    """
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"Checkpointer.save: {name} must be JSON-serialisable (no pickle is used): {e}"
        ) from e


def checked_metrics(
    metrics: Mapping[str, Any] | None, options: CheckpointOptions
) -> dict[str, Any] | None:
    """The ``metrics`` a save records: scalars as Python numbers, checked for ``best_n``.

    Args:
      metrics: ``{name: value}``; 0-d arrays become Python numbers.
      options: the checkpointer's options (``best_n``, ``best_metric``).

    Returns:
      A JSON copy of ``metrics`` with string keys, or ``None``.

    Raises:
      TypeError: a value is not JSON-serialisable.
      ValueError: ``best_n`` is set and ``metrics`` has no ``best_metric``, or
        ``metrics[best_metric]`` is not a finite number.

    Example:
      >>> import numpy as np
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.checkpoint.metadata import checked_metrics
      >>> checked_metrics({"loss": np.float32(0.5)}, nm.CheckpointOptions())
      {'loss': 0.5}
    """
    if metrics is None:
        return None
    out = {}
    for name, value in dict(metrics).items():
        if np.ndim(value) == 0 and not isinstance(value, str):
            value = np.asarray(value).item()
        out[str(name)] = value
    out = json_copy("metrics", out)
    best = options.best_metric
    if options.best_n is not None and best not in out:
        raise ValueError(
            f"Checkpointer.save: metrics has no {best!r} (the best_metric); got keys {sorted(out)}."
        )
    if best in out and not (isinstance(out[best], (int, float)) and math.isfinite(out[best])):
        raise ValueError(
            f"Checkpointer.save: metrics[{best!r}] must be a finite number, got {out[best]!r}."
        )
    return out


def versions() -> dict[str, str]:
    """Versions of this package and its stack, for the JSON item.

    This package's version is ``nnx_momentum._version.__version__`` (the one
    ``pyproject.toml`` reads); the others are read from the installed
    distributions, ``'unknown'`` for one that is not installed -- once per
    process (reading them takes ~2 ms, on every save otherwise).

    Returns:
      ``{'nnx_momentum': ..., 'jax': ..., 'jaxlib': ..., 'flax': ..., 'optax': ...,
      'orbax-checkpoint': ...}``.

    Example:
      >>> from nnx_momentum.checkpoint.metadata import versions
      >>> sorted(versions())
      ['flax', 'jax', 'jaxlib', 'nnx_momentum', 'optax', 'orbax-checkpoint']
    """
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str]:
    out = {"nnx_momentum": __version__}
    for name in _STACK:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def hyperparams(optimizer: Any) -> dict[str, Any]:
    """The optimizer's ``hyperparams`` dict, as saved (``{}`` for a plain ``nnx.Optimizer``).

    Args:
      optimizer: any optimizer; an ``nnx_momentum`` one has ``hyperparams``
        ``{'optimizer': class name, 'lr': scheduler description, **config.to_json()}``.

    Returns:
      A copy of that dict, or ``{}``.

    Example:
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.checkpoint.metadata import hyperparams
      >>> hyperparams(nm.SGD(lr=0.1))["momentum"]
      0.0
    """
    hp = getattr(optimizer, "hyperparams", None)
    return dict(hp) if isinstance(hp, Mapping) else {}


def live_hyperparams(optimizer: Any) -> dict[str, Any]:
    """The live optimizer's settings that a restore compares with the saved ones.

    :func:`hyperparams`, with the :class:`~nnx_momentum.config.MomentumConfig`
    fields read from ``optimizer.config`` where the optimizer has one.

    Args:
      optimizer: any optimizer.

    Returns:
      ``{'optimizer', 'lr', <MomentumConfig fields>}``, or ``{}`` when the
      optimizer has no hyperparameters (a plain ``nnx.Optimizer``).

    Example:
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.checkpoint.metadata import live_hyperparams
      >>> live_hyperparams(nm.Momentum(lr=0.1, momentum=0.8))["momentum"]
      0.8
    """
    out = hyperparams(optimizer)
    config = getattr(optimizer, "config", None)
    if out and isinstance(config, MomentumConfig):
        out.update({name: getattr(config, name) for name in _CONFIG_FIELDS})
    return out


def meta_item(
    step: int,
    model: Any,
    optimizer: Any,
    *,
    metrics: dict[str, Any] | None,
    extra: Any,
    prng_keys: Mapping[str, list[str]],
    arrays: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON item of one save.

    Args:
      step: the step saved.
      model: the model (its class name is recorded).
      optimizer: the optimizer (its class name and :func:`hyperparams`).
      metrics: from :func:`checked_metrics`.
      extra: the user's JSON copy (:func:`json_copy`).
      prng_keys: ``{'model': [...], 'optimizer': [...]}``, the paths saved as
        PRNG key data.
      arrays: ``{'model': {...}, 'optimizer': {...}}``, each array's shape and
        dtype by path (:func:`nnx_momentum.checkpoint.items.array_layout`);
        ``None`` records none.

    Returns:
      The JSON document (see the module docstring).

    Raises:
      TypeError: the optimizer's hyperparameters are not JSON-serialisable.

    Example:
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.checkpoint.metadata import meta_item
      >>> meta = meta_item(1, object(), nm.SGD(lr=0.1), metrics=None, extra={},
      ...                  prng_keys={"model": [], "optimizer": []})
      >>> meta["format"], meta["optimizer_class"], meta["hyperparams"]["lr"]["name"]
      ('nnx_momentum.checkpoint/2', 'SGD', 'FixedLR')
    """
    return {
        "format": FORMAT,
        "step": step,
        "time": datetime.datetime.now(datetime.UTC).isoformat(),
        "model_class": type(model).__name__,
        "optimizer_class": type(optimizer).__name__,
        "hyperparams": json_copy("hyperparams", hyperparams(optimizer)),
        "versions": versions(),
        "metrics": metrics,
        "extra": extra,
        "prng_keys": {item: sorted(paths) for item, paths in prng_keys.items()},
        **({} if arrays is None else {"arrays": {k: dict(v) for k, v in arrays.items()}}),
    }


def check_format(meta: Mapping[str, Any], step: int, directory: str) -> None:
    """Refuses a JSON item that this checkpointer did not write.

    Args:
      meta: the step's JSON item.
      step: the step, for the message.
      directory: the checkpoint root, for the message.

    Raises:
      ValueError: ``meta['format']`` is not one of :data:`READABLE_FORMATS`.

    Example:
      >>> from nnx_momentum.checkpoint.metadata import check_format
      >>> check_format({"format": "nnx_momentum.checkpoint/2"}, 3, "/ckpt")
      >>> check_format({}, 3, "/ckpt")
      Traceback (most recent call last):
      ...
      ValueError: Checkpointer.restore: step 3 in '/ckpt' was not written by ...
    """
    if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(
            f"Checkpointer.restore: step {step} in {directory!r} was not written by "
            f"nnx_momentum.Checkpointer (format {meta.get('format')!r}, expected one of "
            f"{list(READABLE_FORMATS)})."
        )


def hyperparam_differences(
    saved: Mapping[str, Any], live: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """The settings in which a live optimizer differs from a checkpoint's: the one rule.

    Compared: the ``lr`` (scheduler) description, every field of
    :class:`~nnx_momentum.config.MomentumConfig` (and each group's), and any
    other key either side has (a checkpoint of another version). Ignored: the
    optimizer's class name (the faces share one state layout) and a
    scheduler's initial ``last_epoch`` (state, which the restore overwrites). A
    config field the checkpoint lacks (written before the field existed) is
    read as its default, as :meth:`~nnx_momentum.MomentumConfig.from_json`
    does. Numbers are compared to float32 precision (``momentum=np.float32(0.9)``
    equals ``0.9``). An optax-schedule ``lr`` is known by its function's name
    only. A plain ``nnx.Optimizer`` has no hyperparameters: nothing differs when
    either side is empty.

    Args:
      saved: the JSON item's ``hyperparams``.
      live: :func:`live_hyperparams` of the live optimizer.

    Returns:
      ``[(name, saved value, live value)]``, sorted by name (``None``: absent).

    Example:
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.checkpoint.metadata import hyperparam_differences, live_hyperparams
      >>> saved = live_hyperparams(nm.Momentum(lr=nm.StepLR(0.1, step_size=2), momentum=0.9))
      >>> live = live_hyperparams(nm.Momentum(lr=nm.StepLR(0.1, step_size=2, last_epoch=4)))
      >>> hyperparam_differences(saved, live)  # same settings
      []
      >>> hyperparam_differences(saved, {**live, "momentum": 0.5})
      [('momentum', 0.9, 0.5)]
    """
    if not saved or not live:
        return []
    saved = _with_defaults(saved)
    names = {"lr", *_CONFIG_FIELDS} | ((set(saved) | set(live)) - _IGNORED)
    return [
        (k, saved.get(k), live.get(k))
        for k in sorted(names)
        if not same_setting(_jsonable(saved.get(k)), _jsonable(live.get(k)))
    ]


def _with_defaults(saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """``saved`` with its configs (and its groups') read by ``MomentumConfig.from_json``.

    A value ``from_json`` refuses is left as saved, for the comparison to name;
    hyperparameters without any config field (not this package's) are left as saved.
    """
    if not set(saved) & set(_CONFIG_FIELDS):
        return saved
    try:
        out = {**saved, **MomentumConfig.from_json(saved).to_json()}
        if isinstance(saved.get("groups"), list):
            out["groups"] = [MomentumConfig.from_json(g).to_json() for g in saved["groups"]]
    except (TypeError, ValueError, AttributeError):
        return saved
    return out


def same_setting(a: Any, b: Any) -> bool:
    """Equal JSON settings: floats to float32 precision, schedulers' ``last_epoch`` ignored.

    Args:
      a: a JSON value (dicts and lists compared recursively).
      b: another.

    Returns:
      Whether the two describe the same setting.

    Example:
      >>> import numpy as np
      >>> from nnx_momentum.checkpoint.metadata import same_setting
      >>> same_setting(float(np.float32(0.9)), 0.9)
      True
      >>> same_setting({"name": "StepLR", "last_epoch": 5}, {"name": "StepLR", "last_epoch": 0})
      True
      >>> same_setting([1, 2], [1, 3])
      False
    """
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"last_epoch"}
        return all(same_setting(a.get(k), b.get(k)) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_setting(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _jsonable(x: Any) -> Any:
    """``x`` as it reads back from JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(x, default=str))
