"""The items of one step, written and read through an orbax ``CheckpointManager``.

A step folder holds the array items ``model`` and ``optimizer``, the JSON item
``meta`` and, when retention ranks by a metric, orbax's own ``metrics`` item.

The array items are written by orbax's ``PyTreeCheckpointHandler`` with
``use_zarr3=True, use_compression=False`` (OCDBT kept, :func:`array_handler`):
f32 optimizer state barely compresses (zstd saves ~8%), and leaving it out
makes a save ~0.6-0.7x and a restore ~0.65x of orbax's default
(``benchmarks/checkpoint.py``). The format is recorded in each item's
metadata, so plain orbax reads these items with any handler, and this
checkpointer still reads the items of earlier versions (orbax's
``StandardCheckpointHandler``: zarr2, zstd).

A restore reads the JSON item first (it also lists each array's shape and
dtype: :func:`saved_arrays`), then both array items in *one* orbax restore
call (:func:`read_arrays`). Every reader here turns orbax's and TensorStore's
exceptions into a ``ValueError`` that names the step, the item and the
directory.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from nnx_momentum.checkpoint import targets

__all__ = [
    "ARRAY_ITEMS",
    "array_handler",
    "array_layout",
    "read_arrays",
    "read_meta",
    "save_args",
    "saved_arrays",
    "step_path",
]

ARRAY_ITEMS = ("model", "optimizer")
"""The array items of a step, in the order they are read and written back."""


def array_handler(
    multiprocessing: ocp.options.MultiprocessingOptions | None = None,
) -> ocp.PyTreeCheckpointHandler:
    """The orbax handler of the array items: OCDBT, zarr3, no compression.

    Restoring, it reads the format each item records (``use_zarr3``,
    ``use_ocdbt``), so it also reads items written with orbax's defaults.

    Args:
      multiprocessing: a process-local checkpoint's multiprocessing options
        (:func:`~nnx_momentum.checkpoint.options.process_local_options`): then
        this process writes every shard of its arrays itself (orbax's own
        recipe for local storage: an ``ArrayHandler`` with no primary host
        and no replica selection). ``None``: orbax's defaults.

    Returns:
      A new ``orbax.checkpoint.PyTreeCheckpointHandler``.

    Example:
      >>> import tempfile
      >>> import numpy as np
      >>> import orbax.checkpoint as ocp
      >>> from nnx_momentum.checkpoint.items import array_handler, save_args
      >>> with tempfile.TemporaryDirectory() as d:
      ...     with ocp.Checkpointer(array_handler()) as c:
      ...         c.save(f"{d}/x", args=save_args({"w": np.ones(3, np.float32)}))
      ...     ocp.StandardCheckpointer().restore(f"{d}/x")["w"]  # plain orbax reads it
      array([1., 1., 1.], dtype=float32)
    """
    if multiprocessing is None:
        return ocp.PyTreeCheckpointHandler(use_zarr3=True, use_compression=False)
    registry = ocp.type_handlers.create_type_handler_registry(
        (
            jax.Array,
            ocp.type_handlers.ArrayHandler(
                primary_host=None, replica_id=None, use_replica_parallel=False
            ),
        ),
    )
    return ocp.PyTreeCheckpointHandler(
        use_zarr3=True,
        use_compression=False,
        multiprocessing_options=multiprocessing,
        type_handler_registry=registry,
    )


def save_args(tree: Any) -> ocp.args.PyTreeSave:
    """The orbax arguments that save one array item (for :func:`array_handler`).

    Args:
      tree: the item: nested dicts of ``jax.Array`` / NumPy arrays
        (:func:`~nnx_momentum.checkpoint.targets.nest_paths` of
        :func:`~nnx_momentum.checkpoint.targets.host_value`).

    Returns:
      ``ocp.args.PyTreeSave(tree)``.

    Example:
      >>> import numpy as np
      >>> from nnx_momentum.checkpoint.items import save_args
      >>> type(save_args({"w": np.zeros(2)})).__name__
      'PyTreeSaveArgs'
    """
    return ocp.args.PyTreeSave(tree)


def array_layout(arrays: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{path: {'shape': [...], 'dtype': '...'}}``: what the JSON item records of an item.

    Args:
      arrays: the values a save writes, by path (anything with ``shape`` and ``dtype``).

    Returns:
      The JSON-ready shapes and dtype names (:func:`saved_arrays` reads them back).

    Example:
      >>> import numpy as np
      >>> from nnx_momentum.checkpoint.items import array_layout
      >>> array_layout({"fc/kernel": np.zeros((2, 3), np.float32)})
      {'fc/kernel': {'shape': [2, 3], 'dtype': 'float32'}}
    """
    return {
        key: {"shape": [int(n) for n in np.shape(value)], "dtype": np.dtype(value.dtype).name}
        for key, value in arrays.items()
    }


