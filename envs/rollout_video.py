"""A video of the scripted experts: one episode per task, instruction drawn on the frames."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from envs.collection import CollectConfig
from envs.experts import make_expert
from envs.video import annotate, save_video, side_by_side


def record_expert_video(config: CollectConfig, path: Path, seed_offset: int = 10_000_000) -> Path:
    """Roll out each task's expert once (seeds outside the dataset's) and save a video."""
    from envs import task_ids

    frames = []
    for k, (task, env_id) in enumerate(zip(config.tasks, task_ids(config.tasks), strict=True)):
        env = gym.make(env_id, render_mode="rgb_array", **config.env_config())
        expert = make_expert(env)
        obs, info = env.reset(seed=config.seed + seed_offset + k)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(expert(obs))
            done = terminated or truncated
            status = "success" if info["is_success"] else "running"
            frame = side_by_side(env.render(), obs["image"])
            frames.append(annotate(frame, [f"{task}: {info['instruction']}", status]))
        frames.extend([frames[-1]] * 10)  # hold the final frame
        env.close()
    return save_video(np.stack(frames), path, fps=env.metadata["render_fps"])
