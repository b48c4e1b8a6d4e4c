"""``TieredCheckpointer``: a fast local tier saved often, a persistent tier saved rarely.

On a preemptible VM or in Colab, saves to a bucket or Google Drive are slow
and costly, so they are rare, and a preemption loses the work since the last
one. Two tiers split the difference: a *local* tier (the VM's disk,
``/dev/shm``, ``/content``) saved often, cheap to write and gone with the
machine, and a *persistent* tier (``gs://``, Drive) saved rarely, that outlives
it. Each tier is a plain :class:`~nnx_momentum.Checkpointer` -- atomic, async,
with its own :class:`~nnx_momentum.CheckpointOptions` (interval, retention) --
and this class only routes: ``save`` goes to the tiers that are due,
``restore`` reads the newest committed step of either, so a process killed
with ``kill -9`` resumes from the local tier, and a new machine (its local
tier empty or gone) from the persistent one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal

import jax
import numpy as np
from jax.experimental import multihost_utils

from nnx_momentum.checkpoint.checkpointer import Checkpointer
from nnx_momentum.checkpoint.options import CheckpointOptions
from nnx_momentum.checkpoint.resume import ResumeChanges

__all__ = ["TieredCheckpointer"]

Tier = Literal["local", "persistent"]


class TieredCheckpointer:
    """Two :class:`~nnx_momentum.Checkpointer` tiers: local (often) and persistent (rarely).

    ``save`` writes the step to each tier whose ``save_interval_steps`` it is a
    multiple of (to both with ``force=True``), local first; ``restore``,
    ``metadata`` and ``latest_step`` see the union of the two tiers' committed
    steps, and read a step from the local tier when both hold it. A local tier
    that is missing or empty -- a new VM, a new Colab runtime -- simply holds no
    step, so the persistent tier is used. Both tiers are atomic (orbax's commit
    file); a step half-written when the process died is ignored in either.

    What a crash loses: with ``kill -9`` the work since the newest committed
    local step -- at most the local interval, plus the local save that was in
    flight when ``async_save`` is on. With the machine gone: the work since the
    newest persistent step. A SIGTERM with :meth:`save_on_sigterm` saves the
    step it arrives at to the persistent tier, then exits.

    Multi-host (a job joined by ``jax.distributed``): each process writes its
    own local tier, into ``local_dir/process_<i>`` (``i`` =
    ``jax.process_index()``; a per-host disk or a shared one alike), each
    array saved whole (:attr:`CheckpointOptions.process_local`, set here);
    the persistent tier stays one orbax checkpoint written by all processes.
    Every process calls ``save`` at the same steps, and ``restore``,
    ``metadata``, ``all_steps``, ``latest_step`` and ``tier_of`` together:
    they agree on the steps through a collective. A local step counts only
    when *every* process holds it, so all restore the same step; one process
    on a new VM (its local tier gone) makes all read the persistent tier.

    Args:
      local_dir: the local tier's root (a local path; a URL works too); on a
        multi-process job, each process's tier is its ``process_<i>`` folder.
      persistent_dir: the persistent tier's root: a ``gs://`` URL, a mounted
        Drive folder, or another path. Not the same as ``local_dir``, and
        neither inside the other.
      local_options: the local tier's :class:`~nnx_momentum.CheckpointOptions`;
        default ``CheckpointOptions(max_to_keep=2)`` (every step it is called
        with, the last two kept). Its ``process_local`` is set on a
        multi-process job.
      persistent_options: the persistent tier's options; default
        ``CheckpointOptions()`` (every step, all kept) -- set its
        ``save_interval_steps`` to a multiple of the local one.

    Attributes:
      local: the local tier's :class:`~nnx_momentum.Checkpointer`.
      persistent: the persistent tier's :class:`~nnx_momentum.Checkpointer`.

    Raises:
      ValueError: the two directories are the same or nested (both named), or
        either is refused by :class:`~nnx_momentum.Checkpointer`.
      TypeError: an options argument is not a ``CheckpointOptions``.

    Example:
      >>> import tempfile
      >>> from flax import nnx
      >>> import nnx_momentum as nm
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
      >>> local, drive = tempfile.mkdtemp(), tempfile.mkdtemp()
      >>> with nm.TieredCheckpointer(
      ...     local, drive,
      ...     local_options=nm.CheckpointOptions(save_interval_steps=2, max_to_keep=1),
      ...     persistent_options=nm.CheckpointOptions(save_interval_steps=4),
      ... ) as ckpt:
      ...     for step in range(1, 7):
      ...         _ = ckpt.save(step, model, optimizer)
      ...     print(ckpt.local.all_steps(), ckpt.persistent.all_steps(), ckpt.tier_of())
      [6] [4] local
      >>> import shutil; shutil.rmtree(local)  # a new VM: the local tier is gone
      >>> with nm.TieredCheckpointer(local, drive) as ckpt:
      ...     ckpt.restore(model, optimizer), ckpt.tier_of()
      (4, 'persistent')
    """

    def __init__(
        self,
        local_dir: str | os.PathLike[str],
        persistent_dir: str | os.PathLike[str],
        *,
        local_options: CheckpointOptions | None = None,
        persistent_options: CheckpointOptions | None = None,
    ):
        for name, value in (
            ("local_options", local_options),
            ("persistent_options", persistent_options),
        ):
            if value is not None and not isinstance(value, CheckpointOptions):
                raise TypeError(
                    f"TieredCheckpointer: {name} must be a CheckpointOptions or None, got "
                    f"{type(value).__name__}."
                )
        _check_apart(local_dir, persistent_dir)
        local_options = local_options or CheckpointOptions(max_to_keep=2)
        if jax.process_count() > 1:
            local_dir = os.path.join(os.fspath(local_dir), f"process_{jax.process_index()}")
            local_options = dataclasses.replace(local_options, process_local=True)
        self.local = Checkpointer(local_dir, local_options)
        try:
            self.persistent = Checkpointer(persistent_dir, persistent_options)
        except BaseException:
            self.local.close()
            raise

    @property
    def tiers(self) -> dict[Tier, Checkpointer]:
        """The two tiers by name, local first (the order ``save`` and ``restore`` use).

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp()) as ckpt:
          ...     list(ckpt.tiers)
          ['local', 'persistent']
        """
        return {"local": self.local, "persistent": self.persistent}

    # -- context manager / lifetime ------------------------------------------------
    def __enter__(self) -> TieredCheckpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_until_finished(self) -> None:
        """Blocks until both tiers' pending saves are committed.

        Raises:
          RuntimeError: a tier's pending save failed (both tiers are waited for
            first; the message names the tier).

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp()) as ckpt:
          ...     ckpt.wait_until_finished()
        """
        _each(self.tiers, lambda tier: tier.wait_until_finished())

    def close(self) -> None:
        """Closes both tiers (each waits for its pending save). Idempotent.

        Raises:
          RuntimeError: a tier's pending save failed (both are closed anyway).

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> ckpt = nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp())
          >>> ckpt.close(); ckpt.close()
        """
        _each(self.tiers, lambda tier: tier.close())

    # -- listing --------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """The steps saved in either tier, ascending (see :meth:`Checkpointer.all_steps`).

        Returns:
          A sorted list of ints, each once.

        Raises:
          RuntimeError: a tier's last asynchronous save failed.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp()) as ckpt:
          ...     ckpt.all_steps()
          []
        """
        return sorted(set(self._local_steps()) | set(self.persistent.all_steps()))

    def _local_steps(self) -> list[int]:
        """The local tier's steps; on a multi-process job, those every process holds."""
        steps = self.local.all_steps()
        if jax.process_count() == 1:
            return steps
        # A collective: how many steps each process holds, then all of them (padded).
        longest = int(np.max(multihost_utils.process_allgather(np.int32(len(steps)))))
        mine = np.full(max(longest, 1), -1, np.int32)
        mine[: len(steps)] = steps
        held = multihost_utils.process_allgather(mine)
        common = set(held[0].tolist())
        for row in held[1:]:
            common &= set(row.tolist())
        return sorted(step for step in common if step >= 0)

    def latest_step(self) -> int | None:
        """The newest step of either tier, or ``None`` when neither holds one.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp()) as ckpt:
          ...     print(ckpt.latest_step())
          None
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    def tier_of(self, step: int | None = None) -> Tier | None:
        """The tier :meth:`restore` reads ``step`` (default: the newest) from.

        The local tier when it holds the step, else the persistent one. Pending
        saves are committed first.

        Args:
          step: a step; ``None`` means the newest of either tier.

        Returns:
          ``'local'``, ``'persistent'``, or ``None`` when neither tier holds a
          step (with ``step=None``).

        Raises:
          ValueError: ``step`` is in neither tier (both tiers' steps are named).
          RuntimeError: a tier's pending save failed.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp()) as ckpt:
          ...     print(ckpt.tier_of())
          None
        """
        _each(self.tiers, lambda tier: tier.wait_until_finished())
        held: dict[Tier, list[int]] = {
            "local": self._local_steps(),
            "persistent": self.persistent.all_steps(),
        }
        if step is None:
            newest = {name: steps[-1] for name, steps in held.items() if steps}
            if not newest:
                return None
            best = max(newest.values())
            return next(name for name in self.tiers if newest.get(name) == best)
        for name, steps in held.items():
            if step in steps:
                return name
        raise ValueError(
            f"TieredCheckpointer: step {step!r} is in neither tier; local "
            f"{self.local.directory!r} holds {held['local']}, persistent "
            f"{self.persistent.directory!r} holds {held['persistent']}."
        )

    # -- save / restore ---------------------------------------------------------------
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
        """Saves ``step`` to each tier it is due in (local first); see :meth:`Checkpointer.save`.

        Call it once per step: a tier off its interval does nothing, and a
        preemption (:meth:`save_on_sigterm`) turns this call into the final
        save, to the persistent tier. A failure in one tier does not stop the
        other: both are tried, then the failure is raised.

        Args:
          step: the step number, a non-negative int.
          model: the NNX module.
          optimizer: an ``nnx_momentum`` optimizer or a plain ``nnx.Optimizer``.
          metrics: optional ``{name: number}``, passed to both tiers.
          extra: optional JSON-serialisable dict, stored in both tiers.
          force: save to both tiers whatever their intervals (e.g. the last step).

        Returns:
          ``True`` if either tier wrote (or started writing) the step.

        Raises:
          TypeError: ``extra`` or ``metrics`` is not JSON-serialisable (nothing saved).
          ValueError: ``step`` is not a non-negative int (nothing saved), or
            already exists in a tier that is due.
          RuntimeError: a tier's save (synchronous) or its previous one
            (asynchronous) failed; the message names the tier's directory.

        Example:
          >>> import tempfile
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
          >>> opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
          >>> rare = nm.CheckpointOptions(save_interval_steps=100)
          >>> with nm.TieredCheckpointer(
          ...     tempfile.mkdtemp(), tempfile.mkdtemp(), persistent_options=rare
          ... ) as ckpt:
          ...     ckpt.save(7, model, opt), ckpt.save(8, model, opt, force=True)
          ...     ckpt.local.all_steps(), ckpt.persistent.all_steps()
          (True, True)
          ([7, 8], [8])
        """

        def save_to(tier: Checkpointer) -> bool:
            return tier.save(step, model, optimizer, metrics=metrics, extra=extra, force=force)

        saved: list[bool] = []
        if self.persistent.preemption_requested:
            # The final save goes where it outlives the machine; persistent.save then exits.
            try:
                self.local.close()
            except RuntimeError:  # a lost local save must not stop the final one
                pass
            return save_to(self.persistent)
        _each(self.tiers, lambda tier: saved.append(save_to(tier)))
        return any(saved)

    def restore(
        self,
        model: Any,
        optimizer: Any | None = None,
        *,
        step: int | None = None,
        changes: ResumeChanges | None = None,
    ) -> int | None:
        """Restores ``step`` (default: the newest of either tier) from the tier that holds it.

        The local tier is read when it holds the step (it is faster), else the
        persistent one -- also when the local directory is missing or empty.
        See :meth:`Checkpointer.restore` for targets, validation and
        abstract objects; :meth:`tier_of` says which tier that is.

        Args:
          model: the live NNX module.
          optimizer: the live optimizer, or ``None`` to restore the model only.
          step: the step to restore; ``None`` restores the newest.
          changes: what may differ from the checkpoint (:class:`~nnx_momentum.ResumeChanges`).

        Returns:
          The step restored, or ``None`` when neither tier holds a checkpoint.

        Raises:
          ValueError: ``step`` is in neither tier, or the objects do not match
            the checkpoint (the live objects are unchanged).
          RuntimeError: a tier's pending asynchronous save failed.

        Example:
          >>> import tempfile
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
          >>> opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
          >>> with nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp()) as ckpt:
          ...     print(ckpt.restore(model, opt))
          ...     _ = ckpt.save(3, model, opt)
          ...     ckpt.restore(model, opt)
          None
          3
        """
        name = self.tier_of(step)
        if name is None:
            return None
        return self.tiers[name].restore(model, optimizer, step=step, changes=changes)

    def metadata(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON item of ``step`` (default: the newest of either tier), without arrays.

        Args:
          step: the step to read; ``None`` reads the newest.

        Returns:
          The step's JSON item as a dict, or ``None`` when neither tier holds a step.

        Raises:
          ValueError: ``step`` is in neither tier.

        Example:
          >>> import tempfile
          >>> from flax import nnx
          >>> import nnx_momentum as nm
          >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
          >>> opt = nnx.Optimizer(model, nm.momentum(0.1), wrt=nnx.Param)
          >>> with nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp()) as ckpt:
          ...     _ = ckpt.save(5, model, opt, extra={"batch": 640})
          ...     ckpt.metadata()["extra"]
          {'batch': 640}
        """
        name = self.tier_of(step)
        return None if name is None else self.tiers[name].metadata(step)

    # -- preemption -----------------------------------------------------------------------
    def save_on_sigterm(self, *, exit_code: int = 0) -> None:
        """On SIGTERM, the next :meth:`save` saves that step to the persistent tier, then exits.

        The local tier is closed first (its pending save committed); the final
        save goes to the persistent tier, which outlives the machine; then the
        process exits with ``exit_code`` (see :meth:`Checkpointer.save_on_sigterm`).

        Args:
          exit_code: the process exit status after the final save.

        Raises:
          RuntimeError: called outside the main thread.

        Example:
          >>> import tempfile, nnx_momentum as nm
          >>> with nm.TieredCheckpointer(tempfile.mkdtemp(), tempfile.mkdtemp()) as ckpt:
          ...     ckpt.save_on_sigterm()
          ...     ckpt.preemption_requested
          False
        """
        self.persistent.save_on_sigterm(exit_code=exit_code)

    @property
    def preemption_requested(self) -> bool:
        """Whether a SIGTERM arrived since :meth:`save_on_sigterm`."""
        return self.persistent.preemption_requested


def _check_apart(local_dir: str | os.PathLike[str], persistent_dir: str | os.PathLike[str]) -> None:
    """Refuses two tiers in one directory, or one inside the other."""
    a, b = (_comparable(d) for d in (local_dir, persistent_dir))
    if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
        raise ValueError(
            f"TieredCheckpointer: local_dir {os.fspath(local_dir)!r} and persistent_dir "
            f"{os.fspath(persistent_dir)!r} must be two separate directories, neither inside "
            "the other."
        )


def _comparable(directory: str | os.PathLike[str]) -> str:
    text = os.fspath(directory)
    if "://" in text:
        return text.rstrip("/")
    return os.path.realpath(text)


def _each(tiers: Mapping[Tier, Checkpointer], call: Any) -> None:
    """``call(tier)`` for every tier, even after one raised ``RuntimeError``; then raises it."""
    errors: list[str] = []
    for name, tier in tiers.items():
        try:
            call(tier)
        except RuntimeError as e:
            errors.append(f"{name} tier: {e}")
    if errors:
        raise RuntimeError("TieredCheckpointer: " + " | ".join(errors))
