"""Scripted-expert success rates: ``python eval/expert_success.py --episodes 200``.

Runs every task's expert on seeds disjoint from collection seeds, in parallel processes,
and prints a markdown table with 95% Wilson intervals (also written as JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

EVAL_SEED_BASE = 20_000_000


def run_seeds(task_id: str, seeds: list[int], noise: float) -> list[tuple[int, bool, int]]:
    import gymnasium as gym

    import envs

    env = gym.make(task_id)
    results = []
    for seed in seeds:
        expert = envs.make_expert(env, noise_std=noise, seed=seed)
        obs, info = env.reset(seed=seed)
        steps, done = 0, False
        while not done:
            obs, _, terminated, truncated, info = env.step(expert(obs))
            steps += 1
            done = terminated or truncated
        results.append((seed, bool(info["is_success"]), steps))
    return results


def main() -> None:
    import envs
    from envs.stats import format_rate

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=200, help="episodes per task")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1], help="expert noise levels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/expert_success.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    table: dict[str, dict[str, list]] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = {}
        for noise in args.noise:
            for task_id in envs.TASKS:
                seeds = [EVAL_SEED_BASE + i for i in range(args.episodes)]
                chunks = [seeds[i :: args.workers * 2] for i in range(args.workers * 2)]
                for chunk in chunks:
                    jobs[pool.submit(run_seeds, task_id, chunk, noise)] = (task_id, noise)
        for future, (task_id, noise) in jobs.items():
            table.setdefault(f"{noise}", {}).setdefault(task_id, []).extend(future.result())
    seconds = time.perf_counter() - start

    print(f"| task | {' | '.join(f'expert noise {n}' for n in args.noise)} | mean steps |")
    print(f"|---|{'---|' * len(args.noise)}---|")
    for task_id in envs.TASKS:
        cells = []
        for noise in args.noise:
            rows = table[f"{noise}"][task_id]
            cells.append(format_rate(sum(r[1] for r in rows), len(rows)))
        steps = [r[2] for r in table[f"{args.noise[0]}"][task_id] if r[1]]
        print(f"| {task_id} | {' | '.join(cells)} | {sum(steps) / max(len(steps), 1):.0f} |")
    failures = {n: {t: [r[0] for r in rows if not r[1]] for t, rows in by_task.items()} for n, by_task in table.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"episodes": args.episodes, "seconds": seconds, "failed_seeds": failures}, indent=1))
    print(f"\n{args.episodes} episodes per task and noise level, {seconds:.0f} s; failed seeds in {args.out}")


if __name__ == "__main__":
    main()
