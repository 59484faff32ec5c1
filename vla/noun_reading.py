"""Nouns the policy was never taught, read as the things in view they can name.

People call one object many things: "the red block", "the blue can", "the white mat". A
sentence encoder does not tie such nouns to this world's shapes ("can" lies nearer "zone"
than "cylinder" in all-mpnet-base-v2), and a small keypoint reader, trained on the nouns of
the templates, points elsewhere on them. A person settles the word by looking: of the red
things on the table, which one can "the red block" be?

``NounReading(scene_nouns)`` knows which nouns go with each colour of this world
(``{"red": ["cube", "cylinder"], "white": ["zone"], ...}``). A word right after a world
colour that is not one of its nouns (nor a function word: "the red one" is read, "red and
blue" is not) is read as one of that colour's nouns: ``readings(text)`` lists every
combination. ``vla.inference.PolicyRunner`` picks the reading whose named things the
keypoint reader finds in view; where several are (a red cube and a red cylinder both on the
table), the one whose noun the encoder finds nearest the typed word ("canister" is nearer
"cylinder" than "cube"). It decides once per instruction, at its first sighting, after the
out-of-scope check has judged the typed wording: which instructions stop is unchanged (an
unknown shape, "the red sphere", that the reader finds nowhere still stops).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

# Words that can follow a colour without being its noun ("red and blue", "the white one to")
FUNCTION_WORDS = frozenset(
    "a an and at by for from in into it its near next of on onto or over please so that the then "
    "to toward towards under with".split()
)
MAX_READINGS = 16  # an instruction naming more unknown nouns than this allows is read as typed


@dataclass(frozen=True)
class Phrase:
    """A word after a world colour that is none of that colour's nouns."""

    index: int  # the word's position in the instruction
    word: str
    options: tuple[str, ...]  # the nouns it may be read as


class NounReading:
    """``readings(text)``: ``text`` (normalised: lower case, single spaces) with its unknown
    nouns read as each combination of the world's nouns their colours allow (module docstring)."""

    def __init__(self, scene_nouns: dict[str, list[str]]):
        if not scene_nouns:
            raise ValueError("NounReading needs the world's nouns per colour, e.g. {'red': ['cube', 'cylinder']}")
        for colour, nouns in scene_nouns.items():
            if not nouns or not all(isinstance(n, str) and n.strip() == n and " " not in n and n for n in nouns):
                raise ValueError(f"scene_nouns[{colour!r}] must be a non-empty list of single words, got {nouns!r}")
        self.scene_nouns = {colour: tuple(nouns) for colour, nouns in scene_nouns.items()}
        self.nouns = frozenset(n for nouns in self.scene_nouns.values() for n in nouns)

    def phrases(self, text: str) -> list[Phrase]:
        """The unknown nouns of ``text``, in order."""
        words = text.split(" ")
        found = []
        for i, word in enumerate(words[:-1]):
            options = self.scene_nouns.get(word)
            after = words[i + 1 : i + 3]  # "the red cubic block" names its noun one word later
            if options is None or any(w in self.nouns for w in after):
                continue
            noun = words[i + 1]
            if noun not in FUNCTION_WORDS and noun not in self.scene_nouns:
                found.append(Phrase(i + 1, noun, options))
        return found

    def readings(self, text: str) -> list[str]:
        """Every reading of ``text`` with its unknown nouns replaced ([``text``] where it has none)."""
        phrases = self.phrases(text)
        combinations = list(itertools.islice(itertools.product(*(p.options for p in phrases)), MAX_READINGS + 1))
        if not phrases or len(combinations) > MAX_READINGS:
            return [text]
        words = text.split(" ")
        readings = []
        for nouns in combinations:
            read = list(words)
            for phrase, noun in zip(phrases, nouns, strict=True):
                read[phrase.index] = noun
            readings.append(" ".join(read))
        return readings
