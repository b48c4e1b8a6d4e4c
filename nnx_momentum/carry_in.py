"""Carry a run in: continue an optax, torch or braintools run with the same numbers.

Each importer reads one source -- a plain orbax checkpoint of
``nnx.Optimizer(model, optax.sgd(...))``, a ``torch.optim.SGD`` state_dict
(with its ``lr_scheduler``'s), or a braintools ``Momentum`` state_dict --
and writes the model's weights, the velocity, the update count and the
scheduler's position into live ``nnx_momentum`` objects of either face
(``nm.MomentumOptimizer``, or ``nm.Momentum`` registered on the model). The
next steps are then the steps the source library would have taken.

One rule for every source: the source is turned into values by *role*
(:mod:`nnx_momentum.layout`: ``velocity/<param path>``, ``step``,
``count/<g>``, ``learning_rate/<g>``), everything is checked -- every name
in both directions, shapes, dtypes (never cast), the hyperparameters the
source records, and the LR the source would apply next against the live
scheduler's -- and only then is anything written. A failed import leaves
the live objects as they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from nnx_momentum import layout, tree
from nnx_momentum import learning_rate as lr_lib
from nnx_momentum.nnx_optimizer import MomentumOptimizer
from nnx_momentum.optimizers import BraintoolsOptimizer
from nnx_momentum.schedulers import ReduceLROnPlateau

__all__ = ["import_braintools_momentum", "import_optax_checkpoint", "import_torch_sgd"]

_RTOL = 1e-6
"""Relative tolerance of LR and hyperparameter checks: float32 against the source's floats."""


@dataclasses.dataclass
class _Run:
    """A source run in this package's terms (paths are ``'/'``-joined nnx paths)."""

    source: str
    weights: dict[str, np.ndarray]
    velocity: dict[str, np.ndarray]
    step: int
    count: int | None = None  # the optax update count; None: ``step``
    epoch: float | None = None  # the scheduler's epoch; None: leave the scheduler as it is
    lrs: dict[str, float] | None = None  # the LR each parameter gets next
    hyperparams: dict[str, dict[str, Any]] | None = None  # per parameter
    origin: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> source name
    whole_model: bool = False  # the source holds every Variable of the model
    zero_velocity_ok: bool = False  # the source has no velocity at all (momentum 0)


def _core(optimizer: Any) -> MomentumOptimizer[Any]:
    """The ``MomentumOptimizer`` behind either face."""
    if isinstance(optimizer, BraintoolsOptimizer):
        if not optimizer.registered:
            raise ValueError(
                f"{type(optimizer).__name__} has no weights: call "
                "register_trainable_weights(model) before importing a run into it."
            )
        return optimizer.optimizer
    if isinstance(optimizer, MomentumOptimizer):
        return optimizer
    raise TypeError(
        f"optimizer must be an nm.MomentumOptimizer or an nm.Momentum/MomentumNesterov/SGD, "
        f"got {type(optimizer).__name__}."
    )


def _model_variables(model: Any, optimizer: Any) -> dict[str, nnx.Variable]:
    """``{path: live Variable}`` of the model; the braintools face must be registered on it."""
    live = {
        tree.path_str(p): v
        for p, v in tree.live_variables(nnx.state(model), "carry_in: model").items()
    }
    if isinstance(optimizer, BraintoolsOptimizer):
        registered = {tree.path_str(p): v for p, v in tree.flatten(optimizer.param_states).items()}
        strays = sorted(p for p, v in registered.items() if live.get(p) is not v)
        if strays:
            raise ValueError(
                f"carry_in: the optimizer's registered weights {strays} are not the model's "
                "Variables at those paths; register the model itself "
                "(register_trainable_weights(model) or nnx.state(model, nnx.Param))."
            )
    return live


