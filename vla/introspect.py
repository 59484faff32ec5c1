"""Seeing inside the policy: the decoder's attention weights and the keypoint heatmaps of the
last decoded step, read without changing the model.

``scaled_dot_product_attention`` never returns its weights (the fused kernels never hold
them), so ``DecoderAttention`` hooks the last decoder block's attention module and
recomputes softmax(QK^T / sqrt(d) + mask) from the very inputs it was called with: the same
projection, the same keys (from the KV cache when decoding with one), the same mask. The
weights times the values equal the module's own output (asserted in the tests), so the
map is the real attention, not a saliency proxy.

The decoder's tokens are ``[scene patches | keypoints | (wrist patches) | text | (proprio) |
actions]`` (``VLAPolicy.prefix``); ``token_segments`` names those ranges.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F

from vla.policy import VLAPolicy
from vla.transformer import Attention


def attention_weights(
    attn: Attention, x: torch.Tensor, mask: Any = None, cache: Any = None, layer: int = 0, queries_from: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights (B, heads, queries, keys) and values (B, heads, keys, head_dim) of one call
    of ``attn`` (``Attention.forward``'s arguments), in float32. Call it *after* that call:
    with a cache, the keys and values are the cache's, which the call has just extended."""
    if mask is not None and not torch.is_tensor(mask):  # a FlexAttention BlockMask: a predicate, not weights
        raise TypeError("attention weights are read from a boolean mask: decode with FlexAttention off")
    b, n, w = x.shape
    head_dim = w // attn.heads
    q, k, v = attn.qkv(x).view(b, n, 3, attn.heads, head_dim).permute(2, 0, 3, 1, 4)
    if cache is not None:
        k, v = cache.keys[layer], cache.values[layer]
    if queries_from:
        q = q[:, :, queries_from:]
        mask = mask[..., queries_from:, :] if mask is not None and mask.shape[-2] > 1 else mask
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(head_dim)
    if mask is not None:  # boolean, True = may attend (vla/transformer.py)
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1), v.float()


