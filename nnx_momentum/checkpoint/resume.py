"""Resume with changes: what differs between a checkpoint and the live objects, and what may.

A long run is changed on the way: weight decay or clipping turned on, the LR
lowered after a loss spike, the schedule extended or replaced, a parameter
group added, the velocity moved to bfloat16, new layers in the model. A restore
first lists *every* difference between the checkpoint and the live model and
optimizer as one readable diff (:class:`ResumeDiff`), before a single array is
read. A difference is loaded only when the matching field of
:class:`ResumeChanges` allows it; otherwise the restore is refused with the
whole diff, and nothing is loaded. An allowed diff is logged (logger
``nnx_momentum``, level WARNING; INFO when only the shardings differ):
nothing changes silently.

The optimizer's state is matched by *role* (:mod:`nnx_momentum.layout`), not by
path: the velocity of ``fc1/kernel`` is found wherever the checkpoint put it --
in another parameter group, or where nnx_momentum 0.1/0.2 placed it by the
hyperparameter values.

=================  =====================================================  ====================
kind               what differs                                            allowed by
=================  =====================================================  ====================
``hyperparams``    momentum, nesterov, weight decay, clipping (and a        ``hyperparams=True``
                   group's overrides)
``schedule``       the scheduler (class or arguments; a new LR value)      ``schedule=...``
``groups``         the number of parameter groups, or a parameter's group  ``groups=True``
``velocity dtype`` ``accumulator_dtype``: the velocity is cast explicitly  ``velocity_dtype=True``
``new params``     parameters the checkpoint lacks (zero velocity)         ``new_params=True``
``sharding``       the arrays land on other devices or shardings           always (shown)
``tree``, ``shape``, ``dtype``: a parameter the live model lacks, another shape,
a model array of another dtype                                         never
=================  =====================================================  ====================
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nnx_momentum import layout, tree
from nnx_momentum.checkpoint import metadata, targets

__all__ = ["Difference", "Plan", "ResumeChanges", "ResumeDiff", "plan", "schedule_mover"]

logger = logging.getLogger("nnx_momentum")

Schedule = Literal["from_step", "from_lr"]
_REFUSED = frozenset({"tree", "shape", "dtype"})


@dataclasses.dataclass(frozen=True)
class ResumeChanges:
    """What a :meth:`~nnx_momentum.Checkpointer.restore` may change, explicitly.

    Everything is off by default: any difference is then refused, naming it.

    Attributes:
      hyperparams: load into an optimizer with other ``momentum``,
        ``nesterov``, ``weight_decay``, ``grad_clip_norm`` or
        ``grad_clip_value`` (or other per-group values). The velocity is kept
        as saved.
      schedule: load into an optimizer with another scheduler (another class,
        other arguments such as a longer ``T_max``, or another fixed LR).
        ``'from_step'``: the new schedule continues from the checkpoint's epoch
        (its LR is the new schedule's value there). ``'from_lr'``: the new
        schedule starts at its epoch 0 with its base LR(s) set to the LR(s) the
        checkpoint was applying, so the LR does not jump (not for composite
        schedulers). ``None``: refused.
      groups: load into an optimizer with other parameter groups: each
        parameter's velocity follows it to its new group; a new group's update
        count is the checkpoint's.
      velocity_dtype: cast the velocity to the live ``accumulator_dtype``
        (e.g. float32 -> bfloat16) instead of refusing it.
      new_params: the live model may have parameters (and other Variables)
        the checkpoint lacks: they keep their live values and their velocity
        starts at zero.

    Raises:
      ValueError: ``schedule`` is not ``None``, ``'from_step'`` or ``'from_lr'``.

    Example:
      >>> import nnx_momentum as nm
      >>> changes = nm.ResumeChanges(hyperparams=True, schedule="from_step")
      >>> changes.allows("hyperparams"), changes.allows("groups")
      (True, False)
    """

    hyperparams: bool = False
    schedule: Schedule | None = None
    groups: bool = False
    velocity_dtype: bool = False
    new_params: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in (None, "from_step", "from_lr"):
            raise ValueError(
                f"ResumeChanges: schedule must be None, 'from_step' or 'from_lr', got "
                f"{self.schedule!r}."
            )

    def allows(self, kind: str) -> bool:
        """Whether a difference of ``kind`` (see :class:`Difference`) may be loaded."""
        if kind in _REFUSED:
            return False
        if kind == "schedule":
            return self.schedule is not None
        if kind == "sharding":
            return True  # a restore lands on the live devices: shown, never refused
        return bool(getattr(self, kind.replace(" ", "_")))


@dataclasses.dataclass(frozen=True)
class Difference:
    """One difference between a checkpoint and the live objects.

    Attributes:
      kind: ``'hyperparams'``, ``'schedule'``, ``'groups'``, ``'velocity dtype'``,
        ``'new params'``, ``'sharding'`` (shown, always loaded onto the live
        shardings), or (never loadable) ``'tree'``, ``'shape'``, ``'dtype'``.
      what: the setting or path.
      saved: the checkpoint's value (``None``: absent).
      live: the live value (``None``: absent).
    """

    kind: str
    what: str
    saved: Any
    live: Any

    def __str__(self) -> str:
        return f"{self.kind:<15}{self.what}: {_show(self.saved)} -> {_show(self.live)}"


def _show(x: Any) -> str:
    return "(absent)" if x is None else str(x)


@dataclasses.dataclass(frozen=True)
class ResumeDiff:
    """Every difference between step ``step`` of a checkpoint and the live objects.

    Attributes:
      step: the step compared.
      differences: one :class:`Difference` each, in a stable order.
    """

    step: int
    differences: tuple[Difference, ...]

    def refused(self, changes: ResumeChanges) -> list[Difference]:
        """The differences ``changes`` does not allow."""
        return [d for d in self.differences if not changes.allows(d.kind)]

    def __bool__(self) -> bool:
        return bool(self.differences)

    def __str__(self) -> str:
        lines = [f"step {self.step} -> live ({len(self.differences)} difference(s)):"]
        lines += [f"  {d}" for d in self.differences]
        return "\n".join(lines)


@dataclasses.dataclass
class Plan:
    """What a restore reads (by the checkpoint's paths) and how it writes it back."""

    diff: ResumeDiff
    wanted: dict[str, dict[str, jax.ShapeDtypeStruct]]
    # item -> {live path: checkpoint path}
    sources: dict[str, dict[str, str]]
    casts: set[str]  # live optimizer paths cast to the live dtype
    copies: dict[str, str]  # a new group's count/LR (live path) -> group 0's (checkpoint path)
    schedule: Schedule | None  # None: the scheduler state is loaded as saved

    def log(self) -> None:
        """Shows an allowed diff: WARNING, or INFO when only the shardings differ."""
        if any(d.kind != "sharding" for d in self.diff.differences):
            logger.warning(
                "Checkpointer.restore: resuming with changes, as allowed:\n%s", self.diff
            )
        elif self.diff:
            logger.info("Checkpointer.restore: onto other shardings:\n%s", self.diff)

    def write(
        self, live: Mapping[str, Mapping[str, nnx.Variable]], read: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Writes what was read into the live Variables (the one mutating step)."""
        for item, sources in self.sources.items():
            values = {}
            for live_key, saved_key in sources.items():
                value = read[item][saved_key]
                if live_key in self.casts:
                    value = value.astype(live[item][live_key].get_value().dtype)
                values[live_key] = value
            targets.write_back(live[item], values)
        if "optimizer" in live:
            opt = live["optimizer"]
            for live_key, saved_key in self.copies.items():
                value = read["optimizer"][saved_key]
                opt[live_key].set_value(value.astype(opt[live_key].get_value().dtype))


def _target(var: nnx.Variable, dtype: Any, where: str) -> jax.ShapeDtypeStruct:
    t = targets.target(var.get_value(), where)
    return (
        t if dtype is None else jax.ShapeDtypeStruct(t.shape, np.dtype(dtype), sharding=t.sharding)
    )


def _hyperparam_differences(saved: Mapping[str, Any], live: Mapping[str, Any]) -> list[Difference]:
    out = []
    for name, a, b in metadata.hyperparam_differences(saved, live):
        if name == "lr":
            out.append(Difference("schedule", "lr", _describe(a), _describe(b)))
        elif name == "accumulator_dtype":
            out.append(Difference("velocity dtype", name, a, b))
        elif name == "groups":
            out.extend(_group_differences(a or [], b or []))
        else:
            out.append(Difference("hyperparams", name, a, b))
    return out


def _group_differences(saved: list[Any], live: list[Any]) -> list[Difference]:
    if len(saved) != len(live):
        return [Difference("groups", "parameter groups", len(saved) + 1, len(live) + 1)]
    return [
        Difference("hyperparams", f"groups[{i}].{k}", a.get(k), b.get(k))
        for i, (a, b) in enumerate(zip(saved, live), start=1)
        for k in sorted(set(a) | set(b))
        if not metadata.same_setting(a.get(k), b.get(k))
    ]


def _describe(lr: Any) -> str:
    if not isinstance(lr, Mapping):
        return repr(lr)
    args = ", ".join(f"{k}={v!r}" for k, v in lr.items() if k not in ("name", "last_epoch"))
    return f"{lr.get('name')}({args})"


def plan(
    step: int,
    meta: Mapping[str, Any],
    live: Mapping[str, Mapping[str, nnx.Variable]],
    saved: Mapping[str, Mapping[str, Any]],
    optimizer: Any,
    changes: ResumeChanges,
    *,
    check_hyperparams: bool,
) -> Plan:
    """The diff between step ``step`` and the live objects, and what to read.

    Args:
      step: the step restored.
      meta: its JSON item.
      live: ``{'model': ..., 'optimizer'?: ...}`` live Variables by path.
      saved: the same items' saved leaves (shape, dtype) by path.
      optimizer: the live optimizer, or None.
      changes: what may differ.
      check_hyperparams: compare hyperparameters and scheduler (the
        ``CheckpointOptions`` field; ``False`` loads the scheduler state as saved).

    Returns:
      The :class:`Plan`: the diff (:meth:`Plan.log` shows it), the targets to
      read by the checkpoint's paths, and how to write them back.

    Raises:
      ValueError: a difference ``changes`` does not allow; the message lists the
        whole diff and the field of :class:`ResumeChanges` that would allow each.
    """
    diffs: list[Difference] = []
    if optimizer is not None and check_hyperparams:
        diffs += _hyperparam_differences(
            meta.get("hyperparams") or {}, metadata.live_hyperparams(optimizer)
        )
    schedule_changed = any(d.kind == "schedule" for d in diffs)
    prng = {item: set(meta.get("prng_keys", {}).get(item, [])) for item in live}
    wanted: dict[str, dict[str, jax.ShapeDtypeStruct]] = {}
    sources: dict[str, dict[str, str]] = {}
    casts: set[str] = set()
    copies: dict[str, str] = {}

    # -- the model: by path -------------------------------------------------------
    model_live, model_saved = live["model"], saved["model"]
    new_params = sorted(
        k for k in set(model_live) - set(model_saved) if not tree.is_optional(model_live[k])
    )
    diffs += [
        Difference("new params", f"model {k}", None, _layout(model_live[k])) for k in new_params
    ]
    diffs += _abstract_absent("model", model_live, model_saved)
    diffs += [
        Difference("tree", f"model {k}", _saved_layout(model_saved[k]), None)
        for k in sorted(set(model_saved) - set(model_live))
    ]
    wanted["model"], sources["model"] = {}, {}
    for key in sorted(set(model_live) & set(model_saved)):
        d = _leaf_difference("model", key, model_live[key], model_saved[key], prng["model"])
        if d is not None:
            diffs.append(d)
        wanted["model"][key] = targets.target(model_live[key].get_value(), f"model {key!r}")
        sources["model"][key] = key

    # -- the optimizer: by role ------------------------------------------------------
    if "optimizer" in live:
        opt_live, opt_saved = live["optimizer"], saved["optimizer"]
        live_roles, saved_roles = layout.roles(opt_live), layout.roles(opt_saved)
        # a new group's count and LR are copied from group 0 (below): never absent
        copied = (
            {r for r in live_roles if r.startswith(("count/", "learning_rate/"))}
            if r"count/0" in saved_roles
            else set()
        )
        diffs += _abstract_absent(
            "optimizer",
            {r: opt_live[p] for r, p in live_roles.items() if r not in copied},
            saved_roles,
        )
        if schedule_changed:  # the new scheduler's state is its own
            diffs += [
                Difference(
                    "tree",
                    f"optimizer {p}",
                    None,
                    "abstract: a new scheduler's initial state is unknown; build it concretely",
                )
                for r, p in sorted(live_roles.items())
                if r.startswith("lr/") and targets.is_abstract(opt_live[p].get_value())
            ]
            live_roles = {r: p for r, p in live_roles.items() if not r.startswith("lr/")}
        wanted["optimizer"], sources["optimizer"] = {}, {}
        new_param_set = set(new_params)
        for r, live_key in sorted(live_roles.items()):
            var = opt_live[live_key]
            saved_key = saved_roles.get(r)
            if saved_key is None:
                if tree.is_optional(var):
                    continue
                param = layout.param_path(r)
                if param is not None:
                    kind = "new params" if param in new_param_set else "tree"
                    diffs.append(Difference(kind, f"optimizer {r}", None, _layout(var)))
                elif r.startswith(("count/", "learning_rate/")):
                    # A new group: its update count is group 0's (every group counts every
                    # update); its LR, group 0's until the next update writes the scheduler's.
                    source = saved_roles.get(r.split("/")[0] + "/0")
                    if source is not None:
                        copies[live_key] = source
                        wanted["optimizer"].setdefault(
                            source, _target(var, opt_saved[source].dtype, live_key)
                        )
                    what = "group 0's" if source is not None else None
                    diffs.append(Difference("groups", f"optimizer {r}", None, what))
                else:
                    diffs.append(Difference("tree", f"optimizer {live_key}", None, _layout(var)))
                continue
            leaf = opt_saved[saved_key]
            if layout.group_of(saved_key) != layout.group_of(live_key):
                diffs.append(
                    Difference(
                        "groups",
                        f"optimizer {r}",
                        f"group {layout.group_of(saved_key)}",
                        f"group {layout.group_of(live_key)}",
                    )
                )
            d = _leaf_difference("optimizer", r, var, leaf, set())
            dtype = None
            if d is not None and d.kind == "dtype" and layout.param_path(r) is not None:
                d = dataclasses.replace(d, kind="velocity dtype")
                casts.add(live_key)
                dtype = leaf.dtype
            if d is not None:
                diffs.append(d)
            wanted["optimizer"][saved_key] = _target(var, dtype, f"optimizer {live_key!r}")
            sources["optimizer"][live_key] = saved_key
        matched = set(sources["optimizer"].values())
        for r, saved_key in sorted(saved_roles.items()):
            if saved_key in matched or r in live_roles:
                continue
            if schedule_changed and r.startswith("lr/"):
                continue
            kind = "groups" if r.startswith(("count/", "learning_rate/")) else "tree"
            diffs.append(
                Difference(
                    kind, f"optimizer {saved_key}", _saved_layout(opt_saved[saved_key]), None
                )
            )
        # What the live optimizer does not take (a removed group, the old scheduler's
        # state, read to place the new one) is read too, onto one device: orbax restores
        # an item whole.
        for key, leaf in opt_saved.items():
            if key not in wanted["optimizer"]:
                wanted["optimizer"][key] = jax.ShapeDtypeStruct(
                    tuple(leaf.shape),
                    np.dtype(leaf.dtype),
                    sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
                )

    diffs += _sharding_differences(wanted, saved, sources)
    diff = ResumeDiff(step, tuple(diffs))
    refused = diff.refused(changes)
    if refused:
        raise ValueError(
            f"Checkpointer.restore: the live objects do not match step {step}; nothing was "
            f"restored.\n{diff}\n{_advice(refused)}"
        )
    return Plan(
        diff, wanted, sources, casts, copies, changes.schedule if schedule_changed else None
    )


def _advice(refused: list[Difference]) -> str:
    fields = {
        "hyperparams": "hyperparams=True",
        "schedule": "schedule='from_step' or 'from_lr'",
        "groups": "groups=True",
        "velocity dtype": "velocity_dtype=True",
        "new params": "new_params=True",
    }
    allowed = sorted({fields[d.kind] for d in refused if d.kind in fields})
    never = sorted({d.kind for d in refused if d.kind in _REFUSED})
    out = []
    if allowed:
        out.append(
            "To resume with these changes, pass changes=nm.ResumeChanges("
            + ", ".join(allowed)
            + ") to restore(); or build the live objects as saved "
            "(Checkpointer.metadata()['hyperparams'])."
        )
    if never:
        out.append(
            f"Differences of kind {never} cannot be loaded: is it the same model "
            "(layers, BatchNorm/Dropout) and optimizer?"
        )
    return " ".join(out)


def _sharding_differences(
    wanted: Mapping[str, Mapping[str, jax.ShapeDtypeStruct]],
    saved: Mapping[str, Mapping[str, Any]],
    sources: Mapping[str, Mapping[str, str]],
) -> list[Difference]:
    """One line per item and (saved, live) layout pair whose shardings differ."""
    out = []
    for item, paths in sources.items():
        pairs: dict[tuple[str, str], int] = {}
        for saved_key in paths.values():
            before = _saved_sharding(saved[item].get(saved_key))
            after = _live_sharding(wanted[item][saved_key].sharding)
            if before is not None and before != after:
                pairs[before, after] = pairs.get((before, after), 0) + 1
        out += [
            Difference("sharding", f"{item} ({n} arrays)", a, b)
            for (a, b), n in sorted(pairs.items())
        ]
    return out


def _saved_sharding(leaf: Any) -> str | None:
    """A saved array's sharding, as orbax's metadata records it (None: not recorded)."""
    meta = getattr(leaf, "sharding", None)
    axes, shape = getattr(meta, "axis_names", None), getattr(meta, "shape", None)
    if axes is None or shape is None:
        return "1 device" if meta is not None else None
    mesh = ", ".join(f"{a}={int(n)}" for a, n in zip(axes, np.asarray(shape).tolist()))
    return f"mesh ({mesh}) {tuple(getattr(meta, 'partition_spec', ()) or ())}"


def _live_sharding(sharding: Any) -> str:
    if isinstance(sharding, jax.sharding.NamedSharding):
        mesh = ", ".join(f"{a}={n}" for a, n in sharding.mesh.shape.items())
        return f"mesh ({mesh}) {tuple(sharding.spec)}"
    return "1 device" if len(sharding.device_set) == 1 else str(sharding)


def _abstract_absent(
    item: str, live: Mapping[str, nnx.Variable], saved: Mapping[str, Any]
) -> list[Difference]:
    """Live leaves the checkpoint lacks that are abstract (``nnx.eval_shape``): no value to keep."""
    return [
        Difference(
            "tree", f"{item} {k}", None, "abstract: it would keep no value; build it concretely"
        )
        for k in sorted(set(live) - set(saved))
        if targets.is_abstract(live[k].get_value())
    ]


def _layout(var: nnx.Variable) -> str:
    value = var.get_value()
    return f"{tuple(np.shape(value))} {np.dtype(getattr(value, 'dtype', np.float32))}"


def _saved_layout(leaf: Any) -> str:
    return f"{tuple(getattr(leaf, 'shape', ()) or ())} {np.dtype(getattr(leaf, 'dtype', None))}"


def _leaf_difference(
    item: str, key: str, var: nnx.Variable, leaf: Any, saved_keys: set[str]
) -> Difference | None:
    value = var.get_value()
    is_key = targets.is_key(value)
    if is_key != (key in saved_keys):
        kinds = ("a PRNG key", "an array")
        return Difference("tree", f"{item} {key}", kinds[key not in saved_keys], kinds[not is_key])
    t = targets.target(value, f"{item} {key!r}")
    shape = tuple(getattr(leaf, "shape", ()) or ())
    dtype = getattr(leaf, "dtype", None)
    if shape != tuple(t.shape):
        return Difference("shape", f"{item} {key}", shape, tuple(t.shape))
    if dtype is not None and np.dtype(dtype) != np.dtype(t.dtype):
        return Difference("dtype", f"{item} {key}", np.dtype(dtype), np.dtype(t.dtype))
    return None


def schedule_mover(
    scheduler: Any, schedule: Schedule, read: Mapping[str, Any]
) -> Callable[[], None]:
    """How to place a *new* scheduler for a run resumed with ``schedule``; checked, not applied.

    Args:
      scheduler: the live optimizer's ``lr``.
      schedule: ``'from_step'`` or ``'from_lr'`` (see :class:`ResumeChanges`).
      read: the checkpoint's ``lr/last_epoch``, ``lr/epoch_fraction``,
        ``lr/current_lr`` (those it has).

    Returns:
      A function that moves the scheduler (call it once everything is read).

    Raises:
      ValueError: the checkpoint has no scheduler state, or ``'from_lr'`` with
        a scheduler whose first LR is not its base LR (a warmup, ``OneCycleLR``,
        a composite) or with another number of LRs.
    """
    if schedule == "from_step":
        if "lr/last_epoch" not in read:
            raise ValueError(
                "ResumeChanges(schedule='from_step'): the checkpoint holds no scheduler epoch."
            )
        whole = jnp.asarray(read["lr/last_epoch"], jnp.int32)
        frac = jnp.asarray(read.get("lr/epoch_fraction", 0.0), jnp.float32)
        return lambda: scheduler._step_to(whole, frac)
    if "lr/current_lr" not in read:
        raise ValueError("ResumeChanges(schedule='from_lr'): the checkpoint holds no current LR.")
    lrs = np.atleast_1d(np.asarray(read["lr/current_lr"], np.float32)).tolist()
    if len(lrs) != scheduler.n_groups:
        raise ValueError(
            f"ResumeChanges(schedule='from_lr'): the checkpoint applied {len(lrs)} LR(s), the "
            f"live {type(scheduler).__name__} drives {scheduler.n_groups}: give it one base LR "
            "per group, or use schedule='from_step'."
        )

    def restart(s: Any) -> None:
        s._set_base_lrs(lrs if s._grouped else lrs[:1], s._grouped)
        s._initial_epoch = 0
        s._step_to(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    trial = nnx.clone(scheduler)
    restart(trial)
    got = np.atleast_1d(np.asarray(trial.current_lr[...]))
    if hasattr(scheduler, "schedulers") or not np.allclose(got, lrs, rtol=1e-6):
        raise ValueError(
            f"ResumeChanges(schedule='from_lr'): {type(scheduler).__name__} does not start at its "
            f"base LR (restarted from {lrs} it would apply {got.tolist()}), so the LR cannot "
            "continue from the checkpoint's. Build it with the LR to start from, and use "
            "schedule='from_step' or restart it yourself."
        )
    return lambda: restart(scheduler)
