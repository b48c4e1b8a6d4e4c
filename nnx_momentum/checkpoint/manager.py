"""The orbax ``CheckpointManager`` behind a :class:`~nnx_momentum.Checkpointer`, and its failures.

:class:`OrbaxManager` is the base of ``Checkpointer`` that owns the manager's
life: it is made on first use (process-local on a multi-process job when
``CheckpointOptions.process_local``), registered for interpreter exit
(:mod:`nnx_momentum.checkpoint.lifecycle`), waited for within
``save_timeout_secs``, and replaced after a failed save -- whose partial files
are removed, within a bounded time, and whose step is recorded as lost. A
failure seen only after the commit (orbax deleting old steps) is a warning:
the step is saved.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from nnx_momentum.checkpoint import items, lifecycle, location
from nnx_momentum.checkpoint.options import (
    CheckpointOptions,
    manager_options,
    process_local_options,
)

__all__ = ["OrbaxManager"]


class OrbaxManager:
    """The orbax manager of one checkpoint root: made, waited for and replaced here.

    Attributes (set by the subclass's constructor):
      options: the :class:`~nnx_momentum.CheckpointOptions`.
      directory: the root, as given.
    """

    options: CheckpointOptions
    directory: str
    _root: epath.Path
    _closed: bool
    _current: ocp.CheckpointManager | None
    # The save in flight, if any: its step and the time.monotonic() it must be done by.
    _pending: tuple[int, float] | None

    @property
    def _manager(self) -> ocp.CheckpointManager:
        """The orbax manager; a new one after a failed save (made here if cleanup could not)."""
        if self._current is None:
            self._current = self._new_manager()
            if not self._closed:
                # Nothing is lost at exit, even if this object was dropped without close():
                # the exit hook holds the manager (not self) and completes its pending save.
                lifecycle.register_for_exit(
                    self._current, self.directory, self.options.save_timeout_secs
                )
        return self._current

    def _new_manager(self) -> ocp.CheckpointManager:
        local = process_local_options(self.options)
        if local is not None and self.options.create:
            self._root.mkdir(parents=True, exist_ok=True)  # orbax leaves it to us there
        return ocp.CheckpointManager(
            self._root,
            options=manager_options(self.options, self._root),
            item_handlers={
                **{item: items.array_handler(local) for item in items.ARRAY_ITEMS},
                "meta": ocp.JsonCheckpointHandler()
                if local is None
                else ocp.JsonCheckpointHandler(multiprocessing_options=local),
            },
        )

    def _settle(self, *, block: bool) -> None:
        """Finishes with the pending save: waits (bounded) or checks; raises its failure."""
        error = self._failure(block=block)
        if error is not None:
            raise error

    def _failure(self, *, block: bool) -> RuntimeError | None:
        """The pending save's failure (or timeout), once it is known; ``None`` if none (yet)."""
        if self._pending is None:
            return None
        step, deadline = self._pending
        manager = self._manager
        left = deadline - time.monotonic()
        if not block and left > 0 and manager.is_saving_in_progress():
            return None
        self._pending = None
        error = lifecycle.wait_bounded(manager, max(left, 0.0))
        if isinstance(error, TimeoutError):
            error = TimeoutError(
                f"not committed within save_timeout_secs={self.options.save_timeout_secs:g} s "
                "of its save() call (unreachable or hung storage)"
            )
        return None if error is None else self._outcome(step, error)

    def _outcome(self, step: int, error: BaseException) -> RuntimeError | None:
        """What orbax's ``error`` for the save of ``step`` means: a lost step, or only a warning.

        orbax deletes old steps (retention) after the commit, in the same call or
        thread: if that fails the step is saved -- a warning, not a failure.
        """
        timed_out = isinstance(error, TimeoutError)
        if not timed_out and _bounded(lambda: location.committed(self._root, step), 30.0) is True:
            self._replace_manager(close=True)  # orbax forgot the saved step when it raised
            warnings.warn(
                f"Checkpointer: step {step} was saved to {self.directory!r}, but finishing the "
                f"save -- deleting old steps (retention) -- failed ({type(error).__name__}: "
                f"{error}); what could not be deleted stays on disk.",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        return self._failed(step, error, hung=timed_out)

    def _replace_manager(self, *, close: bool) -> None:
        """Drops the orbax manager (closing it if it can be); the next use makes a fresh one."""
        old, self._current = self._current, None
        if old is None:
            return
        lifecycle.unregister_for_exit(old)
        if close:
            try:
                old.close()
            except Exception:  # noqa: BLE001 - what failed is reported by the caller
                pass

    def _failed(self, step: int, error: BaseException, *, hung: bool = False) -> RuntimeError:
        """Cleans up after the failed save of ``step`` (bounded); the error to raise."""
        lifecycle.record_lost(step, self.directory, error)
        # A fresh orbax manager: the failed one forgot the steps it was about to delete
        # and still holds the failed save's temporary items (reads would refuse them).
        # Closing it first also lets the failed save's other writes wind down.
        failed, self._current = self._current, None
        budget = min(self.options.save_timeout_secs, 30.0)

        def cleanup() -> tuple[list[str], ocp.CheckpointManager]:
            if failed is not None:
                lifecycle.unregister_for_exit(failed)
                # orbax re-raises the failure once per calling thread (this one, first),
                # then closes: hence two tries. Not if it hung (closing would hang too).
                for _ in range(0 if hung else 2):
                    try:
                        failed.close()
                        break
                    except Exception:  # noqa: BLE001 - the failure is what we report
                        pass
            removed: list[str] = []
            local = process_local_options(self.options)
            primary = 0 if local is None else local.primary_host
            if jax.process_index() == primary:  # one process deletes
                try:
                    removed = location.remove_uncommitted(self._root, step)
                except OSError:
                    pass
            fresh = self._new_manager()
            fresh.all_steps()
            return removed, fresh

        outcome = _bounded(cleanup, budget)
        if isinstance(outcome, tuple):
            removed, self._current = outcome
            lifecycle.register_for_exit(
                self._current, self.directory, self.options.save_timeout_secs
            )
            steps = sorted(self._current.all_steps())
            after = (
                f" and its partial files were removed ({removed})" if removed else ""
            ) + f"; committed steps: {steps}."
        else:
            self._current = None  # made again at the next use
            after = (
                f"; its partial files could not be removed and the committed steps not listed "
                f"({_describe(outcome, budget)})."
            )
        return RuntimeError(
            f"Checkpointer: the save of step {step} to {self.directory!r} failed "
            f"({type(error).__name__}: {error}). It was not committed{after}"
        )


def _bounded(fn: Any, seconds: float) -> Any:
    """``fn()`` in a daemon thread, waited for at most ``seconds``: its result, or what failed.

    Returns the exception ``fn`` raised, or ``None`` if it is still running.
    """
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as e:  # noqa: BLE001 - returned to the caller
            box.append(e)

    thread = threading.Thread(target=run, name="nnx_momentum-checkpoint-cleanup", daemon=True)
    thread.start()
    thread.join(seconds)
    return box[0] if box else None


def _describe(outcome: Any, seconds: float) -> str:
    if outcome is None:
        return f"the storage did not answer within {seconds:g} s"
    return f"{type(outcome).__name__}: {outcome}"
