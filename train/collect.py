"""Collect scripted-expert demonstrations: ``python train/collect.py [key=value ...]``.

Config: configs/collect.yaml. Writes the dataset directory (docs/data_format.md), a
summary JSON with the collection throughput, and a video of one expert rollout per task.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout too

from envs.collection import CollectConfig, collect, resolve_tasks, write_summary  # noqa: E402
from envs.rollout_video import record_expert_video  # noqa: E402


@hydra.main(config_path="../configs", config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = CollectConfig(
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
    main()
