"""Starting and stopping the bridge's nodes as separate processes on a private, loopback-only
ROS 2 domain (no launch files, no colcon).

Each node runs in its own process group, so stopping it also stops anything it spawned;
``NodeProcesses`` stops every node it started when its ``with`` block ends, even on error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def ros_env(domain_id: int) -> dict[str, str]:
    """The environment for a node: its own domain, discovery on this host only."""
    if not 0 <= domain_id <= 101:  # the portable range on Linux
        raise ValueError(f"ROS_DOMAIN_ID must be in 0..101, got {domain_id}")
    env = {key: value for key, value in os.environ.items() if key != "ROS_LOCALHOST_ONLY"}  # deprecated in Kilted
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        MUJOCO_GL=env.get("MUJOCO_GL", "egl"),
        PYTHONUNBUFFERED="1",  # node logs reach their files as they happen
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def default_domain_id() -> int:
    """A domain unlikely to be shared with another run on this machine."""
    return 1 + os.getpid() % 100


def node_command(module: str, **params: Any) -> list[str]:
    """``python -m <module> --ros-args -p k:=v ...``; floats keep a decimal point so ROS
    types them as doubles."""
    args = [sys.executable, "-m", module, "--ros-args"]
    for key, value in params.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        args += ["-p", f"{key}:={text}"]
    return args


def stop(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGINT (a clean rclpy shutdown), then SIGKILL, to the node's whole process group."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


class NodeProcesses:
    """``with NodeProcesses(domain_id, log_dir) as nodes: nodes.start("sim", cmd)``."""

    def __init__(self, domain_id: int, log_dir: Path):
        self.env = ros_env(domain_id)
        self.log_dir = Path(log_dir)
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "w") as log:
            process = subprocess.Popen(
                command, env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[name] = process
        return process

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def check_alive(self) -> None:
        """Raise with the tail of its log if a node has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log(name)[-3000:]
                raise RuntimeError(f"node {name!r} exited with code {process.returncode}:\n{tail}")

    def stop(self, name: str) -> None:
        stop(self.processes[name])

    def __enter__(self) -> NodeProcesses:
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes.values():
            stop(process)


def start_bridge(
    nodes: NodeProcesses,
    checkpoint: str,
    env_kwargs: dict[str, Any],
    task: str,
    lockstep: bool,
    workspace_clamp: bool = True,
) -> None:
    """The simulator (with the policy's ``image_size`` and ``cameras``) and the policy node:
    lock-step for evaluation, 20 Hz for a live demo."""
    sim = node_command(
        "ros2_bridge.sim_node",
        mode="lockstep" if lockstep else "realtime",
        task=task,
        image_size=env_kwargs["image_size"],
        cameras=",".join(env_kwargs.get("cameras", ["scene"])),
        workspace_clamp=workspace_clamp,
    )
    policy = node_command(
        "ros2_bridge.policy_node",
        checkpoint=str(checkpoint),
        rate_hz=0.0 if lockstep else 20.0,
        workspace_clamp=workspace_clamp,
    )
    nodes.start("sim", sim)
    nodes.start("policy", policy)


def policy_env_kwargs(checkpoint: str) -> tuple[str, dict[str, Any]]:
    """The checkpoint file a run directory resolves to, and the env settings its policy's
    inputs need (image size, cameras)."""
    from vla.checkpoint import read_checkpoint

    payload = read_checkpoint(checkpoint)
    config = payload["policy_config"]
    return payload["path"], {"image_size": int(config["image_size"]), "cameras": list(config.get("cameras", ["scene"]))}
