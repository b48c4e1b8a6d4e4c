"""``CheckpointOptions``: how a :class:`~nnx_momentum.Checkpointer` saves, keeps and restores.

This module holds the options dataclass and the two orbax objects built from
it: the preservation (retention) policy and the ``CheckpointManagerOptions``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers
from orbax.checkpoint import options as ocp_options

__all__ = ["CheckpointOptions", "manager_options"]


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

    Raises:
      ValueError: naming the field, when ``max_to_keep``, ``best_n`` or
        ``save_interval_steps`` is not an int >= 1, ``best_mode`` is neither
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
        """The orbax preservation policy these options describe.

        ``max_to_keep`` alone keeps the newest steps (``LatestN``); ``best_n``
        keeps the best steps by ``best_metric`` *and* the newest
        ``max_to_keep`` (at least the newest one).

        Returns:
          ``None`` (keep every step), an orbax ``LatestN``, or an
          ``AnyPreservationPolicy`` of a ``LatestN`` and a ``BestN``.

        Example:
          >>> import nnx_momentum as nm
          >>> print(nm.CheckpointOptions().preservation_policy())
          None
          >>> type(nm.CheckpointOptions(max_to_keep=2).preservation_policy()).__name__
          'LatestN'
        """
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


def manager_options(options: CheckpointOptions) -> ocp.CheckpointManagerOptions:
    """The ``orbax.checkpoint.CheckpointManagerOptions`` for ``options``.

    Saves exactly the multiples of ``save_interval_steps`` (orbax alone would
    also save the first step), retains by :meth:`CheckpointOptions.preservation_policy`,
    and commits a step atomically through a commit file.

    Args:
      options: the checkpointer's options.

    Returns:
      The orbax manager options.

    Example:
      >>> from nnx_momentum.checkpoint.options import CheckpointOptions, manager_options
      >>> manager_options(CheckpointOptions(async_save=False)).enable_async_checkpointing
      False
    """
    return ocp.CheckpointManagerOptions(
        save_decision_policy=ocp_managers.FixedIntervalPolicy(options.save_interval_steps),
        preservation_policy=options.preservation_policy(),
        create=options.create,
        enable_async_checkpointing=options.async_save,
        atomicity_options=ocp_options.AtomicityOptions(mode=ocp_options.AtomicityMode.COMMIT_FILE),
    )
