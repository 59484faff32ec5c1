"""Train the policy for a few steps on N processes over loopback gloo, sharded (FSDP) or
replicated (DDP), and report what each rank held: the measurement behind V19 and the test
that sharding changes memory, not numerics.

``run(...)`` spawns the processes with ``torch.multiprocessing`` and returns one result per
rank: the global loss of every step, step times, the bytes of parameters, gradients and
optimiser states the rank held, its peak resident memory, the gathered weights and the
tokens the trained model decodes. The data is one fixed synthetic batch (random pixels, real
instruction words), split evenly over the ranks: every run of the same seed sees the same
global batch, so a single-process run on it gives the same losses up to rounding.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vla.policy import PolicyConfig, VLAPolicy
from vla.training.sharding import full_state_dict, rank_memory, shard_policy

# fsdp: ZeRO-3 (weights gathered for the forward and again for the backward); zero2: the
# gathered weights kept from forward to backward (FSDP's reshard_after_forward=False); ddp.
MODES = ("fsdp", "zero2", "ddp")
WORDS = ("red cube", "blue cylinder", "green block", "yellow cup")


def synthetic_batch(config: PolicyConfig, size: int, seed: int = 0) -> dict[str, Any]:
    """A training batch of ``size`` samples in the dataset's layout, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    c = config
    return {
        "image": torch.randint(0, 256, (size, c.image_size, c.image_size, 3), dtype=torch.uint8, generator=g),
        "instruction": [f"put the {WORDS[i % 4]} on the {WORDS[(i + 1) % 4]}" for i in range(size)],
        "proprio": torch.randn(size, c.proprio_dim, generator=g),
        "action_bins": torch.randint(0, c.bins, (size, c.chunk * c.action_dim), generator=g),
        "key_uv": torch.rand(size, max(c.keypoints, 1), 2, generator=g) * 2 - 1,  # image coordinates in [-1, 1]
    }


def rows(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Samples ``start:stop`` of ``batch`` (tensors and the instruction list alike)."""
    return {k: v[start:stop] for k, v in batch.items()}


def make_policy(config: PolicyConfig, seed: int) -> VLAPolicy:
    """The policy every rank (and the single-process reference) starts from: the same seed, so
    the same weights on every rank, as sharding and replication both assume."""
    torch.manual_seed(seed)
    policy = VLAPolicy(config)
    policy.freeze_outside_bc_loss()  # in every mode alike (DDP needs it)
    return policy


def train_steps(
    model: torch.nn.Module, batch: dict[str, Any], steps: int, lr: float, reduce: bool
) -> tuple[list[float], list[float], torch.optim.Optimizer]:
    """``steps`` AdamW steps on ``batch`` (no augmentation: the same numbers in every layout).
    Returns the loss of each step (averaged over ranks when ``reduce``), each step's seconds
    and the optimiser."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    losses, times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model(batch, augment=False)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
        value = loss.detach().clone()
        if reduce:  # each rank's loss is the mean over its half: their mean is the global loss
            dist.all_reduce(value)
            value /= dist.get_world_size()
        losses.append(value.item())
    return losses, times, optimizer


def _resident_bytes() -> int:
    """This process's resident memory now (Linux /proc), in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker(rank: int, world: int, port: int, job: dict[str, Any], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(job["threads"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        config = PolicyConfig(**job["config"])
        batch = synthetic_batch(config, job["batch_size"], job["seed"])
        per_rank = job["batch_size"] // world
        local = rows(batch, rank * per_rank, (rank + 1) * per_rank)
        resident_before = _resident_bytes()
        policy = make_policy(config, job["seed"])
        if job["mode"] in ("fsdp", "zero2"):
            model = shard_policy(policy, reshard_after_forward=job["mode"] == "fsdp")
        else:
            model = torch.nn.parallel.DistributedDataParallel(policy)
        losses, times, optimizer = train_steps(model, local, job["steps"], job["lr"], reduce=True)
        held = rank_memory(model, optimizer)
        state = full_state_dict(model)
        model.eval()
        with torch.no_grad():  # every rank decodes (a sharded decode gathers weights: collective)
            tokens, logits, _ = (policy.decode if job["mode"] == "ddp" else model.decode)(local, scores=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        result = {"rank": rank, "losses": losses, "step_seconds": times, "held": held}
        result |= {"tokens": tokens, "logits": logits}
        result |= {"peak_rss": peak, "rss_before_model": resident_before, "state": state if rank == 0 else None}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on loopback now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(
    config: PolicyConfig,
    out_dir: Path,
    mode: str = "fsdp",
    world: int = 2,
    steps: int = 3,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Train on ``world`` gloo processes (``mode``: one of MODES) and return each rank's result
    (see the module docstring); rank 0's also holds the gathered ``state``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid values are: {', '.join(MODES)}")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must split evenly over {world} processes")
    out_dir.mkdir(parents=True, exist_ok=True)
    job = {"config": asdict(config), "mode": mode, "steps": steps, "batch_size": batch_size, "lr": lr}
    job |= {"seed": seed, "threads": threads}
    mp.spawn(_worker, args=(world, free_port(), job, str(out_dir)), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
