r"""Parameter groups: per-group hyperparameters chosen by nnx filters, on optax's partition.

With groups, the update of every parameter is :func:`nnx_momentum.momentum`'s,
with the hyperparameters of its group:

.. math::

   g \leftarrow \mathrm{clip}(g) \text{ (global, over all groups)}, \quad
   g \leftarrow g + \lambda_k p, \quad v \leftarrow \mu_k v + g, \quad
   p \leftarrow p - \eta_k\,(g + \mu_k v \text{ if nesterov}_k \text{ else } v)

for a parameter in group :math:`k`. Clipping stays global, as
``torch.nn.utils.clip_grad_norm_`` over all parameters; the LR, momentum, Nesterov
flag and weight decay may differ per group (torch's ``SGD`` param-group keys).
Group 0 holds every parameter no other group's filter selects; a parameter goes
to the first group whose filter matches it.

The transformation is ``optax.chain(clips, optax.partition({'0': group_0, ...}))``
with each group an ``inject_hyperparams`` momentum chain holding its own runtime
LR. Without groups nothing changes: the optimizer is exactly :func:`momentum`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from flax import nnx

from nnx_momentum import tree
from nnx_momentum.config import MomentumConfig

__all__ = [
    "OVERRIDABLE",
    "ParamGroup",
    "group_configs",
    "group_labels",
    "inject_states",
    "label_fn",
]


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    r"""A parameter group of :class:`~nnx_momentum.MomentumOptimizer`.

    Attributes:
      filter: an nnx filter selecting the group's parameters: a Variable type,
        ``nnx.PathContains('bias')``, ``nnx.All(...)``, a predicate
        ``(path, variable) -> bool``, ...
      lr: this group's LR (a float), or None for the optimizer's. With a
        scheduler, give the scheduler one base LR per group instead
        (``nm.StepLR([0.1, 0.01], ...)``).
      momentum, nesterov, weight_decay: overrides of the optimizer's values,
        or None to inherit them.

    Example:
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> no_decay = nm.ParamGroup(nnx.PathContains("bias"), weight_decay=0.0)
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> opt = nm.MomentumOptimizer(model, lr=0.1, weight_decay=1e-4, groups=[no_decay])
      >>> [g["weight_decay"] for g in opt.param_groups]
      [0.0001, 0.0]
    """

    filter: Any
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None

    def overrides(self) -> dict[str, Any]:
        """The config fields this group sets (not None)."""
        return {k: getattr(self, k) for k in OVERRIDABLE if getattr(self, k) is not None}


OVERRIDABLE = tuple(
    f.name
    for f in dataclasses.fields(ParamGroup)
    if f.name in {c.name for c in dataclasses.fields(MomentumConfig)}
)
"""The :class:`~nnx_momentum.MomentumConfig` fields a group may override (besides ``lr``):
those :class:`ParamGroup` has a field for (clipping is global, so it has none)."""


def group_configs(config: MomentumConfig, groups: Sequence[ParamGroup]) -> list[MomentumConfig]:
    """``[config, config with group 1's overrides, ...]``, each validated.

    Raises:
      ValueError: naming ``groups[i]`` and the field, for an out-of-range override.
    """
    configs = [config]
    for i, group in enumerate(groups):
        try:
            configs.append(dataclasses.replace(config, **group.overrides()))
        except ValueError as e:
            raise ValueError(f"groups[{i}]: {e}") from None
    return configs


def group_labels(
    model: Any, wrt: Any, groups: Sequence[ParamGroup], *, graph: bool | None = None
) -> dict[tree.Path, str]:
    """``{parameter path: group label}``: the first group whose filter matches, else ``'0'``.

    Raises:
      ValueError: a group selects no parameter (its filter is probably wrong).
    """
    predicates = [nnx.filterlib.to_predicate(g.filter) for g in groups]
    labels: dict[tree.Path, str] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, wrt, graph=graph)):
        label = next((str(i + 1) for i, p in enumerate(predicates) if p(path, var)), "0")
        labels[tuple(map(str, path))] = label
    used = set(labels.values())
    for i, group in enumerate(groups):
        if str(i + 1) not in used:
            raise ValueError(
                f"groups[{i}]: the filter {group.filter!r} selects no parameter (or only "
                "parameters an earlier group took)."
            )
    return labels


def label_fn(labels: dict[tree.Path, str]) -> Callable[[Any], Any]:
    """``params -> tree of labels`` for ``optax.partition`` (params as State or dict)."""

    def labels_of(params: Any) -> Any:
        def one(path: Any, leaf: Any) -> str:
            return labels[tuple(tree.key_str(k) for k in path)]

        return jax.tree_util.tree_map_with_path(
            one, params, is_leaf=lambda x: isinstance(x, nnx.Variable)
        )

    return labels_of


def inject_states(opt_state: Any) -> list[Any]:
    """The ``InjectStatefulHyperparamsState`` nodes of ``opt_state``, by group.

    One for a single group (the whole state, or inside a wrapper such as
    ``optax.MultiSteps``); one per group, in group order, with groups.
    """
    found: list[tuple[int, Any]] = []
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        opt_state, is_leaf=lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)
    )
    for path, leaf in leaves:
        if isinstance(leaf, optax.InjectStatefulHyperparamsState):
            group = next(
                (
                    int(k.key)
                    for k in path
                    if isinstance(k, jax.tree_util.DictKey)
                    and isinstance(k.key, str)
                    and k.key.isdigit()
                ),
                0,
            )
            found.append((group, leaf))
    found.sort(key=lambda kv: kv[0])
    return [state for _, state in found]
