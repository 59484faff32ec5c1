"""Which frozen text-encoder features tell a held-out noun's shape? (V4)

    python eval/probes/noun_probe.py                                                  # all-mpnet-base-v2
    python eval/probes/noun_probe.py --encoder sentence-transformers/all-MiniLM-L6-v2

The keypoint reader must carry "the red can" over to the cylinder from nouns it was trained
on (the ``augmented_large`` split's 8 cube and 14 cylinder nouns). For each kind of feature,
a logistic probe learns cube-or-cylinder from training sentences (training templates, every
training noun), then reads the held-out nouns ("block", "can") in held-out sentences. Features:

- ``noun_state``: the noun's contextual state (mean over its word pieces): what the reader
  attends to;
- ``word_embedding``: the noun's rows of the encoder's input embedding table, before any layer;
- ``phrase_states``: the mean of the colour's and the noun's contextual states;
- ``sentence``: the sentence embedding (mean of all states, unit length): what the sentence
  token and ``model.keypoint_sentence`` read.

Only sentences with one object are used (not stack), so the sentence has one shape to tell.
Each held-out noun is one word, so read the rates as "this feature carries it or not", not as
a distribution. About a minute on a 2-core CPU; JSON to ``--output``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from envs.instructions import TEMPLATES, shape_words, zone_words
from envs.vocabulary import OBJECT_COLOURS, ZONE_COLOURS
from vla.app.cli import user_errors
from vla.language import MPNET, PRETRAINED_ENCODERS, PretrainedTextEncoder, sentence_embedding

FEATURES = ("noun_state", "word_embedding", "phrase_states", "sentence")
TRAIN_SPLIT = "augmented_large"


def sentences(split: str, count: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(sentence, "colour noun" phrase, shape) for random one-object templates of ``split``."""
    templates = [t for task in TEMPLATES for t in TEMPLATES[task][split] if "{base}" not in t]
    nouns = [(word, shape) for shape, words in shape_words(split).items() for word in words]
    colours, zone = list(OBJECT_COLOURS), f"{next(iter(ZONE_COLOURS))} {zone_words(split)[0]}"
    rows = []
    for _ in range(count):
        word, shape = nouns[int(rng.integers(len(nouns)))]
        phrase = f"{colours[int(rng.integers(len(colours)))]} {word}"
        template = templates[int(rng.integers(len(templates)))]
        rows.append((template.format(target=phrase, zone=zone), phrase, shape))
    return rows


def token_indices(offsets: torch.Tensor, begin: int, end: int) -> list[int]:
    """Positions of the word pieces whose characters lie within [begin, end) of the text."""
    return [k for k, (a, b) in enumerate(offsets.tolist()) if b > a and a >= begin and b <= end]


@torch.no_grad()
def features(encoder: PretrainedTextEncoder, rows: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
    """Each kind of feature (N, the encoder's width) for ``rows``."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in FEATURES}
    table = encoder.model.embeddings.word_embeddings.weight
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        batch = encoder.tokenizer([r[0] for r in chunk], padding=True, return_tensors="pt", return_offsets_mapping=True)
        offsets = batch.pop("offset_mapping")
        states = encoder.model(**batch).last_hidden_state
        out["sentence"].extend(sentence_embedding(states, batch["attention_mask"].bool()))
        for i, (text, phrase, _) in enumerate(chunk):
            phrase_start = text.index(phrase)
            noun_start, end = phrase_start + phrase.index(" ") + 1, phrase_start + len(phrase)
            noun = token_indices(offsets[i], noun_start, end)
            out["noun_state"].append(states[i, noun].mean(0))
            out["word_embedding"].append(table[batch["input_ids"][i, noun]].mean(0))
            out["phrase_states"].append(states[i, token_indices(offsets[i], phrase_start, end)].mean(0))
    return {name: torch.stack(rows) for name, rows in out.items()}


def probe(train_x: torch.Tensor, train_cube: torch.Tensor, seed: int, steps: int = 500) -> Callable:
    """Logistic regression on standardised features, cube = 1: returns features -> is a cube."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    linear = torch.nn.Linear(train_x.shape[1], 1)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(linear((train_x - mean) / std).squeeze(-1), train_cube)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    linear.requires_grad_(False)
    return lambda x: linear((x - mean) / std).squeeze(-1) > 0


def run(seeds: int, count: int, encoder_name: str = MPNET) -> dict:
    if seeds < 1 or count < 10:
        raise ValueError(f"--seeds must be >= 1 and --sentences >= 10, got {seeds} and {count}")
    encoder = PretrainedTextEncoder(encoder_name)
    rng = np.random.default_rng(0)
    train_rows, test_rows = sentences(TRAIN_SPLIT, count, rng), sentences("heldout", max(10, count // 5), rng)
    train_x, test_x = features(encoder, train_rows), features(encoder, test_rows)
    train_cube = torch.tensor([r[2] == "cube" for r in train_rows]).float()
    test_nouns = np.array([r[1].split()[1] for r in test_rows])
    test_cube = np.array([r[2] == "cube" for r in test_rows])
    result: dict = {"encoder": encoder_name, "train_sentences": count}
    result["features"] = {}
    for name in FEATURES:
        reads = [probe(train_x[name], train_cube, seed)(test_x[name]).numpy() for seed in range(seeds)]
        right = np.stack(reads) == test_cube
        result["features"][name] = {
            noun: float(right[:, test_nouns == noun].mean()) for noun in sorted(set(test_nouns.tolist()))
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default=MPNET, help=" | ".join(PRETRAINED_ENCODERS) + " | a local folder")
    parser.add_argument("--seeds", type=int, default=3, help="probes per feature")
    parser.add_argument("--sentences", type=int, default=4000, help="training sentences (held-out: a fifth)")
    parser.add_argument("--output", type=Path, default=Path("outputs/noun_probe.json"))
    args = parser.parse_args()
    with user_errors():
        result = run(args.seeds, args.sentences, args.encoder)
    nouns = list(next(iter(result["features"].values())))
    print(f"held-out nouns read as the right shape from {args.encoder}, by probes trained on {TRAIN_SPLIT}'s")
    print("| feature | " + " | ".join(f'"{n}"' for n in nouns) + " |")
    print("|---|" + "---|" * len(nouns))
    for name, rates in result["features"].items():
        print(f"| {name} | " + " | ".join(f"{100 * rates[n]:.0f}%" for n in nouns) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
