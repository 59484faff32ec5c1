"""DAgger on top of behaviour cloning (``python train/dagger.py``).

Behaviour cloning only sees the expert's states; a policy that is slightly off drifts into
states no demo shows and its errors compound (``eval/probes/closed_loop_probe.py`` measures this).
DAgger (Ross, Gordon and Bagnell, 2011) closes the gap: each round the current policy drives
(the expert takes over a step with probability beta, decaying per round), the scripted expert
labels every state reached, the episodes join the dataset, and the policy is fine-tuned on the
aggregate. Config: configs/dagger.yaml (every bc.yaml key applies). The run directory holds
``round<k>/`` (a BC run each), ``data/`` (demos + on-policy episodes, hard links),
``onpolicy/round<k>/`` (each round's collection) and ``dagger.{json,md}``: success per round.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from envs.collection import CollectConfig, collect
from envs.dataset import DemoDataset, build_index, episode_files
from envs.stats import wilson_interval
from envs.tasks import resolve_tasks
from vla.app.console import run_log
from vla.checkpoint import build_policy, read_checkpoint
from vla.evaluation.closed_loop import run_report
from vla.inference import policy_driver
from vla.training.bc import check_config as check_bc_config
from vla.training.bc import load_or_collect
from vla.training.bc import train as train_bc
from vla.training.runtime import resolve_device

DAGGER_SEED_BASE = 50_000_000  # on-policy episodes never reuse demo or evaluation seeds
ROUND_SEED_STRIDE = 5_000_000  # > tasks x the collection's per-task stride


def check_config(cfg: DictConfig) -> None:
    """The BC checks, and DAgger's own: one clear error before any work."""
    check_bc_config(cfg)
    d = cfg.dagger
    if d.rounds < 0 or d.episodes_per_task <= 0 or d.steps_per_round <= 0:
        raise ValueError(
            f"dagger.rounds must be >= 0 and episodes_per_task, steps_per_round > 0; got "
            f"{d.rounds}, {d.episodes_per_task}, {d.steps_per_round}"
        )
    if not 0.0 <= d.beta <= 1.0 or not 0.0 <= d.beta_decay <= 1.0:
        raise ValueError(f"dagger.beta and dagger.beta_decay must lie in [0, 1], got {d.beta}, {d.beta_decay}")
    if d.init and not Path(d.init).exists():
        raise FileNotFoundError(f"dagger.init={d.init}: no such checkpoint or run directory")


def run_dagger(cfg: DictConfig) -> list[dict]:
    with run_log(Path(cfg.run_dir) / "dagger.log"):
        return _run_dagger(cfg)


def _run_dagger(cfg: DictConfig) -> list[dict]:
    d = cfg.dagger
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tasks = resolve_tasks(list(cfg.data.tasks))
    demos = load_or_collect(cfg, rank=0)
    aggregate = root / "data"
    link_episodes(demos.root, aggregate, demos.env_config)

    rows: list[dict] = []
    if d.init:
        checkpoint = Path(read_checkpoint(d.init)["path"])
        report = evaluate_checkpoint(cfg, checkpoint, root / "round0")
    else:
        report = train_round(cfg, root / "round0", aggregate, None, steps=cfg.trainer.steps)
        checkpoint = root / "round0" / "checkpoints" / "best.pt"
    rows.append(summarise(0, None, aggregate, None, report))
    write_table(root, rows)

    for k in range(1, d.rounds + 1):
        beta = float(d.beta * d.beta_decay ** (k - 1))
        collected = root / "onpolicy" / f"round{k}"
        summary = collect(
            CollectConfig(
                tasks=tasks,
                episodes_per_task=int(d.episodes_per_task),
                output=collected,
                workers=int(d.workers),
                seed=DAGGER_SEED_BASE + k * ROUND_SEED_STRIDE,
                image_size=int(cfg.model.image_size),
                cameras=tuple(demos.env_config.get("cameras", ["scene"])),
                driver=functools.partial(policy_driver, str(checkpoint)),
                driver_beta=beta,
            ),
            progress=bool(cfg.trainer.progress),
        )
        driven = sum(summary.kept.values())
        driven_success = 1.0 - sum(summary.failed.values()) / max(driven, 1)
        link_episodes(collected, aggregate, demos.env_config)
        report = train_round(cfg, root / f"round{k}", aggregate, checkpoint, steps=int(d.steps_per_round))
        checkpoint = root / f"round{k}" / "checkpoints" / "best.pt"
        rows.append(summarise(k, beta, aggregate, driven_success, report))
        write_table(root, rows)
    print((root / "dagger.md").read_text())
    return rows


