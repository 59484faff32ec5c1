"""Natural-language instructions, built from a task spec.

Three splits per task:
- ``train``: the templates demonstrations and training use.
- ``heldout``: paraphrases with different verbs *and* synonyms for the nouns (``block``
  for cube, ``can`` for cylinder, ``mat``/``area`` for zone) that never occur in any
  training template, to measure whether a policy generalises beyond the exact words it saw.
- ``augmented``: the ``train`` templates plus more paraphrases of our own, with more nouns
  (``box`` for cube, ``tube`` for cylinder, ``pad``/``square`` for zone), for training only:
  the toy version of instruction augmentation (re-labelling demos with paraphrases, as
  robot-learning datasets do with language models). None of its words is a held-out word
  that training lacks (a test), so the held-out split stays unseen: what it measures is
  whether more varied training language carries over to wordings nobody wrote for training.
- ``augmented_large``: ``augmented`` plus about twice as many paraphrases again (new verbs,
  word orders that name the destination first, polite and "your job is" framings) and more
  nouns per shape and zone (8 for cube, 14 for cylinder, 9 for zone: ``brick``, ``tin``, ``rug``,
  ...), under the same rule:
  no word, and no word piece, that only the held-out split uses. Written on 2026-12-04 after
  the held-out results of earlier runs were known, so it is not blind to them; it keeps
  to generic variety rather than copying held-out constructions (docs/ablations.md).

Templates use ``{target}``, ``{zone}`` and ``{base}`` slots; the noun phrases that fill
them are split-specific too (see ``_SHAPE_WORDS`` and ``_ZONE_WORDS``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from typing import Any

import numpy as np

from envs.vocabulary import OBJECT_COLOURS, ZONE_COLOURS, check_name

INSTRUCTION_SPLITS = ("train", "heldout", "augmented", "augmented_large")
TRAINING_SPLITS = ("train", "augmented", "augmented_large")  # what a policy may learn from: never heldout

_SHAPE_WORDS = {
    "train": {"cube": ("cube",), "cylinder": ("cylinder",)},
    "heldout": {"cube": ("block",), "cylinder": ("can",)},
    "augmented": {"cube": ("cube", "box"), "cylinder": ("cylinder", "tube")},
    "augmented_large": {
        "cube": ("cube", "box", "brick", "crate", "chunk", "slab", "dice", "cuboid"),
        "cylinder": (
            "cylinder",
            "tube",
            "pipe",
            "barrel",
            "drum",
            "tin",
            "jar",
            "roller",
            "bottle",
            "cup",
            "mug",
            "pillar",
            "column",
            "spool",
        ),  # fmt: skip
    },
}
_ZONE_WORDS = {
    "train": ("zone",),
    "heldout": ("mat", "area"),
    "augmented": ("zone", "pad", "square"),
    "augmented_large": ("zone", "pad", "square", "region", "spot", "patch", "rug", "carpet", "tile"),
}

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "reach": {
        "train": (
            "touch the {target}",
            "reach the {target}",
            "move to the {target}",
            "go to the {target} and touch it",
            "put the gripper on the {target}",
        ),
        "heldout": (
            "tap the {target}",
            "make contact with the {target}",
            "poke that {target}",
        ),
    },
    "push": {
        "train": (
            "push the {target} into the {zone}",
            "push the {target} to the {zone}",
            "slide the {target} into the {zone}",
            "move the {target} to the {zone} by pushing it",
            "push the {target} onto the {zone}",
        ),
        "heldout": (
            "shove the {target} over to the {zone}",
            "nudge the {target} until it sits on the {zone}",
            "without lifting it, get the {target} onto the {zone}",
        ),
    },
    "lift": {
        "train": (
            "pick up the {target}",
            "lift the {target}",
            "grasp the {target} and lift it",
            "pick the {target} up off the table",
            "raise the {target}",
        ),
        "heldout": (
            "hoist the {target} into the air",
            "grab that {target} and hold it high",
            "take hold of the {target} and elevate it",
        ),
    },
    "pick_place": {
        "train": (
            "put the {target} in the {zone}",
            "place the {target} in the {zone}",
            "pick up the {target} and put it in the {zone}",
            "move the {target} to the {zone}",
            "put the {target} on the {zone}",
        ),
        "heldout": (
            "carry the {target} over and set it down on the {zone}",
            "grab the {target}, then drop it off at the {zone}",
            "transfer that {target} onto the {zone}",
        ),
    },
    "stack": {
        "train": (
            "stack the {target} on the {base}",
            "put the {target} on top of the {base}",
            "place the {target} on the {base}",
            "pick up the {target} and stack it on the {base}",
            "stack the {target} onto the {base}",
        ),
        "heldout": (
            "set the {target} atop that {base}",
            "build a tower: {target} over {base}",
            "balance the {target} above the {base}",
        ),
    },
}


_EXTRA_TEMPLATES: dict[str, tuple[str, ...]] = {  # the augmented split's own paraphrases
    "reach": (
        "point the gripper toward the {target}",
        "approach the {target}",
        "bring the gripper to the {target}",
        "head for the {target}",
        "come close to the {target}",
        "touch the {target} using the gripper",
        "go and touch the {target}",
        "move the hand onto the {target}",
    ),
    "push": (
        "drag the {target} along the table into the {zone}",
        "keep the {target} on the table and slide it to the {zone}",
        "slide the {target} across to the {zone}",
        "bump the {target} into the {zone}",
        "push the {target} along the table so it ends in the {zone}",
        "keep the {target} flat and push it to the {zone}",
        "press the {target} sideways into the {zone}",
        "sweep the {target} into the {zone}",
    ),
    "lift": (
        "pick the {target} up",
        "raise the {target} off the table",
        "pick up the {target} and keep holding it",
        "grip the {target} and raise it",
        "bring the {target} up off the table",
        "seize the {target} and lift it up",
        "clutch the {target} and pick it up",
        "lift up the {target}",
    ),
    "pick_place": (
        "bring the {target} to the {zone}",
        "pick the {target} up and place it in the {zone}",
        "relocate the {target} to the {zone}",
        "lift the {target} and release it in the {zone}",
        "deliver the {target} to the {zone}",
        "lower the {target} into the {zone}",
        "fetch the {target} and leave it in the {zone}",
        "move the {target} into the {zone} by carrying it",
    ),
    "stack": (
        "place the {target} on top of the {base}",
        "pile the {target} on the {base}",
        "lift the {target} and put it on the {base}",
        "put the {target} onto the {base}",
        "stack the {target} on top of the {base}",
        "rest the {target} on the {base}",
        "lay the {target} on the {base}",
        "stack up the {target} on the {base}",
    ),
}
_LARGE_EXTRA_TEMPLATES: dict[str, tuple[str, ...]] = {  # augmented_large's own, on top of augmented's
    "reach": (
        "reach out to the {target}",
        "find the {target} and touch it",
        "locate the {target} and put the gripper on it",
        "press the gripper against the {target}",
        "pat the {target}",
        "brush the {target} lightly",
        "touch the {target} gently",
        "move the gripper next to the {target} and touch it",
        "your job is to touch the {target}",
        "please touch the {target}",
        "the {target}: touch it",
        "tag the {target}",
        "go for the {target} and touch it",
        "aim for the {target}",
        "put your fingers on the {target}",
        "reach toward the {target} and touch it",
    ),
    "push": (
        "push the {target} so it ends up in the {zone}",
        "scoot the {target} into the {zone}",
        "glide the {target} across the table into the {zone}",
        "drive the {target} into the {zone}",
        "shift the {target} into the {zone} by pushing",
        "keep the {target} on the table and move it into the {zone}",
        "do not pick up the {target}; push it to the {zone}",
        "the {target} goes to the {zone}: push it there",
        "push the {target} all the way to the {zone}",
        "please push the {target} into the {zone}",
        "your job is to push the {target} to the {zone}",
        "steer the {target} into the {zone} along the table",
        "into the {zone}, push the {target}",
        "move the {target} into the {zone}, sliding it",
        "herd the {target} into the {zone}",
        "roll the {target} along the table to the {zone}",
    ),
    "lift": (
        "pick up the {target} and keep it up",
        "raise the {target} up",
        "heave the {target} up",
        "lift the {target} off the table and keep it raised",
        "grasp the {target} and raise it off the table",
        "pull the {target} up off the table",
        "boost the {target} upward",
        "keep the {target} in the gripper, raised",
        "your job is to lift the {target}",
        "please lift the {target}",
        "lift the {target} clear of the table",
        "grasp the {target} and bring it up",
        "pluck the {target} off the table",
        "snatch the {target} up",
        "scoop up the {target}",
        "lift and keep the {target} in the gripper",
    ),
    "pick_place": (
        "move the {target} into the {zone} by picking it up",
        "pick up the {target}, move it to the {zone}, and release it",
        "put the {target} into the {zone}",
        "bring the {target} across to the {zone} and let it go",
        "lift the {target} and lower it onto the {zone}",
        "place the {target} onto the {zone}",
        "your job is to put the {target} in the {zone}",
        "please place the {target} in the {zone}",
        "ferry the {target} to the {zone}",
        "haul the {target} to the {zone}",
        "pick the {target} up and leave it on the {zone}",
        "deposit the {target} in the {zone}",
        "park the {target} on the {zone}",
        "store the {target} in the {zone}",
        "the {target} belongs in the {zone}: put it there",
        "into the {zone}, place the {target}",
    ),
    "stack": (
        "stack the {target} upon the {base}",
        "lift the {target} onto the {base}",
        "position the {target} on top of the {base}",
        "pile the {target} onto the {base}",
        "mount the {target} on the {base}",
        "perch the {target} on the {base}",
        "the {target} goes on the {base}",
        "your job is to stack the {target} on the {base}",
        "please put the {target} on top of the {base}",
        "pick up the {target} and lay it on the {base}",
        "cover the {base} by stacking the {target} on it",
        "on the {base}, stack the {target}",
        "onto the {base}, place the {target}",
        "the {base} is the bottom: stack the {target} on it",
        "stack the {target} up on the {base}",
        "lift the {target} and rest it on top of the {base}",
    ),
}
for _task, _extra in _EXTRA_TEMPLATES.items():
    TEMPLATES[_task]["augmented"] = TEMPLATES[_task]["train"] + _extra
    TEMPLATES[_task]["augmented_large"] = TEMPLATES[_task]["augmented"] + _LARGE_EXTRA_TEMPLATES[_task]


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    # A one-word choice draws nothing: the train and heldout splits' instructions for a
    # seed stay what they were before the augmented split's synonyms existed.
    return options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]


def _object_phrase(colour: str, shape: str, split: str, rng: np.random.Generator) -> str:
    return f"{colour} {_pick(_SHAPE_WORDS[split][shape], rng)}"


def make_instruction(task_spec: dict[str, Any], split: str, rng: np.random.Generator) -> str:
    """Phrase ``task_spec`` with a random template of ``split``.

    ``task_spec`` holds ``task``, ``target_colour``, ``target_shape`` and, where the task
    needs them, ``zone_colour`` or ``base_colour``/``base_shape``.
    """
    check_name("instruction split", split, INSTRUCTION_SPLITS)
    task = check_name("task", task_spec["task"], TEMPLATES)
    templates = TEMPLATES[task][split]
    template = templates[int(rng.integers(len(templates)))]
    slots = {"target": _object_phrase(task_spec["target_colour"], task_spec["target_shape"], split, rng)}
    if "zone_colour" in task_spec:
        # Unlike _pick, this draws even from one word: the train split always has, and its
        # seeds' instructions must stay what the datasets recorded.
        zone_words = _ZONE_WORDS[split]
        slots["zone"] = f"{task_spec['zone_colour']} {zone_words[int(rng.integers(len(zone_words)))]}"
    if "base_colour" in task_spec:
        slots["base"] = _object_phrase(task_spec["base_colour"], task_spec["base_shape"], split, rng)
    return template.format(**slots)


@functools.cache  # template_of meets each template once per instruction: compile it once
def _template_pattern(template: str) -> re.Pattern[str]:
    # each slot is a noun phrase ("red cube", "green zone"); the words between are the template's
    slot = r"[a-z]+ [a-z]+"
    return re.compile("^" + re.sub(r"\\\{(?:target|zone|base)\\\}", slot, re.escape(template)) + "$")


def template_of(task: str, split: str, instruction: str) -> str:
    """The template of ``split`` that ``instruction`` was phrased from (slots unfilled), for
    success per wording; a ValueError if no template of that task and split gives it."""
    check_name("instruction split", split, INSTRUCTION_SPLITS)
    templates = TEMPLATES[check_name("task", task, TEMPLATES)][split]
    matches = [t for t in templates if _template_pattern(t).match(instruction)]
    if len(matches) != 1:
        count = len(matches)
        raise ValueError(f"{instruction!r} is not phrased from exactly one {split} template of {task} ({count} match)")
    return matches[0]


def all_instructions(task: str, split: str) -> list[str]:
    """Every distinct instruction ``make_instruction`` can give ``task`` on ``split``: each
    template with every object colour and noun (and every zone or base), for probes that
    need the whole language of a split rather than samples of it."""
    check_name("instruction split", split, INSTRUCTION_SPLITS)
    objects = [(c, shape, f"{c} {w}") for c in OBJECT_COLOURS for shape, ws in _SHAPE_WORDS[split].items() for w in ws]
    zones = [f"{c} {w}" for c in ZONE_COLOURS for w in _ZONE_WORDS[split]]
    texts = []
    for template in TEMPLATES[check_name("task", task, TEMPLATES)][split]:
        for target, zone, base in itertools.product(objects, zones, objects):
            if target[:2] != base[:2]:  # a stack's target and base are two objects
                texts.append(template.format(target=target[2], zone=zone, base=base[2]))
    return list(dict.fromkeys(texts))


def split_fingerprint(split: str) -> str:
    """A short hash of everything that words ``split`` (its templates and nouns): caches of
    worded scenes compare it, so editing a split re-renders them instead of reusing old words."""
    check_name("instruction split", split, INSTRUCTION_SPLITS)
    wording = [{task: TEMPLATES[task][split] for task in TEMPLATES}, _SHAPE_WORDS[split], _ZONE_WORDS[split]]
    return hashlib.sha256(repr(wording).encode()).hexdigest()[:16]


def shape_words(split: str) -> dict[str, tuple[str, ...]]:
    """The nouns ``split`` names each object shape with (cube: ``block`` on heldout, ...)."""
    return _SHAPE_WORDS[check_name("instruction split", split, INSTRUCTION_SPLITS)]


def zone_words(split: str) -> tuple[str, ...]:
    """The nouns ``split`` names a zone with (``zone`` on train, ``mat`` and ``area`` on heldout, ...)."""
    return _ZONE_WORDS[check_name("instruction split", split, INSTRUCTION_SPLITS)]


def heldout_only_words() -> set[str]:
    """Nouns the held-out split uses for objects and zones (never in training templates)."""
    shapes = {word for words in _SHAPE_WORDS["heldout"].values() for word in words}
    return (shapes | set(_ZONE_WORDS["heldout"])) - {w for ws in _SHAPE_WORDS["train"].values() for w in ws}
