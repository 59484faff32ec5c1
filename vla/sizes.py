"""What a policy weighs: parameters per component, activations saved for backward, KV cache.

The numbers behind the parallelism answer (docs/interview.md, V19): which of the three
dominates decides how a model is split over devices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vla.policy import VLAPolicy


def parameter_counts(policy: VLAPolicy) -> dict[str, int]:
    """Parameters (trainable or not) per component: vision (ViT), text (encoder), keypoints
    (the reader), decoder (its blocks), and other (embeddings, action head, norms, projections)."""
    parts: dict[str, nn.Module | None] = {
        "vision": policy.vision,
        "text": policy.text,
        "keypoints": policy.keypoint_reader,
        "decoder": policy.blocks,
    }
    counts = {name: sum(p.numel() for p in m.parameters()) if m is not None else 0 for name, m in parts.items()}
    counts["other"] = sum(p.numel() for p in policy.parameters()) - sum(counts.values())
    return counts


def saved_activation_bytes(policy: VLAPolicy, batch: dict[str, Any]) -> int:
    """Bytes of the tensors autograd keeps from the loss's forward for its backward (measured:
    every tensor saved for backward, each storage counted once; parameters excluded, since they
    are held anyway). Divide by the batch size for bytes per sample."""
    parameters = {p.untyped_storage().data_ptr() for p in policy.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = policy(batch, augment=False)["loss"]
    loss.backward()  # frees the graph; the caller zeroes the gradients if it cares
    return sum(seen.values())


def kv_cache_bytes(layers: int, tokens: int, width: int, bytes_per_value: int = 4) -> int:
    """Bytes of one sequence's KV cache: a key and a value of ``width`` per token per layer
    (multi-head attention; grouped-query attention divides it by heads / kv_heads)."""
    return layers * 2 * tokens * width * bytes_per_value