def _check_array(what: str, var: nnx.Variable, value: Any, problems: list[str]) -> None:
    live = var.get_value()
    if np.shape(live) != np.shape(value):
        problems.append(f"{what}: shape {np.shape(value)}, the live one is {np.shape(live)}")
    elif np.dtype(live.dtype) != np.dtype(value.dtype):
        problems.append(
            f"{what}: dtype {np.dtype(value.dtype)}, the live one is {np.dtype(live.dtype)} "
            "(values are never cast)"
        )


def _param_groups(core: MomentumOptimizer[Any], params: Sequence[str]) -> dict[str, int]:
    """The parameter group of each optimized parameter path."""
    labels = {tree.path_str(p): int(g) for p, g in core.group_labels}
    return {p: labels.get(p, 0) for p in params}


def _live_lrs(core: MomentumOptimizer[Any], count: int) -> list[float]:
    values = np.atleast_1d(np.asarray(lr_lib.lr_value(core.lr, count), np.float64))
    n = len(core.group_configs)
    return [float(values[k]) if values.size > 1 else float(values[0]) for k in range(n)]


def _close(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=_RTOL, atol=0.0))


def _check_hyperparams(
    run: _Run, core: MomentumOptimizer[Any], groups: Mapping[str, int], problems: list[str]
) -> None:
    """The hyperparameters the source records, against the live group of each parameter."""
    for path, wanted in sorted((run.hyperparams or {}).items()):
        config = core.group_configs[groups[path]]
        for name, value in wanted.items():
            live = getattr(config, name)
            same = live == value if isinstance(value, bool) else _close(float(live), float(value))
            if not same:
                problems.append(
                    f"{name} of {_named(run, path)}: {value!r} in the source, {live!r} live"
                )


def _named(run: _Run, path: str) -> str:
    origin = run.origin.get(path)
    return f"{path!r}" if origin is None or origin == path else f"{path!r} (from {origin!r})"


def _position_scheduler(core: MomentumOptimizer[Any], run: _Run, count: int) -> None:
    """Moves the scheduler to ``run.epoch`` and checks the next LR against the source's.

    Raises:
      ValueError: the scheduler cannot jump to an epoch, or the LR it gives
        differs from the source's (the scheduler is put back first).
    """
    lr = core.lr
    before = lr.state_dict()
    if run.epoch is not None:
        if isinstance(lr, lr_lib.OptaxSchedule | ReduceLROnPlateau):
            raise ValueError(
                f"carry_in: the {run.source} has a scheduler at epoch {run.epoch}, but the live "
                f"lr is a {type(lr).__name__}, which cannot jump to an epoch. Build the "
                "optimizer with the source's schedule as an nnx_momentum scheduler "
                "(nm.StepLR, nm.CosineAnnealingLR, ...)."
            )
        lr.step(run.epoch)
    if run.lrs:
        live = _live_lrs(core, count)
        groups = _param_groups(core, list(run.lrs))
        wrong = [
            f"{_named(run, p)}: {want!r} in the source, {live[groups[p]]!r} live"
            for p, want in sorted(run.lrs.items())
            if not _close(live[groups[p]], want)
        ]
        if wrong:
            lr.load_state_dict(before)
            raise ValueError(
                f"carry_in: the next LR differs from the {run.source}'s: "
                + "; ".join(wrong[:10])
                + ". Give the live optimizer the source's LR and schedule (and the "
                "scheduler state, for the epoch). Nothing was imported."
            )


def _is_count(path: str) -> bool:
    """An optax update count elsewhere than ``count/<g>`` (a schedule's, inside a chain)."""
    return path.startswith("opt_state/") and path.endswith(tree.SEP + "count")


