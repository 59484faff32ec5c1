"""Instructions as people type them: rewrites of a task's instruction by kind, and
instructions a policy must refuse.

An interviewer who types "Could you please touch the crimson block?" never wrote a
template. ``rewrite(instruction, spec, kind, rng, lexicon)`` turns an instruction of any
split into one of ``KINDS``:

- ``polite``: politeness and filler around the command ("could you ...", "... please");
- ``case``: capitals (all caps with "!", title case, a capital first letter);
- ``punctuation``: trailing marks, commas, extra and leading spaces;
- ``typo``: one slip of the keyboard (two letters swapped, one dropped, doubled, or hit
  beside) in one word of three letters or more;
- ``word_order``: the words in another order (``suite``: "the red cube, pick it up";
  ``training``: relative clauses, "the cube that is red");
- ``colour_synonym`` / ``shape_synonym``: colour and shape words the templates never use
  ("crimson", "canister");
- ``short``: the command as typed in a hurry, without articles ("red cube to white zone").

Two lexicons keep measurement honest: ``SUITE`` words the robustness suite
(``eval/robustness.py``) and ``TRAINING`` words the rewrites training may use
(``data.rewrites``). Their phrases, synonyms and constructions are disjoint, and no suite
wording is an instruction of a training split (tests/test_rewrites.py): what the suite
measures is how the policy handles wordings nobody trained it on.

``out_of_scope(spec, scene_objects, kind, rng, lexicon)`` writes instructions a policy
must not act on (``OUT_OF_SCOPE_KINDS``): an object that is not on the table, a colour or
shape that does not exist in this world, and nonsense.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.instructions import make_instruction
from envs.vocabulary import OBJECT_COLOURS, OBJECT_SHAPES, ZONE_COLOURS, all_objects, check_name, object_name

KINDS = ("polite", "case", "punctuation", "typo", "word_order", "colour_synonym", "shape_synonym", "short")
# What training rewrites with: capitals, punctuation and spacing need no training (the policy
# normalises them away, vla.language.normalise_instruction), and the hurried short forms stay
# the suite's own.
TRAINING_KINDS = ("polite", "typo", "word_order", "colour_synonym", "shape_synonym")
OUT_OF_SCOPE_KINDS = ("absent", "unknown", "nonsense")


@dataclass(frozen=True)
class Lexicon:
    """The words and constructions one side (suite or training) rewrites with."""

    name: str
    prefixes: tuple[str, ...]  # polite: before the command
    suffixes: tuple[str, ...]  # polite: after it
    colours: dict[str, tuple[str, ...]]  # colour_synonym: template colour -> synonyms
    shapes: dict[str, tuple[str, ...]]  # shape_synonym: cube, cylinder, zone -> synonyms
    unknown_colours: tuple[str, ...]  # out_of_scope unknown: colours no object has
    unknown_shapes: tuple[str, ...]  # out_of_scope unknown: shapes no object has
    nonsense: tuple[str, ...]  # out_of_scope nonsense: requests that are no task


SUITE = Lexicon(
    name="suite",
    prefixes=("could you please", "can you", "now", "hey robot,", "i would like you to", "robot, please"),
    suffixes=("please", "now", "thank you", "for me", "right away"),
    colours={
        "red": ("crimson", "scarlet"),
        "green": ("emerald", "lime"),
        "blue": ("navy", "azure"),
        "yellow": ("golden", "lemon"),
        "purple": ("violet",),
        "white": ("ivory",),
        "orange": ("tangerine", "amber"),
    },
    shapes={
        "cube": ("block", "cubic block"),
        "cylinder": ("can", "canister"),
        "zone": ("mat", "area"),
    },
    unknown_colours=("pink", "black", "brown"),
    unknown_shapes=("sphere", "pyramid", "cone"),
    nonsense=("what is the weather like today", "sing me a song", "qwerty asdf zxcv", "the of and to"),
)
TRAINING = Lexicon(
    name="training",
    prefixes=("please", "kindly", "ok,", "robot,", "go ahead and", "i need you to", "would you", "just"),
    suffixes=("thanks", "when you are ready", "if you can", "quickly", "okay"),
    colours={
        "red": ("ruby", "cherry", "reddish"),
        "green": ("fern", "grassy", "greenish"),
        "blue": ("cobalt", "sapphire", "bluish"),
        "yellow": ("canary", "mustard", "yellowish"),
        "purple": ("lilac", "lavender", "plum"),
        "white": ("snowy", "milky", "pale"),
        "orange": ("apricot", "copper", "peach"),
    },
    shapes={
        "cube": ("box", "brick", "cuboid"),
        "cylinder": ("tube", "tin", "drum"),
        "zone": ("pad", "patch", "spot"),
    },
    unknown_colours=("grey", "silver", "charcoal", "beige", "teal"),
    unknown_shapes=("ball", "star", "ring", "banana", "bottle cap"),
    nonsense=(
        "tell me a joke",
        "how are you",
        "open the door",
        "lorem ipsum dolor",
        "hello",
        "xkcd foo bar",
        "turn on the lights",
    ),
)
LEXICONS = {"suite": SUITE, "training": TRAINING}

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {
    c: "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)) for row in _KEYBOARD_ROWS for i, c in enumerate(row)
}
_SHAPE_NOUNS = {"cube": "cube", "cylinder": "cylinder"}  # the train split's nouns


def rewrite(instruction: str, spec: dict[str, Any], kind: str, rng: np.random.Generator, lexicon: str) -> str:
    """``instruction`` (worded for task ``spec``) rewritten the ``kind`` way with ``lexicon``'s
    words ("suite" or "training"); the meaning and the objects named stay the same."""
    lex = LEXICONS[check_name("lexicon", lexicon, LEXICONS)]
    check_name(f"rewrite kind of the {lexicon} lexicon", kind, KINDS if lex is SUITE else TRAINING_KINDS)
    text = " ".join(instruction.split())
    if kind == "polite":
        return _polite(text, lex, rng)
    if kind == "case":
        return _case(text, rng)
    if kind == "punctuation":
        return _punctuation(text, rng)
    if kind == "typo":
        return _typo(text, rng)
    if kind == "word_order":
        return _topicalise(text, spec) if lex is SUITE else _relative_clauses(text, spec)
    if kind == "colour_synonym":
        return _replace_words(text, lex.colours, rng)
    if kind == "shape_synonym":
        return _replace_shapes(text, spec, lex, rng)
    return _short(spec)


def out_of_scope(
    spec: dict[str, Any], scene_objects: list[str], kind: str, rng: np.random.Generator, lexicon: str
) -> str:
    """An instruction for task ``spec``'s scene that names nothing the policy can act on:
    ``absent`` names an object of this world that is not on the table (``scene_objects``),
    ``unknown`` a colour or shape no object has, ``nonsense`` is no task at all."""
    check_name("out-of-scope kind", kind, OUT_OF_SCOPE_KINDS)
    lex = LEXICONS[check_name("lexicon", lexicon, LEXICONS)]
    if kind == "nonsense":
        return str(rng.choice(lex.nonsense))
    if kind == "absent":
        away = [(c, s) for c, s in all_objects() if object_name(c, s) not in scene_objects]
        colour, shape = away[int(rng.integers(len(away)))]
    elif rng.random() < 0.5:
        colour, shape = str(rng.choice(lex.unknown_colours)), str(rng.choice(OBJECT_SHAPES))
    else:
        colour, shape = str(rng.choice(list(OBJECT_COLOURS) + list(ZONE_COLOURS))), str(rng.choice(lex.unknown_shapes))
    wording = make_instruction({**spec, "target_colour": "COLOUR", "target_shape": "cube"}, "train", rng)
    return wording.replace("COLOUR cube", f"{colour} {shape}", 1)


def _polite(text: str, lex: Lexicon, rng: np.random.Generator) -> str:
    prefix = str(rng.choice(lex.prefixes)) if rng.random() < 0.8 else ""
    suffix = str(rng.choice(lex.suffixes)) if (rng.random() < 0.5 or not prefix) else ""
    words = [prefix, text, suffix] if prefix or suffix else [text]
    question = prefix.split(" ")[0] in ("could", "can", "would")
    return " ".join(w for w in words if w) + ("?" if question else "")


def _case(text: str, rng: np.random.Generator) -> str:
    style = int(rng.integers(3))
    if style == 0:
        return text.upper() + "!"
    if style == 1:
        return text.title()
    return text[:1].upper() + text[1:] + "."


def _punctuation(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    if len(words) > 2 and rng.random() < 0.5:
        words[0] += ","
    gap = int(rng.integers(1, len(words))) if len(words) > 1 else 0
    spaced = " ".join(words[:gap]) + "  " + " ".join(words[gap:]) if gap else text
    end = str(rng.choice(["!", "?", "...", ".", " !", "!!"]))
    return (" " if rng.random() < 0.5 else "") + spaced.strip() + end + ("  " if rng.random() < 0.5 else "")


def _typo(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 3 and w.isalpha()]
    i = int(rng.choice(candidates))
    word, j = words[i], int(rng.integers(len(words[i])))
    slip = int(rng.integers(4))
    if slip == 0 and j < len(word) - 1 and word[j] != word[j + 1]:
        word = word[:j] + word[j + 1] + word[j] + word[j + 2 :]  # two letters swapped
    elif slip == 1:
        word = word[:j] + word[j + 1 :]  # one dropped
    elif slip == 2:
        word = word[:j] + word[j] + word[j:]  # one doubled
    else:
        near = _NEIGHBOURS.get(word[j].lower(), "")
        word = word[:j] + (str(rng.choice(list(near))) if near else word[j]) + word[j + 1 :]  # a key beside
    if word == words[i]:  # a swap of equal letters or a key with no neighbour: drop one instead
        word = word[:j] + word[j + 1 :]
    words[i] = word
    return " ".join(words)


def _phrases(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Slot -> (colour, shape word) of what ``spec`` names: target, zone, base."""
    phrases = {"target": (spec["target_colour"], spec["target_shape"])}
    if "zone_colour" in spec:
        phrases["zone"] = (spec["zone_colour"], "zone")
    if "base_colour" in spec:
        phrases["base"] = (spec["base_colour"], spec["base_shape"])
    return phrases


