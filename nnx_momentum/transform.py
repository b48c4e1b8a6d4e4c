r"""The functional core: heavy-ball momentum as one optax ``GradientTransformation``.

Everything else in the package -- the braintools-style optimizers, the
``nnx.Optimizer`` subclass, the checkpointer -- is a thin face on
:func:`momentum`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nnx_momentum import _validation

__all__ = ["momentum", "learning_rate_of", "with_learning_rate"]

LEARNING_RATE = "learning_rate"
"""The key of the learning rate in ``state.hyperparams`` of a :func:`momentum` state."""

ScalarOrSchedule = float | jax.Array | Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]


def _momentum_chain(
    learning_rate: jax.typing.ArrayLike,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    grad_clip_norm: float | None,
    grad_clip_value: float | None,
    accumulator_dtype: Any,
) -> optax.GradientTransformation:
    """The update of SPEC section 2 built from optax primitives, in order."""
    steps: list[optax.GradientTransformation] = []
    if grad_clip_norm is not None:
        steps.append(optax.clip_by_global_norm(grad_clip_norm))
    if grad_clip_value is not None:
        steps.append(optax.clip(grad_clip_value))
    if weight_decay:
        steps.append(optax.add_decayed_weights(weight_decay))
    steps.append(
        optax.trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
    )
    steps.append(_scale_by_negative_lr(learning_rate))
    return optax.chain(*steps)


def _scale_by_negative_lr(learning_rate: jax.typing.ArrayLike) -> optax.GradientTransformation:
    """``u -> -lr * u`` with ``lr`` cast to each update's dtype.

    That is exactly what ``optax.scale(-lr)`` does with a Python float ``lr``
    (a weakly typed scalar), so bf16 parameters get bf16 arithmetic here too,
    while ``lr`` itself stays a float32 runtime value in the state.
    """

    def scale(updates: optax.Updates, params: optax.Params | None = None) -> optax.Updates:
        del params
        return jax.tree.map(lambda u: u * jnp.asarray(-learning_rate, u.dtype), updates)

    return optax.stateless(scale)


_STATIC = (
    "momentum",
    "nesterov",
    "weight_decay",
    "grad_clip_norm",
    "grad_clip_value",
    "accumulator_dtype",
)


def momentum(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    *,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
    grad_clip_value: float | None = None,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Heavy-ball momentum with coupled weight decay and gradient clipping.

    For gradients :math:`g`, parameters :math:`p` and velocity :math:`v`
    (zero before the first step), each update applies, in this order:

    .. math::

       g &\leftarrow g \cdot \min(1, c_{norm} / \lVert g \rVert_2)
            \quad\text{(global norm over all leaves, if grad_clip_norm)} \\
       g &\leftarrow \mathrm{clip}(g, -c_{val}, c_{val}) \quad\text{(if grad_clip_value)} \\
       g &\leftarrow g + \lambda p \quad\text{(coupled L2, not clipped)} \\
       v &\leftarrow \mu v + g \\
       u &\leftarrow g + \mu v \text{ if nesterov else } v \\
       p &\leftarrow p - \eta\, u

    which equals ``torch.optim.SGD(lr, momentum, dampening=0, nesterov,
    weight_decay)`` after clipping. The learning rate :math:`\eta` sits outside
    the velocity and is a runtime value in the state
    (``state.hyperparams['learning_rate']``, via ``optax.inject_hyperparams``),
    never a compiled-in constant: change it between steps without retracing.

    Args:
      learning_rate: a float, or a schedule ``count -> lr`` (an optax schedule
        or one of this package's schedulers, evaluated at the update count).
      momentum: :math:`\mu \in [0, 1)`.
      nesterov: use the Nesterov update (needs ``momentum > 0``).
      weight_decay: :math:`\lambda \ge 0`, coupled L2 added to the gradient.
      grad_clip_norm: clip the global gradient norm to this (``> 0``), or None.
      grad_clip_value: clip each gradient element to ``[-c, c]`` (``c > 0``), or None.
      accumulator_dtype: dtype of the velocity (e.g. ``jnp.bfloat16``); None
        keeps each parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is an
      ``optax.InjectStatefulHyperparamsState`` whose ``hyperparams`` hold the
      learning rate (float32) and whose ``inner_state`` holds the velocity.

    Raises:
      ValueError: naming the argument, for a negative or NaN LR, momentum outside
        ``[0, 1)`` (or 0 with nesterov), a negative weight decay, or a
        non-positive clip threshold.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import nnx_momentum as nm
      >>> tx = nm.momentum(0.1, momentum=0.9)
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.array([1.0, 1.0])}
      >>> updates, state = tx.update(grads, state, params)
      >>> updates, state = tx.update(grads, state, params)  # v = 0.9 * 1 + 1
      >>> updates["w"]
      Array([-0.19, -0.19], dtype=float32)
      >>> float(state.hyperparams["learning_rate"])
      0.1...
    """
    if not callable(learning_rate):
        _validation.non_negative("learning_rate", learning_rate)
    mu = _validation.momentum_args(momentum, nesterov)
    wd = _validation.non_negative("weight_decay", weight_decay)
    clip_norm = _validation.optional_positive("grad_clip_norm", grad_clip_norm)
    clip_value = _validation.optional_positive("grad_clip_value", grad_clip_value)
    if accumulator_dtype is not None:
        _validation.float_dtype("accumulator_dtype", accumulator_dtype)
    inject = optax.inject_hyperparams(
        _momentum_chain, static_args=_STATIC, hyperparam_dtype=jnp.float32
    )
    return inject(
        learning_rate=learning_rate,
        momentum=mu,
        nesterov=bool(nesterov),
        weight_decay=wd,
        grad_clip_norm=clip_norm,
        grad_clip_value=clip_value,
        accumulator_dtype=accumulator_dtype,
    )


def learning_rate_of(state: optax.InjectStatefulHyperparamsState) -> jax.Array:
    """The learning rate held in a :func:`momentum` state (the last one applied).

    Example:
      >>> import jax.numpy as jnp, nnx_momentum as nm
      >>> state = nm.momentum(0.5).init({"w": jnp.zeros(2)})
      >>> float(nm.learning_rate_of(state))
      0.5
    """
    return state.hyperparams[LEARNING_RATE]


def with_learning_rate(
    state: optax.InjectStatefulHyperparamsState, learning_rate: jax.typing.ArrayLike
) -> optax.InjectStatefulHyperparamsState:
    """A copy of a :func:`momentum` state whose next update applies ``learning_rate``.

    Pure and traceable: this is how the optimizers feed a scheduler's current
    LR to the core without recompiling.

    Example:
      >>> import jax.numpy as jnp, nnx_momentum as nm
      >>> tx = nm.momentum(0.1)
      >>> state = nm.with_learning_rate(tx.init({"w": jnp.zeros(2)}), 0.01)
      >>> updates, _ = tx.update({"w": jnp.ones(2)}, state)
      >>> updates["w"]
      Array([-0.01, -0.01], dtype=float32)
    """
    hyperparams = dict(state.hyperparams)
    hyperparams[LEARNING_RATE] = jnp.asarray(learning_rate, jnp.float32)
    return state._replace(hyperparams=hyperparams)
