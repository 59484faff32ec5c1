"""Wiring of a trained policy to the task suite: closed-loop success, open-loop token
accuracy on held-out demos (V3), and the reports (JSON, markdown, video)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.evaluation import (
    VALIDATION_SEED_BASE,
    TaskResult,
    evaluate,
    markdown_table,
    stage_table,
    swap_target_instruction,
)
from envs.progress import progress as progress_bar
from envs.tasks import task_ids
from envs.video import save_video
from vla.data import ActionTokenDataset, collate
from vla.inference import PolicyRunner
from vla.policy import VLAPolicy
from vla.tokenizer import ActionTokenizer


def policy_env_kwargs(policy: VLAPolicy) -> dict[str, Any]:
    """Env settings the policy's inputs need: its image size and its cameras."""
    return {"image_size": policy.config.image_size, "cameras": list(policy.config.cameras)}


def success_rate(policy: VLAPolicy, tokenizer: ActionTokenizer, cfg: Any, device: torch.device) -> float:
    """Mean closed-loop success over the configured tasks (train instructions), on the
    validation seeds (it picks best.pt; the final evaluation uses the test seeds)."""
    runner = PolicyRunner(policy, tokenizer, device)
    results, _ = evaluate(
        runner,
        task_ids(list(cfg.data.tasks)),
        cfg.eval.episodes,
        "train",
        num_envs=cfg.eval.num_envs,
        seed=VALIDATION_SEED_BASE,
        env_kwargs=policy_env_kwargs(policy),
    )
    return float(np.mean([s for r in results for s in r.successes]))


@torch.no_grad()
def open_loop_accuracy(
    policy: VLAPolicy,
    tokenizer: ActionTokenizer,
    demos: Any,
    indices: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
) -> dict[str, float]:
    """Greedy-decoded action tokens vs expert labels on held-out demo steps (no env)."""
    policy.eval()
    if len(indices) == 0:
        return {"token_accuracy": float("nan"), "action_l1": float("nan"), "samples": 0}
    dataset = ActionTokenDataset(demos, tokenizer, indices)
    correct, total, l1 = 0, 0, 0.0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        bins = policy.decode(batch)
        correct += (bins == batch["action_bins"]).sum().item()
        total += bins.numel()
        l1 += np.abs(tokenizer.decode(bins.cpu().numpy()) - tokenizer.decode(batch["action_bins"].cpu().numpy())).sum()
    return {"token_accuracy": correct / total, "action_l1": float(l1 / total), "samples": len(dataset)}


def action_text(tokenizer: ActionTokenizer):
    def text(action: np.ndarray) -> str:
        bins = tokenizer.encode(action)
        return "tokens " + " ".join(str(int(b)) for b in bins)

    return text


