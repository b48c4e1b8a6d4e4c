"""Process lifecycle of checkpoints: preemption and interpreter exit.

- :class:`PreemptionFlag`: a SIGTERM handler that only sets a flag, which
  :meth:`~nnx_momentum.Checkpointer.save` turns into a final save at the next
  step boundary (a single-process job);
- :func:`coordinated`: whether the job runs jax's preemption sync manager
  (``jax.distributed.initialize`` starts it): then jax handles SIGTERM, and
  every process learns of a preemption at the same step through
  ``CheckpointManager.reached_preemption``;
- :func:`register_for_exit` / :func:`unregister_for_exit`: the managers whose
  asynchronous save interpreter exit completes, so a save in flight is not lost
  when a script ends without ``close()``.

Exit, without global hooks. One callback runs when the interpreter exits,
registered with ``threading``'s own exit hooks while a checkpointer is open
and removed by the last ``close()``: it runs before ``concurrent.futures``
refuses new work (a plain ``atexit`` callback runs too late for orbax, which
commits through thread pools) and waits for every pending save. On Python 3.12
no thread can be started once shutdown has begun, so there the save must
complete before: a *local* ``sys.monitoring`` event on the ``__main__``
module's code object (its return, nothing else; no other code is instrumented)
waits for pending saves when the script's last line has run -- from a script,
``python -c`` or a checkpointer made in a worker thread. A script that leaves
by ``sys.exit`` or an exception on 3.12 cannot be caught that way: if its save
then cannot complete, the exit callback says so on stderr and the process
exits with status 1 -- a save is never lost silently.

Bounded, and loud. Every wait for a pending save is bounded by the
checkpointer's ``save_timeout_secs`` (:func:`wait_bounded` polls the manager,
so it needs no thread, even at shutdown). A save that failed or timed out
during the run is recorded (:func:`record_lost`); at exit the callback then
writes one line per lost step on stderr and ends the process with status 1 at
once, instead of waiting for orbax's threads of the failed save (which may
wait minutes for signals that never come). A save started after the exit
callback ran (from a non-daemon thread still running) cannot be completed: it
raises in that thread and the process exits with status 1
(:func:`exit_started`).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp

__all__ = [
    "PreemptionFlag",
    "coordinated",
    "exit_hooks_installed",
    "exit_started",
    "record_lost",
    "register_for_exit",
    "unregister_for_exit",
    "wait_bounded",
]

EXIT_STATUS_LOST_SAVE = 1
"""The exit status of a process whose pending save could not complete at exit."""


class PreemptionFlag:
    """SIGTERM as a flag: the handler sets :attr:`requested`, nothing more.

    It never touches arrays, since Python runs handlers between any two
    bytecodes -- possibly while a (donated) step is writing the model back.

    Attributes:
      requested: whether SIGTERM arrived since :meth:`install`.
      exit_code: the exit status after the final save.
      armed: whether a final save should end the process (``save_on_sigterm``).

    Example:
      >>> import signal
      >>> from nnx_momentum.checkpoint.lifecycle import PreemptionFlag
      >>> before = signal.getsignal(signal.SIGTERM)
      >>> flag = PreemptionFlag()
      >>> flag.install(exit_code=3, caller="example")
      >>> flag.requested, flag.exit_code, signal.getsignal(signal.SIGTERM) is before
      (False, 3, False)
      >>> flag.restore()
      >>> signal.getsignal(signal.SIGTERM) is before
      True
    """

    def __init__(self) -> None:
        self.requested = False
        self.exit_code = 0
        self.armed = False
        self._previous: Any = None

    def install(self, *, exit_code: int, caller: str, handle_signal: bool = True) -> None:
        """Arms the final save; installs the SIGTERM handler (again: only ``exit_code`` changes).

        Args:
          exit_code: the exit status after the final save.
          caller: the public method, for the message.
          handle_signal: install the Python SIGTERM handler. ``False`` in a
            coordinated job (:func:`coordinated`), where jax's preemption
            notifier owns SIGTERM and must keep it.

        Raises:
          RuntimeError: not called from the main thread (Python installs signal
            handlers there only).
        """
        self.armed = True
        self.exit_code = exit_code
        if not handle_signal:
            return
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(f"{caller} must be called from the main thread.")

        def handler(signum: int, frame: Any) -> None:
            self.requested = True

        previous = signal.signal(signal.SIGTERM, handler)
        if self._previous is None:
            self._previous = previous if previous is not None else signal.SIG_DFL

    def restore(self) -> None:
        """Puts back the SIGTERM handler that :meth:`install` replaced (main thread only)."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def coordinated() -> bool:
    """Whether jax's preemption sync manager runs in this process (``jax.distributed``).

    Then a SIGTERM to any process of the job is seen by all of them at the
    same step (``multihost_utils.reached_preemption_sync_point``, which
    orbax's ``CheckpointManager.reached_preemption`` calls).

    Returns:
      ``True`` after ``jax.distributed.initialize`` with the preemption service on.

    Example:
      >>> from nnx_momentum.checkpoint.lifecycle import coordinated
      >>> coordinated()  # a single process, no jax.distributed
      False
    """
    distributed = sys.modules.get("jax._src.distributed")
    state = getattr(distributed, "global_state", None)
    return getattr(state, "preemption_sync_manager", None) is not None


