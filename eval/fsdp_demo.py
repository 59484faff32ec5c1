"""Sharded (FSDP, ZeRO-3) against replicated (DDP) training of the policy on N CPU processes
over loopback gloo, and the sizes that decide how a model is split (V19).

    python eval/fsdp_demo.py [--model large] [--world 2] [--steps 5] [--batch-size 8]

Modes: fsdp (ZeRO-3), zero2 (gathered weights kept from forward to backward), ddp.
Prints the parameters per component, the activations saved for backward per sample
(measured), the KV cache per sequence, then for each mode and rank: the bytes of parameters,
gradients and AdamW states the rank held, its peak resident memory, the median step time
and the global loss of every step. The data is one fixed synthetic batch (random pixels,
real instruction words): the point is memory and numerics, not learning.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from vla.app.cli import compose_config
from vla.policy import PolicyConfig, VLAPolicy
from vla.sizes import kv_cache_bytes, parameter_counts, saved_activation_bytes
from vla.training.sharded_run import MODES, make_policy, run, synthetic_batch

MB = 2**20


def sizes(config: PolicyConfig, batch_size: int) -> None:
    policy = make_policy(config, seed=0)
    counts = parameter_counts(policy)
    total = sum(counts.values())
    parts = ", ".join(f"{name} {n / 1e6:.2f}M" for name, n in counts.items())
    print(f"parameters: {total / 1e6:.2f}M ({parts}); fp32 weights {4 * total / MB:.1f} MiB")
    batch = synthetic_batch(config, batch_size)
    saved = saved_activation_bytes(policy, batch)
    print(f"activations saved for backward: {saved / batch_size / MB:.2f} MiB per sample (fp32, batch {batch_size})")
    layout = policy.token_layout(batch)
    tokens = sum(n for _, n in layout)
    kv = kv_cache_bytes(config.layers, tokens, config.width)
    print(
        f"KV cache: {kv / 1024:.0f} KiB per sequence ({config.layers} layers x 2 x {tokens} tokens x width "
        f"{config.width} x 4 bytes; tokens {dict(layout)})"
    )


def train(config: PolicyConfig, mode: str, args: argparse.Namespace, out: Path) -> None:
    ranks = run(config, out / mode, mode, args.world, args.steps, args.batch_size, args.lr, threads=args.threads)
    for r in ranks:
        held = {k: f"{v / MB:.1f}" for k, v in r["held"].items()}
        step = statistics.median(r["step_seconds"][1:] or r["step_seconds"])
        print(
            f"{mode} rank {r['rank']}: held MiB {held} | peak RSS {r['peak_rss'] / MB:.0f} MiB "
            f"({(r['peak_rss'] - r['rss_before_model']) / MB:.0f} above the process before the model) | "
            f"median step {step:.2f} s"
        )
    print(f"{mode} global loss per step: {[round(x, 4) for x in ranks[0]['losses']]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="large", choices=["small", "large"])
    parser.add_argument("--text-encoder", default="scratch", help="scratch (trained, nothing to download) or an id")
    parser.add_argument("--world", type=int, default=2, help="processes (gloo on loopback)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--modes", default=",".join(MODES), help="any of fsdp (ZeRO-3), zero2, ddp")
    args = parser.parse_args()
    values = OmegaConf.to_container(compose_config("bc", [f"model={args.model}"]).model)
    config = PolicyConfig.from_dict(values | {"text_encoder": args.text_encoder})
    VLAPolicy(config)  # a bad config fails here, before any process starts
    sizes(config, min(args.batch_size, 8))  # per sample: a small batch measures it as well
    with tempfile.TemporaryDirectory() as out:
        for mode in args.modes.split(","):
            train(config, mode, args, Path(out))


if __name__ == "__main__":
    main()
