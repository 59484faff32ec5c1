"""The nouns of the tabletop world: object colours, object shapes and goal-zone colours.

Every name that can appear in an instruction or a task spec is defined here once, so
validation errors can list the valid values and instructions stay in sync with the scene.
Colours are chosen far apart in hue so they stay distinguishable at 64 x 64 pixels.
"""

from __future__ import annotations

from collections.abc import Iterable

OBJECT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.12, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
}

OBJECT_SHAPES: tuple[str, ...] = ("cube", "cylinder")

# Zones are flat mats on the table; their colours never overlap the object colours, so
# "the purple zone" can never be confused with an object.
ZONE_COLOURS: dict[str, tuple[float, float, float]] = {
    "purple": (0.55, 0.20, 0.75),
    "white": (0.95, 0.95, 0.95),
    "orange": (1.00, 0.50, 0.05),
}


def scene_nouns() -> dict[str, list[str]]:
    """Every colour an instruction can name -> the nouns of the things of that colour."""
    return {**{c: list(OBJECT_SHAPES) for c in OBJECT_COLOURS}, **{c: ["zone"] for c in ZONE_COLOURS}}


def colour_palette() -> dict[str, list[float]]:
    """Every colour an instruction can name (objects and zones) -> its sRGB in [0, 1]."""
    return {name: list(rgb) for name, rgb in {**OBJECT_COLOURS, **ZONE_COLOURS}.items()}


def check_name(kind: str, value, allowed: Iterable):
    """Return ``value`` if it is one of ``allowed``, else raise a ValueError listing them."""
    allowed = list(allowed)
    if value not in allowed:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"unknown {kind} {shown}; valid values are: {', '.join(map(str, allowed))}")
    return value


def check_colour(colour: str) -> str:
    return check_name("object colour", colour, OBJECT_COLOURS)


def check_shape(shape: str) -> str:
    return check_name("object shape", shape, OBJECT_SHAPES)


def check_zone_colour(colour: str) -> str:
    return check_name("zone colour", colour, ZONE_COLOURS)


def object_name(colour: str, shape: str) -> str:
    """The MuJoCo body name of an object, e.g. ``red_cube``."""
    if isinstance(colour, str) and isinstance(shape, str):  # tasks ask several times a step
        name = _OBJECT_NAMES.get((colour, shape))
        if name is not None:
            return name
    return f"{check_colour(colour)}_{check_shape(shape)}"  # raises the error naming the bad value


_OBJECT_NAMES = {(c, s): f"{c}_{s}" for c in OBJECT_COLOURS for s in OBJECT_SHAPES}


def all_objects() -> list[tuple[str, str]]:
    """Every (colour, shape) pair the scene contains."""
    return [(c, s) for c in OBJECT_COLOURS for s in OBJECT_SHAPES]
