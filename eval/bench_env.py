"""Env throughput benchmark: ``python eval/bench_env.py [--seconds 5] [--processes 1 2]``.

For each process count it runs that many independent processes at once, each timing
three loops on the same task for ``--seconds``:
  rendered  env.step with random actions (IK + physics + success/reward + 64x64 image)
  physics   only the control path (IK + 10 physics substeps), no rendering
  render    only the policy camera render of the current state
and prints steps/s summed over processes and per process, plus rendered/physics.
A benchmark, not a test: numbers vary with machine load; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path


def _rate(fn, seconds: float) -> float:
    fn()  # warm up (first render creates the GL context)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


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

    return {"rendered": _rate(rendered, seconds), "physics": _rate(physics, seconds), "render": _rate(render, seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="VLASandbox/PickPlace-v0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_env.json"))
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold a GL context
    rows = []
    for n in args.processes:
        with ctx.Pool(n) as pool:
            results = pool.starmap(measure, [(args.task, args.image_size, args.seconds, s) for s in range(n)])
        total = {k: sum(r[k] for r in results) for k in results[0]}
        rows.append({"processes": n, **total, "per_process": {k: v / n for k, v in total.items()}})

    print(f"{args.task}, {args.image_size}x{args.image_size}, {args.seconds:.0f} s per loop")
    print(
        "| processes | rendered steps/s | physics-only steps/s | render-only frames/s "
        "| rendered per process | rendered/physics |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['processes']} | {r['rendered']:.0f} | {r['physics']:.0f} | {r['render']:.0f} | "
            f"{r['per_process']['rendered']:.0f} | {r['rendered'] / r['physics']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
