"""Grounding pretraining: teach the policy's keypoint reader to point at what an
instruction names, on rendered scenes (``envs.grounding``), before behaviour cloning.

The toy analogue of RT-2's vision-language pretraining. Only the keypoint reader learns
here; the decoder and the ViT start from scratch in behaviour cloning, where the demos'
key positions keep supervising the reader (``model.aux_weight``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from envs.progress import progress as progress_bar
from vla.training.runtime import warmup_cosine

HELDOUT_SCENES = 500  # the last scenes of a set, kept out of grounding to measure it (at most a tenth)


def pretrain_keypoints(
    policy: Any,
    scenes: dict[str, np.ndarray],
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    heldout: int = HELDOUT_SCENES,
    seed: int = 0,
    progress: bool = True,
    kind_weight: float = 0.0,
    rewrites: float = 0.0,
    negatives: float = 0.0,
) -> dict[str, float]:
    """Train ``policy.keypoint_reader`` to put its heatmaps on the true image coordinates
    (``scenes["key_uv"]``) of the scenes' targets and destinations. The last ``heldout``
    scenes (new layouts) are kept out to measure it. Returns the final training loss and
    the held-out mean and median distance of the keypoints from the truth in pixels.

    ``kind_weight`` > 0 adds a cross-entropy loss of that weight on what each keypoint's
    question names (``scenes["key_kinds"]``: cube, cylinder or zone), read by a linear head
    that is dropped after grounding. The heatmap alone needs the shape only where the
    target's same-colour sibling is on the table (about 2 scenes in 7); this asks for it in
    every scene, so that a new noun ("can") must land on a shape's side of the question.

    ``rewrites`` and ``negatives`` re-word that share of the training scenes
    (``envs.grounding.training_wordings``): as people type (training lexicon), or naming
    nothing in view, where the reader's abstain cell (``model.scope_check``) is the label."""
    if kind_weight < 0:
        raise ValueError(f"kind_weight must be 0 or more, got {kind_weight}")
    reader = policy.keypoint_reader
    if reader is None:
        raise ValueError("grounding pretraining needs a policy with keypoints (model.keypoints=2)")
    count = len(scenes["images"])
    heldout = heldout_scene_count(count, heldout)
    if steps <= 0 or count - heldout < batch_size:
        raise ValueError(f"grounding needs steps > 0 and more than {batch_size} training scenes, got {steps}, {count}")
    device = policy.proprio_mean.device
    images = torch.from_numpy(scenes["images"])
    key_uv = torch.from_numpy(scenes["key_uv"]).float()
    train_count = count - heldout
    if negatives > 0 and reader.absent is None:
        raise ValueError("grounding.negatives > 0 trains the reader's abstain cell: it needs model.scope_check=true")
    instructions = [str(s) for s in scenes["instructions"]]
    named = torch.ones(count, 2, dtype=torch.bool)
    if rewrites > 0 or negatives > 0:
        from envs.grounding import training_wordings

        worded, worded_named = training_wordings(scenes, seed, rewrites, negatives, range(train_count))
        instructions[:train_count] = worded
        named[:train_count] = torch.from_numpy(worded_named)
    use_bf16 = device.type == "cuda"
    kind_head, key_kinds = None, None
    if kind_weight > 0:
        if "key_kinds" not in scenes:
            raise ValueError("grounding.kind_weight > 0 needs scenes with key_kinds (render them again)")
        key_kinds = torch.from_numpy(scenes["key_kinds"]).long()
        kind_head = torch.nn.Linear(reader.text_proj.out_features, int(key_kinds.max()) + 1).to(device)

    def heatmap_loss(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            text_states, text_mask = policy.text([instructions[i] for i in index.tolist()], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            questions = reader.ask(text_states, text_mask)
            logits, _ = reader.heatmaps_for(images[index].to(device), questions)
            kinds = kind_head(questions) if kind_head is not None else None
            absent = reader.absent(questions) if reader.absent is not None else None
        in_view = named[index].to(device)
        loss, error_px = reader.heatmap_loss(logits, key_uv[index].to(device), absent, in_view)
        if kinds is not None:  # what a question names, asked where it names something in view
            labels = key_kinds[index].to(device)
            kinds = kinds.float().flatten(0, 1)
            kind_loss = torch.nn.functional.cross_entropy(kinds, labels.flatten(), reduction="none")
            loss = loss + kind_weight * (kind_loss * in_view.flatten()).sum() / in_view.sum().clamp(min=1)
        return loss, error_px

    parameters = list(reader.parameters()) + (list(kind_head.parameters()) if kind_head is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, min(100, steps // 10), steps))
    generator = torch.Generator().manual_seed(seed)
    reader.train()
    bar = progress_bar(range(steps), desc="grounding", disable=not progress)
    for _ in bar:
        loss, error_px = heatmap_loss(torch.randint(0, train_count, (batch_size,), generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", err_px=f"{error_px.item():.2f}")
    return {"train_loss": loss.item(), **heldout_error(policy, scenes, range(train_count, count))}


def heldout_scene_count(count: int, heldout: int = HELDOUT_SCENES) -> int:
    """How many of ``count`` scenes (the last ones) grounding keeps out to measure itself."""
    return min(heldout, count // 10)


def ground_and_measure(
    policy: Any, grounding: Any, seed: int, image_size: int, split: str, progress: bool = True
) -> tuple[dict[str, float], dict[str, np.ndarray], torch.Tensor]:
    """Grounding pretraining as ``configs/bc.yaml``'s ``grounding`` group sets it (``grounding``:
    scenes, steps, batch_size, lr, kind_weight, workers, path), on scenes worded
    from ``split``. Returns ``pretrain_keypoints``' result plus the ``paraphrase_*`` errors on the
    kept-out scenes worded as held-out paraphrases, those scenes, and their per-keypoint errors
    (N, 2) in pixels. BC (vla/training/bc.py) and eval/probes/grounding_probe.py both ground through it."""
    from envs.grounding import load_or_render_scenes

    g = grounding
    scenes = load_or_render_scenes(g.path, g.scenes, seed, image_size, g.workers, progress, split=split)
    result = pretrain_keypoints(
        policy,
        scenes,
        g.steps,
        g.batch_size,
        g.lr,
        seed=seed,
        progress=progress,
        kind_weight=g.kind_weight,
        rewrites=g.get("rewrites", 0.0),
        negatives=g.get("negatives", 0.0),
    )
    reworded = paraphrased_heldout_scenes(g.scenes, seed, image_size, g.workers)
    errors = keypoint_errors(policy, reworded, range(len(reworded["images"])))
    return result | summarise_errors(errors, "paraphrase"), reworded, errors


def paraphrased_heldout_scenes(
    count: int, seed: int = 0, image_size: int = 64, workers: int = 2
) -> dict[str, np.ndarray]:
    """The scenes grounding keeps out of a set of ``count`` (its last ``heldout_scene_count``),
    the same layouts worded with the held-out paraphrases ("block", "can", "mat"): does the
    pointing survive words it never saw?"""
    from envs.grounding import render_scenes

    kept_out = heldout_scene_count(count)
    return render_scenes(kept_out, seed, image_size, workers, False, "heldout", count - kept_out)


@torch.no_grad()
def heldout_error(
    policy: Any, scenes: dict[str, np.ndarray], indices: Any, prefix: str = "heldout"
) -> dict[str, float]:
    """Mean and median keypoint error in pixels, and the share off by more than 2 pixels
    (about 2 cm on the table at 64 px), over the scenes ``indices``; keys start ``prefix``."""
    return summarise_errors(keypoint_errors(policy, scenes, indices), prefix)


def summarise_errors(errors: torch.Tensor, prefix: str) -> dict[str, float]:
    """``heldout_error``'s summary of keypoint errors in pixels (any shape)."""
    errors = errors.flatten()
    return {
        f"{prefix}_error_px": errors.mean().item(),
        f"{prefix}_median_px": errors.median().item(),
        f"{prefix}_over_2px": (errors > 2).float().mean().item(),
    }


@torch.no_grad()
def keypoint_errors(policy: Any, scenes: dict[str, np.ndarray], indices: Any) -> torch.Tensor:
    """Distance in pixels (N, K) of each keypoint the reader puts on the scenes ``indices``
    from the truth (keypoint 0: the target, 1: its destination)."""
    index = torch.as_tensor(list(indices))
    errors = []
    for chunk in index.split(256):
        images = scenes["images"][chunk.numpy()]
        coords = read_keypoints(policy, images, [str(scenes["instructions"][i]) for i in chunk.tolist()])
        truth = torch.from_numpy(scenes["key_uv"][chunk.numpy()]).to(coords.device)
        errors.append((coords - truth).norm(dim=-1).cpu() * images.shape[1] / 2)
    return torch.cat(errors)


@torch.no_grad()
def read_demo_keypoints(policy: Any, demos: Any, batch_size: int = 512, progress: bool = True) -> np.ndarray:
    """Freeze the policy's keypoint reader and read its coordinates (N, K, 2) for every demo
    step, once (``trainer.cache_keypoints``). Behaviour cloning then hands them to the decoder
    instead of running the reader's conv map on every sample of every step; without the
    auxiliary loss the reader gets no gradient there anyway, as its coordinates reach the
    decoder detached."""
    reader = policy.keypoint_reader
    if reader is None:
        raise ValueError("trainer.cache_keypoints needs a policy with keypoints (model.keypoints=2)")
    reader.freeze_reading()
    coords = np.empty((len(demos), reader.keypoints, 2), dtype=np.float32)
    starts = range(0, len(demos), batch_size)
    for start in progress_bar(starts, desc="reading keypoints", disable=not progress):
        samples = [demos.sample(i) for i in range(start, min(start + batch_size, len(demos)))]
        images = np.stack([s["image"] for s in samples])
        read = read_keypoints(policy, images, [s["instruction"] for s in samples])
        coords[start : start + len(samples)] = read.cpu().numpy()
    return coords


@torch.no_grad()
def read_keypoints(policy: Any, images: np.ndarray, instructions: list[str]) -> torch.Tensor:
    """Where the policy's keypoint reader points in ``images`` (B, H, W, 3) when asked
    ``instructions``: (B, K, 2) image coordinates in [-1, 1], float32 on the policy's device."""
    device = policy.proprio_mean.device
    text_states, text_mask = policy.text(instructions, device)
    _, coords, _ = policy.keypoint_reader(torch.from_numpy(images).to(device), text_states, text_mask)
    return coords.float()
