"""Where each piece of optimizer state lives: one *role* per leaf, whatever the layout.

An optimizer's state is a tree of paths such as
``opt_state/inner_state/3/trace/fc1/kernel``. The path is fixed for a given
optimizer -- it never depends on hyperparameter *values* (a zero weight decay
or an unset clip is an ``optax.identity()`` in its place) -- but it does depend
on the structure: parameter groups put each group's state under
``inner_states/<group>``, a ``tx_wrapper`` nests it, and nnx_momentum 0.1/0.2
placed the velocity by how many clip and decay steps were on. A *role* names
what a leaf means, independently of all that:

==========================  =====================================================
role                        the leaf
==========================  =====================================================
``step``                    ``nnx.Optimizer``'s update counter
``count/<g>``               group ``g``'s optax update counter (``0`` without groups)
``learning_rate/<g>``       the runtime LR held in group ``g``'s optax state
``velocity/<param path>``   the velocity (``optax.trace``) of one parameter
``lr/<...>``                the scheduler's state (``lr/last_epoch``, ...)
anything else               its own path (e.g. ``optax.MultiSteps``' ``mini_step``)
==========================  =====================================================

Checkpoints of another layout (an older release, other parameter groups), and
state carried in from optax, torch or braintools, are matched by role
(:func:`roles`). The rule is strict: a role that two leaves share on one side
is ambiguous, and such leaves are matched by their exact paths instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from flax import nnx

from nnx_momentum import tree

__all__ = [
    "VELOCITY",
    "group_of",
    "live_roles",
    "param_path",
    "rekey",
    "relaid",
    "role",
    "roles",
]

VELOCITY = "velocity"
_SEP = "/"
T = TypeVar("T")


def role(path: str) -> str:
    """The role of one optimizer-state path (``'/'``-joined; see the module docstring).

    Args:
      path: a path of the optimizer's state tree, as a checkpoint stores it.

    Returns:
      ``'step'``, ``'count/<g>'``, ``'learning_rate/<g>'``, ``'velocity/<param path>'``,
      or the path itself (scheduler state and anything unknown).

    Example:
      >>> from nnx_momentum.layout import role
      >>> role("opt_state/inner_state/3/trace/fc1/kernel")
      'velocity/fc1/kernel'
      >>> role("opt_state/2/inner_states/1/inner_state/hyperparams/learning_rate")
      'learning_rate/1'
      >>> role("opt_state/count"), role("step"), role("lr/last_epoch")
      ('count/0', 'step', 'lr/last_epoch')
    """
    parts = path.split(_SEP)
    if parts[0] != "opt_state":
        return path  # 'step', the scheduler's 'lr/...', a plain nnx.Optimizer's extras
    if "trace" in parts:
        return _SEP.join((VELOCITY, *parts[parts.index("trace") + 1 :]))
    if parts[-2:] == ["hyperparams", "learning_rate"]:
        return f"learning_rate/{group_of(path)}"
    if parts[-1] == "count" and _inside_inject(parts):
        return f"count/{group_of(path)}"
    return path


def _inside_inject(parts: list[str]) -> bool:
    """Whether ``parts[:-1]`` is an inject state: ``opt_state`` or a group's ``inner_state``."""
    return parts[:-1] == ["opt_state"] or parts[-2:-1] == ["inner_state"] and _group(parts) >= 0


def _group(parts: list[str]) -> int:
    """The group of a path under ``inner_states/<g>``; 0 without groups; -1 if unknown."""
    if "inner_states" not in parts:
        return 0
    i = parts.index("inner_states")
    return int(parts[i + 1]) if i + 1 < len(parts) and parts[i + 1].isdigit() else -1


def group_of(path: str) -> int:
    """The parameter group a state path belongs to (0 without groups).

    Example:
      >>> from nnx_momentum.layout import group_of
      >>> group_of("opt_state/2/inner_states/1/inner_state/count"), group_of("opt_state/count")
      (1, 0)
    """
    return max(_group(path.split(_SEP)), 0)