def step_path(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    """The folder of ``step`` under the manager's root (orbax's standard step names).

    Args:
      manager: the open orbax manager.
      step: a step number.

    Returns:
      ``<root>/<step>``, as an ``etils.epath.Path``.

    Example:
      >>> import tempfile
      >>> import orbax.checkpoint as ocp
      >>> from nnx_momentum.checkpoint.items import step_path
      >>> with tempfile.TemporaryDirectory() as d, ocp.CheckpointManager(d) as m:
      ...     step_path(m, 7).name
      '7'
    """
    return ocp.path.step.build_step_path(
        manager.directory, ocp.path.step.standard_name_format(), step
    )


def read_meta(manager: ocp.CheckpointManager, step: int, where: str) -> dict[str, Any]:
    """The JSON item ``meta`` of ``step``.

    Read by orbax's ``JsonCheckpointHandler`` straight from the step folder:
    the step is committed (the caller checked), and one file needs no
    manager round trip.

    Args:
      manager: the open orbax manager.
      step: a committed step.
      where: the checkpoint root, for messages.

    Returns:
      The JSON document (:mod:`nnx_momentum.checkpoint.metadata`).

    Raises:
      ValueError: the item is missing or unreadable.

    Example:
      >>> import tempfile
      >>> import orbax.checkpoint as ocp
      >>> from nnx_momentum.checkpoint.items import read_meta
      >>> handlers = {"meta": ocp.JsonCheckpointHandler()}
      >>> with tempfile.TemporaryDirectory() as d:
      ...     with ocp.CheckpointManager(d, item_handlers=handlers) as m:
      ...         _ = m.save(1, args=ocp.args.Composite(meta=ocp.args.JsonSave({"step": 1})))
      ...         m.wait_until_finished()
      ...         read_meta(m, 1, d)
      {'step': 1}
    """
    try:
        meta = ocp.JsonCheckpointHandler().restore(
            step_path(manager, step) / "meta", args=ocp.args.JsonRestore()
        )
    except FileNotFoundError:
        meta = None
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"Checkpointer: could not read the JSON item 'meta' of step {step} in "
            f"{where!r}: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(meta, dict):
        raise ValueError(
            f"Checkpointer: step {step} in {where!r} is not an nnx_momentum checkpoint (it has "
            "no JSON item 'meta'). A plain orbax checkpoint of nnx.Optimizer(model, "
            "optax.sgd(...)) imports with nm.import_optax_checkpoint(directory, model, "
            f"optimizer, step={step})."
        )
    return meta


def saved_arrays(
    manager: ocp.CheckpointManager,
    step: int,
    items: Sequence[str],
    meta: Mapping[str, Any],
    where: str,
) -> dict[str, dict[str, Any]]:
    """``{item: {path: leaf with .shape and .dtype}}`` of the array ``items``; no data read.

    From orbax's own item metadata: what the array files hold. The JSON item's
    ``arrays`` (absent before 0.2) must agree with it: a checkpoint whose JSON
    says ``float32`` where the array item holds ``bfloat16`` is refused, never
    restored with a silent cast.

    Args:
      manager: the open orbax manager.
      step: a committed step.
      items: some of :data:`ARRAY_ITEMS`.
      meta: the step's JSON item (:func:`read_meta`).
      where: the checkpoint root, for messages.

    Returns:
      Each item's leaves by ``'/'``-joined path.

    Raises:
      ValueError: naming the item whose metadata cannot be read, or the first
        paths where the JSON item and the array item disagree.
    """
    try:
        metadata = manager.item_metadata(step)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"Checkpointer.restore: could not read item {_failing_item(manager, step)!r} of "
            f"step {step} in {where!r} (corrupted or incomplete files?): "
            f"{type(e).__name__}: {e}"
        ) from e
    out = {}
    for item in items:
        m = metadata[item] if item in metadata else None
        tree = getattr(m, "tree", m)
        if tree is None:
            raise ValueError(
                f"Checkpointer.restore: could not read item {item!r} of step {step} in "
                f"{where!r}: it is missing or has no metadata."
            )
        out[item] = targets.flatten_saved(tree)
    recorded = _recorded(meta.get("arrays"), items)
    for item in items if recorded is not None else ():
        json_side, array_side = recorded[item], out[item]  # type: ignore[index]
        bad = [
            f"{key}: JSON {_layout(json_side.get(key))}, array item {_layout(array_side.get(key))}"
            for key in sorted(set(json_side) | set(array_side))
            if _layout(json_side.get(key)) != _layout(array_side.get(key))
        ]
        if bad:
            raise ValueError(
                f"Checkpointer.restore: step {step} in {where!r}: its JSON item and its "
                f"array item {item!r} disagree (the files were altered or mixed): "
                + "; ".join(bad[:5])
                + ". Nothing was restored."
            )
    return out


def _layout(leaf: Any) -> tuple[tuple[int, ...], str] | None:
    if leaf is None:
        return None
    return tuple(leaf.shape), str(np.dtype(leaf.dtype))


