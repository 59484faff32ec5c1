"""Paraphrase tuning of MiniLM (vla/language_tuning.py): what it trains on, what it leaves behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.instructions import make_instruction
from tests.conftest import TINY_MODEL
from vla.language import MiniLMEncoder, sentence_embedding
from vla.language_tuning import SPEC_KEYS, paraphrase_loss, random_spec, tune_encoder
from vla.policy import PolicyConfig, VLAPolicy


def test_random_specs_cover_every_task_and_word_on_every_training_split():
    rng = np.random.default_rng(0)
    specs = [random_spec(rng) for _ in range(300)]
    assert {s["task"] for s in specs} == {"reach", "push", "lift", "pick_place", "stack"}
    for spec in specs:
        assert set(spec) <= set(SPEC_KEYS)
        if spec["task"] == "stack":  # two different objects
            assert (spec["base_colour"], spec["base_shape"]) != (spec["target_colour"], spec["target_shape"])
        for split in ("train", "augmented_large"):
            assert make_instruction(spec, split, rng)


def test_the_paraphrase_loss_is_lowest_when_each_wording_meets_its_own_pair():
    torch.manual_seed(0)
    first = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    none_equal = torch.zeros(6, 6, dtype=torch.bool)
    aligned = paraphrase_loss(first, first, none_equal, temperature=0.1)
    shuffled = paraphrase_loss(first, first.roll(1, 0), none_equal, temperature=0.1)
    assert aligned < shuffled
    # two equal specs (0 and 1): neither is a negative of the other, so swapping them costs nothing
    equal = none_equal.clone()
    equal[0, 1] = equal[1, 0] = True
    swapped = first[[1, 0, 2, 3, 4, 5]]
    masked = paraphrase_loss(first, swapped, equal, temperature=0.1)
    assert torch.isfinite(masked) and masked < paraphrase_loss(first, swapped, none_equal, temperature=0.1)


def same_and_other_similarity(encoder: MiniLMEncoder, seed: int = 1, count: int = 24) -> float:
    """Mean cosine between two wordings of one spec minus that between wordings of two specs."""
    rng = np.random.default_rng(seed)
    specs = [random_spec(rng) for _ in range(count)]
    wordings = [make_instruction(s, "augmented_large", rng) for s in specs * 2]
    with torch.no_grad():
        states, mask = encoder(wordings, torch.device("cpu"))
        embeddings = sentence_embedding(states, mask)
    similarity = embeddings[:count] @ embeddings[count:].T
    return (similarity.diag().mean() - similarity[~torch.eye(count, dtype=torch.bool)].mean()).item()


def test_tuning_pulls_wordings_of_one_spec_together_and_leaves_minilm_frozen_and_uncached():
    encoder = MiniLMEncoder()
    before = same_and_other_similarity(encoder)
    assert encoder._row  # the measurement filled the cache
    original = encoder.model.embeddings.word_embeddings.weight.clone()
    result = tune_encoder(encoder, "augmented_large", steps=12, batch_size=16, lr=1e-4, progress=False)
    assert result["last_loss"] < result["first_loss"]
    assert not torch.equal(encoder.model.embeddings.word_embeddings.weight, original)
    assert not any(p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training
    assert not encoder._row and len(encoder._table) == 0  # cached states of the old weights are gone
    assert same_and_other_similarity(encoder) > before


def test_tuning_refuses_the_heldout_split_and_a_batch_with_no_negatives():
    encoder = MiniLMEncoder()
    with pytest.raises(ValueError, match="unknown instruction split to tune on 'heldout'"):
        tune_encoder(encoder, "heldout", steps=1)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        tune_encoder(encoder, "train", steps=1, batch_size=1)


def test_a_tuned_encoder_is_saved_with_the_policy_and_a_frozen_one_is_not(tmp_path):
    tuned = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "text_encoder": "minilm_tuned"}))
    frozen = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "text_encoder": "minilm"}))
    assert any(k.startswith("text.model.") for k in tuned.trainable_state_dict())
    assert not any(k.startswith("text.model.") for k in frozen.trainable_state_dict())
    with torch.no_grad():
        tuned.text.model.embeddings.word_embeddings.weight.add_(1.0)
    reloaded = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "text_encoder": "minilm_tuned"}))
    reloaded.load_trainable_state_dict(tuned.trainable_state_dict())
    assert torch.equal(
        reloaded.text.model.embeddings.word_embeddings.weight, tuned.text.model.embeddings.word_embeddings.weight
    )


def test_an_untuned_reader_reads_the_package_minilm_while_the_decoder_reads_the_tuned_one():
    config = {**TINY_MODEL, "text_encoder": "minilm_tuned", "keypoints": 2, "keypoint_reads_untuned": True}
    policy = VLAPolicy(PolicyConfig.from_dict(config))
    with torch.no_grad():
        policy.text.model.embeddings.word_embeddings.weight.add_(1.0)  # as tuning would change it
    instructions, device = ["lift the red cube", "touch the blue cylinder"], torch.device("cpu")
    tuned, _ = policy.text(instructions, device)
    read, _ = policy.reader_text_states(instructions, device)
    package, _ = MiniLMEncoder()(instructions, device)
    assert torch.allclose(read, package) and not torch.allclose(read, tuned)
    state = policy.trainable_state_dict()  # the tuned encoder is saved, the package's copy is not
    assert any(k.startswith("text.model.") for k in state) and not any(k.startswith("reader_text.") for k in state)
    VLAPolicy(PolicyConfig.from_dict(config)).load_trainable_state_dict(state)


def test_an_untuned_reader_needs_a_tuned_encoder_and_keypoints():
    with pytest.raises(ValueError, match="needs text_encoder=minilm_tuned and keypoints=2, got minilm and 2"):
        PolicyConfig.from_dict({**TINY_MODEL, "text_encoder": "minilm", "keypoints": 2, "keypoint_reads_untuned": True})


def test_the_noun_probe_reads_each_heldout_noun_with_each_feature():
    from eval.noun_probe import FEATURES, run

    result = run(tune_steps=0, seeds=1, count=60)
    assert set(result["features"]) == set(FEATURES)
    for rates in result["features"].values():
        assert set(rates) == {"block", "can"} and all(0.0 <= r <= 1.0 for r in rates.values())
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        run(tune_steps=0, seeds=0, count=60)