def evaluate_checkpoint(cfg: DictConfig, checkpoint: Path, out_dir: Path) -> dict:
    """The starting point's success, with the same evaluation as every round."""
    policy, tokenizer = build_policy(read_checkpoint(checkpoint))
    device = resolve_device(cfg.device)
    policy.to(device)
    return run_report(
        policy,
        tokenizer,
        device,
        list(cfg.data.tasks),
        int(cfg.eval.final_episodes),
        list(cfg.eval.splits),
        int(cfg.eval.num_envs),
        out_dir,
        video_episodes=0,
        progress=bool(cfg.trainer.progress),
    )


def train_round(cfg: DictConfig, run_dir: Path, data: Path, init: Path | None, steps: int) -> dict:
    """One BC run on the aggregated data, fine-tuning ``init`` if given."""
    round_cfg = OmegaConf.merge(
        cfg,
        {
            "run_dir": str(run_dir),
            "resume": None,
            "init": str(init) if init else None,
            "data": {"path": str(data), "collect_if_missing": False},
        },
    )
    round_cfg.trainer.steps = steps
    if init is not None:  # fine-tuning: a short warm-up, a checkpoint at the end
        round_cfg.trainer.warmup_steps = min(int(cfg.trainer.warmup_steps), max(steps // 10, 1))
        round_cfg.trainer.checkpoint_every = steps
    report = train_bc(round_cfg)
    if report is None:
        raise RuntimeError(f"round {run_dir.name} ended without an evaluation")
    return report


def link_episodes(source: Path, aggregate: Path, env_config: dict) -> None:
    """Hard-link (copy where links fail) ``source``'s episode files into ``aggregate``."""
    for path in episode_files(source):
        target = aggregate / path.relative_to(source)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    build_index(aggregate, env_config)


def summarise(k: int, beta: float | None, aggregate: Path, driven_success: float | None, report: dict) -> dict:
    outcomes = [s for row in report["per_episode"] for s in row["successes"]]
    wins, n = int(sum(outcomes)), len(outcomes)
    return {
        "round": k,
        "beta": beta,
        "episodes_in_data": DemoDataset(aggregate).num_episodes,
        "driven_success": driven_success,
        "success_rate": wins / n if n else float("nan"),
        "ci95": wilson_interval(wins, n),
        "episodes": n,
        "per_task": {t["task"]: t["success_rate"] for t in report["tasks"]},
    }


def write_table(root: Path, rows: list[dict]) -> None:
    (root / "dagger.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| round | beta (expert share) | episodes in data | driven episodes solved | success | 95% CI | episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        beta = "BC" if r["beta"] is None else f"{r['beta']:.3f}"
        driven = "" if r["driven_success"] is None else f"{100 * r['driven_success']:.0f}%"
        lo, hi = r["ci95"]
        lines.append(
            f"| {r['round']} | {beta} | {r['episodes_in_data']} | {driven} | {100 * r['success_rate']:.1f}% | "
            f"[{100 * lo:.1f}, {100 * hi:.1f}] | {r['episodes']} |"
        )
    (root / "dagger.md").write_text("\n".join(lines) + "\n")
