"""Parallel collection of expert demonstrations into a dataset directory (envs.dataset).

The main process plans attempts (task, seed), hands them to worker processes, and is the
only one that publishes episodes: a worker runs the expert, writes the episode to a
temporary file and returns; the main process renames it into place if the task still
needs episodes (so every task gets exactly the number asked for) and appends the attempt
to the ledger. A killed worker breaks the pool: the pool is rebuilt and the lost attempts
are re-run. A killed main process loses at most the episodes in flight; re-running the
same command resumes from the ledger and the committed files.

Seeds: attempt ``i`` of task number ``k`` uses seed ``seed + 1_000_000 * k + i``, so tasks
never share layouts and a re-run replays exactly the same attempts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.dataset import (
    ATTEMPTS_FILE,
    EpisodeRecord,
    build_index,
    commit_episode,
    episode_files,
    remove_stale_tmp_files,
    write_episode_tmp,
)
from envs.progress import progress as progress_bar

TASK_SEED_STRIDE = 1_000_000
# Workers are spawned, never forked: a forked child inherits the parent's EGL/OpenGL state
# (any env that rendered in the parent) and can deadlock on its first render.
_MP_CONTEXT = multiprocessing.get_context("spawn")
MAX_POOL_RESTARTS = 5


@dataclass(frozen=True)
class CollectConfig:
    tasks: tuple[str, ...]
    episodes_per_task: int
    output: Path
    workers: int = 2
    seed: int = 0
    image_size: int = 64
    cameras: tuple[str, ...] = ("scene",)
    instruction_split: str = "train"
    expert_noise: float = 0.1
    # Half-width (rad) of the joint noise on the start pose (the env's default is 0.05): wider
    # starts show the expert recovering from where a slightly-off policy ends up.
    start_spread: float = 0.05
    max_attempts_factor: float = 3.0  # give up on a task after this many attempts per wanted episode
    # DAgger: ``driver()`` (picklable, called once per worker) returns ``act(obs) -> action``;
    # each step that callable drives, except with probability ``driver_beta`` the expert does.
    # The expert still labels every state. Driven episodes are kept whether or not they succeed.
    driver: Callable[[], Callable[[dict[str, Any]], np.ndarray]] | None = None
    driver_beta: float = 0.0

    @property
    def keep_failures(self) -> bool:
        return self.driver is not None

    def env_config(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "cameras": list(self.cameras),
            "instruction_split": self.instruction_split,
            "start_spread": self.start_spread,
        }


@dataclass
class CollectSummary:
    kept: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    resumed: int = 0
    seconds: float = 0.0
    pool_restarts: int = 0

    def episodes_per_minute(self) -> float:
        new = sum(self.kept.values()) - self.resumed
        return 60.0 * new / self.seconds if self.seconds > 0 else 0.0


# --- worker side -------------------------------------------------------------------------
_WORKER_ENVS: dict[tuple[str, str], Any] = {}


def _worker_env(task: str, config: CollectConfig):
    """One env per task per worker process, built on first use and reused."""
    import gymnasium as gym

    import envs  # registers the tasks' env ids in this (spawned) worker

    key = (task, json.dumps(config.env_config(), sort_keys=True))
    if key not in _WORKER_ENVS:
        _WORKER_ENVS[key] = gym.make(envs.task_ids([task])[0], **config.env_config())
    return _WORKER_ENVS[key]


def record_expert_episode(
    env: Any,
    seed: int,
    expert_noise: float,
    driver: Callable[[dict[str, Any]], np.ndarray] | None = None,
    driver_beta: float = 0.0,
) -> EpisodeRecord:
    """Run one episode from ``seed`` and record everything, the expert's label at every state.

    Without a ``driver`` the expert acts (plus its noise); with one, the driver acts on each
    step except with probability ``driver_beta`` (DAgger's mixture), so the labels cover the
    states the driver's own mistakes lead to."""
    from envs import make_expert

    base = env.unwrapped
    expert = make_expert(env, noise_std=expert_noise, seed=seed)
    mix = np.random.default_rng([seed, 1])
    obs, info = env.reset(seed=seed)
    images, wrist, proprio, labels, executed, rewards, key_positions = [], [], [], [], [], [], []
    while True:
        action = expert(obs)
        if driver is not None and mix.random() >= driver_beta:
            action = np.asarray(driver(obs), dtype=np.float32)
        key_positions.append(info["key_positions"])
        images.append(obs["image"])
        if "wrist_image" in obs:
            wrist.append(obs["wrist_image"])
        proprio.append(obs["proprio"])
        labels.append(expert.clean_action)
        executed.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    return EpisodeRecord(
        task=base.task.name,
        env_id=env.spec.id if env.spec else base.task.env_id,
        seed=seed,
        instruction=info["instruction"],
        split=info["split"],
        task_spec=info["task_spec"],
        images=np.stack(images),
        proprio=np.stack(proprio),
        actions=np.stack(labels),
        executed_actions=np.stack(executed),
        rewards=np.asarray(rewards, dtype=np.float32),
        success=bool(info["is_success"]),
        expert_noise=expert_noise,
        wrist_images=np.stack(wrist) if wrist else None,
        key_positions=np.stack(key_positions),
    )


_WORKER_DRIVERS: dict[str, Callable] = {}


def _worker_driver(config: CollectConfig) -> Callable | None:
    """The driver policy, built once per worker process (loading a checkpoint is slow)."""
    if config.driver is None:
        return None
    key = repr(config.driver)
    if key not in _WORKER_DRIVERS:
        _WORKER_DRIVERS[key] = config.driver()
    return _WORKER_DRIVERS[key]


def _attempt(task: str, seed: int, config: CollectConfig) -> dict[str, Any]:
    """Worker entry point: one attempt; a kept episode goes to a temporary file."""
    env = _worker_env(task, config)
    record = record_expert_episode(env, seed, config.expert_noise, _worker_driver(config), config.driver_beta)
    result = {"task": task, "seed": seed, "success": record.success, "steps": len(record.actions)}
    if record.success or config.keep_failures:
        result["tmp"] = str(write_episode_tmp(config.output, record))
    return result


# --- main side ---------------------------------------------------------------------------
def _read_ledger(path: Path) -> list[dict[str, Any]]:
    """Attempts recorded so far; a torn last line (killed mid-write) is ignored."""
    if not path.exists():
        return []
    text = path.read_bytes()
    if text and not text.endswith(b"\n"):  # start appends on a fresh line
        with path.open("ab") as f:
            f.write(b"\n")
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def _seed_stream(config: CollectConfig, task: str, done: set[int]) -> Iterator[int]:
    k = config.tasks.index(task)
    base = config.seed + TASK_SEED_STRIDE * k
    i = 0
    while True:
        if base + i not in done:
            yield base + i
        i += 1


def collect(config: CollectConfig, progress: bool = True) -> CollectSummary:
    """Collect until every task has ``episodes_per_task`` successful episodes (or resume)."""
    if config.episodes_per_task <= 0:
        raise ValueError(f"episodes_per_task must be positive, got {config.episodes_per_task}")
    if config.workers <= 0:
        raise ValueError(f"workers must be positive, got {config.workers}")
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp_files(output)
    _check_env_config(output, config)
    ledger_path = output / ATTEMPTS_FILE

    summary = CollectSummary()
    kept = {t: 0 for t in config.tasks}
    done_seeds: dict[str, set[int]] = {t: set() for t in config.tasks}
    for path in episode_files(output):
        task, seed = path.parent.name, int(path.stem.rsplit("-s", 1)[1])
        if task in kept:
            kept[task] += 1
            done_seeds[task].add(seed)
    for entry in _read_ledger(ledger_path):
        if entry.get("task") in done_seeds:
            done_seeds[entry["task"]].add(int(entry["seed"]))
            if not entry["success"]:
                summary.failed[entry["task"]] = summary.failed.get(entry["task"], 0) + 1
    summary.resumed = sum(kept.values())
    summary.attempts = {t: len(done_seeds[t]) for t in config.tasks}
    seeds = {t: _seed_stream(config, t, done_seeds[t]) for t in config.tasks}
    budget = {t: int(np.ceil(config.max_attempts_factor * config.episodes_per_task)) for t in config.tasks}

    total = config.episodes_per_task * len(config.tasks)
    bar = progress_bar(
        total=total, initial=min(sum(kept.values()), total), desc="collect", unit="ep", disable=not progress
    )
    start = time.perf_counter()
    in_flight: dict[Future, tuple[str, int]] = {}
    pending: list[tuple[str, int]] = []  # attempts lost with a broken pool, to run again
    last_index = time.perf_counter()

    def wanted(task: str) -> int:
        running = sum(1 for t, _ in in_flight.values() if t == task)
        return config.episodes_per_task - kept[task] - running

    pool = ProcessPoolExecutor(config.workers, mp_context=_MP_CONTEXT)
    try:
        with ledger_path.open("a") as ledger:
            while True:
                # Keep every worker busy with attempts for tasks that still need episodes.
                while len(in_flight) < 2 * config.workers:
                    job = pending.pop() if pending else _next_job(config, seeds, wanted, summary, budget)
                    if job is None:
                        break
                    in_flight[pool.submit(_attempt, *job, config)] = job
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                try:
                    for future in finished:
                        job = in_flight.pop(future)
                        result = future.result()
                        keep = result["success"] or config.keep_failures
                        if keep and kept[result["task"]] < config.episodes_per_task:
                            commit_episode(Path(result["tmp"]))
                            kept[result["task"]] += 1
                            bar.update(1)
                        elif "tmp" in result:
                            Path(result["tmp"]).unlink(missing_ok=True)
                        if not result["success"]:
                            summary.failed[result["task"]] = summary.failed.get(result["task"], 0) + 1
                        entry = {k: result[k] for k in ("task", "seed", "success", "steps")}
                        ledger.write(json.dumps(entry) + "\n")
                        ledger.flush()
                        bar.set_postfix(failed=sum(summary.failed.values()))
                except BrokenProcessPool:
                    # A worker died (OOM killer, SIGKILL...): every in-flight attempt is lost.
                    summary.pool_restarts += 1
                    if summary.pool_restarts > MAX_POOL_RESTARTS:
                        raise
                    pending.extend(in_flight.values())
                    pending.append(job)
                    in_flight.clear()
                    pool.shutdown(wait=True, cancel_futures=True)
                    remove_stale_tmp_files(output)
                    progress_bar.write(f"a collection worker died; restarting the pool ({summary.pool_restarts})")
                    pool = ProcessPoolExecutor(config.workers, mp_context=_MP_CONTEXT)
                if time.perf_counter() - last_index > 30:
                    build_index(output, config.env_config())
                    last_index = time.perf_counter()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        remove_stale_tmp_files(output)  # episodes finished but never committed (a stop part-way)
        bar.close()
        build_index(output, config.env_config())
    summary.seconds = time.perf_counter() - start
    summary.kept = kept
    short = {t: n for t, n in kept.items() if n < config.episodes_per_task}
    if short:
        raise RuntimeError(
            f"the expert could not produce enough successful episodes within "
            f"{config.max_attempts_factor}x attempts: {short} of {config.episodes_per_task} wanted"
        )
    return summary


def _next_job(config, seeds, wanted, summary: CollectSummary, budget) -> tuple[str, int] | None:
    for task in config.tasks:
        if wanted(task) > 0 and summary.attempts[task] < budget[task]:
            summary.attempts[task] += 1
            return task, next(seeds[task])
    return None


def _check_env_config(output: Path, config: CollectConfig) -> None:
    """Refuse to append episodes recorded with different env settings to a dataset."""
    meta = output / "collect_config.json"
    current = config.env_config()
    if meta.exists():
        previous = json.loads(meta.read_text())
        if previous != current:
            raise ValueError(f"{output} was collected with {previous}, not {current}; use another output directory")
    else:
        meta.write_text(json.dumps(current, indent=2, sort_keys=True))


def write_summary(output: Path, config: CollectConfig, summary: CollectSummary) -> Path:
    path = Path(output) / "collect_summary.json"
    payload = {
        "kept": summary.kept,
        "failed": summary.failed,
        "attempts": summary.attempts,
        "resumed_episodes": summary.resumed,
        "seconds": round(summary.seconds, 2),
        "episodes_per_minute": round(summary.episodes_per_minute(), 1),
        "workers": config.workers,
        "expert_noise": config.expert_noise,
        "pool_restarts": summary.pool_restarts,
        "cpu_count": os.cpu_count(),
    }
    path.write_text(json.dumps(payload, indent=2))
    return path