def _apply(model: Any, optimizer: Any, run: _Run) -> None:
    """Checks ``run`` against the live objects, then writes it; nothing half-applied."""
    core = _core(optimizer)
    model_vars = _model_variables(model, optimizer)
    roles = layout.live_roles(core.state_tree())
    velocity_vars = {
        param: var
        for r, var in roles.items()
        if (param := layout.param_path(r)) is not None and r.startswith(layout.VELOCITY)
    }
    others = {r: v for r, v in roles.items() if layout.param_path(r) is None}
    unknown_roles = sorted(
        r
        for r in others
        if r != "step"
        and not r.startswith(("count/", "learning_rate/", "lr/"))
        and not _is_count(r)
    )
    velocity = dict(run.velocity)
    if not velocity and run.zero_velocity_ok:
        if any(c.momentum for c in core.group_configs):
            raise ValueError(
                f"carry_in: the {run.source} holds no velocity (momentum off), but the live "
                "optimizer has momentum > 0: build it with momentum=0.0."
            )
        velocity = {p: np.zeros_like(v.get_value()) for p, v in velocity_vars.items()}
    names = {
        "optimized parameters with no weight in the source": set(velocity_vars) - set(run.weights),
        "weights in the source with no Variable in the live model": set(run.weights)
        - set(model_vars),
        "optimized parameters with no velocity in the source": set(velocity_vars) - set(velocity),
        "velocities in the source with no optimized parameter live": set(velocity)
        - set(velocity_vars),
    }
    if run.whole_model:
        names["Variables of the live model not in the source"] = set(model_vars) - set(run.weights)
    problems = [
        f"{what}: {[_named(run, p) for p in sorted(paths)]}"
        for what, paths in names.items()
        if paths
    ]
    if unknown_roles:
        problems.append(
            f"live optimizer state with no counterpart in the source: {unknown_roles} (a "
            "tx_wrapper?)"
        )
    if problems:
        raise ValueError(
            f"carry_in: the {run.source} does not match the live model/optimizer: "
            + "; ".join(problems)
            + ". Map the names (names={...}) or build the model/optimizer the source trained. "
            "Nothing was imported."
        )
    count = run.step if run.count is None else run.count
    writes: list[tuple[nnx.Variable, Any]] = []
    for path, value in sorted(run.weights.items()):
        _check_array(f"weight {_named(run, path)}", model_vars[path], value, problems)
        writes.append((model_vars[path], value))
    for path, value in sorted(velocity.items()):
        _check_array(f"velocity of {_named(run, path)}", velocity_vars[path], value, problems)
        writes.append((velocity_vars[path], value))
    groups = _param_groups(core, list(velocity_vars))
    _check_hyperparams(run, core, groups, problems)
    if problems:
        raise ValueError(
            f"carry_in: the {run.source} does not match the live model/optimizer: "
            + "; ".join(problems[:20])
            + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
            + ". Nothing was imported."
        )
    _position_scheduler(core, run, count)  # raises (scheduler put back) on an LR mismatch
    lrs = _live_lrs(core, count)
    for r, var in others.items():
        dtype = var.get_value().dtype
        if r == "step":
            writes.append((var, np.asarray(run.step, dtype)))
        elif r.startswith("count/") or _is_count(r):
            writes.append((var, np.asarray(count, dtype)))
        elif r.startswith("learning_rate/"):
            writes.append((var, np.asarray(lrs[int(r.split("/")[1])], dtype)))
    for var, value in writes:
        sharding = getattr(var.get_value(), "sharding", None)
        var.set_value(jax.device_put(np.asarray(value), sharding))


# -- optax: a plain orbax checkpoint of nnx.Optimizer ------------------------------------


def _saved_items(step_dir: epath.Path) -> dict[str, epath.Path]:
    return {p.name: p for p in step_dir.iterdir() if p.is_dir()}


