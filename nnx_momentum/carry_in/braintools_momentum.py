"""Carry in a braintools ``Momentum`` (or ``MomentumNesterov``) run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from nnx_momentum import tree
from nnx_momentum.carry_in._apply import Run, apply, last_epoch, renamer

__all__ = ["import_braintools_momentum"]

_SOURCE = "braintools Momentum state_dict"


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


def _optax_nodes(opt_state: Any, kind: type) -> list[Any]:
    """The ``kind`` states (``optax.TraceState``, ...) anywhere in an optax state."""
    leaves = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, kind))
    return [x for x in leaves if isinstance(x, kind)]


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
    if state_dict.get("param_groups_opt_states"):
        raise ValueError(
            f"carry_in: the {_SOURCE} has parameter groups added with add_param_group; "
            "braintools 0.4.0 updates those with Adam scaling, not momentum, so they cannot "
            "continue here."
        )
    if state_dict.get("opt_state") is None:
        raise ValueError(f"carry_in: the {_SOURCE} has no opt_state (never registered?).")
    traces = _optax_nodes(state_dict["opt_state"], optax.TraceState)
    counts = _optax_nodes(state_dict["opt_state"], optax.ScaleByScheduleState)
    if len(traces) != 1:
        raise ValueError(
            f"carry_in: the {_SOURCE}'s opt_state holds {len(traces)} optax.trace states; a "
            "braintools Momentum holds one."
        )
    group = state_dict["param_groups"]["0"]
    to_path = renamer(names, lambda name: name)
    run = Run(
        _SOURCE,
        step=int(np.asarray(state_dict["step_count"])),
        count=int(np.asarray(counts[0].count)) if counts else None,
        epoch=last_epoch(scheduler_state),
    )
    for name, value in _braintools_flat(group["params"]).items():
        if (path := to_path(name)) is not None:
            run.weights[path] = np.asarray(value)
            run.origin[path] = name
    for name, value in _braintools_flat(traces[0].trace).items():
        if (path := to_path(name)) is not None:
            run.velocity[path] = np.asarray(value)
            run.lrs[path] = float(np.asarray(state_dict["lr"]))
            run.hyperparams[path] = {"weight_decay": float(group.get("weight_decay", 0.0))}
    apply(model, optimizer, run)