def run_report(
    policy: VLAPolicy,
    tokenizer: ActionTokenizer,
    device: torch.device,
    tasks: list[str],
    episodes: int,
    splits: list[str],
    num_envs: int,
    out_dir: Path,
    video_episodes: int = 1,
    open_loop: dict[str, float] | None = None,
    progress: bool = True,
    swap: bool = False,
    temperature: float = 0.0,
    use_cache: bool = True,
    env_wrapper: Callable | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Closed-loop evaluation over splits; writes evaluation.json, evaluation.md, rollouts.mp4.
    ``env_wrapper`` wraps every env (``envs.camera.TrueKeypoints``: the keypoint oracle);
    ``precision`` bf16 | fp16 decodes under autocast."""
    runner = PolicyRunner(policy, tokenizer, device, temperature=temperature, use_cache=use_cache, precision=precision)
    all_results: list[TaskResult] = []
    frames: list[np.ndarray] = []
    bar = progress_bar(total=episodes * len(tasks) * len(splits), desc="eval", disable=not progress)
    for split in splits:
        results, split_frames = evaluate(
            runner,
            task_ids(tasks),
            episodes,
            split,
            num_envs=num_envs,
            env_kwargs=policy_env_kwargs(policy),
            video_episodes=video_episodes if split == splits[0] else 0,
            frame_text=action_text(tokenizer),
            progress=bar.update,
            env_wrapper=env_wrapper,
        )
        all_results += results
        frames += split_frames
    bar.close()
    swap_report = language_swap(runner, tasks, episodes, num_envs, all_results) if swap else None
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(all_results)
    report = {
        "tasks": [r.summary() for r in all_results],
        "open_loop": open_loop or {},
        "language_swap": swap_report,
        "per_episode": [
            {"task": r.task_id, "split": r.split, "seeds": r.seeds, "successes": r.successes} for r in all_results
        ],
    }
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=1))
    text = table + "\n\nHow far the episodes got (`envs/milestones.py`):\n\n" + stage_table(all_results)
    if open_loop and open_loop["samples"]:
        text += (
            f"\n\nOpen-loop action-token accuracy on {open_loop['samples']} held-out demo steps: "
            f"{100 * open_loop['token_accuracy']:.1f}% (mean |action error| {open_loop['action_l1']:.3f})"
        )
    if swap_report:
        text += (
            "\n\nLanguage swap (same seeds and scenes, success judged on the originally named target):\n\n"
            + swap_table(swap_report)
        )
    (out_dir / "evaluation.md").write_text(text + "\n")
    print(text)
    if frames:
        save_video(frames, out_dir / "rollouts.mp4")
    return report


def language_swap(
    runner: PolicyRunner, tasks: list[str], episodes: int, num_envs: int, reference: list[TaskResult]
) -> dict[str, Any]:
    """Same seeds and scenes as the ``train`` split, but each instruction names another object
    on the table; success is still judged on the original target (V25)."""
    env_kwargs = policy_env_kwargs(runner.policy)
    swapped, _ = evaluate(
        runner,
        task_ids(tasks),
        episodes,
        "train",
        num_envs=num_envs,
        env_kwargs=env_kwargs,
        instruction_fn=swap_target_instruction,
    )
    original = {r.task_id: r for r in reference if r.split == "train"}
    if not original:  # the reference rates come from the train split on the same seeds
        reference, _ = evaluate(runner, task_ids(tasks), episodes, "train", num_envs=num_envs, env_kwargs=env_kwargs)
        original = {r.task_id: r for r in reference}
    rows = []
    for r in swapped:
        before = original[r.task_id]
        assert before.seeds == r.seeds, "the swap must replay the same seeds"
        rows.append(
            {"task": r.task_id, "episodes": len(r.successes), "original": before.summary(), "swapped": r.summary()}
        )
    return {
        "tasks": rows,
        "original_rate": float(np.mean([s for row in rows for s in original[row["task"]].successes])),
        "swapped_rate": float(np.mean([s for r in swapped for s in r.successes])),
    }


def swap_table(swap: dict[str, Any]) -> str:
    lines = ["| task | original instruction | instruction naming another object | episodes |", "|---|---|---|---|"]
    for row in swap["tasks"]:
        cells = []
        for key in ("original", "swapped"):
            s = row[key]
            cells.append(f"{100 * s['success_rate']:.1f}% [{100 * s['ci95'][0]:.1f}, {100 * s['ci95'][1]:.1f}]")
        lines.append(f"| {row['task']} | {cells[0]} | {cells[1]} | {row['episodes']} |")
    lines.append(
        f"| **all tasks** | **{100 * swap['original_rate']:.1f}%** | **{100 * swap['swapped_rate']:.1f}%** | |"
    )
    return "\n".join(lines)


def final_evaluation(
    policy: VLAPolicy,
    tokenizer: ActionTokenizer,
    cfg: Any,
    device: torch.device,
    demos: Any,
    val_idx: np.ndarray,
    run_dir: Path,
) -> dict[str, Any]:
    open_loop = open_loop_accuracy(policy, tokenizer, demos, val_idx, device)
    report = run_report(
        policy,
        tokenizer,
        device,
        list(cfg.data.tasks),
        cfg.eval.final_episodes,
        list(cfg.eval.splits),
        cfg.eval.num_envs,
        run_dir,
        cfg.eval.video_episodes,
        open_loop,
        progress=cfg.trainer.progress,
        swap=cfg.eval.get("language_swap", False),
    )
    if cfg.eval.robustness_episodes > 0:  # instructions as people type them (eval/robustness.py)
        from envs.rewrites import KINDS
        from vla.evaluation.robustness import robustness_suite, robustness_table

        robustness = robustness_suite(
            PolicyRunner(policy, tokenizer, device),
            list(cfg.data.tasks),
            cfg.eval.robustness_episodes,
            list(KINDS),
            cfg.eval.num_envs,
            policy_env_kwargs(policy),
            cfg.eval.robustness_episodes,
            progress=cfg.trainer.progress,
        )
        (run_dir / "robustness.json").write_text(json.dumps(robustness, indent=1))
        table = robustness_table(robustness)
        (run_dir / "robustness.md").write_text(table + "\n")
        print(table)
        report["robustness"] = robustness
    return report


def held_out_demos(payload: dict[str, Any], dataset: str | None, tasks: list[str]) -> tuple[Any, np.ndarray] | None:
    """The demo dataset a checkpoint trained on (or ``dataset``) and the held-out episodes'
    sample indices its run kept for open-loop accuracy; None (said why) where there is none."""
    from envs.dataset import DemoDataset, split_demos  # h5py: only when there is a dataset to read

    train_config = payload.get("train_config") or {}
    data = train_config.get("data", {})
    path = Path(dataset or data.get("path", "data/demos"))
    if not (path / "index.h5").exists():
        print(f"open-loop accuracy skipped: no dataset at {path} (set dataset=<dir>)")
        return None
    demos = DemoDataset(path)
    _, val_idx = split_demos(
        demos, data.get("tasks", tasks), data.get("val_fraction", 0.05), train_config.get("seed", 0)
    )
    return demos, val_idx


Outcomes = dict[tuple[str, str], dict[int, bool]]


def read_outcomes(path: Path) -> Outcomes:
    """(task, split) -> {seed: success} from an evaluation.json."""
    try:
        rows = json.loads(path.read_text())["per_episode"]
        return {(r["task"], r["split"]): dict(zip(r["seeds"], r["successes"], strict=True)) for r in rows}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise SystemExit(f"error: {path} is not an eval/evaluate.py evaluation.json ({error!r})") from None
