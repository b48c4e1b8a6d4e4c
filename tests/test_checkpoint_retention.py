"""Retention survives a restart: ``best_n`` ranks the steps of earlier processes too.

README.md, "Checkpoint and resume" ("Retention"): each step's metrics are persisted
with it (orbax's ``metrics`` item) and read back by a new Checkpointer, so the best
steps of a run are still kept after a resume in a new process, and the newest step
is never deleted. Steps written before metrics went into orbax's item are ranked by
the metrics of their JSON item; a step of unknown rank is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import nnx_momentum as nm
from nnx_momentum.checkpoint import Checkpointer

SCRIPTS = Path(__file__).parent / "_ckpt_scripts"
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180
BEST = dict(best_n=2, best_metric="loss", best_mode="min", max_to_keep=1)


def _scored(directory: Path, start: int, *losses: float) -> list[int]:
    """A new process saves ``losses`` from step ``start``; the steps it leaves on disk."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "worker.py"), "scored", str(directory), str(start)]
        + [str(x) for x in losses],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _on_disk(directory: Path) -> list[int]:
    with Checkpointer(directory) as ckpt:
        return ckpt.all_steps()


@pytest.mark.slow
def test_best_steps_survive_a_new_process(tmp_path):
    directory = tmp_path / "ckpt"
    # losses 5, 1, 4, 0.5: the best two are steps 2 and 4, and 4 is the newest
    assert _scored(directory, 1, 5, 1, 4, 0.5) == [2, 4]
    # a new process: step 5 (loss 3) is the newest; 2 and 4 are still the best
    assert _scored(directory, 5, 3) == [2, 4, 5]
    assert _on_disk(directory) == [2, 4, 5]
    # and another: 6 (loss 0.1) and 4 are now the best; 6 is also the newest
    assert _scored(directory, 6, 0.1) == [4, 6]
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
    with Checkpointer(directory) as ckpt:
        assert ckpt.restore(model, nm.MomentumOptimizer(model, lr=0.1), step=4) == 4
        assert ckpt.metadata(4)["metrics"] == {"loss": 0.5}
    np.testing.assert_array_equal(model.kernel[...], np.full((3, 4), 4.0))


def _save(directory: Path, losses: dict[int, float], **options) -> None:
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1)
    with Checkpointer(directory, **options) as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, model, opt, metrics={"loss": loss})


def test_best_n_across_instances_in_one_process(tmp_path):
    _save(tmp_path, {1: 5.0, 2: 1.0, 3: 4.0, 4: 0.5}, **BEST)
    assert _on_disk(tmp_path) == [2, 4]
    _save(tmp_path, {5: 3.0}, **BEST)
    assert _on_disk(tmp_path) == [2, 4, 5]


def test_steps_with_metrics_in_the_json_item_only_are_ranked(tmp_path):
    # Written before the metrics item existed: no best_n, so orbax wrote no metrics item.
    _save(tmp_path, {1: 5.0, 2: 1.0, 3: 4.0, 4: 0.5})
    assert not any((tmp_path / str(s) / "metrics").exists() for s in range(1, 5))
    _save(tmp_path, {5: 3.0}, **BEST)
    assert _on_disk(tmp_path) == [2, 4, 5]


def test_steps_of_unknown_rank_are_kept(tmp_path):
    _save(tmp_path, {1: 5.0, 2: 1.0}, **BEST)
    for step in (1, 2):  # lose both records of step 1's metrics
        shutil.rmtree(tmp_path / str(step) / "metrics")
    meta = tmp_path / "1" / "meta" / "metadata"
    data = json.loads(meta.read_text())
    data["metrics"] = None
    meta.write_text(json.dumps(data))
    _save(tmp_path, {3: 4.0, 4: 0.5, 5: 3.0}, **BEST)
    # 1: unknown rank, kept; 2 (json: 1.0) and 4 (0.5): the best; 5: the newest
    assert _on_disk(tmp_path) == [1, 2, 4, 5]


