"""``Checkpointer``: orbax-backed checkpoint and resume of a model and its optimizer.

One :meth:`Checkpointer.save` writes three orbax items into the step folder:

- ``model``: ``nnx.state(model)`` -- every Variable (parameters, batch
  statistics, RNG keys and counters), as arrays;
- ``optimizer``: the optimizer's whole state -- update counter, velocity and
  the scheduler's state (``state_tree()`` of both ``nnx_momentum`` faces, or
  ``nnx.state(optimizer, nnx.OptState)`` for a plain ``nnx.Optimizer``);
- ``meta``: a JSON document -- the optimizer's hyperparameters and scheduler
  description, the package/jax/flax/orbax versions, the metrics and the user's
  ``extra`` dict (e.g. the data loader's position). No pickle anywhere.

:meth:`Checkpointer.restore` builds its restore targets from the live objects
(their shapes, dtypes and *current* shardings), so a checkpoint written on
8 devices restores onto 2, 1 or a CPU. Everything is validated against the
checkpoint's metadata before a single array is read, the arrays are restored
into fresh buffers, and only then written into the live Variables: a mismatch
raises ``ValueError`` and leaves the model and the optimizer untouched.

Typed PRNG key arrays (``nnx.Rngs`` inside ``nnx.Dropout`` and friends) are
stored as their ``jax.random.key_data`` and re-wrapped with the live key's
implementation on restore.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any, Literal

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as ocp_managers
from orbax.checkpoint import options as ocp_options

from nnx_momentum._face import path_str

__all__ = ["CheckpointOptions", "Checkpointer"]

FORMAT = "nnx_momentum.checkpoint/1"
_ITEMS = ("model", "optimizer", "meta")
_ARRAY_ITEMS = ("model", "optimizer")
_SEP = "/"
_NAME_FORMAT = ocp.path.step.standard_name_format()

Path = tuple[Any, ...]


# --------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """How a :class:`Checkpointer` saves, keeps and restores checkpoints.

    Attributes:
      max_to_keep: keep the newest ``max_to_keep`` steps (``None``: keep all,
        unless ``best_n`` is set, then the newest step only is kept besides the
        best ones).
      best_n: additionally keep the ``best_n`` steps with the best
        ``metrics[best_metric]`` (``None``: no metric-based retention). The
        newest step is never deleted.
      best_metric: the key of the ``metrics`` dict passed to ``save`` that
        ranks steps; required with ``best_n``.
      best_mode: ``'min'`` (lower is better, e.g. a loss) or ``'max'``.
      save_interval_steps: ``save`` writes only steps that are multiples of
        this (``save(..., force=True)`` always writes).
      async_save: write in a background thread; ``save`` returns once the
        arrays are copied to host memory. ``close()``, leaving the ``with``
        block, and interpreter exit wait for the write to finish.
      create: create ``directory`` if it does not exist.
      check_hyperparams: on restore, refuse an optimizer whose hyperparameters
        (momentum, clipping, weight decay, scheduler) differ from the saved ones.

    Example:
      >>> import nnx_momentum as nm
      >>> nm.CheckpointOptions(max_to_keep=3, best_n=2, best_metric="loss").best_mode
      'min'
    """

    max_to_keep: int | None = None
    best_n: int | None = None
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    save_interval_steps: int = 1
    async_save: bool = True
    create: bool = True
    check_hyperparams: bool = True

    def __post_init__(self) -> None:
        for name in ("max_to_keep", "best_n"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"CheckpointOptions.{name} must be None or an int >= 1, got {value!r}."
                )
        if not isinstance(self.save_interval_steps, int) or self.save_interval_steps < 1:
            raise ValueError(
                "CheckpointOptions.save_interval_steps must be an int >= 1, got "
                f"{self.save_interval_steps!r}."
            )
        if self.best_mode not in ("min", "max"):
            raise ValueError(
                f"CheckpointOptions.best_mode must be 'min' or 'max', got {self.best_mode!r}."
            )
        if self.best_n is not None and not self.best_metric:
            raise ValueError(
                "CheckpointOptions.best_n needs best_metric, the metrics key that ranks steps."
            )

    def preservation_policy(self) -> Any:
        """The orbax preservation policy these options describe (``None``: keep all)."""
        if self.best_n is None:
            return None if self.max_to_keep is None else ocp_managers.LatestN(n=self.max_to_keep)
        metric = self.best_metric
        best = ocp_managers.BestN(
            get_metric_fn=lambda metrics: float(metrics[metric]),
            # BestN keeps the last n after an ascending sort: 'max' sorts ascending.
            reverse=self.best_mode == "min",
            n=self.best_n,
            keep_checkpoints_without_metrics=False,
        )
        latest = ocp_managers.LatestN(n=self.max_to_keep or 1)  # never delete the newest
        return ocp_managers.AnyPreservationPolicy(policies=[latest, best])


# --------------------------------------------------------------------------------------
# state <-> orbax trees
# --------------------------------------------------------------------------------------
def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _optimizer_state(optimizer: Any) -> nnx.State:
    """The optimizer's state as an ``nnx.State`` of live Variables."""
    state_tree = getattr(optimizer, "state_tree", None)
    if callable(state_tree):
        return state_tree()
    if isinstance(optimizer, nnx.Optimizer):
        return nnx.state(optimizer, nnx.OptState)
    raise TypeError(
        f"Checkpointer: expected an nnx.Optimizer or an nnx_momentum optimizer, got "
        f"{type(optimizer).__name__}."
    )


