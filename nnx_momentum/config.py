r"""``MomentumConfig``: the hyperparameters of the momentum update, written once.

The transform (:func:`nnx_momentum.momentum`), both optimizer faces and the
checkpointer's hyperparameter check all hold one frozen :class:`MomentumConfig`.
Adding a hyperparameter is one field in :class:`_Fields` (with its default, the
value that checkpoints written before it existed are read with), its check in
:meth:`MomentumConfig.__post_init__` and its math in
:func:`nnx_momentum.transform.from_config`. Everything else follows from the
fields: ``to_json``/``from_json``, the faces' attributes (:class:`ConfigAttributes`),
``hyperparams`` and the checkpointer's comparison, and ``config=`` on every face.
Offering it as a keyword of a face as well is one parameter in that face's
signature, passed to :func:`resolve`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
from jax.typing import DTypeLike

from nnx_momentum import _validation

__all__ = ["ConfigAttributes", "MomentumConfig", "resolve"]


# Only fields: MomentumConfig generates __init__, __eq__ and __repr__ over them and adds
# the checks; type checkers see these on the optimizers too (ConfigAttributes).
@dataclasses.dataclass(frozen=True, init=False, repr=False, eq=False)
class _Fields:
    """The hyperparameters as plain fields; :class:`MomentumConfig` adds their checks."""

    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    grad_clip_norm: float | None = None
    grad_clip_value: float | None = None
    accumulator_dtype: DTypeLike | None = None


@dataclasses.dataclass(frozen=True)
class MomentumConfig(_Fields):
    r"""The static hyperparameters of heavy-ball momentum, validated once.

    With gradients :math:`g`, parameters :math:`p` and velocity :math:`v`, one
    update is (see :func:`nnx_momentum.momentum` for the whole math)

    .. math::

       g \leftarrow \mathrm{clip}(g) + \lambda p, \quad
       v \leftarrow \mu v + g, \quad
       p \leftarrow p - \eta\,(g + \mu v \text{ if nesterov else } v).

    The learning rate :math:`\eta` is not part of the config: it is a runtime
    value (a scheduler's state), so it can change without recompiling. Every
    face takes a whole config as ``config=`` (``nm.MomentumOptimizer(model, lr,
    config=config)``, ``nm.Momentum(lr, config=config)``) instead of the
    hyperparameter keywords.

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
        """The config a :meth:`to_json` dict describes, validated.

        Unknown keys are ignored (checkpoints store these fields next to others:
        the optimizer's name, the scheduler). A missing field takes its default:
        a checkpoint written before that field existed was written with the
        behaviour its default gives.

        Args:
          data: a mapping holding some or all of the fields by name.

        Returns:
          The config.

        Raises:
          ValueError: naming the field, if a value is out of range.

        Example:
          >>> import nnx_momentum as nm
          >>> nm.MomentumConfig.from_json({"momentum": 0.5, "lr": 0.1})
          MomentumConfig(momentum=0.5, nesterov=False, weight_decay=0.0, ...)
        """
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    @property
    def velocity_dtype(self) -> Any:
        """``accumulator_dtype`` as a ``jnp.dtype`` (None: each parameter's dtype)."""
        return None if self.accumulator_dtype is None else jnp.dtype(self.accumulator_dtype)


def resolve(
    config: MomentumConfig | None,
    face: Callable[..., Any],
    name: str,
    /,
    **arguments: Any,
) -> MomentumConfig:
    """The config of one call to a face: ``config`` whole, or built from its keywords.

    ``arguments`` are the face's hyperparameter arguments by name. Those that are
    parameters of ``face`` are the caller's; with ``config`` they must keep their
    defaults (one source for each value, nothing silently overridden). Any other
    is a value the face fixes (``nesterov=True`` for ``MomentumNesterov``), which
    ``config`` must have too.

    Args:
      config: a whole config, or None to build one from ``arguments``.
      face: the callable whose parameters (and defaults) ``arguments`` come from.
      name: the face's name, for errors.
      **arguments: the hyperparameters as the face received or fixes them.

    Returns:
      ``config``, or ``MomentumConfig(**arguments)``.

    Raises:
      TypeError: ``config`` is not a :class:`MomentumConfig`, or comes with a
        hyperparameter argument set to other than its default.
      ValueError: ``config`` differs from a value the face fixes, or an argument
        is out of range.

    Example:
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.config import resolve
      >>> def face(momentum=0.9, config=None):
      ...     return resolve(config, face, "face", momentum=momentum)
      >>> face(momentum=0.5).momentum, face(config=nm.MomentumConfig(momentum=0.1)).momentum
      (0.5, 0.1)
      >>> face(momentum=0.5, config=nm.MomentumConfig())
      Traceback (most recent call last):
      ...
      TypeError: face: pass the hyperparameters either as config or as arguments, ...
    """
    if config is None:
        return MomentumConfig(**arguments)
    if not isinstance(config, MomentumConfig):
        raise TypeError(
            f"{name}: config must be an nm.MomentumConfig, got {type(config).__name__}."
        )
    parameters = inspect.signature(face).parameters
    given = sorted(
        k for k, v in arguments.items() if k in parameters and not _same(v, parameters[k].default)
    )
    if given:
        raise TypeError(
            f"{name}: pass the hyperparameters either as config or as arguments, not both; "
            f"got config and {given}. Use dataclasses.replace(config, ...) to change a field."
        )
    fixed = {k: v for k, v in arguments.items() if k not in parameters}
    wrong = {k: v for k, v in fixed.items() if getattr(config, k) != v}
    if wrong:
        raise ValueError(
            f"{name}: config has {', '.join(f'{k}={getattr(config, k)!r}' for k in wrong)}, "
            f"but {name} fixes {', '.join(f'{k}={v!r}' for k, v in wrong.items())}."
        )
    return config


def _same(value: Any, default: Any) -> bool:
    """Whether an argument is its parameter's default (arrays and dtypes compared safely)."""
    try:
        return value is default or bool(value == default)
    except (TypeError, ValueError):
        return False


def _config_property(name: str) -> property:
    """A read-only property giving ``self.config.<name>``."""

    def get(self: Any) -> Any:
        return getattr(self.config, name)

    get.__name__ = name
    get.__doc__ = f"``config.{name}`` (see :class:`~nnx_momentum.MomentumConfig`)."
    return property(get)


if TYPE_CHECKING:
    # Type checkers see the fields with their types; at run time they are properties.

    class ConfigAttributes(_Fields):
        config: MomentumConfig

else:

    class ConfigAttributes:
        """``optimizer.momentum``, ``.nesterov``, ... read from ``optimizer.config``.

        Both optimizer faces expose the config's fields as read-only attributes,
        as braintools' optimizers do: one property per field of
        :class:`MomentumConfig`, generated from the fields.

        Example:
          >>> import nnx_momentum as nm
          >>> nm.SGD(lr=0.1, momentum=0.5).momentum
          0.5
        """

        config: MomentumConfig

    for _field in dataclasses.fields(MomentumConfig):
        setattr(ConfigAttributes, _field.name, _config_property(_field.name))
    del _field
