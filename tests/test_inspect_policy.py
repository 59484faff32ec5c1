"""``eval/inspect_policy.py``: one command on a checkpoint writes, per episode, a video, a still
and a trajectory plot that are what they claim: the attention drawn is the decoder's real
attention (its weights times V give the module's own output), the maps drawn are
distributions, and the files have the frames and sizes the episode implies."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO_ROOT, TINY_MODEL
from vla.app.cli import hydra_entry
from vla.checkpoint import save_checkpoint
from vla.demo.frames import VIEW_SIZE
from vla.introspect import DecoderAttention, attention_output, keypoint_heatmaps, vision_attention
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer

STEPS = 3  # max_steps: a short look is enough to check the files
HOLD = 10  # frames the video holds the last one (vla/evaluation/overlays.py episode_frames)


def tiny_policy(decoding: str, **extra) -> VLAPolicy:
    """The tests' tiny model with a keypoint reader (and its abstain cell), untrained."""
    torch.manual_seed(0)
    config = {**TINY_MODEL, "keypoints": 2, "scope_check": True, "decoding": decoding, **extra}
    return VLAPolicy(PolicyConfig.from_dict(config)).eval()


def observation_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8, generator=generator)
    return {"image": image, "proprio": torch.randn(1, 9, generator=generator), "instruction": ["touch the red cube"]}


@pytest.mark.parametrize(
    "decoding, use_cache", [("autoregressive", True), ("autoregressive", False), ("parallel", True)]
)
def test_the_recomputed_attention_is_the_decoders_own(decoding, use_cache):
    policy = tiny_policy(decoding)
    with DecoderAttention(policy, keep_values=True) as recorder:
        policy.decode(observation_batch(), use_cache=use_cache)
    assert recorder.calls
    for weights, values, output in recorder.calls:  # softmax(QK^T / sqrt(d) + mask) V, projected = SDPA's
        torch.testing.assert_close(attention_output(policy.blocks[-1].attn, weights, values), output)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    rows = recorder.action_rows()
    assert rows.shape[2] == policy.config.action_dim
    maps = vision_attention(policy, rows)
    shown = maps["patches"].sum((-1, -2)) + maps["keypoints"].sum(-1)
    torch.testing.assert_close(shown, torch.ones(1))
    assert maps["grid"] == 4  # 32 px / 8 px patches
    torch.testing.assert_close(sum(maps["shares"].values()), torch.ones(1))  # every token kind, every key once
    heatmaps = keypoint_heatmaps(policy)
    assert heatmaps.shape == (1, 2, 16, 16)  # the reader's half-resolution map
    torch.testing.assert_close(heatmaps.sum((-1, -2)), torch.ones(1, 2))


@pytest.mark.parametrize("extra", [{"action_head": "flow", "chunk": 2}, {"fusion": "film", "word_tokens": False}])
def test_a_flow_or_film_policy_shows_its_real_attention_too(extra):
    """The flow head's rows are its chunk tokens at the last integration step; FiLM's blocks
    attend over the modulated features the hook sees."""
    policy = tiny_policy("parallel", **extra)
    with DecoderAttention(policy, keep_values=True) as recorder:
        policy.decode(observation_batch())
    for weights, values, output in recorder.calls:
        torch.testing.assert_close(attention_output(policy.blocks[-1].attn, weights, values), output)
    rows = recorder.action_rows()
    assert rows.shape[2] == policy.decoded_tokens
    maps = vision_attention(policy, rows)
    torch.testing.assert_close(maps["patches"].sum((-1, -2)) + maps["keypoints"].sum(-1), torch.ones(1))
    torch.testing.assert_close(sum(maps["shares"].values()), torch.ones(1))


def test_cache_and_no_cache_decoding_record_the_same_rows():
    policy = tiny_policy("autoregressive")
    rows = []
    for use_cache in (True, False):
        with DecoderAttention(policy) as recorder:
            policy.decode(observation_batch(), use_cache=use_cache)
        rows.append(recorder.action_rows())
    torch.testing.assert_close(rows[0], rows[1])


