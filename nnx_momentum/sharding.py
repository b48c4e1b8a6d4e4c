r"""Sharded optimizer state (ZeRO stage 1): ``shard_state_over=AXIS``.

In data-parallel training the parameters are replicated over a mesh axis
(``'data'``), and so, by default, is the velocity: every device holds a full
copy. With ``nm.MomentumOptimizer(model, ..., shard_state_over="data")`` (or
``nm.Momentum(..., shard_state_over="data")``) each optimizer-state leaf that
mirrors a parameter -- the velocity, and the gradient accumulator of an
``optax.MultiSteps`` wrapper -- is split over that axis instead, so a device
holds :math:`1/N` of it (:math:`N` the axis size):

.. math::

   \text{state bytes per device} = \sum_{\text{leaves}} \frac{\text{bytes}(v)}{N}
   \quad \text{(for leaves with a dimension divisible by } N\text{)}

The update is the same arithmetic on the same numbers, each device working on
its slice: the gradient and the parameter are brought to the velocity's
sharding (a local slice of a replicated array, no communication), the update
:math:`v \leftarrow \mu v + g`, :math:`u = v` (or the Nesterov form) runs on
the slice, and the update :math:`u` is brought back to the parameter's own
sharding (an all-gather) before :math:`p \leftarrow p - \eta u`. Parameters
keep their sharding; only the state moves.

Which dimension: the first one whose sharding does not use the axis yet and
whose length is divisible by :math:`N` (see :func:`state_spec`); a dimension
already split over other axes is used when its per-shard length is divisible.
A parameter already sharded over the axis keeps that sharding for its state;
a leaf with no divisible dimension (a scalar, a length-3 bias on 8 devices)
stays as its parameter is. An explicit ``optimizer_sharding`` Variable metadata
(flax's own mechanism) is the starting point instead of the parameter's
sharding.

Where the mesh comes from: the parameter's ``NamedSharding``, else the ambient
mesh (``jax.set_mesh``). A parameter that is on no mesh (a plain single-device
array) is treated as replicated over the ambient mesh and lands there at the
first update. Shardings are resolved once, at construction, into a hashable
:class:`StateSharding` held by the transformation; the user's Variables are
never changed. It works eagerly, under ``jax.jit``/``nnx.jit`` (including an
optimizer built inside ``nnx.jit``, flax's sharded-init recipe), with
``make_train_step``, parameter groups and ``tx_wrapper``, and with both Auto and
Explicit mesh axes. Checkpoints hold full arrays, and restore onto whatever
sharding the live optimizer has, so a sharded run restores unsharded and the
other way round.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from nnx_momentum import tree

__all__ = ["Placement", "StateSharding", "place", "shard_state", "state_sharding", "state_spec"]

Path = tuple[str, ...]
Mesh = jax.sharding.Mesh | jax.sharding.AbstractMesh


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one parameter and the optimizer state that mirrors it live.

    Attributes:
      param: the parameter's own sharding (kept by every update).
      state: the sharding of its velocity (and other state of its shape).
      shape: the parameter's shape.
    """

    param: NamedSharding
    state: NamedSharding
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class StateSharding:
    """The resolved plan of ``shard_state_over``: one :class:`Placement` per parameter.

    Static, hashable data (NamedShardings, paths, shapes), built once by
    :func:`state_sharding`.

    Attributes:
      axis: the mesh axis the state is sharded over.
      placements: ``((path, Placement), ...)``, paths as tuples of strings.
    """

    axis: str
    placements: tuple[tuple[Path, Placement], ...]

    @functools.cached_property
    def by_path(self) -> dict[Path, Placement]:
        """``{path: Placement}``."""
        return dict(self.placements)

    @functools.cached_property
    def depth(self) -> int:
        """The longest parameter path (suffix matching looks no deeper)."""
        return max((len(p) for p, _ in self.placements), default=0)

    def state_placement(self, path: Path, shape: tuple[int, ...]) -> Placement | None:
        """The placement of an optimizer-state leaf: the parameter its path ends with.

        Optimizer states mirror the parameters under some prefix (``trace``,
        ``inner_states['0'].inner_state...``, ``acc_grads``); the longest
        parameter path that ends ``path`` and has the same shape wins.
        """
        by_path = self.by_path
        for n in range(min(self.depth, len(path)), 0, -1):
            found = by_path.get(path[len(path) - n :])
            if found is not None and found.shape == shape:
                return found
        return None


