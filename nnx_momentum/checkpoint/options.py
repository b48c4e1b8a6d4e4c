"""``CheckpointOptions``: how a :class:`~nnx_momentum.Checkpointer` saves, keeps and restores.

This module holds the options dataclass and the two orbax objects built from
it: the preservation (retention) policy and the ``CheckpointManagerOptions``.

Metrics survive a restart: with a ``best_metric``, each step's ``metrics`` go
into orbax's own ``metrics`` item, which a new ``CheckpointManager`` reads
back, so ``best_n`` ranks the steps of earlier runs too. A step written before
that (metrics in the JSON item only) is ranked by its JSON item's metrics, and
a step whose metrics cannot be read at all is kept, never deleted by rank.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocp_managers
from orbax.checkpoint import options as ocp_options

from nnx_momentum.checkpoint import location

__all__ = ["RANKING_FILE", "CheckpointOptions", "manager_options", "process_local_options"]

RANKING_FILE = "_nnx_momentum_ranking.json"
"""The file in a checkpoint root recording the ranking that ``best_n`` kept its steps by."""


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """How a :class:`~nnx_momentum.Checkpointer` saves, keeps and restores checkpoints.

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
      save_timeout_secs: how long an asynchronous save may take, from the
        ``save`` call to its commit (default 300 s). A save still unfinished
        then (an unreachable bucket, a hung disk) counts as failed: the next
        call raises ``RuntimeError``, and at interpreter exit the process ends
        with status 1 instead of hanging. Raise it for checkpoints that take
        longer to write.
      process_local: on a multi-process job (``jax.distributed``), each
        process writes its own complete checkpoint into ``directory`` -- a
        path of its own, e.g. a local disk -- and reads it back alone: orbax's
        manager runs over this process only, and every array is saved whole
        (gathered from all processes, ``multihost_utils.process_allgather``),
        so any topology can restore it. ``save``, whose gather is a
        collective, is still called by every process at the same steps;
        ``restore`` is not a collective. Single-process: no effect.
        :class:`~nnx_momentum.TieredCheckpointer` sets it for its local tier.

    Raises:
      ValueError: naming the field, when ``max_to_keep``, ``best_n`` or
        ``save_interval_steps`` is not an int >= 1, ``save_timeout_secs`` is
        not a finite number > 0, ``best_mode`` is neither
        ``'min'`` nor ``'max'``, or ``best_n`` is given without ``best_metric``.

    Example:
      >>> import nnx_momentum as nm
      >>> nm.CheckpointOptions(max_to_keep=3, best_n=2, best_metric="loss").best_mode
      'min'
      >>> nm.CheckpointOptions(best_n=2)
      Traceback (most recent call last):
      ...
      ValueError: CheckpointOptions.best_n needs best_metric, the metrics key that ranks steps.
    """

    max_to_keep: int | None = None
    best_n: int | None = None
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    save_interval_steps: int = 1
    async_save: bool = True
    create: bool = True
    check_hyperparams: bool = True
    save_timeout_secs: float = 300.0
    process_local: bool = False

    def __post_init__(self) -> None:
        timeout = self.save_timeout_secs
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout < math.inf
        ):
            raise ValueError(
                "CheckpointOptions.save_timeout_secs must be a finite number of seconds > 0, "
                f"got {timeout!r}."
            )
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

    def preservation_policy(self, root: epath.Path | None = None) -> Any:
        """The orbax preservation policy these options describe.

        ``max_to_keep`` alone keeps the newest steps (``LatestN``); ``best_n``
        keeps the best steps by ``best_metric`` *and* the newest
        ``max_to_keep`` (at least the newest one). Steps whose metrics are
        unknown are kept.

        With a ``root``, the ranking (``best_metric``, ``best_mode``) is
        recorded in the root's :data:`RANKING_FILE` when ``best_n`` is set, and
        a ranking recorded by an earlier run is checked first: options that
        rank otherwise, or that drop ``best_n`` but keep ``max_to_keep``, would
        delete that run's best steps, so they are refused before anything is
        deleted.

        Args:
          root: the checkpoint root; with it, a step that has no orbax
            ``metrics`` item is ranked by the metrics of its JSON item
            (:func:`nnx_momentum.checkpoint.location.saved_metrics`).

        Returns:
          ``None`` (keep every step), an orbax ``LatestN``, or an
          ``AnyPreservationPolicy`` of a ``LatestN`` and a ``BestN``.

        Raises:
          ValueError: ``root`` holds steps kept by another ranking, which
            these options would delete; the message names both rankings and
            the record file (delete it to re-rank anyway).

        Example:
          >>> import nnx_momentum as nm
          >>> print(nm.CheckpointOptions().preservation_policy())
          None
          >>> type(nm.CheckpointOptions(max_to_keep=2).preservation_policy()).__name__
          'LatestN'
        """
        if root is not None:
            _keep_ranking(self, root)
        if self.best_n is None:
            return None if self.max_to_keep is None else ocp_managers.LatestN(n=self.max_to_keep)
        best: Any = ocp_managers.BestN(
            get_metric_fn=self.rank,
            # BestN keeps the last n after an ascending sort: 'max' sorts ascending.
            reverse=self.best_mode == "min",
            n=self.best_n,
            keep_checkpoints_without_metrics=True,  # unknown rank: never deleted by rank
        )
        if root is not None:
            best = _RankedByJsonItem(best, lambda step: location.saved_metrics(root, step))
        latest = ocp_managers.LatestN(n=self.max_to_keep or 1)  # never delete the newest
        return ocp_managers.AnyPreservationPolicy(policies=[latest, best])

    def rank(self, metrics: Any) -> float:
        """The number ``best_n`` ranks a step by: ``metrics[best_metric]``, worst if unusable.

        A missing, non-numeric or non-finite (NaN, infinite) metric ranks worst
        for either ``best_mode``: it never makes a step one of the best (a run
        without ``best_n`` may have recorded a NaN loss).

        Args:
          metrics: a step's metrics dict.

        Returns:
          The metric as a finite float, or the worst value (``inf`` for
          ``'min'``, ``-inf`` for ``'max'``).

        Example:
          >>> import nnx_momentum as nm
          >>> options = nm.CheckpointOptions(best_n=1, best_metric="loss")
          >>> options.rank({"loss": 0.5}), options.rank({"loss": float("nan")})
          (0.5, inf)
        """
        worst = float("inf") if self.best_mode == "min" else float("-inf")
        try:
            value = float(metrics[self.best_metric])
        except (KeyError, TypeError, ValueError):
            return worst
        return value if math.isfinite(value) else worst


@dataclasses.dataclass(frozen=True)
class _Info:
    """A ``PolicyCheckpointInfo`` with metrics filled in."""

    step: int
    metrics: dict[str, Any] | None
    time: datetime.datetime


@dataclasses.dataclass
class _RankedByJsonItem:
    """``policy``, seeing the JSON item's metrics of steps that have no orbax metrics item."""

    policy: Any
    read_metrics: Callable[[int], dict[str, Any] | None]
    _cache: dict[int, dict[str, Any] | None] = dataclasses.field(default_factory=dict)

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        filled = []
        for info in checkpoints:
            metrics = info.metrics
            if metrics is None:
                if info.step not in self._cache:
                    self._cache[info.step] = self.read_metrics(info.step)
                metrics = self._cache[info.step]
            filled.append(_Info(info.step, metrics, info.time))
        live = {info.step for info in checkpoints}
        for step in [s for s in self._cache if s not in live]:
            del self._cache[step]  # bounded by the steps on disk
        return self.policy.should_preserve(filled, context=context)


