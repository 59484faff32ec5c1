"""Unknown nouns read as the world's things in view (vla/noun_reading.py, PolicyRunner)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the tasks)
from envs.vocabulary import OBJECT_COLOURS, OBJECT_SHAPES, ZONE_COLOURS, scene_nouns
from tests.conftest import TINY_MODEL
from vla.inference import PolicyRunner
from vla.noun_reading import NounReading
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer

WORLD = NounReading(scene_nouns())


def test_the_worlds_nouns_per_colour():
    assert scene_nouns() == {
        **{c: list(OBJECT_SHAPES) for c in OBJECT_COLOURS},
        **{c: ["zone"] for c in ZONE_COLOURS},
    }


def test_readings_replace_each_unknown_noun_by_its_colours_nouns():
    assert WORLD.readings("pick up the red block") == ["pick up the red cube", "pick up the red cylinder"]
    # a zone colour goes with one noun: one reading
    assert WORLD.readings("push the red cube to the white mat") == ["push the red cube to the white zone"]
    assert len(WORLD.readings("stack the blue can on the green brick")) == 4  # every combination
    assert WORLD.readings("the red block pick it up")[0] == "the red cube pick it up"  # word order kept
    assert WORLD.readings("put the green one in the purple area")[0] == "put the green cube in the purple zone"


def test_known_nouns_function_words_and_colourless_words_stay_as_typed():
    for text in (
        "touch the red cube",
        "push the blue cylinder to the orange zone",
        "touch the red small cube",  # the noun two words on is the world's
        "touch the red and blue cube",  # a function word after the colour
        "lift the block",  # no colour: nothing says which things it may be
        "",
    ):
        assert WORLD.readings(text) == [text] and WORLD.phrases(text) == []


def test_bad_scene_nouns_are_one_clear_error():
    with pytest.raises(ValueError, match="needs the world's nouns per colour"):
        NounReading({})
    with pytest.raises(ValueError, match=r"scene_nouns\['red'\] must be a non-empty list of single words, got \[\]"):
        NounReading({"red": []})
    with pytest.raises(ValueError, match="single words"):
        NounReading({"red": ["big cube"]})


def _runner(noun_reading: bool, scope_threshold: float | None = 0.5, encoder: str = "scratch") -> PolicyRunner:
    torch.manual_seed(0)
    config = {**TINY_MODEL, "keypoints": 2, "keypoint_channels": 8, "text_encoder": encoder}
    config |= {"noun_reading": noun_reading, "scene_nouns": scene_nouns()}
    return PolicyRunner(
        VLAPolicy(PolicyConfig.from_dict(config)), ActionTokenizer(bins=256), scope_threshold=scope_threshold
    )


def _scene(seed: int = 0) -> dict:
    env = gym.make("VLASandbox/Push-v0", image_size=32)
    obs, _ = env.reset(seed=seed)
    env.close()
    return obs


def test_act_reads_unknown_nouns_as_the_reading_whose_things_are_in_view_and_keeps_the_scope_verdict():
    """On a rendered scene: the reading act decodes is the one the keypoint reader finds
    most in view (fewest keypoints answering "nothing named" above even odds), ties broken
    by the encoder's word similarity; the out-of-scope verdict is the typed wording's."""
    obs = _scene()
    typed = obs["instruction"].replace("cube", "block").replace("cylinder", "can").replace("zone", "mat")
    reading, plain = _runner(True), _runner(False)
    _, info = reading.act_with_info({**obs, "instruction": typed})
    _, as_typed = plain.act_with_info({**obs, "instruction": typed})
    assert as_typed["read_as"] == typed  # off: read as typed
    assert (info["stopped"], info["nothing_named"]) == (as_typed["stopped"], as_typed["nothing_named"])
    candidates = WORLD.readings(typed)
    assert info["read_as"] in candidates and "zone" in info["read_as"] and "mat" not in info["read_as"]
    policy = reading.policy
    image = torch.as_tensor(obs["image"])[None].expand(len(candidates), -1, -1, -1)
    with torch.no_grad():
        states, mask = policy.text(candidates, torch.device("cpu"))
        missing = (policy.keypoint_reader.nothing_named(image, states, mask) > 0.5).sum(-1)
    assert missing[candidates.index(info["read_as"])] == missing.min()
    # the decoded action is the reading's: the same as typing the reading
    reading.reset()
    action, _ = reading.act_with_info({**obs, "instruction": typed})
    again, _ = reading.act_with_info({**obs, "instruction": info["read_as"]})
    np.testing.assert_allclose(action, again)


def test_an_instruction_that_stops_is_read_as_typed():
    obs = {**_scene(), "instruction": "touch the red sphere"}
    runner = _runner(True, scope_threshold=1e-6)  # every instruction names "nothing in view"
    action, info = runner.act_with_info(obs)
    assert info["stopped"] and info["read_as"] == "touch the red sphere" and not action[:6].any()


def test_without_an_abstain_cell_the_encoder_decides_by_word_similarity():
    """MiniLM: "canister" and "tube" lie nearer "cylinder", "block" and "box" nearer "cube"."""
    pytest.importorskip("transformers")
    runner = _runner(True, scope_threshold=None, encoder="sentence-transformers/all-MiniLM-L6-v2")
    obs = _scene()
    expected = {"block": "cube", "box": "cube", "canister": "cylinder", "tube": "cylinder"}
    for word, noun in expected.items():
        _, info = runner.act_with_info({**obs, "instruction": f"touch the red {word}"})
        assert info["read_as"] == f"touch the red {noun}", word


def test_a_checkpoint_without_the_worlds_nouns_reads_as_typed():
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "keypoints": 2, "keypoint_channels": 8}))
    runner = PolicyRunner(policy, ActionTokenizer(bins=256))
    assert runner.nouns is None
    assert (
        runner.act_with_info({**_scene(), "instruction": "touch the red block"})[1]["read_as"] == "touch the red block"
    )
