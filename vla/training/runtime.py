"""The training runtime: a resumable data order, the LR schedule, RNG state, the device and
distributed set-up. Kept apart so the training loop itself reads in one screen."""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from envs.vocabulary import colour_palette, scene_nouns
from vla.policy import PolicyConfig


class StepSampler(torch.utils.data.Sampler):
    """An endless, seeded sample order that can start at any global position.

    Epoch e is ``permutation(seed + e)``; sample positions are counted across epochs, so a
    run resumed at step s continues with exactly the batches an uninterrupted run would
    have seen (position s x global batch size). With several ranks each takes every
    ``world_size``-th sample of the same global order.
    """

    def __init__(self, num_samples: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if num_samples <= 0:
            raise ValueError("cannot train on an empty dataset")
        self.n, self.seed, self.start, self.rank, self.world_size = num_samples, seed, start, rank, world_size

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.n)
            order = np.random.default_rng(self.seed + epoch).permutation(self.n)
            for index in order[offset:]:
                if position % self.world_size == self.rank:
                    yield int(index)
                position += 1


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: NCCL on GPUs, gloo on CPU."""
    if "RANK" not in os.environ:
        return 0, 1, resolve_device("auto")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def check_whole_numbers(values: dict[str, Any]) -> None:
    """Each named setting must be a whole number >= 1 (steps, batch sizes, episodes)."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")


def check_device(name: str) -> torch.device:
    """``device=...`` as a torch device that this machine has."""
    device = resolve_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but this machine has no CUDA GPU; valid values here: auto, cpu")
    return device


def check_start_points(resume: str | None, init: str | None) -> None:
    """``resume=<run dir>`` must hold a latest.pt; ``init=<checkpoint or run dir>`` must exist."""
    if init and not Path(str(init)).exists():
        raise FileNotFoundError(f"cannot start from init={init}: no such checkpoint or run directory")
    if resume and not (Path(str(resume)) / "checkpoints" / "latest.pt").exists():
        raise FileNotFoundError(f"cannot resume from resume={resume}: no checkpoints/latest.pt there")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch spells it."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device, fused: bool = True
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. ``fused`` on CUDA: its fused kernel, one launch for
    every parameter; the default per-tensor update (and a CPU step counter per parameter) took
    6.5 ms of a 54 ms GPU training step, most of it Python and kernel-launch overhead
    (eval/profile_training.py, docs/results.md). On the CPU the plain update, as ever."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused and device.type == "cuda")


LR_SCALINGS = ("none", "sqrt", "linear")


def scaled_lr(lr: float, batch_size: int, reference_batch: int, rule: str) -> float:
    """``lr`` was tuned at ``reference_batch``; at another batch size it grows by the square root
    of the ratio (``sqrt``, as Adam's noise scale suggests), by the ratio (``linear``), or not
    (``none``)."""
    if rule not in LR_SCALINGS:
        raise ValueError(f"unknown learning-rate scaling {rule!r}; valid values are: {', '.join(LR_SCALINGS)}")
    ratio = batch_size / reference_batch
    return lr * {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]


def keep_rows_up_to(path: Path, step: int) -> None:
    """A JSON-lines log of a resumed run drops what the interrupted run logged after its
    checkpoint (rows with a later ``step``); a new run starts it empty."""
    rows = path.read_text().splitlines() if path.exists() else []
    path.write_text("".join(row + "\n" for row in rows if json.loads(row)["step"] <= step))


def policy_config(model: DictConfig) -> PolicyConfig:
    """The policy config of a ``model`` group, reading colour words against this world's colours
    (``model.colour_words``: the palette comes from envs/vocabulary.py unless the config gives one)
    and unknown nouns as this world's things (``model.noun_reading``: ``scene_nouns`` likewise)."""
    values = OmegaConf.to_container(model)
    if values.get("colour_words", True) and not values.get("colour_palette"):
        values["colour_palette"] = colour_palette()
    if values.get("noun_reading", True) and not values.get("scene_nouns"):
        values["scene_nouns"] = scene_nouns()
    return PolicyConfig.from_dict(values)
