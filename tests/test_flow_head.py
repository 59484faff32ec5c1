"""The flow-matching action head (model.action_head=flow): it learns action chunks, its cached
inference computes what the full sequence computes, and token-only paths refuse it by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_policy import make_policy, random_batch
from vla.checkpoint import save_checkpoint
from vla.flow import bins_to_unit, unit_to_bins
from vla.inference import load_policy
from vla.policy import PolicyConfig
from vla.tokenizer import ActionTokenizer
from vla.transformer import KVCache


def chunk_batch(n: int, chunk: int, seed: int = 0) -> dict:
    batch = random_batch(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    batch["action_bins"] = torch.randint(0, 256, (n, chunk * 7), generator=g)
    return batch


def test_bins_and_unit_values_round_trip():
    bins = torch.arange(256)
    assert torch.equal(unit_to_bins(bins_to_unit(bins, 256), 256), bins)
    assert unit_to_bins(torch.tensor([-5.0, 5.0]), 256).tolist() == [0, 255]  # clipped into range


def test_the_flow_head_learns_each_instructions_action_chunk():
    """Trained on 4 scenes, each with its own 2-action chunk, the integrated chunk lands on the
    labelled bins: the velocity field carries noise to the demo's actions."""
    policy = make_policy(action_head="flow", chunk=2, flow_steps=10)
    batch = chunk_batch(4, chunk=2, seed=3)
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(400):
        loss = policy.loss({**batch}, augment=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.25 * np.mean(losses[:20])
    policy.eval()
    first = policy.decode(batch)  # the first action of the chunk, in bins
    assert first.shape == (4, 7)
    error = (first - batch["action_bins"][:, :7]).abs().float().mean().item()
    assert error < 10, f"mean error {error:.1f} bins of 256"  # a random guess is ~85 bins off


def test_cached_flow_steps_compute_what_the_whole_sequence_computes():
    """Inference encodes the prefix once and runs only the action tokens per Euler step: the
    velocity must equal the training-time pass over [prefix | actions]."""
    policy = make_policy(action_head="flow", chunk=3)
    batch = chunk_batch(3, chunk=3)
    prefix, key_valid = policy.prefix(batch)
    noisy, t = torch.randn(3, 3, 7), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        whole = policy._flow_states(prefix, key_valid, noisy, t)
        cache = KVCache(len(policy.blocks))
        policy._run(prefix, key_valid[:, None, None, :], cache, read_from=prefix.shape[1] - 1)
        valid = torch.cat([key_valid, torch.ones(3, 3, dtype=torch.bool)], 1)
        tokens = policy._flow_inputs(noisy, t, prefix.dtype)
        cached = policy.norm(policy._run(tokens, valid[:, None, None, :], cache.fork()))
    assert torch.allclose(whole, cached, atol=1e-5)
    assert cache.keys[0].shape[2] == prefix.shape[1]  # the fork's appends left the prefix cache as it was


def test_the_chunk_is_denoised_jointly():
    """Unlike causal action tokens, the first action's velocity depends on the later actions' inputs."""
    policy = make_policy(action_head="flow", chunk=2)
    batch = chunk_batch(2, chunk=2)
    prefix, key_valid = policy.prefix(batch)
    noisy, t = torch.zeros(2, 2, 7), torch.full((2,), 0.5)
    changed = noisy.clone()
    changed[:, 1] = 1.0
    with torch.no_grad():
        before = policy._flow_states(prefix, key_valid, noisy, t)[:, 0]
        after = policy._flow_states(prefix, key_valid, changed, t)[:, 0]
    assert not torch.allclose(before, after)


def test_greedy_flow_decoding_is_deterministic_and_temperature_samples(tmp_path):
    policy = make_policy(action_head="flow", chunk=2)
    batch = chunk_batch(2, chunk=2)
    assert torch.equal(policy.decode(batch), policy.decode(batch))
    g = torch.Generator().manual_seed(0)
    samples = {tuple(policy.decode(batch, temperature=1.0, generator=g)[0].tolist()) for _ in range(5)}
    assert len(samples) > 1
    runner = load_policy(save_checkpoint(tmp_path / "flow.pt", policy, ActionTokenizer(256)))
    assert runner.policy.config.action_head == "flow"
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "proprio": np.zeros(8, np.float32), "instruction": "lift it"}
    assert runner.act(obs).shape == (7,)


def test_token_only_paths_refuse_a_flow_policy_by_name():
    from vla.fast_inference import StaticDecoder

    policy = make_policy(action_head="flow")
    with pytest.raises(ValueError, match="model.action_head=flow"):
        StaticDecoder(policy, 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="model.action_head=flow"):
        policy.decode(random_batch(1), scores=True)
    with pytest.raises(ValueError, match="model.action_head=flow"):
        policy.start_state(random_batch(1))


@pytest.mark.parametrize(
    "key, value, message",
    [("action_head", "diffusion", "valid values are: tokens, flow"), ("flow_steps", 0, "flow_steps must be")],
)
def test_bad_flow_settings_name_what_is_allowed(key, value, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig.from_dict({key: value, "text_encoder": "scratch"})
