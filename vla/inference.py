"""The narrow public API: ``vla.load_policy(path).act(obs) -> 7-D action``."""

from __future__ import annotations

from collections.abc import Callable
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
    ):
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
        bins = (
            self.policy.decode(batch, use_cache=self.use_cache, temperature=self.temperature, generator=self.generator)
            .cpu()
            .numpy()
        )
        return self.tokenizer.decode(bins)


def policy_driver(path: str | Path, device: str = "cpu", threads: int = 1) -> Callable[[dict[str, Any]], np.ndarray]:
    """``act(obs)`` of a checkpoint, for worker processes that step envs with it (DAgger
    collection): one torch thread each, so N workers do not fight over N cores."""
    torch.set_num_threads(threads)
    return load_policy(path, device=device).act


def load_policy(path: str | Path, device: str = "cpu", **kwargs: Any) -> PolicyRunner:
    """Load a checkpoint file (or a run directory: its best, else latest checkpoint)."""
    policy, tokenizer = build_policy(read_checkpoint(path))
    return PolicyRunner(policy, tokenizer, device, **kwargs)