def _hyperparams(optimizer: Any) -> dict[str, Any]:
    hp = getattr(optimizer, "hyperparams", None)
    return dict(hp) if isinstance(hp, Mapping) else {}


def _live_variables(state: nnx.State, what: str) -> dict[str, nnx.Variable]:
    """``{'a/b/0/kernel': live Variable}`` from a State of live Variables."""
    flat: dict[str, nnx.Variable] = {}
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Variable):
            raise TypeError(f"Checkpointer: {what} leaf {path_str(path)!r} is not an nnx.Variable.")
        key = path_str(path)
        if key in flat:
            raise ValueError(f"Checkpointer: two {what} paths both read as {key!r}.")
        flat[key] = var
    return flat


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a/b': x}`` -> ``{'a': {'b': x}}`` (string keys only, for orbax)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(_SEP)
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _flatten_meta(tree: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Flattens orbax's metadata tree (nested dicts of ArrayMetadata)."""
    if isinstance(tree, Mapping):
        flat: dict[str, Any] = {}
        for k, v in tree.items():
            flat.update(_flatten_meta(v, (*prefix, str(k))))
        return flat
    return {_SEP.join(prefix): tree}


def _host_value(value: Any) -> Any:
    """What is saved for a Variable's value: key arrays become their key data."""
    if _is_key(value):
        return jax.random.key_data(value)
    if isinstance(value, jax.Array):
        return value
    return np.asarray(value, jax.dtypes.canonicalize_dtype(np.asarray(value).dtype))


def _target(value: Any, where: str) -> jax.ShapeDtypeStruct:
    """The restore target for a live value: its shape, dtype and *concrete* sharding."""
    if _is_key(value):
        value = (
            jax.eval_shape(jax.random.key_data, value)
            if not isinstance(value, jax.Array)
            else jax.random.key_data(value)
        )
    sharding = getattr(value, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and isinstance(mesh, jax.sharding.AbstractMesh):
        raise ValueError(
            f"Checkpointer.restore: {where} has a sharding over an abstract mesh ({sharding}); "
            "orbax needs concrete devices. Build the model with real arrays (not under "
            "nnx.eval_shape with an abstract mesh), or give the abstract arrays a "
            "NamedSharding over a concrete jax.sharding.Mesh."
        )
    # a Python scalar gets the dtype jax would give it (int32 unless x64 is on)
    dtype = (
        value.dtype
        if hasattr(value, "dtype")
        else jax.dtypes.canonicalize_dtype(np.asarray(value).dtype)
    )
    return jax.ShapeDtypeStruct(np.shape(value), dtype, sharding=sharding)


# --------------------------------------------------------------------------------------
# the checkpointer
# --------------------------------------------------------------------------------------
class Checkpointer:
    """Saves and restores a model and its optimizer with orbax.

    Each ``save`` writes one step folder holding the model state, the whole
    optimizer state (velocity, update count, scheduler state) and a JSON item
    (hyperparameters, scheduler description, versions, metrics, ``extra``).
    Saves are asynchronous by default and atomic: a step becomes visible only
    once orbax's commit file is written, so a crash mid-save, or an empty or
    partial step folder, is ignored. Retention follows :class:`CheckpointOptions`.

    Args:
      directory: the checkpoint root (a path). A regular file, or a non-empty
        directory that holds no orbax checkpoint, is refused.
      options: a :class:`CheckpointOptions`; keyword arguments override its
        fields (``Checkpointer(d, max_to_keep=3)``).
      **overrides: fields of :class:`CheckpointOptions`.

    Raises:
      ValueError: ``directory`` is a regular file or another program's directory.
      FileNotFoundError: ``directory`` does not exist and ``create=False``.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     with nm.Checkpointer(d, max_to_keep=2) as ckpt:
      ...         _ = ckpt.save(1, model, optimizer, extra={"epoch": 0})
      ...         fresh = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
      ...         fresh_opt = nnx.Optimizer(fresh, nm.momentum(0.1), wrt=nnx.Param)
      ...         step = ckpt.restore(fresh, fresh_opt)
      ...         extra = ckpt.metadata()["extra"]
      >>> step, extra, bool((fresh.kernel[...] == model.kernel[...]).all())
      (1, {'epoch': 0}, True)
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        options: CheckpointOptions | None = None,
        **overrides: Any,
    ):
        options = options or CheckpointOptions()
        if overrides:
            options = dataclasses.replace(options, **overrides)
        self.options = options
        self.directory = os.path.abspath(os.fspath(directory))
        self._check_directory()
        manager_options = ocp.CheckpointManagerOptions(
            # Exactly the multiples of the interval (orbax would also save the first step).
            save_decision_policy=ocp_managers.FixedIntervalPolicy(options.save_interval_steps),
            preservation_policy=options.preservation_policy(),
            create=options.create,
            enable_async_checkpointing=options.async_save,
            atomicity_options=ocp_options.AtomicityOptions(
                mode=ocp_options.AtomicityMode.COMMIT_FILE
            ),
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=manager_options,
            item_handlers={
                "model": ocp.StandardCheckpointHandler(),
                "optimizer": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self._closed = False
        self._previous_sigterm: Any = None
        self._preemption_requested = False
        self._exit_code_on_preemption = 0
        # Nothing is lost at exit, even if this object was dropped without close():
        # the exit hook holds the manager (not self) and waits for its in-flight save.
        _register_for_exit(self._manager)

    def _check_directory(self) -> None:
        path = self.directory
        if os.path.isfile(path):
            raise ValueError(
                f"Checkpointer: {path!r} is a regular file, not a checkpoint directory."
            )
        if not os.path.exists(path):
            if not self.options.create:
                raise FileNotFoundError(
                    f"Checkpointer: {path!r} does not exist (create=False). Create it, or pass "
                    "create=True."
                )
            return
        entries = os.listdir(path)
        orbax_like = [
            e for e in entries if e.isdigit() or e.startswith("_") or ".orbax-checkpoint-tmp" in e
        ]
        if entries and not orbax_like:
            shown = sorted(entries)[:5]
            raise ValueError(
                f"Checkpointer: {path!r} is a non-empty directory that holds no orbax "
                f"checkpoint (it contains {shown}{' ...' if len(entries) > 5 else ''}). "
                "Pass an empty or new directory, or an existing checkpoint root."
            )

    # -- context manager / lifetime ------------------------------------------------
    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_until_finished(self) -> None:
        """Blocks until the in-flight asynchronous save (if any) is committed.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d:
          ...     ckpt = nm.Checkpointer(d)
          ...     ckpt.wait_until_finished()
          ...     ckpt.close()
        """
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, then releases orbax's resources. Idempotent.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d:
          ...     ckpt = nm.Checkpointer(d)
          ...     ckpt.close(); ckpt.close()
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._manager.wait_until_finished()
        finally:
            self._manager.close()
            _OPEN_MANAGERS.pop(id(self._manager), None)
            if (
                self._previous_sigterm is not None
                and threading.current_thread() is threading.main_thread()
            ):
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None

    # -- listing --------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """The saved steps, ascending (partial or empty step folders are ignored).

        A step whose asynchronous save is still in flight is listed: it will be
        committed before ``restore``, ``close()`` or exit.

        Returns:
          A sorted list of ints.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     ckpt.all_steps()
          []
        """
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or ``None`` when there is none.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     print(ckpt.latest_step())
          None
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- save -------------------------------------------------------------------------
    def save(
        self,
        step: int,
        model: Any,
        optimizer: Any,
        *,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves the model, the optimizer state and the JSON item as ``step``.

        The arrays are copied to host memory before this returns, so training
        may go on (and donate its buffers) while the write finishes in the
        background.

        Args:
          step: the step number (a non-negative int); it names the folder.
          model: the NNX module; ``nnx.state(model)`` (all Variables) is saved.
          optimizer: an ``nnx_momentum`` optimizer (either face) or a plain
            ``nnx.Optimizer``.
          metrics: optional ``{name: number}``; ranks steps for ``best_n``.
          extra: optional JSON-serialisable dict stored with the step (e.g. the
            data loader's position); read it back with :meth:`metadata`.
          force: save even when ``step`` is not a multiple of
            ``save_interval_steps``.

        Returns:
          ``True`` if a checkpoint was written, ``False`` when skipped (the
          step is off the save interval, or not newer than the latest step).

        Raises:
          TypeError: ``extra`` or ``metrics`` is not JSON-serialisable.
          ValueError: the step already exists, or ``best_metric`` is missing
            from ``metrics``.

        Example:
          >>> import tempfile
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
          >>> opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     ckpt.save(10, model, opt, metrics={"loss": 0.5})
          ...     ckpt.all_steps()
          True
          [10]
        """
        self._check_open()
        step = int(step)
        if step < 0:
            raise ValueError(f"Checkpointer.save: step must be >= 0, got {step}.")
        metrics = self._checked_metrics(metrics)
        # JSON copies: the JSON item is written in the background, so later changes
        # to the caller's dicts must not leak into this step.
        extra = _json_copy("extra", dict(extra) if extra is not None else {})
        if self._preemption_requested:
            self._final_save(step, model, optimizer, metrics, extra)
        if not force and not self._manager.should_save(step):
            return False
        if step in self._manager.all_steps():
            raise ValueError(
                f"Checkpointer.save: step {step} already exists in {self.directory!r}."
            )
        model_vars = _live_variables(nnx.state(model), "model")
        opt_vars = _live_variables(_optimizer_state(optimizer), "optimizer")
        meta = {
            "format": FORMAT,
            "step": step,
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
            "model_class": type(model).__name__,
            "optimizer_class": type(optimizer).__name__,
            "hyperparams": _hyperparams(optimizer),
            "versions": _versions(),
            "metrics": metrics,
            "extra": extra,
            "prng_keys": {
                "model": sorted(k for k, v in model_vars.items() if _is_key(v.get_value())),
                "optimizer": sorted(k for k, v in opt_vars.items() if _is_key(v.get_value())),
            },
        }
        meta["hyperparams"] = _json_copy("hyperparams", meta["hyperparams"])
        args = ocp.args.Composite(
            model=ocp.args.StandardSave(
                _nest({k: _host_value(v.get_value()) for k, v in model_vars.items()})
            ),
            optimizer=ocp.args.StandardSave(
                _nest({k: _host_value(v.get_value()) for k, v in opt_vars.items()})
            ),
            meta=ocp.args.JsonSave(meta),
        )
        return bool(self._manager.save(step, args=args, metrics=metrics, force=True))

    def _checked_metrics(self, metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if metrics is None:
            return None
        out = {}
        for name, value in dict(metrics).items():
            if np.ndim(value) == 0 and not isinstance(value, str):
                value = np.asarray(value).item()
            out[str(name)] = value
        out = _json_copy("metrics", out)
        best = self.options.best_metric
        if self.options.best_n is not None and best not in out:
            raise ValueError(
                f"Checkpointer.save: metrics has no {best!r} (the best_metric); "
                f"got keys {sorted(out)}."
            )
        if best in out and not (isinstance(out[best], (int, float)) and math.isfinite(out[best])):
            raise ValueError(
                f"Checkpointer.save: metrics[{best!r}] must be a finite number, got {out[best]!r}."
            )
        return out

    # -- restore ------------------------------------------------------------------------
    def restore(self, model: Any, optimizer: Any, *, step: int | None = None) -> int | None:
        """Restores ``step`` (default: the latest) into the live model and optimizer.

        Targets are built from the live objects -- shapes, dtypes and current
        shardings -- so the checkpoint lands on whatever devices the model is
        on now. Everything is validated first (tree, shapes, dtypes,
        hyperparameters), the arrays are read into fresh buffers, and only
        then written into the live Variables.

        Args:
          model: the live NNX module (same structure as the saved one).
          optimizer: the live optimizer (either ``nnx_momentum`` face, or a
            plain ``nnx.Optimizer``); a checkpoint saved from one face loads
            into the other.
          step: the step to restore; ``None`` restores the latest.

        Returns:
          The step restored, or ``None`` when the directory holds no checkpoint.

        Raises:
          ValueError: the step does not exist, the model or optimizer does not
            match the checkpoint (the message names the path, shapes, dtypes or
            hyperparameters that differ), or an array file cannot be read (the
            message names the step and item). The live objects are unchanged.

        Example:
          >>> import tempfile
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
          >>> opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     print(ckpt.restore(model, opt))
          ...     _ = ckpt.save(3, model, opt)
          ...     ckpt.restore(model, opt)
          None
          3
        """
        step = self._committed_step(step, "restore")
        if step is None:
            return None
        meta = self._read_meta(step)
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"Checkpointer.restore: step {step} in {self.directory!r} was not written by "
                f"nnx_momentum.Checkpointer (format {meta.get('format')!r}, expected {FORMAT!r})."
            )
        if self.options.check_hyperparams:
            _compare_hyperparams(meta.get("hyperparams") or {}, _hyperparams(optimizer), step)

        live = {
            "model": _live_variables(nnx.state(model), "model"),
            "optimizer": _live_variables(_optimizer_state(optimizer), "optimizer"),
        }
        saved_meta = self._item_metadata(step)
        targets = {}
        for item in _ARRAY_ITEMS:
            saved_keys = set(meta.get("prng_keys", {}).get(item, []))
            targets[item] = _validated_targets(
                item, step, live[item], _flatten_meta(saved_meta[item]), saved_keys
            )
        # Read everything into fresh arrays first ...
        restored = {item: self._read_item(step, item, targets[item]) for item in _ARRAY_ITEMS}
        # ... and only then write into the live Variables.
        for item in _ARRAY_ITEMS:
            for key, var in live[item].items():
                value = restored[item][key]
                old = var.get_value()
                if _is_key(old):
                    value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(old))
                var.set_value(value)
        return step

    def metadata(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON item of ``step`` (default: the latest), without reading any array.

        Args:
          step: the step to read; ``None`` reads the latest.

        Returns:
          A dict with ``step``, ``time``, ``hyperparams`` (including the
          scheduler description), ``versions``, ``metrics``, ``extra`` and more;
          ``None`` when the directory holds no checkpoint.

        Example:
          >>> import tempfile
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
          >>> opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     _ = ckpt.save(5, model, opt, extra={"batch": 640})
          ...     info = ckpt.metadata()
          >>> info["step"], info["extra"]
          (5, {'batch': 640})
        """
        step = self._committed_step(step, "metadata")
        return None if step is None else self._read_meta(step)

    # -- preemption -----------------------------------------------------------------------
    def save_on_sigterm(self, *, exit_code: int = 0) -> None:
        """Turns SIGTERM (preemption) into a final save at the next step boundary, then exit.

        The signal handler only sets :attr:`preemption_requested`; it never
        touches arrays, since Python runs handlers between any two bytecodes --
        possibly while a (donated) step is writing the model back. The next
        :meth:`save` call -- make it once per step; off the save interval it is
        otherwise a no-op -- then saves that step whatever the interval (with
        ``extra["preempted"] = True``), waits until it is committed, closes the
        checkpointer and exits with ``exit_code``. A loop that does not call
        ``save`` every step can poll :attr:`preemption_requested` instead.

        Args:
          exit_code: the process exit status after the final save.

        Example:
          >>> import tempfile
          >>> import nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     ckpt.save_on_sigterm()
          ...     ckpt.preemption_requested
          False
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Checkpointer.save_on_sigterm must be called from the main thread.")

        def handler(signum: int, frame: Any) -> None:
            self._preemption_requested = True

        previous = signal.signal(signal.SIGTERM, handler)
        if self._previous_sigterm is None:
            self._previous_sigterm = previous if previous is not None else signal.SIG_DFL
        self._exit_code_on_preemption = exit_code

    @property
    def preemption_requested(self) -> bool:
        """Whether SIGTERM arrived since :meth:`save_on_sigterm` (the next save is final)."""
        return self._preemption_requested

    # -- internals ------------------------------------------------------------------------
    def _final_save(
        self, step: int, model: Any, optimizer: Any, metrics: Any, extra: dict[str, Any]
    ) -> None:
        """The save after a SIGTERM: this step (unless already saved), committed, then exit."""
        self._preemption_requested = False
        if step not in self._manager.all_steps():
            self.save(
                step,
                model,
                optimizer,
                metrics=metrics,
                extra={**extra, "preempted": True},
                force=True,
            )
        self.close()
        sys.exit(self._exit_code_on_preemption)

    def _committed_step(self, step: int | None, caller: str) -> int | None:
        """``step`` (default: the newest) once pending saves are committed; None if none."""
        self._check_open()
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if not steps:
            return None
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise ValueError(
                f"Checkpointer.{caller}: step {step} is not in {self.directory!r}; committed "
                f"steps are {steps}."
            )
        return int(step)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"Checkpointer for {self.directory!r} is closed.")

    def _read_meta(self, step: int) -> dict[str, Any]:
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = out["meta"]
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"Checkpointer: could not read the JSON item 'meta' of step {step} in "
                f"{self.directory!r}: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(meta, dict):
            raise ValueError(
                f"Checkpointer: step {step} in {self.directory!r} has no JSON item 'meta'."
            )
        return meta

    def _item_metadata(self, step: int) -> dict[str, Any]:
        out = {}
        try:
            metadata = self._manager.item_metadata(step)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"Checkpointer.restore: could not read item {self._failing_item(step)!r} of step "
                f"{step} in {self.directory!r} (corrupted or incomplete files?): "
                f"{type(e).__name__}: {e}"
            ) from e
        for item in _ARRAY_ITEMS:
            m = metadata[item] if item in metadata else None
            tree = getattr(m, "tree", m)
            if tree is None:
                raise ValueError(
                    f"Checkpointer: step {step} in {self.directory!r} has no readable "
                    f"item {item!r}."
                )
            out[item] = tree
        return out

    def _failing_item(self, step: int) -> str:
        """Which item's metadata cannot be read (for the error message)."""
        for item in _ARRAY_ITEMS:
            try:
                ocp.StandardCheckpointHandler().metadata(
                    ocp.path.step.build_step_path(self._manager.directory, _NAME_FORMAT, step)
                    / item
                )
            except Exception:  # noqa: BLE001
                return item
        return "model/optimizer"

    def _read_item(
        self, step: int, item: str, targets: dict[str, jax.ShapeDtypeStruct]
    ) -> dict[str, Any]:
        args = ocp.args.Composite(**{item: ocp.args.StandardRestore(_nest(targets))})
        try:
            restored = self._manager.restore(step, args=args)[item]
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"Checkpointer.restore: could not read item {item!r} of step {step} in "
                f"{self.directory!r} (corrupted or incomplete array files?): "
                f"{type(e).__name__}: {e}"
            ) from e
        flat = _flatten_meta(restored)
        for key, target in targets.items():
            value = flat.get(key)
            if value is None or value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(
                    f"Checkpointer.restore: item {item!r} of step {step}: {key!r} came back as "
                    f"{None if value is None else (value.shape, value.dtype)}, expected "
                    f"{(target.shape, target.dtype)}."
                )
        return flat


