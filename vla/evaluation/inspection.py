"""One episode seen from inside the policy: at every step what it was shown, where its keypoint
reader looked, where its decoder's action tokens attended, and what it decoded; then the
scripted expert on the same seed, for the end-effector path to compare against.

``inspect_episodes`` runs them and writes, per episode, a video, a still and a trajectory
plot (vla/evaluation/overlays.py, vla/evaluation/trajectory_plot.py), and ``inspect.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.camera import key_image_coordinates
from envs.experts import make_expert
from envs.progress import progress as progress_bar
from envs.tasks import TASK_CLASSES
from envs.video import save_video
from vla.evaluation.closed_loop import policy_env_kwargs
from vla.evaluation.overlays import episode_frames, still
from vla.evaluation.trajectory_plot import plot_trajectories, save_png
from vla.inference import PolicyRunner
from vla.introspect import DecoderAttention, heatmap_coordinates, keypoint_heatmaps, vision_attention

RENDER_SIZE = 192  # pixels of the video camera's frame: the size of the enlarged policy view beside it


@dataclass
class StepView:
    """What the policy saw and made of one observation."""

    step: int
    pretty: np.ndarray  # the video camera's frame (RENDER_SIZE, RENDER_SIZE, 3)
    image: np.ndarray  # the policy's own camera image (H, W, 3) uint8
    truth: np.ndarray  # (2, 2) true image coordinates of the target and its destination
    heatmaps: np.ndarray | None  # (K, side, side), each a distribution over the reader's cells
    read: np.ndarray | None  # (K, 2) the soft-argmax of each heatmap (what the decoder was given)
    patches: np.ndarray | None  # (grid, grid) attention on the scene patches (with ``keypoint_attention``: sums to 1)
    keypoint_attention: np.ndarray  # (K,) attention on the keypoint tokens
    shares: dict[str, float]  # share of all the action tokens' attention per kind of token
    tokens: list[int]  # the action tokens decoded from this observation
    success: bool  # whether the task was solved in this state
    message: str | None  # why the policy held still, if it did


@dataclass
class Episode:
    task: str
    seed: int
    instruction: str
    views: list[StepView] = field(default_factory=list)
    path: list[np.ndarray] = field(default_factory=list)  # grip-site positions (m), one per observation
    expert_path: list[np.ndarray] = field(default_factory=list)
    success_step: int | None = None  # first step whose state solved the task
    expert_success_step: int | None = None
    key_positions: np.ndarray = field(default_factory=lambda: np.zeros(6, np.float32))  # target, destination (m)
    layer: str = ""  # whose attention is drawn: "layer i of n"


def run_policy(
    runner: PolicyRunner, env: Any, seed: int, instruction: str | None, bar: Any, layer: int | None = None
) -> Episode:
    """Roll out the policy on ``seed``, decoding every observation (the last one too, so the
    final state is shown with what the policy makes of it) inside the attention recorder."""
    options = {"instruction": instruction} if instruction is not None else None
    obs, info = env.reset(seed=seed, options=options)
    runner.reset()
    episode = Episode(env.unwrapped.task.name, seed, obs["instruction"], key_positions=info["key_positions"])
    done, step = False, 0
    with DecoderAttention(runner.policy, layer=layer) as recorder:
        episode.layer = f"layer {recorder.layer} of {len(runner.policy.blocks)}"
        while True:
            recorder.clear()
            action, why = runner.act_with_info(obs)
            success = bool(info["is_success"])
            episode.views.append(_view(runner, recorder, env, obs, info, action, why, step, success))
            episode.path.append(np.asarray(obs["proprio"][:3], dtype=np.float64))
            if success and episode.success_step is None:
                episode.success_step = step
            if done:
                break
            obs, _, terminated, truncated, info = env.step(action)
            done, step = bool(terminated or truncated), step + 1
            bar.update(1)
    return episode


def _view(runner, recorder, env, obs, info, action, why, step, success) -> StepView:
    policy = runner.policy
    attention = vision_attention(policy, recorder.action_rows())
    heatmaps = keypoint_heatmaps(policy)
    patches = attention["patches"][0].cpu().numpy() if policy.vision is not None else None
    return StepView(
        step=step,
        pretty=env.render(),
        image=obs["image"],
        truth=key_image_coordinates(info["key_positions"]),
        heatmaps=None if heatmaps is None else heatmaps[0].cpu().numpy(),
        read=None if heatmaps is None else heatmap_coordinates(heatmaps)[0].cpu().numpy(),
        patches=patches,
        keypoint_attention=attention["keypoints"][0].cpu().numpy(),
        shares={name: float(share[0]) for name, share in attention["shares"].items()},
        tokens=[int(b) for b in runner.tokenizer.encode(np.asarray(action))],
        success=success,
        message=why.get("message"),
    )


def run_expert(env: Any, episode: Episode) -> None:
    """The scripted expert on the episode's seed (the same scene: the env draws it from the
    seed alone), its grip-site path and first solved step written into ``episode``."""
    obs, info = env.reset(seed=episode.seed)
    expert = make_expert(env)
    step, done = 0, False
    while True:
        episode.expert_path.append(np.asarray(obs["proprio"][:3], dtype=np.float64))
        if info["is_success"] and episode.expert_success_step is None:
            episode.expert_success_step = step
        if done:
            break
        obs, _, terminated, truncated, info = env.step(expert(obs))
        done, step = bool(terminated or truncated), step + 1


def path_gaps(path: np.ndarray, expert: np.ndarray) -> dict[str, float]:
    """How far the policy's grip-site path (T, 3) strayed from the expert's (S, 3), in cm:
    step by step (the shorter path held at its end: timing counts) and from the nearest point
    of the expert's path (shape alone: a slower but faithful path scores 0)."""
    steps = max(len(path), len(expert))
    a = np.concatenate([path, np.repeat(path[-1:], steps - len(path), 0)])
    b = np.concatenate([expert, np.repeat(expert[-1:], steps - len(expert), 0)])
    aligned = np.linalg.norm(a - b, axis=1)
    nearest = np.linalg.norm(path[:, None] - expert[None], axis=2).min(1)
    return {
        "gap_mean_cm": 100 * float(aligned.mean()),
        "gap_max_cm": 100 * float(aligned.max()),
        "off_path_mean_cm": 100 * float(nearest.mean()),
        "final_gap_cm": 100 * float(np.linalg.norm(path[-1] - expert[-1])),
    }


