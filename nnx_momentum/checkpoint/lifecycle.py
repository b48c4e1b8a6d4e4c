"""Process lifecycle of checkpoints: SIGTERM (preemption) and interpreter exit.

- :class:`PreemptionFlag`: a SIGTERM handler that only sets a flag, which
  :meth:`~nnx_momentum.Checkpointer.save` turns into a final save at the next
  step boundary;
- :func:`register_for_exit` / :func:`unregister_for_exit`: the managers whose
  asynchronous saves interpreter exit waits for, so a save in flight is not
  lost when a script ends without ``close()``.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
from typing import Any

import orbax.checkpoint as ocp

__all__ = ["PreemptionFlag", "register_for_exit", "unregister_for_exit"]


class PreemptionFlag:
    """SIGTERM as a flag: the handler sets :attr:`requested`, nothing more.

    It never touches arrays, since Python runs handlers between any two
    bytecodes -- possibly while a (donated) step is writing the model back.

    Attributes:
      requested: whether SIGTERM arrived since :meth:`install`.
      exit_code: the exit status after the final save.

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
        self._previous: Any = None

    def install(self, *, exit_code: int, caller: str) -> None:
        """Installs the SIGTERM handler (again: only ``exit_code`` changes).

        Args:
          exit_code: the exit status after the final save.
          caller: the public method, for the message.

        Raises:
          RuntimeError: not called from the main thread (Python installs signal
            handlers there only).
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(f"{caller} must be called from the main thread.")

        def handler(signum: int, frame: Any) -> None:
            self.requested = True

        previous = signal.signal(signal.SIGTERM, handler)
        if self._previous is None:
            self._previous = previous if previous is not None else signal.SIG_DFL
        self.exit_code = exit_code

    def restore(self) -> None:
        """Puts back the SIGTERM handler that :meth:`install` replaced (main thread only)."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


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
    frame: Any = sys._getframe()
    target = None
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


def register_for_exit(manager: ocp.CheckpointManager) -> None:
    """Makes interpreter exit wait for ``manager``'s in-flight save, then close it.

    The hook holds the manager (not the checkpointer), so nothing is lost even
    if the checkpointer was dropped without ``close()``.

    Args:
      manager: an open orbax ``CheckpointManager``.

    Example:
      >>> import tempfile
      >>> import orbax.checkpoint as ocp
      >>> from nnx_momentum.checkpoint.lifecycle import register_for_exit, unregister_for_exit
      >>> with tempfile.TemporaryDirectory() as d:
      ...     manager = ocp.CheckpointManager(d)
      ...     register_for_exit(manager)
      ...     unregister_for_exit(manager)
      ...     manager.close()
    """
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


def unregister_for_exit(manager: ocp.CheckpointManager) -> None:
    """Forgets ``manager`` (it was closed); a manager never registered is ignored.

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
    _OPEN_MANAGERS.pop(id(manager), None)
