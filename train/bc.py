"""Behaviour cloning of the RT-2-style VLA: ``python train/bc.py [key=value ...]``.

Config: configs/bc.yaml (+ model/, trainer/ groups). The run directory gets the resolved
config, checkpoints (latest.pt, best.pt by closed-loop success), TensorBoard logs,
metrics.jsonl, and the final evaluation (JSON, markdown table, video).
Resume exactly with ``resume=<run dir>``; multi-process with
``torchrun --nproc_per_node=2 train/bc.py ...`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout too

from envs.dataset import DemoDataset  # noqa: E402
from envs.instructions import TRAINING_SPLITS  # noqa: E402
from envs.tabletop_env import PROPRIO_NAMES  # noqa: E402
from envs.vocabulary import check_name  # noqa: E402
from eval.cli import user_errors  # noqa: E402
from eval.closed_loop import final_evaluation, split_demos, success_rate  # noqa: E402
from vla.checkpoint import CheckpointError, check_config, load_weights, read_checkpoint, save_checkpoint  # noqa: E402
from vla.data import ActionTokenDataset, collate  # noqa: E402
from vla.grounding import (  # noqa: E402
    ground_and_measure,
    read_demo_keypoints,
)
from vla.language_tuning import tune_policy_language  # noqa: E402
from vla.policy import PolicyConfig, VLAPolicy  # noqa: E402
from vla.tokenizer import ActionTokenizer  # noqa: E402
from vla.training import (  # noqa: E402
    StepSampler,
    init_distributed,
    make_optimizer,
    rng_state,
    seed_everything,
    set_rng_state,
    warmup_cosine,
)


@hydra.main(config_path="../configs", config_name="bc", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        train(cfg)


def train(cfg: DictConfig) -> dict | None:
    """Train, evaluate, and return the final evaluation report (None on other ranks or when
    stopped early)."""
    rank, world, device = init_distributed()
    if cfg.device != "auto":
        device = torch.device(cfg.device)
    run_dir = Path(cfg.resume or cfg.run_dir)
    t = cfg.trainer

    # --- data, model, optimiser, and (maybe) the state to resume ---------------------------
    demos, tokenizer, policy, train_idx, val_idx = build(cfg, rank, device)
    policy_config = policy.config
    optimizer = make_optimizer(policy, t.lr, t.weight_decay, device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, t.warmup_steps, t.steps))
    start_step, best_success = 0, -1.0
    if cfg.get("init") and not cfg.resume:  # fine-tune: weights (and proprio statistics) from a checkpoint
        tokenizer = load_init_weights(Path(cfg.init), policy_config, policy)
    if cfg.resume:
        payload = load_resume_state(run_dir, policy_config, policy, optimizer, schedule)
        start_step, best_success = payload["step"], payload["best_success"]
        tokenizer = ActionTokenizer.from_state_dict(payload["tokenizer"])
    fresh = not cfg.resume and not cfg.get("init")
    if fresh and rank == 0:  # DistributedDataParallel hands rank 0's weights to the others
        tune_language(cfg, policy, run_dir, progress=t.progress)  # before grounding: the reader reads it
    if policy.keypoint_reader is not None and cfg.grounding.steps > 0 and fresh:
        if rank == 0:
            ground(cfg, policy, run_dir, progress=t.progress)
    model = policy
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None
        )

    # after DDP has handed rank 0's grounded reader to every rank (the keypoint cache reads it)
    dataset = make_dataset(cfg, policy, demos, tokenizer, train_idx, progress=rank == 0 and t.progress)
    per_rank_batch = t.batch_size // world
    sampler = StepSampler(len(train_idx), cfg.seed, start_step * t.batch_size, rank, world)
    loader = make_loader(cfg, dataset, sampler, per_rank_batch)
    autocast = mixed_precision(t.amp, device)

    writer = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        keep_metrics_up_to(run_dir / "metrics.jsonl", start_step)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir / "tb")
        print(
            f"run dir: {run_dir}  | {demos.num_episodes} episodes, {len(train_idx)} train samples | "
            f"{sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6:.2f}M trainable params | "
            f"device {device} x{world}"
        )

        sample = collate([loader.dataset[0]])
        layout = ", ".join(f"{name} {count}" for name, count in policy.token_layout(_to(sample, device)))
        print(f"token layout per step (V1): [{layout}] x width {policy_config.width}")

    def checkpoint(name: str, step: int) -> None:
        save(run_dir / "checkpoints" / name, policy, tokenizer, optimizer, schedule, step, best_success, cfg)

    # --- the training loop -------------------------------------------------------------------
    stop = min(t.steps, t.stop_at_step or t.steps)
    bar = tqdm(total=t.steps, initial=start_step, desc="bc", disable=rank != 0 or not t.progress)
    batches = iter(loader)
    model.train()
    last_time, samples = time.perf_counter(), 0
    for step in range(start_step, stop):
        batch = _to(next(batches), device)
        with autocast:
            out = model(batch, augment=t.augment)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), t.grad_clip)
        optimizer.step()
        schedule.step()
        samples += per_rank_batch * world

        if rank == 0 and (step + 1) % t.log_every == 0:
            now = time.perf_counter()
            metrics = {
                "step": step + 1,
                "loss": out["loss"].item(),
                "token_accuracy": out["token_accuracy"].item(),
                **{k: out[k].item() for k in ("aux_loss", "aux_error_cm", "keypoint_error_px") if k in out},
                "grad_norm": grad_norm.item(),
                "lr": schedule.get_last_lr()[0],
                "samples_per_s": samples / (now - last_time),
            }
            last_time, samples = now, 0
            log_metrics(writer, run_dir, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['token_accuracy']:.2f}")
        bar.update(1)

        done = step + 1 == stop
        if rank == 0 and cfg.eval.every_steps and ((step + 1) % cfg.eval.every_steps == 0 or step + 1 == t.steps):
            rate = success_rate(policy, tokenizer, cfg, device)
            log_metrics(writer, run_dir, {"step": step + 1, "eval/success_rate": rate})
            bar.write(f"step {step + 1}: closed-loop success {100 * rate:.1f}% ({cfg.eval.episodes} episodes per task)")
            if rate > best_success:
                best_success = rate
                checkpoint("best.pt", step + 1)
            model.train()
        if rank == 0 and ((step + 1) % t.checkpoint_every == 0 or done):
            checkpoint("latest.pt", step + 1)
    bar.close()

    if rank == 0 and stop == t.steps:
        if not (run_dir / "checkpoints" / "best.pt").exists():
            checkpoint("best.pt", stop)
        load_weights(policy, read_checkpoint(run_dir / "checkpoints" / "best.pt"))  # evaluate the best
        report = final_evaluation(policy, tokenizer, cfg, device, demos, val_idx, run_dir)
    else:
        report = None
    if writer is not None:
        writer.close()
    if torch.distributed.is_initialized():  # under torchrun, even with one process
        torch.distributed.destroy_process_group()
    return report


def build(
    cfg: DictConfig, rank: int, device: torch.device
) -> tuple[DemoDataset, ActionTokenizer, VLAPolicy, np.ndarray, np.ndarray]:
    """The demos, the action tokenizer, a freshly initialised policy on ``device``, and the
    training / held-out sample indices (the held-out demos give open-loop accuracy)."""
    check_keypoint_cache(cfg)
    demos = load_demos(cfg, rank)
    config = PolicyConfig.from_dict(OmegaConf.to_container(cfg.model))
    check_dataset_matches(demos, config)
    tokenizer = fit_tokenizer(cfg, demos)
    seed_everything(cfg.seed)
    policy = VLAPolicy(config).to(device)
    train_idx, val_idx = split_demos(demos, list(cfg.data.tasks), cfg.data.val_fraction, cfg.seed)
    mean, std = demos.proprio_statistics(train_idx)
    policy.set_proprio_statistics(mean[: config.proprio_dim], std[: config.proprio_dim])
    return demos, tokenizer, policy, train_idx, val_idx


def make_dataset(
    cfg: DictConfig,
    policy: VLAPolicy,
    demos: DemoDataset,
    tokenizer: ActionTokenizer,
    indices: np.ndarray,
    progress: bool,
) -> ActionTokenDataset:
    """The training samples as the step sees them: with ``trainer.cache_keypoints`` the frozen
    reader's keypoints are read once here, and the images stay out when nothing reads them."""
    keypoint_coords = None
    if cfg.trainer.get("cache_keypoints"):
        keypoint_coords = read_demo_keypoints(policy, demos, progress=progress)
    images = policy.reads_pixels(cached_keypoints=keypoint_coords is not None)
    return ActionTokenDataset(demos, tokenizer, indices, policy.config.chunk, keypoint_coords, images)