# -- interpreter exit -----------------------------------------------------------------------
# Managers with possibly pending saves, by id: (manager, checkpoint root, timeout in seconds).
_OPEN: dict[int, tuple[ocp.CheckpointManager, str, float]] = {}
# One line per save that was not committed, by (root, step): the first cause is kept
# (the same loss may surface twice, e.g. as our timeout and as orbax's own).
_LOST: dict[tuple[str, int], str] = {}
_EXIT = {"started": False}


def wait_bounded(manager: ocp.CheckpointManager, seconds: float) -> BaseException | None:
    """Waits at most ``seconds`` for ``manager``'s pending save; what went wrong, if anything.

    It polls ``manager.is_saving_in_progress()`` (no thread is started, so this
    also works while the interpreter shuts down), then collects the outcome
    with ``manager.wait_until_finished()``.

    Args:
      manager: an orbax ``CheckpointManager``.
      seconds: the longest wait.

    Returns:
      ``None`` when the save (if any) completed; the exception it raised; or a
      ``TimeoutError`` when it was still running after ``seconds``.

    Example:
      >>> import tempfile
      >>> import orbax.checkpoint as ocp
      >>> from nnx_momentum.checkpoint.lifecycle import wait_bounded
      >>> with tempfile.TemporaryDirectory() as d:
      ...     manager = ocp.CheckpointManager(d)
      ...     print(wait_bounded(manager, 1.0))
      ...     manager.close()
      None
    """
    deadline = time.monotonic() + seconds
    pause = 0.001
    while manager.is_saving_in_progress():
        if time.monotonic() >= deadline:
            return TimeoutError(
                f"still not committed after save_timeout_secs={seconds:g} s "
                "(unreachable or hung storage)"
            )
        time.sleep(pause)
        pause = min(2 * pause, 0.005)  # a few ms of latency at most
    try:
        manager.wait_until_finished()
        return None
    except BaseException as e:  # noqa: BLE001 - the caller reports it
        return e


