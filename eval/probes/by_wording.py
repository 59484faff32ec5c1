"""Success per instruction template: which wordings a policy follows and which it does not.

    python eval/probes/by_wording.py outputs/<run>/evaluation.json [--out by_wording.md]

Reads an eval/evaluate.py evaluation.json (every ``train/bc.py`` run writes one) and replays
each episode's reset on its seed, which gives the same scene and instruction as in the
evaluation (no policy runs, no physics steps), to learn which template the instruction was
phrased from. It prints per task, split and template the success rate with its 95% Wilson
interval. A split's total hides a wording that fails outright: one GPU policy (2026-12-02) solved
push on one held-out wording in half the episodes and on each training wording in 7% or
less, and lift on "hoist the block into the air" in 7% against 57-68% on the other two
held-out lift wordings (docs/ablations.md).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import gymnasium as gym

import envs  # noqa: F401  (registers the VLASandbox tasks)
from envs.instructions import template_of
from envs.progress import progress as progress_bar
from envs.stats import format_rate
from vla.evaluation.closed_loop import read_outcomes


def success_by_wording(path: Path, progress: bool = True) -> list[dict]:
    """One row per (task, split, template): the template and its episodes' successes."""
    outcomes = read_outcomes(path)
    rows = []
    for (task_id, split), by_seed in progress_bar(outcomes.items(), desc="replaying resets", disable=not progress):
        env = gym.make(task_id, instruction_split=split)
        task = env.unwrapped.task.name
        successes: dict[str, list[bool]] = defaultdict(list)
        for seed, success in by_seed.items():
            _, info = env.reset(seed=seed)
            successes[template_of(task, split, info["instruction"])].append(success)
        env.close()
        rows += [
            {"task": task_id, "split": split, "template": template, "successes": successes[template]}
            for template in sorted(successes)
        ]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| task | split | wording (template) | success [95% CI] (k/n) |", "|---|---|---|---|"]
    for r in rows:
        k, n = sum(r["successes"]), len(r["successes"])
        lines.append(f"| {r['task']} | {r['split']} | {r['template']} | {format_rate(k, n)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluation", type=Path, help="an eval/evaluate.py evaluation.json")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    text = table(success_by_wording(args.evaluation, progress=not args.no_progress))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
