"""Instruction templates: enough of them, and held-out paraphrases with unseen words."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest

from envs.instructions import (
    INSTRUCTION_SPLITS,
    TEMPLATES,
    all_instructions,
    heldout_only_words,
    make_instruction,
    template_of,
)
from envs.tasks import TASK_CLASSES


def words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.mark.parametrize("task", TASK_CLASSES)
def test_template_counts(task):
    assert len(TEMPLATES[task]["train"]) >= 5
    assert len(TEMPLATES[task]["heldout"]) >= 3
    assert not set(TEMPLATES[task]["train"]) & set(TEMPLATES[task]["heldout"])


def test_heldout_synonyms_never_occur_in_training_instructions():
    rng = np.random.default_rng(0)
    train_words = set()
    for task, cls in TASK_CLASSES.items():
        for template in TEMPLATES[task]["train"]:
            train_words |= words(template)
        for _ in range(200):
            spec = cls().sample_spec(rng)
            train_words |= words(make_instruction(spec, "train", rng))
    assert heldout_only_words() and not heldout_only_words() & train_words


@pytest.mark.parametrize("split", INSTRUCTION_SPLITS)
def test_gym_make_picks_the_split(split):
    env = gym.make("VLASandbox/PickPlace-v0", instruction_split=split)
    texts = {env.reset(seed=s)[0]["instruction"] for s in range(30)}
    heldout_hits = any(words(t) & heldout_only_words() for t in texts)
    assert heldout_hits == (split == "heldout")
    for text in texts:  # the target and zone colours are always named
        assert words(text) & {"red", "green", "blue", "yellow"}
        assert words(text) & {"purple", "white", "orange"}


def test_train_and_heldout_wordings_of_a_seed_never_change():
    # Datasets store their instructions and results compare runs on the same seeds: adding
    # the augmented split's synonyms must not shift the random draws of the other two.
    rng = np.random.default_rng(7)
    texts = []
    for cls in TASK_CLASSES.values():
        for split in ("train", "heldout"):
            texts.append(make_instruction(cls().sample_spec(rng), split, rng))
    assert texts == [
        "put the gripper on the yellow cube",
        "tap the blue block",
        "push the green cube onto the orange zone",
        "without lifting it, get the red block onto the purple mat",
        "lift the yellow cube",
        "take hold of the blue can and elevate it",
        "pick up the green cylinder and put it in the white zone",
        "transfer that green can onto the orange area",
        "put the yellow cylinder on top of the green cube",
        "build a tower: blue can over red can",
    ]


@pytest.mark.parametrize(
    ("split", "smaller", "new_nouns"),
    [
        ("augmented", "train", {"box", "tube", "pad", "square"}),
        ("augmented_large", "augmented", {"brick", "pipe", "tin", "rug", "region"}),
    ],
)
def test_augmented_splits_add_wordings_but_no_heldout_word(split, smaller, new_nouns):
    rng = np.random.default_rng(0)
    split_words = {"train": set(), "heldout": set(), split: set()}
    for task, cls in TASK_CLASSES.items():
        assert set(TEMPLATES[task][smaller]) < set(TEMPLATES[task][split])
        assert len(TEMPLATES[task][split]) >= 2 * len(TEMPLATES[task][smaller]) - len(TEMPLATES[task]["train"])
        for name, found in split_words.items():
            for _ in range(300):
                found |= words(make_instruction(cls().sample_spec(rng), name, rng))
    heldout_only = split_words["heldout"] - split_words["train"]
    assert heldout_only >= heldout_only_words()
    assert not split_words[split] & heldout_only
    assert new_nouns <= split_words[split] - split_words["train"]


def test_augmented_large_has_no_word_piece_of_a_heldout_word():
    # "canister" would pass a word check but reaches MiniLM as "can" + "##ister": the held-out
    # "can" would then be a word the policy trained on.
    from vla.language import load_wordpiece_tokenizer

    tokenizer = load_wordpiece_tokenizer()
    heldout_only = set().union(*(words(t) for task in TEMPLATES for t in TEMPLATES[task]["heldout"]))
    heldout_only = (heldout_only | heldout_only_words()) - set().union(
        *(words(t) for task in TEMPLATES for t in TEMPLATES[task]["train"])
    )
    rng = np.random.default_rng(0)
    training_words = set().union(*(words(t) for task in TEMPLATES for t in TEMPLATES[task]["augmented_large"]))
    for cls in TASK_CLASSES.values():  # and the nouns that fill the slots
        for _ in range(300):
            training_words |= words(make_instruction(cls().sample_spec(rng), "augmented_large", rng))
    pieces = {piece for word in training_words for piece in tokenizer.tokenize(word)}
    assert not pieces & heldout_only
    assert tokenizer.tokenize("canister")[0] == "can"  # the check would catch such a word


@pytest.mark.parametrize("split", INSTRUCTION_SPLITS)
def test_all_instructions_lists_every_wording_a_split_can_give(split):
    rng = np.random.default_rng(0)
    for task, cls in TASK_CLASSES.items():
        every = set(all_instructions(task, split))
        drawn = {make_instruction(cls().sample_spec(rng), split, rng) for _ in range(300)}
        assert drawn <= every and len(every) >= len(TEMPLATES[task][split])


@pytest.mark.parametrize("split", INSTRUCTION_SPLITS)
def test_every_instruction_names_the_template_it_was_phrased_from(split):
    for task, templates in TEMPLATES.items():
        for template in templates[split]:
            slots = {"target": "red cube", "zone": "blue zone", "base": "green cylinder"}
            assert template_of(task, split, template.format(**slots)) == template
        found = {template_of(task, split, text) for text in all_instructions(task, split)}
        assert found == set(templates[split]), (task, split)


def test_a_wording_no_template_gives_is_one_clear_error():
    with pytest.raises(ValueError, match="'dance with the red cube' is not phrased from exactly one train template"):
        template_of("reach", "train", "dance with the red cube")
    with pytest.raises(ValueError, match="unknown task|valid"):
        template_of("juggle", "train", "touch the red cube")
