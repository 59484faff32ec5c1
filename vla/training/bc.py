"""The behaviour-cloning workspace: demos -> grounding -> BC -> closed-loop evaluation.

``train(cfg)`` is ``python train/bc.py``; ``check_config(cfg)`` runs first, so every mistake
in the config ends before any slow work. The run directory gets the resolved config,
checkpoints (latest.pt, best.pt by closed-loop success), TensorBoard logs, metrics.jsonl,
bc.log (what the run printed) and the final evaluation (JSON, markdown table, video).
Resume exactly with ``resume=<run dir>``; multi-process with
``torchrun --nproc_per_node=2 train/bc.py ...`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from envs.dataset import DemoDataset, split_demos
from envs.instructions import INSTRUCTION_SPLITS, TRAINING_SPLITS
from envs.progress import progress
from envs.tabletop_env import PROPRIO_NAMES
from envs.tasks import resolve_tasks, task_ids
from envs.vocabulary import check_name
from vla.app.console import run_log
from vla.checkpoint import CheckpointError, check_checkpoint_path, load_weights, read_checkpoint, save_checkpoint
from vla.checkpoint import check_config as check_checkpoint_config
from vla.data import ActionTokenDataset, collate
from vla.evaluation.closed_loop import final_evaluation, success_rate
from vla.evaluation.robustness import calibrate_and_record
from vla.language import encoder_folder, is_pretrained
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import BINNINGS, ActionTokenizer
from vla.training.device_data import DeviceBatches
from vla.training.grounding import ground_and_measure, read_demo_keypoints
from vla.training.runtime import (
    LR_SCALINGS,
    StepSampler,
    check_device,
    check_start_points,
    check_whole_numbers,
    init_distributed,
    keep_rows_up_to,
    make_optimizer,
    policy_config,
    rng_state,
    scaled_lr,
    seed_everything,
    set_rng_state,
    warmup_cosine,
)
from vla.training.step import TrainStep, compile_mode
from vla.vision import keyed_as_adapted

AMP_MODES = ("auto", "bf16", "fp16", "off")
# Loss outputs written to the metrics log when the model reports them (a flow head has no tokens).
LOGGED = ("token_accuracy", "aux_loss", "aux_error_cm", "keypoint_error_px", "weight_action", "weight_aux")


def check_config(cfg: DictConfig) -> PolicyConfig:
    """Every check that needs no data: one clear error before any demo, encoder or scene loads."""
    config = policy_config(cfg.model)
    resolve_tasks(list(cfg.data.tasks))
    check_name("data.instructions", cfg.data.instructions, TRAINING_SPLITS)
    check_name("tokenizer.binning", cfg.tokenizer.binning, BINNINGS)
    check_name("trainer.amp", cfg.trainer.amp, AMP_MODES)
    for split in cfg.eval.splits:
        check_name("eval.splits", split, INSTRUCTION_SPLITS)
    t, g = cfg.trainer, cfg.grounding
    check_whole_numbers(
        {"trainer.steps": t.steps, "trainer.batch_size": t.batch_size, "eval.final_episodes": cfg.eval.final_episodes}
        | {"eval.num_envs": cfg.eval.num_envs, "grounding.scenes": g.scenes, "trainer.lr_batch": t.lr_batch}
    )
    compile_mode(t.compile)
    check_name("trainer.lr_scaling", t.lr_scaling, LR_SCALINGS)
    flags = {"trainer.fused_adam": t.fused_adam, "trainer.gpu_data": t.gpu_data}
    if any(not isinstance(value, bool) for value in flags.values()):
        raise ValueError(f"{' and '.join(flags)} must be true or false, got {dict(flags)}")
    if t.gpu_data and not is_pretrained(config.text_encoder):
        raise ValueError(  # a trained encoder's states change every step: they cannot be read once
            "trainer.gpu_data=true encodes each instruction once with a frozen pretrained text encoder; "
            f"model.text_encoder={config.text_encoder} is trained with the policy: set trainer.gpu_data=false"
        )
    if not t.lr > 0 or g.steps < 0 or g.kind_weight < 0:
        raise ValueError(
            f"need trainer.lr > 0, grounding.steps >= 0, grounding.kind_weight >= 0; got {t.lr}, "
            f"{g.steps}, {g.kind_weight}"
        )
    episodes = cfg.eval.robustness_episodes
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 0:
        raise ValueError(f"eval.robustness_episodes must be a whole number >= 0 (0: off), got {episodes!r}")
    shares = {"data.rewrites": cfg.data.rewrites, "grounding.rewrites": g.rewrites, "grounding.negatives": g.negatives}
    bad = {k: v for k, v in shares.items() if not (isinstance(v, (int, float)) and 0 <= v <= 1)}
    if bad or g.rewrites + g.negatives > 1:
        raise ValueError(f"shares must be in [0, 1], grounding.rewrites + grounding.negatives at most 1; got {shares}")
    if g.negatives > 0 and config.keypoints and not config.scope_check:
        raise ValueError(
            f"grounding.negatives={g.negatives} trains the reader's abstain cell, which model.scope_check=false "
            "removes: set grounding.negatives=0 too"
        )
    if t.cache_keypoints and (config.keypoints != 2 or config.aux_weight != 0):
        # Keypoints read once stay right: the reader is frozen, and every sample index keeps the one
        # wording (re-worded or rewritten) it was read with.
        raise ValueError(
            "trainer.cache_keypoints=true needs model.keypoints=2 and model.aux_weight=0; "
            f"got {config.keypoints} and {config.aux_weight}"
        )
    check_device(cfg.device)
    check_start_points(cfg.resume, cfg.init)
    if cfg.get("vision_init"):
        check_checkpoint_path(cfg.vision_init, "vision_init")
    if g.get("reader"):
        check_checkpoint_path(g.reader, "grounding.reader")
    if g.get("reader") and not config.keypoints:
        raise ValueError(f"grounding.reader={g.reader} is a keypoint reader for a model without one (keypoints=0)")
    if not (Path(cfg.data.path) / "index.h5").exists() and not cfg.data.collect_if_missing:
        raise FileNotFoundError(
            f"no dataset at {cfg.data.path}; collect one with `python train/collect.py output={cfg.data.path}`"
        )
    if is_pretrained(config.text_encoder):
        encoder_folder(config.text_encoder)  # a missing encoder is one error naming the fixes
    return config


def train(cfg: DictConfig) -> dict | None:
    """Train, evaluate, and return the final evaluation report (None on other ranks or when
    stopped early)."""
    rank, world, device = init_distributed()
    if cfg.device != "auto":
        device = torch.device(cfg.device)
    run_dir = Path(cfg.resume or cfg.run_dir)
    if rank != 0:
        return _train(cfg, rank, world, device, run_dir)
    with run_log(run_dir / "bc.log"):
        return _train(cfg, rank, world, device, run_dir)


def _train(cfg: DictConfig, rank: int, world: int, device: torch.device, run_dir: Path) -> dict | None:
    t, c = cfg.trainer, cfg.model
    if rank == 0:  # what this run is, first: the log then says it before any slow work
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        print(
            f"config: tasks {list(cfg.data.tasks)} | model width {c.width} x {c.layers} layers, ViT "
            f"{'off' if not c.vision_tokens else f'{c.patch_size}px patches x {c.vision_layers} layers'}, "
            f"{c.keypoints} keypoints, text {c.text_encoder} | {t.steps} steps x {t.batch_size} | seed {cfg.seed} | "
            f"full config: {run_dir / 'config.yaml'}"
        )

    # --- data, model, optimiser, and (maybe) the state to resume ---------------------------
    demos, tokenizer, policy, train_idx, val_idx = build(cfg, rank, device)
    policy_config = policy.config
    lr = scaled_lr(t.lr, t.batch_size, t.lr_batch, t.lr_scaling)
    optimizer = make_optimizer(policy, lr, t.weight_decay, device, fused=t.fused_adam)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, t.warmup_steps, t.steps))
    start_step, best_success, payload = 0, -1.0, None
    if cfg.get("init") and not cfg.resume:  # fine-tune: weights (and proprio statistics) from a checkpoint
        tokenizer = load_init_weights(Path(cfg.init), policy_config, policy)
    if cfg.resume:
        payload = load_resume_state(run_dir, policy_config, policy, optimizer, schedule)
        start_step, best_success = payload["step"], payload["best_success"]
        tokenizer = ActionTokenizer.from_state_dict(payload["tokenizer"])
    fresh = not cfg.resume and not cfg.get("init")
    if cfg.get("vision_init") and fresh:
        load_pretrained_vision(Path(cfg.vision_init), policy_config, policy)
    if policy.keypoint_reader is not None and cfg.grounding.get("reader") and fresh:
        load_grounded_reader(Path(cfg.grounding.reader), policy_config, policy, run_dir if rank == 0 else None)
    elif policy.keypoint_reader is not None and cfg.grounding.steps > 0 and fresh:
        if rank == 0:  # DistributedDataParallel hands rank 0's grounded reader to the others
            ground(cfg, policy, run_dir, progress=t.progress)
    model = policy
    if world > 1:
        policy.freeze_outside_bc_loss()
        model = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None
        )

    # after DDP has handed rank 0's grounded reader to every rank (the keypoint cache reads it)
    dataset = make_dataset(cfg, policy, demos, tokenizer, train_idx, progress=rank == 0 and t.progress)
    per_rank_batch = t.batch_size // world
    batches = training_batches(cfg, policy, dataset, device, start_step * t.batch_size, rank, world, per_rank_batch)
    autocast = mixed_precision(t.amp, device)
    scaler = loss_scaler(t.amp, device)
    if payload is not None and "loss_scaler" in payload:
        scaler.load_state_dict(payload["loss_scaler"])
    train_step = TrainStep(model, policy, optimizer, scaler, autocast, t.grad_clip, t.augment, t.compile)

    writer = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        keep_rows_up_to(run_dir / "metrics.jsonl", start_step)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(run_dir / "tb")
        print(
            f"run dir: {run_dir}  | {demos.num_episodes} episodes, {len(train_idx)} train samples | "
            f"{sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6:.2f}M trainable params | "
            f"device {device} x{world}"
        )

        sample = collate([dataset[0]])
        layout = ", ".join(f"{name} {count}" for name, count in policy.token_layout(to_device(sample, device)))
        print(f"token layout per step (V1): [{layout}] x width {policy_config.width}")

    def checkpoint(name: str, step: int) -> None:
        save(run_dir / "checkpoints" / name, policy, tokenizer, optimizer, schedule, step, best_success, cfg, scaler)

    # --- the training loop -------------------------------------------------------------------
    stop = min(t.steps, t.stop_at_step or t.steps)
    bar = progress(total=t.steps, initial=start_step, desc="bc", disable=rank != 0 or not t.progress)
    model.train()
    last_time, samples = time.perf_counter(), 0
    for step in range(start_step, stop):
        out, grad_norm = train_step(next(batches))  # read back (.item()) only at log rows: no wait per step
        schedule.step()
        samples += per_rank_batch * world

        if rank == 0 and (step + 1) % t.log_every == 0:
            now = time.perf_counter()
            metrics = {
                "step": step + 1,
                "loss": out["loss"].item(),
                **{k: out[k].item() for k in LOGGED if k in out},
                "grad_norm": grad_norm.item(),
                "lr": schedule.get_last_lr()[0],
                "samples_per_s": samples / (now - last_time),
            }
            last_time, samples = now, 0
            log_metrics(writer, run_dir, metrics)
            shown = {"acc": f"{metrics['token_accuracy']:.2f}"} if "token_accuracy" in metrics else {}
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", **shown)
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
        if policy.keypoint_reader is not None and policy.keypoint_reader.absent is not None:
            scenes = cfg.eval.scope_calibration_scenes
            calibrate_and_record(policy, task_ids(list(cfg.data.tasks)), scenes, run_dir / "checkpoints" / "best.pt")
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
    config = policy_config(cfg.model)
    demos = load_demos(cfg, rank, config)
    tokenizer = fit_tokenizer(cfg, demos)
    train_idx, val_idx = split_demos(demos, list(cfg.data.tasks), cfg.data.val_fraction, cfg.seed)
    return demos, tokenizer, make_policy(cfg, demos, train_idx, device), train_idx, val_idx


def make_policy(cfg: DictConfig, demos: DemoDataset, train_idx: np.ndarray, device: torch.device) -> VLAPolicy:
    """A freshly initialised policy (seeded) on ``device``, proprio standardised with the
    training demos' statistics."""
    config = policy_config(cfg.model)
    seed_everything(cfg.seed)
    policy = VLAPolicy(config).to(device)
    mean, std = demos.proprio_statistics(train_idx)
    policy.set_proprio_statistics(mean[: config.proprio_dim], std[: config.proprio_dim])
    return policy


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