def state_spec(
    spec: PartitionSpec, shape: Sequence[int], axis: str, axis_sizes: Mapping[str, int]
) -> PartitionSpec:
    r"""The state's ``PartitionSpec`` for a parameter of ``shape`` sharded as ``spec``.

    Adds ``axis`` to the first dimension :math:`d` that does not use it yet with
    :math:`\text{shape}_d \bmod (N \cdot k_d) = 0`, where :math:`N` is the size
    of ``axis`` and :math:`k_d` the product of the axes already splitting
    :math:`d` (free dimensions are tried before split ones). A spec that
    already uses ``axis``, or a shape with no such dimension, is returned as is.

    Args:
      spec: the parameter's ``PartitionSpec`` (shorter than ``shape`` is fine).
      shape: the parameter's shape.
      axis: the mesh axis to shard over.
      axis_sizes: the mesh's ``{axis name: size}`` (``mesh.shape``).

    Returns:
      A ``PartitionSpec`` with one entry per dimension.

    Example:
      >>> from jax.sharding import PartitionSpec as P
      >>> from nnx_momentum.sharding import state_spec
      >>> tuple(state_spec(P(), (16, 10), "data", {"data": 8}))
      ('data', None)
      >>> tuple(state_spec(P(None, "model"), (10, 32), "data", {"data": 8, "model": 2}))
      (None, ('model', 'data'))
      >>> tuple(state_spec(P(), (3,), "data", {"data": 8}))  # 3 is not divisible by 8
      (None,)
    """
    entries: list[Any] = list(spec) + [None] * (len(shape) - len(spec))
    used = {name for entry in entries for name in _names(entry)}
    size = axis_sizes[axis]
    if axis in used:
        return PartitionSpec(*entries)
    for d, entry in enumerate(entries):
        if entry is None and shape[d] > 0 and shape[d] % size == 0:
            entries[d] = axis
            return PartitionSpec(*entries)
    for d, entry in enumerate(entries):
        names = _names(entry)
        if entry is None or entry is PartitionSpec.UNCONSTRAINED or not names:
            continue
        k = math.prod(axis_sizes[n] for n in names)
        if shape[d] % (k * size) == 0:
            entries[d] = (*names, axis)
            return PartitionSpec(*entries)
    return PartitionSpec(*entries)


def state_sharding(params: nnx.State, axis: str) -> StateSharding:
    """Resolves ``shard_state_over=axis`` for ``params`` (a State of the optimized Variables).

    Each parameter's sharding is read from its value (a ``NamedSharding``; under
    a trace with Auto axes, from its ``out_sharding`` metadata), its mesh from
    that sharding or the ambient mesh, and its state's sharding is
    :func:`state_spec` of it (or of its ``optimizer_sharding`` metadata).

    Args:
      params: ``nnx.state(model, wrt)``: live Variables, concrete or traced.
      axis: the mesh axis name.

    Returns:
      The :class:`StateSharding` plan.

    Raises:
      ValueError: naming ``shard_state_over``, when there is no mesh (the
        parameters are on no mesh and there is no ambient ``jax.set_mesh``),
        the mesh has no axis ``axis``, or mixes Auto and Explicit axes.
      TypeError: ``axis`` is not a string.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> from nnx_momentum.sharding import state_sharding
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> with jax.set_mesh(mesh):
      ...     plan = state_sharding(nnx.state(nnx.Linear(8, 4, rngs=nnx.Rngs(0))), "data")
      >>> [(path, tuple(p.param.spec), tuple(p.state.spec)) for path, p in plan.placements]
      [(('bias',), (None,), ('data',)), (('kernel',), (None, None), ('data', None))]
    """
    if not isinstance(axis, str):
        raise TypeError(
            f"shard_state_over must be a mesh axis name (a str), got {type(axis).__name__}."
        )
    placements = []
    for path, var in nnx.to_flat_state(params):
        key = tuple(map(str, path))
        value = var.get_value()
        shape = tuple(getattr(value, "shape", ()))
        mesh, spec, own = _sharding_of(var, value, axis, key)
        base = spec
        opt_sharding = var.get_metadata().get("optimizer_sharding")
        if opt_sharding:
            base = PartitionSpec(*opt_sharding)
        sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
        target = NamedSharding(mesh, state_spec(base, shape, axis, sizes))
        placements.append((key, Placement(own, target, shape)))
    return StateSharding(axis, tuple(placements))


