"""Success-rate statistics: Wilson intervals and the paired (same seeds) McNemar test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from envs.stats import mcnemar_exact_p, wilson_interval
from tests.conftest import REPO_ROOT


def test_wilson_interval_stays_inside_zero_one_and_contains_the_rate():
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    lo, hi = wilson_interval(107, 200)
    assert lo < 107 / 200 < hi and hi - lo == pytest.approx(0.137, abs=0.002)


@pytest.mark.parametrize(
    ("gained", "lost", "p"),
    [
        (0, 0, 1.0),
        (5, 5, 1.0),
        (10, 0, 2 / 2**10),  # all ten discordant episodes one way
        (8, 2, 2 * (1 + 10 + 45) / 2**10),  # 0.109: the textbook exact value
        (35, 39, 0.728),  # BC vs BC+PPO on this CPU (docs/results.md)
    ],
)
def test_mcnemar_exact_p_values(gained, lost, p):
    assert mcnemar_exact_p(gained, lost) == pytest.approx(p, abs=1e-3)
    assert mcnemar_exact_p(lost, gained) == mcnemar_exact_p(gained, lost)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact_p(-1, 3)


def write_evaluation(path, seeds, successes, tasks=("VLASandbox/Reach-v0",)):
    rows = [{"task": task, "split": "train", "seeds": seeds, "successes": successes} for task in tasks]
    path.write_text(json.dumps({"per_episode": rows}))
    return path


def run_compare(a, b) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "eval/compare.py"), str(a), str(b)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_compare_counts_gains_and_losses_on_matched_seeds(tmp_path):
    seeds = list(range(10))
    a = write_evaluation(tmp_path / "a.json", seeds, [True] * 2 + [False] * 8)
    # B in another seed order: matching must go by seed, not by position
    b_successes = {s: s >= 2 for s in seeds}  # gains seeds 2-9, loses seeds 0-1
    b = write_evaluation(tmp_path / "b.json", seeds[::-1], [b_successes[s] for s in seeds[::-1]])
    result = run_compare(a, b)
    assert result.returncode == 0, result.stderr
    row = result.stdout.strip().splitlines()[-1]
    assert "| 8 | 2 | 0.109 |" in row and "(2/10)" in row and "(8/10)" in row


def test_compare_pools_the_tasks_of_a_split(tmp_path):
    seeds, tasks = list(range(10)), ("VLASandbox/Reach-v0", "VLASandbox/Lift-v0")
    a = write_evaluation(tmp_path / "a.json", seeds, [False] * 10, tasks)
    b = write_evaluation(tmp_path / "b.json", seeds, [True] * 3 + [False] * 7, tasks)
    result = run_compare(a, b)
    assert result.returncode == 0, result.stderr
    pooled = result.stdout.strip().splitlines()[-1]
    assert pooled.startswith("| **all tasks** | train |") and "(0/20)" in pooled and "(6/20)" in pooled
    assert "| 6 | 0 | 0.0312 |" in pooled


def test_compare_refuses_evaluations_on_different_seeds(tmp_path):
    a = write_evaluation(tmp_path / "a.json", [0, 1], [True, False])
    b = write_evaluation(tmp_path / "b.json", [0, 2], [True, True])
    result = run_compare(a, b)
    assert result.returncode != 0
    assert "different seeds" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("record", sorted((REPO_ROOT / "docs/outcomes").glob("*.json")), ids=lambda p: p.name)
def test_the_kept_per_episode_records_pair_with_themselves(record):
    """docs/outcomes/ keeps runs' per-episode results for later pairings: each must read as
    compare.py reads an evaluation, one result per seed."""
    rows = json.loads(record.read_text())["per_episode"]
    assert rows and all(len(r["seeds"]) == len(set(r["seeds"])) == len(r["successes"]) for r in rows)
    result = run_compare(record, record)
    assert result.returncode == 0, result.stderr
    assert "| 0 | 0 | 1 |" in result.stdout.strip().splitlines()[-1]
