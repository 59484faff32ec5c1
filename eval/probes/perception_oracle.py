"""Is a failing BC policy failing at perception or at control? Train the same policy twice on
the same demos, once from the camera alone and once with the true target and destination
centres appended to its proprio input (privileged "oracle perception"), and run both closed
loop on the same seeds.

    python eval/probes/perception_oracle.py --data data/reach300 --task reach --steps 800 --episodes 30

If the oracle policy succeeds and the camera policy does not, the decoder, the action tokens
and the closed loop are fine, and what fails is reading *where* the named object is from the
image on layouts the demos did not show.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from envs.dataset import DemoDataset, split_demos
from envs.evaluation import EVAL_SEED_BASE, wilson_interval
from envs.progress import progress as progress_bar
from envs.tasks import resolve_tasks, task_ids
from vla.data import ActionTokenDataset, collate, observations_to_batch
from vla.policy import KEY_POSITION_DIM, PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer
from vla.training.runtime import warmup_cosine

MODES = ("camera", "oracle")


def with_oracle(batch: dict, key_positions: torch.Tensor, oracle: bool, proprio_dim: int) -> dict:
    """The oracle policy reads the privileged centres as extra proprio elements, right after
    the ``proprio_dim`` env elements the camera policy reads."""
    if oracle:
        env_part = batch["proprio"][..., :proprio_dim]
        batch["proprio"] = torch.cat([env_part, key_positions.to(env_part)], -1)
    return batch


def train_policy(demos: DemoDataset, indices: np.ndarray, oracle: bool, steps: int, batch_size: int, seed: int):
    torch.manual_seed(seed)
    values = asdict(PolicyConfig())  # the default (small) model
    proprio_dim = values["proprio_dim"]
    values["image_size"] = demos.env_config.get("image_size", values["image_size"])  # the demos' frames
    # The question is the plain camera path versus given positions: no keypoint reader.
    values.update(keypoints=0, keypoint_sentence=False, aux_weight=0.0)
    values["proprio_dim"] = proprio_dim + (KEY_POSITION_DIM if oracle else 0)
    policy = VLAPolicy(PolicyConfig.from_dict(values))
    tokenizer = ActionTokenizer(policy.config.bins)
    rows = [demos.sample(int(i)) for i in indices[:: max(1, len(indices) // 5000)]]
    env_part = [r["proprio"][:proprio_dim] for r in rows]
    if oracle:
        env_part = [np.concatenate([p, r["key_positions"]]) for p, r in zip(env_part, rows, strict=True)]
    inputs = np.stack(env_part)
    policy.set_proprio_statistics(inputs.mean(0), inputs.std(0))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, min(100, steps // 10), steps))
    loader = torch.utils.data.DataLoader(
        ActionTokenDataset(demos, tokenizer, indices),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        drop_last=True,
    )
    step, bar = 0, progress_bar(total=steps, desc=f"train ({'oracle' if oracle else 'camera'})")
    while step < steps:
        for batch in loader:
            out = policy.loss(with_oracle(batch, batch["key_positions"], oracle, proprio_dim), augment=False)
            optimizer.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{out['loss'].item():.3f}", acc=f"{out['token_accuracy'].item():.2f}")
            if step >= steps:
                break
    bar.close()
    return policy.eval(), tokenizer, out["token_accuracy"].item()


@torch.no_grad()
def closed_loop(
    policy: VLAPolicy, tokenizer: ActionTokenizer, task: str, episodes: int, oracle: bool, noise_cm: float = 0.0
) -> list[bool]:
    """Outcomes on the evaluation seeds. ``noise_cm``: the oracle's positions carry a Gaussian
    error of this std per coordinate, drawn once per episode (a detector's systematic miss)."""
    env = gym.make(task_ids([task])[0], image_size=policy.config.image_size)
    outcomes = []
    for i in progress_bar(range(episodes), desc=f"closed loop ({'oracle' if oracle else 'camera'})"):
        obs, info = env.reset(seed=EVAL_SEED_BASE + i)
        error = np.random.default_rng(i).normal(0.0, noise_cm / 100.0, KEY_POSITION_DIM)
        while True:
            batch = observations_to_batch([obs], torch.device("cpu"))
            positions = torch.as_tensor(info["key_positions"] + error, dtype=torch.float32)[None]
            batch = with_oracle(batch, positions, oracle, policy.config.proprio_dim - oracle * KEY_POSITION_DIM)
            action = tokenizer.decode(policy.decode(batch).numpy())[0]
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        outcomes.append(bool(info["is_success"]))
    env.close()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="demo dataset directory (train/collect.py output)")
    parser.add_argument("--task", default="reach", help="task to evaluate (its demos are used for training)")
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps per policy")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--episodes", type=int, default=30, help="closed-loop episodes per policy")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--oracle-noise-cm",
        nargs="+",
        type=float,
        default=[0.0],
        help="also run the oracle policy with this much position error (std per coordinate, cm)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if not (Path(args.data) / "index.h5").exists():
        raise SystemExit(
            f"error: no dataset at {args.data}; collect one with `python train/collect.py output={args.data}`"
        )
    task = resolve_tasks([args.task])[0]
    torch.set_num_threads(args.threads)
    demos = DemoDataset(args.data).preload(progress=False)
    try:  # every sample of the task's episodes (nothing held out: the test is closed loop)
        indices, _ = split_demos(demos, [task], 0.0, args.seed)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if "key_positions" not in demos.sample(int(indices[0])):
        raise SystemExit(f"error: {args.data} has no key_positions; collect it anew with train/collect.py")
    results = {}
    for mode in args.modes:
        start = time.perf_counter()
        policy, tokenizer, accuracy = train_policy(
            demos, indices, mode == "oracle", args.steps, args.batch_size, args.seed
        )
        for noise in args.oracle_noise_cm if mode == "oracle" else [0.0]:
            outcomes = closed_loop(policy, tokenizer, task, args.episodes, mode == "oracle", noise)
            k, n = sum(outcomes), len(outcomes)
            lo, hi = wilson_interval(k, n)
            results[mode if noise == 0 else f"{mode}, {noise:g} cm error"] = {
                "successes": k,
                "episodes": n,
                "success_rate": k / n,
                "ci95": [lo, hi],
                "train_token_accuracy": accuracy,
                "seconds": time.perf_counter() - start,
            }
    print("\n| input | success | 95% CI | episodes | train token acc |\n|---|---|---|---|---|")
    for mode, r in results.items():
        lo, hi = r["ci95"]
        print(
            f"| {mode} | {100 * r['success_rate']:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}] | {r['episodes']} "
            f"| {100 * r['train_token_accuracy']:.0f}% |"
        )
    if args.out:
        args.out.write_text(
            json.dumps({"task": task, "data": str(args.data), "steps": args.steps, **results}, indent=1)
        )


if __name__ == "__main__":
    main()
