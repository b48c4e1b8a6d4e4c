"""braintools-style optimizers: ``Momentum``, ``MomentumNesterov`` and ``SGD``.

Same argument names, order and defaults as ``braintools.optim``; the weights
are registered once and ``step(grads)`` updates them in place. Internally each
is a thin face over a :class:`~nnx_momentum.MomentumOptimizer` that treats the
registered weights as its model, so the update code, the state layout and the
checkpoints are exactly those of the ``nnx.Optimizer`` face.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import optax
from flax import nnx

from nnx_momentum import _validation, tree
from nnx_momentum import groups as groups_lib
from nnx_momentum import learning_rate as lr_lib
from nnx_momentum._signature import public_signature
from nnx_momentum.config import ConfigAttributes, MomentumConfig, resolve
from nnx_momentum.groups import ParamGroup
from nnx_momentum.nnx_optimizer import MomentumOptimizer
from nnx_momentum.schedulers import LRScheduler

__all__ = ["SGD", "BraintoolsOptimizer", "Momentum", "MomentumNesterov"]

Path = tuple[str, ...]


def _flat_weights(weights: Any) -> dict[Path, nnx.Variable]:
    """``{path: live Variable}`` from a module, a State, a dict or a list of Variables."""
    if isinstance(weights, nnx.Module):
        weights = nnx.state(weights, nnx.Param)
    elif isinstance(weights, nnx.Variable):
        raise TypeError(
            "register_trainable_weights got a single Variable; pass a module, "
            "nnx.state(model, nnx.Param), or a dict/list of Variables."
        )
    flat = tree.flatten(weights)
    for path, leaf in flat.items():
        if not isinstance(leaf, nnx.Variable):
            raise TypeError(
                f"register_trainable_weights: the leaf at {tree.path_str(path)!r} is a "
                f"{type(leaf).__name__}, not an nnx.Variable, so it could not be updated in "
                "place. Pass nnx.state(model, nnx.Param) or the model itself."
            )
    return flat


def _check_registration(
    old: dict[Path, nnx.Variable], new: dict[Path, nnx.Variable], merged: dict[Path, nnx.Variable]
) -> None:
    """Refuses a path bound to two Variables, or a Variable under two paths."""
    clashes = sorted(tree.path_str(p) for p, var in new.items() if p in old and old[p] is not var)
    if clashes:
        raise ValueError(
            f"register_trainable_weights: paths {clashes} are already registered to "
            "other Variables. Register the parent module once, or pass a dict with "
            "distinct keys, e.g. {'encoder': nnx.state(m.encoder, nnx.Param), "
            "'decoder': nnx.state(m.decoder, nnx.Param)}."
        )
    seen: dict[int, Path] = {}
    for path, var in merged.items():
        if id(var) in seen:
            raise ValueError(
                f"register_trainable_weights: one Variable would be registered twice, at "
                f"{tree.path_str(seen[id(var)])!r} and {tree.path_str(path)!r}. Register the "
                "parent module alone, or its sub-modules alone."
            )
        seen[id(var)] = path


@dataclasses.dataclass(frozen=True)
class _Paths:
    """An nnx filter: the Variables at these paths (a braintools parameter group)."""

    paths: frozenset[Path]

    def __call__(self, path: tuple[Any, ...], value: Any) -> bool:
        return tuple(map(str, path)) in self.paths


class BraintoolsOptimizer(ConfigAttributes, nnx.Pytree):
    """braintools' ``register_trainable_weights`` / ``step`` API, holding a ``MomentumOptimizer``.

    The base of :class:`Momentum`, :class:`MomentumNesterov` and :class:`SGD`,
    with :class:`SGD`'s signature: those classes only change defaults. Everything
    -- the transformation, the LR, the state -- belongs to the
    :class:`~nnx_momentum.MomentumOptimizer` in ``self.optimizer``, which gets
    this object's :class:`~nnx_momentum.MomentumConfig` whole; this class only
    adds registration and ``step(grads)``. Before registration that optimizer
    runs over no weights, so ``state_dict()``, ``step_count`` and the LR API
    already work.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        public_signature(cls)

    def __init__(
        self,
        lr: lr_lib.LROption = 0.001,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        grad_clip_norm: float | None = None,
        grad_clip_value: float | None = None,
        *,
        config: MomentumConfig | None = None,
        shard_state_over: str | None = None,
    ):
        config = resolve(
            config,
            BraintoolsOptimizer.__init__,
            type(self).__name__,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            grad_clip_norm=grad_clip_norm,
            grad_clip_value=grad_clip_value,
        )
        # A number is kept as given, so groups can add their own LRs to it.
        self._fixed_lr = None if isinstance(lr, LRScheduler) or callable(lr) else lr
        self._groups: tuple[ParamGroup, ...] = ()
        self._shard_state_over = shard_state_over
        self.schedulers: nnx.List[LRScheduler] = nnx.List([])
        self.param_states: nnx.State = nnx.data(nnx.State({}))
        self.optimizer = nnx.data(self._core(self.param_states, config, lr, ()))

    def _core(
        self,
        states: nnx.State,
        config: MomentumConfig,
        lr: lr_lib.LROption,
        groups: tuple[ParamGroup, ...],
    ) -> MomentumOptimizer[nnx.State]:
        """The core over ``states`` (the weights as its model, every Variable trained)."""
        lr = self._fixed_lr if self._fixed_lr is not None else lr
        return MomentumOptimizer(
            states,
            lr=lr,
            wrt=nnx.Variable,
            groups=groups,
            shard_state_over=self._shard_state_over,
            config=config,
        )

    # -- registration ------------------------------------------------------------
    def register_trainable_weights(self, weights: Any) -> BraintoolsOptimizer:
        """Registers the weights to optimize and creates their zero velocity.

        Args:
          weights: ``nnx.state(model, nnx.Param)`` (a State of live Variables),
            the model itself, or a (nested) dict or list of Variables. Full paths
            are kept. Calling it again adds more weights (before the first step);
            registering the same Variables again is a no-op.

        Returns:
          ``self``, for chaining.

        Raises:
          ValueError: if a path is already registered to a different Variable
            (two sub-modules registered separately both have ``kernel``), or new
            weights arrive after the first step. Nothing is changed then.
        """
        new = _flat_weights(weights)
        old = tree.flatten(self.param_states)
        merged = {**old, **new}
        _check_registration(old, new, merged)
        if set(merged) == set(old):
            return self
        if self._stepped():
            added = sorted(tree.path_str(p) for p in set(merged) - set(old))
            raise ValueError(
                f"register_trainable_weights: new weights {added} after {self.step_count} "
                "steps; register all weights before the first step."
            )
        self._rebuild(merged, self._groups)
        return self

    def add_param_group(self, params: Any, **hyperparams: Any) -> BraintoolsOptimizer:
        """Adds weights as a new parameter group with its own hyperparameters (braintools).

        Args:
          params: the group's weights, as for :meth:`register_trainable_weights`;
            none of them may be registered already.
          **hyperparams: ``lr`` (a float; with a scheduler, give the scheduler one
            base LR per group instead), ``momentum``, ``nesterov``,
            ``weight_decay``; unset ones are the optimizer's.

        Returns:
          ``self``.

        Raises:
          ValueError: before ``register_trainable_weights``, after the first
            step, for weights already registered, or an out-of-range value.
          TypeError: an unknown hyperparameter name.

        Example:
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> body = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
          >>> head = nnx.Linear(3, 1, rngs=nnx.Rngs(1))
          >>> opt = nm.Momentum(lr=0.1)
          >>> opt = opt.register_trainable_weights({"body": nnx.state(body, nnx.Param)})
          >>> opt = opt.add_param_group({"head": nnx.state(head, nnx.Param)}, lr=0.01)
          >>> [g["lr"] for g in opt.param_groups]
          [0.1, 0.01]
        """
        unknown = sorted(set(hyperparams) - {"lr", *groups_lib.OVERRIDABLE})
        if unknown:
            raise TypeError(
                f"add_param_group: unknown hyperparameters {unknown}; a group may set lr, "
                f"{', '.join(groups_lib.OVERRIDABLE)}."
            )
        if not self.registered:
            raise ValueError("register_trainable_weights must be called before add_param_group.")
        new = _flat_weights(params)
        old = tree.flatten(self.param_states)
        old_ids = {id(v) for v in old.values()}
        taken = sorted(tree.path_str(p) for p, v in new.items() if p in old or id(v) in old_ids)
        if taken:
            raise ValueError(f"add_param_group: weights {taken} are already registered.")
        merged = {**old, **new}
        _check_registration(old, new, merged)
        if self._stepped():
            raise ValueError(
                f"add_param_group after {self.step_count} steps; add all groups before the "
                "first step."
            )
        group = ParamGroup(_Paths(frozenset(new)), **hyperparams)
        self._rebuild(merged, (*self._groups, group))
        return self

    def _rebuild(self, weights: dict[Path, nnx.Variable], groups: tuple[ParamGroup, ...]) -> None:
        """A new core over ``weights``; this object changes only once it is built."""
        states = nnx.from_flat_state(sorted(weights.items(), key=lambda kv: str(kv[0])))
        optimizer = self._core(states, self.config, self.lr, groups)
        self.param_states = nnx.data(states)
        self.optimizer = nnx.data(optimizer)
        self._groups = groups

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """One dict per group: ``{'params': {path: Variable}, 'lr', 'momentum', ...}``."""
        weights = {tree.path_str(p): v for p, v in tree.flatten(self.param_states).items()}
        out = self.optimizer.param_groups
        return [{**g, "params": {p: weights[p] for p in g["params"]}} for g in out]

    # -- braintools' scheduler plumbing --------------------------------------------------
    def attach_scheduler(self, scheduler: LRScheduler) -> None:
        """Makes ``scheduler`` drive this optimizer's LR (``scheduler.attach_optimizer(opt)``).

        Raises:
          ValueError: after the first step (compiled steps hold the old scheduler).
        """
        if self._stepped():
            raise ValueError(
                f"attach_scheduler after {self.step_count} steps: pass the scheduler as lr "
                "when building the optimizer."
            )
        self._fixed_lr = None
        self.optimizer = nnx.data(
            self._core(self.param_states, self.config, scheduler, self._groups)
        )

    def add_scheduler(self, scheduler: LRScheduler) -> None:
        """Registers another scheduler; :meth:`get_last_lr` reports the last one (braintools)."""
        self.schedulers.append(scheduler)

    def lr_apply(self, fn: Any) -> None:
        """Applies ``fn`` to the scheduler's current LRs (braintools' ``lr_apply``)."""
        self.lr.apply(fn)

    def _stepped(self) -> bool:
        """Whether an update was applied (False while traced: a new optimizer has none)."""
        step = self.optimizer.step[...]
        return not _validation.is_traced(step) and int(step) > 0

    @property
    def registered(self) -> bool:
        """Whether any weights are registered."""
        return len(self.param_states) > 0

    # -- the update ----------------------------------------------------------------
    def step(self, grads: Any) -> None:
        r"""Applies one update to the registered weights, in place.

        Args:
          grads: the tree ``nnx.grad(loss_fn)(model)`` returns, or its pure-dict
            form, matched to the registered weights by path.

        Raises:
          RuntimeError: before ``register_trainable_weights``.
          ValueError: naming the path, for a missing or unknown gradient, or a
            shape or dtype that differs from its weight. Nothing is updated then.
        """
        if not self.registered:
            raise RuntimeError(
                f"{type(self).__name__}.step() before register_trainable_weights(...): "
                "register nnx.state(model, nnx.Param) (or the model) first."
            )
        self.optimizer.update(self.param_states, grads)

    update = step

    # -- what the core holds -----------------------------------------------------------
    @property
    def config(self) -> MomentumConfig:  # type: ignore[override]
        """The :class:`~nnx_momentum.MomentumConfig` of the update."""
        return self.optimizer.config

    @property
    def lr(self) -> LRScheduler:
        """The scheduler driving the LR (a float became ``FixedLR``)."""
        return self.optimizer.lr

    @property
    def tx(self) -> optax.GradientTransformation:
        """The optax transformation applied (the core's ``tx``)."""
        return self.optimizer.tx

    def default_tx(self) -> optax.GradientTransformation:
        """The optax transformation ``step`` applies (:func:`nnx_momentum.momentum`)."""
        return self.optimizer.tx

    @property
    def opt_state(self) -> Any:
        """The optax state (``None`` before registration)."""
        return self.optimizer.opt_state if self.registered else None

    @property
    def hyperparams(self) -> dict[str, Any]:
        """JSON: ``{'optimizer': class name, 'lr': scheduler description, **config}``."""
        return {**self.optimizer.hyperparams, "optimizer": type(self).__name__}

    @property
    def step_count(self) -> int:
        """How many updates were applied (eager only); 0 before registration."""
        return self.optimizer.step_count

    @property
    def current_lr(self) -> float:
        """The LR the next step applies (see ``MomentumOptimizer.current_lr``)."""
        return self.optimizer.current_lr

    @current_lr.setter
    def current_lr(self, value: float) -> None:
        self.optimizer.current_lr = value

    @property
    def base_lr(self) -> float:
        """The initial LR of the scheduler."""
        return self.optimizer.base_lr

    def get_last_lr(self) -> list[float]:
        """The LR of each group; the last :meth:`add_scheduler`'s LRs if any (braintools)."""
        if len(self.schedulers):
            return self.schedulers[-1].get_last_lr()
        return self.optimizer.get_last_lr()

    def state_tree(self) -> nnx.State:
        """``{'step', 'opt_state', 'lr'}`` as live Variables, as ``MomentumOptimizer``'s."""
        if not self.registered:
            raise RuntimeError(
                f"{type(self).__name__} has no state before register_trainable_weights(...)."
            )
        return self.optimizer.state_tree()

    def state_dict(self) -> dict[str, Any]:
        """Velocity, step count and scheduler state (see ``MomentumOptimizer.state_dict``).

        Before registration, as braintools: a step count of 0 and no velocity.
        """
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a ``state_dict`` of either face; validated first, nothing half-loaded."""
        self.optimizer.load_state_dict(state_dict)

    def __setattr__(self, name: str, value: Any) -> None:
        # As in MomentumOptimizer: a property's setter runs, never a static attribute.
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)


class SGD(BraintoolsOptimizer):
    r"""Stochastic gradient descent with optional momentum (``braintools.optim.SGD``).

    With ``momentum=0`` this is :math:`p \leftarrow p - \eta\,(g + \lambda p)`;
    otherwise it is :class:`Momentum` (or :class:`MomentumNesterov`).

    Args:
      lr, weight_decay, grad_clip_norm, grad_clip_value, shard_state_over: as in
        :class:`Momentum`.
      momentum: :math:`\mu \in [0, 1)`, default 0.
      nesterov: Nesterov momentum (needs ``momentum > 0``).
      config: all hyperparameters as one :class:`~nnx_momentum.MomentumConfig`,
        instead of the keywords above (which must then keep their defaults).

    Example:
      >>> import nnx_momentum as nm
      >>> nm.SGD(lr=0.1).hyperparams["momentum"]
      0.0
      >>> nm.SGD(lr=0.1, config=nm.MomentumConfig(momentum=0.5, nesterov=True)).nesterov
      True
    """


class Momentum(BraintoolsOptimizer):
    r"""Heavy-ball momentum, braintools-style (``braintools.optim.Momentum``).

    .. math::

       v \leftarrow \mu v + (g + \lambda p), \qquad p \leftarrow p - \eta\, v

    after optional clipping of :math:`g` by global norm, then by value.

    Args:
      lr: a float or a scheduler (e.g. ``nm.StepLR``) stepped by you.
      momentum: :math:`\mu \in [0, 1)`.
      weight_decay: coupled L2 coefficient :math:`\lambda \ge 0`.
      grad_clip_norm: maximum global gradient norm, or None.
      grad_clip_value: maximum absolute gradient element, or None.
      config: all hyperparameters as one :class:`~nnx_momentum.MomentumConfig`
        (its ``nesterov`` as the class fixes it), instead of the keywords above,
        which must then keep their defaults.
      shard_state_over: a mesh axis name to shard the velocity over (ZeRO stage
        1), or None; as in :class:`~nnx_momentum.MomentumOptimizer`.

    Raises:
      ValueError: naming the argument, for a value out of range.
      TypeError: ``config`` together with a hyperparameter keyword.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> model = nnx.Linear(10, 5, rngs=nnx.Rngs(0))
      >>> scheduler = nm.StepLR(base_lr=0.1, step_size=30, gamma=0.1)
      >>> optimizer = nm.Momentum(lr=scheduler, momentum=0.9, weight_decay=1e-4)
      >>> optimizer = optimizer.register_trainable_weights(nnx.state(model, nnx.Param))
      >>> loss_fn = lambda m: jnp.mean(m(jnp.ones((8, 10))) ** 2)
      >>> grads = nnx.grad(loss_fn)(model)
      >>> optimizer.step(grads)
      >>> scheduler.step()
      >>> optimizer.step_count, optimizer.current_lr
      (1, 0.1...)
    """

    _nesterov: ClassVar[bool] = False  # what this class fixes (MomentumNesterov: True)

    def __init__(
        self,
        lr: lr_lib.LROption = 0.001,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        grad_clip_norm: float | None = None,
        grad_clip_value: float | None = None,
        *,
        config: MomentumConfig | None = None,
        shard_state_over: str | None = None,
    ):
        config = resolve(
            config,
            Momentum.__init__,
            type(self).__name__,
            momentum=momentum,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,
            grad_clip_value=grad_clip_value,
            nesterov=self._nesterov,
        )
        super().__init__(lr, config=config, shard_state_over=shard_state_over)


class MomentumNesterov(Momentum):
    r"""Nesterov momentum, braintools-style (``braintools.optim.MomentumNesterov``).

    .. math::

       v \leftarrow \mu v + g', \qquad p \leftarrow p - \eta\,(g' + \mu v),
       \qquad g' = \mathrm{clip}(g) + \lambda p

    Args:
      lr, momentum, weight_decay, grad_clip_norm, grad_clip_value, config,
      shard_state_over: as in :class:`Momentum`; ``momentum`` must be > 0.

    Example:
      >>> import nnx_momentum as nm
      >>> nm.MomentumNesterov(lr=0.01, momentum=0.9).hyperparams["nesterov"]
      True
    """

    _nesterov: ClassVar[bool] = True
