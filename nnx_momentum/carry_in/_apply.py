"""What every importer shares: a source run by role, checked whole, then written.

An importer turns its source into a :class:`Run` (values by
:mod:`nnx_momentum.layout` role) and hands it to :func:`apply`, which checks
every name in both directions, shapes, dtypes, the recorded hyperparameters
and the next LR against the live objects, and only then writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from nnx_momentum import layout, tree
from nnx_momentum import learning_rate as lr_lib
from nnx_momentum.nnx_optimizer import MomentumOptimizer
from nnx_momentum.optimizers import BraintoolsOptimizer
from nnx_momentum.schedulers import ReduceLROnPlateau

_RTOL = 1e-6
"""Relative tolerance of LR and hyperparameter checks: float32 against the source's floats."""


@dataclasses.dataclass
class Run:
    """A source run in this package's terms (paths are ``'/'``-joined nnx paths)."""

    source: str
    step: int
    weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    velocity: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    count: int | None = None  # the optax update count; None: ``step``
    epoch: float | None = None  # the scheduler's epoch; None: leave the scheduler as it is
    lrs: dict[str, float] = dataclasses.field(default_factory=dict)  # next LR, per parameter
    hyperparams: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    origin: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> source name
    whole_model: bool = False  # the source holds every Variable of the model
    zero_velocity_ok: bool = False  # the source has no velocity at all (momentum 0)


def state_kind(role: str) -> str | None:
    """What an optimizer-state role (:func:`nnx_momentum.layout.roles`) carries over as.

    Returns:
      ``'velocity'``, ``'step'``, ``'count'`` (an optax update count: ``count/<g>``,
      or a schedule's inside a chain), ``'learning_rate'``, ``'scheduler'``
      (``lr/...``), or None: state no source run carries.
    """
    if layout.param_path(role) is not None:
        return "velocity"
    if role == "step":
        return "step"
    if role.startswith("count/") or (
        role.startswith("opt_state/") and role.endswith(tree.SEP + "count")
    ):
        return "count"
    if role.startswith("learning_rate/"):
        return "learning_rate"
    if role.startswith("lr/"):
        return "scheduler"
    return None


def renamer(
    names: Mapping[str, str | None] | None, default: Callable[[str], str]
) -> Callable[[str], str | None]:
    """Source name -> nnx path: ``names[name]`` if given (``None`` drops it), else ``default``."""
    mapping = dict(names or {})
    return lambda name: mapping[name] if name in mapping else default(name)


def last_epoch(scheduler_state: Mapping[str, Any] | None) -> float | None:
    """The epoch of a torch or braintools scheduler's ``state_dict()``; None without one."""
    return None if scheduler_state is None else scheduler_state["last_epoch"]


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


def _named(run: Run, path: str) -> str:
    origin = run.origin.get(path)
    return f"{path!r}" if origin is None or origin == path else f"{path!r} (from {origin!r})"


def _close(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=_RTOL, atol=0.0))


def _param_groups(core: MomentumOptimizer[Any], params: Sequence[str]) -> dict[str, int]:
    """The parameter group of each optimized parameter path."""
    labels = {tree.path_str(p): int(g) for p, g in core.group_labels}
    return {p: labels.get(p, 0) for p in params}


def _live_lrs(core: MomentumOptimizer[Any], count: int) -> list[float]:
    """The LR each parameter group applies next."""
    values = np.atleast_1d(np.asarray(lr_lib.lr_value(core.lr, count), np.float64))
    n = len(core.group_configs)
    return [float(values[k]) if values.size > 1 else float(values[0]) for k in range(n)]


def _check_array(what: str, var: nnx.Variable, value: Any, problems: list[str]) -> None:
    live = var.get_value()
    if np.shape(live) != np.shape(value):
        problems.append(f"{what}: shape {np.shape(value)}, the live one is {np.shape(live)}")
    elif np.dtype(live.dtype) != np.dtype(value.dtype):
        problems.append(
            f"{what}: dtype {np.dtype(value.dtype)}, the live one is {np.dtype(live.dtype)} "
            "(values are never cast)"
        )


def _check_hyperparams(
    run: Run, core: MomentumOptimizer[Any], groups: Mapping[str, int], problems: list[str]
) -> None:
    """The hyperparameters the source records, against the live group of each parameter."""
    for path, wanted in sorted(run.hyperparams.items()):
        config = core.group_configs[groups[path]]
        for name, value in wanted.items():
            live = getattr(config, name)
            same = live == value if isinstance(value, bool) else _close(float(live), float(value))
            if not same:
                problems.append(
                    f"{name} of {_named(run, path)}: {value!r} in the source, {live!r} live"
                )


def _position_scheduler(core: MomentumOptimizer[Any], run: Run, count: int) -> None:
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


def _velocity(
    run: Run, core: MomentumOptimizer[Any], velocity_vars: Mapping[str, nnx.Variable]
) -> dict[str, Any]:
    """The source's velocity by parameter path; zeros when the source had momentum off."""
    if run.velocity or not run.zero_velocity_ok:
        return dict(run.velocity)
    if any(c.momentum for c in core.group_configs):
        raise ValueError(
            f"carry_in: the {run.source} holds no velocity (momentum off), but the live "
            "optimizer has momentum > 0: build it with momentum=0.0."
        )
    return {p: np.zeros_like(v.get_value()) for p, v in velocity_vars.items()}


def _name_problems(
    run: Run,
    model_vars: Mapping[str, Any],
    velocity_vars: Mapping[str, Any],
    velocity: Mapping[str, Any],
) -> list[str]:
    """Every name with no counterpart on the other side, by kind."""
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
    return [
        f"{what}: {[_named(run, p) for p in sorted(paths)]}"
        for what, paths in names.items()
        if paths
    ]


def apply(model: Any, optimizer: Any, run: Run) -> None:
    """Checks ``run`` against the live objects, then writes it; nothing half-applied.

    Raises:
      ValueError: naming every mismatch (names, shapes, dtypes, hyperparameters),
        or the next LR that differs; nothing is written then.
      TypeError: ``optimizer`` is neither face.
    """
    core = _core(optimizer)
    model_vars = _model_variables(model, optimizer)
    roles = layout.live_roles(core.state_tree())
    velocity_vars = {
        param: var for r, var in roles.items() if (param := layout.param_path(r)) is not None
    }
    others = {r: v for r, v in roles.items() if layout.param_path(r) is None}
    velocity = _velocity(run, core, velocity_vars)
    problems = _name_problems(run, model_vars, velocity_vars, velocity)
    unknown_roles = sorted(r for r in others if state_kind(r) is None)
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
    _check_hyperparams(run, core, _param_groups(core, list(velocity_vars)), problems)
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
        kind = state_kind(r)
        if kind == "step":
            writes.append((var, np.asarray(run.step, dtype)))
        elif kind == "count":
            writes.append((var, np.asarray(count, dtype)))
        elif kind == "learning_rate":
            writes.append((var, np.asarray(lrs[int(r.split(tree.SEP)[1])], dtype)))
    # Checked above; tree.load_into writes each value onto its Variable's sharding.
    tree.load_into(
        {str(i): var for i, (var, _) in enumerate(writes)},
        {str(i): np.asarray(value) for i, (_, value) in enumerate(writes)},
        f"carry_in: the {run.source}",
    )
