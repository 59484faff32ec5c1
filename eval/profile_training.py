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
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig

from vla.app.cli import compose_config, user_errors
from vla.data import ActionTokenDataset, collate
from vla.training.bc import build, check_config, loss_scaler, make_dataset, make_loader, mixed_precision, to_device
from vla.training.runtime import StepSampler, make_optimizer

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
        report = profile(cfg, torch.device(args.device), args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
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


def profile(cfg: DictConfig, device: torch.device, args: argparse.Namespace) -> dict:
    t = cfg.trainer
    demos, tokenizer, policy, train_idx, _ = build(cfg, rank=0, device=device)
    config = policy.config
    optimizer = make_optimizer(policy, t.lr, t.weight_decay, device)
    autocast = mixed_precision(t.amp, device)
    scaler = loss_scaler(t.amp, device)
    use_bf16 = not isinstance(autocast, nullcontext)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(batch: dict, timings: dict[str, float] | None = None) -> None:
        """One bc.py training step on a batch already on the device."""
        mark = _stopwatch(sync, timings)
        with autocast:
            out = policy(batch, augment=t.augment)
        mark("forward")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        mark("backward")
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(policy.parameters(), t.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        mark("optimizer")

    dataset = make_dataset(cfg, policy, demos, tokenizer, train_idx, progress=False)  # as bc.py builds it
    policy.train()
    batches = iter(make_loader(cfg, dataset, StepSampler(len(train_idx), cfg.seed), t.batch_size))
    report = {
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        ),
        "model": {"width": config.width, "layers": config.layers, "sentence_token": config.sentence_token},
        "trainable_params_M": sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6,
        "batch_size": t.batch_size,
        "loader_workers": cfg.data.num_workers,
        "amp": t.amp if use_bf16 else "off",
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
        return t.batch_size / seconds_per_step(lambda: step(to_device(next(batches), device)))

    # 1. end to end, as bc.py runs it, right after start-up (timed again after 2 and 3, when
    # first-seen costs such as new instruction wordings are rarer: the two differ if they matter)
    for _ in range(args.warmup):
        step(to_device(next(batches), device))
    report["end_to_end_samples_per_s"] = end_to_end()

    # 2. stage by stage (synchronised, so the stages add up)
    stages = dict.fromkeys(STAGES, 0.0)
    for _ in range(args.steps):
        mark = _stopwatch(sync, stages)
        batch = next(batches)
        mark("data wait")
        batch = to_device(batch, device)
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
        report["top_ops"] = trace(step, lambda: to_device(next(batches), device), device, args)
    return report


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