def _keep_ranking(options: CheckpointOptions, root: epath.Path) -> None:
    """Refuses options that would delete steps kept by another ranking; records this one."""
    record = root / RANKING_FILE
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):  # none yet (or unreadable): nothing to protect
        saved = None
    saved = saved if isinstance(saved, dict) else None
    mine = {"best_metric": options.best_metric, "best_mode": options.best_mode}
    if options.best_n is None:
        deletes = options.max_to_keep is not None
        if saved and deletes and _has_steps(root):
            raise ValueError(
                f"Checkpointer: the steps in {str(root)!r} were kept as the best by "
                f"best_metric={saved.get('best_metric')!r}, best_mode={saved.get('best_mode')!r}; "
                f"best_n=None with max_to_keep={options.max_to_keep} would delete them. Pass "
                f"the same best_n/best_metric/best_mode, or a new directory; to re-rank anyway, "
                f"delete {str(record)!r}."
            )
        return
    if saved == mine:
        return
    if saved and _has_steps(root):
        raise ValueError(
            f"Checkpointer: the steps in {str(root)!r} were kept as the best by "
            f"best_metric={saved.get('best_metric')!r}, best_mode={saved.get('best_mode')!r}; "
            f"best_metric={options.best_metric!r}, best_mode={options.best_mode!r} would delete "
            "them. Pass the same best_metric and best_mode, or a new directory; to re-rank "
            f"anyway, delete {str(record)!r}."
        )
    if jax.process_index() == 0:  # one writer on a shared root
        record.write_text(json.dumps(mine))


