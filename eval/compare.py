"""Paired comparison of two evaluations on the same seeds (e.g. BC vs BC+PPO):

    python eval/compare.py outputs/eval_bc/evaluation.json outputs/eval_ppo/evaluation.json

Both files are eval/evaluate.py outputs, or the per-episode records in docs/outcomes/ (the
same ``per_episode`` rows, kept in the repository because run directories do not outlive a
machine: a later run can still be paired with them). Episodes are matched by (task, split, seed); per
task and split it prints both success rates, how many episodes B solved that A did not
(gained) and the reverse (lost), and the exact McNemar p-value of that split; then, per
split with several tasks, the same pooled over all of them (every episode is its own pair).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from envs.stats import format_rate, mcnemar_exact_p
from vla.evaluation.closed_loop import Outcomes, read_outcomes


def compare(a: Outcomes, b: Outcomes) -> list[dict]:
    """One row per (task, split) present in both; each must have run the same seeds."""
    common = [key for key in a if key in b]
    if not common:
        raise SystemExit(f"error: no task and split in common: {sorted(a)} vs {sorted(b)}")
    rows = []
    for task, split in common:
        before, after = a[(task, split)], b[(task, split)]
        if set(before) != set(after):
            raise SystemExit(
                f"error: {task} {split}: the evaluations ran different seeds "
                f"({len(before)} vs {len(after)} episodes); rerun with the same episodes and seeds"
            )
        seeds = sorted(before)
        gained = sum(after[s] and not before[s] for s in seeds)
        lost = sum(before[s] and not after[s] for s in seeds)
        rows.append(
            {
                "task": task,
                "split": split,
                "episodes": len(seeds),
                "a": sum(before.values()),
                "b": sum(after.values()),
                "gained": gained,
                "lost": lost,
                "p_value": mcnemar_exact_p(gained, lost),
            }
        )
    return rows


def pool_tasks(rows: list[dict]) -> list[dict]:
    """One "all tasks" row per split that holds more than one task: counts summed, p anew."""
    pooled = []
    for split in dict.fromkeys(r["split"] for r in rows):
        group = [r for r in rows if r["split"] == split]
        if len(group) < 2:
            continue
        total = {k: sum(r[k] for r in group) for k in ("episodes", "a", "b", "gained", "lost")}
        pooled.append({"task": "**all tasks**", "split": split, **total})
        pooled[-1]["p_value"] = mcnemar_exact_p(total["gained"], total["lost"])
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="evaluation.json of policy A (e.g. the BC start)")
    parser.add_argument("b", type=Path, help="evaluation.json of policy B, same seeds")
    args = parser.parse_args()
    rows = compare(read_outcomes(args.a), read_outcomes(args.b))
    rows += pool_tasks(rows)
    print("| task | split | A | B | B gained | B lost | McNemar exact p |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["episodes"]
        print(
            f"| {r['task']} | {r['split']} | {format_rate(r['a'], n)} | {format_rate(r['b'], n)} "
            f"| {r['gained']} | {r['lost']} | {r['p_value']:.3g} |"
        )


if __name__ == "__main__":
    main()
