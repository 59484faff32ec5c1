"""Does an action token lean on the tokens before it? Teacher-forced vs free-running decoding.

An autoregressive policy is trained with the *expert's* earlier action tokens as input
(teacher forcing) and run with its *own*. If a token learns to read an earlier one as a cue
("dx is exactly bin 128, so the grasp is done: lift"), it is right in training and wrong as
soon as its own earlier token is one bin off. This script puts the policy on the expert's own
states (no covariate shift: only the decoding differs) and compares, per action element:

    teacher-forced   argmax given the expert's earlier tokens (what training measures)
    free-running     greedy decoding, the policy's own earlier tokens (what the robot gets)

as mean |decoded - expert label| on [-1, 1]. A large gap on one element is the shortcut.
``--grasped`` keeps only the states where the expert holds the target low (the lift off).

    python eval/probes/exposure_bias.py --checkpoint <run dir or .pt> --task lift --episodes 20 --grasped

Measured 2026-12-03 (docs/ablations.md): with Gaussian labels (model.label_sigma=24) a lift policy's dz
on grasped states is +0.99 teacher-forced and -0.36 free-running: its own dx, dy land one
bin off the expert's exact 0 (bin 128), which dz had learnt to read as "lift now".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from envs import make_expert
from envs.progress import progress as progress_bar
from envs.tabletop_env import ACTION_NAMES
from envs.tasks import task_ids
from vla.checkpoint import CheckpointError, build_policy, read_checkpoint
from vla.data import observations_to_batch
from vla.evaluation.closed_loop import policy_env_kwargs
from vla.policy import VLAPolicy
from vla.tokenizer import ActionTokenizer

SEED_BASE = 40_000_000  # apart from collection, validation and evaluation seeds
GRASP_HEIGHT = 0.05  # m: "held low", before the lift has carried the object away


def expert_states(env: gym.Env, episodes: int, grasped_only: bool) -> tuple[list[dict], np.ndarray]:
    """Observations along the expert's own (noise-free) episodes and its labels there."""
    observations, labels = [], []
    base = env.unwrapped
    for episode in progress_bar(range(episodes), desc="expert episodes", leave=False):
        obs, _ = env.reset(seed=SEED_BASE + episode)
        expert = make_expert(env, seed=episode)
        target = base.task.target(base.task_spec)
        done = False
        while not done:
            action = expert(obs)
            held_low = base.world.is_grasped(target) and base.world.grip_pos()[2] < GRASP_HEIGHT
            if held_low or not grasped_only:
                observations.append(obs)
                labels.append(expert.clean_action)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    return observations, np.asarray(labels, dtype=np.float32)


@torch.no_grad()
def decoding_gap(
    policy: VLAPolicy, tokenizer: ActionTokenizer, observations: list[dict], labels: np.ndarray, batch_size: int = 256
) -> dict[str, dict[str, float]]:
    """Mean |decoded - label| per action element, teacher-forced and free-running."""
    teacher, free = [], []
    for start in range(0, len(observations), batch_size):
        batch = observations_to_batch(observations[start : start + batch_size], torch.device("cpu"))
        free.append(policy.decode(batch).numpy())
        batch["action_bins"] = torch.as_tensor(tokenizer.encode(labels[start : start + batch_size]))
        teacher.append(policy.action_logits(batch).argmax(-1).numpy())
    teacher_err = np.abs(tokenizer.decode(np.concatenate(teacher)) - labels).mean(0)
    free_err = np.abs(tokenizer.decode(np.concatenate(free)) - labels).mean(0)
    return {
        name: {"teacher_forced": float(t), "free_running": float(f)}
        for name, t, f in zip(ACTION_NAMES, teacher_err, free_err, strict=True)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run directory or a .pt file")
    parser.add_argument("--task", default="lift")
    parser.add_argument("--episodes", type=int, default=20, help="expert episodes whose states are read")
    parser.add_argument("--grasped", action="store_true", help="only states where the expert holds the target low")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    if args.episodes <= 0:
        parser.error(f"--episodes must be positive, got {args.episodes}")
    try:
        (env_id,) = task_ids([args.task])
        payload = read_checkpoint(args.checkpoint)
    except (ValueError, CheckpointError) as error:
        parser.error(str(error))
    torch.set_num_threads(2)
    policy, tokenizer = build_policy(payload)
    policy.eval()
    env = gym.make(env_id, **policy_env_kwargs(policy))
    observations, labels = expert_states(env, args.episodes, args.grasped)
    env.close()
    if not observations:
        parser.error(f"no expert state of {args.task} matched (--grasped needs a task that grasps)")
    gap = decoding_gap(policy, tokenizer, observations, labels)
    print(
        f"{len(observations)} expert states of {args.task}{' (held low)' if args.grasped else ''}; decoding "
        f"{policy.config.decoding}; mean |decoded - expert| on [-1, 1]:"
    )
    print("| element | teacher-forced | free-running |\n|---|---|---|")
    for name, row in gap.items():
        print(f"| {name} | {row['teacher_forced']:.3f} | {row['free_running']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({**vars(args), "out": str(args.out), "states": len(labels), "gap": gap}, indent=1)
        )


if __name__ == "__main__":
    main()
