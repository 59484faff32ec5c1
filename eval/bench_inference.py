"""Batch-1 decoding speed: KV cache vs recomputing per token vs parallel decoding.

Rows: ``kv_cache`` (prefill once, then one token at a time against cached keys/values);
``recompute`` (decoder re-run over the whole sequence per token, encoder outputs reused);
``recompute_all`` (the whole model per token: image and instruction re-encoded too, what a
plain forward call per token costs); ``parallel`` (all 7 tokens in one pass).

    python eval/bench_inference.py [--checkpoint RUN_DIR_OR_PT] [--repeats 200] [--model small|large]
    python eval/bench_inference.py --compete     # batch 1 beside a CPU-bound process: threads matter

Times ``policy.decode`` on one observation (the policy's whole per-step cost), checks that
cached and both uncached decodings give identical tokens on every call, and reports ratios
within this one run (timings on a shared machine drift; ratios drift less). Without a
checkpoint it times a freshly initialised model of the named config (the speed does not
depend on the weights); the parallel row then is the same architecture in parallel mode.

``--compete`` times batch-1 parallel decoding with torch's default threads and with the
threads ``vla.load_policy`` chooses (``threads="auto"``: one thread for a batch of one), each
alone and beside a CPU-bound process on every core (a shared laptop, a simulator next door).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vla.app.cli import compose_config
from vla.checkpoint import build_policy, read_checkpoint
from vla.inference import inference_threads
from vla.policy import PolicyConfig, VLAPolicy

INSTRUCTIONS = ["pick up the red cube and put it in the orange zone", "stack the blue cylinder on the green cube"]


def make_policies(args: argparse.Namespace) -> tuple[VLAPolicy, VLAPolicy]:
    if args.checkpoint:
        trained, _ = build_policy(read_checkpoint(args.checkpoint))
        values, weights = trained.config_dict(), trained.state_dict()
    else:
        values = OmegaConf.to_container(compose_config("bc", [f"model={args.model}"]).model)
        weights = None
    # The same weights both ways, whichever decoding the config trained with: the KV cache
    # only exists for autoregressive decoding.
    policy, parallel = (
        VLAPolicy(PolicyConfig.from_dict({**values, "decoding": decoding}))
        for decoding in ("autoregressive", "parallel")
    )
    if weights is None:
        weights = policy.state_dict()
    policy.load_state_dict(weights)
    parallel.load_state_dict(weights)
    return policy.eval(), parallel.eval()


def timed(fn, repeats: int) -> list[float]:
    for _ in range(5):  # warm-up: allocator, caches, instruction-feature cache
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--model", default="small", choices=["small", "large"])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--compete", action="store_true", help="batch 1 alone and beside a CPU-bound process")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy, parallel = make_policies(args)
    size = policy.config.image_size
    g = torch.Generator().manual_seed(0)
    observations = [
        {
            "image": torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8, generator=g),
            "proprio": torch.randn(1, policy.config.proprio_dim, generator=g),
            "instruction": [INSTRUCTIONS[i % 2]],
        }
        for i in range(8)
    ]
    if args.compete:
        return compete(parallel, observations, args.repeats)
    mismatches = 0
    for batch in observations:
        cached = policy.decode(batch, use_cache=True)
        mismatches += int(not torch.equal(cached, policy.decode(batch, use_cache=False)))
        mismatches += int(not torch.equal(cached, policy.decode(batch, use_cache=False, reuse_prefix=False)))

    checks = 2 * len(observations)
    counter = iter(range(10**9))

    def next_obs():
        return observations[next(counter) % len(observations)]

    with torch.inference_mode():
        rows = {
            "kv_cache": timed(lambda: policy.decode(next_obs(), use_cache=True), args.repeats),
            "recompute": timed(lambda: policy.decode(next_obs(), use_cache=False), args.repeats),
            "recompute_all": timed(
                lambda: policy.decode(next_obs(), use_cache=False, reuse_prefix=False), args.repeats
            ),
            "parallel": timed(lambda: parallel.decode(next_obs()), args.repeats),
        }
    medians = {k: statistics.median(v) * 1e3 for k, v in rows.items()}
    print(
        f"batch 1, {policy.config.layers} layers x width {policy.config.width}, "
        f"torch threads {torch.get_num_threads()}, "
        f"{args.repeats} calls each; cached == uncached tokens in {checks - mismatches}/{checks} checks"
    )
    print(f"{'decoding':<14}{'median ms':>10}{'p90 ms':>9}{'vs recompute':>14}{'vs recompute_all':>18}")
    for name, times in rows.items():
        p90 = sorted(times)[int(0.9 * len(times))] * 1e3
        ratio, ratio_all = medians["recompute"] / medians[name], medians["recompute_all"] / medians[name]
        print(f"{name:<14}{medians[name]:>10.2f}{p90:>9.2f}{ratio:>13.2f}x{ratio_all:>17.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"median_ms": medians, "identical_tokens": mismatches == 0}, indent=1))
    if mismatches:
        raise SystemExit(f"error: KV-cache decoding differed from full recomputation on {mismatches} observations")


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def compete(policy: VLAPolicy, observations: list[dict], repeats: int) -> None:
    """Median batch-1 latency by thread count, alone and beside one busy process per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = {"torch default": torch.get_num_threads(), "auto (vla.load_policy)": inference_threads(1)}
    rows = []
    for load in ("alone", f"beside {cores} busy processes"):
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(cores if load != "alone" else 0)]
        for p in spinners:
            p.start()
        try:
            for name, threads in settings.items():
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    times = timed(lambda: policy.decode(observations[0]), repeats)
                rows.append(
                    (load, name, threads, statistics.median(times) * 1e3, sorted(times)[int(0.9 * len(times))] * 1e3)
                )
        finally:
            stop.set()
            for p in spinners:
                p.join()
    print(f"batch-1 parallel decoding, {cores} cores, {repeats} calls per row")
    print(f"{'load':<26}{'threads':<24}{'n':>3}{'median ms':>11}{'p90 ms':>9}")
    for load, name, threads, median, p90 in rows:
        print(f"{load:<26}{name:<24}{threads:>3}{median:>11.2f}{p90:>9.2f}")


if __name__ == "__main__":
    main()
