"""The narrow public API: ``vla.load_policy(path).act(obs) -> 7-D action``.

Threads: a batch of one is a few small matrix products, and torch's default of one thread
per core makes each wait for the slowest core; beside another busy process that cost a
median of 640 ms per call against 9 ms on one thread (2-core CPU, 2026-12-06). So
``threads="auto"`` (the default) decodes a batch of one on one thread and a larger batch on
every core this process may use; an integer fixes the count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.checkpoint import build_policy, read_checkpoint
from vla.data import observations_to_batch
from vla.policy import VLAPolicy
from vla.tokenizer import ActionTokenizer


class PolicyRunner:
    """A trained policy behind the env's observation/action contract."""

    def __init__(
        self,
        policy: VLAPolicy,
        tokenizer: ActionTokenizer,
        device: str | torch.device = "cpu",
        temperature: float = 0.0,
        use_cache: bool = True,
        seed: int = 0,
        threads: int | str = "auto",
    ):
        if threads != "auto" and not (isinstance(threads, int) and threads >= 1):
            raise ValueError(f"threads must be 'auto' or a whole number >= 1, got {threads!r}")
        self.threads = threads
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()  # eval mode: no dropout, no augmentation
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.use_cache = use_cache
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def reset(self) -> None:
        """Between episodes: nothing to clear, the policy is memoryless (one observation in,
        one action out). Kept so callers treat every policy alike."""

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return self.act_batch([obs])[0]

    def act_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        batch = observations_to_batch(observations, self.device)
        threads = inference_threads(len(observations)) if self.threads == "auto" else self.threads
        with torch_threads(threads if self.device.type == "cpu" else None):
            bins = self.policy.decode(
                batch, use_cache=self.use_cache, temperature=self.temperature, generator=self.generator
            )
        return self.tokenizer.decode(bins.cpu().numpy())


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; containers and taskset narrow it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def inference_threads(batch_size: int) -> int:
    """``threads="auto"``: one thread for a batch of one, every usable core otherwise."""
    return 1 if batch_size <= 1 else usable_cores()


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (None: as they are), then restore the count."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def policy_driver(path: str | Path, device: str = "cpu", threads: int = 1) -> Callable[[dict[str, Any]], np.ndarray]:
    """``act(obs)`` of a checkpoint, for worker processes that step envs with it (DAgger
    collection): one torch thread each, so N workers do not fight over N cores."""
    torch.set_num_threads(threads)
    return load_policy(path, device=device).act


def load_policy(path: str | Path, device: str = "cpu", **kwargs: Any) -> PolicyRunner:
    """Load a checkpoint file (or a run directory: its best, else latest checkpoint)."""
    policy, tokenizer = build_policy(read_checkpoint(path))
    return PolicyRunner(policy, tokenizer, device, **kwargs)