def _read_item(path: epath.Path) -> dict[str, np.ndarray]:
    """Every array of one orbax PyTree item, by ``'/'``-joined path, on the first device."""
    try:
        return _read_tree(path)
    except Exception as e:  # noqa: BLE001 - re-raised naming the item
        raise ValueError(
            f"carry_in: could not read the orbax item {str(path)!r}: {type(e).__name__}: {e}"
        ) from e


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
        flat = _read_item(items["default"])
        for model_key, opt_key in (("0", "1"), ("model", "optimizer")):
            heads = {k.split(tree.SEP, 1)[0] for k in flat}
            if heads == {model_key, opt_key}:
                part = {
                    head: {
                        k.split(tree.SEP, 1)[1]: v
                        for k, v in flat.items()
                        if k.split(tree.SEP, 1)[0] == head
                    }
                    for head in heads
                }
                return _strip_value(part[model_key]), _strip_value(part[opt_key])
        raise ValueError(
            f"carry_in: step {step} in {where!r} holds one item whose top-level keys are "
            f"{sorted({k.split(tree.SEP, 1)[0] for k in flat})}; expected nnx.state((model, "
            "optimizer)) (keys '0' and '1') or {'model': ..., 'optimizer': ...}."
        )
    raise ValueError(
        f"carry_in: step {step} in {where!r} has items {sorted(items)}; expected one item "
        "(nnx.state((model, optimizer)) saved with ocp.args.StandardSave) or the items "
        "'model' and 'optimizer' (ocp.args.Composite)."
    )


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
        step_dir = ocp.path.step.build_step_path(
            manager.directory, ocp.path.step.standard_name_format(), step
        )
    model_flat, opt_flat = _split_model_optimizer(_saved_items(step_dir), step, where)
    run = _Run(
        source=f"optax checkpoint (step {step} in {where!r})",
        weights=model_flat,
        velocity={},
        step=0,
        whole_model=True,
    )
    unknown = []
    steps_seen: list[int] = []
    for role, path in layout.roles(opt_flat).items():
        value = opt_flat[path]
        param = layout.param_path(role)
        if param is not None:
            run.velocity[param] = value
        elif role == "step":
            steps_seen.append(int(value))
            run.step = int(value)
        elif role.startswith("count/") or _is_count(path):
            run.count = int(value)
        elif role.startswith("learning_rate/"):
            run.lrs = {"": float(value)}  # filled per parameter below
        else:
            unknown.append(path)
    if unknown or not steps_seen:
        raise ValueError(
            f"carry_in: the {run.source} holds optimizer state that optax.sgd does not: "
            f"{unknown}{'' if steps_seen else ' (and no step)'}. Only a velocity "
            "(optax.trace), a step and an update count carry over."
        )
    run.zero_velocity_ok = not run.velocity
    if run.lrs is not None:
        lr = run.lrs[""]
        run.lrs = {p: lr for p in run.velocity}
    _apply(model, optimizer, run)
    return step


# -- torch: torch.optim.SGD + lr_scheduler ----------------------------------------------


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor (or array) as a NumPy array of its own dtype."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _torch_rule(name: str, nnx_paths: set[str]) -> str:
    """The default torch name -> nnx path rule (see :func:`import_torch_sgd`)."""
    parts = name.split(".")
    head, last = parts[:-1], parts[-1]
    renames = {
        "weight": ("kernel", "scale"),
        "running_mean": ("mean",),
        "running_var": ("var",),
    }
    for candidate in renames.get(last, ()):
        path = tree.SEP.join((*head, candidate))
        if path in nnx_paths:
            return path
    return tree.SEP.join(parts)


def _torch_layout(value: np.ndarray, name: str, path: str) -> np.ndarray:
    """A torch ``weight`` that becomes an nnx ``kernel``, laid out as nnx's."""
    if not (name.endswith("weight") and path.split(tree.SEP)[-1] == "kernel"):
        return value
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)  # Linear (out, in) -> (in, out)
    if value.ndim > 2:  # Conv (out, in, *k) -> (*k, in, out)
        return np.ascontiguousarray(np.transpose(value, (*range(2, value.ndim), 1, 0)))
    return value


