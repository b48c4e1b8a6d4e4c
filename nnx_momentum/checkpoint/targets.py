"""Restore targets from live objects, and the arrays a save writes.

A checkpoint stores the model's and the optimizer's Variables by path: the
``'/'``-joined string of each path in the live ``nnx.State``
(:func:`nnx_momentum.tree.path_str`), nested into dicts for orbax. On restore,
the targets are built from the *live* Variables -- their shapes, dtypes and
current shardings -- and checked against the checkpoint's metadata before a
single array is read.

Typed PRNG key arrays (``nnx.Rngs`` inside ``nnx.Dropout`` and friends) are
saved as their ``jax.random.key_data`` and re-wrapped with the live key's
implementation when written back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from nnx_momentum import tree

__all__ = [
    "flatten_saved",
    "host_value",
    "is_abstract",
    "is_key",
    "live_variables",
    "nest_paths",
    "optimizer_state",
    "target",
    "validated_targets",
    "whole_values",
    "write_back",
]


def is_key(x: Any) -> bool:
    """Whether ``x`` is a typed PRNG key array (``jax.random.key``, not ``PRNGKey``).

    Args:
      x: anything; only its ``dtype`` (if any) is read.

    Returns:
      ``True`` for a key array (or its abstract ``ShapeDtypeStruct``).

    Example:
      >>> import jax
      >>> from nnx_momentum.checkpoint.targets import is_key
      >>> is_key(jax.random.key(0)), is_key(jax.random.PRNGKey(0))
      (True, False)
    """
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def is_abstract(x: Any) -> bool:
    """Whether ``x`` is an abstract value (``nnx.eval_shape`` leaves ``jax.ShapeDtypeStruct``).

    Args:
      x: a Variable's value.

    Returns:
      ``True`` for a ``jax.ShapeDtypeStruct`` (shape, dtype and maybe a sharding; no data).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from nnx_momentum.checkpoint.targets import is_abstract
      >>> is_abstract(jax.ShapeDtypeStruct((2,), jnp.float32)), is_abstract(jnp.zeros(2))
      (True, False)
    """
    return isinstance(x, jax.ShapeDtypeStruct)


def optimizer_state(optimizer: Any) -> nnx.State:
    """The optimizer's whole state as an ``nnx.State`` of live Variables.

    Args:
      optimizer: an ``nnx_momentum`` optimizer (either face: its
        ``state_tree()``) or a plain ``nnx.Optimizer`` (its ``nnx.OptState``
        Variables).

    Returns:
      The state; its Variables are the live ones (writing them updates the optimizer).

    Raises:
      TypeError: ``optimizer`` is neither.

    Example:
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.checkpoint.targets import optimizer_state
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
      >>> "step" in optimizer_state(opt)
      True
    """
    state_tree = getattr(optimizer, "state_tree", None)
    if callable(state_tree):
        state: nnx.State = state_tree()
        return state
    if isinstance(optimizer, nnx.Optimizer):
        return nnx.state(optimizer, nnx.OptState)
    raise TypeError(
        f"Checkpointer: expected an nnx.Optimizer or an nnx_momentum optimizer, got "
        f"{type(optimizer).__name__}."
    )


def live_variables(state: nnx.State, what: str) -> dict[str, nnx.Variable]:
    """``{'a/b/0/kernel': live Variable}``: the checkpoint's paths of a State.

    The paths of :func:`nnx_momentum.tree.live_variables`, joined by ``'/'``
    (:func:`nnx_momentum.tree.path_str`): exactly the keys a checkpoint stores.

    Args:
      state: a State of live Variables (``nnx.state(model)``, :func:`optimizer_state`).
      what: ``'model'`` or ``'optimizer'``, for messages.

    Returns:
      The live Variables by path string.

    Raises:
      TypeError: a leaf is not an ``nnx.Variable`` (the message names its path).
      ValueError: two paths read as the same string (e.g. a key ``'a/b'`` and
        the path ``('a', 'b')``).

    Example:
      >>> from flax import nnx
      >>> from nnx_momentum.checkpoint.targets import live_variables
      >>> sorted(live_variables(nnx.state(nnx.Linear(2, 1, rngs=nnx.Rngs(0))), "model"))
      ['bias', 'kernel']
    """
    flat: dict[str, nnx.Variable] = {}
    for path, var in tree.live_variables(state, f"Checkpointer: {what}").items():
        key = tree.path_str(path)
        if key in flat:
            raise ValueError(f"Checkpointer: two {what} paths both read as {key!r}.")
        flat[key] = var
    return flat


def nest_paths(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a/b': x} -> {'a': {'b': x}}``: the nested dict of strings orbax writes.

    Args:
      flat: values by ``'/'``-joined path.

    Returns:
      The nested dict (:func:`nnx_momentum.tree.nest` of the split paths).

    Example:
      >>> from nnx_momentum.checkpoint.targets import nest_paths
      >>> nest_paths({"fc/kernel": 1, "fc/bias": 2, "step": 3})
      {'fc': {'kernel': 1, 'bias': 2}, 'step': 3}
    """
    return tree.nest({tuple(key.split(tree.SEP)): value for key, value in flat.items()})