def shard_state(
    tx: optax.GradientTransformation, params: nnx.State, axis: str
) -> optax.GradientTransformationExtraArgs:
    r"""``tx`` with its state sharded over ``axis`` and each update on the parameter's sharding.

    The state is ``tx``'s own (same tree, same paths: checkpoints and
    ``state_dict()`` do not change); only where its arrays live does. ``init``
    places every state leaf that mirrors a parameter on :attr:`Placement.state`;
    ``update`` places the gradients and parameters there, runs ``tx.update``,
    places the new state there and the updates on :attr:`Placement.param`:

    .. math::

       (u, s') = \mathrm{tx.update}(g|_{\text{state}}, s, p|_{\text{state}}), \qquad
       u \mapsto u|_{\text{param}}

    Args:
      tx: the transformation (e.g. :func:`nnx_momentum.momentum`).
      params: the optimized Variables (``nnx.state(model, wrt)``), for :func:`state_sharding`.
      axis: the mesh axis name.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: from :func:`state_sharding`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> from nnx_momentum.sharding import shard_state
      >>> with jax.set_mesh(jax.make_mesh((1,), ("data",))):
      ...     model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
      ...     tx = shard_state(nm.momentum(0.1), nnx.state(model, nnx.Param), "data")
      ...     state = tx.init(nnx.state(model, nnx.Param))
      >>> shapes = {v.shape: tuple(v.sharding.spec) for v in jax.tree.leaves(state) if v.ndim}
      >>> shapes  # the velocity of the bias and of the kernel
      {(4,): ('data',), (8, 4): ('data', None)}
    """
    plan = state_sharding(params, axis)
    inner = optax.with_extra_args_support(tx)

    def init_fn(params: Any) -> Any:
        return _place_state(inner.init(params), plan, variables=True)

    def update_fn(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        updates = _place_params(updates, plan, "state")
        if params is not None:
            params = _place_params(params, plan, "state")
        updates, state = inner.update(updates, state, params, **extra)
        return _place_params(updates, plan, "param"), _place_state(state, plan, variables=False)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def place(x: Any, sharding: NamedSharding) -> Any:
    """``x`` on ``sharding``: ``jax.device_put`` eagerly, a constraint under a trace.

    Under a trace, Explicit mesh axes use ``jax.sharding.reshard`` and Auto axes
    ``jax.lax.with_sharding_constraint`` (as flax does). Eagerly, a sharding
    over an abstract mesh is made concrete with the array's own mesh or the
    ambient one. Anything without a shape is returned as is.

    Args:
      x: an array (concrete or traced).
      sharding: the target ``NamedSharding``.

    Returns:
      ``x`` on ``sharding``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> from nnx_momentum.sharding import place
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> tuple(place(jnp.zeros(4), NamedSharding(mesh, P("data"))).sharding.spec)
      ('data',)
    """
    if isinstance(x, jax.core.Tracer):
        mesh = sharding.mesh
        if mesh.are_all_axes_explicit:
            return jax.sharding.reshard(x, sharding)
        return jax.lax.with_sharding_constraint(x, sharding)
    if not isinstance(x, jax.Array):
        return x
    if isinstance(sharding.mesh, jax.sharding.AbstractMesh):
        sharding = NamedSharding(_concrete(sharding.mesh, x), sharding.spec)
    if x.sharding == sharding:
        return x
    return jax.device_put(x, sharding)


# -- internals ------------------------------------------------------------------------------
def _names(entry: Any) -> tuple[str, ...]:
    """The axis names of one ``PartitionSpec`` entry."""
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def _ambient_mesh() -> Mesh | None:
    """The ``jax.set_mesh`` mesh: the concrete one if set (and readable), else the abstract one."""
    concrete = _concrete_ambient()
    if concrete is not None:
        return concrete
    abstract = jax.sharding.get_abstract_mesh()
    return None if abstract.empty else abstract


def _concrete_ambient() -> jax.sharding.Mesh | None:
    """The concrete ``jax.set_mesh`` mesh; ``None`` if unset or under a trace (jax hides it)."""
    try:
        mesh = jax.sharding.get_mesh()
    except ValueError:  # under jax.jit: only the abstract mesh is visible
        return None
    return None if mesh.empty else mesh


def _concrete(mesh: jax.sharding.AbstractMesh, x: jax.Array) -> jax.sharding.Mesh:
    """A concrete mesh for ``mesh``: the array's own, or the ambient one."""
    for candidate in (getattr(x.sharding, "mesh", None), _concrete_ambient()):
        if isinstance(candidate, jax.sharding.Mesh) and not candidate.empty:
            if candidate.abstract_mesh == mesh or candidate.shape_tuple == mesh.shape_tuple:
                return candidate
    raise ValueError(
        f"shard_state_over: the optimizer state's sharding is over an abstract mesh ({mesh}) and "
        "there is no concrete mesh to put arrays on eagerly. Run under jax.set_mesh(mesh)."
    )


def _sharding_of(
    var: nnx.Variable[Any], value: Any, axis: str, key: Path
) -> tuple[Mesh, PartitionSpec, NamedSharding]:
    """``(mesh, spec, own sharding)`` of one parameter; raises the ``shard_state_over`` errors."""
    sharding = value.aval.sharding if _is_tracer(value) else getattr(value, "sharding", None)
    mesh: Mesh | None = None
    spec = PartitionSpec()
    if isinstance(sharding, NamedSharding) and not sharding.mesh.empty:
        mesh, spec = sharding.mesh, sharding.spec
        if _is_tracer(value) and not mesh.are_all_axes_explicit:
            # Auto axes under a trace: the aval does not know the sharding; the metadata does.
            spec = nnx.spmd.get_var_pspec(var) or PartitionSpec()
    else:
        # On no mesh (a single-device array, or a trace without one): the ambient mesh,
        # and the Variable's sharding metadata if any (else replicated).
        mesh = _ambient_mesh()
        spec = nnx.spmd.get_var_pspec(var) or PartitionSpec()
    if isinstance(mesh, jax.sharding.AbstractMesh):
        # Prefer the concrete mesh behind it (set by jax.set_mesh, even under a trace):
        # eager updates need devices.
        concrete = _concrete_ambient()
        if concrete is not None and concrete.abstract_mesh == mesh:
            mesh = concrete
    where = f"the parameter at {tree.path_str(key)!r}"
    if mesh is None:
        raise ValueError(
            f"shard_state_over={axis!r} needs a device mesh, but {where} is on no mesh and no "
            "mesh is set. Build the model and the optimizer under jax.set_mesh(mesh) (or put "
            "the parameters on a NamedSharding), with an axis named "
            f"{axis!r}; or pass shard_state_over=None."
        )
    if axis not in mesh.axis_names:
        raise ValueError(
            f"shard_state_over={axis!r}: {where} is on a mesh with axes {tuple(mesh.axis_names)}, "
            f"which has no axis {axis!r}. Pass one of {tuple(mesh.axis_names)}."
        )
    if not (mesh.are_all_axes_explicit or mesh.are_all_axes_auto):
        raise ValueError(
            f"shard_state_over={axis!r}: the mesh of {where} mixes Auto and Explicit axes "
            f"({mesh.axis_types}); use a mesh whose axes are all Auto or all Explicit."
        )
    if isinstance(sharding, NamedSharding) and sharding.mesh == mesh and not _is_tracer(value):
        own = sharding
    else:
        own = NamedSharding(mesh, spec)
    return mesh, spec, own


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _path(keys: Sequence[Any]) -> Path:
    return tuple(tree.key_str(k) for k in keys)


def _place_params(updates: Any, plan: StateSharding, which: str) -> Any:
    """A tree with the parameters' structure, each leaf on its ``param`` or ``state`` sharding."""
    by_path = plan.by_path

    def one(keys: Sequence[Any], leaf: Any) -> Any:
        found = by_path.get(_path(keys))
        if found is None or not hasattr(leaf, "shape"):
            return leaf
        return place(leaf, found.param if which == "param" else found.state)

    return jax.tree_util.tree_map_with_path(one, updates)


def _place_state(state: Any, plan: StateSharding, *, variables: bool) -> Any:
    """The optimizer state, each leaf that mirrors a parameter on its ``state`` sharding.

    With ``variables`` (``init`` of flax's ``nnx.Optimizer`` gets Variables, and
    returns Variables copied from them), a placed Variable is a new one whose
    ``out_sharding`` metadata says where it lives, so flax's ``to_opt_state``
    and ``nnx.get_partition_spec`` agree with the placement.
    """

    def one(keys: Sequence[Any], leaf: Any) -> Any:
        value = leaf.get_value() if _is_variable(leaf) else leaf
        shape = getattr(value, "shape", None)
        if shape is None:
            return leaf
        found = plan.state_placement(_path(keys), tuple(shape))
        if found is None:
            return leaf
        placed = place(value, found.state)
        if not _is_variable(leaf):
            return placed
        metadata = dict(leaf.get_metadata())
        metadata.pop("sharding_rules", None)
        metadata["out_sharding"] = tuple(found.state.spec)
        metadata["mesh"] = found.state.mesh
        if "optimizer_sharding" in metadata:
            metadata["optimizer_sharding"] = tuple(found.state.spec)
        return type(leaf).from_metadata(placed, metadata)

    if not variables:
        return jax.tree_util.tree_map_with_path(one, state)
    return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)
