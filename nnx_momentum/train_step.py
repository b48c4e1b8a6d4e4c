"""``make_train_step``: the fast compiled training step for both optimizer faces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

__all__ = ["make_train_step"]


def make_train_step(
    loss_fn: Callable[..., Any],
    model: nnx.Module,
    optimizer: Any,
    *,
    has_aux: bool = False,
    donate: bool = True,
) -> Callable[..., Any]:
    r"""A compiled ``step(*batch) -> loss`` (or ``(loss, aux)``) for ``model``.

    Each call computes :math:`\nabla_p\, \mathrm{loss\_fn}(model, *batch)` and
    applies one optimizer update, in one XLA program. It is built on
    ``nnx.jit_partial``: the graph of ``model`` and ``optimizer`` is flattened
    once, here, into a fixed list of Variables; every call passes their arrays
    straight to ``jax.jit`` (donated when ``donate``, so the update happens in
    place) and writes the results back into the same Variables. That avoids the
    per-call graph traversal and Variable copies of graph-mode ``nnx.jit``
    while the live objects stay the source of truth: reading the model, saving
    a checkpoint or switching to a plain ``nnx.jit`` step sees current values.

    The step compiles once per batch shape/dtype. Stepping a scheduler
    (``optimizer.lr.step()``) or setting ``optimizer.current_lr`` between calls
    only changes Variable values, so it never recompiles.

    Args:
      loss_fn: ``loss_fn(model, *batch) -> loss`` (or ``(loss, aux)`` with
        ``has_aux``), a scalar loss.
      model: the NNX module being trained.
      optimizer: a :class:`~nnx_momentum.MomentumOptimizer` (or any
        ``nnx.Optimizer``), or a braintools-style optimizer whose weights were
        registered from ``model`` itself (gradients are matched by path).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      donate: donate the state buffers to the step. With it, arrays read from
        the model *before* a step (e.g. ``w = model.kernel[...]``) are invalid
        after it; read them again from the model.

    Returns:
      ``step(*batch)`` returning the loss (or ``(loss, aux)``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
      >>> optimizer = nm.MomentumOptimizer(model, lr=0.1, momentum=0.9)
      >>> def loss_fn(model, x, y):
      ...     return jnp.mean((model(x) - y) ** 2)
      >>> step = nm.make_train_step(loss_fn, model, optimizer)
      >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 1))
      >>> losses = [float(step(x, y)) for _ in range(20)]
      >>> losses[-1] < losses[0]
      True
    """
    wrt = getattr(optimizer, "wrt", nnx.Param)
    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=has_aux)
    apply = _apply_fn(optimizer)

    def train_step(model: nnx.Module, optimizer: Any, *batch: Any) -> Any:
        out, grads = grad_fn(model, *batch)
        apply(model, optimizer, grads)
        return out

    return nnx.jit_partial(
        train_step,
        model,
        optimizer,
        graph=True,
        graph_updates=False,
        donate_argnums=0 if donate else None,
    )


def _apply_fn(optimizer: Any) -> Callable[[Any, Any, Any], None]:
    """How to apply grads for this kind of optimizer (checked once, not per call)."""
    if isinstance(optimizer, nnx.Optimizer):
        return lambda model, opt, grads: opt.update(model, grads)
    if callable(getattr(optimizer, "register_trainable_weights", None)):
        return lambda model, opt, grads: opt.step(grads)
    raise TypeError(
        "make_train_step: optimizer must be an nnx.Optimizer (e.g. nm.MomentumOptimizer) "
        f"or a braintools-style optimizer (nm.Momentum, ...), got {type(optimizer).__name__}."
    )
