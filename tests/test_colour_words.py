"""Colour words the policy was never taught are read as the world's colours they look like,
and only where a person would agree (vla/colour_words.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.rewrites import SUITE, TRAINING
from envs.vocabulary import OBJECT_COLOURS, ZONE_COLOURS, colour_palette
from tests.conftest import TINY_MODEL
from vla.colour_words import ColourWords, colour_names, lch
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer

WORLD = ColourWords(colour_palette())


@pytest.mark.parametrize(
    "word, colour",
    [("crimson", "red"), ("maroon", "red"), ("navy", "blue"), ("sapphire", "blue"), ("emerald", "green")]
    + [("lemon", "yellow"), ("violet", "purple"), ("ivory", "white"), ("tangerine", "orange")]
    + [("sky blue", "blue"), ("forest green", "green"), ("red", "red")],
)
def test_a_colour_word_reads_as_the_world_colour_it_looks_like(word, colour):
    assert WORLD.reading[word] == colour


@pytest.mark.parametrize("word", ["pink", "brown", "black", "grey", "hot pink", "teal", "magenta", "amber", "silver"])
def test_basic_terms_far_hues_and_ambiguous_hues_stay_as_typed(word):
    """ "pink" and "brown" name categories of their own; teal and magenta are far from every
    world hue; amber lies between yellow and orange; silver is a grey, not white."""
    assert WORLD.reading[word] is None
    assert WORLD(f"touch the {word} cube") == f"touch the {word} cube"


def test_sentences_are_rewritten_word_by_word_and_a_colour_noun_stays_a_noun():
    assert (
        WORLD("pick up the crimson block and put it on the navy mat")
        == "pick up the red block and put it on the blue mat"
    )
    assert WORLD("stack the light blue cube on the brick red cylinder") == "stack the blue cube on the red cylinder"
    # "brick" is a colour in the survey, and a noun after a colour: the yellow brick stays one
    assert WORLD("put the yellow brick in the white zone") == "put the yellow brick in the white zone"
    assert WORLD("") == ""


def test_the_training_lexicon_never_contradicts_what_the_policy_reads():
    """Training rewrites name a colour by a synonym (or an unknown colour for out-of-scope
    training): where the policy reads the synonym as a world colour it must be the colour
    meant, and an unknown colour must never be read as a world colour."""
    for lexicon in (TRAINING, SUITE):
        for colour, synonyms in lexicon.colours.items():
            for word in synonyms:
                assert WORLD.reading.get(word) in (colour, None), (lexicon.name, word, WORLD.reading.get(word))
        for word in lexicon.unknown_colours:
            assert WORLD.reading.get(word) is None, (lexicon.name, word)


def test_the_world_palette_is_every_colour_an_instruction_can_name_and_reads_as_itself():
    assert set(colour_palette()) == set(OBJECT_COLOURS) | set(ZONE_COLOURS)
    assert all(WORLD.reading[name] == name for name in colour_palette())
    assert len(colour_names()) > 900
    np.testing.assert_allclose(lch((1.0, 1.0, 1.0))[:2], (100.0, 0.0), atol=0.05)


@pytest.mark.parametrize("palette, message", [({}, "needs a palette"), ({"red": [1.0, 0.0]}, "3 sRGB values")])
def test_a_bad_palette_is_one_clear_error(palette, message):
    with pytest.raises(ValueError, match=message):
        ColourWords(palette)


def test_the_policy_reads_colour_words_through_its_saved_palette_and_old_checkpoints_do_not(tmp_path):
    from vla.checkpoint import build_policy, read_checkpoint, save_checkpoint
    from vla.inference import PolicyRunner

    config = {**TINY_MODEL, "colour_palette": colour_palette()}
    policy = VLAPolicy(PolicyConfig.from_dict(config))
    assert policy.reader("Pick up the CRIMSON block!") == "pick up the red block"
    path = save_checkpoint(tmp_path / "p.pt", policy, ActionTokenizer(256))
    loaded, tokenizer = build_policy(read_checkpoint(path))
    assert loaded.reader("touch the navy cube") == "touch the blue cube"
    obs = {
        "image": np.zeros((32, 32, 3), np.uint8),
        "proprio": np.zeros(9, np.float32),
        "instruction": "Touch the Scarlet cube",
    }
    assert PolicyRunner(loaded, tokenizer).act_with_info(obs)[1]["read_as"] == "touch the red cube"
    # the encoder caches what it read: the synonym and the world's word share one entry
    states, _ = loaded.text(["touch the crimson cube", "touch the red cube"], torch.device("cpu"))
    torch.testing.assert_close(states[0], states[1])
    # a checkpoint from before colour words loads with them off and reads as it always did
    payload = torch.load(path, weights_only=False)
    old = {k: v for k, v in payload["policy_config"].items() if k not in ("colour_words", "colour_palette")}
    del payload["sha256"]  # as saved before checkpoints carried a digest
    torch.save({**payload, "policy_config": old}, path)
    before, _ = build_policy(read_checkpoint(path))
    assert before.reader("touch the crimson cube") == "touch the crimson cube"
