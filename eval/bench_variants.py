"""What a model choice costs: inference latency and training speed of variants of one model.

    python eval/bench_variants.py --variants heads|vision [--model small|large]
        [--set vision_tokens=false ...] [--device cpu|cuda] [--batch-size 256] [--rounds 30]
        [--out outputs/bench_heads.json]

``heads`` (V18, V4): the token head, the flow-matching head with 10 and 5 integration steps,
FiLM conditioning. ``vision`` (V5): image size, patch size, token pooling, frozen ViT blocks, LoRA
adapters, no ViT at all.
Each variant is the same model but for the settings it names. Latency: one greedy action for
one real reach observation (batch 1), median of
``--rounds`` calls. Training: optimiser steps per second on a batch of ``--batch-size`` samples
of the same shapes (forward, backward, AdamW). The variants are timed in turns, so the machine's
load drifts over all of them alike: compare the ratios, not the milliseconds. Random weights and
a scratch text encoder: the time does not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import gymnasium as gym
import torch
from omegaconf import OmegaConf

import envs  # noqa: F401  (registers the tasks)
from envs.camera import key_image_coordinates
from vla.app.cli import compose_config
from vla.policy import PolicyConfig, VLAPolicy

VARIANT_SETS = {  # name -> {variant -> the model settings it changes}
    "heads": {
        "tokens": {},
        "flow, 10 steps": {"action_head": "flow", "flow_steps": 10},
        "flow, 5 steps": {"action_head": "flow", "flow_steps": 5},
        "film": {"fusion": "film"},
    },
    "vision": {
        "64 px, patch 16: 16 tokens": {},
        "64 px, patch 8: 64 tokens": {"patch_size": 8},
        "64 px, patch 16, pool 2: 4 tokens": {"vision_pool": 2},
        "96 px, patch 16: 36 tokens": {"image_size": 96},
        "ViT's first block frozen": {"vision_frozen_layers": 1},
        "ViT frozen, LoRA rank 4": {"vision_lora_rank": 4},
        "no ViT: keypoint tokens only": {"vision_tokens": False},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", required=True, choices=list(VARIANT_SETS), help="which comparison")
    parser.add_argument("--model", default="small", choices=["small", "large"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model settings of every variant")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=256, help="training batch")
    parser.add_argument("--rounds", type=int, default=30, help="timed calls of each variant, in turns")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args()
    if args.rounds < 1 or args.batch_size < 1:
        raise SystemExit(f"error: --rounds and --batch-size must be >= 1, got {args.rounds} and {args.batch_size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda needs a CUDA GPU; this machine has none")
    device = torch.device(args.device)
    overrides = [f"model={args.model}", *(f"model.{item}" for item in args.set)]  # Hydra parses and checks them
    try:
        base = OmegaConf.to_container(compose_config("bc", overrides).model)
    except ValueError as error:
        raise SystemExit(f"error: --set: {error}") from None
    base["text_encoder"] = "scratch"

    variants = VARIANT_SETS[args.variants]
    n, g = args.batch_size, torch.Generator().manual_seed(0)
    inputs: dict[int, tuple[dict, dict]] = {}  # image size -> (one observation, a training batch)

    def inputs_at(size: int) -> tuple[dict, dict]:
        """A real reach observation rendered at ``size`` pixels, and a training batch of its shapes."""
        if size not in inputs:
            env = gym.make("VLASandbox/Reach-v0", image_size=size)
            obs, _ = env.reset(seed=0)
            words = env.unwrapped.instruction
            env.close()
            one = {
                "image": torch.as_tensor(obs["image"])[None].to(device),
                "proprio": torch.as_tensor(obs["proprio"])[None].to(device),
                "instruction": [words],
            }
            key_positions = torch.randn(n, 6, generator=g) * 0.1  # metres, for the auxiliary loss
            batch = {
                "image": torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g).to(device),
                "proprio": torch.randn(n, len(obs["proprio"]), generator=g).to(device),
                "instruction": [words] * n,
                "key_positions": key_positions.to(device),
                "key_uv": torch.as_tensor(key_image_coordinates(key_positions.numpy()), dtype=torch.float32).to(device),
            }
            inputs[size] = one, batch
        return inputs[size]

    models, optimizers = {}, {}
    for name, change in variants.items():
        torch.manual_seed(0)
        policy = VLAPolicy(PolicyConfig.from_dict({**base, **change})).to(device)
        models[name] = policy
        optimizers[name] = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    latency: dict[str, list[float]] = {name: [] for name in variants}
    step_time: dict[str, list[float]] = {name: [] for name in variants}
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for round_ in range(args.rounds + 2):  # two warm-up rounds, not counted
        for name, policy in models.items():
            c = policy.config
            one, train_batch = inputs_at(c.image_size)
            tokens = c.chunk * c.action_dim
            batch = {**train_batch, "action_bins": torch.randint(0, c.bins, (n, tokens), generator=g).to(device)}
            policy.eval()
            sync()
            start = time.perf_counter()
            with torch.no_grad(), cast:
                policy.decode(one)
            sync()
            elapsed = time.perf_counter() - start
            policy.train()
            start = time.perf_counter()
            with cast:
                loss = policy.loss(batch, augment=False)["loss"]
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            sync()
            if round_ >= 2:
                latency[name].append(elapsed * 1e3)
                step_time[name].append(time.perf_counter() - start)

    rows = []
    for name in variants:
        ms, step = statistics.median(latency[name]), statistics.median(step_time[name])
        rows.append({"variant": name, "latency_ms": ms, "train_samples_per_s": n / step})
    first = rows[0]
    settings = " ".join(args.set)
    print(f"{args.variants}: model={args.model} {settings} on {args.device}, {args.rounds} rounds, training batch {n}")
    print(f"| variant | latency, batch 1 (ms) | vs {first['variant']} | training samples/s | vs {first['variant']} |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['latency_ms']:.2f} | {r['latency_ms'] / first['latency_ms']:.2f}x "
            f"| {r['train_samples_per_s']:,.0f} | {r['train_samples_per_s'] / first['train_samples_per_s']:.2f}x |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "variants": args.variants,
            "model": args.model,
            "set": args.set,
            "device": args.device,
            "batch_size": n,
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
