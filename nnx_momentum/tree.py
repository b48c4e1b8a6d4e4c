"""Trees of state by path: flattening, checks and loading with one rule.

Every layer that moves state around -- the optimizer faces (gradients,
``state_dict``), the schedulers (``load_state_dict``) and the checkpointer
(restore targets) -- uses these functions, so there is one notion of a path and
one rule for loading values into live Variables:

- paths are tuples of *strings* (orbax and JSON turn int keys into strings), and
  read as ``'l1/kernel'`` in messages;
- a tree to load must have exactly the live tree's paths, shapes and dtypes:
  an array of another dtype is refused, never silently cast. A plain Python or
  numpy number (``'step': 5``, ``'current_lr': 0.1``, as torch's state dicts hold
  them) takes its live leaf's dtype when it fits: an integer exactly (within the
  dtype's range), a float into a floating leaf rounded to nearest (without
  overflow), a whole float into an integer leaf; anything lossy (``-1`` or
  ``2.5`` into a uint32 ``step``) is refused naming the path;
- a loaded value lands on the device(s) and sharding its live Variable has now,
  as a fresh copy (never aliasing the caller's buffer, which a donated compiled
  step would otherwise invalidate);
- a Variable added to the state layout after a release is created with the
  metadata ``since=<version>`` (:func:`optional`): a tree saved before then may
  lack it, and loading keeps its live value. Every other path is required.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "SINCE",
    "Path",
    "check_like",
    "is_optional",
    "key_str",
    "flatten",
    "live_variables",
    "load_into",
    "match_grads",
    "nest",
    "path_str",
]

Path = tuple[str, ...]
SEP = "/"
SINCE = "since"
"""Variable metadata: the package version that added it to the state layout."""


def is_optional(leaf: Any) -> bool:
    """Whether ``leaf`` is a Variable that older saved trees may lack (``since`` metadata).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from nnx_momentum.tree import is_optional
      >>> is_optional(nnx.Variable(jnp.zeros(()), since="0.2.0")), is_optional(jnp.zeros(()))
      (True, False)
    """
    return isinstance(leaf, nnx.Variable) and SINCE in leaf.get_metadata()


def path_str(path: tuple[Any, ...]) -> str:
    """``('l1', 'kernel') -> 'l1/kernel'``; the empty path reads ``'<root>'``.

    Example:
      >>> from nnx_momentum.tree import path_str
      >>> path_str(("layers", 0, "kernel"))
      'layers/0/kernel'
    """
    return SEP.join(str(k) for k in path) or "<root>"


def key_str(key: Any) -> str:
    """The string of one ``jax.tree_util`` path entry (dict key, index, attribute)."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def flatten(tree: Any) -> dict[Path, Any]:
    """``{path: leaf}`` of an ``nnx.State``, a nested dict or list; Variables are leaves.

    Every key is a string, so a State (int keys for lists), its pure-dict form
    and an orbax-restored dict (string keys) flatten to the same paths.

    Example:
      >>> import jax.numpy as jnp
      >>> from nnx_momentum.tree import flatten
      >>> sorted(flatten({"l1": {"kernel": jnp.ones(2)}, "bs": [jnp.zeros(1)]}))
      [('bs', '0'), ('l1', 'kernel')]
    """
    if isinstance(tree, nnx.State):
        return {tuple(map(str, path)): leaf for path, leaf in nnx.to_flat_state(tree)}
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    return {tuple(key_str(k) for k in path): leaf for path, leaf in leaves}


def nest(flat: Mapping[Path, Any]) -> dict[str, Any]:
    """``{('a', 'b'): x} -> {'a': {'b': x}}``: the inverse of :func:`flatten` for dicts.

    Example:
      >>> from nnx_momentum.tree import nest
      >>> nest({("a", "b"): 1, ("a", "c"): 2})
      {'a': {'b': 1, 'c': 2}}
    """
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def live_variables(tree: Any, what: str) -> dict[Path, nnx.Variable]:
    """``{path: live Variable}`` of a State of live Variables (or a graph node).

    Raises:
      TypeError: a leaf is not an ``nnx.Variable`` (a pure dict was passed where
        live state is needed); the message names its path and ``what``.
    """
    if isinstance(tree, nnx.Pytree):
        tree = nnx.state(tree)
    flat = flatten(tree)
    for path, leaf in flat.items():
        if not isinstance(leaf, nnx.Variable):
            raise TypeError(
                f"{what}: the leaf at {path_str(path)!r} is a {type(leaf).__name__}, "
                "not an nnx.Variable."
            )
    return flat


def _value(leaf: Any) -> Any:
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def check_like(expected: Any, given: Any, what: str = "state_dict") -> None:
    """Raises ``ValueError`` naming the first path whose presence, shape or dtype differs.

    ``expected`` and ``given`` are trees of arrays (or Variables); nothing is
    written. Callers check the whole tree first and only then load it.

    Raises:
      ValueError: ``'<what> does not match ...: missing paths [...], unknown
        paths [...]'``, or ``'<what> at <path>: expected shape/dtype ..., got ...'``.
    """
    _check_flat(flatten(expected), flatten(given), what)


