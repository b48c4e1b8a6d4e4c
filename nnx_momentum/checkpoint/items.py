"""Reading one step's items through an orbax ``CheckpointManager``, with clear errors.

A step folder holds the array items ``model`` and ``optimizer`` (orbax's
``StandardCheckpointHandler``), the JSON item ``meta`` and, when retention
ranks by a metric, orbax's own ``metrics`` item. Every reader here turns
orbax's and TensorStore's exceptions into a ``ValueError`` that names the step,
the item and the directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from nnx_momentum.checkpoint import targets

__all__ = ["ARRAY_ITEMS", "array_metadata", "read_arrays", "read_meta"]

ARRAY_ITEMS = ("model", "optimizer")
"""The array items of a step, in the order they are read and written back."""


def read_meta(manager: ocp.CheckpointManager, step: int, where: str) -> dict[str, Any]:
    """The JSON item ``meta`` of ``step``.

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
        out = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = out["meta"]
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"Checkpointer: could not read the JSON item 'meta' of step {step} in "
            f"{where!r}: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(meta, dict):
        raise ValueError(f"Checkpointer: step {step} in {where!r} has no JSON item 'meta'.")
    return meta


def array_metadata(
    manager: ocp.CheckpointManager, step: int, items: Sequence[str], where: str
) -> dict[str, Any]:
    """``{item: metadata tree}`` (shapes and dtypes, no data) of the array ``items``.

    Args:
      manager: the open orbax manager.
      step: a committed step.
      items: some of :data:`ARRAY_ITEMS`.
      where: the checkpoint root, for messages.

    Returns:
      Each item's tree of orbax ``ArrayMetadata``.

    Raises:
      ValueError: naming the item whose metadata cannot be read.
    """
    out = {}
    try:
        metadata = manager.item_metadata(step)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"Checkpointer.restore: could not read item {_failing_item(manager, step)!r} of "
            f"step {step} in {where!r} (corrupted or incomplete files?): "
            f"{type(e).__name__}: {e}"
        ) from e
    for item in items:
        m = metadata[item] if item in metadata else None
        tree = getattr(m, "tree", m)
        if tree is None:
            raise ValueError(
                f"Checkpointer: step {step} in {where!r} has no readable item {item!r}."
            )
        out[item] = tree
    return out


def _failing_item(manager: ocp.CheckpointManager, step: int) -> str:
    """Which item's metadata cannot be read (for the error message)."""
    step_dir = ocp.path.step.build_step_path(
        manager.directory, ocp.path.step.standard_name_format(), step
    )
    for item in ARRAY_ITEMS:
        try:
            ocp.StandardCheckpointHandler().metadata(step_dir / item)
        except Exception:  # noqa: BLE001
            return item
    return "model/optimizer"


def read_arrays(
    manager: ocp.CheckpointManager,
    step: int,
    item: str,
    wanted: dict[str, jax.ShapeDtypeStruct],
    where: str,
) -> dict[str, Any]:
    """Reads ``item`` of ``step`` into fresh arrays laid out as ``wanted``, and checks them.

    Args:
      manager: the open orbax manager.
      step: a committed step.
      item: ``'model'`` or ``'optimizer'``.
      wanted: the restore targets by path
        (:func:`~nnx_momentum.checkpoint.targets.validated_targets`); paths of
        the checkpoint that are not wanted are not read.
      where: the checkpoint root, for messages.

    Returns:
      ``{path: jax.Array}`` for every wanted path.

    Raises:
      ValueError: the files cannot be read, or an array came back with another
        shape or dtype.
    """
    args = ocp.args.Composite(**{item: ocp.args.StandardRestore(targets.nest_paths(wanted))})
    try:
        restored = manager.restore(step, args=args)[item]
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"Checkpointer.restore: could not read item {item!r} of step {step} in "
            f"{where!r} (corrupted or incomplete array files?): {type(e).__name__}: {e}"
        ) from e
    flat = targets.flatten_saved(restored)
    for key, target in wanted.items():
        value = flat.get(key)
        if value is None or value.shape != target.shape or value.dtype != target.dtype:
            raise ValueError(
                f"Checkpointer.restore: item {item!r} of step {step}: {key!r} came back as "
                f"{None if value is None else (value.shape, value.dtype)}, expected "
                f"{(target.shape, target.dtype)}."
            )
    return {key: flat[key] for key in wanted}
