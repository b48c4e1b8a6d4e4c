r"""``MomentumConfig``: the hyperparameters of the momentum update, written once.

The transform (:func:`nnx_momentum.momentum`), both optimizer faces and the
checkpointer's hyperparameter check all hold one frozen :class:`MomentumConfig`;
adding a hyperparameter means adding one field here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from jax.typing import DTypeLike

from nnx_momentum import _validation

__all__ = ["ConfigAttributes", "MomentumConfig"]


@dataclasses.dataclass(frozen=True)
class MomentumConfig:
    r"""The static hyperparameters of heavy-ball momentum, validated once.

    With gradients :math:`g`, parameters :math:`p` and velocity :math:`v`, one
    update is (see :func:`nnx_momentum.momentum` for the whole math)

    .. math::

       g \leftarrow \mathrm{clip}(g) + \lambda p, \quad
       v \leftarrow \mu v + g, \quad
       p \leftarrow p - \eta\,(g + \mu v \text{ if nesterov else } v).

    The learning rate :math:`\eta` is not part of the config: it is a runtime
    value (a scheduler's state), so it can change without recompiling.

    Attributes:
      momentum: :math:`\mu \in [0, 1)` (``> 0`` with ``nesterov``).
      nesterov: use the Nesterov update.
      weight_decay: :math:`\lambda \ge 0`, coupled L2 added to the gradient
        after clipping.
      grad_clip_norm: clip the global gradient norm to this (``> 0``), or None.
      grad_clip_value: clip each gradient element to ``[-c, c]`` (``c > 0``), or None.
      accumulator_dtype: the velocity's dtype as a canonical name
        (``'bfloat16'``), or None for each parameter's own dtype. Any dtype
        spelling is accepted (``jnp.bfloat16``, ``'bfloat16'``) and normalised.

    Raises:
      ValueError: naming the field and the value, for anything out of range or NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import nnx_momentum as nm
      >>> config = nm.MomentumConfig(momentum=0.9, accumulator_dtype=jnp.bfloat16)
      >>> config.accumulator_dtype
      'bfloat16'
      >>> nm.MomentumConfig.from_json(config.to_json()) == config
      True
    """

    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    grad_clip_norm: float | None = None
    grad_clip_value: float | None = None
    accumulator_dtype: DTypeLike | None = None

    def __post_init__(self) -> None:
        # Normalise every field (floats as Python floats, dtype as its name), so two
        # configs built from different spellings of the same values compare equal.
        nesterov = _validation.boolean("nesterov", self.nesterov)
        normalised = {
            "momentum": _validation.momentum_args(self.momentum, nesterov),
            "nesterov": nesterov,
            "weight_decay": _validation.non_negative("weight_decay", self.weight_decay),
            "grad_clip_norm": _validation.optional_positive("grad_clip_norm", self.grad_clip_norm),
            "grad_clip_value": _validation.optional_positive(
                "grad_clip_value", self.grad_clip_value
            ),
            "accumulator_dtype": None
            if self.accumulator_dtype is None
            else jnp.dtype(
                _validation.inexact_dtype("accumulator_dtype", self.accumulator_dtype)
            ).name,
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (what checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MomentumConfig:
        """The config a :meth:`to_json` dict describes; unknown keys are ignored.

        Checkpoints store these fields next to others (the optimizer's name, the
        scheduler), so only the config's own fields are read.

        Raises:
          ValueError: if a field is missing or out of range.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"MomentumConfig.from_json: missing fields {missing} in {data!r}.")
        return cls(**{name: data[name] for name in names})

    @property
    def velocity_dtype(self) -> Any:
        """``accumulator_dtype`` as a ``jnp.dtype`` (None: each parameter's dtype)."""
        return None if self.accumulator_dtype is None else jnp.dtype(self.accumulator_dtype)


class ConfigAttributes:
    """``optimizer.momentum``, ``.nesterov``, ... read from ``optimizer.config``.

    Both optimizer faces expose the config's fields as read-only attributes, as
    braintools' optimizers do; this is where they are written, once.
    """

    config: MomentumConfig

    @property
    def momentum(self) -> float:
        r"""The momentum factor :math:`\mu`."""
        return self.config.momentum

    @property
    def nesterov(self) -> bool:
        """Whether the Nesterov update is used."""
        return self.config.nesterov

    @property
    def weight_decay(self) -> float:
        r"""The coupled L2 coefficient :math:`\lambda`."""
        return self.config.weight_decay

    @property
    def grad_clip_norm(self) -> float | None:
        """The global-norm clipping threshold, or None."""
        return self.config.grad_clip_norm

    @property
    def grad_clip_value(self) -> float | None:
        """The per-element clipping threshold, or None."""
        return self.config.grad_clip_value

    @property
    def accumulator_dtype(self) -> DTypeLike | None:
        """The velocity's dtype name, or None for each parameter's dtype."""
        return self.config.accumulator_dtype
