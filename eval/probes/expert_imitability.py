"""How hard is each scripted expert to imitate, with perception taken out of the question?

The perception oracle (``eval/probes/perception_oracle.py``) showed that even given the true object
positions, the camera policy solves push in 40% of episodes where it solves reach and lift in
100%. That points at the push expert's behaviour itself: something one-step imitation does
not reproduce. Training the camera policy takes 15 minutes on this CPU per variant; this
script answers the same question in about a minute, so experts can be compared quickly:

- demos: the expert with its collection noise (DART: the clean label is recorded), on the
  collection seeds, keeping only the state a policy could read: proprio plus the true target
  and destination centres (``info["key_positions"]``);
- policy: a small MLP that outputs the 7 action tokens in one pass (256 uniform bins each,
  the VLA's tokenizer, cross-entropy per dimension: the VLA's parallel decoding, without
  images or language); ``--label-sigma`` spreads each label over its neighbouring bins as
  the VLA's ``model.label_sigma`` does, at a fraction of the VLA's cost per comparison;
- closed loop: greedy tokens on the evaluation seeds, with the milestone funnel
  (``envs/milestones.py``) saying where failed episodes stalled.

    python eval/probes/expert_imitability.py --tasks reach push lift --demos 300 --episodes 100

The numbers are not the VLA's: they rank experts by how well a state-based imitator follows
them, the part of the failure a better vision model cannot fix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from envs.camera import TrueKeypoints
from envs.collection import record_expert_episode
from envs.evaluation import evaluate
from envs.milestones import describe
from envs.progress import progress as progress_bar
from envs.tasks import resolve_tasks, task_ids
from vla.tokenizer import ActionTokenizer, soft_bin_targets

ACTION_DIM = 7
IMAGE_SIZE = 32  # frames are rendered but never read: the smallest the env allows keeps it cheap


# The imitator reads the proprio elements it read when docs/results.md's imitability numbers
# were measured (2026-12-03): pose and gripper opening, not the velocity added later that day.
IMITATOR_PROPRIO = 8


def state_of(proprio: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
    """What the imitator reads: proprio (grip position, orientation, opening) and the true
    target and destination centres; one step or a stack of them."""
    return np.concatenate([proprio[..., :IMITATOR_PROPRIO], key_positions], -1).astype(np.float32)


def collect(task: str, demos: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """States and clean expert labels of ``demos`` episodes, and the expert's own success rate."""
    env = gym.make(task_ids([task])[0], image_size=IMAGE_SIZE)
    states, labels, successes = [], [], 0
    for i in progress_bar(range(demos), desc=f"demos ({task})", leave=False):
        record = record_expert_episode(env, seed + i, noise)
        states.append(state_of(record.proprio, record.key_positions))
        labels.append(record.actions)
        successes += record.success
    env.close()
    return np.concatenate(states), np.concatenate(labels), successes / demos


class TokenMLP(nn.Module):
    """State in, 7 x ``bins`` logits out; the input is standardised with the demos' statistics."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, bins: int, width: int = 256):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean))
        self.register_buffer("std", torch.as_tensor(np.maximum(std, 1e-6)))
        self.bins = bins
        self.net = nn.Sequential(
            nn.Linear(len(mean), width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, ACTION_DIM * bins),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.net((states - self.mean) / self.std).view(-1, ACTION_DIM, self.bins)


def train(
    states: np.ndarray, labels: np.ndarray, tokenizer: ActionTokenizer, steps: int, seed: int, label_sigma: float = 0.0
) -> TokenMLP:
    torch.manual_seed(seed)
    model = TokenMLP(states.mean(0), states.std(0), tokenizer.bins)
    x = torch.as_tensor(states)
    y = torch.as_tensor(tokenizer.encode(labels)).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    label_rows = soft_bin_targets(torch.arange(tokenizer.bins), tokenizer.bins, label_sigma)  # one per bin
    for _ in progress_bar(range(steps), desc="train", leave=False):
        batch = torch.randint(len(x), (256,), generator=generator)
        target = label_rows[y[batch].flatten()]
        loss = nn.functional.cross_entropy(model(x[batch]).flatten(0, 1), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


class Imitator:
    """The trained MLP as a batch policy (``envs.evaluation.BatchPolicy``): greedy tokens."""

    def __init__(self, model: TokenMLP, tokenizer: ActionTokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def act_batch(self, observations: list[dict]) -> np.ndarray:
        states = np.stack([state_of(o["proprio"], o["key_positions"]) for o in observations])
        return self.tokenizer.decode(self.model(torch.as_tensor(states)).argmax(-1).numpy())


def closed_loop(model: TokenMLP, tokenizer: ActionTokenizer, task: str, episodes: int) -> dict:
    """Success on the evaluation seeds (``eval/evaluate.py``'s) and where failures stalled."""
    with progress_bar(total=episodes, desc=f"closed loop ({task})", leave=False) as bar:
        (result,), _ = evaluate(
            Imitator(model, tokenizer),
            task_ids([task]),
            episodes,
            env_kwargs={"image_size": IMAGE_SIZE},
            progress=bar.update,
            env_wrapper=TrueKeypoints,
        )
    summary = result.summary()
    funnel, first = describe(summary["stages_reached"], summary["first_object"])
    keys = ("successes", "episodes", "success_rate", "ci95")
    return {**{k: summary[k] for k in keys}, "funnel": funnel, "first_object": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["reach", "push", "lift", "pick_place", "stack"])
    parser.add_argument("--demos", type=int, default=300, help="expert episodes per task")
    parser.add_argument("--noise", type=float, default=0.1, help="expert action noise (collection default 0.1)")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps (batch 256)")
    parser.add_argument("--episodes", type=int, default=100, help="closed-loop episodes per task")
    parser.add_argument("--seeds", type=int, default=1, help="independent imitators per task (training seeds)")
    parser.add_argument("--label-sigma", type=float, default=0.0, help="Gaussian label std in bins (0: one-hot)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    for name in ("demos", "steps", "episodes", "seeds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.noise < 0:
        parser.error(f"--noise must be >= 0, got {args.noise}")
    if args.label_sigma < 0:
        parser.error(f"--label-sigma must be >= 0 bins (0: one-hot labels), got {args.label_sigma}")
    try:
        tasks = resolve_tasks(args.tasks)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    tokenizer = ActionTokenizer(256)
    results = {}
    for task in tasks:
        states, labels, expert_rate = collect(task, args.demos, args.noise, seed=0)
        for seed in range(args.seeds):
            model = train(states, labels, tokenizer, args.steps, seed, args.label_sigma)
            result = closed_loop(model, tokenizer, task, args.episodes)
            results[f"{task} (seed {seed})"] = {**result, "expert_success": expert_rate, "samples": len(states)}
            lo, hi = result["ci95"]
            print(
                f"{task} seed {seed}: {100 * result['success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
                f"| {result['funnel']} | first: {result['first_object']}",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(vars(args) | {"out": str(args.out), "results": results}, indent=1))


if __name__ == "__main__":
    main()