def _one_line(text: str, limit: int = 400) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_lost(step: int, where: str, error: BaseException | str) -> None:
    """Records that the save of ``step`` to ``where`` was not committed.

    At interpreter exit the process then writes one line per lost step on
    stderr and exits with status 1 (:data:`EXIT_STATUS_LOST_SAVE`) without
    waiting for the failed save's threads. Recorded after the exit callback
    ran (a save from a thread still running), a plain ``atexit`` callback does
    that at the very end.

    Args:
      step: the step that was not committed.
      where: the checkpoint root.
      error: what happened.

    Example:
      >>> from nnx_momentum.checkpoint import lifecycle
      >>> lifecycle.record_lost  # doctest: +ELLIPSIS
      <function record_lost at ...>
    """
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    _LOST.setdefault(
        (where, step),
        f"nnx_momentum.Checkpointer: step {step} was NOT committed to {where!r} "
        f"(older steps are intact): {_one_line(error)}",
    )
    if _EXIT["started"]:
        atexit.register(_exit_if_lost)
    else:
        _EXIT_HOOK.install()  # even after the last close(): the exit status must say it


def exit_started() -> bool:
    """Whether the exit callback has run: a save started now cannot be completed.

    Returns:
      ``True`` once the interpreter's exit callback of this module ran.

    Example:
      >>> from nnx_momentum.checkpoint.lifecycle import exit_started
      >>> exit_started()
      False
    """
    return _EXIT["started"]


def _complete_pending_saves() -> None:
    for manager, where, timeout in list(_OPEN.values()):
        _settle_at_exit(manager, where, timeout)


def _settle_at_exit(manager: ocp.CheckpointManager, where: str, timeout: float) -> bool:
    pending = manager.latest_step()  # orbax lists a step from its save on (forgets it on failure)
    error = wait_bounded(manager, timeout)
    if error is not None:
        record_lost(-1 if pending is None else pending, where, error)
    return error is None