# Managers with possibly in-flight saves, closed at interpreter exit. The hook runs
# through threading's exit hooks, before concurrent.futures refuses new work
# (a plain atexit hook runs too late: orbax's commit then fails and the save is lost).
_OPEN_MANAGERS: dict[int, ocp.CheckpointManager] = {}
_EXIT_HOOK_INSTALLED = False


def _close_open_managers() -> None:
    while _OPEN_MANAGERS:
        _, manager = _OPEN_MANAGERS.popitem()
        try:
            manager.wait_until_finished()
        finally:
            manager.close()


_WATCHED_MAIN: set[Any] = set()


def _watch_main_module_exit() -> None:
    """Python 3.12 scripts: wait for pending saves when the ``__main__`` module finishes.

    On 3.12 no thread can be started during interpreter shutdown, not even from
    threading's exit hooks (3.11 and 3.13 allow it), so those run too late for
    orbax, which starts threads to commit. A ``sys.monitoring`` event on the
    main script's code object (``PY_RETURN``, and ``PY_UNWIND`` for
    ``sys.exit``/exceptions) runs in the main thread before shutdown. Only for
    real scripts: under IPython/Jupyter every cell is a ``<module>`` code
    object of ``__main__``, and a kernel does not exit after a cell. Once it
    has fired, the tool id is released and the (global) unwind events stop.
    """
    monitoring = getattr(sys, "monitoring", None)
    main = sys.modules.get("__main__")
    if monitoring is None or main is None or not hasattr(main, "__file__"):
        return
    ipython = sys.modules.get("IPython")  # imported by flax's treescope even in scripts
    if ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None:
        return
    frame, target = sys._getframe(), None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            target = frame.f_code
        frame = frame.f_back
    if target is None or target in _WATCHED_MAIN:
        return
    tool = next((i for i in (4, 3) if monitoring.get_tool(i) is None), None)
    if tool is None:
        return
    monitoring.use_tool_id(tool, "nnx_momentum.checkpointer")

    def on_exit(code: Any, *_: Any) -> Any:
        if code is target:
            monitoring.set_events(tool, 0)
            monitoring.set_local_events(tool, target, 0)
            monitoring.free_tool_id(tool)
            _close_open_managers()
        return None

    events = monitoring.events
    monitoring.register_callback(tool, events.PY_RETURN, on_exit)
    monitoring.register_callback(tool, events.PY_UNWIND, on_exit)
    monitoring.set_local_events(tool, target, events.PY_RETURN)
    monitoring.set_events(tool, events.PY_UNWIND)  # global only; fires on exceptions
    _WATCHED_MAIN.add(target)


