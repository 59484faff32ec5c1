"""Speculative decoding of the action tokens: a small draft policy guesses, the large target checks (L5).

A small draft policy proposes the 7 action tokens (autoregressively with its KV cache, or in
one pass if it decodes in parallel); the target then runs ONE teacher-forced pass over its
prefix and the 7 action positions fed the draft's tokens, which gives the target's greedy
token at every position as if those tokens had been decoded before it. The longest prefix
where the draft's tokens equal the target's argmax is accepted, the target's own token is
taken at the first mismatch, and from there the draft proposes again and the target checks
again (against its cached prefix), until every row holds 7 tokens. It is exact: the target's
logits at position i depend only on the prefix and the tokens before i (the action positions
are causal), so when those tokens are the target's own greedy ones the argmax at i is the
token its greedy autoregressive decode picks there; an accepted token equals that argmax and
the token at a mismatch is that argmax, so by induction every committed token is the target's
own (up to floating-point summation order, as the KV cache against recomputation already is),
whatever the draft proposes. A good draft only saves target passes: 7 tokens cost between 1
(all accepted) and 7 target passes (none), against the 7 passes (prefill + 6 steps) of plain
autoregressive decoding.

``SpeculativeDecoder(target, draft).decode(batch) -> (bins, stats)``: greedy only; batched,
with acceptance per row (a round feeds every row at once; rows already done are fed their
committed tokens, whose argmax stays the same, and rows differ only in where they accept from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vla.policy import VLAPolicy
from vla.tokenizer import ActionTokenizer
from vla.transformer import KVCache

# What draft and target must agree on for the draft's tokens to mean the target's tokens.
VOCABULARY_FIELDS = ("bins", "action_dim")
TOKENIZER_FIELDS = ("bins", "action_dim", "mode", "low", "high", "token_offset")


@dataclass
class SpeculativeStats:
    """What one ``decode`` call did; the counts run over all rows of the batch."""

    proposed: int  # draft tokens sent to the target for checking (every round, every row not done)
    accepted: int  # of those, accepted (in the leading run equal to the target's argmax)
    target_passes: int  # target forward passes (the first one over the prefix too)
    draft_passes: int  # draft forward passes (prefill and one-token steps; 1 for a parallel draft)
    row_accepted: torch.Tensor  # (B,) accepted draft tokens per row
    row_passes: torch.Tensor  # (B,) target passes each row took part in until its 7 tokens were in

    @property
    def acceptance(self) -> float:
        """Accepted draft tokens over proposed ones (1.0: the draft guessed every token)."""
        return self.accepted / self.proposed if self.proposed else 1.0


def vocabulary_mismatch(
    target: VLAPolicy,
    draft: VLAPolicy,
    target_tokenizer: ActionTokenizer | None = None,
    draft_tokenizer: ActionTokenizer | None = None,
) -> str | None:
    """What differs between the two policies' action vocabularies (and tokenizers, if given), or None."""
    diffs = [
        f"{name} {getattr(draft.config, name)} (draft) vs {getattr(target.config, name)} (target)"
        for name in VOCABULARY_FIELDS
        if getattr(draft.config, name) != getattr(target.config, name)
    ]
    if not diffs and target_tokenizer is not None and draft_tokenizer is not None:
        mine, theirs = draft_tokenizer.state_dict(), target_tokenizer.state_dict()
        diffs = [
            f"tokenizer {k} {mine[k]} (draft) vs {theirs[k]} (target)" for k in TOKENIZER_FIELDS if mine[k] != theirs[k]
        ]
    return "; ".join(diffs) or None


