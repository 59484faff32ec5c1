"""eval/probes/expert_imitability.py: the state-based imitator reads what a policy could read, learns
the expert's tokens, and its closed-loop report carries the milestone funnel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from eval.probes.expert_imitability import collect, train
from vla.tokenizer import ActionTokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_demos_hold_proprio_and_true_positions_with_clean_labels():
    states, labels, expert_success = collect("reach", demos=2, noise=0.1, seed=0)
    assert states.shape[1] == 8 + 6 and len(states) == len(labels)
    assert labels.shape[1] == 7 and np.abs(labels).max() <= 1.0
    assert expert_success == 1.0


def test_the_imitator_fits_the_expert_tokens():
    states, labels, _ = collect("reach", demos=3, noise=0.1, seed=0)
    tokenizer = ActionTokenizer(256)
    targets = torch.as_tensor(tokenizer.encode(labels))

    def accuracy(model) -> float:
        with torch.no_grad():
            return (model(torch.as_tensor(states)).argmax(-1) == targets).float().mean().item()

    assert (
        accuracy(train(states, labels, tokenizer, steps=300, seed=0))
        > accuracy(train(states, labels, tokenizer, steps=1, seed=0)) + 0.3
    )


def test_script_reports_success_and_funnel(tmp_path):
    out = tmp_path / "imitability.json"
    tiny = "--tasks push --demos 2 --steps 5 --episodes 1 --threads 1".split()
    command = [sys.executable, "eval/probes/expert_imitability.py", *tiny, "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())["results"]["push (seed 0)"]
    assert result["episodes"] == 1 and "behind object, low" in result["funnel"]


def test_bad_task_is_one_clear_error():
    command = [sys.executable, "eval/probes/expert_imitability.py", "--tasks", "fly"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown task 'fly'" in done.stderr and "Traceback" not in done.stderr


def test_a_negative_label_sigma_is_one_clear_error():
    command = [sys.executable, "eval/probes/expert_imitability.py", "--label-sigma", "-2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--label-sigma must be >= 0 bins" in done.stderr
