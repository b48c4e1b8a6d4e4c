"""``Checkpointer``: orbax-backed checkpoint and resume of a model and its optimizer.

One :meth:`Checkpointer.save` writes these orbax items into the step folder:

- ``model``: ``nnx.state(model)`` -- every Variable (parameters, batch
  statistics, RNG keys and counters), as arrays (orbax's
  ``PyTreeCheckpointHandler``: OCDBT, zarr3, uncompressed -- plain orbax reads
  it; :mod:`nnx_momentum.checkpoint.items`);
- ``optimizer``: the optimizer's whole state -- update counter, velocity and
  the scheduler's state (``state_tree()`` of both ``nnx_momentum`` faces, or
  ``nnx.state(optimizer, nnx.OptState)`` for a plain ``nnx.Optimizer``);
- ``meta``: a JSON document -- the optimizer's hyperparameters and scheduler
  description, the package/jax/flax/orbax versions, the metrics, the user's
  ``extra`` dict (e.g. the data loader's position) and each array's shape and
  dtype. No pickle anywhere (:mod:`nnx_momentum.checkpoint.metadata`);
- ``metrics``: orbax's own item, when retention ranks by a ``best_metric``.

The root is a local folder or a ``gs://`` URL (:mod:`nnx_momentum.checkpoint.location`).
:meth:`Checkpointer.restore` builds its restore targets from the live objects
(their shapes, dtypes and *current* shardings), so a checkpoint written on
8 devices restores onto 2, 1 or a CPU, and objects built by ``nnx.eval_shape``
(no arrays yet) come back concrete (:mod:`nnx_momentum.checkpoint.targets`).
Everything is validated against the checkpoint's metadata before a single
array is read, the arrays are restored into fresh buffers (both items in one
orbax call), and only then written into the live Variables: a mismatch raises
``ValueError`` and leaves the model and the optimizer untouched.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp
from flax import nnx

from nnx_momentum.checkpoint import items, lifecycle, location, metadata, resume, targets
from nnx_momentum.checkpoint.manager import OrbaxManager
from nnx_momentum.checkpoint.options import CheckpointOptions, process_local_options

__all__ = ["Checkpointer"]


class Checkpointer(OrbaxManager):
    """Saves and restores a model and its optimizer with orbax.

    Each ``save`` writes one step folder holding the model state, the whole
    optimizer state (velocity, update count, scheduler state) and a JSON item
    (hyperparameters, scheduler description, versions, metrics, ``extra``).
    Saves are asynchronous by default and atomic: a step becomes visible only
    once orbax's commit file is written, so a crash mid-save, or an empty or
    partial step folder, is ignored. A save that fails (a full disk, a lost
    bucket) raises from the next call that can report it; its partial folder
    is removed and the committed steps stay listed and restorable. Waits are
    bounded by ``save_timeout_secs``, and a process that lost a save exits
    with status 1 and a stderr line naming the step, never hanging
    (:mod:`nnx_momentum.checkpoint.lifecycle`). Retention follows
    :class:`CheckpointOptions`, across restarts.

    Args:
      directory: the checkpoint root: a local path, or a URL orbax writes
        (``gs://bucket/run``), used as given. A regular file, or a non-empty
        directory that holds no orbax checkpoint, is refused.
      options: a :class:`CheckpointOptions`; keyword arguments override its
        fields (``Checkpointer(d, max_to_keep=3)``).
      **overrides: fields of :class:`CheckpointOptions`.

    Raises:
      ValueError: ``directory`` is a regular file, another program's directory,
        or a URL of a scheme orbax cannot write (``s3://``; nothing is created);
        or its steps were kept by another ``best_n`` ranking, which these
        options would delete.
      FileNotFoundError: ``directory`` does not exist and ``create=False``, or
        its bucket does not exist.
      PermissionError: ``directory`` cannot be created or written (read-only),
        or the bucket refuses the credentials (or there are none).
      ImportError: a ``gs://`` directory without gcsfs installed.
      TimeoutError: the bucket did not answer within
        :data:`~nnx_momentum.checkpoint.location.GCS_CHECK_TIMEOUT_S` seconds.
      ConnectionError: the bucket cannot be reached.

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
        self._root = location.checkpoint_root(directory)
        self.directory = str(self._root)
        location.check_root(self._root, create=options.create)
        self._current: ocp.CheckpointManager | None = None  # see _manager
        self._closed = False
        # The save in flight, if any: its step and the time.monotonic() it must be done by.
        self._pending: tuple[int, float] | None = None
        self._preemption = lifecycle.PreemptionFlag()
        self._preempted_at: int | None = None  # the step of a coordinated preemption
        self._manager.all_steps()  # the manager now: a bad root fails here

    # -- context manager / lifetime ------------------------------------------------
    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_until_finished(self) -> None:
        """Blocks until the pending asynchronous save (if any) is committed.

        The wait is bounded: a save not committed ``save_timeout_secs`` after
        its ``save`` call (an unreachable bucket) counts as failed.

        Raises:
          RuntimeError: that save failed or timed out (its step was not
            committed; its partial files were removed where the storage
            answered).

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d:
          ...     ckpt = nm.Checkpointer(d)
          ...     ckpt.wait_until_finished()
          ...     ckpt.close()
        """
        self._check_open()
        self._settle(block=True)

    def close(self) -> None:
        """Waits for the pending save, then releases orbax's resources and hooks. Idempotent.

        Raises:
          RuntimeError: the pending save failed (the checkpointer is closed anyway).

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d:
          ...     ckpt = nm.Checkpointer(d)
          ...     ckpt.close(); ckpt.close()
        """
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        try:
            self._settle(block=True)
        except RuntimeError as e:
            error = e
        manager = self._current  # kept: the committed steps can still be listed
        try:
            if manager is not None:
                manager.close()
        except Exception:
            if error is None:
                raise
        finally:
            if manager is not None:
                lifecycle.unregister_for_exit(manager)
            self._preemption.restore()
        if error is not None:
            raise error

    # -- listing --------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """The saved steps, ascending (partial or empty step folders are ignored).

        A step whose asynchronous save is still in flight is listed: it will be
        committed before ``restore``, ``close()`` or exit.

        Returns:
          A sorted list of ints.

        Raises:
          RuntimeError: the last asynchronous save failed (raised once; the
            list is then that of the committed steps). Listing also works after
            :meth:`close`.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     ckpt.all_steps()
          []
        """
        if not self._closed:  # after close(), the committed steps can still be listed
            self._settle(block=False)
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None`` when there is none (see :meth:`all_steps`).

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
        background. Call it once per step: off the save interval it is a cheap
        no-op, and it is where a preemption (:meth:`save_on_sigterm`, or a
        coordinated one on a multi-process job) turns into a final save.

        Args:
          step: the step number, a non-negative int (``bool`` and ``float``
            are refused); it names the folder.
          model: the NNX module; ``nnx.state(model)`` (all Variables) is saved.
          optimizer: an ``nnx_momentum`` optimizer (either face) or a plain
            ``nnx.Optimizer``.
          metrics: optional ``{name: number}``; ranks steps for ``best_n``.
          extra: optional JSON-serialisable dict stored with the step (e.g. the
            data loader's position); read it back with :meth:`metadata`.
          force: save even when ``step`` is not a multiple of
            ``save_interval_steps``.

        Returns:
          ``True`` if a checkpoint was written (synchronous) or started
          (asynchronous: a failure is raised by the next call), ``False`` when
          skipped because the step is off the save interval.

        Raises:
          TypeError: ``extra`` or ``metrics`` is not JSON-serialisable.
          ValueError: ``step`` is not a non-negative int, is not newer than
            the latest saved step (the message names both; nothing is
            written), or ``best_metric`` is missing from ``metrics``.
          RuntimeError: this save (synchronous) or the previous one
            (asynchronous) failed; its step was not committed. A previous
            failure does not stop this save: the step is still written, then
            the error names both steps (the failed one, and this one saved or
            started).

        Warns:
          RuntimeWarning: the step was saved, but deleting an old step
            (retention) failed; the old step stays on disk.

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
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     ckpt.save(3.7, model, opt)
          Traceback (most recent call last):
          ...
          ValueError: Checkpointer.save: step must be a non-negative int, got 3.7 (float).
        """
        step = _checked_step(step, "save")
        self._check_open()
        checked = metadata.checked_metrics(metrics, self.options)
        # JSON copies: the JSON item is written in the background, so later changes
        # to the caller's dicts must not leak into this step.
        extra_copy = metadata.json_copy("extra", dict(extra) if extra is not None else {})
        latest = self._manager.latest_step()  # committed or in flight
        if latest is not None and step <= latest:
            how = "already exists as" if step == latest else "is older than"
            raise ValueError(
                f"Checkpointer.save: step {step} {how} the latest step {latest} in "
                f"{self.directory!r}; steps must increase (restore step {latest} to resume, or "
                "save into another directory)."
            )
        earlier = self._failure(block=False)
        if self._preemption.requested or self._at_sync_point(step):
            return self._final_save(step, model, optimizer, checked, extra_copy, earlier)
        if not force and not self._manager.should_save(step):
            if earlier is not None:
                raise earlier
            return False
        return self._write(step, model, optimizer, checked, extra_copy, earlier)

    def _write(
        self,
        step: int,
        model: Any,
        optimizer: Any,
        metrics: dict[str, Any] | None,
        extra: dict[str, Any],
        earlier: RuntimeError | None = None,
    ) -> bool:
        """Writes ``step``; then raises ``earlier`` (a previous save's failure) naming both."""
        earlier = earlier or self._failure(block=True)
        if lifecycle.exit_started():
            error = RuntimeError(
                f"Checkpointer.save: step {step} cannot be saved to {self.directory!r}: the "
                "interpreter is exiting (the main module returned); save before it ends."
            )
            lifecycle.record_lost(step, self.directory, error)
            raise error
        live = {
            "model": targets.live_variables(nnx.state(model), "model"),
            "optimizer": targets.live_variables(targets.optimizer_state(optimizer), "optimizer"),
        }
        values = {
            item: {k: targets.host_value(v.get_value()) for k, v in variables.items()}
            for item, variables in live.items()
        }
        if process_local_options(self.options) is not None:  # whole arrays, this process's
            values = {item: targets.whole_values(flat) for item, flat in values.items()}
        meta = metadata.meta_item(
            step,
            model,
            optimizer,
            metrics=metrics,
            extra=extra,
            prng_keys={
                item: [k for k, v in variables.items() if targets.is_key(v.get_value())]
                for item, variables in live.items()
            },
            arrays={item: items.array_layout(flat) for item, flat in values.items()},
        )
        args = ocp.args.Composite(
            **{item: items.save_args(targets.nest_paths(flat)) for item, flat in values.items()},
            meta=ocp.args.JsonSave(meta),
        )
        try:
            saved = bool(self._manager.save(step, args=args, metrics=metrics, force=True))
        except Exception as e:
            failure = self._outcome(step, e)
            if failure is None:  # committed; an old step could not be deleted (warned)
                saved = True
            elif earlier is None:
                raise failure from e
            else:
                raise RuntimeError(f"{earlier} Then: {failure}") from e
        if saved and self.options.async_save:
            self._pending = (step, time.monotonic() + self.options.save_timeout_secs)
        if earlier is not None:
            state = "started" if self._pending else "saved"
            raise RuntimeError(
                f"{earlier} The next save, of step {step}, was {state} nonetheless"
                + (" (a failure of it is reported by the next call)." if self._pending else ".")
            ) from earlier
        return saved

    # -- restore ------------------------------------------------------------------------
    def restore(
        self,
        model: Any,
        optimizer: Any | None = None,
        *,
        step: int | None = None,
        changes: resume.ResumeChanges | None = None,
    ) -> int | None:
        """Restores ``step`` (default: the latest) into the live model (and optimizer).

        Targets are built from the live objects -- shapes, dtypes and current
        shardings -- so the checkpoint lands on whatever devices the model is
        on now. Everything is validated first (tree, shapes, dtypes,
        hyperparameters), the arrays are read into fresh buffers, and only
        then written into the live Variables.

        The live objects may be *abstract*: built with ``nnx.eval_shape`` (their
        Variables hold ``jax.ShapeDtypeStruct``: shapes, dtypes, maybe
        shardings), so a large model is never materialised with a random
        init. Each array lands on its struct's sharding, or on the default
        device if it has none, and the objects come back concrete and
        trainable. Without ``optimizer`` only the model is read (e.g. to
        evaluate or fine-tune from a training checkpoint).

        Args:
          model: the live NNX module (same structure as the saved one).
          optimizer: the live optimizer (either ``nnx_momentum`` face, or a
            plain ``nnx.Optimizer``; a checkpoint saved from one face loads
            into the other), or ``None`` to restore the model only.
          step: the step to restore; ``None`` restores the latest.
          changes: a :class:`~nnx_momentum.ResumeChanges` allowing the live
            objects to differ from the checkpoint (other hyperparameters, another
            or longer schedule, other parameter groups, a velocity of another
            dtype, new parameters). Every difference is listed as one diff
            first: refused without the matching permission, logged (logger
            ``nnx_momentum``) with it. See :mod:`nnx_momentum.checkpoint.resume`.

        Returns:
          The step restored, or ``None`` when the directory holds no checkpoint.

        Raises:
          ValueError: the step does not exist or is not a non-negative int, the
            model or optimizer differs from the checkpoint in a way ``changes``
            does not allow (the message lists the whole diff: hyperparameters,
            scheduler, groups, paths, shapes, dtypes), or an
            array file cannot be read (the message names the step and item).
            The live objects are unchanged.
          TypeError: ``changes`` is not a :class:`~nnx_momentum.ResumeChanges`.
          RuntimeError: the pending asynchronous save failed.

        Example:
          >>> import tempfile
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
          >>> opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     print(ckpt.restore(model, opt))
          ...     _ = ckpt.save(3, model, opt)
          ...     abstract = nnx.eval_shape(lambda: nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
          ...     ckpt.restore(abstract)  # the model only, into an abstract one
          None
          3
          >>> bool((abstract.kernel[...] == model.kernel[...]).all())
          True
        """
        if changes is not None and not isinstance(changes, resume.ResumeChanges):
            raise TypeError(
                f"Checkpointer.restore: changes must be an nm.ResumeChanges or None, got "
                f"{type(changes).__name__} ({changes!r}), e.g. "
                "changes=nm.ResumeChanges(hyperparams=True)."
            )
        step = self._committed_step(step, "restore")
        if step is None:
            return None
        meta = items.read_meta(self._manager, step, self.directory)
        metadata.check_format(meta, step, self.directory)
        live = {"model": targets.live_variables(nnx.state(model), "model")}
        if optimizer is not None:
            live["optimizer"] = targets.live_variables(
                targets.optimizer_state(optimizer), "optimizer"
            )
        names = [item for item in items.ARRAY_ITEMS if item in live]
        saved = items.saved_arrays(self._manager, step, names, meta, self.directory)
        # Every difference is listed (and refused unless ``changes`` allows it) before
        # a single array is read.
        plan = resume.plan(
            step,
            meta,
            live,
            saved,
            optimizer,
            changes or resume.ResumeChanges(),
            check_hyperparams=self.options.check_hyperparams,
        )
        # Read everything into fresh arrays first (one orbax call) ...
        read = items.read_arrays(self._manager, step, plan.wanted, self.directory)
        move = None
        if plan.schedule is not None and optimizer is not None:
            move = resume.schedule_mover(optimizer.lr, plan.schedule, read["optimizer"])
        # ... and only then (everything checked) show the changes and write them.
        plan.log()
        plan.write(live, read)
        if move is not None:
            move()
        return step

    def metadata(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON item of ``step`` (default: the latest), without reading any array.

        Args:
          step: the step to read; ``None`` reads the latest.

        Returns:
          A dict with ``step``, ``time``, ``hyperparams`` (including the
          scheduler description), ``versions``, ``metrics``, ``extra`` and more;
          ``None`` when the directory holds no checkpoint.

        Raises:
          ValueError: the step does not exist.
          RuntimeError: the pending asynchronous save failed.

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
        return None if step is None else items.read_meta(self._manager, step, self.directory)

    # -- preemption -----------------------------------------------------------------------
    def save_on_sigterm(self, *, exit_code: int = 0) -> None:
        """Turns a preemption into a final save at the next step boundary, then exit.

        Single process: SIGTERM's handler only sets :attr:`preemption_requested`;
        it never touches arrays, since Python runs handlers between any two
        bytecodes -- possibly while a (donated) step is writing the model back.
        Multi-process (after ``jax.distributed.initialize``): jax's preemption
        notifier keeps SIGTERM, and every process learns of it at the *same*
        step (orbax's ``CheckpointManager.reached_preemption``), so all save
        one identical final step -- even if only one host got the signal.

        Either way the next :meth:`save` call -- make it once per step; off the
        save interval it is otherwise a no-op -- saves that step whatever the
        interval (with ``extra["preempted"] = True``), waits until it is
        committed, closes the checkpointer and exits with ``exit_code``.

        Args:
          exit_code: the process exit status after the final save.

        Raises:
          RuntimeError: called outside the main thread of a single-process job.

        Example:
          >>> import tempfile
          >>> import nnx_momentum as nm
          >>> with tempfile.TemporaryDirectory() as d, nm.Checkpointer(d) as ckpt:
          ...     ckpt.save_on_sigterm()
          ...     ckpt.preemption_requested
          False
        """
        self._preemption.install(
            exit_code=exit_code,
            caller="Checkpointer.save_on_sigterm",
            handle_signal=not lifecycle.coordinated(),
        )

    @property
    def preemption_requested(self) -> bool:
        """Whether a preemption arrived: SIGTERM (single process) or a coordinated one."""
        return self._preemption.requested or self._preempted_at is not None

    # -- internals ------------------------------------------------------------------------
    def _at_sync_point(self, step: int) -> bool:
        """Whether a multi-process job reached its preemption sync point at ``step``."""
        return lifecycle.coordinated() and bool(self._manager.reached_preemption(step))

    def _final_save(
        self,
        step: int,
        model: Any,
        optimizer: Any,
        metrics: dict[str, Any] | None,
        extra: dict[str, Any],
        earlier: RuntimeError | None,
    ) -> bool:
        """The save of a preemption: this step, committed; then exit."""
        self._preemption.requested = False
        self._preempted_at = step
        saved = self._write(step, model, optimizer, metrics, {**extra, "preempted": True}, earlier)
        self._settle(block=True)
        if self._preemption.armed:
            self.close()
            sys.exit(self._preemption.exit_code)
        return saved

    def _committed_step(self, step: int | None, caller: str) -> int | None:
        """``step`` (default: the newest) once pending saves are committed; None if none."""
        if step is not None:
            step = _checked_step(step, caller)
        self._check_open()
        self._settle(block=True)
        steps = sorted(self._manager.all_steps())
        if not steps:
            return None
        if step is None:
            return steps[-1]
        if step not in steps:
            raise ValueError(
                f"Checkpointer.{caller}: step {step} is not in {self.directory!r}; committed "
                f"steps are {steps}."
            )
        return step

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"Checkpointer for {self.directory!r} is closed.")


def _checked_step(step: Any, caller: str) -> int:
    """``step`` as an int; bools, floats and negative numbers are refused."""
    try:
        if isinstance(step, bool) or str(getattr(step, "dtype", "")) == "bool":
            raise TypeError
        value = operator.index(step)
    except TypeError:
        value = -1
    if value < 0:
        raise ValueError(
            f"Checkpointer.{caller}: step must be a non-negative int, got {step!r} "
            f"({type(step).__name__})."
        )
    return value
