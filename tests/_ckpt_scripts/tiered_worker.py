"""Subprocess worker for tests/test_checkpoint_tiered.py: a training loop on two tiers.

Usage: tiered_worker.py LOCAL PERSISTENT STEPS OUT PACE_S

Resumes from the newest step of either tier (or starts at 0), trains ``common.Net``
to STEPS, calling ``save`` every step (the local tier keeps every LOCAL_EVERY-th step,
the persistent one every PERSISTENT_EVERY-th), prints ``STEP n`` after each save and
sleeps PACE_S seconds (so a parent can kill it mid-run), then writes the final arrays
to OUT (``-``: none) and prints ``{"start": ..., "tier": ...}`` as its last line.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import numpy as np  # noqa: E402

import nnx_momentum as nm  # noqa: E402

LOCAL_EVERY, PERSISTENT_EVERY = 2, 10


def tiers(local: str, persistent: str) -> nm.TieredCheckpointer:
    return nm.TieredCheckpointer(
        local,
        persistent,
        local_options=nm.CheckpointOptions(save_interval_steps=LOCAL_EVERY, max_to_keep=2),
        persistent_options=nm.CheckpointOptions(
            save_interval_steps=PERSISTENT_EVERY, max_to_keep=2
        ),
    )


def main(local: str, persistent: str, steps: str, out: str, pace_s: str) -> None:
    model = common.Net()
    opt = common.make_optimizer("opt", model)
    with tiers(local, persistent) as ckpt:
        start = ckpt.restore(model, opt) or 0
        tier = ckpt.tier_of(start) if start else None
        for i in range(start, int(steps)):
            common.train_step("opt", model, opt, i)
            ckpt.save(i + 1, model, opt, extra={"next_batch": i + 1})
            print(f"STEP {i + 1}", flush=True)
            time.sleep(float(pace_s))
    if out != "-":
        np.savez(out, **common.flat_arrays(model, opt))
    print(json.dumps({"start": start, "tier": tier}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
