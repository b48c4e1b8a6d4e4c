"""``Checkpointer``: orbax-backed checkpoint and resume of a model and its optimizer.

One :meth:`Checkpointer.save` writes three orbax items into the step folder:

- ``model``: ``nnx.state(model)`` -- every Variable (parameters, batch
  statistics, RNG keys and counters), as arrays;
- ``optimizer``: the optimizer's whole state -- update counter, velocity and
  the scheduler's state (``state_tree()`` of both ``nnx_momentum`` faces, or
  ``nnx.state(optimizer, nnx.OptState)`` for a plain ``nnx.Optimizer``);
- ``meta``: a JSON document -- the optimizer's hyperparameters and scheduler
  description, the package/jax/flax/orbax versions, the metrics and the user's
  ``extra`` dict (e.g. the data loader's position). No pickle anywhere
  (:mod:`nnx_momentum.checkpoint.metadata`).

:meth:`Checkpointer.restore` builds its restore targets from the live objects
(their shapes, dtypes and *current* shardings), so a checkpoint written on
8 devices restores onto 2, 1 or a CPU (:mod:`nnx_momentum.checkpoint.targets`).
Everything is validated against the checkpoint's metadata before a single
array is read, the arrays are restored into fresh buffers, and only then
written into the live Variables: a mismatch raises ``ValueError`` and leaves
the model and the optimizer untouched.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from nnx_momentum.checkpoint import lifecycle, metadata, targets
from nnx_momentum.checkpoint.options import CheckpointOptions, manager_options

__all__ = ["Checkpointer"]

_ARRAY_ITEMS = ("model", "optimizer")
_NAME_FORMAT = ocp.path.step.standard_name_format()


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
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=manager_options(options),
            item_handlers={
                "model": ocp.StandardCheckpointHandler(),
                "optimizer": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )
        self._closed = False
        self._preemption = lifecycle.PreemptionFlag()
        # Nothing is lost at exit, even if this object was dropped without close():
        # the exit hook holds the manager (not self) and waits for its in-flight save.
        lifecycle.register_for_exit(self._manager)

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
            lifecycle.unregister_for_exit(self._manager)
            self._preemption.restore()

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
        checked = metadata.checked_metrics(metrics, self.options)
        # JSON copies: the JSON item is written in the background, so later changes
        # to the caller's dicts must not leak into this step.
        extra_copy = metadata.json_copy("extra", dict(extra) if extra is not None else {})
        if self._preemption.requested:
            self._final_save(step, model, optimizer, checked, extra_copy)
        if not force and not self._manager.should_save(step):
            return False
        if step in self._manager.all_steps():
            raise ValueError(
                f"Checkpointer.save: step {step} already exists in {self.directory!r}."
            )
        live = {
            "model": targets.live_variables(nnx.state(model), "model"),
            "optimizer": targets.live_variables(targets.optimizer_state(optimizer), "optimizer"),
        }
        meta = metadata.meta_item(
            step,
            model,
            optimizer,
            metrics=checked,
            extra=extra_copy,
            prng_keys={
                item: [k for k, v in variables.items() if targets.is_key(v.get_value())]
                for item, variables in live.items()
            },
        )
        arrays = {
            item: ocp.args.StandardSave(
                targets.nest_paths(
                    {k: targets.host_value(v.get_value()) for k, v in variables.items()}
                )
            )
            for item, variables in live.items()
        }
        args = ocp.args.Composite(**arrays, meta=ocp.args.JsonSave(meta))
        return bool(self._manager.save(step, args=args, metrics=checked, force=True))

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
        metadata.check_format(meta, step, self.directory)
        if self.options.check_hyperparams:
            metadata.compare_hyperparams(
                meta.get("hyperparams") or {}, metadata.live_hyperparams(optimizer), step
            )

        live = {
            "model": targets.live_variables(nnx.state(model), "model"),
            "optimizer": targets.live_variables(targets.optimizer_state(optimizer), "optimizer"),
        }
        saved_meta = self._item_metadata(step)
        wanted = {}
        for item in _ARRAY_ITEMS:
            saved_keys = set(meta.get("prng_keys", {}).get(item, []))
            wanted[item] = targets.validated_targets(
                item, step, live[item], targets.flatten_saved(saved_meta[item]), saved_keys
            )
        # Read everything into fresh arrays first ...
        restored = {item: self._read_item(step, item, wanted[item]) for item in _ARRAY_ITEMS}
        # ... and only then write into the live Variables.
        for item in _ARRAY_ITEMS:
            targets.write_back(live[item], restored[item])
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
        self._preemption.install(exit_code=exit_code, caller="Checkpointer.save_on_sigterm")

    @property
    def preemption_requested(self) -> bool:
        """Whether SIGTERM arrived since :meth:`save_on_sigterm` (the next save is final)."""
        return self._preemption.requested

    # -- internals ------------------------------------------------------------------------
    def _final_save(
        self, step: int, model: Any, optimizer: Any, metrics: Any, extra: dict[str, Any]
    ) -> None:
        """The save after a SIGTERM: this step (unless already saved), committed, then exit."""
        self._preemption.requested = False
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
        sys.exit(self._preemption.exit_code)

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
        self, step: int, item: str, wanted: dict[str, jax.ShapeDtypeStruct]
    ) -> dict[str, Any]:
        args = ocp.args.Composite(**{item: ocp.args.StandardRestore(targets.nest_paths(wanted))})
        try:
            restored = self._manager.restore(step, args=args)[item]
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"Checkpointer.restore: could not read item {item!r} of step {step} in "
                f"{self.directory!r} (corrupted or incomplete array files?): "
                f"{type(e).__name__}: {e}"
            ) from e
        flat = targets.flatten_saved(restored)
        for key, target in wanted.items():
            value = flat.get(key)
            if value is None or value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(
                    f"Checkpointer.restore: item {item!r} of step {step}: {key!r} came back as "
                    f"{None if value is None else (value.shape, value.dtype)}, expected "
                    f"{(target.shape, target.dtype)}."
                )
        return flat
