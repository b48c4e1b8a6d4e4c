"""``make_train_step``: the fast compiled training step for both optimizer faces."""

from __future__ import annotations

import collections
import dataclasses
import inspect
import operator
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import jax
import jax.extend.core
import numpy as np
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


_RAW = "_raw_value"  # where an nnx.Variable keeps its array (a slot, read by get_raw_value)
_SLOT: Any = vars(nnx.Variable).get(_RAW)  # that slot's descriptor: get/set in C
_drain: Callable[[Iterable[Any]], None] = collections.deque(maxlen=0).extend  # in C
_Tracer = jax.core.Tracer


def _raw_slot_works(variables: Iterable[nnx.Variable[Any]]) -> bool:
    """Whether this flax keeps each Variable's array in the ``_raw_value`` slot.

    Then a call reads and writes the slot directly, in C (``attrgetter``, the
    slot descriptor's ``__set__``): ``set_raw_value`` re-checks the trace
    context on every Variable (~1.5 us each), which would be most of a tiny
    model's step. The check is done once per call instead (the results are not
    tracers). Checked on flax 0.12.8 and 0.12.12; any other layout falls back to
    the public ``get_raw_value``/``set_raw_value`` (tests/test_train_step.py
    runs both paths).
    """
    if not inspect.ismemberdescriptor(_SLOT):
        return False
    return all(
        _SLOT.__get__(var) is var.get_raw_value() and getattr(type(var), _RAW, None) is _SLOT
        for var in variables
    )


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What the trace of a step found about the kept (non-donated) Variables.

    Attributes:
      computed: kept Variables (indices) whose new value the program returns.
      forwarded: ``(i, j)`` pairs: kept Variable ``i``'s new value *is* kept input
        ``j`` (the optimizer's runtime LR is set from the scheduler's current LR),
        so ``i`` gets ``j``'s array after the call, as an eager ``update`` leaves
        it, and the program copies nothing. The other kept Variables are unchanged.
    """

    computed: tuple[int, ...]
    forwarded: tuple[tuple[int, int], ...]


def _live_inputs(jaxpr: jax.extend.core.Jaxpr) -> list[bool]:
    """Which inputs of ``jaxpr`` its outputs (or an effect) depend on.

    One backward pass over the equations: an equation is live if one of its
    outputs is, or if it has an effect (a callback, a print); all inputs of a
    live equation are live. Conservative -- a live equation that ignores one of
    its operands still marks it -- so an input found dead is certainly unread.
    """
    live = {v for v in jaxpr.outvars if isinstance(v, jax.extend.core.Var)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            live.update(v for v in eqn.invars if isinstance(v, jax.extend.core.Var))
    return [v in live for v in jaxpr.invars]


class _TrainStep:
    """A :class:`TrainStep`: the compiled pure step and the live Variables it reads.

    Per call: the donated Variables' arrays and those of the kept Variables the
    step reads, as two lists, one ``jax.jit`` dispatch, and the new arrays
    written back into the same Variables -- no pytree flattening, no
    per-Variable Python calls. Kept Variables the step leaves unchanged (the
    scheduler's state) or sets to another kept input (the runtime LR) cost the
    program no output; those it neither reads nor changes (the scheduler's
    epoch, say) are not passed at all.

    Which kept Variables a step reads is found from its jaxpr (one trace per
    batch signature, as ``jax.jit`` traces anyway: the jaxpr is then inlined
    into the compiled function). A retrace for new batch shapes that reads a
    Variable the first trace did not is refused, never run on a stale value.
    """

    def __init__(
        self,
        pure_step: Callable[..., Any],
        donated: list[nnx.Variable[Any]],
        kept: list[nnx.Variable[Any]],
        donate: bool,
    ) -> None:
        self._pure_step = pure_step
        self._donate = donate
        self._donated = tuple(donated)
        self._kept = tuple(kept)
        self._fast = _raw_slot_works(self._donated + self._kept)
        self._get: Callable[[Any], Any] = (
            operator.attrgetter(_RAW) if self._fast else nnx.Variable.get_raw_value
        )
        self._set: Callable[[Any, Any], Any] = (
            _SLOT.__set__ if self._fast else nnx.Variable.set_raw_value
        )
        self._layout: _Layout | None = None
        # Set by the first call (``_prepare``): the compiled function, which kept
        # Variables it reads, and what each call writes back.
        self._jit: Any = None
        self._pending: Any = None  # the first trace's jaxpr, until jax.jit inlines it
        self._read: tuple[int, ...] = ()
        self._read_vars: tuple[nnx.Variable[Any], ...] = ()
        self._stand_ins: tuple[Any, ...] = ()
        self._written: tuple[nnx.Variable[Any], ...] = ()
        self._forward: tuple[tuple[nnx.Variable[Any], int], ...] = ()

    def record(self, layout: _Layout) -> None:
        """Called at trace time: fixes the layout, or checks that a retrace has the same."""
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise RuntimeError(
                "make_train_step: a retrace (new batch shapes?) changed which state the step "
                f"writes ({self._layout} before, {layout} now); build a new step for it."
            )

    def _trace(self, donated: Any, kept: Any, batch: tuple[Any, ...]) -> tuple[Any, list[bool]]:
        """The step's jaxpr for these inputs, and which kept inputs a call must pass."""
        closed, shape = jax.make_jaxpr(self._pure_step, return_shape=True)(donated, kept, *batch)
        live = _live_inputs(closed.jaxpr)
        # Each kept Variable is one or more leaves of the flat inputs, after the donated.
        offset = len(jax.tree.leaves(donated))
        reads = []
        for value in kept:
            n = len(jax.tree.leaves(value))
            reads.append(any(live[offset : offset + n]))
            offset += n
        assert self._layout is not None  # recorded by the trace
        for _, j in self._layout.forwarded:  # a call reads it, to forward it
            reads[j] = True
        return (closed, jax.tree.structure(shape)), reads

    def _prepare(self, batch: tuple[Any, ...]) -> None:
        """At the first call: one trace finds what the step reads and writes."""
        kept = list(map(self._get, self._kept))
        program, reads = self._trace(list(map(self._get, self._donated)), kept, batch)
        assert self._layout is not None
        self._read = tuple(i for i, r in enumerate(reads) if r)
        self._read_vars = tuple(self._kept[i] for i in self._read)
        # An unread kept input gets a stand-in of its type; the program never sees it.
        self._stand_ins = tuple(kept)
        self._written = self._donated + tuple(self._kept[i] for i in self._layout.computed)
        position = {i: p for p, i in enumerate(self._read)}
        self._forward = tuple((self._kept[i], position[j]) for i, j in self._layout.forwarded)
        self._pending = program
        self._jit = jax.jit(self._compiled, donate_argnums=0 if self._donate else ())

    def _compiled(self, donated: list[Any], read: list[Any], *batch: Any) -> Any:
        """What ``jax.jit`` traces: the step's jaxpr, inlined, on the arrays passed."""
        kept = list(self._stand_ins)
        for i, value in zip(self._read, read, strict=True):
            kept[i] = value
        if self._pending is not None:  # the first trace: _prepare's, for these inputs
            (closed, tree), self._pending = self._pending, None
        else:  # a retrace (new batch shapes): it may read no more than the first
            (closed, tree), reads = self._trace(donated, kept, batch)
            read_now = {i for i, r in enumerate(reads) if r}
            if not read_now <= set(self._read):
                raise RuntimeError(
                    "make_train_step: a retrace (new batch shapes?) reads state the first "
                    "trace did not; build a new step for these shapes."
                )
        flat = jax.tree.leaves((donated, kept, batch))
        return jax.tree.unflatten(tree, jax.extend.core.jaxpr_as_fun(closed)(*flat))

    def __call__(self, *batch: Any) -> Any:
        if self._jit is None:
            self._prepare(batch)
        get = self._get
        read = list(map(get, self._read_vars))
        try:
            out, arrays = self._jit(list(map(get, self._donated)), read, *batch)
        finally:
            self._pending = None  # consumed by this call's trace, or stale
        if arrays and isinstance(arrays[0], _Tracer):
            raise RuntimeError(
                "make_train_step: the step was called inside a jax transformation (jit, grad, "
                "vmap, ...); it runs eagerly and writes the live Variables. Inside a "
                "transformation, call optimizer.update in a plain nnx.jit step instead."
            )
        # The same Variable objects get the new buffers, so the model and the
        # optimizer stay the source of truth.
        set_ = self._set
        _drain(map(set_, self._written, arrays))
        for var, p in self._forward:
            set_(var, read[p])
        return out

    def lower(self, *batch: Any) -> jax.stages.Lowered:
        """``jax.jit``'s ``lower`` for these batch arguments (HLO, memory analysis)."""
        if self._jit is None:
            self._prepare(batch)
        get = self._get
        try:
            lowered: jax.stages.Lowered = self._jit.lower(
                list(map(get, self._donated)), list(map(get, self._read_vars)), *batch
            )
        finally:
            self._pending = None
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
    their live Variables); every call passes the Variables' raw arrays, as two
    flat lists, to a ``jax.jit`` of a pure function that merges the graph inside
    the trace (donated when ``donate``, so the update happens in place; scalars
    and the scheduler's state undonated, and of those only what the step reads:
    the first call finds that in the step's jaxpr), then
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
    # Donated: the arrays a step rewrites (parameters, velocity, model state). Kept
    # (passed, not donated): the scheduler's state, which a step only reads (it
    # changes through ``scheduler.step()`` between steps), and scalars (step
    # counters, the LR, PRNG keys), whose donation saves nothing. The trace finds
    # which kept Variables come back unchanged or set to another kept input (the
    # runtime LR, from the scheduler): those cost the program no output.
    is_kept = [isinstance(var, SchedulerState) or _is_scalar(var) for var in live]
    donated = [var for var, k in zip(live, is_kept) if not k]
    kept = [var for var, k in zip(live, is_kept) if k]
    step: _TrainStep

    def pure_step(
        donated_arrays: list[jax.Array], kept_arrays: list[jax.Array], *batch: Any
    ) -> tuple[Any, list[jax.Array]]:
        d, k = iter(donated_arrays), iter(kept_arrays)
        arrays = [next(k) if kk else next(d) for kk in is_kept]
        state = nnx.from_flat_state(
            [(path, var.replace(array)) for path, var, array in zip(paths, live, arrays)]
        )
        model, optimizer = nnx.merge(graphdef, state)
        out, grads = grad_fn(model, *batch)
        apply(model, optimizer, grads)
        new = [var.get_raw_value() for _, var in nnx.to_flat_state(nnx.state((model, optimizer)))]
        outputs = [n for kk, n in zip(is_kept, new) if not kk]
        inputs = {id(a): j for j, a in enumerate(kept_arrays)}
        computed, forwarded = [], []
        for i, n in enumerate(n for kk, n in zip(is_kept, new) if kk):
            j = inputs.get(id(n))
            if j is None:  # computed by the step: an output
                computed.append(i)
                outputs.append(n)
            elif j != i:  # set to another kept input: that input's array, no output
                forwarded.append((i, j))
        step.record(_Layout(tuple(computed), tuple(forwarded)))
        return out, outputs

    step = _TrainStep(pure_step, donated, kept, donate)
    return step


def _is_scalar(var: nnx.Variable[Any]) -> bool:
    return np.ndim(var.get_raw_value()) == 0


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
