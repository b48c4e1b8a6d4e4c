"""Run the nnx_momentum benchmark suite and write a markdown table and a PNG chart.

Each comparison runs in its own subprocess, so the candidates it compares share
one process, one warm-up and one load level, and the comparisons do not disturb
each other's caches or allocators (``--smoke`` runs them all in one process).
Results land in ``<out>/latest.md`` and ``<out>/latest.png``.

    python benchmarks/run.py               # full suite (a few minutes on a 2-core CPU)
    python benchmarks/run.py --smoke       # every benchmark at tiny sizes, seconds
    python benchmarks/run.py --only overhead bandwidth
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BENCHMARKS = {
    "overhead": "per-step overhead of a tiny MLP train step: make_train_step (both faces) vs "
    "flax's nnx.jit, nnx.cached_partial, a donated pure jax.jit floor, braintools, torch",
    "bandwidth": "optimizer update alone (grads given), 1M/8M/32M params, few vs hundreds of "
    "leaves, GB/s and ratio to a same-size memcpy; XLA fusion check",
    "memory": "compiled peak memory of a train step vs params+grads+velocity; bf16 velocity "
    "saving and time cost",
    "checkpoint": "Checkpointer save/restore of a 128 MB state vs bare orbax and np.save of the "
    "same arrays; async save blocking time; which orbax settings are fastest",
    "scaling": "train-step time as the parameter count grows (log-log plot, fitted slope)",
    "sharding": "shard_state_over (ZeRO-1) on 8 simulated devices: velocity and compiled "
    "memory per device, step time, same numbers",
    "tiers": "two checkpoint tiers (TieredCheckpointer) vs one on the digits job: time the loop "
    "blocks per local and per persistent save, steps lost after kill -9 at a random step",
}
# Environment a benchmark's process needs before jax is imported; such a benchmark
# always runs in a process of its own (also with --smoke).
ENV = {
    # Single-threaded Eigen: with multi-threaded matmuls, 8 simulated devices on a few
    # cores can starve the shared thread pool while the others wait in a collective
    # (an XLA:CPU rendezvous deadlock).
    "sharding": {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false"
    }
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description=__doc__.split("\n\n")[0]
        + "\n\nBenchmarks:\n"
        + "\n".join(f"  {name:<11} {text}" for name, text in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run with the repository root on PYTHONPATH or from the repository root. "
        "Timings on a shared machine are noisy: compare the ratios, which are measured side by "
        "side in one process, rather than absolute times across runs.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and few iterations: checks the suite runs, in seconds",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "benchmarks", "results"),
        help="results directory (default: benchmarks/results)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG chart (matplotlib)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds allowed per benchmark process (default 900)",
    )
    parser.add_argument("--worker", nargs="+", choices=list(BENCHMARKS), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _worker(names: list[str], smoke: bool, directory: str) -> None:
    from benchmarks._common import environment

    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        result = module.run(smoke)
        result["seconds"] = time.perf_counter() - t0
        result["environment"] = environment()
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=1)


def _spawn(names: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Runs ``names`` in one fresh Python process; returns their results by name."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *names, "--json", args.tmp]
    if args.smoke:
        cmd.append("--smoke")
    env: dict[str, str] = dict(os.environ)
    for name in names:
        env.update(ENV.get(name, {}))
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout
    )
    elapsed = time.perf_counter() - t0
    results = {}
    for name in names:
        path = os.path.join(args.tmp, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
        else:
            tail = (proc.stdout + proc.stderr)[-4000:]
            error = f"exit code {proc.returncode}:\n{tail}"
            results[name] = {"title": name, "error": error, "seconds": elapsed}
    return results


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|")


def render_markdown(results: dict[str, dict[str, Any]], smoke: bool) -> str:
    env: dict[str, Any] = next(
        (r["environment"] for r in results.values() if "environment" in r), {}
    )
    lines = [
        "# nnx_momentum benchmarks" + (" (smoke sizes: not meaningful)" if smoke else ""),
        "",
        f"Run {datetime.datetime.now().isoformat(timespec='seconds')} with "
        + ", ".join(f"{k} {v}" for k, v in env.items())
        + ". Command: `python benchmarks/run.py"
        + (" --smoke" if smoke else "")
        + "`.",
        "",
        "## Targets",
        "",
        "| benchmark | target | measured | met |",
        "|---|---|---|---|",
    ]
    for r in results.values():
        for c in r.get("checks", []):
            ok = {True: "yes", False: "**no**", None: "n/a"}[c["ok"]]
            lines.append(
                f"| {_cell(c['name'])} | {_cell(c['target'])} | {_cell(c['value'])} | {ok} |"
            )
    for name, r in results.items():
        lines += ["", f"## {r.get('title', name)}", ""]
        if "error" in r:
            lines += ["```", r["error"], "```"]
            continue
        lines.append("| " + " | ".join(map(_cell, r["columns"])) + " |")
        lines.append("|" + "---|" * len(r["columns"]))
        for row in r["rows"]:
            lines.append("| " + " | ".join(map(_cell, row)) + " |")
        for table in r.get("tables", []):
            lines += ["", f"**{table['title']}**", ""]
            lines.append("| " + " | ".join(map(_cell, table["columns"])) + " |")
            lines.append("|" + "---|" * len(table["columns"]))
            for row in table["rows"]:
                lines.append("| " + " | ".join(map(_cell, row)) + " |")
        if r.get("notes"):
            lines.append("")
            lines += [f"- {n}" for n in r["notes"]]
        lines.append(f"- ({r.get('seconds', 0):.0f} s)")
    return "\n".join(lines) + "\n"


def render_png(results: dict[str, dict[str, Any]], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no PNG written."
    plots = [(name, r) for name, r in results.items() if r.get("plot")]
    if not plots:
        return None
    fig, axes = plt.subplots(len(plots), 1, figsize=(11, 3.6 * len(plots)), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], plots, strict=False):
        p = r["plot"]
        if p["kind"] == "barh":
            ax.barh(range(len(p["labels"])), p["values"], color="tab:blue")
            ax.set_yticks(range(len(p["labels"])), [str(s)[:70] for s in p["labels"]], fontsize=7)
            ax.invert_yaxis()
            if p.get("log"):
                ax.set_xscale("log")
            if p.get("vline") is not None:
                ax.axvline(p["vline"], color="tab:red", ls="--", lw=1)
            ax.set_xlabel(p["xlabel"])
        elif p["kind"] == "lines":
            for label, xs, ys in p["series"]:
                ax.plot(xs, ys, marker="o", label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(p["xlabel"])
            ax.set_ylabel(p["ylabel"])
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
        ax.set_title(r.get("title", name), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.worker:
        _worker(args.worker, args.smoke, args.json)
        return 0
    os.makedirs(args.out, exist_ok=True)
    names = args.only or list(BENCHMARKS)
    results: dict[str, dict[str, Any]] = {}
    # One process per comparison; at smoke sizes one process for all (start-up dominates),
    # except those that need their own environment (ENV).
    if args.smoke:
        shared = [name for name in names if name not in ENV]
        groups = ([shared] if shared else []) + [[name] for name in names if name in ENV]
    else:
        groups = [[name] for name in names]
    with tempfile.TemporaryDirectory(prefix="nnx_momentum_bench_") as args.tmp:
        for group in groups:
            print(f"[{' '.join(group)}] running ...", flush=True)
            try:
                results.update(_spawn(group, args))
            except subprocess.TimeoutExpired:
                for name in group:
                    results[name] = {"title": name, "error": f"timed out after {args.timeout} s"}
            for name in group:
                r = results[name]
                status = "FAILED" if "error" in r else "ok"
                print(f"[{name}] {status} in {r.get('seconds', 0):.1f} s", flush=True)
    md = render_markdown(results, args.smoke)
    md_path = os.path.join(args.out, "latest.md")
    with open(md_path, "w") as f:
        f.write(md)
    print(md)
    if not args.no_plot:
        problem = render_png(results, os.path.join(args.out, "latest.png"))
        print(problem or f"chart: {os.path.join(args.out, 'latest.png')}")
    print(f"table: {md_path}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