def summary(episode: Episode) -> dict[str, Any]:
    """The episode's numbers for inspect.json: outcome, path gaps, where attention went."""
    views = episode.views
    shares = {name: float(np.mean([v.shares[name] for v in views])) for name in views[0].shares}
    out: dict[str, Any] = {
        "task": episode.task,
        "seed": episode.seed,
        "instruction": episode.instruction,
        "steps": len(views) - 1,
        "success": episode.success_step is not None,
        "success_step": episode.success_step,
        "expert_steps": len(episode.expert_path) - 1,
        "expert_success": episode.expert_success_step is not None,
        "expert_success_step": episode.expert_success_step,
        **path_gaps(np.stack(episode.path), np.stack(episode.expert_path)),
        "attention_layer": episode.layer,
        "attention_shares": shares,  # mean over steps of the action tokens' attention per kind of token
    }
    if views[0].read is not None:  # pixels of the policy's image between read and true keypoints
        size = views[0].image.shape[0]
        errors = np.stack([np.linalg.norm(v.read - v.truth[: len(v.read)], axis=1) for v in views]) * size / 2
        out["keypoint_error_px"] = [float(e) for e in errors.mean(0)]
        out["keypoint_attention"] = [float(a) for a in np.mean([v.keypoint_attention for v in views], 0)]
    if views[0].patches is not None:  # the patch the actions looked at most, on average
        mean = np.mean([v.patches for v in views], 0)
        out["top_patch"] = [int(i) for i in np.unravel_index(mean.argmax(), mean.shape)]
        out["top_patch_share"] = float(mean.max())
    return out