def _register_for_exit(manager: ocp.CheckpointManager) -> None:
    global _EXIT_HOOK_INSTALLED
    _OPEN_MANAGERS[id(manager)] = manager
    if (3, 12) <= sys.version_info < (3, 13):
        _watch_main_module_exit()
    if not _EXIT_HOOK_INSTALLED:
        register = getattr(threading, "_register_atexit", None)
        try:
            if register is None:
                raise RuntimeError
            register(_close_open_managers)
        except RuntimeError:  # no such hook, or the interpreter is shutting down
            atexit.register(_close_open_managers)
        _EXIT_HOOK_INSTALLED = True


def _validated_targets(
    item: str,
    step: int,
    live: dict[str, nnx.Variable],
    saved: dict[str, Any],
    saved_keys: set[str],
) -> dict[str, jax.ShapeDtypeStruct]:
    """Restore targets for ``live``, after checking them against the saved metadata."""
    missing = sorted(set(live) - set(saved))
    unknown = sorted(set(saved) - set(live))
    if missing or unknown:
        raise ValueError(
            f"Checkpointer.restore: the live {item} does not match step {step}: paths in the "
            f"live {item} but not in the checkpoint: {missing}; paths in the checkpoint but "
            f"not in the live {item}: {unknown}. Is it the same model/optimizer configuration "
            "(layers, BatchNorm/Dropout, clipping, weight decay, scheduler)?"
        )
    targets = {}
    problems = []
    for key, var in live.items():
        value = var.get_value()
        is_key = _is_key(value)
        if is_key != (key in saved_keys):
            problems.append(
                f"{key}: {'a PRNG key' if is_key else 'an array'} in the live {item}, "
                f"{'a PRNG key' if key in saved_keys else 'an array'} in the checkpoint"
            )
            continue
        target = _target(value, f"{item} {key!r}")
        meta = saved[key]
        shape = tuple(getattr(meta, "shape", ()) or ())
        dtype = getattr(meta, "dtype", None)
        if shape != tuple(target.shape):
            problems.append(f"{key}: shape {tuple(target.shape)} live, {shape} saved")
        elif dtype is not None and np.dtype(dtype) != np.dtype(target.dtype):
            problems.append(f"{key}: dtype {np.dtype(target.dtype)} live, {np.dtype(dtype)} saved")
        targets[key] = target
    if problems:
        raise ValueError(
            f"Checkpointer.restore: the live {item} does not match step {step}: "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Nothing was restored."
        )
    return targets


