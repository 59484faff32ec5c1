"""One demo episode: a task's env driven by the policy or the scripted expert, one step at a
time, and what each step shows (frames, action tokens, keypoints, success). No web here:
``vla/demo/app.py`` calls it from the connection's own worker thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.camera import key_image_coordinates
from envs.experts import make_expert
from envs.tasks import TASK_CLASSES
from vla.demo.frames import data_url, policy_view
from vla.evaluation.closed_loop import policy_env_kwargs
from vla.inference import PolicyRunner
from vla.training.grounding import read_keypoints

DRIVERS = ("policy", "expert")


@dataclass(frozen=True)
class EpisodeSettings:
    """What the page asked for, checked (vla/demo/requests.py)."""

    task: str  # a name of envs.tasks.TASK_CLASSES
    seed: int  # the scene
    instruction: str  # what the policy is told; the expert reads the scene's task instead
    driver: str  # policy | expert


class DemoEpisode:
    """Resets one env to the settings' scene and steps it with the chosen driver.

    The env is remade only when the task changes: MuJoCo's renderers hold GL contexts bound
    to the thread that made them, so one episode object stays on one thread (its owner's)."""

    def __init__(
        self, runner: PolicyRunner, policy_lock: threading.Lock, session: str, frame_size: int, max_steps: int
    ):
        self.runner, self.lock, self.session = runner, policy_lock, session
        self.frame_size, self.max_steps = frame_size, max_steps
        self.env: Any = None
        self.settings: EpisodeSettings | None = None
        self.expert: Any = None
        self.obs: dict[str, Any] = {}
        self.steps = 0
        self.done = False
        self.success = False
        self.scene_instruction = ""

    def reset(self, settings: EpisodeSettings) -> dict[str, Any]:
        """A new episode; a ValueError (one line, e.g. an instruction the env refuses) leaves the
        previous env usable. Returns the episode's description and its first frame."""
        if self.env is None or self.settings is None or self.settings.task != settings.task:
            self.close()
            limit = min(self.max_steps, TASK_CLASSES[settings.task].max_steps)
            kwargs = policy_env_kwargs(self.runner.policy)
            env_id = TASK_CLASSES[settings.task].env_id
            self.env = gym.make(env_id, render_mode="rgb_array", render_size=self.frame_size, max_steps=limit, **kwargs)
            self.settings = None
        # The scene's own instruction first (what success is judged on), then the same seed
        # with the typed one: the env draws the scene identically either way.
        obs, info = self.env.reset(seed=settings.seed)
        scene_instruction = info["instruction"]
        if settings.driver == "policy":
            obs, info = self.env.reset(seed=settings.seed, options={"instruction": settings.instruction})
        self.settings, self.obs, self.scene_instruction = settings, obs, scene_instruction
        self.steps, self.done, self.success = 0, False, bool(info["is_success"])
        self.expert = make_expert(self.env) if settings.driver == "expert" else None
        with self.lock:
            self.runner.reset(self.session)
        return {
            "type": "episode",
            "task": settings.task,
            "seed": settings.seed,
            "driver": settings.driver,
            "instruction": obs["instruction"],
            "scene_instruction": scene_instruction,
            "max_steps": self.env.unwrapped.max_steps,
            "frame": self._frame(obs, info, None, {}, 0.0),
        }

    def step(self) -> dict[str, Any]:
        """One step of the driver; the frame it leads to, with ``done`` and the result once it ends."""
        if self.settings is None or self.done:
            raise RuntimeError("no running episode: reset first")
        why: dict[str, Any] = {}
        if self.expert is not None:
            action = self.expert(self.obs)
        else:
            with self.lock:
                actions, infos = self.runner.act_batch_with_info([self.obs], [self.session])
            action, why = actions[0], infos[0]
        self.obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.success = bool(info["is_success"])
        self.done = bool(terminated or truncated)
        return self._frame(self.obs, info, action, why, float(reward))

    def _frame(
        self, obs: dict[str, Any], info: dict[str, Any], action: np.ndarray | None, why: dict[str, Any], reward: float
    ) -> dict[str, Any]:
        truth = key_image_coordinates(info["key_positions"])
        read = self._read_keypoints(obs)
        frame: dict[str, Any] = {
            "type": "frame",
            "step": self.steps,
            "image": data_url(self.env.render()),
            "view": data_url(policy_view(obs["image"], read, truth)),
            "action": None if action is None else [round(float(a), 3) for a in action],
            # the tokens the policy decoded (or the expert's action as the tokenizer bins it)
            "tokens": None if action is None else [int(b) for b in self.runner.tokenizer.encode(np.asarray(action))],
            "keypoints": None if read is None else _rounded(read),
            "true_keypoints": _rounded(truth),
            "success": self.success,
            "reward": round(reward, 4),
            "stopped": bool(why.get("stopped", False)),
            "message": why.get("message"),
            "read_as": why.get("read_as"),
            "done": self.done,
        }
        if self.done:
            frame["result"] = {"success": self.success, "steps": self.steps, "reason": self._reason()}
        return frame

    def _reason(self) -> str:
        if self.success:
            return f"solved the scene's task in {self.steps} steps"
        return f"time limit: {self.steps} steps without solving the scene's task"

    def _read_keypoints(self, obs: dict[str, Any]) -> np.ndarray | None:
        """Where the policy's keypoint reader points (K, 2) in image coordinates, or None
        without a reader. Asked the scene's own instruction when the expert drives."""
        if self.runner.policy.keypoint_reader is None:
            return None
        text = obs["instruction"]
        with self.lock, torch.no_grad():
            return read_keypoints(self.runner.policy, obs["image"][None], [text])[0].cpu().numpy()

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env = None


def _rounded(points: np.ndarray) -> list[list[float]]:
    """Image coordinates for JSON: three decimals (float64 first, or float32's 0.001 prints long)."""
    return np.round(np.asarray(points, dtype=np.float64), 3).tolist()
