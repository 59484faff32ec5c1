"""Where a training step's time goes (V7, L9).

    python eval/profile_training.py [--device cuda] [--batch-sizes 256,1024] [bc.yaml overrides ...]
    e.g. python eval/profile_training.py --device cuda +recipe=five_gpu

Three measurements of train/bc.py's step, on the same model, demos and loader settings:
1. End to end: the training loop as bc.py runs it (DataLoader workers feeding the device,
   no synchronisation inside the loop): samples per second, right after start-up and again
   after 2 and 3 (a gap between the two is a start-up cost, e.g. new instruction wordings).
2. Stage by stage: the same loop with the device synchronised after every stage, so the
   times add up to the step: waiting for the loader, copying to the device, forward
   (including the per-instruction text cache and padding), backward, clip + optimiser.
3. Resident batch: one batch kept on the device and stepped on repeatedly, per batch size.
   If samples/s rise about in proportion to the batch, a step costs about the same
   whatever its size: it is bound by per-operator overhead (Python and kernel launches),
   not arithmetic. If they stay flat, the arithmetic is the limit.
4. Loader cost: one DataLoader worker's work (dataset item + collate) per sample, timed in
   this process. Workers x 1e6 / that is what the loader can feed, to set against 1.
Then a torch.profiler trace of a few steps (chrome://tracing or https://ui.perfetto.dev)
and its top operators by self time, to name the costs (L9).
Results: <out>/profile.json, <out>/profile.md, <out>/trace.json.gz.

``--variants "baseline;gpu_data=true;compile=default;gpu_data=true,compile=default,batch_size=1024"``
instead compares trainer settings (each variant: trainer overrides on top of the config, `;`
between variants; `resident=true` steps on one batch kept on the device instead): bc.py's loop
under each, a fresh model each time, samples/s as the median of three timed runs of ``--steps``
steps, and model FLOPs utilisation: model FLOPs per sample (matrix products, convolutions and
attention of the forward and backward, counted by torch.utils.flop_counter) x samples/s over
``--peak-tflops``. The loader rows run with every wording already in the text encoder's
cache, as a run does after its first epoch.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import itertools
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from envs.dataset import DemoDataset
from vla.app.cli import compose_config, user_errors
from vla.data import ActionTokenDataset, collate
from vla.tokenizer import ActionTokenizer
from vla.training.bc import (
    build,
    check_config,
    loss_scaler,
    make_dataset,
    make_loader,
    make_policy,
    mixed_precision,
    to_device,
    training_batches,
)
from vla.training.device_data import DeviceBatches, read_samples
from vla.training.runtime import StepSampler, make_optimizer, scaled_lr, warmup_cosine
from vla.training.step import TrainStep, read_instructions

H100_BF16_TFLOPS = 989.0  # NVIDIA H100 SXM, dense bf16 (the H200 has the same tensor cores)

STAGES = ("data wait", "to device", "forward", "backward", "optimizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="configs/bc.yaml overrides, as train/bc.py takes them")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, cuDNN, caches)")
    parser.add_argument(  # comma-separated, so the config overrides can follow it
        "--batch-sizes",
        type=batch_sizes,
        default=None,
        help="resident-batch sizes, e.g. 64,256,1024 (default: trainer.batch_size)",
    )
    parser.add_argument("--trace-steps", type=int, default=3, help="steps recorded by torch.profiler (0: none)")
    parser.add_argument(
        "--variants", type=variants, default=None, help='trainer settings to compare, e.g. "baseline;compile=default"'
    )
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS, help="the device's peak, for MFU")
    parser.add_argument(
        "--time-budget", type=float, default=None, help="seconds after which the variants left are skipped"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/profile"))
    args = parser.parse_args()
    with user_errors():
        if args.steps < 1 or args.warmup < 0 or args.trace_steps < 0:
            raise ValueError(
                f"--steps must be >= 1 and --warmup, --trace-steps >= 0; "
                f"got {args.steps}, {args.warmup}, {args.trace_steps}"
            )
        if args.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA device here")
        cfg = compose_config("bc", args.overrides)
        check_config(cfg)
        for overrides in args.variants or []:
            check_config(with_trainer(cfg, overrides))
        report = (compare if args.variants else profile)(cfg, torch.device(args.device), args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(report, indent=2))
    markdown = (variants_markdown if args.variants else to_markdown)(report)
    (args.out / "profile.md").write_text(markdown)
    print(markdown)


def batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(size) for size in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, e.g. 64,256,1024; got {text!r}"
        )
    return sizes


def variants(text: str) -> list[dict]:
    """ "baseline;compile=default,batch_size=1024" -> [{}, {"compile": "default", "batch_size": 1024}]."""
    parsed = []
    for spec in text.split(";"):
        overrides = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            if item == "baseline":
                continue
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise argparse.ArgumentTypeError(f"expected key=value pairs separated by commas, got {item!r}")
            overrides[key.strip()] = yaml.safe_load(value)
        parsed.append(overrides)
    return parsed


def _typed(value) -> str:
    """A setting as the command line spells it: true, 1024, default."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def with_trainer(cfg: DictConfig, overrides: dict) -> DictConfig:
    """``cfg`` with a variant's trainer overrides (``resident`` is the profiler's, not the trainer's)."""
    trainer = {k: v for k, v in overrides.items() if k != "resident"}
    unknown = sorted(set(trainer) - set(cfg.trainer))
    if unknown:
        raise ValueError(f"unknown trainer settings {unknown} in --variants; the trainer has {sorted(cfg.trainer)}")
    return OmegaConf.merge(cfg, {"trainer": trainer})


