"""Colour words the policy was never taught, read as the world's colours they look like.

A sentence encoder learned colour words from text, not from pixels: "crimson" and "red" are
not neighbours in its embedding (crimson's nearest training word is "reddish", then
"purple"; "emerald" is nearest "sapphire"). People name colours freely, so the policy reads
a colour word through what it looks like instead: the xkcd colour survey (949 names people
gave to colours, with their sRGB values, vla/colour_names.tsv) gives the word a colour, and
the word is replaced by the name of the world's colour (``palette``) of nearest hue in
CIELAB. "Pick up the crimson block" is read as "pick up the red block".

It refuses what a person would: a basic colour term (Berlin and Kay's eleven: "pink",
"brown", "black", ...) names its own category and is never read as another, a colour whose
hue lies far from every palette colour ("teal", "magenta") or between two of them ("amber":
yellow or orange?) stays as typed, and so do greys that are not near white. Then the
policy's out-of-scope check sees a colour it does not know.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

NAMES_FILE = Path(__file__).with_name("colour_names.tsv")
# Berlin and Kay's basic colour terms: distinct categories in every language that has them.
BASIC_TERMS = frozenset(
    {"black", "white", "red", "green", "yellow", "blue", "brown", "purple", "pink", "orange", "grey", "gray"}
)
MIN_CHROMA = 30.0  # CIELAB chroma below which a colour is a grey (its hue means little)
WHITE_LIGHTNESS = 90.0  # a grey at least this light (L*) reads as white
MAX_HUE_GAP = 35.0  # degrees: a colour this far in hue from every palette colour stays unknown
MIN_HUE_MARGIN = 3.0  # degrees: nearer one palette colour than the next by less is ambiguous
LONGEST_NAME = 3  # words in the longest name looked up ("light grass green")


@lru_cache(maxsize=1)
def colour_names() -> dict[str, tuple[float, float, float]]:
    """The xkcd survey's colour names -> sRGB in [0, 1]."""
    table = {}
    for line in NAMES_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, hex_value = line.split("\t")
        table[name] = tuple(int(hex_value[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return table


def lch(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """sRGB in [0, 1] -> CIE L*C*h (lightness 0-100, chroma, hue in degrees), D65 white."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    r, g, b = linear
    xyz = (
        (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047,
        0.2126 * r + 0.7152 * g + 0.0722 * b,
        (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883,
    )
    fx, fy, fz = (t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz)
    lightness, a, b_ = 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)
    return lightness, math.hypot(a, b_), math.degrees(math.atan2(b_, a)) % 360


def _hue_gap(h1: float, h2: float) -> float:
    gap = abs(h1 - h2) % 360
    return min(gap, 360 - gap)


class ColourWords:
    """``ColourWords(palette)(text)``: ``text`` (normalised: lower case, single spaces) with each
    colour name outside ``palette`` (colour name -> sRGB in [0, 1]) replaced by the palette
    colour it looks like, where there is one (module docstring)."""

    def __init__(self, palette: dict[str, list[float] | tuple[float, float, float]]):
        if not palette:
            raise ValueError("ColourWords needs a palette: the world's colour names and their sRGB values")
        for name, rgb in palette.items():
            if len(rgb) != 3 or not all(0.0 <= float(c) <= 1.0 for c in rgb):
                raise ValueError(f"palette colour {name!r} must be 3 sRGB values in [0, 1], got {list(rgb)}")
        self.palette = {name: tuple(float(c) for c in rgb) for name, rgb in palette.items()}
        looks = {name: lch(rgb) for name, rgb in self.palette.items()}
        self._chromatic = {n: h for n, (_, c, h) in looks.items() if c >= MIN_CHROMA}
        self._white = [n for n, (lightness, c, _) in looks.items() if c < MIN_CHROMA and lightness >= WHITE_LIGHTNESS]
        self.reading = {name: self._read(name, rgb) for name, rgb in colour_names().items()}

    def _read(self, name: str, rgb: tuple[float, float, float]) -> str | None:
        """The palette colour that colour name ``name`` (of sRGB ``rgb``) reads as, or None."""
        if name in self.palette:
            return name
        last = name.split(" ")[-1]
        if last in self.palette:  # "sky blue", "forest green": the head word names the category
            return last
        if name in BASIC_TERMS or last in BASIC_TERMS:  # "pink", "hot pink": a category of its own
            return None
        lightness, chroma, hue = lch(rgb)
        if chroma < MIN_CHROMA:
            return self._white[0] if lightness >= WHITE_LIGHTNESS and self._white else None
        gaps = sorted((_hue_gap(hue, h), n) for n, h in self._chromatic.items())
        if not gaps or gaps[0][0] > MAX_HUE_GAP:
            return None
        if len(gaps) > 1 and gaps[1][0] - gaps[0][0] < MIN_HUE_MARGIN:
            return None
        return gaps[0][1]

    def __call__(self, text: str) -> str:
        words, out, i = text.split(" "), [], 0
        after_colour = False  # a colour word right after a colour is a noun: "the yellow brick"
        while i < len(words):
            for size in range(min(LONGEST_NAME, len(words) - i), 0, -1):
                name = " ".join(words[i : i + size])
                if name in self.reading and not after_colour:
                    read = self.reading[name]
                    out.append(read if read is not None else name)
                    i += size
                    after_colour = True
                    break
            else:
                after_colour = False
                out.append(words[i])
                i += 1
        return " ".join(out)
