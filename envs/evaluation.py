"""Closed-loop evaluation of any policy on the task suite, with fixed seeds.

The policy is anything with ``act_batch(list_of_obs) -> (n, 7) array`` (and optionally
``reset()``): the VLA, a scripted expert wrapper, a ROS 2 client. Episodes of one task run
in ``num_envs`` environments at once so the policy sees batches; each environment works
through its share of the seeds, so results do not depend on timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from envs.instructions import make_instruction
from envs.milestones import MilestoneTracker, describe, first_object_shares, stage_shares
from envs.stats import wilson_interval
from envs.video import annotate, side_by_side
from envs.vocabulary import object_name

EVAL_SEED_BASE = 30_000_000  # disjoint from collection (0+) and expert-evaluation seeds
# Periodic evaluations during training pick best.pt on these seeds, never on the test
# episodes above: picking the best of several checkpoints on the test seeds inflates it.
VALIDATION_SEED_BASE = 40_000_000


class BatchPolicy(Protocol):
    def act_batch(self, observations: list[dict[str, Any]]) -> np.ndarray: ...


@dataclass
class TaskResult:
    task_id: str
    split: str
    successes: list[bool] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    stages: list[dict[str, bool]] = field(default_factory=list)  # per episode: stage -> reached
    first_objects: list[str] = field(default_factory=list)  # per episode: envs.milestones roles

    @property
    def rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else 0.0

    def summary(self) -> dict[str, Any]:
        n, k = len(self.successes), int(sum(self.successes))
        lo, hi = wilson_interval(k, n)
        return {
            "task": self.task_id,
            "split": self.split,
            "episodes": n,
            "successes": k,
            "success_rate": k / n,
            "ci95": [lo, hi],
            "mean_length": float(np.mean(self.lengths)),
            # where episodes stall (V23): the share that reached each stage, and what the
            # gripper went to first (envs/milestones.py)
            "stages_reached": stage_shares(self.stages),
            "first_object": first_object_shares(self.first_objects),
        }


def evaluate(
    policy: BatchPolicy,
    task_ids: list[str],
    episodes: int,
    split: str = "train",
    num_envs: int = 8,
    seed: int = EVAL_SEED_BASE,
    env_kwargs: dict[str, Any] | None = None,
    instruction_fn: Callable[[dict[str, Any], str, np.random.Generator], str] | None = None,
    video_episodes: int = 0,
    frame_text: Callable[[np.ndarray], str] | None = None,
    progress: Callable[[int], None] | None = None,
    env_wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> tuple[list[TaskResult], list[np.ndarray]]:
    """Run ``episodes`` episodes per task; returns per-task results and video frames.

    ``instruction_fn(reset_info, split, rng)`` may replace each episode's instruction (e.g.
    ``swap_target_instruction``, for the language-grounding test); the scene and the
    success criterion stay those of the seed. ``video_episodes`` records
    that many episodes per task with the instruction and ``frame_text(action)`` drawn on.
    ``env_wrapper`` wraps each env, e.g. to show the policy privileged state
    (``eval/probes/expert_imitability.py``); the judging reads the unwrapped simulator.
    """
    env_kwargs = dict(env_kwargs or {})
    results, frames = [], []
    for task_id in task_ids:
        result, task_frames = _evaluate_task(
            policy,
            task_id,
            episodes,
            split,
            num_envs,
            seed,
            env_kwargs,
            instruction_fn,
            video_episodes,
            frame_text,
            progress,
            env_wrapper,
        )
        results.append(result)
        frames += task_frames
    return results, frames


def _evaluate_task(
    policy,
    task_id,
    episodes,
    split,
    num_envs,
    seed,
    env_kwargs,
    instruction_fn,
    video_episodes,
    frame_text,
    progress,
    env_wrapper,
) -> tuple[TaskResult, list[np.ndarray]]:
    result, frames = TaskResult(task_id, split), []
    count = min(num_envs, episodes)
    envs = [
        gym.make(
            task_id,
            instruction_split=split,
            render_mode="rgb_array" if (i == 0 and video_episodes) else None,
            **env_kwargs,
        )
        for i in range(count)
    ]
    if env_wrapper is not None:
        envs = [env_wrapper(env) for env in envs]
    queues = [list(range(i, episodes, count)) for i in range(count)]
    state: list[dict[str, Any] | None] = [None] * count
    trackers = [MilestoneTracker(env.unwrapped.task.name) for env in envs]

    def start(i: int) -> None:
        if not queues[i]:
            state[i] = None
            return
        k = queues[i].pop(0)
        episode_seed = seed + k
        obs, info = envs[i].reset(seed=episode_seed)
        if instruction_fn is not None:
            text = instruction_fn(info, split, np.random.default_rng(episode_seed))
            options = {"task_spec": info["task_spec"], "instruction": text}
            obs, info = envs[i].reset(seed=episode_seed, options=options)
        base = envs[i].unwrapped
        trackers[i].start(base.world, base.task_spec, base.scene_objects)
        state[i] = {"obs": obs, "seed": episode_seed, "steps": 0, "index": k}

    for i in range(count):
        start(i)
    if hasattr(policy, "reset"):
        policy.reset()
    while any(s is not None for s in state):
        active = [i for i in range(count) if state[i] is not None]
        actions = np.asarray(policy.act_batch([state[i]["obs"] for i in active]))
        for i, action in zip(active, actions, strict=True):
            obs, _, terminated, truncated, info = envs[i].step(action)
            trackers[i].update(envs[i].unwrapped.world, envs[i].unwrapped.task_spec)
            s = state[i]
            s["obs"], s["steps"] = obs, s["steps"] + 1
            if i == 0 and s["index"] < video_episodes * count:
                lines = [f"{task_id.split('/')[-1]}: {info['instruction']}"]
                if frame_text is not None:
                    lines.append(frame_text(action))
                lines.append("success" if info["is_success"] else f"step {s['steps']}")
                frames.append(annotate(side_by_side(envs[i].render(), obs["image"]), lines))
            if terminated or truncated:
                result.successes.append(bool(info["is_success"]))
                result.seeds.append(s["seed"])
                result.lengths.append(s["steps"])
                result.stages.append(trackers[i].reached)
                result.first_objects.append(trackers[i].first_object)
                if progress is not None:
                    progress(1)
                start(i)
    for env in envs:
        env.close()
    order = np.argsort(result.seeds)  # episodes finish out of order: list them by seed
    for name in ("successes", "lengths", "stages", "first_objects", "seeds"):
        setattr(result, name, [getattr(result, name)[j] for j in order])
    return result, frames


def swap_target_instruction(info: dict[str, Any], split: str, rng: np.random.Generator) -> str:
    """An instruction for the same task that names a *different* object on the table.

    Success is still judged on the seed's original target, so a policy that follows the
    words should now fail where it succeeded (the language-grounding test, V25).
    """
    spec = info["task_spec"]
    named = {object_name(spec["target_colour"], spec["target_shape"])}
    if "base_colour" in spec:
        named.add(object_name(spec["base_colour"], spec["base_shape"]))
    others = [name for name in info["scene_objects"] if name not in named]
    colour, shape = others[int(rng.integers(len(others)))].split("_")
    return make_instruction({**spec, "target_colour": colour, "target_shape": shape}, split, rng)


def markdown_table(results: list[TaskResult]) -> str:
    """Per-task and overall success with 95% Wilson intervals."""
    lines = ["| task | split | success | 95% CI | episodes |", "|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        lines.append(
            f"| {r.task_id} | {r.split} | {100 * s['success_rate']:.1f}% | "
            f"[{100 * s['ci95'][0]:.1f}, {100 * s['ci95'][1]:.1f}] | {s['episodes']} |"
        )
    by_split: dict[str, list[bool]] = {}
    for r in results:
        by_split.setdefault(r.split, []).extend(r.successes)
    for split, outcomes in by_split.items():
        k, n = int(sum(outcomes)), len(outcomes)
        lo, hi = wilson_interval(k, n)
        lines.append(f"| **all tasks** | {split} | **{100 * k / n:.1f}%** | [{100 * lo:.1f}, {100 * hi:.1f}] | {n} |")
    return "\n".join(lines)


def stage_table(results: list[TaskResult]) -> str:
    """Where the episodes of each task and split stalled: the share that ever reached each
    stage (listed in the expert's order, each tested on its own; see ``envs.milestones``), and
    the object the gripper went to first."""
    lines = ["| task | split | stages ever reached (expert's order) | object gone to first |", "|---|---|---|---|"]
    for r in results:
        s = r.summary()
        funnel, first = describe(s["stages_reached"], s["first_object"])
        lines.append(f"| {r.task_id} | {r.split} | {funnel} | {first} |")
    return "\n".join(lines)