class SpeculativeDecoder:
    """Greedy decoding of ``target``'s action tokens with ``draft``'s guesses (module docstring)."""

    def __init__(
        self,
        target: VLAPolicy,
        draft: VLAPolicy,
        target_tokenizer: ActionTokenizer | None = None,
        draft_tokenizer: ActionTokenizer | None = None,
    ):
        target.require_plain_blocks("speculative decoding")
        draft.require_plain_blocks("speculative decoding")
        why = vocabulary_mismatch(target, draft, target_tokenizer, draft_tokenizer)
        if why is not None:
            raise ValueError(f"the draft must share the target's action tokenizer, but {why}")
        if target.config.decoding != "autoregressive":
            raise ValueError(
                "speculative decoding checks an autoregressive target; this one decodes in parallel "
                "(its 7 tokens come out of one pass already): build it with decoding='autoregressive'"
            )
        self.target, self.draft = target.eval(), draft.eval()

    @torch.no_grad()
    def decode(
        self, batch: dict[str, Any], draft_batch: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, SpeculativeStats]:
        """Action bins (B, action_dim), equal to ``target.decode(batch)`` (greedy), and what it took.
        ``draft_batch``: the same observations as the draft reads them (its own cached text
        states, say); None: ``batch``."""
        target, d = self.target, self.target.config.action_dim
        drafter = _Drafter(self.draft, batch if draft_batch is None else draft_batch, d)
        prefix, key_valid = target.prefix(batch)
        b, p, _ = prefix.shape
        device = prefix.device
        tokens = torch.zeros(b, d, dtype=torch.long, device=device)  # the committed tokens
        committed = torch.zeros(b, dtype=torch.long, device=device)  # how many per row
        positions = torch.arange(d, device=device)
        proposed = torch.zeros(b, dtype=torch.long, device=device)
        accepted = torch.zeros(b, dtype=torch.long, device=device)
        passes = torch.zeros(b, dtype=torch.long, device=device)

        # Round 1: prefix, start token and the 6 drafted inputs in one pass, filling a cache.
        proposal = drafter.propose(tokens, committed, 0)
        x, valid, _ = target.prefill_inputs(prefix, key_valid)
        # next_token_input indexes action_position with its index: a slice gives many positions at once
        x = torch.cat([x, target.next_token_input(proposal[:, : d - 1], slice(1, d))], 1)
        valid = torch.cat([valid, torch.ones(b, d - 1, dtype=torch.bool, device=device)], 1)  # (B, P + d)
        cache = KVCache(len(target.blocks))
        out = target._run(x, target._mask(valid, p), cache)[:, p:]
        rounds, start = 1, 0
        while True:
            greedy = target.head(target.norm(out)).argmax(-1)  # (B, d - start): positions start..d-1
            argmax = torch.cat([tokens[:, :start], greedy], 1)
            fresh = positions >= committed[:, None]  # positions this round decides
            mismatch = (proposal != argmax) & fresh
            first = torch.where(mismatch.any(1), mismatch.int().argmax(1), torch.full_like(committed, d))
            active = committed < d
            proposed += (d - committed) * active
            accepted += (first - committed).clamp_min(0) * active
            passes += active
            done = (first + 1).clamp_max(d)  # accepted run, and the target's token at the mismatch
            tokens = torch.where(fresh & (positions < done[:, None]), argmax, tokens)
            committed = torch.maximum(committed, done)
            start = int(committed.min())
            if start == d:
                break
            # Next round: keep the cache of positions every row has committed inputs for
            # (0..start-1), draft again from there, check positions start..d-1.
            for layer in range(len(cache.keys)):
                cache.keys[layer] = cache.keys[layer][:, :, : p + start]
                cache.values[layer] = cache.values[layer][:, :, : p + start]
            proposal = drafter.propose(tokens, committed, start)
            x = target.next_token_input(proposal[:, start - 1 : d - 1], slice(start, d))
            out = target._run(x, target._mask(valid, p, query_start=p + start), cache)
            rounds += 1
        stats = SpeculativeStats(
            proposed=int(proposed.sum()),
            accepted=int(accepted.sum()),
            target_passes=rounds,
            draft_passes=drafter.passes,
            row_accepted=accepted,
            row_passes=passes,
        )
        return tokens, stats


class _Drafter:
    """The draft's greedy proposals, forced to the committed tokens where a row has them. An
    autoregressive draft keeps its KV cache across rounds and re-decodes from the first
    position some row has no committed input for; a parallel draft's tokens do not depend on
    the earlier ones, so its one pass serves every round."""

    def __init__(self, policy: VLAPolicy, batch: dict[str, Any], tokens: int):
        self.policy, self.batch, self.tokens = policy, batch, tokens
        self.passes = 0
        self.cache: KVCache | None = None
        self.parallel: torch.Tensor | None = None  # a parallel draft's tokens
        self.prefix_valid: torch.Tensor | None = None  # (B, P + 1): the prefix and start token
        self.length = 0  # the draft's prefix length P

    def propose(self, tokens: torch.Tensor, committed: torch.Tensor, start: int) -> torch.Tensor:
        """(B, d) proposals: ``tokens`` where committed, the draft's greedy tokens after.
        Positions before ``start`` are committed in every row (``start`` 0: the first call)."""
        policy, d = self.policy, self.tokens
        forced = torch.arange(d, device=tokens.device) < committed[:, None]
        if policy.config.decoding == "parallel":
            if self.parallel is None:
                self.parallel = policy.decode(self.batch)
                self.passes += 1
            return torch.where(forced, tokens, self.parallel)
        proposal = tokens.clone()
        if start == 0:  # prefill: the prefix and start token give the state at position 0
            self.cache = KVCache(len(policy.blocks))
            prefix, key_valid = policy.prefix(self.batch)
            self.length = prefix.shape[1]
            x, self.prefix_valid, mask = policy.prefill_inputs(prefix, key_valid)
            out = policy._run(x, mask, self.cache)
        else:  # keep positions 0..start-1, feed position start its committed input
            for layer in range(len(self.cache.keys)):
                self.cache.keys[layer] = self.cache.keys[layer][:, :, : self.length + start]
                self.cache.values[layer] = self.cache.values[layer][:, :, : self.length + start]
            out = self._step(tokens[:, start - 1 : start], start)
        self.passes += 1
        for i in range(start, d):
            guess = policy.head(policy.norm(out[:, -1])).argmax(-1)
            proposal[:, i] = torch.where(forced[:, i], tokens[:, i], guess)
            if i + 1 < d:
                out = self._step(proposal[:, i : i + 1], i + 1)
                self.passes += 1
        return proposal

    def _step(self, previous: torch.Tensor, index: int) -> torch.Tensor:
        """One token at action position ``index`` against the cache (positions 0..index-1)."""
        policy, b = self.policy, len(previous)
        ones = torch.ones(b, index, dtype=torch.bool, device=self.prefix_valid.device)
        valid = torch.cat([self.prefix_valid, ones], 1)  # the prefix, positions 0..index
        return policy._run(policy.next_token_input(previous, index), valid[:, None, None, :], self.cache)
