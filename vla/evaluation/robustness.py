"""The robustness suite: closed-loop success on instructions as people type them, and how
often the policy stops on instructions it cannot act on.

For each kind of ``envs.rewrites.KINDS`` the episodes of the training wording's seeds run
again with each instruction rewritten that way (suite lexicon: words no training split
and no training rewrite uses), so every kind is compared with the training wording on the
same scenes. Out of scope: the first observation of each scene asked with an instruction
that names an object not on the table, a colour or shape this world lacks, nonsense, or
nothing at all; the share where ``act`` stops, against the share where it stops on valid ones.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.evaluation import EVAL_SEED_BASE, VALIDATION_SEED_BASE, TaskResult, evaluate
from envs.progress import progress as progress_bar
from envs.rewrites import (
    KINDS,
    OUT_OF_SCOPE_KINDS,
    TRAINING,
    out_of_scope,
    rewrite,
    suite_instruction,
    training_rewrite,
)
from envs.stats import wilson_interval
from envs.tasks import task_ids
from vla.checkpoint import update_weights
from vla.data import observations_to_batch
from vla.evaluation.closed_loop import policy_env_kwargs
from vla.inference import PolicyRunner
from vla.language import sentence_embedding
from vla.policy import VLAPolicy

SCOPE_CASES = (*OUT_OF_SCOPE_KINDS, "empty")  # out-of-scope instructions the suite asks
TRAINING_WORDING = "train"
FALSE_STOPS = 0.01  # calibrate_scope: the share of valid instructions on validation scenes allowed to stop
THRESHOLD_RANGE = (0.5, 0.99)  # calibrate_scope never goes outside it


class StopCounter:
    """A batch policy that counts the steps where ``runner`` stopped (false stops on valid words)."""

    def __init__(self, runner: PolicyRunner):
        self.runner, self.steps, self.stopped = runner, 0, 0

    def reset(self) -> None:
        self.runner.reset()

    def act_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        actions, infos = self.runner.act_batch_with_info(observations)
        self.steps += len(infos)
        self.stopped += sum(info["stopped"] for info in infos)
        return actions


def robustness_suite(
    runner: PolicyRunner,
    tasks: list[str],
    episodes: int,
    kinds: list[str],
    num_envs: int,
    env_kwargs: dict[str, Any],
    scope_scenes: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Success per wording kind (``episodes`` per task, the training wording first) and the
    out-of-scope stop rates over ``scope_scenes`` scenes per task."""
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown rewrite kind {kind!r}; valid values are: {', '.join(KINDS)}")
    ids = task_ids(tasks)
    bar = progress_bar(total=episodes * len(ids) * (1 + len(kinds)), desc="robustness", disable=not progress)
    wordings: dict[str, Any] = {}
    for kind in [TRAINING_WORDING, *kinds]:
        counter = StopCounter(runner)
        instruction_fn = None if kind == TRAINING_WORDING else functools.partial(suite_instruction, kind=kind)
        results, _ = evaluate(
            counter, ids, episodes, "train", num_envs, env_kwargs=env_kwargs, instruction_fn=instruction_fn,
            progress=bar.update,
        )  # fmt: skip
        wordings[kind] = _summary(results) | {"stopped_steps": counter.stopped / max(counter.steps, 1)}
    bar.close()
    base = wordings[TRAINING_WORDING]["success_rate"]
    for row in wordings.values():
        row["ratio"] = row["success_rate"] / base if base > 0 else float("nan")
    scope = scope_stops(runner, ids, scope_scenes, env_kwargs)
    return {"episodes_per_task": episodes, "wordings": wordings, "scope": scope}


def _summary(results: list[TaskResult]) -> dict[str, Any]:
    outcomes = [s for r in results for s in r.successes]
    k, n = int(sum(outcomes)), len(outcomes)
    per_task = {r.task_id.split("/")[-1]: r.rate for r in results}
    seeds = {r.task_id: r.seeds for r in results}
    return {"success_rate": k / n, "ci95": list(wilson_interval(k, n)), "episodes": n, "per_task": per_task,
            "successes": {r.task_id: r.successes for r in results}, "seeds": seeds}  # fmt: skip