def _noun_phrase(text: str, colour: str) -> re.Match[str] | None:
    """Where ``colour`` and the noun after it stand in ``text`` (any split's noun)."""
    return re.search(rf"\b(the |that )?{colour} ([a-z]+)\b", text)


def _topicalise(text: str, spec: dict[str, Any]) -> str:
    """The target first, then the command about "it": "the red cube, pick it up"."""
    found = _noun_phrase(text, spec["target_colour"])
    if found is None:
        return text
    target = f"the {spec['target_colour']} {found.group(2)}"
    rest = (text[: found.start()] + "it" + text[found.end() :]).strip()
    rest = re.sub(r"\b(pick|lift|raise) up it\b", r"\1 it up", rest)
    return f"{target}, {rest}"


def _relative_clauses(text: str, spec: dict[str, Any]) -> str:
    """Each named object as a relative clause: "the cube that is red"."""
    for colour, _ in _phrases(spec).values():
        found = _noun_phrase(text, colour)
        if found is not None:
            text = text[: found.start()] + f"the {found.group(2)} that is {colour}" + text[found.end() :]
    return text


def _replace_words(text: str, table: dict[str, tuple[str, ...]], rng: np.random.Generator) -> str:
    def swap(match: re.Match[str]) -> str:
        return str(rng.choice(table[match.group(0)]))

    return re.sub(r"\b(" + "|".join(table) + r")\b", swap, text)


