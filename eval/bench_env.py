"""Env throughput benchmark: ``python eval/bench_env.py [--seconds 5] [--processes 1 2] [--baseline DIR]``.

For each process count it runs that many independent processes at once, each timing
three loops on the same task for ``--seconds``:
  rendered  env.step with random actions (IK + physics + success/reward + 64x64 image),
            resets included
  physics   only the control path (IK + 10 physics substeps), no rendering
  render    only the policy camera render of the current state
and prints steps/s summed over processes and per process, plus rendered/physics. Each loop
also counts steps per CPU second of its process (all threads): on a machine shared with other
jobs that is what a process would reach on a core of its own.
``--baseline DIR`` runs the same benchmark on another checkout's ``envs`` (e.g. ``git
worktree add /tmp/base <commit>``) and this one in turns, ``--rounds`` times each, and prints
every round of both and the median ratio: the machine's load then weighs on both alike.
Where the time of a step goes: ``eval/profile_env.py``.
A benchmark, not a test: numbers vary with machine load; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rate(fn, seconds: float) -> tuple[float, float]:
    """Calls per wall-clock second and per CPU second of this process (all its threads)."""
    fn()  # warm up (first render creates the GL context)
    n, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start), n / (time.process_time() - start_cpu)


def measure(task_id: str, image_size: int, seconds: float, seed: int) -> dict[str, float]:
    import gymnasium as gym
    import numpy as np

    import envs  # noqa: F401  (registers the tasks)

    env = gym.make(task_id, image_size=image_size)
    base = env.unwrapped
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)

    def rendered():
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
        if terminated or truncated:
            env.reset()

    def physics():
        base.actuate(rng.uniform(-1, 1, 7))

    def render():
        base._observation()

    rates = {}
    for name, fn in (("rendered", rendered), ("physics", physics), ("render", render)):
        rates[name], rates[f"{name}_per_cpu_s"] = _rate(fn, seconds)
    return rates


def bench(task: str, image_size: int, seconds: float, processes: list[int]) -> list[dict]:
    """One row per process count: steps/s summed over processes and per process."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold a GL context
    rows = []
    for n in processes:
        with ctx.Pool(n) as pool:
            results = pool.starmap(measure, [(task, image_size, seconds, s) for s in range(n)])
        total = {k: sum(r[k] for r in results) for k in results[0]}
        rows.append({"processes": n, **total, "per_process": {k: v / n for k, v in total.items()}})
    return rows


def bench_checkout(root: Path, args: argparse.Namespace) -> list[dict]:
    """``bench`` in a fresh process (and its pool) importing ``envs`` from checkout ``root``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--task", args.task, "--out", str(out)]
        cmd += ["--image-size", str(args.image_size), "--seconds", str(args.seconds)]
        cmd += ["--processes", *map(str, args.processes)]
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))  # root's envs first
        subprocess.run(cmd, cwd=root, env={**os.environ, "PYTHONPATH": path}, check=True, capture_output=True)
        return json.loads(out.read_text())


def print_rows(rows: list[dict]) -> None:
    print(
        "| processes | rendered steps/s | physics-only steps/s | render-only frames/s "
        "| rendered per process | rendered per process per CPU s | rendered/physics |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['processes']} | {r['rendered']:.0f} | {r['physics']:.0f} | {r['render']:.0f} | "
            f"{r['per_process']['rendered']:.0f} | {r['per_process']['rendered_per_cpu_s']:.0f} | "
            f"{r['rendered'] / r['physics']:.2f} |"
        )


def print_comparison(runs: dict[str, list[list[dict]]]) -> None:
    """Per-process rendered, physics and render rates of every round, then the median ratios;
    the same per CPU second (what a process would reach on a core of its own)."""
    print("| processes | loop | baseline per process (each round) | now per process (each round) | now / baseline |")
    print("|---|---|---|---|---|")
    for i, row in enumerate(runs["now"][0]):
        for loop in ("rendered", "physics", "render", "rendered_per_cpu_s"):
            cells = {
                label: [rounds[i]["per_process"][loop] for rounds in rounds_by_label]
                for label, rounds_by_label in runs.items()
            }
            ratio = statistics.median(cells["now"]) / statistics.median(cells["baseline"])
            shown = {label: ", ".join(f"{v:,.0f}" for v in values) for label, values in cells.items()}
            print(f"| {row['processes']} | {loop} | {shown['baseline']} | {shown['now']} | {ratio:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="VLASandbox/PickPlace-v0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--baseline", type=Path, help="another checkout to benchmark in turns with this one")
    parser.add_argument("--rounds", type=int, default=3, help="runs per checkout with --baseline")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_env.json"))
    args = parser.parse_args()

    print(f"{args.task}, {args.image_size}x{args.image_size}, {args.seconds:g} s per loop")
    if args.baseline is None:
        rows = bench(args.task, args.image_size, args.seconds, args.processes)
        print_rows(rows)
        result: list[dict] | dict = rows
    else:
        runs: dict[str, list[list[dict]]] = {"baseline": [], "now": []}
        for _ in range(args.rounds):
            runs["baseline"].append(bench_checkout(args.baseline.resolve(), args))
            runs["now"].append(bench_checkout(ROOT, args))
        print_comparison(runs)
        result = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
