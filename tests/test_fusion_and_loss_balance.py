"""FiLM conditioning (model.fusion=film) and learned loss weights (model.loss_weighting=uncertainty)."""

from __future__ import annotations

import pytest
import torch

from tests.test_policy import INSTRUCTIONS, make_policy, random_batch
from vla.policy import PolicyConfig


def same_scene_batch() -> dict:
    """Four instructions over one image and proprio, each with its own action: only the words tell them apart."""
    batch = random_batch(4, seed=5)
    batch["image"] = batch["image"][:1].expand(4, -1, -1, -1).clone()
    batch["proprio"] = batch["proprio"][:1].expand(4, -1).clone()
    batch["instruction"] = list(INSTRUCTIONS)
    return batch


def test_film_puts_no_text_token_in_the_sequence_and_starts_as_the_identity():
    policy = make_policy(fusion="film", word_tokens=False)
    batch = same_scene_batch()
    assert dict(policy.token_layout(batch))["text"] == 0
    first = policy.decode(batch)  # zero FiLM weights at the start: the words change nothing yet
    assert all(torch.equal(first[0], row) for row in first)


def test_film_alone_carries_the_instruction_to_the_actions():
    policy = make_policy(fusion="film", word_tokens=False)
    batch = same_scene_batch()
    policy.train()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        loss = policy.loss(batch, augment=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    accuracy = (policy.decode(batch) == batch["action_bins"]).float().mean().item()
    assert accuracy > 0.9, f"{accuracy:.2f} of the tokens right"  # one shared answer gets ~0.25


def test_uncertainty_weighting_learns_each_loss_the_weight_one_over_its_size():
    """exp(-s) * L + s is smallest at exp(-s) = 1 / L: with the network held still, the learned
    weights settle there, so the larger action loss (~5.5 nats) gets the smaller weight."""
    policy = make_policy(keypoints=0, aux_weight=1.0, loss_weighting="uncertainty", keypoint_sentence=False)
    batch = random_batch(8, seed=2)
    batch["key_positions"] = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)) * 0.02
    optimizer = torch.optim.Adam([policy.loss_log_vars], lr=0.05)
    for _ in range(300):
        out = policy.loss(batch, augment=False)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    weights = torch.stack([out["weight_action"], out["weight_aux"]])
    sizes = torch.stack([out["action_loss"], out["aux_loss"]]).detach()
    assert torch.allclose(out["loss"].detach(), (weights * sizes - weights.log()).sum(), atol=1e-4)
    assert torch.allclose(weights * sizes, torch.ones(2), rtol=0.05), (weights, sizes)
    assert weights[0] < weights[1] and sizes[0] > sizes[1]


def test_film_and_learned_weights_refuse_what_they_cannot_be():
    from vla.fast_inference import StaticDecoder

    with pytest.raises(ValueError, match="model.fusion=film"):
        StaticDecoder(make_policy(fusion="film", word_tokens=False), 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs word_tokens=false"):
        PolicyConfig.from_dict({"fusion": "film", "word_tokens": True, "text_encoder": "scratch"})
    with pytest.raises(ValueError, match="valid values are: tokens, film"):
        PolicyConfig.from_dict({"fusion": "concat", "text_encoder": "scratch"})
    with pytest.raises(ValueError, match="set aux_weight > 0"):
        PolicyConfig.from_dict({"loss_weighting": "uncertainty", "text_encoder": "scratch"})
    with pytest.raises(ValueError, match="valid values are: fixed, uncertainty"):
        PolicyConfig.from_dict({"loss_weighting": "gradnorm", "aux_weight": 1.0, "text_encoder": "scratch"})
