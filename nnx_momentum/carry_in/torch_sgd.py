"""Carry in a ``torch.optim.SGD`` run (with its ``lr_scheduler``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from nnx_momentum import tree
from nnx_momentum.carry_in._apply import Run, apply, last_epoch, renamer

__all__ = ["import_torch_sgd"]

_SOURCE = "torch.optim.SGD state_dict"


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


def _checked_groups(
    sgd_state: Mapping[str, Any], param_names: Sequence[str] | None
) -> tuple[list[Any], dict[int, str]]:
    """torch's param groups, and the torch name of each parameter index.

    Raises:
      ValueError: dampening, maximize, or no (or too few/many) parameter names.
    """
    groups = list(sgd_state["param_groups"])
    for k, g in enumerate(groups):
        if g.get("dampening", 0) != 0:
            raise ValueError(
                f"carry_in: param_groups[{k}] of the {_SOURCE} has dampening="
                f"{g['dampening']}; nnx_momentum's update has none (dampening=0 only)."
            )
        if g.get("maximize", False):
            raise ValueError(f"carry_in: param_groups[{k}] of the {_SOURCE} has maximize=True.")
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
            f"carry_in: param_names has {len(param_names)} names; the {_SOURCE} has "
            f"{len(indices)} parameters."
        )
    return groups, dict(zip(indices, param_names, strict=True))


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
    groups, by_index = _checked_groups(sgd_state, param_names)
    unknown = sorted(set(by_index.values()) - set(model_state))
    if unknown:
        raise ValueError(f"carry_in: optimizer parameters {unknown} are not in model_state.")
    model_paths = {tree.path_str(p) for p in tree.flatten(nnx.state(model))}
    to_path = renamer(names, lambda name: _torch_rule(name, model_paths))
    run = Run(_SOURCE, step=step, epoch=last_epoch(scheduler_state))
    for name, value in model_state.items():
        if (path := to_path(name)) is not None:
            run.weights[path] = _torch_layout(_numpy(value), name, path)
            run.origin[path] = name
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
            run.lrs[path] = float(g["lr"])
            run.hyperparams[path] = {
                "momentum": float(g.get("momentum", 0.0)),
                "nesterov": bool(g.get("nesterov", False)),
                "weight_decay": float(g.get("weight_decay", 0.0)),
            }
    apply(model, optimizer, run)