class RewordedDemos:
    """Demos whose instructions read the ``kind`` way (suite lexicon, seeded per sample)."""

    def __init__(self, demos: Any, kind: str):
        self.demos, self.kind = demos, kind

    def __len__(self) -> int:
        return len(self.demos)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.demos, name)

    def sample(self, index: int) -> dict[str, Any]:
        item = self.demos.sample(index)
        if self.kind != TRAINING_WORDING:
            rng = np.random.default_rng([EVAL_SEED_BASE, index])
            spec = self.demos.task_spec(item["episode"])
            item["instruction"] = rewrite(item["instruction"], spec, self.kind, rng, "suite")
        return item


def open_loop_by_kind(
    policy: VLAPolicy, tokenizer: Any, demos: Any, indices: np.ndarray, kinds: list[str], device: torch.device
) -> dict[str, dict[str, float]]:
    """Open-loop action-token accuracy on held-out demo steps, their instructions rewritten
    each way (V3: does it move with closed-loop success?)."""
    from vla.evaluation.closed_loop import open_loop_accuracy

    return {
        kind: open_loop_accuracy(policy, tokenizer, RewordedDemos(demos, kind), indices, device)
        for kind in [TRAINING_WORDING, *kinds]
    }


def scope_stops(runner: PolicyRunner, ids: list[str], scenes: int, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Share of first observations where ``act`` stops: for each out-of-scope case (should
    be 1), and for the scene's own training wording and each kind of rewrite of it (valid:
    should be 0), on the evaluation seeds."""
    valid = [f"{kind} (valid)" for kind in KINDS]
    asked: dict[str, list[bool]] = {case: [] for case in (TRAINING_WORDING, *valid, *SCOPE_CASES)}
    messages: dict[str, str] = {}
    for task_id in ids:
        env = gym.make(task_id, **env_kwargs)
        for i in range(scenes):
            seed = EVAL_SEED_BASE + i
            obs, info = env.reset(seed=seed)
            rng, valid_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
            for case in asked:
                if case == TRAINING_WORDING:
                    text = obs["instruction"]
                elif case in valid:
                    text = rewrite(obs["instruction"], info["task_spec"], case.split(" ")[0], valid_rng, "suite")
                elif case == "empty":
                    text = ""
                else:
                    text = out_of_scope(info["task_spec"], info["scene_objects"], case, rng, "suite")
                runner.reset()  # each case is a new instruction's first sighting
                _, answer = runner.act_with_info({**obs, "instruction": text})
                asked[case].append(answer["stopped"])
                if answer["stopped"]:
                    messages.setdefault(case, answer["message"])
        env.close()
    rows = {}
    for case, stops in asked.items():
        k, n = int(sum(stops)), len(stops)
        rows[case] = {"stop_rate": k / n, "ci95": list(wilson_interval(k, n)), "scenes": n}
    return {"cases": rows, "example_messages": messages}


def valid_instructions(ids: list[str], seeds: range, env_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The first observation of each scene of these seeds, per task, asked four valid ways: the
    scene's training wording and three training rewrites of it (never the suite's words)."""
    observations = []
    for task_id in ids:
        env = gym.make(task_id, **env_kwargs)
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            for draw in range(4):
                text = training_rewrite(obs["instruction"], info["task_spec"], 0.0 if draw == 0 else 1.0, seed, draw)
                observations.append({**obs, "instruction": text})
        env.close()
    return observations