def make_step(cfg: DictConfig, policy: torch.nn.Module, device: torch.device) -> tuple[TrainStep, Callable]:
    """bc.py's step for ``cfg``'s trainer, and its learning-rate schedule's step (part of the loop)."""
    t = cfg.trainer
    lr = scaled_lr(t.lr, t.batch_size, t.lr_batch, t.lr_scaling)
    optimizer = make_optimizer(policy, lr, t.weight_decay, device, fused=t.fused_adam)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, t.warmup_steps, t.steps))
    autocast, scaler = mixed_precision(t.amp, device), loss_scaler(t.amp, device)
    return TrainStep(policy, policy, optimizer, scaler, autocast, t.grad_clip, t.augment, t.compile), schedule.step


def profile(cfg: DictConfig, device: torch.device, args: argparse.Namespace) -> dict:
    t = cfg.trainer
    demos, tokenizer, policy, train_idx, _ = build(cfg, rank=0, device=device)
    config = policy.config
    train_step, _ = make_step(cfg, policy, device)
    use_bf16 = not isinstance(train_step.autocast, nullcontext)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(batch: dict, timings: dict[str, float] | None = None) -> None:
        """One bc.py training step on a batch already on the device."""
        train_step(batch, _stopwatch(sync, timings))

    dataset = make_dataset(cfg, policy, demos, tokenizer, train_idx, progress=False)  # as bc.py builds it
    policy.train()
    if t.gpu_data:  # gathered on the device: "data wait" is the gather, nothing to copy
        batches: Iterator[dict] = DeviceBatches(
            dataset, policy, device, t.batch_size, cfg.seed, workers=cfg.data.num_workers
        )
        move: Callable[[dict], dict] = lambda batch: batch  # noqa: E731
    else:
        batches = iter(make_loader(cfg, dataset, StepSampler(len(train_idx), cfg.seed), t.batch_size))
        move = partial(to_device, device=device)
    report = {
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        ),
        "model": {"width": config.width, "layers": config.layers, "sentence_token": config.sentence_token},
        "trainable_params_M": sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6,
        "batch_size": t.batch_size,
        "loader_workers": cfg.data.num_workers,
        "amp": t.amp if use_bf16 else "off",
        "compile": train_step.mode or "off",
        "gpu_data": bool(t.gpu_data),
        "steps": args.steps,
        "command": " ".join(sys.argv[1:]),
    }

    def seconds_per_step(one_step: Callable[[], None]) -> float:
        """Mean wall time of ``args.steps`` calls, the device synchronised only around them."""
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            one_step()
        sync()
        return (time.perf_counter() - start) / args.steps

    def end_to_end() -> float:
        """Samples/s of bc.py's loop: no synchronisation inside it."""
        return t.batch_size / seconds_per_step(lambda: step(move(next(batches))))

    # 1. end to end, as bc.py runs it, right after start-up (timed again after 2 and 3, when
    # first-seen costs such as new instruction wordings are rarer: the two differ if they matter)
    for _ in range(args.warmup):
        step(move(next(batches)))
    report["end_to_end_samples_per_s"] = end_to_end()

    # 2. stage by stage (synchronised, so the stages add up)
    stages = dict.fromkeys(STAGES, 0.0)
    for _ in range(args.steps):
        mark = _stopwatch(sync, stages)
        batch = next(batches)
        mark("data wait")
        batch = move(batch)
        mark("to device")
        step(batch, stages)
    report["stage_ms"] = {name: 1000 * total / args.steps for name, total in stages.items()}

    # 3. one batch resident on the device, per batch size
    report["resident"] = []
    for size in args.batch_sizes or [t.batch_size]:
        # the loader's first batch of this size, read here: a worker pool for one batch is waste
        first = itertools.islice(StepSampler(len(train_idx), cfg.seed), size)
        batch = to_device(collate([dataset[i] for i in first]), device)
        for _ in range(args.warmup):
            step(batch)
        seconds = seconds_per_step(partial(step, batch))
        report["resident"].append({"batch_size": size, "ms_per_step": 1000 * seconds, "samples_per_s": size / seconds})

    report["end_to_end_later_samples_per_s"] = end_to_end()
    report["loader_us_per_sample"] = loader_cost(dataset, t.batch_size)

    if args.trace_steps:
        report["top_ops"] = trace(step, lambda: move(next(batches)), device, args)
    return report


