"""The robustness suite: ``python eval/robustness.py checkpoint=<run dir or .pt>``.

Config: configs/robustness.yaml. For each kind of rewrite (politeness, capitals,
punctuation, typos, word order, colour and shape synonyms, short forms; envs/rewrites.py)
closed-loop success on the training wording's seeds with the ratio to it, open-loop token
accuracy on the held-out demos reworded the same way (V3), and the share of
scenes where the policy stops on out-of-scope instructions (an absent or unknown object,
nonsense, an empty string) against valid ones. Writes robustness.json and robustness.md
into ``out_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from envs.rewrites import KINDS
from envs.tasks import task_ids
from envs.vocabulary import check_name
from vla.app.cli import hydra_entry
from vla.app.console import run_log
from vla.checkpoint import build_policy, check_checkpoint_path, read_checkpoint
from vla.evaluation.closed_loop import held_out_demos, policy_env_kwargs
from vla.evaluation.robustness import calibrate_and_record, open_loop_by_kind, robustness_suite, robustness_table
from vla.inference import PolicyRunner, parse_scope_threshold
from vla.training.runtime import check_whole_numbers, resolve_device


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no model: one clear error before the checkpoint loads."""
    check_checkpoint_path(cfg.checkpoint)
    task_ids(list(cfg.tasks))
    for kind in cfg.kinds:
        check_name("kinds", kind, KINDS)
    check_whole_numbers({"episodes": cfg.episodes, "scope_scenes": cfg.scope_scenes, "num_envs": cfg.num_envs})
    parse_scope_threshold(cfg.scope_threshold)


def run(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.out_dir)
    with run_log(out_dir / "robustness.log"):
        payload = read_checkpoint(cfg.checkpoint)
        policy, tokenizer = build_policy(payload)
        if cfg.calibrate:  # checkpoints from before the known-commands check lack it
            policy.to(resolve_device(cfg.device))
            calibrate_and_record(policy, task_ids(list(cfg.tasks)), int(cfg.calibration_scenes), Path(payload["path"]))
        threshold = parse_scope_threshold(cfg.scope_threshold)
        runner = PolicyRunner(policy, tokenizer, resolve_device(cfg.device), scope_threshold=threshold)
        print(f"checkpoint {payload['path']} (step {payload.get('step')})")
        if runner.scope_threshold is None:
            print("this checkpoint was trained without model.scope_check: it never stops")
        else:
            print(f"out-of-scope threshold {runner.scope_threshold:.3f}")
        report = robustness_suite(
            runner,
            list(cfg.tasks),
            int(cfg.episodes),
            list(cfg.kinds),
            int(cfg.num_envs),
            policy_env_kwargs(policy),
            int(cfg.scope_scenes),
            progress=bool(cfg.progress),
        )
        if cfg.open_loop:
            found = held_out_demos(payload, cfg.dataset, list(cfg.tasks))
            if found is not None:
                report["open_loop"] = open_loop_by_kind(policy, tokenizer, *found, list(cfg.kinds), runner.device)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "robustness.json").write_text(json.dumps(report, indent=1))
        table = robustness_table(report)
        (out_dir / "robustness.md").write_text(table + "\n")
        print(table)
        return report


if __name__ == "__main__":
    hydra_entry("robustness", run, check_config)