def import_torch_sgd(
    model: Any,
    optimizer: Any,
    sgd_state: Mapping[str, Any],
    model_state: Mapping[str, Any],
    *,
    scheduler_state: Mapping[str, Any] | None = None,
    param_names: Sequence[str] | None = None,
    names: Mapping[str, str | None] | None = None,
    step: int = 0,
) -> None:
    """Continues a ``torch.optim.SGD`` run (with its ``lr_scheduler``) on an nnx model.

    Writes the torch model's weights into ``model``, each ``momentum_buffer``
    into the velocity of its parameter (a parameter with no buffer yet gets a
    zero velocity: torch's first step then gives the same), and moves the live
    scheduler to the torch scheduler's ``last_epoch`` (``optimizer.lr.step(
    last_epoch)``). Checked first: torch's ``dampening`` must be 0 and
    ``maximize`` off; each parameter's ``lr`` (the one torch applies next),
    ``momentum``, ``nesterov`` and ``weight_decay`` must equal those of its live
    parameter group (build the optimizer with ``groups=[nm.ParamGroup(...)]``
    for several torch param groups).

    Names: a torch name becomes an nnx path by ``names`` if it is there (``None``
    drops it, e.g. ``{'bn.num_batches_tracked': None}``), else by the default
    rule: ``'.'`` becomes ``'/'``, and a last ``weight`` becomes ``kernel`` (or
    ``scale``, for norms) where the nnx model has that path; ``running_mean``
    and ``running_var`` become ``mean`` and ``var``. Layout: a torch ``weight``
    that becomes an nnx ``kernel`` is transposed to nnx's layout -- Linear
    ``(out, in)`` to ``(in, out)``, Conv ``(out, in, *k)`` to ``(*k, in, out)``;
    everything else is copied as is. The same holds for its momentum buffer.

    Args:
      model: the live nnx model.
      optimizer: an ``nm.MomentumOptimizer`` on ``model`` or an ``nm.Momentum``
        (``MomentumNesterov``, ``SGD``) registered on ``model``.
      sgd_state: ``torch_optimizer.state_dict()``.
      model_state: ``torch_model.state_dict()`` (or ``dict(named_parameters())``).
      scheduler_state: ``torch_scheduler.state_dict()``, or None to leave the
        live scheduler where it is (its LR must then already be torch's).
      param_names: the torch names of the optimizer's parameters in the order
        they were given to it (``[n for n, _ in torch_model.named_parameters()]``
        for ``SGD(torch_model.parameters(), ...)``); None when torch recorded
        them (``SGD(torch_model.named_parameters(), ...)``).
      names: torch name -> nnx path (``'/'``-joined) or None; overrides the rule.
      step: the number of updates the torch run made (torch's SGD does not
        record it); the live ``step`` and update count are set to it.

    Raises:
      ValueError: dampening or maximize, unknown parameter names, any name
        unmatched on either side (all named in one message), a shape or dtype
        that differs after the layout rule, hyperparameters or the next LR that
        differ. Nothing is written then.

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> sgd_state = {  # what SGD(torch.nn.Linear(3, 2).named_parameters(), ...) saves
      ...     "state": {0: {"momentum_buffer": np.ones((2, 3), np.float32)}},  # (out, in)
      ...     "param_groups": [{"params": [0, 1], "param_names": ["weight", "bias"],
      ...                       "lr": 0.1, "momentum": 0.9, "dampening": 0,
      ...                       "weight_decay": 0.0, "nesterov": False}],
      ... }
      >>> weights = {"weight": np.ones((2, 3), np.float32), "bias": np.zeros(2, np.float32)}
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> opt = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
      >>> nm.import_torch_sgd(model, opt, sgd_state, weights, step=1)
      >>> model.kernel.shape, opt.step_count  # the kernel is (in, out)
      ((3, 2), 1)
    """
    source = "torch.optim.SGD state_dict"
    groups = list(sgd_state["param_groups"])
    for k, g in enumerate(groups):
        if g.get("dampening", 0) != 0:
            raise ValueError(
                f"carry_in: param_groups[{k}] of the {source} has dampening="
                f"{g['dampening']}; nnx_momentum's update has none (dampening=0 only)."
            )
        if g.get("maximize", False):
            raise ValueError(f"carry_in: param_groups[{k}] of the {source} has maximize=True.")
    indices = [i for g in groups for i in g["params"]]
    if param_names is None:
        if not all("param_names" in g for g in groups):
            raise ValueError(
                "carry_in: the torch optimizer was built from parameters without names: pass "
                "param_names=[n for n, _ in torch_model.named_parameters()] (their order given "
                "to SGD), or build it with SGD(torch_model.named_parameters(), ...)."
            )
        param_names = [n for g in groups for n in g["param_names"]]
    if len(param_names) != len(indices):
        raise ValueError(
            f"carry_in: param_names has {len(param_names)} names; the {source} has "
            f"{len(indices)} parameters."
        )
    model_paths = {tree.path_str(p) for p in tree.flatten(nnx.state(model))}
    mapping = dict(names or {})

    def to_path(name: str) -> str | None:
        return mapping[name] if name in mapping else _torch_rule(name, model_paths)

    lrs: dict[str, float] = {}
    hyperparams: dict[str, dict[str, Any]] = {}
    run = _Run(source, {}, {}, step=step, lrs=lrs, hyperparams=hyperparams)
    if scheduler_state is not None:
        run.epoch = scheduler_state["last_epoch"]
    unknown = sorted(set(param_names) - set(model_state))
    if unknown:
        raise ValueError(f"carry_in: optimizer parameters {unknown} are not in model_state.")
    for name, value in model_state.items():
        path = to_path(name)
        if path is None:
            continue
        run.weights[path] = _torch_layout(_numpy(value), name, path)
        run.origin[path] = name
    by_index = dict(zip(indices, param_names, strict=True))
    state = sgd_state.get("state", {})
    for g in groups:
        for i in g["params"]:
            name = by_index[i]
            path = to_path(name)
            if path is None:
                raise ValueError(f"carry_in: names maps the optimized parameter {name!r} to None.")
            buffer = state.get(i, {}).get("momentum_buffer")
            if buffer is None:
                run.velocity[path] = np.zeros_like(run.weights[path])
            else:
                run.velocity[path] = _torch_layout(_numpy(buffer), name, path)
            lrs[path] = float(g["lr"])
            hyperparams[path] = {
                "momentum": float(g.get("momentum", 0.0)),
                "nesterov": bool(g.get("nesterov", False)),
                "weight_decay": float(g.get("weight_decay", 0.0)),
            }
    _apply(model, optimizer, run)