def _exit_if_lost() -> None:
    if not _LOST:
        return
    sys.stderr.write("\n".join(_LOST.values()) + "\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(EXIT_STATUS_LOST_SAVE)


def _at_exit() -> None:
    """Completes every pending save (bounded) and closes the managers; a lost save: status 1."""
    _EXIT["started"] = True
    _MAIN_WATCH.stop()
    while _OPEN:
        _, (manager, where, timeout) = _OPEN.popitem()
        if _settle_at_exit(manager, where, timeout):
            try:
                manager.close()
            except BaseException:  # noqa: BLE001 - the data is committed; nothing to lose
                pass
    _exit_if_lost()


class _ExitHook:
    """``_at_exit`` among ``threading``'s exit hooks (``atexit`` if shutdown has begun)."""

    def __init__(self) -> None:
        self.installed: Callable[[], None] | None = None

    def install(self) -> None:
        if self.installed is not None:
            return
        register = getattr(threading, "_register_atexit", None)
        try:
            if register is None:
                raise RuntimeError("no threading._register_atexit")
            register(_at_exit)
            self.installed = self._remove_threading_hook
        except RuntimeError:  # no such hook, or the interpreter is already shutting down
            atexit.register(_at_exit)
            self.installed = lambda: atexit.unregister(_at_exit)

    @staticmethod
    def _remove_threading_hook() -> None:
        hooks = getattr(threading, "_threading_atexits", [])
        hooks[:] = [h for h in hooks if getattr(h, "func", h) is not _at_exit]

    def remove(self) -> None:
        if self.installed is not None:
            self.installed()
            self.installed = None


class _MainReturnWatch:
    """Python 3.12: complete pending saves when the ``__main__`` module's code returns.

    A local ``sys.monitoring`` ``PY_RETURN`` event on that one code object
    (found on the main thread's stack, from any thread): no other code is
    instrumented, no exception path is touched. Not under IPython/Jupyter,
    where a cell's return is not the end of the program.
    """

    NAME = "nnx_momentum.checkpoint"

    def __init__(self) -> None:
        self.tool: int | None = None
        self.code: Any = None

    @staticmethod
    def _main_code() -> Any:
        main = sys.modules.get("__main__")
        ipython = sys.modules.get("IPython")  # imported by flax's treescope even in scripts
        if main is None or (
            ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None
        ):
            return None
        frame: Any = sys._current_frames().get(threading.main_thread().ident or -1)
        code = None
        while frame is not None:
            if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
                code = frame.f_code  # the outermost one: the script itself
            frame = frame.f_back
        return code

    def start(self) -> None:
        monitoring: Any = getattr(sys, "monitoring", None)
        if self.tool is not None or monitoring is None or not (3, 12) <= sys.version_info < (3, 13):
            return
        code = self._main_code()
        tool = next((i for i in (4, 3) if monitoring.get_tool(i) is None), None)
        if code is None or tool is None:
            return
        monitoring.use_tool_id(tool, self.NAME)
        self.tool, self.code = tool, code
        monitoring.register_callback(tool, monitoring.events.PY_RETURN, self._on_return)
        monitoring.set_local_events(tool, code, monitoring.events.PY_RETURN)

    def _on_return(self, code: Any, offset: int, retval: Any) -> Any:
        if code is self.code:
            self.stop()
            _complete_pending_saves()
        return None

    def stop(self) -> None:
        monitoring: Any = getattr(sys, "monitoring", None)
        if self.tool is None or monitoring is None:
            return
        tool, code = self.tool, self.code
        self.tool = self.code = None
        monitoring.set_local_events(tool, code, 0)
        monitoring.register_callback(tool, monitoring.events.PY_RETURN, None)
        monitoring.free_tool_id(tool)

    @property
    def active(self) -> bool:
        return self.tool is not None


_EXIT_HOOK = _ExitHook()
_MAIN_WATCH = _MainReturnWatch()


def exit_hooks_installed() -> bool:
    """Whether anything of this module is installed (an open checkpointer exists).

    Returns:
      ``True`` between the first :func:`register_for_exit` and the last
      :func:`unregister_for_exit`.

    Example:
      >>> from nnx_momentum.checkpoint.lifecycle import exit_hooks_installed
      >>> exit_hooks_installed()
      False
    """
    return _EXIT_HOOK.installed is not None or _MAIN_WATCH.active


def register_for_exit(
    manager: ocp.CheckpointManager, where: str = "", timeout: float = 300.0
) -> None:
    """Makes interpreter exit complete ``manager``'s pending save, then close it.

    The hook holds the manager (not the checkpointer), so nothing is lost even
    if the checkpointer was dropped without ``close()``.

    Args:
      manager: an open orbax ``CheckpointManager``.
      where: the checkpoint root, for messages.
      timeout: the longest wait at exit, in seconds; a save still pending
        then is reported lost (status 1).

    Example:
      >>> import tempfile
      >>> import orbax.checkpoint as ocp
      >>> from nnx_momentum.checkpoint.lifecycle import register_for_exit, unregister_for_exit
      >>> with tempfile.TemporaryDirectory() as d:
      ...     manager = ocp.CheckpointManager(d)
      ...     register_for_exit(manager, d)
      ...     unregister_for_exit(manager)
      ...     manager.close()
    """
    _OPEN[id(manager)] = (manager, where or str(manager.directory), timeout)
    _EXIT_HOOK.install()
    _MAIN_WATCH.start()


def unregister_for_exit(manager: ocp.CheckpointManager) -> None:
    """Forgets ``manager`` (it was closed); the last one removes every hook.

    A manager never registered is ignored. The exit callback stays while a
    lost save is recorded (:func:`record_lost`): the exit status must say so.

    Args:
      manager: a manager passed to :func:`register_for_exit`.

    Example:
      >>> import tempfile
      >>> import orbax.checkpoint as ocp
      >>> from nnx_momentum.checkpoint.lifecycle import unregister_for_exit
      >>> with tempfile.TemporaryDirectory() as d:
      ...     manager = ocp.CheckpointManager(d)
      ...     unregister_for_exit(manager)
      ...     manager.close()
    """
    _OPEN.pop(id(manager), None)
    if not _OPEN:
        _MAIN_WATCH.stop()
        if not _LOST:
            _EXIT_HOOK.remove()