def training_batches(
    cfg: DictConfig,
    policy: VLAPolicy,
    dataset: ActionTokenDataset,
    device: torch.device,
    start: int,
    rank: int,
    world: int,
    batch_size: int,
) -> Iterator[dict]:
    """This rank's endless training batches on ``device`` from global sample position ``start``:
    gathered on the device (``trainer.gpu_data``) or built by DataLoader workers and copied over."""
    if cfg.trainer.gpu_data:
        workers, show = cfg.data.num_workers, rank == 0 and cfg.trainer.progress
        return DeviceBatches(dataset, policy, device, batch_size, cfg.seed, start, rank, world, workers, show)
    loader = make_loader(cfg, dataset, StepSampler(len(dataset), cfg.seed, start, rank, world), batch_size)
    return (to_device(batch, device) for batch in loader)


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
    """bf16 autocast for trainer.amp=bf16, or auto on CUDA; fp16 autocast for fp16 (with
    ``loss_scaler``); otherwise a no-op context."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def loss_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow below ~6e-8: the loss is scaled up before backward and the
    gradients down before the step, the scale halving on overflow (a no-op unless amp=fp16)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def load_demos(cfg: DictConfig, rank: int, config: PolicyConfig) -> DemoDataset:
    """The demos as training reads them: collected if missing, checked against the model,
    preloaded, re-worded."""
    demos = load_or_collect(cfg, rank)
    check_dataset_matches(demos, config)
    if cfg.data.preload:
        demos.preload(progress=rank == 0 and cfg.trainer.progress)
    if cfg.data.instructions != "train":
        demos.reword_instructions(cfg.seed, cfg.data.instructions)
    if cfg.data.rewrites > 0:
        demos.rewrite_instructions(cfg.seed, cfg.data.rewrites)
    return demos


def load_or_collect(cfg: DictConfig, rank: int) -> DemoDataset:
    path = Path(cfg.data.path)
    if not (path / "index.h5").exists():
        if not cfg.data.collect_if_missing:
            raise SystemExit(f"error: no dataset at {path}; collect one with `python train/collect.py output={path}`")
        if rank == 0:
            from envs.collection import CollectConfig, collect

            print(f"no dataset at {path}: collecting {cfg.data.episodes_per_task} expert episodes per task first")
            collect(
                CollectConfig(
                    tasks=resolve_tasks(list(cfg.data.tasks)),
                    episodes_per_task=cfg.data.episodes_per_task,
                    output=path,
                    image_size=cfg.model.image_size,
                    cameras=tuple(cfg.model.cameras),
                    workers=cfg.data.collect_workers,
                )
            )
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    return DemoDataset(path)


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


def ground(cfg: DictConfig, policy: VLAPolicy, run_dir: Path, progress: bool) -> None:
    """Grounding pretraining of the keypoint reader on rendered scenes (vla/training/grounding.py);
    its held-out error goes to <run dir>/grounding.json."""
    g = cfg.grounding
    result, _, _ = ground_and_measure(policy, g, cfg.seed, cfg.model.image_size, cfg.data.instructions, progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: g[k] for k in ("scenes", "steps", "kind_weight")} | {"split": cfg.data.instructions}
    (run_dir / "grounding.json").write_text(json.dumps({**settings, **result}, indent=2))
    print(
        f"grounding: keypoints {result['heldout_error_px']:.2f} px mean / {result['heldout_median_px']:.2f} px "
        f"median from the truth on held-out scenes ({100 * result['heldout_over_2px']:.0f}% beyond 2 px); "
        f"{result['paraphrase_error_px']:.2f} / {result['paraphrase_median_px']:.2f} px "
        f"({100 * result['paraphrase_over_2px']:.0f}%) on the same scenes worded as held-out paraphrases"
    )


def fit_tokenizer(cfg: DictConfig, demos: DemoDataset) -> ActionTokenizer:
    """The action tokenizer: ``model.bins`` bins per element, uniform or fitted to the demos."""
    bins = cfg.model.bins
    if cfg.tokenizer.binning == "quantile":
        stats = demos.action_stats
        return ActionTokenizer(bins, stats["q01"], stats["q99"], "quantile")
    return ActionTokenizer(bins, mode=cfg.tokenizer.binning)


def load_init_weights(path: Path, config: PolicyConfig, policy) -> ActionTokenizer:
    """Weights from a checkpoint; its tokenizer too (the bins the weights were trained on)."""
    try:
        payload = read_checkpoint(path)
        check_checkpoint_config(payload, asdict(config))
        load_weights(policy, payload)
    except CheckpointError as error:
        raise SystemExit(f"error: cannot start from init={path}: {error}") from None
    print(f"initialised from {payload['path']} (step {payload.get('step')})")
    return ActionTokenizer.from_state_dict(payload["tokenizer"])


def load_part(
    path: Path, option: str, name: str, module: torch.nn.Module, prefix: str, settings: dict, fresh=lambda key: False
) -> dict:
    """One part of the policy (``module``: its weights under ``prefix``) taken from another run's
    checkpoint, given by setting ``option``; ``settings`` must match what that part was made for.
    Weights ``fresh`` names (by their key within the part) are neither taken nor expected.
    Returns the checkpoint's payload; a mismatch is one ``error:`` line."""
    try:
        payload = read_checkpoint(path)
        check_checkpoint_config(payload, settings)
        state = {k.removeprefix(prefix): v for k, v in payload["model"].items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if not fresh(k)}
        if not state:
            raise CheckpointError(f"it has no {name}")
        missing, unexpected = module.load_state_dict(keyed_as_adapted(module, state), strict=False)
        if unexpected or any(not fresh(k) for k in missing):
            raise CheckpointError(f"its {name} differs from this one: missing {missing[:4]}, extra {unexpected[:4]}")
    except (CheckpointError, RuntimeError) as error:
        raise SystemExit(f"error: cannot take the {name} of {option}={path}: {error}") from None
    return payload


