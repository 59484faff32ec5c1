"""FSDP (ZeRO-3) of the large model on 2 gloo processes: each rank holds half the weights,
the losses are those of one process on the same global batch, and the gathered weights load
into a plain policy that decodes what the sharded one decodes (V19)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from vla.app.cli import compose_config
from vla.policy import PolicyConfig, VLAPolicy
from vla.sizes import kv_cache_bytes, parameter_counts, saved_activation_bytes
from vla.training.sharded_run import make_policy, rows, run, synthetic_batch, train_steps

STEPS, BATCH, SEED, LR = 3, 4, 0, 1e-3


def large_config() -> PolicyConfig:
    """``model=large`` as train/bc.py composes it, with the from-scratch text encoder (nothing
    to download)."""
    values = OmegaConf.to_container(compose_config("bc", ["model=large"]).model)
    return PolicyConfig.from_dict(values | {"text_encoder": "scratch"})


def test_fsdp_shards_the_weights_and_keeps_the_numbers(tmp_path):
    config = large_config()
    ranks = run(config, tmp_path, mode="fsdp", world=2, steps=STEPS, batch_size=BATCH, lr=LR, seed=SEED)

    # the same global batch in one process, from the same initial weights
    reference = make_policy(config, SEED)
    total_bytes = sum(p.numel() * p.element_size() for p in reference.parameters())
    batch = synthetic_batch(config, BATCH, SEED)
    losses, _, _ = train_steps(reference, batch, STEPS, LR, reduce=False)

    for result in ranks:
        assert result["losses"] == ranks[0]["losses"]  # the all-reduced global loss
        held = result["held"]["parameters"]
        assert abs(held / total_bytes - 0.5) < 0.01, (held, total_bytes)  # sharded, not replicated
        assert result["held"]["optimizer"] < 0.51 * 2 * total_bytes + 1024  # AdamW's two moments, halved
    assert torch.allclose(torch.tensor(ranks[0]["losses"]), torch.tensor(losses), rtol=1e-4), (ranks[0], losses)
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]  # it learns

    # the gathered weights are a whole, ordinary policy that decodes as the sharded one did
    plain = VLAPolicy(config)
    plain.load_state_dict(ranks[0]["state"])
    plain.eval()
    for rank, result in enumerate(ranks):
        local = rows(batch, rank * BATCH // 2, (rank + 1) * BATCH // 2)
        tokens, logits, _ = plain.decode(local, scores=True)
        assert torch.equal(tokens, result["tokens"])
        assert torch.allclose(logits, result["logits"], atol=1e-5)


def test_sizes_of_the_large_model():
    """The counts V19 quotes: per component, activations saved for backward, KV cache."""
    config = large_config()
    policy = VLAPolicy(config)
    counts = parameter_counts(policy)
    assert sum(counts.values()) == sum(p.numel() for p in policy.parameters())
    assert counts["decoder"] == 6 * 12 * 256 * 256 + 6 * (13 * 256)  # 12 w^2 weights + 13 w biases/norms per block
    assert saved_activation_bytes(policy, synthetic_batch(config, 2)) > 0
    assert kv_cache_bytes(layers=6, tokens=75, width=256) == 6 * 2 * 75 * 256 * 4
