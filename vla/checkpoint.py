"""Policy checkpoints: model weights, policy config, action tokenizer, training state.

Saved atomically (temporary file + rename), so a crash mid-save leaves the previous
checkpoint intact. Loading errors are one clear message, never a deep traceback.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer

FORMAT = "vla-sandbox-policy/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason and the path."""


def save_checkpoint(path: str | Path, policy: VLAPolicy, tokenizer: ActionTokenizer, **extra: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "policy_config": policy.config_dict(),
        "tokenizer": tokenizer.state_dict(),
        "model": policy.trainable_state_dict(),
        **extra,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def save_weights_fp16(source: str | Path, path: str | Path) -> Path:
    """A copy of checkpoint ``source`` (a file or a run directory) for moving between machines:
    weights in fp16, no optimiser or loader state (a GPU-config checkpoint: ~6x smaller). It
    loads like any checkpoint (``vla.load_policy``, ``eval/evaluate.py``, ``train/ppo.py init=``),
    the weights cast back to the policy's dtype; it cannot ``resume`` a training run."""
    payload = read_checkpoint(source)
    slim = {k: payload[k] for k in ("format", "policy_config", "tokenizer") if k in payload}
    slim["step"] = payload.get("step")
    slim["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run directory: its best checkpoint, else its latest
        best = path / "checkpoints" / "best.pt"
        path = best if best.exists() else path / "checkpoints" / "latest.pt"
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    payload["path"] = str(path)
    return payload


def check_config(payload: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise CheckpointError naming every field where the checkpoint's policy config differs."""
    # keys added since the checkpoint was written hold their defaults in it (e.g. chunk = 1)
    saved = {**asdict(PolicyConfig()), **payload["policy_config"]}
    diff = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{payload['path']} was trained with a different model config ({details})")


def load_weights(policy: VLAPolicy, payload: dict[str, Any]) -> VLAPolicy:
    """Checkpoint weights into an existing policy (no second text encoder is built)."""
    try:
        policy.load_trainable_state_dict(payload["model"])
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"{payload['path']}: {error}") from None
    return policy


def build_policy(payload: dict[str, Any]) -> tuple[VLAPolicy, ActionTokenizer]:
    """Model and tokenizer from a checkpoint."""
    try:
        policy = VLAPolicy(PolicyConfig.from_dict(payload["policy_config"]))
    except ValueError as error:
        raise CheckpointError(f"{payload['path']}: {error}") from None
    return load_weights(policy, payload), ActionTokenizer.from_state_dict(payload["tokenizer"])
