"""How fast the policy decodes, and what each trick buys (L1, L2, L5, L6, L7, V9, V10, V20).

    python eval/bench_inference.py [--checkpoint RUN_OR_PT | --model small|large] [--device cpu|cuda]
        [--sections latency,throughput,phases,vision,decoding] [--batch-sizes 1,16,256,4096]
        [--draft DRAFT_PT --observations 100]   # --sections speculative
        [--dtypes fp32,bf16,fp16] [--modes eager,compile,graph,int8] [--repeats 200] [--out bench.json]
        [--weights fp,int8] [--compile-mode default|max-autotune-no-cudagraphs] [--attention sdpa|flex]
    python eval/bench_inference.py --compete     # batch 1 beside a CPU-bound process: threads matter

Sections (each prints one table; ``--out`` writes them all as JSON):

- ``act``: ``vla.load_policy(checkpoint).act(obs)`` end to end, batch 1, per backend (what a
  robot calls: batching the observation, the decode, the out-of-scope check, tokens -> action).
- ``latency``: batch 1, the whole decode of one observation (instruction features read
  once, as a deployed policy caches them), per decoding (parallel; autoregressive with and
  without KV cache), dtype and execution mode: ``eager``, ``compile`` (torch.compile),
  ``graph`` (one CUDA graph replay, GPU only), ``compile-graph`` (both), ``onnx`` (ONNX
  Runtime, CPU only), ``int8`` (dynamic int8 matrix products, CPU only). Median and p90
  ms, actions/s, peak GPU memory, and the share of observations whose greedy tokens equal
  eager fp32's.
- ``throughput``: parallel decoding against batch size: actions/s per dtype and mode, and the
  batch size where it saturates (first to reach 90% of the best).
- ``profile`` (GPU): torch.profiler over parallel decodes per dtype, mode and batch size:
  kernels per call, GPU busy time per call, and the kernels that take it.
- ``phases``: autoregressive decoding split into prefill (image + instruction + proprio, one
  pass) and decode (6 one-token steps against the KV cache), against batch size, with each
  phase's FLOPs, bytes moved and arithmetic intensity (L2: which is compute-, which
  memory-bound).
- ``vision``: latency against the number of vision tokens (image size, patch size, pooling),
  batch 1 and batched (V20).
- ``decoding``: the KV cache against recomputing per token, tokens checked identical (L1).
- ``speculative``: batch 1 on real env observations (``--observations``): the target
  (``--checkpoint``) decoding autoregressively and in parallel, the draft (``--draft``) alone,
  and speculative decoding (vla/speculative.py: the draft guesses, the target checks all 7
  tokens in one pass), with an autoregressive and a parallel draft; median and p90 ms, target
  passes, acceptance, and tokens against the target's autoregressive ones (must all be equal).

Without a checkpoint it times a freshly initialised model of the named config (speed does
not depend on the weights; ``--text-encoder scratch`` avoids loading a pretrained encoder).
Timings on a shared machine drift: compare rows of one run, as ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from vla.app.cli import compose_config
from vla.checkpoint import build_policy, read_checkpoint
from vla.fast_inference import StaticDecoder, quantize_int8, quantize_weight_int8, text_inputs
from vla.inference import inference_threads
from vla.policy import PolicyConfig, VLAPolicy

INSTRUCTIONS = [
    "pick up the red cube and put it in the orange zone",
    "stack the blue cylinder on the green cube",
    "touch the yellow cylinder",
    "push the green cube to the white zone",
    "lift the red cylinder",
    "reach the blue cube",
    "put the yellow cube in the purple zone",
    "stack the red cube on the yellow cylinder",
]
SECTIONS = ("act", "latency", "throughput", "profile", "phases", "vision", "decoding", "paged", "speculative")


def policy_values(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    if args.checkpoint:
        trained, _ = build_policy(read_checkpoint(args.checkpoint))
        return trained.config_dict(), trained.state_dict()
    values = OmegaConf.to_container(compose_config("bc", [f"model={args.model}"]).model)
    if args.text_encoder:
        values["text_encoder"] = args.text_encoder
    return values, None


def make_policy(values: dict[str, Any], weights: dict | None, device: torch.device, **changes: Any) -> VLAPolicy:
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**values, **changes}))
    if weights is not None:
        policy.load_state_dict(weights, strict=False)
    return policy.to(device).eval()


def observations(policy: VLAPolicy, n: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    c = policy.config
    g = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randint(0, 256, (n, c.image_size, c.image_size, 3), dtype=torch.uint8, generator=g),
        "proprio": torch.randn(n, c.proprio_dim, generator=g),
        "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)],
    }
    if "wrist" in c.cameras:
        batch["wrist_image"] = batch["image"].flip(1)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch["text_states"], batch["text_mask"] = text_inputs(policy, batch["instruction"], device)
    return batch


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    """Seconds per call, each call synchronised (the GPU's work counted, not just its launch)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(5):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    """Release what earlier rows held (CUDA graphs keep private memory pools until collected)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def mode_supported(mode: str, dtype: str, device: torch.device) -> str | None:
    """Why a (mode, dtype) row cannot run here, or None."""
    if mode.endswith("graph") and device.type != "cuda":
        return "CUDA graphs need a GPU"
    if mode == "int8" and (device.type != "cpu" or dtype != "fp32"):
        return "dynamic int8 runs on the CPU, from fp32"
    if mode == "onnx" and (device.type != "cpu" or dtype != "fp32"):
        return "ONNX Runtime runs here on the CPU, in fp32"
    if dtype == "fp16" and device.type == "cpu":
        return "fp16 matrix products are slow on CPUs"
    return None


def decoder_for(
    policy: VLAPolicy,
    batch_size: int,
    device: torch.device,
    dtype: str,
    mode: str,
    use_cache: bool = True,
    weights: str = "fp",
    compile_mode: str = "default",
    attention: str = "sdpa",
) -> StaticDecoder:
    if mode == "int8":
        return StaticDecoder(quantize_int8(policy), batch_size, device, "fp32", "eager", use_cache)
    if weights == "int8":
        policy = quantize_weight_int8(policy)
    return StaticDecoder(policy, batch_size, device, dtype, mode, use_cache, compile_mode, attention)


def runnable_variants(args, device: torch.device) -> list[tuple[str, str, str]]:
    """(dtype, mode, weights) of the command line that can run on ``device``."""
    return [
        (d, m, w)
        for d in args.dtypes
        for m in args.modes
        for w in weight_variants(args, m)
        if mode_supported(m, d, device) is None
    ]


def weight_variants(args, mode: str) -> list[str]:
    """The --weights a (mode) row runs with: dynamic int8 has its own int8 weights."""
    return ["fp"] if mode == "int8" else args.weights


def weight_megabytes(policy: VLAPolicy) -> float:
    """Bytes of the saved state dict without the text encoder (what quantisation shrinks)."""
    import io

    buffer = io.BytesIO()
    torch.save({k: v for k, v in policy.state_dict().items() if not k.startswith("text.")}, buffer)
    return len(buffer.getvalue()) / 2**20


def latency(args, values, weights, device) -> list[dict[str, Any]]:
    rows = []
    probes = args.probes  # observations whose tokens are compared with eager fp32's
    for decoding, use_cache in (("parallel", True), ("autoregressive", True), ("autoregressive", False)):
        if decoding not in args.decodings or (not use_cache and "no-cache" not in args.decodings):
            continue
        policy = make_policy(values, weights, device, decoding=decoding)
        check = observations(policy, probes, device, seed=1)
        reference = policy.decode(check, use_cache=use_cache)
        one = observations(policy, 1, device)
        for dtype, mode, quant in (
            (d, m, w) for d in args.dtypes for m in args.modes for w in weight_variants(args, m)
        ):
            name = f"{decoding}{'' if use_cache or decoding == 'parallel' else ' (no cache)'}"
            why = mode_supported(mode, dtype, device)
            if why is None and mode != "eager" and not use_cache:
                why = "the no-cache baseline stays eager"
            if why is not None:
                continue
            free_memory(device)
            attention = args.attention if decoding == "parallel" else "sdpa"  # flex serves parallel decoding
            decoder = decoder_for(policy, 1, device, dtype, mode, use_cache, quant, args.compile_mode, attention)
            agree = 0
            for i in range(probes):
                row = {k: v[i : i + 1] for k, v in check.items()}
                agree += int(torch.equal(decoder.decode(row), reference[i : i + 1]))
            decoder.load(one)
            reset_peak(device)
            times = timed(decoder.decode, args.repeats, device)
            median = statistics.median(times) * 1e3
            rows.append(
                {
                    "decoding": name,
                    "dtype": dtype,
                    "mode": mode,
                    "weights": quant,
                    "weight_mb": weight_megabytes(decoder.policy),
                    "median_ms": median,
                    "p90_ms": sorted(times)[int(0.9 * len(times))] * 1e3,
                    "actions_per_s": 1e3 / median,
                    "peak_mb": peak_memory_mb(device),
                    "tokens_equal": agree / probes,
                }
            )
            print_row(
                rows[-1],
                ["decoding", "dtype", "mode", "weights", "weight_mb", "median_ms", "p90_ms", "actions_per_s"]
                + ["tokens_equal"],
            )
    return rows


def throughput(args, values, weights, device) -> list[dict[str, Any]]:
    rows = []
    policy = make_policy(values, weights, device, decoding="parallel")
    for dtype, mode, quant in runnable_variants(args, device):
        for size in args.batch_sizes:
            free_memory(device)
            reset_peak(device)
            try:
                decoder = decoder_for(policy, size, device, dtype, mode, True, quant, args.compile_mode, args.attention)
                decoder.load(observations(policy, size, device))
                times = timed(decoder.decode, max(5, args.repeats // 10), device)
            except torch.OutOfMemoryError:
                print(f"{dtype} {mode} batch {size}: out of memory")
                decoder = None
                break
            median = statistics.median(times)
            rows.append(
                {
                    "dtype": dtype,
                    "mode": mode,
                    "weights": quant,
                    "batch": size,
                    "ms_per_batch": median * 1e3,
                    "actions_per_s": size / median,
                    "peak_mb": peak_memory_mb(device),
                }
            )
            print_row(rows[-1], ["dtype", "mode", "weights", "batch", "ms_per_batch", "actions_per_s", "peak_mb"])
            decoder = None
    for key in dict.fromkeys((r["dtype"], r["mode"], r["weights"]) for r in rows):
        series = [r for r in rows if (r["dtype"], r["mode"], r["weights"]) == key]
        best = max(r["actions_per_s"] for r in series)
        saturated = next(r["batch"] for r in series if r["actions_per_s"] >= 0.9 * best)
        print(f"{' '.join(key)}: best {best:,.0f} actions/s; 90% of it from batch {saturated}")
    return rows


def profile(args, values, weights, device) -> list[dict[str, Any]]:
    """Where a decode's time goes: torch.profiler over ``--repeats`` calls per (dtype, mode,
    weights, batch size): kernels per call, device time per call, and the kernels that take it."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    if device.type != "cuda":
        print("profile: kernels are counted on a GPU (--device cuda)")
        return []
    rows = []
    policy = make_policy(values, weights, device, decoding="parallel")
    for dtype, mode, quant in runnable_variants(args, device):
        for size in args.batch_sizes:
            free_memory(device)
            decoder = decoder_for(policy, size, device, dtype, mode, True, quant, args.compile_mode, args.attention)
            decoder.load(observations(policy, size, device))
            timed(decoder.decode, 3, device)  # compile / capture outside the trace
            calls = max(3, args.repeats // 10)
            with torch_profile(activities=[ProfilerActivity.CUDA]) as trace:
                for _ in range(calls):
                    decoder.decode()
                torch.cuda.synchronize()
            events = [e for e in trace.events() if e.device_type.name == "CUDA"]
            busy: dict[str, float] = {}
            for event in events:
                busy[event.name] = busy.get(event.name, 0.0) + event.device_time
            total = sum(busy.values())
            top = sorted(busy.items(), key=lambda item: -item[1])[:8]
            rows.append(
                {
                    "dtype": dtype,
                    "mode": mode,
                    "weights": quant,
                    "batch": size,
                    "kernels_per_call": len(events) / calls,
                    "busy_us_per_call": total / calls,
                    "top": [(name[:90], round(us / calls, 1), round(us / total, 3)) for name, us in top],
                }
            )
            print_row(rows[-1], ["dtype", "mode", "weights", "batch", "kernels_per_call", "busy_us_per_call"])
            for name, us, share in rows[-1]["top"]:
                print(f"    {us:9.1f} us {share:6.1%}  {name}")
            decoder = None
    return rows


def _prefill(policy: VLAPolicy, batch: dict[str, Any]):
    """Prefix + start token through the decoder, filling a KV cache: (out, cache, key mask)."""
    from vla.transformer import KVCache

    cache = KVCache(len(policy.blocks))
    x, valid, mask = policy.prefill_inputs(*policy.prefix(batch))
    return policy._run(x, mask, cache), cache, valid


def _decode_steps(policy: VLAPolicy, out: torch.Tensor, cache, valid: torch.Tensor, keys, values) -> torch.Tensor:
    """The 6 one-token steps after prefill, from a copy of the prefilled cache (keys, values)."""
    cache.keys, cache.values = list(keys), list(values)
    one = torch.ones(len(valid), 1, dtype=torch.bool, device=valid.device)
    bins = policy.head(policy.norm(out[:, -1:])).argmax(-1)
    for i in range(1, policy.config.action_dim):
        valid = torch.cat([valid, one], 1)
        out = policy._run(policy.next_token_input(bins, i), valid[:, None, None, :], cache)
        bins = policy.head(policy.norm(out[:, -1:])).argmax(-1)
    return bins


def _flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    # with autograd on: the counter's module tracker hooks the graph it builds
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def phases(args, values, weights, device) -> list[dict[str, Any]]:
    """Prefill and decode of autoregressive decoding, timed apart, with their FLOPs and bytes."""
    policy = make_policy(values, weights, device, decoding="autoregressive")
    dtype = torch.bfloat16 if "bf16" in args.dtypes and device.type == "cuda" else torch.float32
    element = torch.finfo(dtype).bits // 8
    decoder_weights = sum(p.numel() for n, p in policy.named_parameters() if n.startswith(("blocks.", "head.")))
    all_weights = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    repeats = max(5, args.repeats // 10)
    rows = []
    for size in args.batch_sizes:
        free_memory(device)
        try:
            batch = observations(policy, size, device)
        except torch.OutOfMemoryError:
            print(f"batch {size}: out of memory")
            break
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            try:
                prefill_s = statistics.median(timed(lambda b=batch: _prefill(policy, b), repeats, device))
                out, cache, valid = _prefill(policy, batch)
                kept = (list(cache.keys), list(cache.values))
                decode_s = statistics.median(
                    timed(lambda o=out, c=cache, v=valid, k=kept: _decode_steps(policy, o, c, v, *k), repeats, device)
                )
            except torch.OutOfMemoryError:
                print(f"batch {size}: out of memory")
                break
            prefill_flops = _flops(lambda b=batch: _prefill(policy, b))
            decode_flops = _flops(lambda o=out, c=cache, v=valid, k=kept: _decode_steps(policy, o, c, v, *k))
        tokens = valid.shape[1]
        kv_bytes = 2 * len(policy.blocks) * size * tokens * policy.config.width * element
        # decode reads every decoder weight and the whole KV cache once per token; prefill reads
        # every weight once and writes the cache (its activations are small beside them)
        decode_bytes = (policy.config.action_dim - 1) * (decoder_weights * element + kv_bytes)
        prefill_bytes = all_weights * element + kv_bytes
        rows.append(
            {
                "batch": size,
                "prefill_ms": prefill_s * 1e3,
                "decode_ms": decode_s * 1e3,
                "prefill_gflop": prefill_flops / 1e9,
                "decode_gflop": decode_flops / 1e9,
                "prefill_flop_per_byte": prefill_flops / prefill_bytes,
                "decode_flop_per_byte": decode_flops / decode_bytes,
                "prefill_tflops": prefill_flops / prefill_s / 1e12,
                "decode_tflops": decode_flops / decode_s / 1e12,
            }
        )
        print_row(rows[-1], list(rows[-1]))
    return rows


def vision(args, values, weights, device) -> list[dict[str, Any]]:
    """Latency and memory against the number of vision tokens (a fresh model per setting)."""
    rows = []
    settings = [(64, 16, 1), (64, 8, 1), (64, 8, 2), (64, 4, 1), (64, 4, 2), (96, 8, 1), (128, 8, 1), (128, 16, 1)]
    dtype = "bf16" if device.type == "cuda" else "fp32"
    mode = "graph" if device.type == "cuda" else "eager"
    batched = max(args.batch_sizes)
    for image, patch, pool in settings:
        changes = {"image_size": image, "patch_size": patch, "vision_pool": pool, "decoding": "parallel"}
        policy = make_policy(values, None, device, **changes)  # fresh weights: shapes differ
        tokens = policy.vision.num_tokens if policy.vision is not None else 0
        row = {"image": image, "patch": patch, "pool": pool, "vision_tokens": tokens}
        for size in (1, batched):
            decoder = None
            free_memory(device)
            reset_peak(device)
            try:
                decoder = StaticDecoder(policy, size, device, dtype, mode)
                decoder.load(observations(policy, size, device))
                median = statistics.median(timed(decoder.decode, max(5, args.repeats // 10), device))
            except torch.OutOfMemoryError:
                row[f"batch{size}_ms"] = None
                continue
            row[f"batch{size}_ms"] = median * 1e3
            row[f"batch{size}_actions_per_s"] = size / median
            row[f"batch{size}_peak_mb"] = peak_memory_mb(device)
        rows.append(row)
        print_row(row, list(row))
    return rows


def decoding(args, values, weights, device) -> dict[str, Any]:
    """Batch 1: KV cache against recomputing the decoder (or the whole model) per token."""
    policy = make_policy(values, weights, device, decoding="autoregressive")
    parallel = make_policy(values, weights, device, decoding="parallel")
    batches = [{k: v for k, v in observations(policy, 1, device, seed=i).items() if "text" not in k} for i in range(8)]
    mismatches = 0
    for batch in batches:
        cached = policy.decode(batch, use_cache=True)
        mismatches += int(not torch.equal(cached, policy.decode(batch, use_cache=False)))
        mismatches += int(not torch.equal(cached, policy.decode(batch, use_cache=False, reuse_prefix=False)))
    counter = iter(range(10**9))

    def next_obs():
        return batches[next(counter) % len(batches)]

    with torch.inference_mode():
        rows = {
            "kv_cache": timed(lambda: policy.decode(next_obs(), use_cache=True), args.repeats, device),
            "recompute": timed(lambda: policy.decode(next_obs(), use_cache=False), args.repeats, device),
            "recompute_all": timed(
                lambda: policy.decode(next_obs(), use_cache=False, reuse_prefix=False), args.repeats, device
            ),
            "parallel": timed(lambda: parallel.decode(next_obs()), args.repeats, device),
        }
    medians = {k: statistics.median(v) * 1e3 for k, v in rows.items()}
    print(f"cached == uncached tokens in {2 * len(batches) - mismatches}/{2 * len(batches)} checks")
    for name in rows:
        print(f"{name:<14} median {medians[name]:7.2f} ms  vs recompute {medians['recompute'] / medians[name]:5.2f}x")
    if mismatches:
        raise SystemExit(f"error: KV-cache decoding differed from full recomputation on {mismatches} observations")
    return {"median_ms": medians, "identical_tokens": mismatches == 0}


def act(args, values, weights, device) -> list[dict[str, Any]]:
    """The public API at batch 1, end to end (needs --checkpoint), per backend."""
    import numpy as np

    from vla.inference import load_policy

    if not args.checkpoint:
        raise SystemExit("error: --sections act times a trained policy: give --checkpoint")
    rows = []
    for backend in ("torch", "onnx"):
        if backend == "onnx" and device.type != "cpu":
            continue
        runner = load_policy(args.checkpoint, device=str(device), backend=backend)
        size = runner.policy.config.image_size
        rng = np.random.default_rng(0)
        observations = [
            {
                "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "proprio": rng.normal(size=9).astype(np.float32),
                "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
            }
            for i in range(16)
        ]
        counter = iter(range(10**9))
        times = timed(lambda r=runner, o=observations, c=counter: r.act(o[next(c) % len(o)]), args.repeats, device)
        median = statistics.median(times) * 1e3
        rows.append(
            {
                "backend": backend,
                "threads": torch.get_num_threads(),
                "median_ms": median,
                "p90_ms": sorted(times)[int(0.9 * len(times))] * 1e3,
                "hz": 1e3 / median,
            }
        )
        print_row(rows[-1], list(rows[-1]))
    return rows


def paged(args, values, weights, device) -> dict[str, Any]:
    """Continuous batching over the paged KV cache against a per-request cache reserved for
    the longest sequence: KV memory held, and tokens against the plain KV cache (L4, L10).
    An autoregressive policy with word tokens, so sequence lengths vary with the instruction."""
    from vla.paged_kv import ContinuousDecoder

    policy = make_policy(values, None, device, decoding="autoregressive", word_tokens=True)
    requests, running = 8 * max(args.batch_sizes), max(args.batch_sizes)
    batch = observations(policy, requests, device, seed=2)
    batch = {k: v for k, v in batch.items() if not k.startswith("text")}
    expected = torch.cat([policy.decode({k: v[i : i + 64] for k, v in batch.items()}) for i in range(0, requests, 64)])
    rows = {}
    for block_size in (4, 16, 32):
        decoder = ContinuousDecoder(policy, block_size=block_size, max_batch=running)
        start = time.perf_counter()
        bins = decoder.decode_all(batch).to(expected.device)
        seconds = time.perf_counter() - start
        per_token = decoder.pool.bytes_per_block / block_size
        reserved = running * decoder.longest_sequence(policy) * per_token  # a plain cache per running request
        rows[block_size] = {
            "tokens_equal": float((bins == expected).all(1).float().mean()),
            "peak_kv_mb": decoder.pool.peak_used * decoder.pool.bytes_per_block / 2**20,
            "reserved_kv_mb": reserved / 2**20,
            "actions_per_s": requests / seconds,
        }
        rows[block_size]["saved"] = 1 - rows[block_size]["peak_kv_mb"] / rows[block_size]["reserved_kv_mb"]
        print_row({"block": block_size, **rows[block_size]}, ["block", *rows[block_size]])
    longest = ContinuousDecoder.longest_sequence(policy)
    return {"requests": requests, "running": running, "longest": longest, "blocks": rows}


def env_observations(n: int, tasks: list[str], image_size: int, cameras: list[str], seed: int = 0) -> list[dict]:
    """``n`` real observations, round-robin over ``tasks``: an env reset (the task's own
    instruction) at seed ``seed + i``, then 0 to 39 steps of the scripted expert, so approach,
    grasp and carry states all appear. The same arguments give the same observations."""
    import gymnasium as gym
    import numpy as np

    import envs

    ids = envs.task_ids(tasks)
    made = {env_id: gym.make(env_id, image_size=image_size, cameras=tuple(cameras)) for env_id in ids}
    rng = np.random.default_rng(seed)
    result = []
    try:
        for i in range(n):
            env = made[ids[i % len(ids)]]
            obs, _ = env.reset(seed=seed + i)
            expert = envs.make_expert(env)
            for _ in range(int(rng.integers(0, 40))):
                obs, _, terminated, truncated, _ = env.step(expert(obs))
                if terminated or truncated:
                    break
            result.append(obs)
    finally:
        for env in made.values():
            env.close()
    return result


def checkpoint_policy(payload: dict[str, Any], device: torch.device, decoding: str) -> tuple[VLAPolicy, Any]:
    """A checkpoint's policy built to decode with ``decoding`` (the mode it was not trained in
    runs on weights never trained for it: timings hold, tokens are not the trained policy's),
    and its tokenizer."""
    policy, tokenizer = build_policy({**payload, "policy_config": {**payload["policy_config"], "decoding": decoding}})
    return policy.to(device).eval(), tokenizer


def speculative(args, values, weights, device) -> dict[str, Any]:
    """Batch 1 on real observations (L5): the target decoding autoregressively (KV cache) and in
    parallel, the draft alone, and speculative decoding (the draft guesses the 7 tokens, the
    target checks them in one pass and goes on from the first wrong one) with an autoregressive
    and a parallel draft: latency, target passes, acceptance, and tokens against the target's
    own autoregressive tokens (greedy speculation is exact: they must all be equal)."""
    import envs
    from vla.data import observations_to_batch
    from vla.fast_inference import text_inputs
    from vla.inference import torch_threads
    from vla.speculative import SpeculativeDecoder, vocabulary_mismatch

    if not args.checkpoint or not args.draft:
        raise SystemExit("error: --sections speculative needs --checkpoint (the target) and --draft (the draft)")
    payloads = {"target": read_checkpoint(args.checkpoint), "draft": read_checkpoint(args.draft)}
    trained = {role: payload["policy_config"]["decoding"] for role, payload in payloads.items()}
    policies, tokenizers = {}, {}
    for role, payload in payloads.items():
        for decoding in ("autoregressive", "parallel"):
            policies[role, decoding], tokenizers[role] = checkpoint_policy(payload, device, decoding)
    why = vocabulary_mismatch(
        policies["target", "autoregressive"],
        policies["draft", "autoregressive"],
        tokenizers["target"],
        tokenizers["draft"],
    )
    if why is not None:
        raise SystemExit(f"error: {args.draft} cannot draft for {args.checkpoint}: {why}")
    n = args.observations
    tasks = payloads["target"].get("train_config", {}).get("data", {}).get("tasks") or list(envs.TASKS)
    batches: dict[str, list[dict[str, Any]]] = {}
    for role in ("target", "draft"):  # each reads the observations at its own image size, with its own encoder
        policy = policies[role, "autoregressive"]
        c = policy.config
        obs = env_observations(n, tasks, c.image_size, c.cameras, seed=args.observation_seed)
        texts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        batches[role] = []
        for o in obs:
            batch = observations_to_batch([o], device)
            text = batch["instruction"][0]
            if text not in texts:  # read once per instruction, as a deployed policy caches it
                texts[text] = text_inputs(policy, [text], device)
            batch["text_states"], batch["text_mask"] = texts[text]
            batches[role].append(batch)
    spec_ar = SpeculativeDecoder(policies["target", "autoregressive"], policies["draft", "autoregressive"])
    spec_par = SpeculativeDecoder(policies["target", "autoregressive"], policies["draft", "parallel"])
    stats: dict[str, list[Any]] = {"speculative, autoregressive draft": [], "speculative, parallel draft": []}

    def speculate(name, decoder, i):
        tokens, s = decoder.decode(batches["target"][i], batches["draft"][i])
        stats[name].append(s)
        return tokens

    methods = {
        "target autoregressive": (
            "target",
            lambda i: policies["target", "autoregressive"].decode(batches["target"][i]),
        ),
        "target parallel": ("target", lambda i: policies["target", "parallel"].decode(batches["target"][i])),
        "draft autoregressive": ("draft", lambda i: policies["draft", "autoregressive"].decode(batches["draft"][i])),
        "draft parallel": ("draft", lambda i: policies["draft", "parallel"].decode(batches["draft"][i])),
        "speculative, autoregressive draft": (
            "both",
            lambda i: speculate("speculative, autoregressive draft", spec_ar, i),
        ),
        "speculative, parallel draft": ("both", lambda i: speculate("speculative, parallel draft", spec_par, i)),
    }
    threads = args.threads or inference_threads(1)
    cycles = max(1, args.repeats // n)  # timed calls per method: every observation, `cycles` times
    times: dict[str, list[float]] = {name: [] for name in methods}
    tokens: dict[str, list[torch.Tensor]] = {name: [None] * n for name in methods}
    with torch_threads(threads if device.type == "cpu" else None), torch.inference_mode():
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for i in range(min(n, 3)):  # warm up
            for _, fn in methods.values():
                fn(i)
        for name in stats:
            stats[name].clear()
        for _ in range(cycles):
            for i in range(n):
                for name, (_, fn) in methods.items():  # interleaved: drift hits every method alike
                    sync()
                    start = time.perf_counter()
                    tokens[name][i] = fn(i)
                    sync()
                    times[name].append(time.perf_counter() - start)
    reference = torch.cat(tokens["target autoregressive"])
    rows = []
    for name, (reads, _) in methods.items():
        got = torch.cat(tokens[name])
        row = {
            "decoding": name,
            "trained_as": {"target": trained["target"], "draft": trained["draft"]}.get(reads, "-"),
            "median_ms": statistics.median(times[name]) * 1e3,
            "p90_ms": sorted(times[name])[int(0.9 * len(times[name]))] * 1e3,
            "target_passes": {"target autoregressive": 7.0, "target parallel": 1.0}.get(name),
            "acceptance": None,
            "tokens_equal": float((got == reference).float().mean()),  # per token, against target autoregressive
            "actions_equal": float((got == reference).all(1).float().mean()),  # all 7 tokens
        }
        if name in stats:
            runs = stats[name]
            row["target_passes"] = statistics.mean(s.target_passes for s in runs)
            row["acceptance"] = sum(s.accepted for s in runs) / sum(s.proposed for s in runs)
        rows.append(row)
    # how often the two policies agree decoding as they were trained (what a draft of an
    # autoregressive-trained target of this quality could hope to be accepted at)
    both = [trained["target"], trained["draft"]]
    as_trained = {
        role: torch.cat([policies[role, trained[role]].decode(b) for b in batches[role]])
        for role in ("target", "draft")
    }
    agreement = {
        "decodings": both,
        "tokens_equal": float((as_trained["target"] == as_trained["draft"]).float().mean()),
        "mean_bin_distance": float((as_trained["target"] - as_trained["draft"]).abs().float().mean()),
        "within_2_bins": float(((as_trained["target"] - as_trained["draft"]).abs() <= 2).float().mean()),
    }
    print(f"target {args.checkpoint} (trained {trained['target']}), draft {args.draft} (trained {trained['draft']})")
    print(f"batch 1, {threads} thread(s), {n} observations of {', '.join(tasks)} x {cycles}, tokens vs target AR")
    header = f"{'decoding':<36}{'trained as':>15}{'median ms':>11}{'p90 ms':>9}{'passes':>8}{'accept':>8}{'tokens=':>9}"
    print(header)
    for r in rows:
        accept = "-" if r["acceptance"] is None else f"{r['acceptance']:.3f}"
        passes = "-" if r["target_passes"] is None else f"{r['target_passes']:.2f}"
        print(
            f"{r['decoding']:<36}{r['trained_as']:>15}{r['median_ms']:>11.2f}{r['p90_ms']:>9.2f}"
            f"{passes:>8}{accept:>8}{r['tokens_equal']:>9.3f}"
        )
    print(
        f"draft vs target as trained ({both[1]} vs {both[0]}): {agreement['tokens_equal']:.1%} of tokens equal, "
        f"{agreement['within_2_bins']:.1%} within 2 bins, mean distance {agreement['mean_bin_distance']:.1f} bins"
    )
    wrong = [r["decoding"] for r in rows if r["decoding"].startswith("speculative") and r["actions_equal"] < 1.0]
    if wrong:
        raise SystemExit(f"error: {', '.join(wrong)} differed from the target's autoregressive tokens")
    return {
        "target": args.checkpoint,
        "draft": args.draft,
        "threads": threads,
        "observations": n,
        "tasks": tasks,
        "rows": rows,
        "as_trained_agreement": agreement,
    }


def print_row(row: dict[str, Any], keys: list[str]) -> None:
    def show(v):
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    print("  ".join(f"{k}={show(row[k])}" for k in keys if k in row), flush=True)


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def compete(policy: VLAPolicy, batch: dict[str, Any], repeats: int) -> None:
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
                    times = timed(lambda: policy.decode(batch), repeats, torch.device("cpu"))
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


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--draft", default=None, help="speculative: the draft checkpoint (--checkpoint: the target)")
    parser.add_argument("--observations", type=int, default=100, help="speculative: real observations decoded")
    parser.add_argument("--observation-seed", type=int, default=0, help="speculative: env seed of the first one")
    parser.add_argument("--model", default="small", choices=["small", "large"])
    parser.add_argument("--text-encoder", default=None, help="override the config's encoder (e.g. scratch)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--sections", type=comma_list(str), default=["latency", "decoding"])
    parser.add_argument("--batch-sizes", type=comma_list(int), default=[1, 16, 256, 4096])
    parser.add_argument("--dtypes", type=comma_list(str), default=["fp32", "bf16"])
    parser.add_argument("--modes", type=comma_list(str), default=["eager", "compile", "graph", "onnx", "int8"])
    parser.add_argument(
        "--weights",
        type=comma_list(str),
        default=["fp"],
        help="fp (as trained) and/or int8 (weight-only int8, torchao: the quant extra)",
    )
    parser.add_argument(
        "--attention",
        default="sdpa",
        choices=["sdpa", "flex"],
        help="parallel decoding's attention: SDPA with a boolean mask, or FlexAttention (latency, throughput, profile)",
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode of the compile modes: default | max-autotune-no-cudagraphs",
    )
    parser.add_argument(
        "--decodings",
        type=comma_list(str),
        default=["parallel", "autoregressive", "no-cache"],
        help="latency rows: parallel, autoregressive (KV cache), no-cache (autoregressive, recomputing)",
    )
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--probes", type=int, default=64, help="observations whose tokens are checked per row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--compete", action="store_true", help="batch 1 alone and beside a CPU-bound process")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be >= 1, got {args.repeats}")
    if not args.weights or set(args.weights) - {"fp", "int8"}:
        raise SystemExit(f"error: --weights takes fp and/or int8, got {','.join(args.weights)}")
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"error: unknown sections {unknown}; valid values are: {', '.join(SECTIONS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but this machine has no CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    values, weights = policy_values(args)
    if args.compete:
        policy = make_policy(values, weights, device, decoding="parallel")
        return compete(policy, observations(policy, 1, device), args.repeats)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "model": args.checkpoint or args.model,
    }
    for section in args.sections:
        print(f"--- {section} ({report['device']}) ---")
        report[section] = globals()[section](args, values, weights, device)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