def param_path(velocity_role: str) -> str | None:
    """The parameter path of a ``velocity/...`` role, else None.

    Example:
      >>> from nnx_momentum.layout import param_path
      >>> param_path("velocity/fc1/kernel"), param_path("step")
      ('fc1/kernel', None)
    """
    head, _, rest = velocity_role.partition(_SEP)
    return rest if head == VELOCITY and rest else None


def roles(paths: Iterable[str]) -> dict[str, str]:
    """``{role: path}`` for ``paths``; a role two paths share maps each by its own path.

    Args:
      paths: optimizer-state paths (one side of a restore).

    Returns:
      Every path under a unique key: its role, or -- where the role is
      ambiguous on this side (e.g. two ``optax.trace`` in a user's own chain)
      -- the path itself.

    Example:
      >>> from nnx_momentum.layout import roles
      >>> roles(["opt_state/inner_state/1/trace/w", "step"])
      {'velocity/w': 'opt_state/inner_state/1/trace/w', 'step': 'step'}
      >>> roles(["opt_state/0/trace/w", "opt_state/1/trace/w"])
      {'opt_state/0/trace/w': 'opt_state/0/trace/w', 'opt_state/1/trace/w': 'opt_state/1/trace/w'}
    """
    paths = list(paths)
    found: dict[str, list[str]] = {}
    for p in paths:
        found.setdefault(role(p), []).append(p)
    out: dict[str, str] = {}
    for r, ps in found.items():
        if len(ps) == 1:
            out[r] = ps[0]
        else:
            out.update({p: p for p in ps})
    return out


def rekey(values: Mapping[str, T]) -> dict[str, T]:
    """``values`` (by path) keyed by :func:`roles` instead.

    Example:
      >>> from nnx_momentum.layout import rekey
      >>> rekey({"opt_state/inner_state/3/trace/w": 1.0})
      {'velocity/w': 1.0}
    """
    return {r: values[p] for r, p in roles(values).items()}


def live_roles(optimizer_state: nnx.State) -> dict[str, nnx.Variable]:
    """``{role: live Variable}`` of an optimizer's state (``optimizer.state_tree()``).

    Writing a Variable's value updates the optimizer.

    Example:
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.layout import live_roles
      >>> opt = nm.MomentumOptimizer(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), lr=0.1)
      >>> sorted(r for r in live_roles(opt.state_tree()) if not r.startswith("lr/"))
      ['count/0', 'learning_rate/0', 'step', 'velocity/bias', 'velocity/kernel']
    """
    flat: dict[str, Any] = {
        tree.path_str(p): v for p, v in tree.live_variables(optimizer_state, "state").items()
    }
    return rekey(flat)


def relaid(live: nnx.State, given: Any) -> Any:
    """``given`` (a ``state_dict``) on the live paths, when it is the same state in an old layout.

    A ``state_dict()`` of nnx_momentum 0.1/0.2 placed the velocity by the
    hyperparameter values (``inner_state/1/trace/...``). When every leaf of
    ``given`` has a role the live state has, in the same parameter group, it
    is re-keyed to the live paths; anything else is returned unchanged, for
    the strict path rule (:func:`nnx_momentum.tree.load_into`) to name what
    differs.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.layout import relaid
      >>> opt = nm.MomentumOptimizer(nnx.Linear(1, 1, rngs=nnx.Rngs(0)), lr=0.1)
      >>> old = opt.state_dict()
      >>> old["opt_state"]["inner_state"] = {"0": old["opt_state"]["inner_state"][3]}
      >>> sorted(relaid(opt.state_tree(), old)["opt_state"]["inner_state"])
      ['3']
    """
    if not isinstance(given, Mapping):
        return given
    given_flat = {tree.path_str(p): v for p, v in tree.flatten(given).items()}
    live_paths = [tree.path_str(p) for p in tree.flatten(live)]
    if set(given_flat) <= set(live_paths):
        return given
    live_roles, given_roles = roles(live_paths), roles(given_flat)
    if not set(given_roles) <= set(live_roles) or any(
        group_of(p) != group_of(live_roles[r]) for r, p in given_roles.items()
    ):
        return given
    return tree.nest(
        {tuple(live_roles[r].split(_SEP)): given_flat[p] for r, p in given_roles.items()}
    )
