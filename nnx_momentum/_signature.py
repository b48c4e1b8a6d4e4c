"""Real constructor signatures for NNX classes in ``help()``, ``inspect`` and IDEs.

``nnx.Pytree``'s metaclass defines ``__call__(cls, *args, **kwargs)``, which is
what ``inspect.signature(cls)`` reports for every NNX class; setting
``__signature__`` from ``__init__`` restores the one users should see.
"""

from __future__ import annotations

import inspect
from typing import TypeVar

T = TypeVar("T", bound=type)

__all__ = ["public_signature"]


def public_signature(cls: T) -> T:
    """Gives ``cls`` the signature of its ``__init__`` without ``self``; returns ``cls``.

    Example:
      >>> import inspect, nnx_momentum as nm
      >>> list(inspect.signature(nm.Momentum).parameters)[:2]
      ['lr', 'momentum']
    """
    # mypy: reading __init__ off a class object is exactly what is wanted here.
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    parameters = list(signature.parameters.values())[1:]
    cls.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return cls
