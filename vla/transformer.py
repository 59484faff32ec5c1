"""Pre-norm transformer blocks on ``scaled_dot_product_attention``, with an optional KV
cache for incremental decoding.

Masks are boolean and broadcast to (B, heads, queries, keys); True means "may attend"; or a
FlexAttention ``BlockMask`` (the same rule as a predicate, compiled into one fused kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

# compiled lazily, at the first call on a GPU (creating it compiles nothing)
_compiled_flex_attention = torch.compile(flex_attention, dynamic=False)


def fused_flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """FlexAttention as one fused kernel. Called eagerly, ``flex_attention`` falls back to a dense
    reference implementation (every score materialised, and a CPU scalar that a CUDA graph
    cannot capture); compiled, it becomes the kernel. Compiled on a GPU only: on a CPU the
    reference is what runs in the tests."""
    if not q.is_cuda:
        return flex_attention(q, k, v, block_mask=block_mask)
    return _compiled_flex_attention(q, k, v, block_mask=block_mask)


class KVCache:
    """Keys and values of every layer for the tokens decoded so far."""

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def fork(self) -> KVCache:
        """A cache holding the same entries, whose appends leave this one as it is."""
        other = KVCache(len(self.keys))
        other.keys, other.values = list(self.keys), list(self.values)
        return other

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(
        self, x, mask=None, cache: KVCache | None = None, layer: int = 0, queries_from: int = 0
    ) -> torch.Tensor:
        """Attention of the tokens from ``queries_from`` on over all of ``x`` (and the cache)."""
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        if queries_from:
            q = q[:, :, queries_from:]
        if isinstance(mask, BlockMask):  # FlexAttention: the mask as a predicate, already for these queries
            y = fused_flex_attention(q, k, v, block_mask=mask)
        else:
            if queries_from and mask is not None and mask.shape[-2] > 1:
                mask = mask[..., queries_from:, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n - queries_from, w))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask=None, cache: KVCache | None = None, layer: int = 0, queries_from: int = 0, film=None):
        """The block's output for the tokens from ``queries_from`` on: a last block whose
        earlier positions nobody reads skips their attention output and MLP. ``film`` (B, 4,
        width): FiLM's scale and shift of every token's normalised features, before the
        attention (rows 0, 1) and before the MLP (rows 2, 3)."""
        h = self.norm1(x)
        if film is not None:
            h = h * (1 + film[:, 0:1]) + film[:, 1:2]
        x = x[:, queries_from:] + self.drop(self.attn(h, mask, cache, layer, queries_from))
        h = self.norm2(x)
        if film is not None:
            h = h * (1 + film[:, 2:3]) + film[:, 3:4]
        return x + self.drop(self.mlp(h))