def _recorded(arrays: Any, items: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    """The JSON item's ``arrays`` as leaves; ``None`` if it has none (or not for ``items``)."""
    if not isinstance(arrays, Mapping):
        return None  # written before the JSON item listed the arrays
    try:
        return {
            item: {
                key: types.SimpleNamespace(
                    shape=tuple(int(n) for n in info["shape"]),
                    dtype=np.dtype(jnp.dtype(info["dtype"])),
                )
                for key, info in arrays[item].items()
            }
            for item in items
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # not a layout this version wrote: ask orbax


def _unreadable_metadata(
    manager: ocp.CheckpointManager, step: int, items: Iterable[str]
) -> tuple[str, BaseException] | None:
    """The first of ``items`` whose orbax metadata cannot be read, and why; ``None`` if none."""
    for item in items:
        try:
            array_handler().metadata(step_path(manager, step) / item)
        except Exception as e:  # noqa: BLE001
            return item, e
    return None


def _failing_item(manager: ocp.CheckpointManager, step: int) -> str:
    """Which item's metadata cannot be read (for the error message)."""
    found = _unreadable_metadata(manager, step, ARRAY_ITEMS)
    return "/".join(ARRAY_ITEMS) if found is None else found[0]


def _restore_args(wanted: Mapping[str, jax.ShapeDtypeStruct]) -> ocp.args.PyTreeRestore:
    tree = targets.nest_paths(wanted)
    return ocp.args.PyTreeRestore(
        tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree)
    )


def read_arrays(
    manager: ocp.CheckpointManager,
    step: int,
    wanted: Mapping[str, Mapping[str, jax.ShapeDtypeStruct]],
    where: str,
) -> dict[str, dict[str, Any]]:
    """Reads the items of ``step`` into fresh arrays laid out as ``wanted``, and checks them.

    Every item is read by one orbax restore call, as a bare orbax user would.
    Should it fail, each item is then read alone, to name the one that fails.

    Args:
      manager: the open orbax manager.
      step: a committed step.
      wanted: ``{item: {path: target}}`` for some of :data:`ARRAY_ITEMS`
        (:func:`~nnx_momentum.checkpoint.targets.validated_targets`); paths
        of the checkpoint that are not wanted are not read.
      where: the checkpoint root, for messages.

    Returns:
      ``{item: {path: jax.Array}}`` for every wanted path.

    Raises:
      ValueError: the files cannot be read (naming the item), or an array
        came back with another shape or dtype.

    Example:
      >>> import tempfile
      >>> import jax, numpy as np
      >>> import orbax.checkpoint as ocp
      >>> from nnx_momentum.checkpoint.items import array_handler, read_arrays, save_args
      >>> device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      >>> target = jax.ShapeDtypeStruct((2,), np.float32, sharding=device)
      >>> item = save_args({"w": np.ones(2, np.float32)})
      >>> with tempfile.TemporaryDirectory() as d:
      ...     with ocp.CheckpointManager(d, item_handlers={"model": array_handler()}) as m:
      ...         _ = m.save(1, args=ocp.args.Composite(model=item))
      ...         m.wait_until_finished()
      ...         read_arrays(m, 1, {"model": {"w": target}}, d)["model"]["w"]
      Array([1., 1.], dtype=float32)
    """
    args = {item: _restore_args(paths) for item, paths in wanted.items()}
    try:
        out = manager.restore(step, args=ocp.args.Composite(**args))
        restored = {item: out[item] for item in wanted}
    except Exception as e:  # noqa: BLE001
        item, error = _failing_read(manager, step, args, e)
        raise ValueError(
            f"Checkpointer.restore: could not read item {item!r} of step {step} in "
            f"{where!r} (corrupted or incomplete array files?): {type(error).__name__}: {error}"
        ) from e
    result = {}
    for item, paths in wanted.items():
        flat = targets.flatten_saved(restored[item])
        for key, target in paths.items():
            value = flat.get(key)
            if value is None or value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(
                    f"Checkpointer.restore: item {item!r} of step {step}: {key!r} came back as "
                    f"{None if value is None else (value.shape, value.dtype)}, expected "
                    f"{(target.shape, target.dtype)}."
                )
        result[item] = {key: flat[key] for key in paths}
    return result


def _failing_read(
    manager: ocp.CheckpointManager,
    step: int,
    args: Mapping[str, ocp.args.PyTreeRestore],
    error: BaseException,
) -> tuple[str, BaseException]:
    """The item (and its error) whose read fails alone; ``error`` if none does.

    Each item's metadata is probed first (corrupted files usually fail there,
    with no array read); only if all of them read is each item read again alone.
    """
    if len(args) == 1:
        return next(iter(args)), error
    found = _unreadable_metadata(manager, step, args)
    if found is not None:
        return found
    for item, arg in args.items():
        try:
            manager.restore(step, args=ocp.args.Composite(**{item: arg}))
        except Exception as e:  # noqa: BLE001
            return item, e
    return "/".join(args), error
