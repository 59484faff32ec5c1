"""Policy checkpoints: model weights, policy config, action tokenizer, training state.

Saved atomically (temporary file + rename), so a crash mid-save leaves the previous
checkpoint intact. Loading errors are one clear message, never a deep traceback. A
checkpoint of an older format is migrated on reading (``migrate``), so PolicyConfig's
defaults are free to follow the current best model.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer

FORMAT = "vla-sandbox-policy/2"
OLD_FORMATS = ("vla-sandbox-policy/1",)
# Format 1 saved every field that existed when it was written; a field added later took the
# default of its day, listed here (PolicyConfig's defaults of format 1).
FORMAT_1_DEFAULTS = {
    "patch_size": 8,
    "vision_pool": 1,
    "vision_layers": 2,
    "patch_embed": "linear",
    "width": 128,
    "layers": 4,
    "heads": 4,
    "dropout": 0.0,
    "text_encoder": "minilm",
    "text_max_length": 32,
    "use_proprio": True,
    "bins": 256,
    "action_dim": 7,
    "proprio_dim": 8,
    "decoding": "autoregressive",
    "chunk": 1,
    "cameras": ["scene"],
    "aux_weight": 0.0,
    "keypoints": 0,
    "keypoint_channels": 32,
    "keypoint_roles": False,
    "keypoint_sentence": False,
    "keypoint_reads_untuned": False,
    "sentence_token": False,
    "augment_pad": 4,
    "vision_tokens": True,
    "word_tokens": True,
    "label_sigma": 0.0,
    "image_size": 64,
}
FORMAT_1_ENCODERS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet": "sentence-transformers/all-mpnet-base-v2",
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason and the path."""


def check_checkpoint_path(value: object, key: str = "checkpoint") -> None:
    """A config's checkpoint setting names a file or run directory that exists (Hydra hands a
    bare number over as an int, so the value is read as text)."""
    if not str(value).strip() or not Path(str(value)).exists():
        raise FileNotFoundError(f"{key}={value}: no such checkpoint file or run directory")


def save_checkpoint(path: str | Path, policy: VLAPolicy, tokenizer: ActionTokenizer, **extra: Any) -> Path:
    payload = {
        "format": FORMAT,
        "policy_config": policy.config_dict(),
        "tokenizer": tokenizer.state_dict(),
        "model": policy.trainable_state_dict(),
        **extra,
    }
    return _write(path, payload)


DIGEST_KEY = "sha256"  # over everything else a checkpoint holds (payload_digest)


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over a checkpoint's whole content (config, weights, optimiser, RNG states): a
    flipped bit anywhere changes it. Tensors by dtype, shape and bytes; the rest by repr."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed({k: v for k, v in payload.items() if k not in (DIGEST_KEY, "path")})
    return digest.hexdigest()


def _write(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save atomically: a temporary file in the same folder, flushed to disk, then renamed over
    ``path``. A crash or a full disk leaves the previous file whole (and no temporary behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, DIGEST_KEY: payload_digest(payload)}
    for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        buffer = io.BytesIO()  # serialise first: torch's zip writer hides a failed write (ENOSPC)
        torch.save(payload, buffer)  # behind a RuntimeError; a plain write raises the OSError
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointError(
                f"could not write {path}: {error.strerror or error} (the previous file is intact)"
            ) from None
        raise
    return path


def update_weights(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Replace (or add) these entries of checkpoint file ``path``'s weights, atomically; the
    rest of the payload (optimiser, step, ...) stays as saved."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload["model"] = {**payload["model"], **tensors}
    return _write(path, payload)


def save_weights_fp16(source: str | Path, path: str | Path) -> Path:
    """A copy of checkpoint ``source`` (a file or a run directory) for moving between machines:
    weights in fp16, no optimiser or loader state (a GPU-config checkpoint: ~6x smaller). It
    loads like any checkpoint (``vla.load_policy``, ``eval/evaluate.py``, ``train/ppo.py init=``),
    the weights cast back to the policy's dtype; it cannot ``resume`` a training run."""
    payload = read_checkpoint(source)
    slim = {k: payload[k] for k in ("format", "policy_config", "tokenizer") if k in payload}
    slim["step"] = payload.get("step")
    slim["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    return _write(path, slim)


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
        reason = (str(error).splitlines() or [""])[0][:160]
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, *OLD_FORMATS):
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    expected = payload.get(DIGEST_KEY)  # absent in checkpoints saved before it was added
    if expected is not None and payload_digest(payload) != expected:
        raise CheckpointError(
            f"{path} is damaged: its content does not match its SHA-256 (saved {str(expected)[:12]}...)"
        )
    if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("policy_config"), dict):
        raise CheckpointError(f"{path} holds no policy (its config or weights are missing)")
    payload["path"] = str(path)
    return migrate(payload)


# Settings added after format 2 was fixed: checkpoints that lack them were trained without
# them, so they load with them off and act exactly as they did.
ADDED_SINCE = {"text_normalise": False, "scope_check": False, "colour_words": False}


def migrate(payload: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint as format 2: every field explicit, encoders by their Hugging Face
    ids, keypoint roles always on; options retired since are refused by name. Settings added
    since (``ADDED_SINCE``) are filled in as off."""
    if payload["format"] == FORMAT:
        return {**payload, "policy_config": {**ADDED_SINCE, **payload["policy_config"]}}
    config = {**FORMAT_1_DEFAULTS, **payload["policy_config"]}
    retired = []
    if config["text_encoder"] not in (*FORMAT_1_ENCODERS, "scratch"):
        retired.append(f"text_encoder={config['text_encoder']}")
    if config.get("keypoints") and not config["keypoint_roles"]:
        retired.append("keypoint_roles=false")
    if config["keypoint_reads_untuned"]:
        retired.append("keypoint_reads_untuned=true")
    if retired:
        raise CheckpointError(
            f"{payload['path']} was trained with options retired since ({', '.join(retired)}; docs/ablations.md): "
            "train it again"
        )
    config["text_encoder"] = FORMAT_1_ENCODERS.get(config["text_encoder"], config["text_encoder"])
    for key in ("keypoint_roles", "keypoint_reads_untuned"):
        config.pop(key)
    return {**payload, "format": FORMAT, "policy_config": {**ADDED_SINCE, **config}}


def check_config(payload: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise CheckpointError naming every field where the checkpoint's policy config differs."""
    saved = payload["policy_config"]
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
