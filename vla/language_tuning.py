"""Paraphrase tuning: teach the pretrained sentence encoder that wordings of one task mean the same.

MiniLM stays frozen while the policy learns (its states are cached per instruction). Before
that, this stage fine-tunes it briefly on the training split's own wordings: a batch holds
``batch_size`` random task specs (task, target, destination), each phrased twice by
``envs.instructions.make_instruction`` with independent draws of template and nouns, and the
loss is the symmetric in-batch InfoNCE over their sentence embeddings: each wording must be
closer to the other wording of its spec than to any other spec's (the
MultipleNegativesRankingLoss sentence-transformers are fine-tuned with; SetFit tunes few-shot
text classifiers this way). Two specs that happen to be equal in a batch are not counted as
negatives of each other. The held-out split is never seen: what the held-out paraphrases
then measure is whether the structure learnt from training wordings carries over to new
verbs and nouns.

Why: the frozen MiniLM reads a held-out verb as another task (a linear reader on its sentence
embedding names the task of 81% of held-out paraphrases) and a held-out noun's state as the
wrong shape; both are about which wordings mean the same thing, which is what this loss teaches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from envs.instructions import TRAINING_SPLITS, make_instruction
from envs.tasks import TASK_CLASSES, make_task
from envs.vocabulary import check_name
from vla.language import MiniLMEncoder, PretrainedTextEncoder, pretrained_encoder, sentence_embedding
from vla.training import warmup_cosine

SPEC_KEYS = ("task", "target_colour", "target_shape", "zone_colour", "base_colour", "base_shape")
_TASKS = [make_task(name) for name in TASK_CLASSES]  # each samples its own specs


def random_spec(rng: np.random.Generator) -> dict[str, Any]:
    """A task spec as ``make_instruction`` reads it: a random task, then that task's own
    ``Task.sample_spec`` (its target and, where it has one, its zone or base object)."""
    return _TASKS[int(rng.integers(len(_TASKS)))].sample_spec(rng)


def paraphrase_loss(
    first: torch.Tensor, second: torch.Tensor, same_spec: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE of two (B, D) unit-length embeddings, row i of each a wording of
    spec i; ``same_spec`` (B, B) marks pairs of equal specs, which are not negatives."""
    logits = first @ second.T / temperature
    others_equal = same_spec & ~torch.eye(len(first), dtype=torch.bool, device=first.device)
    logits = logits.masked_fill(others_equal, float("-inf"))
    labels = torch.arange(len(first), device=first.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def tune_encoder(
    encoder: MiniLMEncoder,
    split: str,
    steps: int,
    batch_size: int = 32,  # the defaults are configs/bc.yaml's language group
    lr: float = 5e-5,
    temperature: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Paraphrase-tune ``encoder``'s MiniLM in place on wordings of ``split`` (see the module
    doc), then freeze it again (unless it was trainable) and empty its cache, so the policy's
    states come from the tuned weights. Returns the loss of the first and the last steps."""
    check_name("instruction split to tune on", split, TRAINING_SPLITS)
    if steps < 1 or batch_size < 2:
        raise ValueError(f"language tuning needs steps >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    rng = np.random.default_rng(seed)
    model = encoder.model
    device = next(model.parameters()).device
    model.requires_grad_(True)
    model.train()  # its dropout on, as sentence-transformers fine-tune
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, max(1, steps // 10), steps))
    losses = []
    for _ in tqdm(range(steps), desc="language tuning", disable=not progress):
        specs = [random_spec(rng) for _ in range(batch_size)]
        wordings = [make_instruction(s, split, rng) for s in specs] + [make_instruction(s, split, rng) for s in specs]
        embeddings = sentence_embedding(*encoder._encode(wordings, device))
        keys = [tuple(s.get(k) for k in SPEC_KEYS) for s in specs]
        same = torch.tensor([[a == b for b in keys] for a in keys], device=device)
        loss = paraphrase_loss(embeddings[:batch_size], embeddings[batch_size:], same, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.requires_grad_(encoder.trainable)
    encoder.train(encoder.training)  # back to eval mode where frozen
    encoder.clear_cache()
    window = max(1, min(20, steps // 5))
    return {"first_loss": float(np.mean(losses[:window])), "last_loss": float(np.mean(losses[-window:]))}


def probe_encoder(kind: str, split: str, tune_steps: int) -> tuple[PretrainedTextEncoder, dict[str, float] | None]:
    """The frozen encoder ``kind`` a language probe reads (eval/language_probe.py,
    eval/noun_probe.py), paraphrase-tuned on ``split`` first when ``tune_steps`` > 0 (MiniLM
    only), and the tuning's losses (None untuned)."""
    if tune_steps > 0 and kind != "minilm":
        raise ValueError(f"--tune-steps tunes MiniLM: it needs --encoder minilm, got {kind!r}")
    encoder = pretrained_encoder(kind)
    return encoder, tune_encoder(encoder, split, tune_steps) if tune_steps > 0 else None


def tune_policy_language(policy: Any, language: Any, split: str, seed: int, progress: bool = True) -> dict | None:
    """The language stage of ``train/bc.py`` (and ``eval/grounding_probe.py``): paraphrase-tune
    the policy's MiniLM on ``split`` as ``configs/bc.yaml``'s ``language`` group sets it (steps,
    batch_size, lr, temperature) when ``model.text_encoder=minilm_tuned``; None for any other
    text encoder."""
    if policy.config.text_encoder != "minilm_tuned":
        return None
    settings = {k: language[k] for k in ("steps", "batch_size", "lr", "temperature")}
    return settings | tune_encoder(policy.text, split, seed=seed, progress=progress, **settings)
