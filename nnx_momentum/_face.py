"""What both optimizer faces share: LR handling, hyperparameters, state_dict.

The braintools-style classes (``optimizers.py``) and the ``nnx.Optimizer``
subclass (``nnx_optimizer.py``) hold the same optimizer state under the same
canonical names -- ``step`` (uint32 update counter), ``opt_state`` (the optax
state of :func:`nnx_momentum.momentum`) and ``lr`` (the scheduler's state) --
so state saved from one face loads into the other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nnx_momentum import _validation
from nnx_momentum.schedulers import LRScheduler, as_scheduler
from nnx_momentum.transform import momentum as momentum_transform

__all__ = ["MomentumFace", "check_state_dict", "flatten_tree", "load_into", "match_grads"]


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else jnp.dtype(dtype).name


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    """``{path: leaf}`` with every key as a string (orbax turns int keys into strings)."""
    flat = nnx.traversals.flatten_mapping(tree)
    return {tuple(str(k) for k in path): leaf for path, leaf in flat.items()}


def path_str(path: tuple) -> str:
    """``('l1', 'kernel') -> 'l1/kernel'``, for error messages."""
    return "/".join(str(k) for k in path) or "<root>"


def flatten_tree(tree: Any) -> dict[tuple[Any, ...], Any]:
    """Flattens a State, a nested dict or a list/tuple into ``{path: leaf}``."""
    if isinstance(tree, nnx.State):
        return dict(nnx.to_flat_state(tree))
    if isinstance(tree, Mapping):
        items: Any = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {(): tree}
    flat: dict[tuple[Any, ...], Any] = {}
    for key, value in items:
        for sub, leaf in flatten_tree(value).items():
            flat[(key, *sub)] = leaf
    return flat


def match_grads(weights: nnx.State, grads: Any) -> nnx.State:
    """``grads`` (a State, pure dict or list) matched by path to ``weights``, validated.

    Returns a State with ``weights``' structure whose leaves are the gradients,
    wrapped in each weight's Variable type. Shapes and dtypes are static, so under
    ``jit`` the check costs nothing at run time.

    Raises:
      ValueError: naming the paths that are missing or unknown, or the first
        path whose shape or dtype differs from its weight's.
    """
    by_str = {tuple(map(str, p)): leaf for p, leaf in flatten_tree(grads).items()}
    flat_weights = dict(nnx.to_flat_state(weights))
    wanted = {tuple(map(str, p)): p for p in flat_weights}
    missing = sorted(path_str(k) for k in set(wanted) - set(by_str))
    unknown = sorted(path_str(k) for k in set(by_str) - set(wanted))
    if missing or unknown:
        raise ValueError(
            f"gradients do not match the optimized weights: missing paths {missing}, "
            f"unknown paths {unknown}. Pass nnx.grad(loss_fn)(model) for the model (or "
            "sub-module) whose weights the optimizer holds."
        )
    leaves = []
    for key, path in wanted.items():
        var, grad = flat_weights[path], by_str[key]
        grad = grad.get_value() if isinstance(grad, nnx.Variable) else grad
        weight = var.get_value()
        if jnp.shape(grad) != weight.shape or jnp.result_type(grad) != weight.dtype:
            raise ValueError(
                f"gradient at {path_str(path)!r} has shape {jnp.shape(grad)} and dtype "
                f"{jnp.result_type(grad)}; the weight has shape {weight.shape} and dtype "
                f"{weight.dtype}."
            )
        leaves.append((path, type(var)(grad)))
    return nnx.from_flat_state(leaves)


def check_state_dict(expected: Any, given: Any, what: str = "state_dict") -> None:
    """Raises ``ValueError`` naming the first path whose key set, shape or dtype differs.

    Both arguments are pure nested dicts of arrays. Nothing is written here: the
    callers validate the whole tree first and only then load it.
    """
    flat_expected, flat_given = _flat(expected), _flat(given)
    missing = [path_str(k) for k in sorted(set(flat_expected) - set(flat_given))]
    unknown = [path_str(k) for k in sorted(set(flat_given) - set(flat_expected))]
    if missing or unknown:
        raise ValueError(
            f"{what} does not match this optimizer: missing paths {missing}, "
            f"unknown paths {unknown}. Was it saved with other "
            "hyperparameters (clipping, weight decay), another scheduler or another model?"
        )
    for key, ref in flat_expected.items():
        value = flat_given[key]
        ref_shape, shape = np.shape(ref), np.shape(value)
        if ref_shape != shape:
            raise ValueError(f"{what} at {path_str(key)}: expected shape {ref_shape}, got {shape}.")
        ref_dtype, dtype = jnp.result_type(ref), jnp.result_type(value)
        if ref_dtype != dtype:
            raise ValueError(f"{what} at {path_str(key)}: expected dtype {ref_dtype}, got {dtype}.")


def load_into(tree: nnx.State, state_dict: Any, what: str = "state_dict") -> None:
    """Validates ``state_dict`` against the live Variables of ``tree``, then writes it.

    Each value lands on the device(s) and sharding the live Variable has now, as
    a fresh copy.
    """
    check_state_dict(nnx.to_pure_dict(tree), state_dict, what)
    given = _flat(state_dict)
    for path, var in _flat(tree).items():
        sharding = getattr(var.get_value(), "sharding", None)
        # may_alias=False: the live state never shares buffers with the caller's
        # dict, which a donated compiled step would otherwise invalidate.
        var.set_value(jax.device_put(given[path], sharding, may_alias=False))


def public_signature(cls: type) -> type:
    """Gives ``cls`` the signature of its ``__init__`` (nnx's metaclass hides it)."""
    signature = inspect.signature(cls.__init__)
    cls.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return cls


def _describe_schedule(schedule: Callable[[Any], Any]) -> dict[str, Any]:
    """A stable description of an optax schedule (no memory address in it)."""
    name = getattr(schedule, "__qualname__", type(schedule).__qualname__)
    return {"name": "optax_schedule", "function": f"{schedule.__module__}.{name}"}


class MomentumFace:
    """Mixin: the LR, hyperparameter and state-dict API of both faces.

    A class using it sets ``self.tx``, ``self.lr`` (an ``LRScheduler``, or
    ``None`` when the LR is an optax schedule of the step), ``self._schedule``
    and ``self._hyperparams`` through :meth:`_configure`, and implements
    :meth:`state_tree`.
    """

    def _configure(
        self,
        lr: float | LRScheduler | Callable[[Any], Any],
        momentum: float,
        *,
        nesterov: bool,
        weight_decay: float,
        grad_clip_norm: float | None,
        grad_clip_value: float | None,
        accumulator_dtype: Any,
    ) -> tuple[Any, LRScheduler | None]:
        """Validates every argument, then returns ``(tx, scheduler_or_None)``."""
        if callable(lr) and not isinstance(lr, LRScheduler):
            scheduler, initial = None, lr
        else:
            scheduler = as_scheduler(lr)
            initial = float(scheduler.current_lr[...])
        tx = momentum_transform(
            initial,
            momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,
            grad_clip_value=grad_clip_value,
            accumulator_dtype=accumulator_dtype,
        )
        self._schedule = None if scheduler is not None else lr
        self._hyperparams = {
            "optimizer": type(self).__name__,
            "lr": scheduler.describe() if scheduler is not None else _describe_schedule(lr),
            "momentum": float(momentum),
            "nesterov": bool(nesterov),
            "weight_decay": float(weight_decay),
            "grad_clip_norm": None if grad_clip_norm is None else float(grad_clip_norm),
            "grad_clip_value": None if grad_clip_value is None else float(grad_clip_value),
            "accumulator_dtype": _dtype_name(accumulator_dtype),
        }
        return tx, scheduler

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

    # -- state -----------------------------------------------------------------
    def state_tree(self) -> nnx.State:
        """The optimizer state as an ``nnx.State`` of live Variables, canonical keys."""
        raise NotImplementedError

    @property
    def hyperparams(self) -> dict[str, Any]:
        """JSON-serialisable hyperparameters and scheduler description."""
        return dict(self._hyperparams)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as a pure dict: ``{'step', 'opt_state', 'lr'}``.

        Velocity, update count and the scheduler's state; never the model's weights.
        The arrays are copies: later (donated) steps cannot invalidate them.
        """
        return jax.tree.map(jnp.copy, nnx.to_pure_dict(self.state_tree()))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a :meth:`state_dict` (from either face); validates everything first.

        Raises:
          ValueError: naming the first path whose presence, shape or dtype differs;
            the optimizer is then left untouched.
        """
        load_into(self.state_tree(), state_dict)

    # -- learning rate --------------------------------------------------------
    def _lr_to_apply(self) -> jax.Array | None:
        """The LR for the next update, or None when the optax schedule supplies it."""
        return None if self.lr is None else self.lr.current_lr[...]

    @property
    def current_lr(self) -> float:
        """The LR the next step applies, as a Python float (eager only).

        Setting it overwrites the scheduler's current LR until its next ``step()``.
        """
        if self.lr is None:
            count = self.state_tree()["opt_state"]["count"][...]
            return float(self._schedule(count))
        return float(self.lr.current_lr[...])

    @current_lr.setter
    def current_lr(self, value: float) -> None:
        if self.lr is None:
            raise TypeError(
                "current_lr cannot be set: lr is an optax schedule of the step. Pass a "
                "float or an nnx_momentum scheduler as lr to control it at run time."
            )
        self.lr.current_lr[...] = jnp.asarray(
            _validation.non_negative("current_lr", value), jnp.float32
        )

    @property
    def base_lr(self) -> float:
        """The initial LR of the scheduler (or of the optax schedule at step 0)."""
        if self.lr is None:
            return float(self._schedule(0))
        return float(self.lr.base_lr)

    def get_last_lr(self) -> list[float]:
        """``[current_lr]``, as braintools returns it."""
        return [self.current_lr]

    @property
    def momentum(self) -> float:
        """The momentum factor :math:`\\mu`."""
        return self._hyperparams["momentum"]

    @property
    def nesterov(self) -> bool:
        """Whether the Nesterov update is used."""
        return self._hyperparams["nesterov"]

    @property
    def weight_decay(self) -> float:
        """The coupled L2 coefficient :math:`\\lambda`."""
        return self._hyperparams["weight_decay"]

    @property
    def grad_clip_norm(self) -> float | None:
        """The global-norm clipping threshold, or None."""
        return self._hyperparams["grad_clip_norm"]

    @property
    def grad_clip_value(self) -> float | None:
        """The per-element clipping threshold, or None."""
        return self._hyperparams["grad_clip_value"]

    @property
    def step_count(self) -> int:
        """How many updates were applied (eager only)."""
        return int(self.state_tree()["step"][...])
