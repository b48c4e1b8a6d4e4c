"""``make_train_step``: the fast compiled training step for both optimizer faces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
from flax import nnx

from nnx_momentum import tree
from nnx_momentum.schedulers import SchedulerState

__all__ = ["TrainStep", "make_train_step"]


class TrainStep(Protocol):
    """What :func:`make_train_step` returns: ``step(*batch)`` and ``step.lower(*batch)``."""

    def __call__(self, *batch: Any) -> Any:
        """One compiled update; returns the loss (or ``(loss, aux)``)."""
        ...

    def lower(self, *batch: Any) -> jax.stages.Lowered:
        """``jax.jit``'s ``lower`` for these batch arguments (HLO, memory analysis)."""
        ...


class _TrainStep:
    """A :class:`TrainStep`: the compiled pure step and the live Variables it reads."""

    def __init__(
        self,
        compiled: Any,
        written: list[nnx.Variable[Any]],
        constant: list[nnx.Variable[Any]],
    ) -> None:
        self._compiled = compiled
        self._written = written
        self._constant = constant

    def __call__(self, *batch: Any) -> Any:
        out, arrays = self._compiled(
            [var.get_raw_value() for var in self._written],
            [var.get_raw_value() for var in self._constant],
            *batch,
        )
        for var, array in zip(self._written, arrays, strict=True):
            # The same Variable objects get the new buffers, so the model and the
            # optimizer stay the source of truth.
            var.set_raw_value(array)
        return out

    def lower(self, *batch: Any) -> jax.stages.Lowered:
        """``jax.jit``'s ``lower`` for these batch arguments (HLO, memory analysis)."""
        lowered: jax.stages.Lowered = self._compiled.lower(
            [var.get_raw_value() for var in self._written],
            [var.get_raw_value() for var in self._constant],
            *batch,
        )
        return lowered


def make_train_step(
    loss_fn: Callable[..., Any],
    model: nnx.Module,
    optimizer: Any,
    *,
    has_aux: bool = False,
    donate: bool = True,
) -> TrainStep:
    r"""A compiled ``step(*batch) -> loss`` (or ``(loss, aux)``) for ``model``.

    Each call computes :math:`\nabla_p\, \mathrm{loss\_fn}(model, *batch)` and
    applies one optimizer update, in one XLA program. The graph of ``model``
    and ``optimizer`` is split once, here (``nnx.graphdef`` and the flat list of
    their live Variables); every call passes the Variables' raw arrays, as one
    flat list, to a ``jax.jit`` of a pure function that merges the graph inside
    the trace (donated when ``donate``, so the update happens in place), then
    writes the results back into the same Variables, as ``nnx.jit_partial``
    does. That avoids both the graph traversal and Variable copies of
    graph-mode ``nnx.jit`` and the per-Variable pytree flattening of
    ``nnx.jit_partial``, while the live objects stay the source of truth:
    reading the model, saving a checkpoint or switching to a plain ``nnx.jit``
    step sees the current values. Changing the *structure* of the model or
    optimizer afterwards (new attributes, new Variables) needs a new step.

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
      ``step(*batch)`` returning the loss (or ``(loss, aux)``); ``step.lower(*batch)``
      lowers it like ``jax.jit`` does (for ``.as_text()`` or
      ``.compile().memory_analysis()``).

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
    apply = _apply_fn(model, optimizer)
    graphdef = nnx.graphdef((model, optimizer))
    paths, live = zip(*nnx.to_flat_state(nnx.state((model, optimizer))), strict=True)
    _check_plain_variables(paths, live)
    # The scheduler's state is only read by a step (it changes through
    # ``scheduler.step()`` between steps), so it goes in as a second, non-donated
    # argument and does not come back: fewer buffers per call.
    read_only = [isinstance(var, SchedulerState) for var in live]
    written = [var for var, ro in zip(live, read_only) if not ro]
    constant = [var for var, ro in zip(live, read_only) if ro]

    def pure_step(
        written_arrays: list[jax.Array], constant_arrays: list[jax.Array], *batch: Any
    ) -> tuple[Any, list[jax.Array]]:
        w, c = iter(written_arrays), iter(constant_arrays)
        arrays = [next(c) if ro else next(w) for ro in read_only]
        state = nnx.from_flat_state(
            [(path, var.replace(array)) for path, var, array in zip(paths, live, arrays)]
        )
        model, optimizer = nnx.merge(graphdef, state)
        out, grads = grad_fn(model, *batch)
        apply(model, optimizer, grads)
        new = [var.get_raw_value() for _, var in nnx.to_flat_state(nnx.state((model, optimizer)))]
        if any(ro and n is not a for ro, n, a in zip(read_only, new, arrays)):
            raise RuntimeError("make_train_step: the scheduler state changed inside the step.")
        return out, [n for ro, n in zip(read_only, new) if not ro]

    return _TrainStep(jax.jit(pure_step, donate_argnums=0 if donate else ()), written, constant)


def _check_plain_variables(paths: tuple, live: tuple) -> None:
    for path, var in zip(paths, live):
        if var.get_metadata().get("hijax") or var.get_metadata().get("ref"):
            raise NotImplementedError(
                f"make_train_step: the Variable at {'/'.join(map(str, path))!r} is a hijax or "
                "ref Variable; use a plain nnx.jit train step for such models."
            )


def _check_registered_on(model: Any, optimizer: Any) -> None:
    """Refuses a braintools-style optimizer whose weights are not ``model``'s own Variables.

    Its gradients are matched by path, so weights registered from another model
    with the same paths would silently be trained with this model's gradients.
    """
    own = {id(var) for _, var in nnx.to_flat_state(nnx.state(model))}
    foreign = [
        tree.path_str(path)
        for path, var in tree.flatten(optimizer.param_states).items()
        if id(var) not in own
    ]
    if foreign:
        raise ValueError(
            f"make_train_step: the optimizer's weights {foreign[:5]} are not Variables of "
            "model (registered from another model?). Register nnx.state(model, nnx.Param) "
            "of the model you pass here."
        )


def _apply_fn(model: Any, optimizer: Any) -> Callable[[Any, Any, Any], None]:
    """How to apply grads for this kind of optimizer (checked once, not per call)."""
    if isinstance(optimizer, nnx.Optimizer):
        return lambda model, opt, grads: opt.update(model, grads)
    if callable(getattr(optimizer, "register_trainable_weights", None)):
        _check_registered_on(model, optimizer)
        return lambda model, opt, grads: opt.step(grads)
    raise TypeError(
        "make_train_step: optimizer must be an nnx.Optimizer (e.g. nm.MomentumOptimizer) "
        f"or a braintools-style optimizer (nm.Momentum, ...), got {type(optimizer).__name__}."
    )
