"""Continuous batching over a paged KV cache decodes the tokens the plain KV cache decodes,
whenever requests join, and holds only the tokens sequences really have."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_MODEL
from vla.paged_kv import ContinuousDecoder, PoolExhausted
from vla.policy import PolicyConfig, VLAPolicy

INSTRUCTIONS = [
    "touch the red cube",
    "pick up the blue cylinder and put it in the orange zone right now please",
    "lift the green cube",
    "stack the yellow cube on the red cylinder",
    "push the green cylinder into the purple zone",
    "reach",
]


def make_policy(**overrides) -> VLAPolicy:
    torch.manual_seed(0)
    config = {**TINY_MODEL, "proprio_dim": 8, "decoding": "autoregressive", "layers": 2, **overrides}
    return VLAPolicy(PolicyConfig.from_dict(config)).eval()


def batch(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
        "proprio": torch.randn(n, 8, generator=g),
        "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)],
    }


@pytest.mark.parametrize("word_tokens", [False, True])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_paged_decoding_gives_the_plain_kv_cache_tokens(word_tokens, block_size):
    overrides = {"word_tokens": True, "sentence_token": True} if word_tokens else {}
    policy = make_policy(**overrides)
    # scale the action head so greedy choices are far apart (random weights give near-ties)
    policy.head.weight.data *= 50
    data = batch(6, seed=block_size)
    expected = policy.decode(data, use_cache=True)
    decoder = ContinuousDecoder(policy, block_size=block_size, max_batch=4)
    assert torch.equal(decoder.decode_all(data), expected)
    assert decoder.pool.used == 0 and not decoder.running  # every block back in the pool


def test_requests_joining_mid_decode_get_the_same_tokens():
    policy = make_policy(word_tokens=True)
    policy.head.weight.data *= 50
    data = batch(6, seed=3)
    expected = policy.decode(data, use_cache=True)
    decoder = ContinuousDecoder(policy, block_size=4, max_batch=6)
    rows = [{k: v[i : i + 1] for k, v in data.items()} for i in range(6)]
    done: dict[int, list[int]] = {}
    decoder.admit([(0, rows[0]), (1, rows[1])])
    done.update(decoder.step())
    done.update(decoder.step())
    decoder.admit([(i, rows[i]) for i in (2, 3, 4)])  # join at a token boundary of the others
    done.update(decoder.step())
    decoder.admit([(5, rows[5])])
    while decoder.running:
        done.update(decoder.step())
    assert torch.equal(torch.tensor([done[i] for i in range(6)]), expected)


def test_the_paged_cache_holds_only_real_tokens():
    policy = make_policy(word_tokens=True)
    data = batch(6)
    decoder = ContinuousDecoder(policy, block_size=4, max_batch=6)
    decoder.decode_all(data)
    _, mask = policy.prefix(data)
    # the prefix without padding, the start token and the 6 fed-back action tokens
    real = (mask.sum(1) + policy.config.action_dim).tolist()
    assert decoder.pool.peak_used == sum(-(-n // 4) for n in real)
    reserved = 6 * decoder.blocks_for(decoder.longest_sequence(policy))
    assert decoder.pool.peak_used < reserved


def test_an_exhausted_pool_and_a_parallel_policy_are_clear_errors():
    policy = make_policy()
    decoder = ContinuousDecoder(policy, block_size=4, num_blocks=3, max_batch=8)
    with pytest.raises(PoolExhausted, match="KV blocks"):
        decoder.decode_all(batch(2))
    with pytest.raises(ValueError, match="needs decoding=autoregressive"):
        ContinuousDecoder(make_policy(decoding="parallel"))
