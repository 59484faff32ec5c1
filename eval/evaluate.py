"""Evaluate a trained policy: ``python eval/evaluate.py checkpoint=<run dir or .pt>``.

Config: configs/eval.yaml. Writes evaluation.json, evaluation.md (per-task and overall
success with 95% Wilson intervals for each instruction split, open-loop token accuracy,
the language-swap table) and rollouts.mp4 into ``out_dir``. ``keypoints=oracle`` hands a
policy with keypoints the true target and destination image coordinates instead of its
reader's (``envs.camera.TrueKeypoints``): success with them against success with its own
says how much of a failure is pointing at the named objects and how much acting on them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from envs.camera import TrueKeypoints
from envs.instructions import INSTRUCTION_SPLITS
from envs.tasks import task_ids
from envs.vocabulary import check_name
from vla.app.cli import hydra_entry
from vla.app.console import run_log
from vla.checkpoint import build_policy, check_checkpoint_path, read_checkpoint
from vla.evaluation.closed_loop import held_out_demos, open_loop_accuracy, run_report
from vla.training.runtime import resolve_device

KEYPOINT_SOURCES = ("read", "oracle")  # who points: the policy's reader, or the simulator's truth
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8-weight")


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no model: one clear error before the checkpoint loads."""
    check_checkpoint_path(cfg.checkpoint)
    task_ids(list(cfg.tasks))
    check_name("keypoints", cfg.keypoints, KEYPOINT_SOURCES)
    check_name("precision", cfg.precision, PRECISIONS)
    if cfg.precision == "int8" and resolve_device(cfg.device).type != "cpu":
        raise ValueError(f"precision=int8 is PyTorch's dynamic int8 for the CPU: set device=cpu, got {cfg.device}")
    for split in cfg.splits:
        check_name("splits", split, INSTRUCTION_SPLITS)
    if not isinstance(cfg.episodes, int) or cfg.episodes < 1:
        raise ValueError(f"episodes must be a whole number >= 1, got {cfg.episodes!r}")


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    with run_log(Path(cfg.out_dir) / "evaluate.log"):
        return _evaluate(cfg)


def _evaluate(cfg: DictConfig) -> dict:
    payload = read_checkpoint(cfg.checkpoint)
    policy, tokenizer = build_policy(payload)
    if cfg.keypoints == "oracle" and policy.keypoint_reader is None:
        raise ValueError("keypoints=oracle replaces the policy's keypoints: this checkpoint has none (keypoints=0)")
    device = resolve_device(cfg.device)
    policy.to(device)
    if cfg.precision == "int8":
        from vla.fast_inference import quantize_int8

        policy = quantize_int8(policy)
    if cfg.precision == "int8-weight":
        from vla.fast_inference import quantize_weight_int8

        policy = quantize_weight_int8(policy)
    print(
        f"checkpoint {payload['path']} (step {payload.get('step')}, {policy.config.decoding} decoding, {cfg.precision})"
    )
    open_loop = held_out_accuracy(cfg, payload, policy, tokenizer, device) if cfg.open_loop else None
    return run_report(
        policy,
        tokenizer,
        device,
        list(cfg.tasks),
        int(cfg.episodes),
        list(cfg.splits),
        int(cfg.num_envs),
        Path(cfg.out_dir),
        int(cfg.video_episodes),
        open_loop,
        progress=bool(cfg.progress),
        # the swap names another object: with the true keypoints of the original one it tests nothing
        swap=bool(cfg.language_swap) and cfg.keypoints == "read",
        temperature=float(cfg.temperature),
        use_cache=bool(cfg.use_cache),
        env_wrapper=TrueKeypoints if cfg.keypoints == "oracle" else None,
        precision=autocast_precision(cfg.precision, device),
    )


def autocast_precision(precision: str, device: torch.device) -> str:
    """The activations' dtype: weight-only int8 computes in bf16 on a GPU (as it is served
    there) and in fp32 on a CPU; dynamic int8 brings its own int8 products."""
    if precision == "int8-weight":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision if precision in ("bf16", "fp16") else "fp32"


def held_out_accuracy(cfg: DictConfig, payload: dict, policy, tokenizer, device: torch.device) -> dict | None:
    """Open-loop accuracy on the demo episodes the checkpoint's run held out (V3)."""
    found = held_out_demos(payload, cfg.dataset, list(cfg.tasks))
    return None if found is None else open_loop_accuracy(policy, tokenizer, *found, device)


if __name__ == "__main__":
    hydra_entry("eval", evaluate_checkpoint, check_config)
