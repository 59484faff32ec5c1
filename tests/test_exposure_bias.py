"""eval/probes/exposure_bias.py: the expert's grasped states, and the teacher-forced vs free-running
gap, which a policy that never reads its earlier tokens cannot have."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import torch

from envs.tasks import task_ids
from eval.probes.exposure_bias import GRASP_HEIGHT, decoding_gap, expert_states
from tests.conftest import REPO_ROOT, TINY_MODEL
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer


def test_grasped_states_are_the_expert_holding_the_target_low():
    env = gym.make(task_ids(["lift"])[0], image_size=32)
    everything, _ = expert_states(env, episodes=1, grasped_only=False)
    held, labels = expert_states(env, episodes=1, grasped_only=True)
    env.close()
    assert 0 < len(held) < len(everything) and labels.shape == (len(held), 7)
    assert all(o["proprio"][2] < GRASP_HEIGHT + 0.01 for o in held)
    assert np.all(labels[:, 6] == labels[0, 6])  # the gripper stays closed while it holds


def test_parallel_decoding_has_no_gap_and_autoregressive_decoding_can():
    env = gym.make(task_ids(["lift"])[0], image_size=32)
    observations, labels = expert_states(env, episodes=1, grasped_only=False)
    env.close()
    tokenizer = ActionTokenizer(256)
    gaps = {}
    for decoding in ("parallel", "autoregressive"):
        torch.manual_seed(0)
        policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "decoding": decoding})).eval()
        gaps[decoding] = decoding_gap(policy, tokenizer, observations, labels)
    for row in gaps["parallel"].values():  # nothing but the prefix feeds a parallel token
        assert row["teacher_forced"] == row["free_running"]
    # an untrained autoregressive policy reads its earlier tokens: feeding its own changes them
    assert any(row["teacher_forced"] != row["free_running"] for row in gaps["autoregressive"].values())


def test_a_missing_checkpoint_is_one_clear_error(tmp_path):
    command = [sys.executable, "eval/probes/exposure_bias.py", "--checkpoint", str(tmp_path / "none")]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no checkpoint at" in done.stderr and "Traceback" not in done.stderr
