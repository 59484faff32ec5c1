"""Collect scripted-expert demonstrations: ``python train/collect.py [key=value ...]``.

Config: configs/collect.yaml. Writes the dataset directory (docs/data_format.md), a
summary JSON with the collection throughput, and a video of one expert rollout per task.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from envs.collection import CollectConfig, collect, write_summary
from envs.rollout_video import record_expert_video
from envs.tasks import resolve_tasks
from vla.app.cli import hydra_entry


def collect_config(cfg: DictConfig) -> CollectConfig:
    """The collection's settings, checked (a bad value is one error before any worker starts)."""
    return CollectConfig(
        tasks=resolve_tasks(list(cfg.tasks)),
        episodes_per_task=int(cfg.episodes_per_task),
        output=Path(cfg.output),
        workers=int(cfg.workers),
        seed=int(cfg.seed),
        image_size=int(cfg.image_size),
        cameras=tuple(cfg.cameras),
        instruction_split=str(cfg.instruction_split),
        expert_noise=float(cfg.expert_noise),
        start_spread=float(cfg.start_spread),
    )


def main(cfg: DictConfig) -> None:
    config = collect_config(cfg)
    summary = collect(config, progress=bool(cfg.progress))
    summary_path = write_summary(config.output, config, summary)
    print(f"\n{'task':<12}{'kept':>6}{'failed':>8}")
    for task in config.tasks:
        print(f"{task:<12}{summary.kept[task]:>6}{summary.failed.get(task, 0):>8}")
    print(f"{summary.episodes_per_minute():.1f} successful episodes/min with {config.workers} workers")
    print(f"dataset: {config.output}  summary: {summary_path}")
    if cfg.video:
        video = record_expert_video(config, config.output / "expert_rollouts.mp4")
        print(f"expert rollout video: {video}")


if __name__ == "__main__":
    hydra_entry("collect", main, collect_config)
