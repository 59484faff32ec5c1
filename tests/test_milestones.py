"""Episode stages from the simulator state: the expert passes them all, in order; an arm
that never moves reaches none."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.milestones import STAGES, MilestoneTracker


def run_episode(task: str, seed: int, act) -> dict[str, bool]:
    env = gym.make(envs.TASKS[list(STAGES).index(task)], image_size=32)
    base = env.unwrapped
    tracker = MilestoneTracker(task)
    obs, _ = env.reset(seed=seed)
    expert = envs.make_expert(env)
    tracker.start(base.world, base.task_spec)
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(act(expert, obs))
        tracker.update(base.world, base.task_spec)
        done = terminated or truncated
    env.close()
    return tracker.reached


@pytest.mark.parametrize("task", list(STAGES))
def test_the_expert_reaches_every_stage(task):
    reached = run_episode(task, seed=3, act=lambda expert, obs: expert(obs))
    assert list(reached) == [*STAGES[task], "success"]
    assert all(reached.values()), reached


@pytest.mark.parametrize("task", ["push", "pick_place"])
def test_an_arm_that_stays_still_reaches_no_stage(task):
    reached = run_episode(task, seed=3, act=lambda expert, obs: np.zeros(7, dtype=np.float32))
    assert not any(reached.values()), reached


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task 'fly'"):
        MilestoneTracker("fly")
