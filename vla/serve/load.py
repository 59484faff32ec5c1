"""Simulated robots against the policy server: each a process stepping a real env with the
server's actions (``robot``); ``load_row`` runs N of them for a fixed time and measures
throughput and latency percentiles; ``ServedPolicy`` is ``act_batch`` through the server, for
``envs.evaluation.evaluate`` (eval/load_test.py)."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vla.serve.client import PolicyClient, ServerError


def robot(url: str, task_id: str, index: int, seconds: float, env_kwargs: dict, barrier, results) -> None:
    """One simulated robot: a real env stepped with the server's actions until time is up."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the tasks)

    env = gym.make(task_id, **env_kwargs)
    client = PolicyClient(url, session=f"robot-{index}", timeout=60)
    seed = 50_000_000 + 1000 * index
    obs, _ = env.reset(seed=seed)
    latencies, refused, episodes, successes = [], 0, 0, 0
    barrier.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            action = client.act(obs)
        except ServerError as error:
            if error.status != 503:
                raise
            refused += 1
            time.sleep(0.005)
            continue
        latencies.append(time.perf_counter() - started)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            episodes, successes = episodes + 1, successes + int(info["is_success"])
            obs, _ = env.reset(seed=seed + episodes)
            client.reset()
    client.close()
    env.close()
    results.put({"latencies": latencies, "refused": refused, "episodes": episodes, "successes": successes})


def load_row(url: str, service, task_id: str, robots: int, seconds: float, env_kwargs: dict) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(robots + 1), context.Queue()
    workers = [
        context.Process(target=robot, args=(url, task_id, i, seconds, env_kwargs, barrier, results))
        for i in range(robots)
    ]
    for w in workers:
        w.start()
    stats = service.batcher.stats
    before = (stats.batches, stats.batched_requests)
    barrier.wait()
    started = time.monotonic()
    reports = [results.get(timeout=seconds + 300) for _ in workers]
    elapsed = time.monotonic() - started
    for w in workers:
        w.join()
    latencies = np.concatenate([r["latencies"] for r in reports]) * 1e3
    batches, requests = stats.batches - before[0], stats.batched_requests - before[1]
    return {
        "robots": robots,
        "actions_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "mean_batch": requests / max(batches, 1),
        "refused": int(sum(r["refused"] for r in reports)),
        "episodes": int(sum(r["episodes"] for r in reports)),
    }


class ServedPolicy:
    """``act_batch`` through the server: each observation its own concurrent request (one
    client per env slot), as robots would send them."""

    def __init__(self, url: str, slots: int):
        self.clients = [PolicyClient(url, session=f"slot-{i}", timeout=60) for i in range(slots)]
        self.pool = ThreadPoolExecutor(slots)

    def reset(self) -> None:
        for client in self.clients:
            client.reset()

    def act_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        futures = [self.pool.submit(c.act, o) for c, o in zip(self.clients, observations, strict=False)]
        return np.stack([f.result() for f in futures])