def flatten_saved(saved: Any) -> dict[str, Any]:
    """``{'a/b': leaf}`` of a tree orbax read back (nested dicts of arrays or ArrayMetadata).

    :func:`nnx_momentum.tree.flatten` does the walk: orbax's ``ArrayMetadata``
    is not a registered pytree, so each one is a leaf.

    Args:
      saved: an item's metadata tree, or its restored arrays.

    Returns:
      The leaves by ``'/'``-joined path: the inverse of :func:`nest_paths`.

    Example:
      >>> from nnx_momentum.checkpoint.targets import flatten_saved
      >>> flatten_saved({"fc": {"kernel": 1, "bias": 2}})
      {'fc/bias': 2, 'fc/kernel': 1}
    """
    return {tree.SEP.join(path): leaf for path, leaf in tree.flatten(saved).items()}


def host_value(value: Any) -> Any:
    """What a save writes for a Variable's value: key arrays become their key data.

    Args:
      value: a Variable's value (a ``jax.Array``, a key array, a NumPy array
        or a Python scalar).

    Returns:
      A ``jax.Array`` as is, a key array's ``key_data``, or a NumPy array of
      the dtype jax would give the value (a Python ``int`` is ``int32`` unless
      x64 is on).

    Example:
      >>> import jax
      >>> from nnx_momentum.checkpoint.targets import host_value
      >>> host_value(jax.random.key(0)).dtype, host_value(3).dtype
      (dtype('uint32'), dtype('int32'))
    """
    if is_key(value):
        return jax.random.key_data(value)
    if isinstance(value, jax.Array):
        return value
    return np.asarray(value, jax.dtypes.canonicalize_dtype(np.asarray(value).dtype))