def attention_output(attn: Attention, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """What ``attn`` returns for these weights: (weights @ V), heads merged, output projection."""
    b, _, queries, _ = weights.shape
    y = (weights @ values).transpose(1, 2).reshape(b, queries, -1)
    return F.linear(y, attn.out.weight.float(), attn.out.bias.float())


class DecoderAttention:
    """Records a decoder block's attention rows (``layer``; None: the last) while the policy decodes.

    ``with DecoderAttention(policy) as recorder: policy.decode(batch)``; then
    ``recorder.action_rows()`` is (B, heads, action tokens, keys): each action query's
    weights over every token it saw. Rows are kept by absolute query position, so KV-cache
    decoding (one query a call), parallel decoding (all action queries in one call) and
    cache-free decoding (the whole sequence again per token) give the same rows."""

    def __init__(self, policy: VLAPolicy, keep_values: bool = False, layer: int | None = None):
        layers = len(policy.blocks)
        if layer is not None and not 0 <= layer < layers:
            raise ValueError(f"layer={layer}: this policy's decoder has {layers} layers, allowed are 0..{layers - 1}")
        self.policy = policy
        self.layer = layers - 1 if layer is None else layer
        self.attn = policy.blocks[self.layer].attn
        self.keep_values = keep_values  # also keep V and the module's output (to check the recomputation)
        self.rows: dict[int, torch.Tensor] = {}
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (weights, values, output)
        self.keys = 0  # keys the last call saw: the sequence length so far
        self._signature = inspect.signature(self.attn.forward)
        self._handle: Any = None

    def __enter__(self) -> DecoderAttention:
        self.clear()
        self._handle = self.attn.register_forward_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def clear(self) -> None:
        """Forget what was recorded: call it before each step's decoding."""
        self.rows, self.calls, self.keys = {}, [], 0

    @torch.no_grad()
    def _record(self, module: Attention, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        weights, values = attention_weights(module, **bound.arguments)
        keys = weights.shape[-1]
        queries = weights.shape[-2]
        for i in range(queries):  # the queries are always the last ones of the keys
            self.rows[keys - queries + i] = weights[:, :, i]
        self.keys = max(self.keys, keys)
        if self.keep_values:
            self.calls.append((weights, values, output.detach().float()))

    def action_rows(self) -> torch.Tensor:
        """(B, heads, tokens, keys): the rows of the last decoded action's tokens (7 action
        tokens; the flow head's chunk tokens at its last integration step)."""
        d = self.policy.decoded_tokens
        positions = range(self.keys - d, self.keys)
        missing = [p for p in positions if p not in self.rows]
        if missing:
            raise RuntimeError(f"no attention recorded for positions {missing}: decode inside the recorder")
        # a KV-cache call's row covers the keys so far: the later ones it could not see get 0
        rows = [F.pad(self.rows[p], (0, self.keys - self.rows[p].shape[-1])) for p in positions]
        return torch.stack(rows, 2)


def token_segments(policy: VLAPolicy, keys: int) -> dict[str, slice]:
    """Where each kind of token sits among ``keys`` decoder positions (prefix plus the
    action tokens of one decoding), in ``VLAPolicy.prefix``'s order."""
    c = policy.config
    patches = policy.vision.num_tokens if policy.vision is not None else 0
    prefix = keys - policy.decoded_tokens
    segments = {"scene patches": slice(0, patches), "keypoints": slice(patches, patches + c.keypoints)}
    end = patches + c.keypoints
    if len(c.cameras) > 1:
        segments["wrist patches"] = slice(end, end + patches * (len(c.cameras) - 1))
        end = segments["wrist patches"].stop
    proprio = 1 if c.use_proprio else 0
    segments["text"] = slice(end, prefix - proprio)
    if proprio:
        segments["proprio"] = slice(prefix - 1, prefix)
    segments["actions"] = slice(prefix, keys)
    return segments


def vision_attention(policy: VLAPolicy, rows: torch.Tensor) -> dict[str, Any]:
    """The action tokens' attention, averaged over heads and action tokens (B, keys), split:
    ``shares`` (segment -> (B,) share of all attention), ``patches`` (B, grid, grid) and
    ``keypoints`` (B, K), which together sum to 1 (the attention on the scene's tokens,
    renormalised: where in the image the actions looked), and ``grid`` (patches per side)."""
    mean = rows.float().mean(dim=(1, 2))  # (B, keys)
    segments = token_segments(policy, mean.shape[-1])
    shares = {name: mean[:, s].sum(-1) for name, s in segments.items()}
    scene = torch.cat([mean[:, segments["scene patches"]], mean[:, segments["keypoints"]]], -1)
    scene = scene / scene.sum(-1, keepdim=True).clamp_min(1e-12)
    patches = segments["scene patches"].stop
    grid = int(round(math.sqrt(patches)))
    return {
        "shares": shares,
        "patches": scene[:, :patches].reshape(len(mean), grid, grid),
        "keypoints": scene[:, patches:],
        "grid": grid,
    }


def keypoint_heatmaps(policy: VLAPolicy) -> torch.Tensor | None:
    """(B, K, side, side) heatmaps of the last prefix the policy read: the softmax over the
    reader's map cells (rows top to bottom, as the image), each summing to 1; None without a
    reader or when the keypoints came read already (``keypoint_coords``)."""
    logits = policy._keypoint_logits
    if logits is None:
        return None
    side = int(round(math.sqrt(logits.shape[-1])))
    return logits.float().softmax(-1).reshape(*logits.shape[:2], side, side)


def heatmap_coordinates(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) expected (u, v) in image coordinates [-1, 1] under each heatmap: the
    soft-argmax the decoder's keypoint tokens were made from."""
    side = heatmaps.shape[-1]
    centres = (torch.arange(side, dtype=torch.float32, device=heatmaps.device) + 0.5) / side * 2 - 1
    v = (heatmaps.sum(-1) * centres).sum(-1)  # rows: v
    u = (heatmaps.sum(-2) * centres).sum(-1)  # columns: u
    return torch.stack([u, v], -1)