@pytest.mark.parametrize("async_save", [False, True])
def test_a_failed_deletion_of_an_old_step_is_a_warning(tmp_path, async_save):
    """README.md ("Retention"): the save is reported as saved; the failed deletion warns.

    Step 1 is a symbolic link (to a folder elsewhere), which orbax's deletion refuses.
    """
    directory, elsewhere = tmp_path / "ckpt", tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    opt = nm.MomentumOptimizer(model, lr=0.1)
    with Checkpointer(directory, max_to_keep=1, async_save=async_save) as ckpt:
        ckpt.save(1, model, opt)
        ckpt.wait_until_finished()
        shutil.move(directory / "1", elsewhere / "1")
        (directory / "1").symlink_to(elsewhere / "1")
        with pytest.warns(RuntimeWarning, match=r"step 2 was saved .*deleting old steps") as w:
            assert ckpt.save(2, model, opt) is True
            ckpt.wait_until_finished()  # the asynchronous case warns here
        assert len(w) == 1 and "symbolic link" in str(w[0].message)
        assert ckpt.all_steps() == [1, 2]  # nothing lost; the old step is still there
        with pytest.warns(RuntimeWarning, match=r"step 3 was saved"):  # saving goes on
            assert ckpt.save(3, model, opt) is True
            ckpt.wait_until_finished()
        assert ckpt.all_steps()[-1] == 3 and 1 in ckpt.all_steps()
        fresh = nnx.Linear(2, 3, rngs=nnx.Rngs(5))
        assert ckpt.restore(fresh, nm.MomentumOptimizer(fresh, lr=0.1)) == 3


@pytest.mark.parametrize("nan_first", [False, True])
def test_non_finite_metrics_never_rank_as_best(tmp_path, nan_first):
    # NaN and infinities are accepted while best_n is off; a later best_n run ranks them.
    losses = {1: 0.5, 2: float("nan"), 3: float("nan"), 4: float("inf")}
    if nan_first:
        losses = {1: float("nan"), 2: -float("inf"), 3: float("nan"), 4: 0.5}
    _save(tmp_path, losses)
    _save(tmp_path, {5: 3.0}, best_n=1, best_metric="loss", max_to_keep=1)
    best = 1 if not nan_first else 4  # the one finite loss, whatever the order
    assert _on_disk(tmp_path) == [best, 5]


def test_non_finite_metrics_never_rank_as_best_in_max_mode(tmp_path):
    _save(tmp_path, {1: 0.9, 2: float("nan"), 3: float("inf")})
    _save(tmp_path, {4: 0.1}, best_n=1, best_metric="loss", best_mode="max", max_to_keep=1)
    assert _on_disk(tmp_path) == [1, 4]


@pytest.mark.parametrize(
    "other",
    [
        dict(best_n=1, best_metric="loss", best_mode="max", max_to_keep=1),
        dict(best_n=1, best_metric="acc", best_mode="min", max_to_keep=1),
        dict(max_to_keep=1),  # no best_n: only the newest would be kept
    ],
)
def test_a_changed_ranking_is_refused_before_anything_is_deleted(tmp_path, other):
    _save(tmp_path, {1: 0.1, 2: 0.5}, best_n=1, best_metric="loss", max_to_keep=1)
    assert _on_disk(tmp_path) == [1, 2]
    with pytest.raises(ValueError, match=r"best_metric='loss', best_mode='min'.*delete them"):
        Checkpointer(tmp_path, **other)
    assert _on_disk(tmp_path) == [1, 2]
    # The same ranking, or no retention at all (nothing is deleted), is fine.
    _save(tmp_path, {3: 0.3}, best_n=1, best_metric="loss", max_to_keep=1)
    assert _on_disk(tmp_path) == [1, 3]
    _save(tmp_path, {4: 0.9})
    assert _on_disk(tmp_path) == [1, 3, 4]


def test_deleting_the_ranking_record_allows_re_ranking(tmp_path):
    _save(tmp_path, {1: 0.1, 2: 0.5}, best_n=1, best_metric="loss", max_to_keep=1)
    (tmp_path / "_nnx_momentum_ranking.json").unlink()
    _save(tmp_path, {3: 0.3}, best_n=1, best_metric="loss", best_mode="max", max_to_keep=1)
    assert _on_disk(tmp_path) == [2, 3]  # 0.5 is now the best; 3 is the newest
    record = json.loads((tmp_path / "_nnx_momentum_ranking.json").read_text())
    assert record == {"best_metric": "loss", "best_mode": "max"}
