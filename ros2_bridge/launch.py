"""The live demo in one command (no launch files, no colcon):
``python -m ros2_bridge.launch checkpoint=<run dir or .pt> task=reach episodes=3``

Starts the simulator at the 20 Hz control rate and the policy node at 20 Hz as separate
processes on a loopback-only domain, then executes instructions through the
``execute_instruction`` action and prints its feedback. ``keep_running=true`` leaves the
nodes up until Ctrl-C, for a Python node of your own (the ``ros2`` command-line tools are not
among the wheels; a system ROS 2 install's would do) on the printed ROS_DOMAIN_ID.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from ros2_bridge.processes import NodeProcesses, default_domain_id, policy_env_kwargs, ros_env, start_bridge


@dataclass
class LaunchConfig:
    checkpoint: str = MISSING
    task: str = "reach"
    instruction: str = ""  # empty: the env's instruction for each episode's scene
    episodes: int = 1
    seed: int = 0  # episode i uses seed + i
    domain_id: int = -1  # -1: derived from the process id (printed, so other tools can join)
    keep_running: bool = False
    log_dir: str = f"outputs/ros2_launch/{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def main(argv: list[str]) -> None:
    cfg: LaunchConfig = OmegaConf.merge(OmegaConf.structured(LaunchConfig), OmegaConf.from_cli(argv))
    checkpoint, env_kwargs = policy_env_kwargs(cfg.checkpoint)
    domain = cfg.domain_id if cfg.domain_id >= 0 else default_domain_id()
    os.environ.update(ros_env(domain))
    import rclpy

    from ros2_bridge.client import InstructionClient

    print(f"ROS_DOMAIN_ID={domain} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; node logs in {cfg.log_dir}")
    with NodeProcesses(domain, Path(cfg.log_dir)) as nodes:
        start_bridge(nodes, checkpoint, env_kwargs, cfg.task, lockstep=False)
        rclpy.init()
        try:
            client = InstructionClient(rclpy.create_node("vla_launcher"))
            if not client.wait_for_server(120.0):
                nodes.check_alive()
                raise RuntimeError("the simulator's execute_instruction action did not appear within 120 s")
            if not client.wait_for_policy(120.0):
                nodes.check_alive()
                raise RuntimeError("the policy node published no command within 120 s")
            for i in range(cfg.episodes):
                outcome = client.run(
                    instruction=cfg.instruction, task=cfg.task, seed=cfg.seed + i, on_feedback=_print_feedback
                )
                if not outcome.accepted:
                    raise RuntimeError(f"goal rejected (see {nodes.log_path('sim')})")
                r = outcome.result
                print(f"\nepisode {i}: {r.instruction!r}: {r.message}, success={r.success}, {r.steps} steps")
            if cfg.keep_running:
                print("nodes running; Ctrl-C to stop")
                while True:
                    nodes.check_alive()
                    time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            rclpy.try_shutdown()


def _print_feedback(feedback) -> None:
    action = " ".join(f"{v:+.2f}" for v in feedback.last_action)
    print(f"\rstep {feedback.step:4d}  t={feedback.elapsed:5.2f} s  action [{action}]", end="", flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
