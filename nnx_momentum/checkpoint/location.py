"""Where checkpoints live: a local folder or a ``gs://`` bucket, as ``etils.epath`` paths.

orbax reads and writes through ``etils.epath`` (``gcsfs`` for ``gs://``) and
TensorStore, so a checkpoint root is handled as an ``epath.Path`` from the
start: a local path is made absolute, a URL is kept exactly as given (never
``os.path.abspath`` on it). A URL whose scheme orbax cannot write -- anything
but ``gs://`` in orbax-checkpoint 0.12.8; ``s3://`` would land in a local
``s3:`` folder -- is refused before anything is created.

This module also holds the few file-level operations of the checkpointer: the
check that a root is a checkpoint directory it can write (a local folder is
created and a probe file written and removed; a ``gs://`` root gets a probe
object, within :data:`GCS_CHECK_TIMEOUT_S`), the removal of a step that was
never committed, and reading a step's metrics from its JSON item.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import threading
import time
import uuid
from typing import Any

from etils import epath
from orbax.checkpoint import path as ocp_path

__all__ = [
    "GCS_CHECK_TIMEOUT_S",
    "WRITABLE_SCHEMES",
    "check_root",
    "checkpoint_root",
    "committed",
    "remove_uncommitted",
    "saved_metrics",
    "url_scheme",
]

WRITABLE_SCHEMES = ("gs",)
"""URL schemes orbax writes (TensorStore's ``gcs`` driver); any local path works too."""

GCS_CHECK_TIMEOUT_S = 10.0
"""Seconds the ``gs://`` check at construction waits for the bucket (gcsfs alone retries ~50 s)."""

_PROBE_PREFIX = "_nnx_momentum_probe."  # a leading "_": an entry an orbax root may hold
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_COMMIT_FILE = ocp_path.atomicity.COMMIT_SUCCESS_FILE
_TMP_SUFFIX = ocp_path.atomicity.TMP_DIR_SUFFIX


def url_scheme(directory: str) -> str | None:
    """The URL scheme of ``directory`` (lower case), ``None`` for a local path.

    Args:
      directory: a path or URL.

    Returns:
      ``'gs'`` for ``gs://bucket/run``, ``None`` for ``/tmp/run`` or ``runs/a``.

    Example:
      >>> from nnx_momentum.checkpoint.location import url_scheme
      >>> url_scheme("gs://bucket/run1"), url_scheme("S3://b/x"), url_scheme("runs/digits")
      ('gs', 's3', None)
    """
    match = _SCHEME.match(directory)
    return match.group(1).lower() if match else None


def checkpoint_root(directory: str | os.PathLike[str]) -> epath.Path:
    """The checkpoint root as an ``epath.Path``: a URL untouched, a local path absolute.

    Args:
      directory: a local path, or a URL of a scheme orbax can write (``gs://``).

    Returns:
      The path; nothing is created.

    Raises:
      ValueError: ``directory`` is a URL of another scheme (the message names it).

    Example:
      >>> from nnx_momentum.checkpoint.location import checkpoint_root
      >>> str(checkpoint_root("gs://bucket/run1"))
      'gs://bucket/run1'
      >>> checkpoint_root("s3://bucket/run1")
      Traceback (most recent call last):
      ...
      ValueError: Checkpointer: orbax-checkpoint cannot write 's3://' URLs ...
    """
    text = os.fspath(directory)
    scheme = url_scheme(text)
    if scheme is None:
        return epath.Path(os.path.abspath(text))
    if scheme not in WRITABLE_SCHEMES:
        supported = ", ".join(f"'{s}://'" for s in WRITABLE_SCHEMES)
        raise ValueError(
            f"Checkpointer: orbax-checkpoint cannot write '{scheme}://' URLs ({text!r}); "
            f"use a local path or one of {supported}. Nothing was created."
        )
    return epath.Path(text)


def check_root(root: epath.Path, *, create: bool, timeout_s: float = GCS_CHECK_TIMEOUT_S) -> None:
    """Refuses a root that cannot be a checkpoint directory, or that cannot be written.

    A local root is created (with ``create``) and a probe file is written into
    it and removed; a ``gs://`` root gets a probe object, written and removed
    through ``etils.epath``/gcsfs as orbax writes, within ``timeout_s``.

    Args:
      root: the checkpoint root (:func:`checkpoint_root`).
      create: whether a missing root may be created.
      timeout_s: how long the ``gs://`` probe may take.

    Raises:
      ValueError: ``root`` is a regular file, or a non-empty directory that
        holds no orbax checkpoint (its first entries are named).
      FileNotFoundError: ``root`` does not exist and ``create`` is false, or
        its bucket does not exist.
      PermissionError: ``root`` cannot be created or written (a read-only
        directory or file system), or the bucket refuses the credentials (or
        there are none).
      ImportError: ``root`` is ``gs://`` and gcsfs is not installed.
      TimeoutError: the bucket did not answer within ``timeout_s``.
      ConnectionError: the bucket cannot be reached.

    Each message is one line that names ``root`` and says what to do.

    Example:
      >>> import tempfile
      >>> from etils import epath
      >>> from nnx_momentum.checkpoint.location import check_root
      >>> with tempfile.TemporaryDirectory() as d:
      ...     check_root(epath.Path(d), create=False)  # an empty directory is fine
      ...     check_root(epath.Path(d) / "new", create=True)  # created, and written
      ...     sorted(p.name for p in epath.Path(d).iterdir())
      ['new']
    """
    local = url_scheme(str(root)) is None
    if not local:
        _check_bucket(root, timeout_s)
    if root.is_file():
        raise ValueError(
            f"Checkpointer: {str(root)!r} is a regular file, not a checkpoint directory."
        )
    if not root.exists():
        if not create:
            raise FileNotFoundError(
                f"Checkpointer: {str(root)!r} does not exist (create=False). Create it, or pass "
                "create=True."
            )
        if local:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PermissionError(
                    f"Checkpointer: cannot create {str(root)!r} ({_reason(e)}); pass a directory "
                    "you can write."
                ) from None
    elif entries := [p.name for p in root.iterdir()]:
        orbax_like = [e for e in entries if e.isdigit() or e.startswith("_") or _TMP_SUFFIX in e]
        if not orbax_like:
            shown = sorted(entries)[:5]
            raise ValueError(
                f"Checkpointer: {str(root)!r} is a non-empty directory that holds no orbax "
                f"checkpoint (it contains {shown}{' ...' if len(entries) > 5 else ''}). "
                "Pass an empty or new directory, or an existing checkpoint root."
            )
    if local:
        try:
            _probe(root)
        except OSError as e:
            raise PermissionError(
                f"Checkpointer: {str(root)!r} is not writable ({_reason(e)}); pass a directory "
                "you can write, or make this one writable (permissions, a read-write mount)."
            ) from None


def _reason(error: BaseException) -> str:
    """One line on ``error``: its ``strerror`` or first line, and its type."""
    text = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _probe(root: epath.Path) -> None:
    """Writes an empty probe file (object) into ``root`` and removes it."""
    probe = root / f"{_PROBE_PREFIX}{os.getpid()}.{uuid.uuid4().hex}"
    probe.write_bytes(b"")
    probe.unlink()


def _check_bucket(root: epath.Path, timeout_s: float) -> None:
    """The ``gs://`` probe, in a daemon thread so that gcsfs's retries cannot hold us."""
    try:
        importlib.import_module("gcsfs")  # what etils.epath writes gs:// with
    except ImportError:
        raise ImportError(
            f"Checkpointer: {str(root)!r} needs gcsfs to write gs:// (pip install gcsfs)."
        ) from None
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    outcome: list[BaseException | None] = []

    # gcsfs logs each failed try with its traceback: the error raised below says it in
    # one line. Its log is muted until the probe ends (after a timeout, in the background).
    gcsfs_log = logging.getLogger("gcsfs")
    mute = logging.Filter("nnx_momentum.muted")  # passes no record of the "gcsfs" logger

    def probe() -> None:
        try:
            _probe(root)
            outcome.append(None)
        except BaseException as e:  # reported by the caller's thread
            outcome.append(e)
        finally:
            gcsfs_log.removeFilter(mute)

    gcsfs_log.addFilter(mute)

    thread = threading.Thread(target=probe, name="nnx_momentum gs:// check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise TimeoutError(
            f"Checkpointer: no answer from {endpoint} for {str(root)!r} within {timeout_s:g} s; "
            "check the network (and STORAGE_EMULATOR_HOST for an emulator) and the credentials."
        )
    error = outcome[0]
    if error is None:
        return
    reason = _reason(error)
    code = getattr(error, "code", None)
    login = (
        "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
        "to a service-account key file"
    )
    if code == 401 or "credentials" in type(error).__name__.lower():
        raise PermissionError(
            f"Checkpointer: no valid Google Cloud credentials for {str(root)!r} ({reason}); "
            f"{login}."
        ) from None
    if code == 403 or str(error).startswith("Forbidden"):
        raise PermissionError(
            f"Checkpointer: the credentials may not write {str(root)!r} ({reason}); grant them "
            f"write access to the bucket (roles/storage.objectAdmin), or {login}."
        ) from None
    if isinstance(error, FileNotFoundError):
        raise FileNotFoundError(
            f"Checkpointer: the bucket of {str(root)!r} does not exist ({reason}); create it "
            "(gcloud storage buckets create) or fix the URL."
        ) from None
    raise ConnectionError(
        f"Checkpointer: cannot write {str(root)!r} through {endpoint} ({reason}); check the "
        "network, the URL and the credentials."
    ) from None


def _step_dir(root: epath.Path, step: int) -> epath.Path:
    return root / str(step)  # orbax's standard step name format: the bare number


def committed(root: epath.Path, step: int) -> bool:
    """Whether ``step`` under ``root`` carries orbax's commit marker.

    Args:
      root: the checkpoint root.
      step: the step.

    Returns:
      ``True`` once the step's ``commit_success.txt`` is written.

    Example:
      >>> import tempfile
      >>> from etils import epath
      >>> from nnx_momentum.checkpoint.location import committed
      >>> with tempfile.TemporaryDirectory() as d:
      ...     committed(epath.Path(d), 3)
      False
    """
    return (_step_dir(root, step) / _COMMIT_FILE).exists()


def remove_uncommitted(
    root: epath.Path, step: int, *, settle_s: float = 0.5, timeout_s: float = 15.0
) -> list[str]:
    """Deletes what a failed save of ``step`` left: its uncommitted folder, its temporaries.

    A committed step is never touched. TensorStore's own threads may still be
    finishing writes of the failed save (and re-creating folders), so the
    removal is repeated until the folder stays gone for ``settle_s`` seconds.

    Args:
      root: the checkpoint root.
      step: the step whose save failed.
      settle_s: how long the folder must stay gone.
      timeout_s: give up (leaving what is left) after this long.

    Returns:
      The names removed.

    Example:
      >>> import tempfile
      >>> from etils import epath
      >>> from nnx_momentum.checkpoint.location import remove_uncommitted
      >>> with tempfile.TemporaryDirectory() as d:
      ...     (epath.Path(d) / "4" / "model").mkdir(parents=True)
      ...     remove_uncommitted(epath.Path(d), 4, settle_s=0.0)
      ['4']
    """
    removed: set[str] = set()
    deadline = time.monotonic() + timeout_s
    gone_since: float | None = None
    while root.exists() and time.monotonic() < deadline:
        step_dir = _step_dir(root, step)
        leftovers = [step_dir] if step_dir.exists() and not committed(root, step) else []
        leftovers += [e for e in root.iterdir() if e.name.startswith(f"{step}{_TMP_SUFFIX}")]
        if not leftovers:
            now = time.monotonic()
            gone_since = now if gone_since is None else gone_since
            if now - gone_since >= settle_s:
                break
            time.sleep(min(0.1, settle_s))
            continue
        gone_since = None
        for entry in leftovers:
            try:
                entry.rmtree()
                removed.add(entry.name)
            except OSError:  # a write landed meanwhile ("Directory not empty"): again
                time.sleep(0.05)
    return sorted(removed)


def saved_metrics(root: epath.Path, step: int) -> dict[str, Any] | None:
    """The ``metrics`` recorded in ``step``'s JSON item, without orbax (``None`` if none).

    Steps written before metrics went into orbax's own ``metrics`` item still
    carry them in the JSON item: retention ranks them by these.

    Args:
      root: the checkpoint root.
      step: a committed step.

    Returns:
      The metrics dict, or ``None`` when the step has none or its item cannot be read.

    Example:
      >>> import tempfile
      >>> from etils import epath
      >>> from nnx_momentum.checkpoint.location import saved_metrics
      >>> with tempfile.TemporaryDirectory() as d:
      ...     print(saved_metrics(epath.Path(d), 1))
      None
    """
    try:
        meta = json.loads((_step_dir(root, step) / "meta" / "metadata").read_text())
    except (OSError, ValueError):
        return None
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    return metrics if isinstance(metrics, dict) else None