def test_one_command_writes_a_video_a_still_and_a_trajectory_plot(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_policy("autoregressive"), ActionTokenizer(256))
    out = tmp_path / "inspect"
    command = [
        sys.executable,
        "eval/inspect_policy.py",
        f"checkpoint={checkpoint}",
        "task=reach",
        "seed=7",
        "episodes=1",
        f"max_steps={STEPS}",
        "stills=4",
        "progress=false",
        f"out_dir={out}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = json.loads((out / "inspect.json").read_text())
    assert summary["seed"] == 7 and summary["steps"] == STEPS and summary["task"] == "reach"
    assert summary["expert_steps"] >= 1 and summary["gap_mean_cm"] >= 0

    frames = imageio.mimread(out / "reach_seed7.mp4")
    assert len(frames) == STEPS + 1 + HOLD  # every observation, the last one held
    height, width = frames[0].shape[:2]
    assert width == 3 * VIEW_SIZE and height > VIEW_SIZE  # three panels, the text band below

    still = Image.open(out / "reach_seed7_still.png")
    assert still.width == 4 * VIEW_SIZE and still.height > 3 * VIEW_SIZE  # 4 steps, three panels each
    plot = Image.open(out / "reach_seed7_path.png")
    assert plot.width > 400 and plot.height > 300

    maps = np.load(out / "reach_seed7_maps.npz")
    assert maps["heatmaps"].shape == (STEPS + 1, 2, 16, 16)
    np.testing.assert_allclose(maps["heatmaps"].sum((-1, -2)), 1, atol=1e-5)  # each a distribution
    shown = maps["patch_attention"].sum((-1, -2)) + maps["keypoint_attention"].sum(-1)
    np.testing.assert_allclose(shown, 1, atol=1e-5)  # the drawn attention: a distribution over the image's tokens
    assert (maps["tokens"] >= 0).all() and (maps["tokens"] < 256).all() and maps["tokens"].shape == (STEPS + 1, 7)


def test_a_bad_value_is_one_line_naming_it_and_what_is_allowed(tmp_path):
    from eval.inspect_policy import check_config

    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_policy("parallel"), ActionTokenizer(256))
    for override, expected in (
        ("task=fly", "error: unknown task 'fly'; valid values are: reach, push"),
        ("video=avi", "error: unknown video 'avi'; valid values are: mp4, gif"),
        ("stills=50", "error: stills=50: allowed are 1..12"),
        ("layer=-1", "error: layer=-1: give a decoder block's index"),
        ("layer=abc", "error: layer=abc: give a decoder block's index"),
    ):
        with pytest.raises(SystemExit) as stop:
            hydra_entry(
                "inspect", lambda cfg: pytest.fail("the job ran"), check_config, [f"checkpoint={checkpoint}", override]
            )
        assert str(stop.value.code).startswith(expected), stop.value.code


def test_a_layer_the_decoder_does_not_have_is_named():
    with pytest.raises(ValueError, match="layer=3: this policy's decoder has 1 layers, allowed are 0..0"):
        DecoderAttention(tiny_policy("parallel"), layer=3)


def test_path_gaps_tell_timing_from_shape():
    from vla.evaluation.inspection import path_gaps

    expert = np.stack([np.linspace(0, 0.1, 11), np.zeros(11), np.zeros(11)], 1)
    same = path_gaps(expert, expert)
    assert same["gap_mean_cm"] == 0 and same["off_path_mean_cm"] == 0
    late = path_gaps(np.concatenate([expert[:1], expert]), expert)  # one step behind, the same road
    assert late["off_path_mean_cm"] == 0 and late["gap_max_cm"] == pytest.approx(1.0)
    beside = path_gaps(expert + [0, 0.02, 0], expert)  # 2 cm to the side all the way
    assert beside["gap_mean_cm"] == pytest.approx(2.0) and beside["off_path_mean_cm"] == pytest.approx(2.0)