def _check_flat(flat_expected: dict[Path, Any], flat_given: dict[Path, Any], what: str) -> None:
    """:func:`check_like` on flattened trees."""
    missing = [
        path_str(k)
        for k in sorted(set(flat_expected) - set(flat_given))
        if not is_optional(flat_expected[k])
    ]
    unknown = [path_str(k) for k in sorted(set(flat_given) - set(flat_expected))]
    if missing or unknown:
        raise ValueError(
            f"{what} does not match the live state: missing paths {missing}, "
            f"unknown paths {unknown}. Was it saved with other "
            "hyperparameters (clipping, weight decay), another scheduler or another model?"
        )
    for path, ref in flat_expected.items():
        if path not in flat_given:
            continue  # an optional Variable, absent from an older tree
        ref, value = _value(ref), _value(flat_given[path])
        if np.shape(ref) != np.shape(value):
            raise ValueError(
                f"{what} at {path_str(path)}: expected shape {np.shape(ref)}, "
                f"got {np.shape(value)}."
            )
        ref_dtype, dtype = jnp.result_type(ref), jnp.result_type(value)
        if ref_dtype != dtype:
            raise ValueError(
                f"{what} at {path_str(path)}: expected dtype {ref_dtype}, got {dtype} "
                "(values are never cast silently)."
            )


def load_into(tree: Any, values: Any, what: str = "state_dict") -> None:
    """Checks ``values`` against the live Variables of ``tree``, then writes them.

    The rule of this module: same paths, shapes and dtypes (no cast), each value
    copied onto its live Variable's current sharding. Nothing is written unless
    everything matches.

    Args:
      tree: a State of live Variables, or a graph node (its whole state).
      values: a tree with the same paths (a pure dict, a State).
      what: how messages name ``values``.

    Raises:
      ValueError: from :func:`check_like`, or a plain number that does not fit
        its live leaf's dtype (naming the path); ``tree`` is then untouched.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from nnx_momentum.tree import load_into
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> load_into(nnx.state(model), {"kernel": jnp.ones((2, 1)), "bias": jnp.ones(1)})
      >>> model.bias[...]
      Array([1.], dtype=float32)
      >>> counter = nnx.Variable(jnp.zeros((), jnp.uint32))
      >>> load_into({"count": counter}, {"count": 5})  # a plain int takes the live dtype
      >>> counter[...]
      Array(5, dtype=uint32)
    """
    state = nnx.state(tree) if isinstance(tree, nnx.Pytree) else tree
    live = live_variables(state, what)
    given = {
        path: _number_as_live(live[path], value, path, what) if path in live else value
        for path, value in flatten(values).items()
    }
    _check_flat(live, given, what)
    for path, var in live.items():
        if path not in given:
            continue  # optional and absent (see the module docstring): keep the live value
        sharding = getattr(var.get_value(), "sharding", None)
        var.set_value(jax.device_put(_value(given[path]), sharding, may_alias=False))


def _is_plain_number(value: Any) -> bool:
    """A Python or numpy real scalar (not a bool, not an array)."""
    return isinstance(value, (numbers.Real, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_, np.ndarray, jax.Array)
    )


def _number_as_live(live: Any, value: Any, path: Path, what: str) -> Any:
    """A plain number (see the module docstring) as a numpy scalar of ``live``'s dtype.

    Anything else is returned as is, for :func:`check_like` to judge.

    Raises:
      ValueError: the number does not fit the live dtype; the message names the path.
    """
    value = _value(value)
    ref = _value(live)
    if not _is_plain_number(value) or not hasattr(ref, "dtype"):
        return value
    dtype = np.dtype(ref.dtype)
    where = f"{what} at {path_str(path)}"
    if jnp.issubdtype(dtype, jnp.integer):
        info = np.iinfo(dtype)
        whole = float(value).is_integer() if isinstance(value, (float, np.floating)) else True
        if not whole or not info.min <= int(value) <= info.max:
            raise ValueError(
                f"{where}: {value!r} does not fit the live {dtype} exactly (expected an "
                f"integer in [{info.min}, {info.max}]); nothing was loaded."
            )
        return np.asarray(int(value), dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        with np.errstate(over="ignore"):  # an overflow is refused below, with the path
            converted = np.asarray(value, dtype)
        if isinstance(value, (int, np.integer)):
            fits = float(converted) == int(value)  # exact (Python compares int and float exactly)
        else:  # rounded to nearest; only an overflow to infinity is refused
            fits = math.isfinite(float(converted)) or not math.isfinite(float(value))
        if not fits:
            raise ValueError(
                f"{where}: {value!r} does not fit the live {dtype} (it would become "
                f"{float(converted)!r}); nothing was loaded."
            )
        return converted
    return value  # complex or bool leaves: the dtype rule decides


def match_grads(weights: nnx.State, grads: Any) -> nnx.State:
    """``grads`` (a State, pure dict or list) matched by path to ``weights``, validated.

    Returns a State with ``weights``' structure whose leaves are the gradients,
    wrapped in each weight's Variable type. Shapes and dtypes are static, so under
    ``jit`` the check costs nothing at run time.

    Raises:
      ValueError: naming the paths that are missing or unknown, or the first
        path whose shape or dtype differs from its weight's.
    """
    given = flatten(grads)
    flat_weights = dict(nnx.to_flat_state(weights))
    wanted = {tuple(map(str, p)): p for p in flat_weights}
    missing = sorted(path_str(k) for k in set(wanted) - set(given))
    unknown = sorted(path_str(k) for k in set(given) - set(wanted))
    if missing or unknown:
        raise ValueError(
            f"gradients do not match the optimized weights: missing paths {missing}, "
            f"unknown paths {unknown}. Pass nnx.grad(loss_fn)(model) for the model (or "
            "sub-module) whose weights the optimizer holds."
        )
    leaves = []
    for key, path in wanted.items():
        var, grad = flat_weights[path], _value(given[key])
        weight = var.get_value()
        if jnp.shape(grad) != weight.shape or jnp.result_type(grad) != weight.dtype:
            raise ValueError(
                f"gradient at {path_str(path)!r} has shape {jnp.shape(grad)} and dtype "
                f"{jnp.result_type(grad)}; the weight has shape {weight.shape} and dtype "
                f"{weight.dtype}."
            )
        leaves.append((path, type(var)(grad)))
    return nnx.from_flat_state(leaves)
