"""Cheaper fine-tuning of the ViT (V5): frozen blocks (model.vision_frozen_layers) and LoRA
adapters through peft (model.vision_lora_rank)."""

from __future__ import annotations

import pytest
import torch

from tests.test_policy import make_policy, random_batch
from vla.policy import PolicyConfig


def test_lora_starts_from_the_plain_vits_output_and_trains_only_its_adapters():
    plain, adapted = make_policy(vision_layers=2), make_policy(vision_layers=2, vision_lora_rank=2)
    batch = random_batch(4)
    with torch.no_grad():  # same seed, B zero-initialised: the adapters change nothing yet
        assert torch.allclose(plain.vision(batch["image"]), adapted.vision(batch["image"]), atol=1e-6)
    trainable = [n for n, p in adapted.vision.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 4 * 2  # A and B on 4 linear layers of each of the 2 blocks


@pytest.mark.parametrize("settings", [{"vision_frozen_layers": 1}, {"vision_lora_rank": 2}], ids=["frozen", "lora"])
def test_an_adapted_vit_trains_the_policy_and_saves_and_loads(settings, tmp_path):
    policy = make_policy(vision_layers=2, **settings).train()
    frozen = {n: p.detach().clone() for n, p in policy.vision.named_parameters() if not p.requires_grad}
    assert "patch.weight" in frozen
    if "vision_frozen_layers" in settings:  # the first block frozen, the second trains
        assert "blocks.0.attn.qkv.weight" in frozen and "blocks.1.attn.qkv.weight" not in frozen
    else:  # every weight of the ViT frozen, its adapters train
        assert "blocks.1.attn.qkv.base_layer.weight" in frozen
    batch = random_batch(8, seed=3)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(40):
        loss = policy.loss(batch, augment=False)["loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.8 * first, (first, loss.item())
    assert all(torch.equal(p, frozen[n]) for n, p in policy.vision.named_parameters() if n in frozen)
    torch.save(policy.state_dict(), tmp_path / "w.pt")
    again = make_policy(vision_layers=2, **settings)
    again.load_state_dict(torch.load(tmp_path / "w.pt"))
    policy.eval()
    assert torch.equal(policy.decode(batch), again.decode(batch))


def test_vision_adaptation_settings_are_checked():
    base = {"text_encoder": "scratch", "vision_layers": 2}
    with pytest.raises(ValueError, match=r"vision_frozen_layers must be in \[0, vision_layers=2\]"):
        PolicyConfig.from_dict({**base, "vision_frozen_layers": 3})
    with pytest.raises(ValueError, match="set vision_frozen_layers=0 with it"):
        PolicyConfig.from_dict({**base, "vision_frozen_layers": 1, "vision_lora_rank": 4})
    with pytest.raises(ValueError, match="need vision_tokens=true"):
        PolicyConfig.from_dict({**base, "vision_lora_rank": 4, "vision_tokens": False, "keypoints": 2})
