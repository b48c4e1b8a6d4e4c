r"""``MomentumOptimizer``: the optimizer core, a drop-in ``flax.nnx.Optimizer``.

Both faces run this class: ``nm.MomentumOptimizer`` is used directly, and the
braintools-style ``nm.Momentum`` holds one over its registered weights
(``optimizers.py``). Its state is flax's -- ``step`` (uint32 update counter) and
``opt_state`` (the optax state of :func:`nnx_momentum.momentum`) -- plus ``lr``,
the scheduler's state, so one ``state_dict()`` or checkpoint carries all of it
and loads into either face.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nnx_momentum import groups as groups_lib
from nnx_momentum import layout, tree
from nnx_momentum import learning_rate as lr_lib
from nnx_momentum import sharding as sharding_lib
from nnx_momentum._signature import public_signature
from nnx_momentum.config import ConfigAttributes, MomentumConfig, resolve
from nnx_momentum.groups import ParamGroup
from nnx_momentum.schedulers import LRScheduler
from nnx_momentum.transform import LEARNING_RATE, from_config, grouped

__all__ = ["MomentumOptimizer"]

M = TypeVar("M")


@public_signature
class MomentumOptimizer(ConfigAttributes, nnx.Optimizer[M]):
    r"""A real ``nnx.Optimizer`` subclass applying heavy-ball momentum.

    Each ``update(model, grads)`` applies the update of
    :func:`nnx_momentum.momentum`: clip by global norm, clip by value,
    :math:`g \leftarrow g + \lambda p`, :math:`v \leftarrow \mu v + g`,
    :math:`p \leftarrow p - \eta\,v` (or the Nesterov form), with :math:`\eta`
    the scheduler's current LR. The state is flax's (``step``, ``opt_state``)
    plus ``lr``, the scheduler, so ``nnx.state(optimizer)`` -- and any
    checkpoint of it -- carries the schedule.

    Under transforms: pass the optimizer (and model) to ``nnx.jit``, return it
    from ``jax.jit`` (``nnx.split``/``nnx.merge``), and keep it in the *carry* of
    ``nnx.scan``. Passed to ``nnx.scan`` as a broadcast (``in_axes=None``) its
    updates are silently dropped by flax: the velocity restarts from zero at every
    iteration and ``step`` never advances (``tests/test_nnx_optimizer.py`` shows it).

    Args:
      model: the NNX module whose ``wrt`` variables are optimized.
      lr: a float, an ``nnx_momentum`` scheduler (stepped by you with
        ``optimizer.lr.step()``), or an optax schedule of the update count.
      momentum: :math:`\mu \in [0, 1)`.
      wrt: the variable filter to optimize (as in ``nnx.Optimizer``).
      nesterov, weight_decay, grad_clip_norm, grad_clip_value,
      accumulator_dtype: as in :func:`nnx_momentum.momentum` (the fields of
        :class:`~nnx_momentum.MomentumConfig`).
      config: all of them as one :class:`~nnx_momentum.MomentumConfig`
        (``MomentumOptimizer(model, lr, config=config)``), instead of the
        keywords ``momentum`` ... ``accumulator_dtype``, which must then keep
        their defaults (``TypeError`` otherwise).
      groups: parameter groups (:class:`~nnx_momentum.ParamGroup`), each an nnx
        filter with its own ``lr``, ``momentum``, ``nesterov`` or ``weight_decay``;
        group 0 is every parameter no group selects. See :mod:`nnx_momentum.groups`.
      tx_wrapper: a function wrapping the transformation, e.g.
        ``lambda tx: optax.MultiSteps(tx, every_k_schedule=4)`` for gradient
        accumulation; the runtime LR and the scheduler keep working through it.
        Checked at construction: what it returns must run the transformation it
        was given and hold no other ``optax.inject_hyperparams`` state.
      shard_state_over: a mesh axis name (e.g. ``"data"``) to shard the optimizer
        state over (ZeRO stage 1): each velocity leaf is split over that axis
        along a dimension divisible by its size (leaves with none stay as their
        parameter is), whatever the parameter's own sharding; every update keeps
        each parameter's own sharding. The mesh is the parameters' (their
        ``NamedSharding``) or the ambient ``jax.set_mesh``. See
        :mod:`nnx_momentum.sharding`. ``None`` (default): the state follows the
        parameters.
      graph: graph mode (``True``) or tree mode (``False``), as in ``nnx.Optimizer``.

    Attributes:
      config: the :class:`~nnx_momentum.MomentumConfig` of the update.
      lr: the :class:`~nnx_momentum.LRScheduler` driving the LR (a float became
        ``FixedLR``, an optax schedule an ``OptaxSchedule``).

    Raises:
      ValueError: naming the argument, for a hyperparameter out of range, a
        parameter that is not floating or complex, or a group that selects nothing;
        naming ``shard_state_over``, when there is no mesh or it has no such axis.
      TypeError: ``groups`` items that are not ``ParamGroup``s, or a ``tx_wrapper``
        that does not return a transformation (or one whose ``init`` fails).
      ValueError: a ``tx_wrapper`` whose transformation would lose the runtime LR:
        its state (probed with ``jax.eval_shape`` of its ``init``) must hold exactly
        the ``optax.inject_hyperparams`` states of the transformation it was given,
        one per group -- not none (``lambda tx: optax.identity()``) and no other
        (a chained ``optax.inject_hyperparams(optax.sgd)(...)``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> optimizer = nm.MomentumOptimizer(model, lr=nm.StepLR(0.1, step_size=2))
      >>> loss_fn = lambda m: jnp.mean((m(jnp.ones((4, 2))) - 1.0) ** 2)
      >>> for epoch in range(3):
      ...     grads = nnx.grad(loss_fn)(model)
      ...     _ = optimizer.update(model, grads)
      ...     optimizer.lr.step()
      >>> optimizer.step_count, round(optimizer.current_lr, 6)
      (3, 0.01)
    """

    lr: LRScheduler

    def __init__(
        self,
        model: M,
        lr: lr_lib.LROption = 0.001,
        momentum: float = 0.9,
        *,
        wrt: Any = nnx.Param,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        grad_clip_norm: float | None = None,
        grad_clip_value: float | None = None,
        accumulator_dtype: jax.typing.DTypeLike | None = None,
        config: MomentumConfig | None = None,
        groups: Sequence[ParamGroup] = (),
        tx_wrapper: Callable[[optax.GradientTransformation], Any] | None = None,
        shard_state_over: str | None = None,
        graph: bool | None = None,
    ):
        config = resolve(
            config,
            MomentumOptimizer.__init__,
            type(self).__name__,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,
            grad_clip_value=grad_clip_value,
            accumulator_dtype=accumulator_dtype,
        )
        groups = _checked_groups(groups)
        _check_inexact(model, wrt, graph)
        scheduler = lr_lib.as_lr(_lr_with_group_lrs(lr, groups))
        if groups:
            configs = groups_lib.group_configs(config, groups)
            labels = groups_lib.group_labels(model, wrt, groups, graph=graph)
            tx: Any = grouped(configs, lr_lib.group_initial_lrs(scheduler, len(configs)), labels)
        else:
            configs, labels = [config], {}
            tx = from_config(config, lr_lib.initial_learning_rate(scheduler))
        if tx_wrapper is not None:
            tx = _wrapped(tx_wrapper, tx, nnx.state(model, wrt, graph=graph))
        if shard_state_over is not None:
            tx = sharding_lib.shard_state(tx, nnx.state(model, wrt, graph=graph), shard_state_over)
        super().__init__(model, tx, wrt=wrt, graph=graph)
        self.shard_state_over = shard_state_over
        self.config = config
        self.group_configs = tuple(configs)
        self.group_labels = tuple(sorted(labels.items()))
        self.lr = scheduler
        # Where the runtime LR lives: the optax state itself unless groups or a
        # wrapper nest it (then found once here, by group).
        self._nested_lr = bool(groups) or tx_wrapper is not None

    def __setattr__(self, name: str, value: Any) -> None:
        # ``nnx.Pytree.__setattr__`` would record a property name (``current_lr``)
        # as a static attribute, changing the graph definition and so retracing
        # every compiled step; a property's own setter is all that should run.
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
            return
        if name == "lr" and "lr" in vars(self):
            raise AttributeError(
                "lr cannot be replaced after construction: compiled steps hold the "
                "original scheduler. Set optimizer.current_lr, call optimizer.lr.step(), "
                "load a state, or build a new optimizer with the new scheduler."
            )
        super().__setattr__(name, value)

    # -- the update ----------------------------------------------------------------
    def update(self, model: M, grads: Any, /, **kwargs: Any) -> None:
        """Applies one momentum step to ``model`` (flax's ``Optimizer.update``).

        ``grads`` (the State ``nnx.grad`` returns, or its pure-dict form) is first
        matched by path to the ``wrt`` variables of ``model``; a missing or unknown
        path, or a shape or dtype mismatch, raises ``ValueError`` naming it, before
        anything is written. Then the scheduler's current LR is written into the
        optax state -- a runtime value, so stepping the scheduler never retraces --
        and flax's own update runs.
        """
        grads = tree.match_grads(nnx.state(model, self.wrt, graph=self.graph), grads)
        if not isinstance(self.lr, lr_lib.OptaxSchedule):
            lr = self.lr.current_lr[...]
            states = self._lr_states()
            if lr.ndim == 1 and lr.shape[0] != len(states):
                raise ValueError(
                    f"lr drives {lr.shape[0]} LRs (one per base LR) but the optimizer has "
                    f"{len(states)} parameter group(s): add the groups (add_param_group, or "
                    "groups=[...]) or give the scheduler one base LR per group."
                )
            for k, state in enumerate(states):
                state.hyperparams[LEARNING_RATE][...] = lr if lr.ndim == 0 else lr[k]
        return super().update(model, grads, **kwargs)

    def _lr_states(self) -> list[Any]:
        """The optax inject states holding each group's runtime LR, in group order."""
        if not self._nested_lr:
            return [self.opt_state]
        return groups_lib.inject_states(self.opt_state)

    # -- state -------------------------------------------------------------------------
    def state_tree(self) -> nnx.State:
        """``{'step', 'opt_state', 'lr'}`` as live Variables: the whole optimizer state."""
        return nnx.state(self, nnx.OptState)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as a pure dict: ``{'step', 'opt_state', 'lr'}``.

        Velocity, update count and the scheduler's state; never the model's weights.
        The arrays are copies: later (donated) steps cannot invalidate them.

        Example:
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> opt = nm.MomentumOptimizer(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), lr=0.1)
          >>> sorted(opt.state_dict())
          ['lr', 'opt_state', 'step']
        """
        state: dict[str, Any] = jax.tree.map(jnp.copy, nnx.to_pure_dict(self.state_tree()))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a :meth:`state_dict` (from either face); validates everything first.

        Values keep their dtype (no silent cast) and land on the live state's
        current sharding (see :mod:`nnx_momentum.tree`). A ``state_dict`` of
        0.1/0.2, whose velocity sat where the hyperparameter values put it, is
        matched by role (:func:`nnx_momentum.layout.relaid`).

        Raises:
          ValueError: naming the first path whose presence, shape or dtype differs,
            or a scheduler state with a negative or non-finite epoch or LR
            (``LRScheduler.load_state_dict``); the optimizer is then left untouched.
        """
        if isinstance(state_dict, dict) and "lr" in state_dict:
            self.lr._check_state_values({"lr": state_dict["lr"]}, "state_dict")
        state = self.state_tree()
        tree.load_into(state, layout.relaid(state, state_dict))

    @property
    def step_count(self) -> int:
        """How many updates were applied (eager only)."""
        return int(self.step[...])

    @property
    def hyperparams(self) -> dict[str, Any]:
        """JSON: ``{'optimizer': class name, 'lr': scheduler description, **config}``.

        With parameter groups, ``'groups'`` lists the other groups' configs.
        """
        out = {"optimizer": type(self).__name__, "lr": self.lr.describe(), **self.config.to_json()}
        if len(self.group_configs) > 1:
            out["groups"] = [c.to_json() for c in self.group_configs[1:]]
        return out

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """One dict per group, torch/braintools style (eager only).

        ``{'params': [parameter paths], 'lr': float, 'momentum', 'nesterov',
        'weight_decay'}``; group 0 first.
        """
        lrs = self.get_last_lr()
        out = []
        for k, config in enumerate(self.group_configs):
            paths = [tree.path_str(p) for p, label in self.group_labels if label == str(k)]
            out.append(
                {
                    "params": paths,
                    "lr": lrs[k] if len(lrs) > 1 else lrs[0],
                    **{name: getattr(config, name) for name in groups_lib.OVERRIDABLE},
                }
            )
        return out

    # -- learning rate --------------------------------------------------------------
    @property
    def current_lr(self) -> float:
        """The LR the next step applies, as a Python float (eager only).

        Setting it overwrites the scheduler's current LR until its next ``step()``.
        """
        return self.get_last_lr()[0]

    @current_lr.setter
    def current_lr(self, value: float) -> None:
        lr_lib.set_lr_value(self.lr, value)

    @property
    def base_lr(self) -> float:
        """The initial LR of the scheduler (or of the optax schedule at step 0)."""
        return float(self.lr.base_lr)

    def get_last_lr(self) -> list[float]:
        """The LR of each group (one per scheduler base LR), as braintools returns it."""
        count = self._lr_states()[0].count[...]
        values = jnp.atleast_1d(lr_lib.lr_value(self.lr, count))
        return [lr_lib.reported(v) for v in values.tolist()]

    def default_tx(self) -> optax.GradientTransformation:
        """The optax transformation ``update`` applies (``self.tx``)."""
        return self.tx


def _wrapped(
    tx_wrapper: Callable[[optax.GradientTransformation], Any],
    tx: optax.GradientTransformation,
    params: nnx.State,
) -> Any:
    """``tx_wrapper(tx)``, checked on a probe state so that the runtime LR still reaches it.

    ``update`` writes the scheduler's LR into the ``optax.inject_hyperparams``
    states of ``tx`` (one per group), found in the optimizer state. The wrapped
    transformation's state, probed by ``jax.eval_shape`` of its ``init`` (no
    computation), must hold exactly those: a wrapper that drops ``tx`` would lose
    the LR, and another inject state would have its hyperparameters overwritten.

    Raises:
      TypeError: the result is not a transformation, or its ``init`` fails on ``params``.
      ValueError: its state does not hold exactly ``tx``'s inject states.
    """
    wrapped = tx_wrapper(tx)
    if not (
        callable(getattr(wrapped, "init", None)) and callable(getattr(wrapped, "update", None))
    ):
        raise TypeError(
            f"tx_wrapper must return an optax transformation, got {type(wrapped).__name__}."
        )
    try:
        probe = jax.eval_shape(wrapped.init, params)
    except Exception as error:
        raise TypeError(
            "tx_wrapper returned a transformation whose init fails on the parameters: "
            f"{type(error).__name__}: {error}"
        ) from error
    expected = [
        jax.tree.structure(s) for s in groups_lib.inject_states(jax.eval_shape(tx.init, params))
    ]
    found = groups_lib.inject_states(probe)
    n = len(expected)
    if not found:
        raise ValueError(
            f"tx_wrapper returned a transformation whose state holds no "
            f"optax.inject_hyperparams state of the transformation it was given (expected {n}, "
            "one per parameter group): it does not run it (e.g. optax.identity()), so the "
            "scheduler's learning rate would never be applied. Wrap the given transformation, "
            "e.g. lambda tx: optax.MultiSteps(tx, every_k_schedule=4)."
        )
    if [jax.tree.structure(state) for state in found] != expected:
        raise ValueError(
            f"tx_wrapper returned a transformation whose state holds {len(found)} "
            f"optax.inject_hyperparams state(s); expected exactly the {n} of the transformation "
            "it was given (one per parameter group). Another inject_hyperparams transformation "
            "(e.g. optax.inject_hyperparams(optax.sgd)(...)) would have its learning_rate "
            "silently overwritten by the scheduler's at every update: chain plain optax "
            "transformations, and give the learning rate through lr."
        )
    return wrapped


def _checked_groups(groups: Sequence[ParamGroup]) -> tuple[ParamGroup, ...]:
    """``groups`` as a tuple, each a ``ParamGroup``."""
    out = tuple(groups)
    for i, group in enumerate(out):
        if not isinstance(group, ParamGroup):
            raise TypeError(f"groups[{i}] must be an nm.ParamGroup, got {type(group).__name__}.")
    return out


def _lr_with_group_lrs(lr: lr_lib.LROption, groups: Sequence[ParamGroup]) -> lr_lib.LROption:
    """A float ``lr`` and groups' own ``lr`` become one per-group list (a ``FixedLR``).

    Raises:
      ValueError: a group sets ``lr`` while ``lr`` is a scheduler (give the
        scheduler one base LR per group instead).
    """
    given = [(i, g.lr) for i, g in enumerate(groups) if g.lr is not None]
    if not given:
        return lr
    if isinstance(lr, LRScheduler) or callable(lr) or isinstance(lr, Sequence):
        i = given[0][0]
        raise ValueError(
            f"groups[{i}].lr is set, but lr is a scheduler or a list: give one base LR "
            f"per group to lr instead (e.g. nm.StepLR(base_lr=[0.1, 0.01], ...) for 2 groups), "
            "and leave the groups' lr unset."
        )
    return [float(lr), *(float(lr) if g.lr is None else g.lr for g in groups)]


def _check_inexact(model: Any, wrt: Any, graph: bool | None) -> None:
    """Refuses parameters that are not floating or complex (momentum cannot update them)."""
    for path, var in nnx.to_flat_state(nnx.state(model, wrt, graph=graph)):
        dtype = getattr(var.get_value(), "dtype", None)
        if dtype is not None and not jnp.issubdtype(dtype, jnp.inexact):
            raise ValueError(
                f"the parameter at {tree.path_str(path)!r} has dtype {dtype}; momentum updates "
                "floating or complex parameters only. Narrow wrt (e.g. wrt=nnx.Param) or "
                "keep integer/bool state in another Variable type."
            )
