"""eval/probes/language_probe.py: task classifiers on frozen MiniLM features, tested on paraphrases."""

from __future__ import annotations

import json
import subprocess
import sys

from envs.instructions import TEMPLATES, all_instructions
from tests.conftest import REPO_ROOT


def run_probe(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "eval/probes/language_probe.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_probe_reports_balanced_accuracy_and_confusion_on_every_heldout_wording(tmp_path):
    output = tmp_path / "probe.json"
    result = run_probe("--steps", "3", "--seeds", "1", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["train_wordings"] == sum(len(all_instructions(t, "train")) for t in TEMPLATES)
    for reader in ("attention", "linear"):
        assert 0.0 <= report[reader]["balanced_accuracy"] <= 1.0
        rows = report[reader]["confusion_seed0"]
        assert [sum(row) for row in rows] == [len(all_instructions(t, "heldout")) for t in TEMPLATES]
        wordings = report[reader]["by_wording"]
        assert [(w["task"], w["template"]) for w in wordings] == [
            (t, w) for t in TEMPLATES for w in TEMPLATES[t]["heldout"]
        ]
        assert all(0.0 <= w["accuracy"] <= 1.0 for w in wordings)
    assert "| attention |" in result.stdout and "| linear |" in result.stdout
    assert "| lift | hoist the {target} into the air |" in result.stdout


def test_probing_on_heldout_wordings_is_one_clear_error(tmp_path):
    result = run_probe("--train-split", "heldout", "--output", str(tmp_path / "p.json"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--train-split must be one of train, augmented, augmented_large, got 'heldout'" in result.stderr