# What a ViT's weights were made for: a ViT taken from another run must match them.
VISION_SETTINGS = ("image_size", "patch_size", "vision_pool", "vision_layers", "patch_embed", "width", "heads")


def load_pretrained_vision(path: Path, config: PolicyConfig, policy) -> None:
    """The ViT of another run (``vision_init``): pretrained features for frozen layers or LoRA
    (its adapters start fresh)."""
    if policy.vision is None:
        raise SystemExit("error: vision_init needs a ViT: model.vision_tokens=true")
    settings = {k: getattr(config, k) for k in VISION_SETTINGS}
    payload = load_part(path, "vision_init", "ViT", policy.vision, "vision.", settings, lambda k: "lora_" in k)
    print(f"ViT from {payload['path']}")


# What a keypoint reader's weights were made for: a reader taken from another run must match them.
READER_SETTINGS = (
    "image_size", "width", "keypoints", "keypoint_channels", "keypoint_sentence", "scope_check",
    "text_encoder", "text_max_length", "text_normalise", "colour_words", "colour_palette",
)  # fmt: skip


def load_grounded_reader(path: Path, config: PolicyConfig, policy, run_dir: Path | None) -> None:
    """The keypoint reader grounded in another run (``grounding.reader``), instead of grounding one
    here; its source goes to <run dir>/grounding.json. What grounding trained is taken; the tokens
    made of the keypoints (BC trains them) start fresh, as here."""
    reader = policy.keypoint_reader
    settings = {k: getattr(config, k) for k in READER_SETTINGS}
    fresh = lambda key: key.startswith(reader.TOKEN_PARTS)  # noqa: E731
    payload = load_part(path, "grounding.reader", "keypoint reader", reader, "keypoint_reader.", settings, fresh)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "grounding.json").write_text(json.dumps({"reader": payload["path"]}, indent=2))
    print(f"keypoint reader from {payload['path']} (grounded there: no grounding here)")


def load_resume_state(run_dir: Path, config: PolicyConfig, policy, optimizer, schedule) -> dict:
    try:
        payload = read_checkpoint(run_dir / "checkpoints" / "latest.pt")
        check_checkpoint_config(payload, asdict(config))
        load_weights(policy, payload)
    except CheckpointError as error:
        raise SystemExit(f"error: cannot resume from {run_dir}: {error}") from None
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    set_rng_state(payload["rng"])
    print(f"resumed {run_dir} at step {payload['step']} from {str(payload.get('sha256'))[:16]}")
    return payload


def save(path, policy, tokenizer, optimizer, schedule, step, best_success, cfg, scaler=None) -> None:
    extra = {"loss_scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}
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
        **extra,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def log_metrics(writer, run_dir: Path, metrics: dict) -> None:
    step = metrics["step"]
    for key, value in metrics.items():
        if key != "step":
            writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(metrics) + "\n")
