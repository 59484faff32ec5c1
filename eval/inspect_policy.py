"""Seeing inside the policy: ``python eval/inspect_policy.py checkpoint=<run dir or .pt>``.

Config: configs/inspect.yaml. Per episode, into ``out_dir``: ``<task>_seed<seed>.mp4`` (the
video camera, the policy's image with its keypoint heatmaps, and with its decoder's attention
over the patches, the decoded tokens and the instruction as text), ``..._still.png`` (a few
of those steps side by side), ``..._path.png`` (the end-effector path against the scripted
expert's on the same seed); ``inspect.json`` holds each episode's numbers. docs/inspect.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from envs.tasks import TASK_CLASSES
from envs.vocabulary import check_name
from vla.app.cli import hydra_entry
from vla.app.console import run_log
from vla.checkpoint import check_checkpoint_path
from vla.evaluation.inspection import inspect_episodes
from vla.inference import load_policy
from vla.training.runtime import resolve_device

VIDEO_FORMATS = ("mp4", "gif")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
MAX_EPISODES, MAX_STEPS, MAX_STILLS = 100, 10_000, 12
MAX_SEED = 2**63 - 1 - MAX_EPISODES  # seed + episode index must stay a 64-bit seed


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no model: one clear error before the checkpoint loads."""
    check_checkpoint_path(cfg.checkpoint)
    check_name("task", cfg.task, TASK_CLASSES)
    check_name("video", cfg.video, VIDEO_FORMATS)
    if not DEVICE.fullmatch(str(cfg.device)):
        raise ValueError(f"device={cfg.device}: allowed are auto, cpu, cuda or cuda:<index>")
    for key, low, high in (("episodes", 1, MAX_EPISODES), ("max_steps", 0, MAX_STEPS), ("stills", 1, MAX_STILLS)):
        if not low <= cfg[key] <= high:
            raise ValueError(f"{key}={cfg[key]}: allowed are {low}..{high}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ValueError(f"seed={cfg.seed}: allowed are 0..{MAX_SEED}")
    if cfg.layer is not None and not (
        isinstance(cfg.layer, int) and not isinstance(cfg.layer, bool) and cfg.layer >= 0
    ):
        raise ValueError(f"layer={cfg.layer}: give a decoder block's index (0 = the first), or null for the last")
    if not isinstance(cfg.out_dir, str) or not cfg.out_dir.strip():
        raise ValueError(f"out_dir={cfg.out_dir}: give a folder path (quote it: out_dir='...')")
    if cfg.instruction is not None and not (isinstance(cfg.instruction, str) and cfg.instruction.strip()):
        raise ValueError(f"instruction={cfg.instruction!r}: give the words in quotes (instruction='...'), or null")


def inspect_checkpoint(cfg: DictConfig) -> list[dict]:
    out_dir = Path(cfg.out_dir)
    with run_log(out_dir / "inspect.log"):
        # the scope check stays on: where the policy holds still, the frames say why
        runner = load_policy(cfg.checkpoint, device=resolve_device(cfg.device))
        print(f"checkpoint {cfg.checkpoint}: {cfg.episodes} {cfg.task} episode(s) from seed {cfg.seed} -> {out_dir}")
        return inspect_episodes(
            runner,
            cfg.task,
            [cfg.seed + i for i in range(cfg.episodes)],
            out_dir,
            instruction=cfg.instruction,
            max_steps=int(cfg.max_steps),
            layer=cfg.layer,
            stills=int(cfg.stills),
            video_suffix=f".{cfg.video}",
            progress=bool(cfg.progress),
        )


if __name__ == "__main__":
    hydra_entry("inspect", inspect_checkpoint, check_config)
