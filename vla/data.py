"""Demo samples -> model batches: images, proprio, instruction strings, action-token targets.

``ActionTokenDataset`` wraps any demo reader with ``__len__`` and ``sample(i)`` (e.g.
``envs.dataset.DemoDataset``) so this package never imports the simulator. ``collate``
stacks tensors and keeps instructions as a list of strings: they have different lengths,
and the text encoder pads them and returns the attention mask (V8).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vla.tokenizer import ActionTokenizer


class ActionTokenDataset(torch.utils.data.Dataset):
    """``chunk > 1`` makes each target the next ``chunk`` actions of the episode (the demo
    reader's ``actions_from(i, count)`` gives them, with a mask where the episode ended)."""

    def __init__(
        self,
        demos: Any,
        tokenizer: ActionTokenizer,
        indices: np.ndarray | None = None,
        chunk: int = 1,
        keypoint_coords: np.ndarray | None = None,
        images: bool = True,
    ):
        """``keypoint_coords`` (one row per demo step): a frozen keypoint reader's coordinates,
        read once (``vla.training.grounding.read_demo_keypoints``), handed to the policy with each sample.
        ``images=False`` leaves the camera images out of the samples, for a policy that reads
        the scene through those coordinates alone (no ViT): nothing to copy and stack."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if keypoint_coords is not None and len(keypoint_coords) != len(demos):
            raise ValueError(f"keypoint_coords has {len(keypoint_coords)} rows for {len(demos)} demo steps")
        self.demos = demos
        self.tokenizer = tokenizer
        self.indices = np.arange(len(demos)) if indices is None else np.asarray(indices)
        self.chunk = chunk
        self.keypoint_coords = keypoint_coords
        self.images = images

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.indices[i])
        s = self.demos.sample(index)
        item = {
            "proprio": torch.from_numpy(np.asarray(s["proprio"], dtype=np.float32)),
            "instruction": s["instruction"],
        }
        if self.images:
            item["image"] = torch.from_numpy(np.ascontiguousarray(s["image"]))
        if self.chunk > 1:
            actions, valid = self.demos.actions_from(index, self.chunk)
            item["action_bins"] = torch.from_numpy(self.tokenizer.encode(actions).reshape(-1))
            item["action_valid"] = torch.from_numpy(valid)
        else:
            item["action_bins"] = torch.from_numpy(self.tokenizer.encode(s["action"]))
        if self.images and "wrist_image" in s:
            item["wrist_image"] = torch.from_numpy(np.ascontiguousarray(s["wrist_image"]))
        if self.keypoint_coords is not None:
            item["keypoint_coords"] = torch.from_numpy(self.keypoint_coords[index])
        for key in ("key_positions", "key_uv"):  # privileged, for the auxiliary loss only
            if key in s:
                item[key] = torch.from_numpy(np.asarray(s[key], dtype=np.float32))
        return item


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    names = ("image", "wrist_image", "proprio", "action_bins", "action_valid")
    names += ("key_positions", "key_uv", "keypoint_coords")
    keys = [k for k in names if k in samples[0]]
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in keys}
    batch["instruction"] = [s["instruction"] for s in samples]
    return batch


def check_observations(
    observations: Any, *, image_size: int, image_keys: tuple[str, ...] = ("image",), proprio_dim: int = 9
) -> None:
    """Raise a one-line ValueError naming the first observation and key that breaks the contract
    (docs/architecture.md): a non-empty list of dicts, each with uint8 (image_size, image_size, 3)
    images, at least ``proprio_dim`` finite proprio numbers and a string instruction."""
    if not isinstance(observations, (list, tuple)) or not observations:
        raise ValueError(f"observations must be a non-empty list of dicts, got {type(observations).__name__}")
    want = (image_size, image_size, 3)
    for i, obs in enumerate(observations):
        where = f"observation {i}" if len(observations) > 1 else "observation"
        if not isinstance(obs, dict):
            raise ValueError(f"{where} must be a dict, got {type(obs).__name__}")
        missing = [k for k in (*image_keys, "proprio", "instruction") if k not in obs]
        if missing:
            raise ValueError(f"{where} lacks {missing}; it needs {[*image_keys, 'proprio', 'instruction']}")
        for key in image_keys:
            image = obs[key]
            if not isinstance(image, (np.ndarray, torch.Tensor)) or image.dtype not in (np.uint8, torch.uint8):
                raise ValueError(f"{where}[{key!r}] must be a uint8 array of shape {want}, got {_describe(image)}")
            if tuple(image.shape) != want:
                raise ValueError(f"{where}[{key!r}] must have shape {want}, got {tuple(image.shape)}")
        try:
            with np.errstate(over="ignore"):  # a number too big for float32 becomes inf, refused below
                proprio = np.asarray(obs["proprio"], dtype=np.float32)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}['proprio'] must be numbers, got {_describe(obs['proprio'])}") from None
        if proprio.ndim != 1 or len(proprio) < proprio_dim:
            raise ValueError(f"{where}['proprio'] must have at least {proprio_dim} elements, got shape {proprio.shape}")
        if not np.all(np.isfinite(proprio[:proprio_dim])):
            raise ValueError(f"{where}['proprio'] has non-finite elements: {proprio[:proprio_dim].tolist()}")
        if not isinstance(obs["instruction"], str):
            raise ValueError(f"{where}['instruction'] must be a string, got {_describe(obs['instruction'])}")


def _describe(value: Any) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of {value.dtype} {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def observations_to_batch(observations: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Env observations (the contract's dicts) -> a model batch on ``device``."""
    batch: dict[str, Any] = {}
    for key in ("image", "wrist_image"):
        if key not in observations[0]:
            continue
        images = np.stack([np.asarray(o[key]) for o in observations])
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"observation {key}s must be uint8 (H, W, 3), got {images.dtype} {images.shape[1:]}")
        batch[key] = torch.from_numpy(images).to(device)
    proprio = np.stack([np.asarray(o["proprio"], dtype=np.float32) for o in observations])
    batch["proprio"] = torch.from_numpy(proprio).to(device)
    batch["instruction"] = [str(o["instruction"]) for o in observations]
    if "keypoint_uv" in observations[0]:  # true keypoints (envs.camera.TrueKeypoints): the reader is skipped
        uv = np.stack([np.asarray(o["keypoint_uv"], dtype=np.float32) for o in observations])
        batch["keypoint_coords"] = torch.from_numpy(uv).to(device)
    return batch