def compare(cfg: DictConfig, device: torch.device, args: argparse.Namespace) -> dict:
    """bc.py's loop under each of ``args.variants``, on the same demos (module docstring)."""
    started = time.perf_counter()
    demos, tokenizer, policy, train_idx, _ = build(cfg, rank=0, device=device)
    flops = model_flops_per_sample(cfg, policy, make_dataset(cfg, policy, demos, tokenizer, train_idx, False), device)
    del policy
    report = {
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        ),
        "torch": torch.__version__,
        "train_samples": len(train_idx),
        "model_gflops_per_sample": flops / 1e9,
        "peak_tflops": args.peak_tflops,
        "steps": args.steps,
        "command": " ".join(sys.argv[1:]),
        "variants": [],
    }
    for overrides in args.variants:
        row = {"variant": ",".join(f"{k}={_typed(v)}" for k, v in overrides.items()) or "baseline"}
        if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
            report["variants"].append({**row, "error": "skipped: --time-budget spent"})
            continue
        try:
            row |= measure_variant(with_trainer(cfg, overrides), overrides, demos, tokenizer, train_idx, device, args)
            row["mfu"] = flops * row["samples_per_s"] / (args.peak_tflops * 1e12)
        except Exception as error:  # one variant failing (a compiler error, out of memory) leaves the others
            row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error) else ''}"
        report["variants"].append(row)
        print(json.dumps(row), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)  # the rows so far survive a run cut short
        (args.out / "profile.json").write_text(json.dumps(report, indent=2))
        gc.collect()
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def measure_variant(
    cfg: DictConfig,
    overrides: dict,
    demos: DemoDataset,
    tokenizer: ActionTokenizer,
    train_idx: np.ndarray,
    device: torch.device,
    args: argparse.Namespace,
) -> dict:
    """Samples/s of bc.py's loop under ``cfg``: a fresh policy, optimiser and batches; warm-up
    steps (compilation included) first, then three timed runs of ``args.steps`` steps."""
    t = cfg.trainer
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    policy = make_policy(cfg, demos, train_idx, device)
    policy.train()
    train_step, schedule_step = make_step(cfg, policy, device)
    dataset = make_dataset(cfg, policy, demos, tokenizer, train_idx, progress=False)
    start = time.perf_counter()
    if overrides.get("resident"):
        first = itertools.islice(StepSampler(len(train_idx), cfg.seed), t.batch_size)
        batches: Iterator[dict] = itertools.repeat(to_device(collate([dataset[i] for i in first]), device))
    else:
        if not t.gpu_data:  # a run's state after its first epoch: every wording in the encoder's cache
            _, instructions = read_samples(dataset, torch.device("cpu"), cfg.data.num_workers, progress=False)
            for i in range(0, len(instructions), 4096):
                policy.text(instructions[i : i + 4096], device)
        batches = training_batches(cfg, policy, dataset, device, 0, 0, 1, t.batch_size)
    sync()
    setup_s = time.perf_counter() - start

    def run(steps: int) -> float:
        sync()
        begin = time.perf_counter()
        for _ in range(steps):
            out, _ = train_step(next(batches))
            schedule_step()
        sync()
        if not torch.isfinite(out["loss"]).item():
            raise FloatingPointError(f"loss {out['loss'].item()} after {steps} steps")
        return time.perf_counter() - begin

    warmup_s = run(max(args.warmup, 1))
    seconds = sorted(run(args.steps) for _ in range(3))
    rates = [t.batch_size * args.steps / s for s in seconds]
    return {
        "batch_size": t.batch_size,
        "samples_per_s": statistics.median(rates),
        "samples_per_s_range": [min(rates), max(rates)],
        "ms_per_step": 1000 * statistics.median(seconds) / args.steps,
        "setup_s": setup_s,
        "warmup_s": warmup_s,
        "compile": train_step.mode or "off",
    }


