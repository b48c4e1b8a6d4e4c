"""braintools-style optimizers: ``Momentum``, ``MomentumNesterov`` and ``SGD``.

Same argument names, order and defaults as ``braintools.optim``; the weights
are registered once and ``step(grads)`` updates them in place. Internally each
is a thin face over a :class:`~nnx_momentum.MomentumOptimizer` that treats the
registered weights as its model, so the update code, the state layout and the
checkpoints are exactly those of the ``nnx.Optimizer`` face.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
from flax import nnx

from nnx_momentum._face import MomentumFace, flatten_tree, path_str, public_signature
from nnx_momentum.nnx_optimizer import MomentumOptimizer
from nnx_momentum.schedulers import LRScheduler

__all__ = ["SGD", "Momentum", "MomentumNesterov"]

Path = tuple[Any, ...]


def _flat_weights(weights: Any) -> dict[Path, nnx.Variable]:
    """``{path: live Variable}`` from a module, a State, a dict or a list of Variables."""
    if isinstance(weights, nnx.Module):
        weights = nnx.state(weights, nnx.Param)
    elif isinstance(weights, nnx.Variable):
        raise TypeError(
            "register_trainable_weights got a single Variable; pass a module, "
            "nnx.state(model, nnx.Param), or a dict/list of Variables."
        )
    flat = flatten_tree(weights)
    for path, leaf in flat.items():
        if not isinstance(leaf, nnx.Variable):
            raise TypeError(
                f"register_trainable_weights: the leaf at {path_str(path)!r} is a "
                f"{type(leaf).__name__}, not an nnx.Variable, so it could not be updated in "
                "place. Pass nnx.state(model, nnx.Param) or the model itself."
            )
    return flat


def _check_registration(
    old: dict[Path, nnx.Variable], new: dict[Path, nnx.Variable], merged: dict[Path, nnx.Variable]
) -> None:
    """Refuses a path bound to two Variables, or a Variable under two paths."""
    clashes = sorted(path_str(p) for p, var in new.items() if p in old and old[p] is not var)
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
                f"{path_str(seen[id(var)])!r} and {path_str(path)!r}. Register the parent "
                "module alone, or its sub-modules alone."
            )
        seen[id(var)] = path


class _BraintoolsOptimizer(MomentumFace, nnx.Pytree):
    """braintools' ``register_trainable_weights`` / ``step`` API on :func:`momentum`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        public_signature(cls)

    def __init__(
        self,
        lr: float | LRScheduler | Callable[[Any], Any],
        momentum: float,
        weight_decay: float,
        grad_clip_norm: float | None,
        grad_clip_value: float | None,
        *,
        nesterov: bool,
    ):
        self._args = dict(
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,
            grad_clip_value=grad_clip_value,
        )
        self.tx, scheduler = self._configure(lr, accumulator_dtype=None, **self._args)
        self._pending_lr = nnx.data(scheduler)
        self.param_states = nnx.data(None)
        self.optimizer = nnx.data(None)

    # -- registration ------------------------------------------------------------
    def register_trainable_weights(self, weights: Any) -> _BraintoolsOptimizer:
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
        old = {} if self.param_states is None else dict(nnx.to_flat_state(self.param_states))
        merged = {**old, **new}
        _check_registration(old, new, merged)
        if set(merged) == set(old):
            return self
        if self.optimizer is not None and self.step_count > 0:
            added = sorted(path_str(p) for p in set(merged) - set(old))
            raise ValueError(
                f"register_trainable_weights: new weights {added} after {self.step_count} "
                "steps; register all weights before the first step."
            )
        states = nnx.from_flat_state(sorted(merged.items(), key=lambda kv: str(kv[0])))
        lr = self.lr if self.lr is not None else self._schedule
        optimizer = MomentumOptimizer(states, lr=lr, wrt=nnx.Variable, **self._args)
        # Everything is validated and built: only now change this object.
        self._pending_lr = None
        self.param_states = nnx.data(states)
        self.optimizer = nnx.data(optimizer)
        return self

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
        if self.optimizer is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() before register_trainable_weights(...): "
                "register nnx.state(model, nnx.Param) (or the model) first."
            )
        self.optimizer.update(self.param_states, grads)

    update = step

    # -- attributes ------------------------------------------------------------------
    @property
    def lr(self) -> LRScheduler | None:
        """The scheduler driving the LR (``None`` for an optax schedule)."""
        return self._pending_lr if self.optimizer is None else self.optimizer.lr

    @property
    def opt_state(self) -> Any:
        """The optax state (``None`` before registration)."""
        return None if self.optimizer is None else self.optimizer.opt_state

    def default_tx(self) -> optax.GradientTransformation:
        """The optax transformation this optimizer applies (:func:`nnx_momentum.momentum`)."""
        return self.tx

    def state_tree(self) -> nnx.State:
        """``{'step', 'opt_state', 'lr'}`` as live Variables, as ``MomentumOptimizer``'s."""
        if self.optimizer is None:
            raise RuntimeError(
                f"{type(self).__name__} has no state before register_trainable_weights(...)."
            )
        return self.optimizer.state_tree()


class Momentum(_BraintoolsOptimizer):
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

    def __init__(
        self,
        lr: float | LRScheduler = 0.001,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        grad_clip_norm: float | None = None,
        grad_clip_value: float | None = None,
    ):
        super().__init__(
            lr, momentum, weight_decay, grad_clip_norm, grad_clip_value, nesterov=False
        )


class MomentumNesterov(_BraintoolsOptimizer):
    r"""Nesterov momentum, braintools-style (``braintools.optim.MomentumNesterov``).

    .. math::

       v \leftarrow \mu v + g', \qquad p \leftarrow p - \eta\,(g' + \mu v),
       \qquad g' = \mathrm{clip}(g) + \lambda p

    Args:
      lr, momentum, weight_decay, grad_clip_norm, grad_clip_value: as in
        :class:`Momentum`; ``momentum`` must be > 0.

    Example:
      >>> import nnx_momentum as nm
      >>> nm.MomentumNesterov(lr=0.01, momentum=0.9).hyperparams["nesterov"]
      True
    """

    def __init__(
        self,
        lr: float | LRScheduler = 0.001,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        grad_clip_norm: float | None = None,
        grad_clip_value: float | None = None,
    ):
        super().__init__(lr, momentum, weight_decay, grad_clip_norm, grad_clip_value, nesterov=True)


class SGD(_BraintoolsOptimizer):
    r"""Stochastic gradient descent with optional momentum (``braintools.optim.SGD``).

    With ``momentum=0`` this is :math:`p \leftarrow p - \eta\,(g + \lambda p)`;
    otherwise it is :class:`Momentum` (or :class:`MomentumNesterov`).

    Args:
      lr, weight_decay, grad_clip_norm, grad_clip_value: as in :class:`Momentum`.
      momentum: :math:`\mu \in [0, 1)`, default 0.
      nesterov: Nesterov momentum (needs ``momentum > 0``).

    Example:
      >>> import nnx_momentum as nm
      >>> nm.SGD(lr=0.1).hyperparams["momentum"]
      0.0
    """

    def __init__(
        self,
        lr: float | LRScheduler = 0.001,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        grad_clip_norm: float | None = None,
        grad_clip_value: float | None = None,
    ):
        super().__init__(
            lr, momentum, weight_decay, grad_clip_norm, grad_clip_value, nesterov=nesterov
        )