@torch.no_grad()
def calibrate_scope(
    policy: VLAPolicy, ids: list[str], scenes: int, env_kwargs: dict[str, Any], false_stops: float = FALSE_STOPS
) -> float:
    """Calibrate both out-of-scope checks of ``act`` on valid instructions of ``scenes``
    validation scenes per task; returns the reader's threshold.

    - The reader's ``scope_threshold``: the (1 - ``false_stops``) quantile of its "nothing
      named" probability, clipped to ``THRESHOLD_RANGE``. How sure the reader is of its
      "nothing named" differs from model to model, so one fixed threshold stopped 15% of
      valid first steps of one model and 1.5% of another (2026-12-06).
    - The known commands: the sentence embeddings of valid instructions of as many training
      scenes (other seeds). The least similarity to them lies halfway between the
      ``false_stops`` quantile of the validation instructions' similarity and the highest of
      the training lexicon's nonsense ("tell me a joke"; never the suite's): at the quantile
      itself the GPU recipe stopped 17.5% of valid shape synonyms ("the red canister",
      similarity 0.61-0.70) while nonsense stays below 0.51 (2026-12-07)."""
    reader = policy.keypoint_reader
    if reader is None or reader.absent is None or policy.known_commands is None:
        raise ValueError("calibrate_scope needs a keypoint reader with an abstain cell (model.scope_check=true)")
    device = policy.proprio_mean.device
    policy.eval()
    known = [obs["instruction"] for obs in valid_instructions(ids, range(scenes), env_kwargs)]
    bank = torch.cat([policy.sentences(known[i : i + 256], device) for i in range(0, len(known), 256)])
    observations = valid_instructions(ids, range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + scenes), env_kwargs)
    probabilities, sentences = [], []
    for start in range(0, len(observations), 256):
        batch = observations_to_batch(observations[start : start + 256], device)
        states, mask = policy.text(batch["instruction"], device)
        probabilities.append(reader.nothing_named(batch["image"], states, mask)[:, 0].float().cpu())
        sentences.append(sentence_embedding(states, mask))  # the same encoding, read as one sentence
    quantile = float(torch.cat(probabilities).quantile(1.0 - false_stops))
    threshold = float(np.clip(quantile, *THRESHOLD_RANGE))
    reader.scope_threshold.fill_(threshold)
    policy.known_commands.set(torch.unique(bank, dim=0), 0.0)
    valid = float(policy.known_commands.similarity(torch.cat(sentences)).cpu().quantile(false_stops))
    nonsense = float(policy.known_commands.similarity(policy.sentences(list(TRAINING.nonsense), device)).max())
    policy.known_commands.threshold.fill_((valid + nonsense) / 2 if nonsense < valid else valid)
    return threshold


def calibrate_and_record(policy: VLAPolicy, ids: list[str], scenes: int, path: Path) -> float:
    """Calibrate when ``act`` stops on out-of-scope instructions (``calibrate_scope``) and write
    it into checkpoint file ``path``, which every later load then uses."""
    threshold = calibrate_scope(policy, ids, scenes, policy_env_kwargs(policy))
    commands = policy.known_commands
    calibrated = {
        "keypoint_reader.scope_threshold": policy.keypoint_reader.scope_threshold,
        "known_commands.bank": commands.bank,
        "known_commands.threshold": commands.threshold,
    }
    update_weights(path, {k: v.cpu() for k, v in calibrated.items()})
    print(
        f"out-of-scope threshold: {threshold:.3f} (above it: 1% of valid instructions, {scenes} scenes per task); "
        f"{len(commands.bank)} known commands, least similarity {float(commands.threshold):.3f}"
    )
    return threshold


def robustness_table(report: dict[str, Any]) -> str:
    """Markdown: success per wording kind with the ratio to the training wording, and the
    out-of-scope stop rates."""
    lines = [
        "| wording | success | 95% CI | ratio to training wording | episodes | steps stopped | open-loop tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in report["wordings"].items():
        lo, hi = row["ci95"]
        open_loop = report.get("open_loop", {}).get(kind)
        accuracy = f"{100 * open_loop['token_accuracy']:.1f}%" if open_loop else "-"
        lines.append(
            f"| {kind} | {100 * row['success_rate']:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}] | "
            f"{row['ratio']:.2f} | {row['episodes']} | {100 * row['stopped_steps']:.1f}% | {accuracy} |"
        )
    lines += ["", "| instruction asked at the first step | stopped | 95% CI | scenes |", "|---|---|---|---|"]
    for case, row in report["scope"]["cases"].items():
        lo, hi = row["ci95"]
        name = "training wording (valid)" if case == TRAINING_WORDING else case
        lines.append(f"| {name} | {100 * row['stop_rate']:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}] | {row['scenes']} |")
    return "\n".join(lines)