def model_flops_per_sample(cfg: DictConfig, policy: torch.nn.Module, dataset: ActionTokenDataset, device) -> float:
    """FLOPs of one sample's forward and backward (matrix products, convolutions, attention),
    counted by torch.utils.flop_counter on an eager step of 16 samples."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = read_instructions(policy, to_device(collate([dataset[i] for i in range(min(16, len(dataset)))]), device))
    counter = FlopCounterMode(display=False)
    with counter, mixed_precision(cfg.trainer.amp, device):
        policy.loss(batch, augment=cfg.trainer.augment)["loss"].backward()
    policy.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch["proprio"])


def loader_cost(dataset: ActionTokenDataset, batch_size: int, batches: int = 4) -> float:
    """Microseconds of one worker's work per sample: item reads (instruction re-wording
    included) and collate, on random indices as the sampler draws them."""
    indices = torch.randint(len(dataset), (batches, batch_size), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for row in indices.tolist():
        collate([dataset[i] for i in row])
    return 1e6 * (time.perf_counter() - start) / indices.numel()


def trace(step: Callable, next_batch: Callable, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """torch.profiler over a few steps: the chrome trace, and the top operators by self time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.trace_steps):
            with torch.profiler.record_function("data wait + to device"):
                batch = next_batch()
            with torch.profiler.record_function("train step"):
                step(batch)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "trace.json"
    prof.export_chrome_trace(str(raw))
    with raw.open("rb") as source, gzip.open(args.out / "trace.json.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    raw.unlink()
    device_time = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ours = ("data wait + to device", "train step")  # the labels above, not operators
    events = [e for e in prof.key_averages() if e.key not in ours]
    events.sort(key=lambda e: getattr(e, device_time, 0), reverse=True)
    return [
        {
            "op": e.key,
            "calls_per_step": e.count / args.trace_steps,
            "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / args.trace_steps,
            "self_device_ms_per_step": getattr(e, "self_device_time_total", 0) / 1000 / args.trace_steps,
        }
        for e in events[:15]
    ]


def _stopwatch(sync: Callable[[], None], timings: dict[str, float] | None) -> Callable[[str], None]:
    """mark(stage) adds the time since the previous mark to timings[stage] (after a device
    sync); without timings it does nothing, so untimed steps keep their asynchrony."""
    last = [time.perf_counter()]

    def mark(stage: str) -> None:
        if timings is None:
            return
        sync()
        now = time.perf_counter()
        timings[stage] += now - last[0]
        last[0] = now

    return mark


def variants_markdown(report: dict) -> str:
    lines = [
        f"# Training throughput by setting: {report['device']}",
        "",
        f"torch {report['torch']}; {report['train_samples']:,} training samples; "
        f"{report['model_gflops_per_sample']:.2f} GFLOP per sample (forward + backward); MFU against "
        f"{report['peak_tflops']:.0f} TFLOP/s; median of 3 x {report['steps']} steps.",
        f"Command: `python eval/profile_training.py {report['command']}`",
        "",
        "| variant | batch | samples/s | range | ms/step | vs first | MFU | setup s | warm-up s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((row["samples_per_s"] for row in report["variants"] if "samples_per_s" in row), None)
    for row in report["variants"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | | {row['error']} | | | | | | |")
            continue
        low, high = row["samples_per_s_range"]
        lines.append(
            f"| {row['variant']} | {row['batch_size']} | {row['samples_per_s']:,.0f} | {low:,.0f}-{high:,.0f} | "
            f"{row['ms_per_step']:.2f} | {row['samples_per_s'] / base:.2f}x | {100 * row['mfu']:.1f}% | "
            f"{row['setup_s']:.1f} | {row['warmup_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def to_markdown(report: dict) -> str:
    lines = [
        f"# Training step profile: {report['device']}",
        "",
        f"Model width {report['model']['width']} x {report['model']['layers']} layers "
        f"({report['trainable_params_M']:.1f}M trainable), batch {report['batch_size']}, "
        f"{report['loader_workers']} loader workers, amp {report['amp']}, {report['steps']} timed steps each.",
        f"Command: `python eval/profile_training.py {report['command']}`",
        "",
        f"End to end (bc.py's loop): **{report['end_to_end_samples_per_s']:,.0f} samples/s** right after "
        f"start-up, {report['end_to_end_later_samples_per_s']:,.0f} samples/s after the other measurements",
        "",
        "| stage (synchronised) | ms per step | share |",
        "|---|---|---|",
    ]
    total = sum(report["stage_ms"].values())
    for name, ms in report["stage_ms"].items():
        lines.append(f"| {name} | {ms:.1f} | {100 * ms / total:.0f}% |")
    workers, cost = report["loader_workers"], report["loader_us_per_sample"]
    feed = f", so {workers} workers can feed ~{workers * 1e6 / cost:,.0f} samples/s." if workers else "."
    lines += [f"| total | {total:.1f} | |", "", f"Loader: {cost:.0f} us of worker time per sample{feed}"]
    lines += ["", "| resident batch | ms per step | samples/s |", "|---|---|---|"]
    for row in report["resident"]:
        lines.append(f"| {row['batch_size']} | {row['ms_per_step']:.1f} | {row['samples_per_s']:,.0f} |")
    if "top_ops" in report:
        header = "| top operators (self time) | calls/step | self CPU ms/step | self device ms/step |"
        lines += ["", header, "|---|---|---|---|"]
        for op in report["top_ops"]:
            lines.append(
                f"| `{op['op'][:80]}` | {op['calls_per_step']:.0f} | {op['self_cpu_ms_per_step']:.2f} | "
                f"{op['self_device_ms_per_step']:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
