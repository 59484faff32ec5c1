"""Instructions as people type them: the robustness suite's rewrites stay out of training,
keep their meaning, and the policy's normalisation undoes capitals and punctuation."""

from __future__ import annotations

import functools
import itertools
import re

import numpy as np
import pytest

from envs.instructions import TRAINING_SPLITS, all_instructions, make_instruction
from envs.rewrites import (
    KINDS,
    OUT_OF_SCOPE_KINDS,
    REWRITE_VARIANTS,
    SUITE,
    TRAINING,
    TRAINING_KINDS,
    out_of_scope,
    rewrite,
    training_rewrite,
)
from envs.tabletop_env import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH
from envs.tasks import TASK_CLASSES
from envs.vocabulary import OBJECT_COLOURS, OBJECT_SHAPES, ZONE_COLOURS, all_objects, object_name
from vla.language import normalise_instruction


def specs(count: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    for task, cls in TASK_CLASSES.items():
        for _ in range(count):
            spec = cls().sample_spec(rng)
            yield task, spec, make_instruction(spec, "train", rng)


def suite_wordings(kinds, count: int = 40) -> set[str]:
    wordings = set()
    for i, (_, spec, text) in enumerate(specs(count)):
        for kind in kinds:
            wordings.add(rewrite(text, spec, kind, np.random.default_rng(i), "suite"))
    return wordings


@functools.cache
def training_split_instructions() -> frozenset[str]:
    """Every instruction of every training split (about 300,000: built once)."""
    texts: set[str] = set()
    for task, split in itertools.product(TASK_CLASSES, TRAINING_SPLITS):
        texts |= set(all_instructions(task, split))
    return frozenset(texts)


def test_suite_wordings_are_in_no_training_split_and_no_training_rewrite():
    training = set(training_split_instructions())
    for _, spec, text in specs(40, seed=1):
        for variant in range(4 * REWRITE_VARIANTS):
            training.add(training_rewrite(text, spec, 1.0, 0, variant))
    assert not suite_wordings(KINDS) & training
    # what the policy reads: capitals and punctuation normalise back to the training wording
    # by design; every other kind stays apart (typos are random slips on both sides: one
    # may repeat by chance)
    read = {normalise_instruction(t) for t in training}
    suite = {normalise_instruction(t) for t in suite_wordings([k for k in KINDS if k not in ("case", "punctuation")])}
    assert len(suite & read) <= 0.01 * len(suite), sorted(suite & read)[:10]


def test_suite_and_training_lexicons_share_no_synonym_or_phrase():
    def words(lexicon):
        synonyms = {w for table in (lexicon.colours, lexicon.shapes) for ws in table.values() for w in ws}
        return synonyms | set(lexicon.unknown_colours) | set(lexicon.unknown_shapes)

    assert not words(SUITE) & words(TRAINING)
    assert not set(SUITE.prefixes) & set(TRAINING.prefixes)
    assert not set(SUITE.suffixes) & set(TRAINING.suffixes)
    assert not set(SUITE.nonsense) & set(TRAINING.nonsense)
    template_words = {w for text in training_split_instructions() for w in text.split()}
    suite_synonyms = {w for table in (SUITE.colours, SUITE.shapes) for ws in table.values() for w in ws}
    assert not {w for s in suite_synonyms for w in s.split()} & template_words


@pytest.mark.parametrize("kind", KINDS)
def test_every_rewrite_is_a_valid_env_instruction_naming_the_same_objects(kind):
    for i, (_, spec, text) in enumerate(specs(30)):
        new = rewrite(text, spec, kind, np.random.default_rng(i), "suite")
        assert new and len(new) <= MAX_INSTRUCTION_LENGTH and set(new) <= set(INSTRUCTION_CHARSET), new
        if kind in ("case", "punctuation"):  # what the policy reads is the original
            assert normalise_instruction(new) == normalise_instruction(text)
        elif kind == "typo":
            assert new != text and len(new.split()) == len(text.split())
        elif kind == "colour_synonym":
            assert not set(new.split()) & (set(OBJECT_COLOURS) | set(ZONE_COLOURS)), new
        else:
            assert spec["target_colour"] in new.split(), (kind, new)
        assert new == rewrite(text, spec, kind, np.random.default_rng(i), "suite")  # seeded


def test_word_order_puts_the_target_first_and_short_drops_articles():
    spec = {"task": "lift", "target_colour": "red", "target_shape": "cube"}
    rng = np.random.default_rng(0)
    assert rewrite("pick up the red cube", spec, "word_order", rng, "suite") == "the red cube, pick it up"
    assert rewrite("pick up the red cube", spec, "short", rng, "suite") == "lift red cube"
    stack = {"task": "stack", "target_colour": "red", "target_shape": "cube", "base_colour": "blue",
             "base_shape": "cylinder"}  # fmt: skip
    assert (
        rewrite("stack the red cube on the blue cylinder", stack, "short", rng, "suite") == "red cube on blue cylinder"
    )
    assert (
        rewrite("stack the red cube on the blue cylinder", stack, "word_order", rng, "training")
        == "stack the cube that is red on the cylinder that is blue"
    )


def test_training_rewrites_keep_a_share_and_a_bounded_set_of_wordings():
    spec = {"task": "reach", "target_colour": "red", "target_shape": "cube"}
    words = [training_rewrite("touch the red cube", spec, 0.5, 0, i) for i in range(2000)]
    kept = sum(w == "touch the red cube" for w in words) / len(words)
    assert 0.45 < kept < 0.55
    assert len(set(words)) <= REWRITE_VARIANTS + 1
    assert words == [training_rewrite("touch the red cube", spec, 0.5, 0, i) for i in range(2000)]
    with pytest.raises(ValueError, match=r"share .* \[0, 1\], got 1.5"):
        training_rewrite("touch the red cube", spec, 1.5, 0, 0)
    with pytest.raises(ValueError, match="rewrite kind of the training lexicon"):
        rewrite("touch the red cube", spec, "short", np.random.default_rng(0), "training")
    assert set(TRAINING_KINDS) < set(KINDS)


def test_out_of_scope_names_nothing_on_the_table():
    known = {f"{c} {s}" for c, s in all_objects()}
    for i, (_, spec, _) in enumerate(specs(20)):
        scene = [object_name(spec["target_colour"], spec["target_shape"])]
        rng = np.random.default_rng(i)
        absent = out_of_scope(spec, scene, "absent", rng, "suite")
        named = re.search(r"(\w+) (cube|cylinder)", absent).group(0)
        assert named in known and named.replace(" ", "_") not in scene
        unknown = out_of_scope(spec, scene, "unknown", rng, "suite")
        assert set(unknown.split()) & (set(SUITE.unknown_colours) | set(SUITE.unknown_shapes)), unknown
        assert out_of_scope(spec, scene, "nonsense", rng, "suite") in SUITE.nonsense
    assert OUT_OF_SCOPE_KINDS == ("absent", "unknown", "nonsense")
    assert set(OBJECT_SHAPES) == {"cube", "cylinder"}


def test_normalise_instruction():
    assert normalise_instruction("  Touch the RED cube!!  ") == "touch the red cube"
    assert normalise_instruction("the red cube, pick it up.") == "the red cube pick it up"
    assert normalise_instruction("?!  ") == ""


def test_the_robustness_suite_runs_every_kind_on_the_same_seeds_and_asks_out_of_scope_cases():
    import torch

    from tests.conftest import TINY_MODEL
    from vla.evaluation.robustness import SCOPE_CASES, robustness_suite, robustness_table
    from vla.inference import PolicyRunner
    from vla.policy import PolicyConfig, VLAPolicy
    from vla.tokenizer import ActionTokenizer

    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "keypoints": 2, "keypoint_channels": 8}))
    runner = PolicyRunner(policy, ActionTokenizer(bins=256))
    env_kwargs = {"image_size": 32, "max_steps": 5}
    report = robustness_suite(runner, ["reach"], 2, ["typo", "short"], 2, env_kwargs, 2, progress=False)
    assert list(report["wordings"]) == ["train", "typo", "short"]
    seeds = [row["seeds"] for row in report["wordings"].values()]
    assert seeds[0] == seeds[1] == seeds[2]  # every kind on the training wording's scenes
    assert all(row["episodes"] == 2 for row in report["wordings"].values())
    valid = {f"{kind} (valid)" for kind in KINDS}  # every kind of rewrite asked too: none should stop
    assert set(report["scope"]["cases"]) == {"train", *valid, *SCOPE_CASES}
    assert report["scope"]["cases"]["empty"]["stop_rate"] == 1.0  # "" always stops, with its message
    assert "is empty" in report["scope"]["example_messages"]["empty"]
    table = robustness_table(report)
    assert "| typo |" in table and "| nonsense |" in table
    with pytest.raises(ValueError, match="unknown rewrite kind 'rude'"):
        robustness_suite(runner, ["reach"], 1, ["rude"], 1, env_kwargs, 1, progress=False)


def test_the_suite_takes_a_fixed_scope_threshold_from_the_command_line():
    from vla.inference import parse_scope_threshold as scope_threshold  # the suite's, the demo's and the server's

    assert scope_threshold("calibrated") == "calibrated"
    assert scope_threshold("0.9938") == 0.9938  # as the command line hands it over: text
    assert scope_threshold(0.5) == 0.5
    assert scope_threshold("off") is None and scope_threshold(None) is None
    allowed = "allowed are calibrated, off, or a number in \\(0, 1\\)"
    for bad in ("1.5", "0", "often"):
        with pytest.raises(ValueError, match=f"scope_threshold={bad}: {allowed}"):
            scope_threshold(bad)
