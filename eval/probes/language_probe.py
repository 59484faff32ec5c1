"""Can the task be told from the frozen language features of a paraphrase it never saw? (V4)

    python eval/probes/language_probe.py                       # train on the train split
    python eval/probes/language_probe.py --train-split augmented
    python eval/probes/language_probe.py --train-split augmented_large    # all-mpnet-base-v2
    python eval/probes/language_probe.py --train-split augmented_large --encoder sentence-transformers/all-MiniLM-L6-v2

Every distinct instruction of a training split is encoded once by the frozen MiniLM (as the
policy's text encoder does), and small classifiers learn to name the task from it. They are
then asked about every held-out paraphrase ("hoist", "shove", "block", "mat"), and the report
gives the share per held-out wording too (to set beside ``eval/probes/by_wording.py``). Two readers:

- ``attention``: one learned query attends over the projected token states, as the policy's
  decoder reads the instruction tokens;
- ``linear``: a linear layer on the mean-pooled sentence embedding, the vector MiniLM was
  trained to make similar for paraphrases.

The score is balanced accuracy on the held-out split (the mean of the per-task accuracies:
stack has many more wordings than reach), averaged over seeds, and a confusion table. Runs
in about a minute on a laptop CPU; results go to ``--output`` as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from envs.instructions import TEMPLATES, TRAINING_SPLITS, all_instructions, template_of
from vla.app.cli import user_errors
from vla.language import MPNET, PRETRAINED_ENCODERS, PretrainedTextEncoder

TASKS = tuple(TEMPLATES)
READERS = ("attention", "linear")


MAX_WORDINGS_PER_TASK = 3000  # augmented_large has up to 68k per task: a fixed sample of them


def encode_split(encoder: PretrainedTextEncoder, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token states (N, L, 384), their mask (N, L) and task labels (N,) of every instruction
    (of a fixed random ``MAX_WORDINGS_PER_TASK`` of a task's, where it has more)."""
    texts, labels = [], []
    for label, task in enumerate(TASKS):
        wordings = all_instructions(task, split)
        if len(wordings) > MAX_WORDINGS_PER_TASK:
            keep = np.random.default_rng(label).choice(len(wordings), MAX_WORDINGS_PER_TASK, replace=False)
            wordings = [wordings[i] for i in sorted(keep)]
        texts += wordings
        labels += [label] * len(wordings)
    states, masks = [], []
    for start in range(0, len(texts), 256):  # bounded memory; padded to one length below
        s, m = encoder(texts[start : start + 256], torch.device("cpu"))
        states.append(s)
        masks.append(m)
    length = max(s.shape[1] for s in states)
    states = torch.cat([nn.functional.pad(s, (0, 0, 0, length - s.shape[1])) for s in states])
    masks = torch.cat([nn.functional.pad(m, (0, length - m.shape[1])) for m in masks])
    return states, masks, torch.tensor(labels)


class AttentionReader(nn.Module):
    """One learned query over the projected token states, like the decoder's view of them."""

    def __init__(self, in_dim: int, width: int = 64):
        super().__init__()
        self.project = nn.Linear(in_dim, width)
        self.query = nn.Parameter(torch.randn(width) / width**0.5)
        self.head = nn.Linear(width, len(TASKS))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys = self.project(states)
        weights = (keys @ self.query).masked_fill(~mask, float("-inf")).softmax(1)
        return self.head((weights.unsqueeze(-1) * keys).sum(1))


class LinearReader(nn.Module):
    """A linear layer on the mean-pooled, normalised sentence embedding."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.head = nn.Linear(in_dim, len(TASKS))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(nn.functional.normalize(pooled, dim=-1) * 8.0)  # x8: a usable logit scale


def train_reader(kind: str, data: tuple, steps: int, seed: int, batch_size: int = 512) -> nn.Module:
    """Adam on cross-entropy over random batches, each task weighted equally."""
    states, mask, labels = data
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reader = (AttentionReader if kind == "attention" else LinearReader)(states.shape[-1])
    counts = torch.bincount(labels, minlength=len(TASKS)).float()
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (len(TASKS) * counts))
    optimizer = torch.optim.Adam(reader.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = torch.randperm(len(labels), generator=generator)[:batch_size]
        loss = loss_fn(reader(states[batch], mask[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return reader.eval()


def predict(reader: nn.Module, data: tuple) -> np.ndarray:
    states, mask, _ = data
    with torch.no_grad():
        return reader(states, mask).argmax(1).numpy()


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(true task, predicted task) counts."""
    table = np.zeros((len(TASKS), len(TASKS)), dtype=np.int64)
    np.add.at(table, (labels, predicted), 1)
    return table


