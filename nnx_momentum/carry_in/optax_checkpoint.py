"""Carry in a plain orbax checkpoint of ``nnx.Optimizer(model, optax.sgd(...))``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from nnx_momentum import layout, tree
from nnx_momentum.carry_in._apply import Run, apply, state_kind
from nnx_momentum.checkpoint.items import step_path

__all__ = ["import_optax_checkpoint"]


def _read_tree(path: epath.Path) -> dict[str, np.ndarray]:
    handler = ocp.PyTreeCheckpointHandler()
    metadata = handler.metadata(path)
    saved = getattr(metadata, "tree", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
        saved,
        is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"),
    )
    restored = handler.restore(
        path,
        args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
        ),
    )
    return {tree.path_str(p): np.asarray(v) for p, v in tree.flatten(restored).items()}


def _read_item(path: epath.Path) -> dict[str, np.ndarray]:
    """Every array of one orbax PyTree item, by ``'/'``-joined path, on the first device."""
    try:
        return _read_tree(path)
    except Exception as e:  # noqa: BLE001 - re-raised naming the item
        raise ValueError(
            f"carry_in: could not read the orbax item {str(path)!r}: {type(e).__name__}: {e}"
        ) from e


def _strip_value(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``'fc/kernel/value'`` -> ``'fc/kernel'`` when every leaf is a saved Variable's value."""
    suffix = tree.SEP + "value"
    if flat and all(k.endswith(suffix) for k in flat):
        return {k[: -len(suffix)]: v for k, v in flat.items()}
    return dict(flat)


def _split_model_optimizer(
    items: Mapping[str, epath.Path], step: int, where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's arrays, from either layout."""
    if "meta" in items:
        raise ValueError(
            f"carry_in: step {step} in {where!r} is an nnx_momentum checkpoint: restore it "
            "with nm.Checkpointer(directory).restore(model, optimizer)."
        )
    if "model" in items and "optimizer" in items:
        return (
            _strip_value(_read_item(items["model"])),
            _strip_value(_read_item(items["optimizer"])),
        )
    if "default" in items:
        parts: dict[str, dict[str, Any]] = {}
        for k, v in _read_item(items["default"]).items():
            head, _, rest = k.partition(tree.SEP)
            parts.setdefault(head, {})[rest] = v
        for model_key, opt_key in (("0", "1"), ("model", "optimizer")):
            if set(parts) == {model_key, opt_key}:
                return _strip_value(parts[model_key]), _strip_value(parts[opt_key])
        raise ValueError(
            f"carry_in: step {step} in {where!r} holds one item whose top-level keys are "
            f"{sorted(parts)}; expected nnx.state((model, "
            "optimizer)) (keys '0' and '1') or {'model': ..., 'optimizer': ...}."
        )
    raise ValueError(
        f"carry_in: step {step} in {where!r} has items {sorted(items)}; expected one item "
        "(nnx.state((model, optimizer)) saved with ocp.args.StandardSave) or the items "
        "'model' and 'optimizer' (ocp.args.Composite)."
    )


def _saved_step(directory: str | epath.PathLike, step: int | None) -> tuple[int, epath.Path]:
    """The step to import (``None``: the latest committed) and its folder."""
    where = str(directory)
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(directory, options=options) as manager:
        steps = manager.all_steps()
        if step is None:
            if not steps:
                raise ValueError(f"carry_in: {where!r} holds no committed checkpoint step.")
            step = max(steps)
        elif step not in steps:
            raise ValueError(f"carry_in: {where!r} has no step {step}; it has {sorted(steps)}.")
        return step, step_path(manager, step)


def _optimizer_run(run: Run, opt_flat: Mapping[str, Any]) -> None:
    """Fills ``run`` from the optimizer's arrays: velocity, step, count and LR.

    Raises:
      ValueError: any other state, or no step.
    """
    unknown = []
    has_step = False
    lr: float | None = None
    for role, path in layout.roles(opt_flat).items():
        value = opt_flat[path]
        param = layout.param_path(role)
        kind = state_kind(role)
        if param is not None:
            run.velocity[param] = value
        elif kind == "step":
            has_step = True
            run.step = int(value)
        elif kind == "count":
            run.count = int(value)
        elif kind == "learning_rate":
            lr = float(value)
        else:
            unknown.append(path)
    if unknown or not has_step:
        raise ValueError(
            f"carry_in: the {run.source} holds optimizer state that optax.sgd does not: "
            f"{unknown}{'' if has_step else ' (and no step)'}. Only a velocity "
            "(optax.trace), a step and an update count carry over."
        )
    run.zero_velocity_ok = not run.velocity
    if lr is not None:
        run.lrs = {p: lr for p in run.velocity}


def import_optax_checkpoint(
    directory: str | epath.PathLike, model: Any, optimizer: Any, *, step: int | None = None
) -> int:
    """Continues a plain ``nnx.Optimizer(model, optax.sgd(...))`` run saved by orbax.

    Reads a step written by an ``orbax.checkpoint.CheckpointManager`` in either
    layout flax's and orbax's guides show: ``nnx.state((model, optimizer))`` as
    one item (``ocp.args.StandardSave``), or the items ``model`` and
    ``optimizer`` (``ocp.args.Composite``); each Variable saved as a State
    (``.../value``) or a pure dict (``nnx.to_pure_dict``). Then writes, in
    place: every Variable of the model, the velocity (``optax.trace``'s), the
    step and the optax update count (what an optax *schedule* as ``lr`` is
    evaluated at). Build the live optimizer with the source's hyperparameters:
    ``optax.sgd(lr, momentum, nesterov)`` is ``nm.MomentumOptimizer(model, lr,
    momentum, nesterov=nesterov)`` (the checkpoint does not record them).

    Args:
      directory: the ``CheckpointManager``'s root (a path or ``gs://`` URL).
      model: the live model, of the saved model's structure.
      optimizer: an ``nm.MomentumOptimizer`` on ``model``, or an ``nm.Momentum``
        (``MomentumNesterov``, ``SGD``) registered on ``model``.
      step: the step to import; ``None``: the latest.

    Returns:
      The step imported.

    Raises:
      ValueError: no such step; a layout other than the two above, or an
        nnx_momentum checkpoint (restore those with ``nm.Checkpointer``); any
        path missing on either side, a shape or dtype that differs, or
        optimizer state other than a velocity, a step and a count. Nothing is
        written then.

    Example:
      >>> import tempfile, optax, orbax.checkpoint as ocp
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> source = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     with ocp.CheckpointManager(d) as manager:
      ...         _ = manager.save(7, args=ocp.args.StandardSave(nnx.state((model, source))))
      ...     fresh = nnx.Linear(2, 1, rngs=nnx.Rngs(1))
      ...     opt = nm.MomentumOptimizer(fresh, lr=0.1, momentum=0.9)
      ...     nm.import_optax_checkpoint(d, fresh, opt)
      7
      >>> bool((fresh.kernel[...] == model.kernel[...]).all())
      True
    """
    step, step_dir = _saved_step(directory, step)
    where = str(directory)
    items = {p.name: p for p in step_dir.iterdir() if p.is_dir()}
    model_flat, opt_flat = _split_model_optimizer(items, step, where)
    run = Run(
        source=f"optax checkpoint (step {step} in {where!r})",
        step=0,
        weights=model_flat,
        whole_model=True,
    )
    _optimizer_run(run, opt_flat)
    apply(model, optimizer, run)
    return step
