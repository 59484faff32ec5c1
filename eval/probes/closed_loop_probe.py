"""Why does a BC policy fail closed loop? Run it and, at every state it visits, ask the
scripted expert what it would have done there.

    python eval/probes/closed_loop_probe.py --checkpoint <run dir or .pt> [--tasks reach lift] [--episodes 10]

For each variant of the executed action it reports success and the mean |policy - expert|
per action element on the policy's *own* states (the covariate-shift view of V3), plus how
far the gripper has tilted from vertical by the end of the episode. Variants:

    policy           the policy's action as decoded
    expert_rotation  the policy's translation and gripper, the expert's rotation elements
    expert_gripper   the policy's motion, the expert's gripper command
    expert_translation  the expert's translation, the policy's rotation and gripper

If a variant that borrows one group of elements from the expert succeeds much more often,
that group is where the policy's errors compound. Each row also says how far the episodes
got: the share that reached each of the task's stages (``envs/milestones.py``, e.g. push:
behind the object and low, pushed towards the zone, success), and which object the gripper
went to first. (``eval/evaluate.py`` reports both for the policy's own actions too.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np

from envs import make_expert
from envs.evaluation import EVAL_SEED_BASE, wilson_interval
from envs.milestones import MilestoneTracker, describe, first_object_shares, stage_shares
from envs.tabletop_env import ACTION_NAMES
from envs.tasks import task_ids
from vla.evaluation.closed_loop import policy_env_kwargs
from vla.inference import load_policy

VARIANTS = ("policy", "expert_rotation", "expert_gripper", "expert_translation")


def executed(variant: str, policy_action: np.ndarray, expert_action: np.ndarray) -> np.ndarray:
    action = policy_action.copy()
    if variant == "expert_rotation":
        action[3:6] = expert_action[3:6]
    elif variant == "expert_gripper":
        action[6] = expert_action[6]
    elif variant == "expert_translation":
        action[:3] = expert_action[:3]
    return action


def tilt_degrees(quat_wxyz: np.ndarray) -> float:
    """Angle between the gripper's axis and the vertical (0 when pointing straight down)."""
    w, x, y, z = quat_wxyz
    # third column of the rotation matrix: the site's z axis in the world frame
    axis_z = 1 - 2 * (x * x + y * y)
    return float(np.degrees(np.arccos(np.clip(abs(axis_z), -1.0, 1.0))))


def probe_task(runner, task_id: str, variant: str, episodes: int, seed: int) -> dict:
    env = gym.make(task_id, **policy_env_kwargs(runner.policy))
    base = env.unwrapped
    expert = make_expert(env)
    tracker = MilestoneTracker(base.task.name)
    errors, successes, tilts, stages, first_objects = [], [], [], [], []
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k)
        runner.reset()
        tracker.start(base.world, base.task_spec, base.scene_objects)
        done = False
        while not done:
            policy_action = runner.act(obs)
            expert_action = expert(obs)
            errors.append(np.abs(policy_action - expert_action))
            obs, _, terminated, truncated, info = env.step(executed(variant, policy_action, expert_action))
            tracker.update(base.world, base.task_spec)
            done = terminated or truncated
        successes.append(bool(info["is_success"]))
        tilts.append(tilt_degrees(obs["proprio"][3:7]))
        stages.append(tracker.reached)
        first_objects.append(tracker.first_object)
    env.close()
    k, n = sum(successes), len(successes)
    return {
        "task": task_id,
        "variant": variant,
        "success_rate": k / n,
        "ci95": wilson_interval(k, n),
        "episodes": n,
        "mean_abs_error": dict(zip(ACTION_NAMES, np.mean(errors, 0).round(3).tolist(), strict=True)),
        "final_tilt_deg": float(np.mean(tilts)),
        "stages_reached": stage_shares(stages),
        "first_object": first_object_shares(first_objects),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tasks", nargs="+", default=["reach", "push", "lift", "pick_place", "stack"])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    runner = load_policy(args.checkpoint, device=args.device)
    rows = [
        probe_task(runner, task_id, variant, args.episodes, EVAL_SEED_BASE)
        for task_id in task_ids(args.tasks)
        for variant in args.variants
    ]
    header = "| task | variant | success | 95% CI | " + " | ".join(ACTION_NAMES) + " | final tilt |"
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for r in rows:
        lo, hi = r["ci95"]
        errors = " | ".join(f"{r['mean_abs_error'][name]:.2f}" for name in ACTION_NAMES)
        print(
            f"| {r['task'].split('/')[-1]} | {r['variant']} | {100 * r['success_rate']:.0f}% | "
            f"[{100 * lo:.0f}, {100 * hi:.0f}] | {errors} | {r['final_tilt_deg']:.1f} deg |"
        )
    print("\nhow far the episodes got (share that ever reached each stage, in the expert's order),")
    print("and the object gone to first:")
    for r in rows:
        funnel, first = describe(r["stages_reached"], r["first_object"])
        print(f"- {r['task'].split('/')[-1]}, {r['variant']}: {funnel}; gone to first: {first}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