# -- braintools: braintools.optim.Momentum ------------------------------------------------


def _braintools_flat(values: Any) -> dict[str, Any]:
    """``{'a/b': leaf}`` of a braintools tree; a tuple key (brainstate) reads ``'a/b'``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(values)
    out = {}
    for path, leaf in leaves:
        parts: list[str] = []
        for k in path:
            key = getattr(k, "key", None)
            if isinstance(key, tuple):
                parts.extend(map(str, key))
            else:
                parts.append(tree.key_str(k))
        out[tree.SEP.join(parts)] = leaf
    return out


def _optax_nodes(opt_state: Any) -> list[Any]:
    leaves, _ = jax.tree_util.tree_flatten(
        opt_state,
        is_leaf=lambda x: isinstance(x, optax.TraceState | optax.ScaleByScheduleState),
    )
    return [x for x in leaves if isinstance(x, optax.TraceState | optax.ScaleByScheduleState)]


def import_braintools_momentum(
    model: Any,
    optimizer: Any,
    state_dict: Mapping[str, Any],
    *,
    scheduler_state: Mapping[str, Any] | None = None,
    names: Mapping[str, str | None] | None = None,
) -> None:
    """Continues a braintools ``Momentum`` (or ``MomentumNesterov``) run.

    braintools' ``state_dict()`` holds the weights (``param_groups['0']
    ['params']``), the optax state (the ``optax.trace`` velocity and the
    schedule's count), ``step_count`` and the current ``lr``; its scheduler's
    state is separate (``scheduler.state_dict()``: ``last_epoch``). The weights
    and velocity are written into ``model`` and the optimizer, the live
    scheduler is moved to ``last_epoch``, and the LR braintools applies next
    and the weight decay are checked against the live ones. A weight's name is
    its registered path (nested dict keys, or a brainstate tuple key, joined by
    ``'/'``), or ``names[name]``; ``None`` drops it. Arrays keep their layout.

    Args:
      model: the live nnx model.
      optimizer: an ``nm.MomentumOptimizer`` on ``model`` or an ``nm.Momentum``
        registered on ``model``.
      state_dict: ``braintools_optimizer.state_dict()``.
      scheduler_state: ``braintools_scheduler.state_dict()``, or None to leave
        the live scheduler where it is (its LR must then already be braintools').
      names: braintools name -> nnx path (``'/'``-joined) or None.

    Raises:
      ValueError: parameter groups added with ``add_param_group`` (braintools
        0.4.0 runs Adam for them, not momentum), no velocity in the state,
        unmatched names (both sides named), shapes, dtypes, weight decay or
        the next LR that differ. Nothing is written then.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> source = nm.momentum(0.1).init(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
      >>> state_dict = {  # what braintools.optim.Momentum(lr=0.1).state_dict() holds
      ...     "step_count": 0, "lr": 0.1, "base_lr": 0.1, "param_groups_opt_states": {},
      ...     "param_groups": {"0": {"params": nnx.to_pure_dict(nnx.state(model)),
      ...                            "lr": 0.1, "weight_decay": 0.0}},
      ...     "opt_state": source.inner_state,
      ... }
      >>> opt = nm.Momentum(lr=0.1).register_trainable_weights(model)
      >>> nm.import_braintools_momentum(model, opt, state_dict)
      >>> opt.step_count
      0
    """
    source = "braintools Momentum state_dict"
    if state_dict.get("param_groups_opt_states"):
        raise ValueError(
            f"carry_in: the {source} has parameter groups added with add_param_group; "
            "braintools 0.4.0 updates those with Adam scaling, not momentum, so they cannot "
            "continue here."
        )
    if state_dict.get("opt_state") is None:
        raise ValueError(f"carry_in: the {source} has no opt_state (never registered?).")
    traces = [n for n in _optax_nodes(state_dict["opt_state"]) if isinstance(n, optax.TraceState)]
    counts = [
        n
        for n in _optax_nodes(state_dict["opt_state"])
        if isinstance(n, optax.ScaleByScheduleState)
    ]
    if len(traces) != 1:
        raise ValueError(
            f"carry_in: the {source}'s opt_state holds {len(traces)} optax.trace states; a "
            "braintools Momentum holds one."
        )
    group = state_dict["param_groups"]["0"]
    mapping = dict(names or {})

    def to_path(name: str) -> str | None:
        return mapping.get(name, name)

    step = int(np.asarray(state_dict["step_count"]))
    lrs: dict[str, float] = {}
    hyperparams: dict[str, dict[str, Any]] = {}
    run = _Run(source, {}, {}, step=step, lrs=lrs, hyperparams=hyperparams)
    if counts:
        run.count = int(np.asarray(counts[0].count))
    if scheduler_state is not None:
        run.epoch = scheduler_state["last_epoch"]
    for name, value in _braintools_flat(group["params"]).items():
        if (path := to_path(name)) is not None:
            run.weights[path] = np.asarray(value)
            run.origin[path] = name
    for name, value in _braintools_flat(traces[0].trace).items():
        if (path := to_path(name)) is not None:
            run.velocity[path] = np.asarray(value)
            lrs[path] = float(np.asarray(state_dict["lr"]))
            hyperparams[path] = {"weight_decay": float(group.get("weight_decay", 0.0))}
    _apply(model, optimizer, run)