def _replace_shapes(text: str, spec: dict[str, Any], lex: Lexicon, rng: np.random.Generator) -> str:
    for colour, shape in _phrases(spec).values():
        found = _noun_phrase(text, colour)
        if found is not None:
            noun = str(rng.choice(lex.shapes[shape]))
            text = text[: found.start(2)] + noun + text[found.end(2) :]
    return text


_SHORT = {  # the suite's hurried forms: no articles, few verbs
    "reach": "touch {target}",
    "push": "push {target} to {zone}",
    "lift": "lift {target}",
    "pick_place": "{target} to {zone}",
    "stack": "{target} on {base}",
}


def _short(spec: dict[str, Any]) -> str:
    slots = {slot: f"{colour} {_SHAPE_NOUNS.get(shape, shape)}" for slot, (colour, shape) in _phrases(spec).items()}
    return _SHORT[spec["task"]].format(**slots)


REWRITE_VARIANTS = 12  # distinct training rewrites of one instruction: a frozen encoder encodes each once


def check_share(share: float) -> float:
    """``share`` if it is a share of rewritten instructions in [0, 1], else a ValueError."""
    if not (isinstance(share, (int, float)) and 0.0 <= share <= 1.0):
        raise ValueError(f"the share of rewritten instructions must be in [0, 1], got {share!r}")
    return share


def training_rewrite(
    instruction: str, spec: dict[str, Any], share: float, seed: int, draw: int | tuple[int, ...]
) -> str:
    """With probability ``share``, ``instruction`` rewritten with the training lexicon, one of
    ``REWRITE_VARIANTS`` variants of it; otherwise as it is. ``draw`` (a sample index) picks,
    so each sample keeps its wording across epochs, resumes and DataLoader workers."""
    check_share(share)
    pick = np.random.default_rng([seed, *np.atleast_1d(draw)])
    if share == 0.0 or pick.random() >= share:
        return instruction
    variant = int(pick.integers(REWRITE_VARIANTS))
    rng = np.random.default_rng([seed, zlib.crc32(instruction.encode()), variant])
    return rewrite(instruction, spec, TRAINING_KINDS[int(rng.integers(len(TRAINING_KINDS)))], rng, "training")


def suite_instruction(
    info: dict[str, Any], split: str, rng: np.random.Generator, kind: str, lexicon: str = "suite"
) -> str:
    """The env's own instruction for an episode (``info`` of its reset) rewritten the ``kind``
    way: an ``instruction_fn`` for ``envs.evaluation.evaluate``."""
    return rewrite(info["instruction"], info["task_spec"], kind, rng, lexicon)