def heldout_templates() -> list[tuple[str, str]]:
    """(task, template) of every held-out wording, in ``encode_split``'s order."""
    return [(task, template_of(task, "heldout", text)) for task in TASKS for text in all_instructions(task, "heldout")]


def accuracy_by_wording(labels: np.ndarray, predictions: list[np.ndarray]) -> list[dict]:
    """Per held-out template: the share of its wordings (every colour and noun) read as the
    right task, over all seeds' readers, and the task most often read instead."""
    templates = heldout_templates()
    rows = []
    for task, template in dict.fromkeys(templates):
        rows_of = np.array([t == (task, template) for t in templates])
        guesses = np.concatenate([p[rows_of] for p in predictions])
        right = guesses == labels[rows_of][0]
        wrong = np.bincount(guesses[~right], minlength=len(TASKS))
        instead = TASKS[int(wrong.argmax())] if wrong.any() else ""
        rows.append({"task": task, "template": template, "accuracy": float(right.mean()), "mostly_read_as": instead})
    return rows


def balanced_accuracy(table: np.ndarray) -> float:
    return float(np.mean(np.diag(table) / table.sum(1)))


def run_probe(train_split: str, steps: int, seeds: int, encoder_name: str = MPNET) -> dict:
    if train_split not in TRAINING_SPLITS:
        raise ValueError(f"--train-split must be one of {', '.join(TRAINING_SPLITS)}, got {train_split!r}")
    if steps < 1 or seeds < 1:
        raise ValueError(f"--steps and --seeds must be at least 1, got {steps} and {seeds}")
    encoder = PretrainedTextEncoder(encoder_name)
    training, heldout = encode_split(encoder, train_split), encode_split(encoder, "heldout")
    result = {"train_split": train_split, "train_wordings": len(training[2]), "heldout_wordings": len(heldout[2])}
    result["encoder"] = encoder_name
    labels = heldout[2].numpy()
    for kind in READERS:
        predictions = [predict(train_reader(kind, training, steps, seed), heldout) for seed in range(seeds)]
        tables = [confusion(labels, p) for p in predictions]
        result[kind] = {
            "balanced_accuracy": float(np.mean([balanced_accuracy(t) for t in tables])),
            "per_seed": [balanced_accuracy(t) for t in tables],
            "confusion_seed0": tables[0].tolist(),
            "by_wording": accuracy_by_wording(labels, predictions),
        }
    return result


def print_report(result: dict) -> None:
    print(
        f"task from frozen {result['encoder']} features: "
        f"trained on {result['train_wordings']} {result['train_split']} "
        f"wordings, tested on {result['heldout_wordings']} held-out paraphrases"
    )
    print("| reader | held-out balanced accuracy | per seed |")
    print("|---|---|---|")
    for kind in READERS:
        r = result[kind]
        print(
            f"| {kind} | {100 * r['balanced_accuracy']:.1f}% | {', '.join(f'{100 * a:.0f}%' for a in r['per_seed'])} |"
        )
    for kind in READERS:
        print(f"\nconfusion, {kind} reader, seed 0 (rows: true task, columns: predicted)")
        print("| | " + " | ".join(TASKS) + " |")
        print("|---" * (len(TASKS) + 1) + "|")
        for task, row in zip(TASKS, result[kind]["confusion_seed0"], strict=True):
            print(f"| {task} | " + " | ".join(map(str, row)) + " |")
    print("\nper held-out wording: share read as the right task (all seeds), and what it is read as instead")
    print("| task | wording | " + " | ".join(READERS) + " |")
    print("|---|---|" + "---|" * len(READERS))
    for i, row in enumerate(result[READERS[0]]["by_wording"]):
        cells = []
        for kind in READERS:
            r = result[kind]["by_wording"][i]
            cells.append(
                f"{100 * r['accuracy']:.0f}%" + (f" (else {r['mostly_read_as']})" if r["mostly_read_as"] else "")
            )
        print(f"| {row['task']} | {row['template']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-split", default="train", help=" | ".join(TRAINING_SPLITS) + " (default: train)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (batches of 512) per reader")
    parser.add_argument("--seeds", type=int, default=3, help="readers trained per kind")
    parser.add_argument("--encoder", default=MPNET, help=" | ".join(PRETRAINED_ENCODERS) + " | a local folder")
    parser.add_argument("--output", type=Path, default=Path("outputs/language_probe.json"))
    args = parser.parse_args()
    with user_errors():
        result = run_probe(args.train_split, args.steps, args.seeds, args.encoder)
    print_report(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
