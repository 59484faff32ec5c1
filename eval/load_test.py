"""Load test of the policy server: ``python eval/load_test.py checkpoint=<run dir or .pt>``.

Config: configs/load_test.yaml. For each N in ``robots``, N processes each step a real
MuJoCo env with actions from the server (``vla.serve.client.PolicyClient`` on loopback) for
``seconds``; the table reports actions/s over all robots, client round-trip latency p50/p95/p99
and the server's mean batch size, for the batched server and (``batch1``) one that decodes one
request at a time. Then ``success_episodes`` per task's seeds through the server and in
process: the success rates and how many episodes ended alike (L4, L10).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from envs.tasks import task_ids
from vla.app.cli import hydra_entry
from vla.checkpoint import check_checkpoint_path
from vla.serve.batcher import BatcherConfig
from vla.serve.load import ServedPolicy, load_row
from vla.training.runtime import check_whole_numbers, resolve_device


def check_config(cfg: DictConfig) -> None:
    check_checkpoint_path(cfg.checkpoint)
    task_ids([cfg.task])
    robots = {f"robots[{i}]": n for i, n in enumerate(cfg.robots)}
    check_whole_numbers({"seconds": cfg.seconds, "num_envs": cfg.num_envs} | robots)
    episodes = cfg.success_episodes
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 0:
        raise ValueError(f"success_episodes must be a whole number >= 0, got {episodes!r}")
    BatcherConfig(int(cfg.max_batch), float(cfg.max_wait_ms))


def run(cfg: DictConfig) -> dict[str, Any]:
    from envs.evaluation import evaluate
    from vla.evaluation.closed_loop import policy_env_kwargs
    from vla.inference import load_policy
    from vla.serve.app import PolicyService, ServeLimits, serve_in_background

    device = resolve_device(cfg.device)
    task_id = task_ids([cfg.task])[0]
    report: dict[str, Any] = {"checkpoint": str(cfg.checkpoint), "task": cfg.task, "device": str(device), "rows": []}
    servers = {"batched": int(cfg.max_batch)} | ({"batch-1": 1} if cfg.batch1 else {})
    for name, max_batch in servers.items():
        runner = load_policy(cfg.checkpoint, device=device)
        env_kwargs = policy_env_kwargs(runner.policy)
        batching = BatcherConfig(max_batch, float(cfg.max_wait_ms), max_queue=1024)
        service = PolicyService(runner, batching, ServeLimits(), continuous=bool(cfg.continuous))
        with serve_in_background(service) as url:
            for robots in cfg.robots:
                measured = load_row(url, service, task_id, int(robots), float(cfg.seconds), env_kwargs)
                row = {"server": name, "batching": service.mode, **measured}
                report["rows"].append(row)
                print(
                    f"{name:<8} robots {robots:>3}: {row['actions_per_s']:8.1f} actions/s  p50 {row['p50_ms']:6.2f}  "
                    f"p95 {row['p95_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms  mean batch {row['mean_batch']:.2f}",
                    flush=True,
                )
            if name == "batched" and cfg.success_episodes:
                report["success"] = compare_success(url, runner, task_id, cfg, env_kwargs, evaluate)
    print(load_table(report))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


def compare_success(url, runner, task_id, cfg, env_kwargs, evaluate) -> dict[str, Any]:
    episodes, num_envs = int(cfg.success_episodes), int(cfg.num_envs)
    served, _ = evaluate(ServedPolicy(url, num_envs), [task_id], episodes, num_envs=num_envs, env_kwargs=env_kwargs)
    local, _ = evaluate(runner, [task_id], episodes, num_envs=num_envs, env_kwargs=env_kwargs)
    alike = sum(a == b for a, b in zip(served[0].successes, local[0].successes, strict=True))
    result = {
        "episodes": episodes,
        "served": served[0].rate,
        "in_process": local[0].rate,
        "episodes_alike": alike,
        "lengths_alike": sum(a == b for a, b in zip(served[0].lengths, local[0].lengths, strict=True)),
    }
    print(
        f"success through the server {result['served']:.1%}, in process {result['in_process']:.1%} "
        f"({alike}/{episodes} episodes ended alike, {result['lengths_alike']} with the same length)"
    )
    return result


def load_table(report: dict[str, Any]) -> str:
    lines = [
        "| server | robots | actions/s | p50 ms | p95 ms | p99 ms | mean batch | refused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['server']} ({r['batching']}) | {r['robots']} | {r['actions_per_s']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch']:.2f} | {r['refused']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    hydra_entry("load_test", run, check_config)