def _compare_hyperparams(saved: Mapping[str, Any], live: Mapping[str, Any], step: int) -> None:
    """Refuses a live optimizer whose hyperparameters differ from the saved ones.

    Ignored: the optimizer's class name (the faces share one state layout) and a
    scheduler's initial ``last_epoch`` (state, which the restore overwrites).
    Numbers are compared to float32 precision (``momentum=np.float32(0.9)``
    equals ``0.9``). An optax-schedule ``lr`` is known by its function's name
    only, and a plain ``nnx.Optimizer`` has no hyperparameters to compare.
    """
    if not saved or not live:
        return
    ignore = {"optimizer"}
    diffs = [
        f"{k}: saved {saved.get(k)!r}, live {live.get(k)!r}"
        for k in sorted(set(saved) | set(live))
        if k not in ignore and not _same_setting(_jsonable(saved.get(k)), _jsonable(live.get(k)))
    ]
    if diffs:
        raise ValueError(
            f"Checkpointer.restore: the optimizer's hyperparameters differ from step {step}'s: "
            + "; ".join(diffs)
            + ". Build the optimizer with the saved hyperparameters (see "
            "Checkpointer.metadata()['hyperparams']), or pass check_hyperparams=False."
        )


def _same_setting(a: Any, b: Any) -> bool:
    """Equal JSON settings: floats to float32 precision, schedulers' last_epoch ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"last_epoch"}
        return all(_same_setting(a.get(k), b.get(k)) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _jsonable(x: Any) -> Any:
    """``x`` as it reads back from JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(x, default=str))


def _json_copy(name: str, value: Any) -> Any:
    """A deep copy of ``value`` through JSON, or a TypeError naming ``name``."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"Checkpointer.save: {name} must be JSON-serialisable (no pickle is used): {e}"
        ) from e


def _versions() -> dict[str, str]:
    """Versions of this package and its stack, for the JSON item."""
    import importlib.metadata

    import nnx_momentum

    out = {"nnx_momentum": getattr(nnx_momentum, "__version__", "unknown")}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
