"""Policy time per PPO rollout step, one decoding pass against two.

    python eval/bench_ppo_rollout.py [--model small|large] [--batch-sizes 1,8] [--rounds 30]

A rollout step needs the sampled tokens, their joint log-prob and the value. The actor
(vla/rl/sb3_policy.py ``forward``) reads all three off one decoding pass; the alternative it
replaced decodes, then scores the tokens in a second, teacher-forced pass. Both are timed in
turns on the same real env observations (reach), and the ratio printed. A benchmark, not a
test: compare the ratio, the milliseconds drift with the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

import envs  # noqa: F401  (registers the tasks)
from vla.app.cli import compose_config
from vla.policy import PolicyConfig, VLAPolicy
from vla.rl.sb3_policy import VLAActorCriticPolicy
from vla.rl.token_env import TokenActionEnv
from vla.tokenizer import ActionTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", choices=["small", "large"])
    parser.add_argument("--batch-sizes", default="1,8", help="envs per rollout step, comma-separated")
    parser.add_argument("--rounds", type=int, default=30, help="timed calls of each variant, in turns")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    if args.rounds < 1 or not sizes or min(sizes) < 1:
        raise SystemExit(f"error: --rounds and every batch size must be >= 1, got {args.rounds} and {sizes}")
    torch.set_num_threads(args.threads)
    values = OmegaConf.to_container(compose_config("bc", [f"model={args.model}"]).model)
    values["text_encoder"] = "scratch"  # timing does not depend on a pretrained encoder
    vla = VLAPolicy(PolicyConfig.from_dict(values))
    env = TokenActionEnv(
        gym.make("VLASandbox/Reach-v0", image_size=vla.config.image_size), ActionTokenizer(vla.config.bins)
    )
    actor = VLAActorCriticPolicy(env.observation_space, env.action_space, lambda _: 1e-4, vla=vla).eval()
    for n in sizes:
        obs = [env.reset(seed=i)[0] for i in range(n)]
        batch = {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}

        def two_passes(batch: dict = batch) -> None:
            read = actor.to_batch(batch)
            actor.evaluate_tokens(read, actor.vla.decode(read, temperature=actor.temperature))

        def one_pass(batch: dict = batch) -> None:
            actor.forward(batch)

        times: dict[str, list[float]] = {"two passes": [], "one pass": []}
        with torch.no_grad():
            two_passes(), one_pass()  # warm up
            for _ in range(args.rounds):
                for name, fn in (("two passes", two_passes), ("one pass", one_pass)):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        two, one = (statistics.median(times[k]) * 1e3 for k in ("two passes", "one pass"))
        print(f"batch of {n}: decode + teacher-forced pass {two:.1f} ms, one pass {one:.1f} ms: {two / one:.2f}x")


if __name__ == "__main__":
    main()