def make_loader(
    cfg: DictConfig, dataset: ActionTokenDataset, sampler: StepSampler, batch_size: int
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        persistent_workers=cfg.data.num_workers > 0,
        # its own generator: starting the loader must not draw from the global RNG, or a
        # resumed run's augmentation noise would shift by one draw
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def mixed_precision(amp: str, device: torch.device) -> AbstractContextManager:
    """bf16 autocast for trainer.amp=bf16, or auto on CUDA; otherwise a no-op context."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def load_demos(cfg: DictConfig, rank: int) -> DemoDataset:
    """The demos as training reads them: collected if missing, preloaded, re-worded."""
    check_name("data.instructions", cfg.data.instructions, TRAINING_SPLITS)
    demos = load_or_collect(cfg, rank)
    if cfg.data.preload:
        demos.preload(progress=rank == 0 and cfg.trainer.progress)
    if cfg.data.instructions != "train":
        demos.reword_instructions(cfg.seed, cfg.data.instructions)
    return demos


def load_or_collect(cfg: DictConfig, rank: int) -> DemoDataset:
    path = Path(cfg.data.path)
    if not (path / "index.h5").exists():
        if not cfg.data.collect_if_missing:
            raise SystemExit(f"error: no dataset at {path}; collect one with `python train/collect.py output={path}`")
        if rank == 0:
            from envs.collection import CollectConfig, collect, resolve_tasks

            print(f"no dataset at {path}: collecting {cfg.data.episodes_per_task} expert episodes per task first")
            collect(
                CollectConfig(
                    tasks=resolve_tasks(list(cfg.data.tasks)),
                    episodes_per_task=cfg.data.episodes_per_task,
                    output=path,
                    image_size=cfg.model.image_size,
                    cameras=tuple(cfg.model.cameras),
                )
            )
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    return DemoDataset(path)


def check_keypoint_cache(cfg: DictConfig) -> None:
    """Keypoints read once must stay right: the reader frozen (no auxiliary loss on it) and
    each demo step worded as recorded (re-wording would ask the reader a new question)."""
    if not cfg.trainer.get("cache_keypoints"):
        return
    m, wording = cfg.model, cfg.data.instructions
    if m.keypoints != 2 or m.aux_weight != 0 or wording != "train":
        raise SystemExit(
            "error: trainer.cache_keypoints=true needs model.keypoints=2, model.aux_weight=0 and "
            f"data.instructions=train; got {m.keypoints}, {m.aux_weight} and {wording}"
        )


def check_dataset_matches(demos: DemoDataset, config: PolicyConfig) -> None:
    """The demos must carry the images and proprio elements the model reads, images at its size."""
    size = demos.env_config.get("image_size", config.image_size)
    if size != config.image_size:
        raise SystemExit(f"error: the dataset has {size}px images but model.image_size={config.image_size}")
    recorded = demos.env_config.get("cameras", ["scene"])
    missing = [c for c in config.cameras if c not in recorded]
    if missing:
        raise SystemExit(
            f"error: model.cameras={config.cameras} but the dataset at {demos.root} recorded only {recorded}; "
            f"collect one with `python train/collect.py output=<dir> cameras=[{','.join(config.cameras)}]`"
        )
    recorded_proprio = demos.proprio_width
    if config.use_proprio and recorded_proprio < config.proprio_dim:
        raise SystemExit(
            f"error: model.proprio_dim={config.proprio_dim} but the dataset at {demos.root} recorded "
            f"{recorded_proprio} proprio elements ({', '.join(PROPRIO_NAMES[:recorded_proprio])}); "
            "collect it again with `python train/collect.py` to record the gripper velocity"
        )


def tune_language(cfg: DictConfig, policy: VLAPolicy, run_dir: Path, progress: bool) -> None:
    """Paraphrase tuning of MiniLM on the training wordings (``model.text_encoder=minilm_tuned``,
    vla/language_tuning.py); its losses go to <run dir>/language.json."""
    result = tune_policy_language(policy, cfg.language, cfg.data.instructions, cfg.seed, progress)
    if result is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "language.json").write_text(json.dumps({"split": cfg.data.instructions, **result}, indent=2))
    print(
        f"language: MiniLM paraphrase-tuned on {cfg.data.instructions} wordings for {result['steps']} steps, "
        f"loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}"
    )


def ground(cfg: DictConfig, policy: VLAPolicy, run_dir: Path, progress: bool) -> None:
    """Grounding pretraining of the keypoint reader on rendered scenes (vla/grounding.py);
    its held-out error goes to <run dir>/grounding.json."""
    g = cfg.grounding
    result, _, _ = ground_and_measure(policy, g, cfg.seed, cfg.model.image_size, cfg.data.instructions, progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: g[k] for k in ("scenes", "steps", "text_dropout", "kind_weight")} | {"split": cfg.data.instructions}
    (run_dir / "grounding.json").write_text(json.dumps({**settings, **result}, indent=2))
    print(
        f"grounding: keypoints {result['heldout_error_px']:.2f} px mean / {result['heldout_median_px']:.2f} px "
        f"median from the truth on held-out scenes ({100 * result['heldout_over_2px']:.0f}% beyond 2 px); "
        f"{result['paraphrase_error_px']:.2f} / {result['paraphrase_median_px']:.2f} px "
        f"({100 * result['paraphrase_over_2px']:.0f}%) on the same scenes worded as held-out paraphrases"
    )


def fit_tokenizer(cfg: DictConfig, demos: DemoDataset) -> ActionTokenizer:
    stats = demos.action_stats
    if cfg.tokenizer.binning == "quantile":
        return ActionTokenizer(cfg.tokenizer.bins, stats["q01"], stats["q99"], "quantile")
    return ActionTokenizer(cfg.tokenizer.bins, mode=cfg.tokenizer.binning)


def load_init_weights(path: Path, config: PolicyConfig, policy) -> ActionTokenizer:
    """Weights from a checkpoint; its tokenizer too (the bins the weights were trained on)."""
    try:
        payload = read_checkpoint(path)
        check_config(payload, asdict(config))
        load_weights(policy, payload)
    except CheckpointError as error:
        raise SystemExit(f"error: cannot start from init={path}: {error}") from None
    print(f"initialised from {payload['path']} (step {payload.get('step')})")
    return ActionTokenizer.from_state_dict(payload["tokenizer"])


def load_resume_state(run_dir: Path, config: PolicyConfig, policy, optimizer, schedule) -> dict:
    try:
        payload = read_checkpoint(run_dir / "checkpoints" / "latest.pt")
        check_config(payload, asdict(config))
        load_weights(policy, payload)
    except CheckpointError as error:
        raise SystemExit(f"error: cannot resume from {run_dir}: {error}") from None
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    set_rng_state(payload["rng"])
    print(f"resumed {run_dir} at step {payload['step']}")
    return payload


def save(path, policy, tokenizer, optimizer, schedule, step, best_success, cfg) -> None:
    save_checkpoint(
        path,
        policy,
        tokenizer,
        optimizer=optimizer.state_dict(),
        schedule=schedule.state_dict(),
        step=step,
        best_success=best_success,
        rng=rng_state(),
        train_config=OmegaConf.to_container(cfg, resolve=True),
    )


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def keep_metrics_up_to(path: Path, step: int) -> None:
    """A resumed run drops what the interrupted one logged after its checkpoint; a new run starts empty."""
    rows = path.read_text().splitlines() if path.exists() else []
    path.write_text("".join(row + "\n" for row in rows if json.loads(row)["step"] <= step))


def log_metrics(writer, run_dir: Path, metrics: dict) -> None:
    step = metrics["step"]
    for key, value in metrics.items():
        if key != "step":
            writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(metrics) + "\n")


if __name__ == "__main__":
    main()