def save_maps(episode: Episode, path: Path) -> Path:
    """Every step's maps as arrays, for a closer look than the frames give: ``heatmaps`` (T, K,
    side, side), ``patch_attention`` (T, grid, grid) and ``keypoint_attention`` (T, K), which
    together sum to 1 per step, ``shares`` (T, kinds) with ``share_names``, ``tokens`` (T, 7),
    ``path`` and ``expert_path`` (grip site, m)."""
    views = episode.views
    arrays: dict[str, Any] = {
        "keypoint_attention": np.stack([v.keypoint_attention for v in views]),
        "share_names": np.array(list(views[0].shares)),
        "shares": np.array([list(v.shares.values()) for v in views]),
        "tokens": np.array([v.tokens for v in views]),
        "path": np.stack(episode.path),
        "expert_path": np.stack(episode.expert_path),
    }
    if views[0].heatmaps is not None:
        arrays["heatmaps"] = np.stack([v.heatmaps for v in views])
    if views[0].patches is not None:
        arrays["patch_attention"] = np.stack([v.patches for v in views])
    np.savez_compressed(path, **arrays)
    return path


def inspect_episodes(
    runner: PolicyRunner,
    task: str,
    seeds: list[int],
    out_dir: Path,
    instruction: str | None = None,
    max_steps: int = 0,
    layer: int | None = None,
    stills: int = 4,
    video_suffix: str = ".mp4",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per seed: the policy's episode (video, still), the expert's on the same seed (the
    trajectory plot); ``inspect.json`` with every episode's summary. ``max_steps`` 0: the
    task's own limit; ``layer``: the decoder block whose attention is drawn (None: the last)."""
    limit = min(max_steps, TASK_CLASSES[task].max_steps) if max_steps else TASK_CLASSES[task].max_steps
    kwargs = policy_env_kwargs(runner.policy)
    env = gym.make(
        TASK_CLASSES[task].env_id, render_mode="rgb_array", render_size=RENDER_SIZE, max_steps=limit, **kwargs
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    bar = progress_bar(total=len(seeds) * limit, desc="inspect", unit="step", disable=not progress)
    try:
        for seed in seeds:
            episode = run_policy(runner, env, seed, instruction, bar, layer)
            bar.update(limit - (len(episode.views) - 1))  # an episode that ended early
            run_expert(env, episode)
            result = summary(episode)
            stem = out_dir / f"{task}_seed{seed}"
            result["video"] = str(save_video(episode_frames(episode), stem.with_suffix(video_suffix), fps=10))
            result["still"] = str(save_png(still(episode, stills), stem.with_name(stem.name + "_still.png")))
            result["trajectory"] = str(save_png(plot_trajectories(episode), stem.with_name(stem.name + "_path.png")))
            result["maps"] = str(save_maps(episode, stem.with_name(stem.name + "_maps.npz")))
            results.append(result)
            bar.write(_line(result))
    finally:
        bar.close()
        env.close()
    (out_dir / "inspect.json").write_text(json.dumps(results, indent=1))
    return results


def _line(result: dict[str, Any]) -> str:
    outcome = f"success at step {result['success_step']}" if result["success"] else f"failed ({result['steps']} steps)"
    expert = f"success at step {result['expert_success_step']}" if result["expert_success"] else "failed"
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["attention_shares"].items())
    return (
        f"seed {result['seed']}: policy {outcome}, expert {expert}; path {result['gap_mean_cm']:.1f} cm from the "
        f"expert's on average step by step, {result['off_path_mean_cm']:.1f} cm from its path; attention: {shares}"
    )
