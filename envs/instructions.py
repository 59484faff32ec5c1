"""Natural-language instructions, built from a task spec.

Two disjoint splits per task:
- ``train``: the templates demonstrations and training use.
- ``heldout``: paraphrases with different verbs *and* synonyms for the nouns (``block``
  for cube, ``can`` for cylinder, ``mat``/``area`` for zone) that never occur in any
  training template, to measure whether a policy generalises beyond the exact words it saw.

Templates use ``{target}``, ``{zone}`` and ``{base}`` slots; the noun phrases that fill
them are split-specific too (see ``_SHAPE_WORDS`` and ``_ZONE_WORDS``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.vocabulary import check_name

INSTRUCTION_SPLITS = ("train", "heldout")

_SHAPE_WORDS = {
    "train": {"cube": "cube", "cylinder": "cylinder"},
    "heldout": {"cube": "block", "cylinder": "can"},
}
_ZONE_WORDS = {"train": ("zone",), "heldout": ("mat", "area")}

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


def _object_phrase(colour: str, shape: str, split: str) -> str:
    return f"{colour} {_SHAPE_WORDS[split][shape]}"


def make_instruction(task_spec: dict[str, Any], split: str, rng: np.random.Generator) -> str:
    """Phrase ``task_spec`` with a random template of ``split``.

    ``task_spec`` holds ``task``, ``target_colour``, ``target_shape`` and, where the task
    needs them, ``zone_colour`` or ``base_colour``/``base_shape``.
    """
    check_name("instruction split", split, INSTRUCTION_SPLITS)
    task = check_name("task", task_spec["task"], TEMPLATES)
    templates = TEMPLATES[task][split]
    template = templates[int(rng.integers(len(templates)))]
    slots = {"target": _object_phrase(task_spec["target_colour"], task_spec["target_shape"], split)}
    if "zone_colour" in task_spec:
        zone_words = _ZONE_WORDS[split]
        slots["zone"] = f"{task_spec['zone_colour']} {zone_words[int(rng.integers(len(zone_words)))]}"
    if "base_colour" in task_spec:
        slots["base"] = _object_phrase(task_spec["base_colour"], task_spec["base_shape"], split)
    return template.format(**slots)


def heldout_only_words() -> set[str]:
    """Nouns the held-out split uses for objects and zones (never in training templates)."""
    shapes = set(_SHAPE_WORDS["heldout"].values()) - set(_SHAPE_WORDS["train"].values())
    return shapes | set(_ZONE_WORDS["heldout"])
