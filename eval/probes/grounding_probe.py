"""Does the keypoint reader still point at the right object when the words are new? (V4, V25)

    python eval/probes/grounding_probe.py data.instructions=augmented_large
    python eval/probes/grounding_probe.py model=large grounding.scenes=30000 grounding.steps=3000

Runs only the grounding pretraining of ``train/bc.py`` (the same Hydra config and overrides:
``configs/bc.yaml``'s ``grounding`` group, the model's keypoint reader, ``data.instructions``
for the wordings it learns from), then measures how far each keypoint lands from the truth
on the scenes grounding kept out, once in the training split's words and once re-worded with
the held-out paraphrases ("block", "can", "mat", "hoist ..."). The paraphrase rows break the
error down by held-out template, by whether the target's same-colour sibling is on the table
(where the colour alone cannot tell), and by the noun that names the target or the destination,
so a reader that fails one word ("can") or one sentence shape ("build a tower: X over Y")
shows it. No demos and no behaviour cloning: ~5 minutes on a 2-core CPU at the defaults.
Writes ``grounding_probe.json`` to the run directory (``run_dir``, with its ``outputs/bc/``
made ``outputs/grounding_probe/``) and prints the tables as markdown.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import DictConfig

from envs.instructions import heldout_only_words, template_of
from envs.stats import format_rate
from vla.app.cli import hydra_entry
from vla.policy import VLAPolicy
from vla.training.grounding import (
    ground_and_measure,
    heldout_scene_count,
)
from vla.training.runtime import policy_config, seed_everything

HELDOUT_NOUNS = heldout_only_words()  # block, can, mat, area
MISS_PX = 2.0  # beyond this the keypoint is off the object (about 2 cm on the table at 64 px)


def error_rows(errors: torch.Tensor, groups: list[tuple[str, ...]]) -> list[dict]:
    """Mean error and share of misses per group; ``errors`` (N,) px, one group key per row."""
    by_group: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for key, error in zip(groups, errors.tolist(), strict=True):
        by_group[key].append(error)
    rows = []
    for key, values in sorted(by_group.items()):
        missed = sum(v > MISS_PX for v in values)
        rows.append({"group": list(key), "scenes": len(values), "mean_px": sum(values) / len(values), "missed": missed})
    return rows


def noun_of(keypoint: str, instruction: str) -> str:
    """The held-out noun that names ``keypoint`` (target or destination) in a held-out
    instruction: every held-out template names the target first; reach and lift have no
    destination of their own (their destination keypoint is the target)."""
    nouns = [w for w in instruction.replace(",", " ").replace(":", " ").split() if w in HELDOUT_NOUNS]
    return nouns[1] if keypoint == "destination" and len(nouns) > 1 else nouns[0]


def probe(cfg: DictConfig, progress: bool = True) -> dict:
    """Ground a fresh keypoint reader as ``train/bc.py`` would and measure it (see module doc)."""
    g = cfg.grounding
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    config = policy_config(cfg.model)
    if config.keypoints != 2:
        raise ValueError(f"the grounding probe needs model.keypoints=2, got {config.keypoints}")
    seed_everything(cfg.seed)
    policy = VLAPolicy(config).to(device)
    split = cfg.data.instructions
    result, reworded, errors = ground_and_measure(policy, g, cfg.seed, config.image_size, split, progress)
    # errors (N, 2): target, destination on the kept-out scenes worded as held-out paraphrases
    tasks = [str(t) for t in reworded["tasks"]]
    texts = [str(t) for t in reworded["instructions"]]
    templates = [template_of(task, "heldout", text) for task, text in zip(tasks, texts, strict=True)]
    by_template = [(task, template) for task, template in zip(tasks, templates, strict=True)]
    return {
        "split": split,
        "scenes": g.scenes,
        "steps": g.steps,
        "kind_weight": g.kind_weight,
        "text_encoder": config.text_encoder,
        "kept_out_scenes": heldout_scene_count(g.scenes),
        **result,
        "target_by_template": error_rows(errors[:, 0], by_template),
        "destination_by_template": error_rows(errors[:, 1], by_template),
        "target_by_sibling": error_rows(
            errors[:, 0],
            [
                (t, "sibling on the table" if on else "no sibling")
                for t, on in zip(tasks, reworded["target_sibling"], strict=True)
            ],
        ),
        **{
            f"{keypoint}_by_noun": error_rows(
                errors[:, k], [(t, noun_of(keypoint, x)) for t, x in zip(tasks, texts, strict=True)]
            )
            for k, keypoint in enumerate(("target", "destination"))
        },
    }


def markdown(report: dict) -> str:
    lines = [
        f"grounding on `{report['split']}` wordings, {report['scenes']} scenes, {report['steps']} steps; "
        f"{report['kept_out_scenes']} kept-out scenes: {report['heldout_error_px']:.2f} px mean in training words, "
        f"{report['paraphrase_error_px']:.2f} px re-worded as held-out paraphrases",
        "",
        "| task | held-out template | scenes | target px | target missed (>2 px) | destination px | missed |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, destination in zip(report["target_by_template"], report["destination_by_template"], strict=True):
        task, template = target["group"]
        n = target["scenes"]
        lines.append(
            f"| {task} | {template} | {n} | {target['mean_px']:.2f} | {format_rate(target['missed'], n)} | "
            f"{destination['mean_px']:.2f} | {format_rate(destination['missed'], n)} |"
        )
    lines += [
        "",
        "| task | target's same-colour sibling | scenes | target px | missed (>2 px) |",
        "|---|---|---|---|---|",
    ]
    for row in report["target_by_sibling"]:
        (task, sibling), n = row["group"], row["scenes"]
        lines.append(f"| {task} | {sibling} | {n} | {row['mean_px']:.2f} | {format_rate(row['missed'], n)} |")
    lines += ["", "| task | keypoint | held-out noun | scenes | px | missed (>2 px) |", "|---|---|---|---|---|---|"]
    for keypoint in ("target", "destination"):
        for row in report[f"{keypoint}_by_noun"]:
            task, noun = row["group"]
            n = row["scenes"]
            lines.append(
                f"| {task} | {keypoint} | {noun} | {n} | {row['mean_px']:.2f} | {format_rate(row['missed'], n)} |"
            )
    return "\n".join(lines)


def main(cfg: DictConfig) -> None:
    report = probe(cfg, progress=cfg.trainer.progress)
    out = Path(cfg.run_dir.replace("bc/", "grounding_probe/"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "grounding_probe.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"written: {out / 'grounding_probe.json'}")


if __name__ == "__main__":
    hydra_entry("bc", main)
