"""Closed-loop evaluation over ROS 2:
``python -m ros2_bridge.evaluate checkpoint=<run dir or .pt> episodes=10 tasks=[reach]``

Starts the simulator node (lock-step) and the policy node as separate processes talking
over DDS on loopback, runs every episode as an ``execute_instruction`` goal on the seeds
of the in-process evaluation (``envs.evaluation``: ``EVAL_SEED_BASE + i``), and reports
success with 95% Wilson intervals in the same table, the per-step DDS round trip, and (with
``compare=true``) the in-process evaluation of the same checkpoint on the same seeds with
the per-episode agreement. Writes evaluation.json, evaluation.md and the node logs to
``out_dir``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING, OmegaConf

from envs import TASK_NAMES
from envs.evaluation import EVAL_SEED_BASE, TaskResult, evaluate, markdown_table
from envs.tasks import resolve_tasks
from ros2_bridge.processes import NodeProcesses, default_domain_id, policy_env_kwargs, ros_env, start_bridge


@dataclass
class RosEvalConfig:
    checkpoint: str = MISSING  # a checkpoint file or a train/bc.py run directory
    tasks: list[str] = field(default_factory=lambda: ["reach"])
    episodes: int = 10  # per task; seeds EVAL_SEED_BASE + i as in eval/evaluate.py
    split: str = "train"  # instruction split
    seed: int = EVAL_SEED_BASE
    compare: bool = True  # also evaluate in process on the same seeds and compare episode by episode
    compare_num_envs: int = 1  # 1: batch-1 decoding, like the policy node (bit-identical actions)
    workspace_clamp: bool = False  # the in-process env has no workspace box; true: evaluate with it
    episode_timeout: float = 300.0  # s of wall time before a goal is cancelled (counted as a failure)
    domain_id: int = -1  # ROS_DOMAIN_ID; -1: derived from the process id
    out_dir: str = f"outputs/ros2_eval/{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def main(argv: list[str]) -> dict[str, Any]:
    cfg: RosEvalConfig = OmegaConf.merge(OmegaConf.structured(RosEvalConfig), OmegaConf.from_cli(argv))
    ids = {name: env_id for env_id, name in TASK_NAMES.items()}
    task_ids = [ids[name] for name in resolve_tasks(list(cfg.tasks))]
    checkpoint, env_kwargs = policy_env_kwargs(cfg.checkpoint)
    out_dir = Path(cfg.out_dir)
    domain = cfg.domain_id if cfg.domain_id >= 0 else default_domain_id()

    started = time.monotonic()
    ros_results, latency = run_over_ros2(cfg, checkpoint, env_kwargs, task_ids, domain, out_dir)
    ros_seconds = time.monotonic() - started
    report: dict[str, Any] = {
        "checkpoint": checkpoint,
        "episodes_per_task": cfg.episodes,
        "ros2": [r.summary() for r in ros_results],
        "ros2_per_episode": [_per_episode(r) for r in ros_results],
        "latency": latency,
        "ros2_wall_seconds": ros_seconds,
    }
    clamp = "on" if cfg.workspace_clamp else "off"
    text = f"ROS 2 closed loop ({cfg.episodes} episodes per task, lock-step, workspace clamp {clamp}):\n\n"
    text += markdown_table(ros_results) + "\n\n" + latency_text(latency)
    if cfg.compare:
        from vla import load_policy

        local, _ = evaluate(
            load_policy(checkpoint),
            task_ids,
            cfg.episodes,
            cfg.split,
            num_envs=cfg.compare_num_envs,
            seed=cfg.seed,
            env_kwargs=env_kwargs,
        )
        agreement = compare(ros_results, local)
        report.update(in_process=[r.summary() for r in local], in_process_per_episode=[_per_episode(r) for r in local])
        report["agreement"] = agreement
        text += "\n\nIn-process evaluation, same checkpoint and seeds:\n\n" + markdown_table(local)
        text += f"\n\nPer-episode agreement: {agreement['same_outcome']}/{agreement['episodes']} outcomes, "
        text += f"{agreement['same_length']}/{agreement['episodes']} episode lengths identical."
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=1))
    (out_dir / "evaluation.md").write_text(text + "\n")
    print(text)
    return report


def run_over_ros2(
    cfg: RosEvalConfig, checkpoint: str, env_kwargs: dict[str, Any], task_ids: list[str], domain: int, out_dir: Path
) -> tuple[list[TaskResult], dict[str, float]]:
    """Every episode as an action goal against the two node processes."""
    os.environ.update(ros_env(domain))  # this process joins the same private domain
    import rclpy
    from action_msgs.msg import GoalStatus
    from std_msgs.msg import Float64, String

    from ros2_bridge import ros
    from ros2_bridge.client import InstructionClient

    round_trips: list[float] = []
    inference: list[float] = []
    events: dict[str, int] = {}  # safety-filter interventions by "<node>: <rule>"
    results = []
    with NodeProcesses(domain, out_dir / "logs") as nodes:
        start_bridge(nodes, checkpoint, env_kwargs, TASK_NAMES[task_ids[0]], True, cfg.workspace_clamp)
        rclpy.init()
        try:
            node = rclpy.create_node("vla_evaluator")
            node.create_subscription(Float64, ros.INFERENCE_TIME, lambda msg: inference.append(msg.data), 100)

            def count(msg: String) -> None:
                events[msg.data] = events.get(msg.data, 0) + 1

            node.create_subscription(String, ros.SAFETY_EVENTS, count, 100)
            client = InstructionClient(node)
            if not client.wait_for_server(120.0):
                nodes.check_alive()
                raise RuntimeError("the simulator's execute_instruction action did not appear within 120 s")
            for task_id in task_ids:
                result = TaskResult(task_id, cfg.split)
                for k in range(cfg.episodes):
                    outcome = client.run(task=task_id, seed=cfg.seed + k, split=cfg.split, timeout=cfg.episode_timeout)
                    if not outcome.accepted or outcome.result is None:
                        nodes.check_alive()
                        raise RuntimeError(f"goal for {task_id} seed {cfg.seed + k} was rejected (see {out_dir}/logs)")
                    message = outcome.result.message
                    if outcome.status == GoalStatus.STATUS_ABORTED and not message.startswith(ros.OUT_OF_SCOPE):
                        # an e-stop, a dead or stalled policy, a simulator error: the bridge failed, not
                        # the policy, and counting the episode as a failure would bias the rate
                        nodes.check_alive()
                        raise RuntimeError(f"episode {task_id} seed {cfg.seed + k} aborted: {message}")
                    result.successes.append(bool(outcome.result.success))
                    result.seeds.append(cfg.seed + k)
                    result.lengths.append(int(outcome.result.steps))
                    round_trips += list(outcome.result.round_trip)
                results.append(result)
            client.executor.spin_once(timeout_sec=0.2)  # the last inference times
            node.destroy_node()
        finally:
            rclpy.try_shutdown()
    return results, {**latency_stats(round_trips, inference), "safety_events": events}


def latency_stats(round_trips: list[float], inference: list[float]) -> dict[str, float]:
    rt, inf = np.asarray(round_trips) * 1e3, np.asarray(inference) * 1e3
    stats = {"steps": int(rt.size)}
    if rt.size:
        stats.update(
            round_trip_ms_median=float(np.median(rt)),
            round_trip_ms_p95=float(np.percentile(rt, 95)),
            round_trip_ms_max=float(rt.max()),
        )
    if inf.size:
        stats["inference_ms_median"] = float(np.median(inf))
    if rt.size and inf.size:
        stats["transport_ms_median"] = stats["round_trip_ms_median"] - stats["inference_ms_median"]
    return stats


def latency_text(stats: dict[str, float]) -> str:
    if "round_trip_ms_median" not in stats:
        return "No steps were timed."
    text = (
        f"Per-step round trip (observation published -> command for it received, {stats['steps']} steps): "
        f"median {stats['round_trip_ms_median']:.1f} ms, p95 {stats['round_trip_ms_p95']:.1f} ms, "
        f"max {stats['round_trip_ms_max']:.1f} ms"
    )
    if "inference_ms_median" in stats:
        text += (
            f"; policy inference median {stats['inference_ms_median']:.1f} ms, so DDS transport, "
            f"(de)serialization and node overhead about {stats['transport_ms_median']:.1f} ms per step"
        )
    events = stats.get("safety_events") or {}
    changed = ", ".join(f"{k} x{v}" for k, v in sorted(events.items())) or "none"
    return text + f".\n\nCommands changed by the safety layer: {changed}."


def compare(ros_results: list[TaskResult], local: list[TaskResult]) -> dict[str, Any]:
    """Episode-by-episode agreement between the two evaluations (same seeds)."""
    pairs = []
    for a, b in zip(ros_results, local, strict=True):
        assert a.seeds == b.seeds, "both evaluations must run the same seeds"
        pairs += list(zip(a.successes, b.successes, a.lengths, b.lengths, strict=True))
    return {
        "episodes": len(pairs),
        "same_outcome": sum(s1 == s2 for s1, s2, _, _ in pairs),
        "same_length": sum(n1 == n2 for _, _, n1, n2 in pairs),
    }


def _per_episode(result: TaskResult) -> dict[str, Any]:
    return {"task": result.task_id, "seeds": result.seeds, "successes": result.successes, "lengths": result.lengths}


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, RuntimeError, OSError) as error:  # CheckpointError is a ValueError or similar
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