def _has_steps(root: epath.Path) -> bool:
    return root.exists() and any(
        location.committed(root, int(p.name)) for p in root.iterdir() if p.name.isdigit()
    )


def process_local_options(options: CheckpointOptions) -> ocp_options.MultiprocessingOptions | None:
    """orbax's multiprocessing options of a process-local checkpoint, or ``None``.

    ``None`` (orbax's defaults: one checkpoint written by all processes) unless
    ``options.process_local`` is set on a multi-process job; then a manager
    over this process alone (``active_processes``), which is its primary host
    and has barriers of its own (``barrier_sync_key_prefix``).

    Args:
      options: the checkpointer's options.

    Returns:
      An ``orbax.checkpoint.options.MultiprocessingOptions``, or ``None``.

    Example:
      >>> from nnx_momentum.checkpoint.options import CheckpointOptions, process_local_options
      >>> print(process_local_options(CheckpointOptions(process_local=True)))  # one process
      None
    """
    if not options.process_local or jax.process_count() == 1:
        return None
    index = jax.process_index()
    return ocp_options.MultiprocessingOptions(
        primary_host=index,
        active_processes={index},
        barrier_sync_key_prefix=f"nnx_momentum_process_{index}",
    )


def manager_options(
    options: CheckpointOptions, root: epath.Path | None = None
) -> ocp.CheckpointManagerOptions:
    """The ``orbax.checkpoint.CheckpointManagerOptions`` for ``options``.

    Saves exactly the multiples of ``save_interval_steps`` (orbax alone would
    also save the first step) and the step of a coordinated preemption
    (orbax's ``PreemptionCheckpointingPolicy``), retains by
    :meth:`CheckpointOptions.preservation_policy`, writes each step's metrics
    into orbax's ``metrics`` item when there is a ``best_metric`` (so they are
    read back after a restart), and commits a step atomically through a
    commit file.

    Args:
      options: the checkpointer's options.
      root: the checkpoint root (see :meth:`CheckpointOptions.preservation_policy`).

    Returns:
      The orbax manager options.

    Example:
      >>> from nnx_momentum.checkpoint.options import CheckpointOptions, manager_options
      >>> manager_options(CheckpointOptions(async_save=False)).enable_async_checkpointing
      False
    """
    local = process_local_options(options)
    extra = {} if local is None else {"multiprocessing_options": local}
    return ocp.CheckpointManagerOptions(
        **extra,
        save_decision_policy=ocp_managers.AnySavePolicy(
            [
                ocp_managers.FixedIntervalPolicy(options.save_interval_steps),
                ocp_managers.PreemptionCheckpointingPolicy(),
            ]
        ),
        preservation_policy=options.preservation_policy(root),
        # A best_fn makes orbax persist each step's metrics (and read them on reload);
        # the preservation policy above decides what is kept.
        best_fn=options.rank if options.best_metric else None,
        best_mode=options.best_mode,
        create=options.create and local is None,  # a process-local root: the Checkpointer
        enable_async_checkpointing=options.async_save,
        # orbax's own wait for the written files gives up too (the Checkpointer bounds the rest)
        async_options=ocp.AsyncOptions(
            timeout_secs=math.ceil(options.save_timeout_secs),
            # A process-local save creates its folders itself: orbax's asynchronous creation
            # signals other processes under keys shared by the job, not by this manager.
            create_directories_asynchronously=local is None,
        ),
        atomicity_options=ocp_options.AtomicityOptions(mode=ocp_options.AtomicityMode.COMMIT_FILE),
    )
