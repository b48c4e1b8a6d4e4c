r"""The functional core: heavy-ball momentum as one optax ``GradientTransformation``.

Everything else in the package -- the braintools-style optimizers, the
``nnx.Optimizer`` subclass, the checkpointer -- is a thin face on
:func:`momentum`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from nnx_momentum import _validation, groups
from nnx_momentum.config import MomentumConfig

__all__ = ["from_config", "grouped", "learning_rate_of", "momentum", "with_learning_rate"]

LEARNING_RATE = "learning_rate"
"""The key of the learning rate in ``state.hyperparams`` of a :func:`momentum` state."""

ScalarOrSchedule = float | jax.Array | Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]


def _clip_steps(config: MomentumConfig) -> list[optax.GradientTransformation]:
    """Steps 1-2 of the update: clip by global norm, then by value.

    Always two stateless steps, ``optax.identity()`` where a clip is off, so the
    state's layout never depends on the clip thresholds.
    """
    norm, value = config.grad_clip_norm, config.grad_clip_value
    return [
        optax.identity() if norm is None else optax.clip_by_global_norm(norm),
        optax.identity() if value is None else optax.clip(value),
    ]


def _momentum_steps(
    config: MomentumConfig, learning_rate: jax.typing.ArrayLike
) -> list[optax.GradientTransformation]:
    """Steps 3-6 of the update: weight decay, velocity, the LR.

    Always three steps, the velocity (``optax.trace``) the second: a zero
    weight decay is ``optax.identity()`` (``g + 0 * p`` skipped, as optax's
    ``adamw`` skips it), so the state's layout -- one path per leaf -- never
    depends on the hyperparameters' values.
    """
    # An array weight decay is a runtime hyperparameter (``optax.inject_hyperparams(
    # nm.momentum)``): concrete at init, traced in update, so it is always applied.
    decay = config.weight_decay
    return [
        optax.add_decayed_weights(decay)
        if isinstance(decay, jax.Array) or decay
        else optax.identity(),
        optax.trace(
            decay=config.momentum,
            nesterov=config.nesterov,
            accumulator_dtype=config.velocity_dtype,
        ),
        _scale_by_negative_lr(learning_rate),
    ]


def _momentum_chain(
    learning_rate: jax.typing.ArrayLike, config: MomentumConfig
) -> optax.GradientTransformation:
    """The update of :func:`momentum`'s docstring, built from optax primitives in order."""
    return optax.chain(*_clip_steps(config), *_momentum_steps(config, learning_rate))


def _group_chain(
    learning_rate: jax.typing.ArrayLike, config: MomentumConfig
) -> optax.GradientTransformation:
    """One parameter group's part of the update (clipping is global, before it)."""
    return optax.chain(*_momentum_steps(config, learning_rate))


def _inject(
    factory: Callable[..., optax.GradientTransformation],
    config: MomentumConfig,
    learning_rate: ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
    """``factory`` with the LR as a float32 runtime hyperparameter in the state."""
    if not callable(learning_rate):
        _validation.non_negative("learning_rate", learning_rate)
    inject = optax.inject_hyperparams(
        factory, static_args=("config",), hyperparam_dtype=jnp.float32
    )
    return inject(learning_rate=learning_rate, config=config)


def _scale_by_negative_lr(learning_rate: jax.typing.ArrayLike) -> optax.GradientTransformation:
    """``u -> -lr * u`` with ``lr`` cast to each update's dtype.

    That is exactly what ``optax.scale(-lr)`` does with a Python float ``lr``
    (a weakly typed scalar), so bf16 parameters get bf16 arithmetic here too,
    while ``lr`` itself stays a float32 runtime value in the state.
    """

    def scale(updates: optax.Updates, params: optax.Params | None = None) -> optax.Updates:
        del params
        return jax.tree.map(lambda u: u * -jnp.asarray(learning_rate, u.dtype), updates)

    return optax.stateless(scale)


def momentum(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    *,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
    grad_clip_value: float | None = None,
    accumulator_dtype: jax.typing.DTypeLike | None = None,
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
    config = MomentumConfig(
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        grad_clip_norm=grad_clip_norm,
        grad_clip_value=grad_clip_value,
        accumulator_dtype=accumulator_dtype,
    )
    return from_config(config, learning_rate)


def from_config(
    config: MomentumConfig, learning_rate: ScalarOrSchedule
) -> optax.GradientTransformationExtraArgs:
    """:func:`momentum` for a :class:`~nnx_momentum.MomentumConfig`: what every face applies.

    Args:
      config: the static hyperparameters.
      learning_rate: a float (validated) or a schedule ``count -> lr``.

    Returns:
      The same transformation :func:`momentum` returns for these hyperparameters.

    Raises:
      ValueError: for a negative or NaN ``learning_rate``.

    Example:
      >>> import jax.numpy as jnp, nnx_momentum as nm
      >>> from nnx_momentum.transform import from_config
      >>> tx = from_config(nm.MomentumConfig(momentum=0.5), 0.1)
      >>> updates, _ = tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.zeros(1)}))
      >>> updates["w"]
      Array([-0.1], dtype=float32)
    """
    return _inject(_momentum_chain, config, learning_rate)


def grouped(
    configs: Sequence[MomentumConfig],
    learning_rates: Sequence[ScalarOrSchedule],
    labels: dict[tuple[str, ...], str],
) -> optax.GradientTransformation:
    """The update with parameter groups (see :mod:`nnx_momentum.groups`).

    Args:
      configs: one config per group; clipping is read from ``configs[0]`` and
        applied globally, before the groups.
      learning_rates: one initial LR (or optax schedule) per group.
      labels: ``{parameter path: group label '0', '1', ...}``.

    Returns:
      ``optax.chain(clips, optax.partition({'k': group k's momentum}, labels))``.

    Example:
      >>> import jax.numpy as jnp, nnx_momentum as nm
      >>> from nnx_momentum.transform import grouped
      >>> configs = [nm.MomentumConfig(momentum=0.0)] * 2
      >>> tx = grouped(configs, [0.1, 0.01], {("a",): "0", ("b",): "1"})
      >>> params = {"a": jnp.ones(1), "b": jnp.ones(1)}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> updates["a"], updates["b"]
      (Array([-0.1], dtype=float32), Array([-0.01], dtype=float32))
    """
    transforms = {
        str(k): _inject(_group_chain, config, lr)
        for k, (config, lr) in enumerate(zip(configs, learning_rates, strict=True))
    }
    return optax.chain(
        *_clip_steps(configs[0]), optax.partition(transforms, groups.label_fn(labels))
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
