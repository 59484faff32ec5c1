"""train/dagger.py end to end on a tiny dataset: rounds aggregate on-policy episodes that the
policy drove and the expert labelled, and report success per round."""

from __future__ import annotations

import json

import h5py
import numpy as np

from envs.dataset import DemoDataset
from tests.conftest import tiny_model_overrides
from tests.test_bc import FAST, assert_one_clear_error, run


def dagger(tiny_demos, run_dir, *extra):
    return run(
        "train/dagger.py",
        f"data.path={tiny_demos}",
        f"run_dir={run_dir}",
        *FAST,
        *tiny_model_overrides(),
        "data.tasks=[reach]",
        "trainer.steps=4",
        "dagger.rounds=1",
        "dagger.episodes_per_task=2",
        "dagger.steps_per_round=3",
        "dagger.eval_episodes=1",
        "dagger.workers=1",
        *extra,
    )


def test_dagger_round_adds_policy_driven_expert_labelled_episodes(tiny_demos, tmp_path):
    result = dagger(tiny_demos, tmp_path / "d")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "d" / "dagger.json").read_text())
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["beta"] == 0.5
    assert rows[1]["episodes_in_data"] == rows[0]["episodes_in_data"] + 2
    assert (tmp_path / "d" / "round1" / "checkpoints" / "best.pt").exists()
    assert "| 1 | 0.500 |" in (tmp_path / "d" / "dagger.md").read_text()
    onpolicy = sorted((tmp_path / "d" / "onpolicy" / "round1" / "episodes").rglob("*.h5"))
    assert len(onpolicy) == 2
    # the policy drove some steps: there its executed actions are not the expert's labels
    # (labels are clean: the expert's noise only enters the steps the expert drove)
    differs = []
    for path in onpolicy:
        with h5py.File(path, "r") as f:
            differs.append(np.any(np.abs(f["executed_actions"][:] - f["actions"][:]) > 0.3, axis=1))
    assert np.concatenate(differs).mean() > 0.2
    assert DemoDataset(tmp_path / "d" / "data").num_episodes == rows[1]["episodes_in_data"]


def test_bad_dagger_mixture_is_one_clear_error(tiny_demos, tmp_path):
    assert_one_clear_error(dagger(tiny_demos, tmp_path / "e", "dagger.beta=1.5"), "dagger.beta", "[0, 1]")
