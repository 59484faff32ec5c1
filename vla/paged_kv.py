"""Continuous batching over a paged KV cache, for autoregressive action decoding (L4, L10).

A server decoding token by token for many robots faces two wastes that LLM servers met first:

- **Waiting for the slowest.** A static batch runs until its last sequence is done; a request
  that arrives meanwhile waits for the whole batch. Here sequences join the running batch at
  any token boundary (``ContinuousDecoder.admit``) and leave as soon as their 7 action tokens
  are out (``step``), so a new robot waits one token, not one action.
- **Reserving the longest.** A plain cache per request reserves room for the longest possible
  sequence (every instruction at ``text_max_length`` word tokens). A paged cache (as vLLM's
  PagedAttention) keeps keys and values in fixed-size blocks from one pool, with a block table
  per sequence, and holds only the tokens a sequence really has: padding is never stored
  (attention ignores it anyway, so dropping it changes no result).

``PagedSequences`` is the cache one forward pass sees: ``vla.transformer.Attention`` calls
``append(layer, k, v)`` on it exactly as on the plain ``KVCache``, so the model code is the
same for both. The tokens it decodes equal the plain KV cache's (tests/test_paged_kv.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vla.policy import VLAPolicy


class PoolExhausted(RuntimeError):
    """No free block left: admit fewer sequences or give the pool more blocks."""


class BlockPool:
    """Keys and values of every layer in ``num_blocks`` blocks of ``block_size`` tokens."""

    def __init__(self, layers: int, heads: int, head_dim: int, block_size: int, num_blocks: int, device, dtype):
        shape = (layers, num_blocks, block_size, heads, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))
        self.peak_used = 0

    @property
    def used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def bytes_per_block(self) -> int:
        return 2 * self.keys[:, 0].numel() * self.keys.element_size()

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise PoolExhausted(f"need {count} more KV blocks, {len(self._free)} of {self.num_blocks} are free")
        blocks = [self._free.pop() for _ in range(count)]
        self.peak_used = max(self.peak_used, self.used)
        return blocks

    def release(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))
        blocks.clear()


class PagedSequences:
    """The cache of one forward pass over a batch of sequences (see the module docstring).

    ``prefill`` (``keep`` = the key mask of the new tokens): writes each sequence's kept tokens
    into its blocks, compacted, and returns the new keys and values unchanged (the prefix
    attends within itself with the policy's own mask). Decode (one new token per sequence):
    writes it after the sequence's tokens and returns every sequence's keys and values,
    gathered from its blocks and padded to the longest (``key_valid`` masks the padding)."""

    def __init__(self, pool: BlockPool, tables: list[list[int]], lengths: list[int], keep: torch.Tensor | None = None):
        self.pool, self.tables, self.lengths, self.keep = pool, tables, lengths, keep
        device = pool.keys.device
        if keep is None:  # decode: one token at each sequence's end
            self.new_lengths = [n + 1 for n in lengths]
            slots = [[n] for n in lengths]
        else:
            counts = keep.sum(1).tolist()
            self.new_lengths = [n + c for n, c in zip(lengths, counts, strict=True)]
            slots = [list(range(n, n + c)) for n, c in zip(lengths, counts, strict=True)]
        self._write = self._locate(slots, device)
        width = max(self.new_lengths)
        read = [list(range(n)) + [0] * (width - n) for n in self.new_lengths]
        self._read = self._locate(read, device)
        self.key_valid = torch.tensor([[i < n for i in range(width)] for n in self.new_lengths], device=device)

    def _locate(self, positions: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(block ids, offsets) of each sequence's positions, flattened row by row."""
        size = self.pool.block_size
        blocks = [self.tables[b][p // size] for b, row in enumerate(positions) for p in row]
        offsets = [p % size for row in positions for p in row]
        return torch.tensor(blocks, device=device, dtype=torch.long), torch.tensor(offsets, device=device)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, n, d = k.shape
        new_k, new_v = k.transpose(1, 2), v.transpose(1, 2)  # (B, n, H, D)
        if self.keep is not None:
            new_k, new_v = new_k[self.keep], new_v[self.keep]
        else:
            new_k, new_v = new_k.reshape(b, h, d), new_v.reshape(b, h, d)
        blocks, offsets = self._write
        self.pool.keys[layer, blocks, offsets] = new_k.to(self.pool.keys.dtype)
        self.pool.values[layer, blocks, offsets] = new_v.to(self.pool.values.dtype)
        if self.keep is not None:
            return k, v
        blocks, offsets = self._read
        width = self.key_valid.shape[1]
        keys = self.pool.keys[layer, blocks, offsets].view(b, width, h, d).transpose(1, 2)
        values = self.pool.values[layer, blocks, offsets].view(b, width, h, d).transpose(1, 2)
        return keys.to(k.dtype), values.to(v.dtype)


@dataclass
class _Sequence:
    key: Any
    table: list[int] = field(default_factory=list)
    length: int = 0  # tokens held in the cache
    bins: list[int] = field(default_factory=list)  # action tokens decoded so far


class ContinuousDecoder:
    """Greedy autoregressive decoding of many requests at once, joining and leaving at token
    boundaries, over a ``BlockPool`` (module docstring).

    ``admit([(key, batch), ...])`` prefills new requests (each ``batch`` one observation as the
    policy reads it) and decodes their first token; ``step()`` decodes one more token for
    every running request and returns ``[(key, bins)]`` of those that are complete."""

    def __init__(self, policy: VLAPolicy, block_size: int = 16, num_blocks: int | None = None, max_batch: int = 32):
        policy.require_plain_blocks("continuous batching")
        c = policy.config
        if c.decoding != "autoregressive":
            raise ValueError(
                f"continuous batching decodes token by token: it needs decoding=autoregressive, got {c.decoding}"
            )
        self.policy = policy.eval()
        self.max_batch = max_batch
        self.max_length = self.longest_sequence(policy)
        if num_blocks is None:  # room for max_batch sequences of the longest length
            num_blocks = max_batch * math.ceil(self.max_length / block_size)
        parameter = next(policy.parameters())
        self.pool = BlockPool(
            len(policy.blocks), c.heads, c.width // c.heads, block_size, num_blocks, parameter.device, parameter.dtype
        )
        self.running: list[_Sequence] = []

    @staticmethod
    def longest_sequence(policy: VLAPolicy) -> int:
        """Tokens of the longest possible sequence: what a per-request cache must reserve."""
        c = policy.config
        vision = (policy.vision.num_tokens if policy.vision is not None else 0) * len(c.cameras) + c.keypoints
        text = int(c.sentence_token) + (c.text_max_length if c.word_tokens else 0)
        return vision + text + int(c.use_proprio) + c.action_dim

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.pool.block_size)

    @torch.no_grad()
    def admit(self, requests: list[tuple[Any, dict[str, Any]]]) -> None:
        if len(self.running) + len(requests) > self.max_batch:
            raise PoolExhausted(f"{len(self.running)} running + {len(requests)} new > max_batch {self.max_batch}")
        if not requests:
            return
        policy = self.policy
        batch = _stack([item for _, item in requests])
        x, valid, mask = policy.prefill_inputs(*policy.prefix(batch))
        b = len(x)
        sequences = [_Sequence(key) for key, _ in requests]
        for sequence, kept in zip(sequences, valid.sum(1).tolist(), strict=True):
            # the prefix and all 7 action tokens: a sequence never needs a block mid-decode
            sequence.table = self.pool.allocate(self.blocks_for(kept + policy.config.action_dim - 1))
        cache = PagedSequences(self.pool, [s.table for s in sequences], [0] * b, keep=valid)
        out = policy._run(x, mask, cache)
        first = policy.head(policy.norm(out[:, -1])).argmax(-1).tolist()
        for sequence, length, token in zip(sequences, cache.new_lengths, first, strict=True):
            sequence.length, sequence.bins = length, [token]
        self.running.extend(sequences)

    @torch.no_grad()
    def step(self) -> list[tuple[Any, list[int]]]:
        """One token for every running request; the finished ones leave (their blocks freed)."""
        policy, d = self.policy, self.policy.config.action_dim
        done = [s for s in self.running if len(s.bins) == d]  # a request can finish at admission only if d == 1
        active = [s for s in self.running if len(s.bins) < d]
        if active:
            device = self.pool.keys.device
            last = torch.tensor([[s.bins[-1]] for s in active], device=device)
            index = torch.tensor([len(s.bins) for s in active], device=device)
            cache = PagedSequences(self.pool, [s.table for s in active], [s.length for s in active])
            out = policy._run(policy.next_token_input(last, index), cache.key_valid[:, None, None, :], cache)
            chosen = policy.head(policy.norm(out[:, -1])).argmax(-1).tolist()
            for sequence, length, t in zip(active, cache.new_lengths, chosen, strict=True):
                sequence.length = length
                sequence.bins.append(t)
            done += [s for s in active if len(s.bins) == d]
        for sequence in done:
            self.pool.release(sequence.table)
        self.running = [s for s in self.running if len(s.bins) < d]
        return [(s.key, s.bins) for s in done]

    def decode_all(self, batch: dict[str, Any]) -> torch.Tensor:
        """Bins (B, action_dim) of a whole batch through admit and step (tests, benchmarks)."""
        items = [_row(batch, i) for i in range(len(batch["instruction"]))]
        results: dict[int, list[int]] = {}
        for start in range(0, len(items), self.max_batch):
            self.admit(list(enumerate(items))[start : start + self.max_batch])
            while self.running:
                results.update(self.step())
        return torch.tensor([results[i] for i in range(len(items))])


def _row(batch: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: v[i : i + 1] for k, v in batch.items()}


def _stack(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        k: torch.cat([item[k] for item in items])
        if torch.is_tensor(items[0][k])
        else sum((item[k] for item in items), [])
        for k in items[0]
    }