def whole_values(flat: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Each array whole on every process: what a process-local save writes.

    An array spread over several processes is gathered from all of them
    (``multihost_utils.process_allgather``: a collective, so every process
    calls this with the same paths in the same order), then laid out
    replicated over one device per process: each process so holds (and, with
    orbax's ``ArrayHandler(replica_id=None)``, writes) the whole value, and
    its checkpoint restores onto any devices. (orbax writes neither a
    host-local array nor, but on process 0, a NumPy one on a multi-process job.)

    Args:
      flat: ``{path: value}`` as :func:`host_value` gives them.

    Returns:
      ``{path: jax.Array}``, each replicated over the first device of every process.

    Example:
      >>> import jax.numpy as jnp
      >>> from nnx_momentum.checkpoint.targets import whole_values
      >>> w = whole_values({"w": jnp.arange(3)})["w"]
      >>> w.tolist(), w.sharding.is_fully_replicated
      ([0, 1, 2], True)
    """
    devices = [jax.local_devices(process_index=i)[0] for i in range(jax.process_count())]
    mesh = jax.sharding.Mesh(np.array(devices), ("process",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    out: dict[str, jax.Array] = {}
    for key, value in flat.items():
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            whole = np.asarray(multihost_utils.process_allgather(value, tiled=True))
        else:
            whole = np.asarray(value)
        out[key] = jax.make_array_from_callback(whole.shape, replicated, whole.__getitem__)
    return out


def target(value: Any, where: str) -> jax.ShapeDtypeStruct:
    """The restore target for a live value: its shape, dtype and *concrete* sharding.

    A key array's target is its key data's; a value without a sharding (NumPy,
    Python scalar, an abstract ``jax.ShapeDtypeStruct`` with none) lands on the
    first local device. A sharding over an ``AbstractMesh`` (``nnx.eval_shape``
    under ``jax.set_mesh``) is taken over the concrete mesh of the enclosing
    ``jax.set_mesh``, which must have the same axes.

    Args:
      value: the live Variable's value.
      where: e.g. ``"model 'fc/kernel'"``, for messages.

    Returns:
      A ``jax.ShapeDtypeStruct`` with a sharding.

    Raises:
      ValueError: the value is sharded over an abstract mesh that no concrete
        mesh in context matches (orbax needs devices).

    Example:
      >>> import jax.numpy as jnp
      >>> from nnx_momentum.checkpoint.targets import target
      >>> t = target(jnp.zeros((2, 3)), "model 'kernel'")
      >>> t.shape, t.dtype
      ((2, 3), dtype('float32'))
    """
    if is_key(value):
        value = (
            jax.eval_shape(jax.random.key_data, value)
            if not isinstance(value, jax.Array)
            else jax.random.key_data(value)
        )
    sharding: Any = getattr(value, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and isinstance(mesh, jax.sharding.AbstractMesh):
        concrete = jax.sharding.get_mesh()  # the one of an enclosing jax.set_mesh(...)
        if concrete.empty or tuple(concrete.shape.items()) != tuple(mesh.shape.items()):
            raise ValueError(
                f"Checkpointer.restore: {where} has a sharding over an abstract mesh "
                f"({sharding}) and no concrete mesh of that shape is set; orbax needs "
                "devices. Restore under `with jax.set_mesh(mesh):` (the concrete mesh the "
                "abstract one stands for), or give the abstract arrays a NamedSharding over "
                "a concrete jax.sharding.Mesh."
            )
        sharding = jax.sharding.NamedSharding(concrete, sharding.spec)
    # a Python scalar gets the dtype jax would give it (int32 unless x64 is on)
    dtype = (
        value.dtype
        if hasattr(value, "dtype")
        else jax.dtypes.canonicalize_dtype(np.asarray(value).dtype)
    )
    return jax.ShapeDtypeStruct(np.shape(value), dtype, sharding=sharding)


def validated_targets(
    item: str,
    step: int,
    live: Mapping[str, nnx.Variable],
    saved: Mapping[str, Any],
    saved_keys: set[str],
) -> dict[str, jax.ShapeDtypeStruct]:
    """Restore targets for ``live``, after checking them against the saved metadata.

    Args:
      item: ``'model'`` or ``'optimizer'``, for messages.
      step: the step restored, for messages.
      live: :func:`live_variables` of the live object.
      saved: :func:`flatten_saved` of the item's metadata (``shape``/``dtype`` per path).
      saved_keys: the paths saved as PRNG key data (the JSON item's ``prng_keys``).

    Returns:
      ``{path: target}`` for every live path that the checkpoint holds
      (:func:`target`). A live Variable created with ``since`` metadata
      (:func:`nnx_momentum.tree.is_optional`) may be absent from an older
      checkpoint: it gets no target and keeps its live value.

    Raises:
      ValueError: paths missing on either side (all are named; an optional
        Variable is not missing), paths whose key-ness, shape or dtype differs
        (the first ten are named), or an absent optional Variable whose live
        value is abstract. Nothing is read or written.

    Example:
      >>> import types
      >>> from flax import nnx
      >>> from nnx_momentum.checkpoint.targets import live_variables, validated_targets
      >>> live = live_variables(nnx.state(nnx.Linear(2, 1, rngs=nnx.Rngs(0))), "model")
      >>> saved = {"kernel": types.SimpleNamespace(shape=(2, 1), dtype="float32")}
      >>> validated_targets("model", 1, live, saved, set())
      Traceback (most recent call last):
      ...
      ValueError: Checkpointer.restore: the live model does not match step 1: ... ['bias']; ...
    """
    # A Variable added to the state layout after the checkpoint was written (``since``
    # metadata, nnx_momentum.tree) may be absent from it: it keeps its live value.
    absent = {key for key in set(live) - set(saved) if tree.is_optional(live[key])}
    missing = sorted(set(live) - set(saved) - absent)
    unknown = sorted(set(saved) - set(live))
    if missing or unknown:
        raise ValueError(
            f"Checkpointer.restore: the live {item} does not match step {step}: paths in the "
            f"live {item} but not in the checkpoint: {missing}; paths in the checkpoint but "
            f"not in the live {item}: {unknown}. Is it the same model/optimizer configuration "
            "(layers, BatchNorm/Dropout, clipping, weight decay, scheduler)?"
        )
    targets = {}
    problems = [
        f"{key}: not in the checkpoint (added in {live[key].get_metadata()[tree.SINCE]}) and "
        "abstract in the live object, so it would keep no value; build it concretely"
        for key in sorted(absent)
        if is_abstract(live[key].get_value())
    ]
    for key, var in live.items():
        if key in absent:
            continue
        value = var.get_value()
        key_array = is_key(value)
        if key_array != (key in saved_keys):
            problems.append(
                f"{key}: {'a PRNG key' if key_array else 'an array'} in the live {item}, "
                f"{'a PRNG key' if key in saved_keys else 'an array'} in the checkpoint"
            )
            continue
        t = target(value, f"{item} {key!r}")
        meta = saved[key]
        shape = tuple(getattr(meta, "shape", ()) or ())
        dtype = getattr(meta, "dtype", None)
        if shape != tuple(t.shape):
            problems.append(f"{key}: shape {tuple(t.shape)} live, {shape} saved")
        elif dtype is not None and np.dtype(dtype) != np.dtype(t.dtype):
            problems.append(f"{key}: dtype {np.dtype(t.dtype)} live, {np.dtype(dtype)} saved")
        targets[key] = t
    if problems:
        raise ValueError(
            f"Checkpointer.restore: the live {item} does not match step {step}: "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Nothing was restored."
        )
    return targets


def write_back(live: Mapping[str, nnx.Variable], restored: Mapping[str, Any]) -> None:
    """Writes restored arrays into the live Variables; key data is re-wrapped as keys.

    Call it only once every item has been read and checked: it is the one
    step of a restore that mutates the live objects.

    Args:
      live: :func:`live_variables` of the live object (concrete or abstract values).
      restored: the arrays read back, by the same paths; a path absent from it
        (an optional Variable the checkpoint predates) keeps its live value.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from nnx_momentum.checkpoint.targets import live_variables, write_back
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> write_back(live_variables(nnx.state(model), "model"),
      ...            {"kernel": jnp.ones((2, 1)), "bias": jnp.full(1, 2.0, jnp.float32)})
      >>> model.bias[...]
      Array([2.], dtype=float32)
    """
    for key, var in live.items():
        if key not in restored:
            continue  # an optional Variable the checkpoint predates: keeps its live value
        value = restored[key]
        old = var.get_value()
        if is_key(old):
            value = jax.random.wrap_key_data(value, impl=_key_impl(old))
        var.set_value(value)


def _key_impl(key: Any) -> Any:
    """The PRNG implementation of a key array or of its abstract ``ShapeDtypeStruct``."""
    if isinstance(key, jax.Array):
        return jax.random.key_impl(key)
    return key.dtype._impl  # a key dtype carries its implementation (an abstract key too)
