"""Parallel collection: exact counts, resume, and crash safety under SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from envs.collection import CollectConfig, collect
from envs.dataset import DemoDataset, episode_files
from envs.tasks import resolve_tasks

from .conftest import REPO_ROOT


def small_config(output: Path, episodes: int = 2, tasks=("reach", "lift"), workers: int = 2) -> CollectConfig:
    return CollectConfig(tasks=tasks, episodes_per_task=episodes, output=output, workers=workers, image_size=32)


def test_collect_keeps_exactly_the_requested_episodes_and_resumes(tmp_path):
    summary = collect(small_config(tmp_path, episodes=2), progress=False)
    assert summary.kept == {"reach": 2, "lift": 2}
    ds = DemoDataset(tmp_path)
    assert ds.num_episodes == 4 and ds.sample(0)["image"].shape == (32, 32, 3)
    assert all(h5py.File(p, "r").attrs["success"] for p in episode_files(tmp_path))

    first = {p.name for p in episode_files(tmp_path)}
    summary = collect(small_config(tmp_path, episodes=3), progress=False)
    assert summary.resumed == 4 and summary.kept == {"reach": 3, "lift": 3}
    assert first <= {p.name for p in episode_files(tmp_path)}  # appended, not restarted
    assert DemoDataset(tmp_path).num_episodes == 6


def test_env_settings_cannot_change_under_an_existing_dataset(tmp_path):
    collect(small_config(tmp_path, episodes=1, tasks=("reach",), workers=1), progress=False)
    config = CollectConfig(tasks=("reach",), episodes_per_task=2, output=tmp_path, workers=1, image_size=48)
    with pytest.raises(ValueError, match="another output directory"):
        collect(config, progress=False)


def test_unknown_task_lists_valid_names():
    assert resolve_tasks(["VLASandbox/PickPlace-v0", "stack"]) == ("pick_place", "stack")
    message = "unknown task 'fold_laundry'; valid values are: reach, push, lift, pick_place"
    with pytest.raises(ValueError, match=message):
        resolve_tasks(["fold_laundry"])


COLLECT_SNIPPET = """
from pathlib import Path
from envs.collection import CollectConfig, collect
collect(CollectConfig(tasks=("push", "pick_place"), episodes_per_task={n}, output=Path({out!r}),
                      workers=2, image_size=32), progress=False)
"""


def start_collection(output: Path, episodes: int) -> subprocess.Popen:
    code = COLLECT_SNIPPET.format(n=episodes, out=str(output))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_episodes(output: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(episode_files(output)) < count:
        assert proc.poll() is None, "collection ended before it could be interrupted"
        assert time.time() < deadline, "collection made no progress"
        time.sleep(0.05)


def worker_processes(pid: int) -> list[int]:
    """Pool workers among the children (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    workers = []
    for child in map(int, out.split()):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            workers.append(child)
    return workers


def assert_only_complete_episodes(output: Path) -> int:
    files = episode_files(output)
    for path in files:
        with h5py.File(path, "r") as f:
            n = f.attrs["num_samples"]
            assert f["obs/image"].shape[0] == f["actions"].shape[0] == f["rewards"].shape[0] == n
            assert f["dones"][-1]
    return len(files)


def test_killed_worker_does_not_corrupt_or_stop_collection(tmp_path):
    proc = start_collection(tmp_path, episodes=6)
    wait_for_episodes(tmp_path, 2, proc)
    workers = worker_processes(proc.pid)
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "a collection worker died; restarting the pool" in output
    assert assert_only_complete_episodes(tmp_path) == 12
    assert DemoDataset(tmp_path).num_episodes == 12


def test_killed_collection_leaves_complete_episodes_and_resumes(tmp_path):
    proc = start_collection(tmp_path, episodes=6)
    wait_for_episodes(tmp_path, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers, mid-write
    proc.wait(timeout=30)
    done = assert_only_complete_episodes(tmp_path)
    assert 3 <= done < 12
    ledger = [json.loads(line) for line in (tmp_path / "attempts.jsonl").read_text().splitlines() if line.strip()]
    assert len(ledger) >= 1
    proc = start_collection(tmp_path, episodes=6)  # the same command resumes
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert assert_only_complete_episodes(tmp_path) == 12
    assert not list(tmp_path.rglob("*.tmp"))
    assert DemoDataset(tmp_path).num_episodes == 12


def test_collect_script_smoke(tmp_path):
    out = tmp_path / "demos"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train" / "collect.py"),
            "tasks=[reach]",
            "episodes_per_task=1",
            "workers=1",
            f"output={out}",
            "video=true",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "successful episodes/min" in result.stdout
    assert (out / "expert_rollouts.mp4").stat().st_size > 1000
    assert DemoDataset(out).num_episodes == 1


def test_a_driver_acts_while_the_expert_labels_every_state():
    """DAgger collection: the executed actions are the driver's, the labels the expert's."""
    import gymnasium as gym
    import numpy as np

    from envs.collection import record_expert_episode

    env = gym.make("VLASandbox/Reach-v0", image_size=32, max_steps=8)
    still = np.zeros(7, np.float32)
    driven = record_expert_episode(env, seed=3, expert_noise=0.0, driver=lambda obs: still, driver_beta=0.0)
    assert np.all(driven.executed_actions == 0)
    assert np.abs(driven.actions[:, :2]).max() > 0.5  # the expert wants to move towards the target
    assert not driven.success and len(driven.actions) == 8
    expert_only = record_expert_episode(env, seed=3, expert_noise=0.0, driver=lambda obs: still, driver_beta=1.0)
    np.testing.assert_array_equal(expert_only.executed_actions, expert_only.actions)
    env.close()
