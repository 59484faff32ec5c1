"""The PPO workspace: ``python train/ppo.py`` fine-tunes the VLA in its own action-token space.

``check_config(cfg)`` runs first (every mistake before any env starts), then ``train(cfg)``.
Config: configs/ppo.yaml (recipes: configs/recipe/reach_*.yaml). ``init=<BC checkpoint>``
fine-tunes the very policy train/bc.py produced; ``init=null`` trains the same architecture
from scratch; ``algo=cnn`` trains SB3's stock ``MultiInputPolicy`` (CNN) with continuous
actions as a baseline. The run directory
gets the resolved config, checkpoints (latest.pt, best.pt by closed-loop success: files
``vla.load_policy`` and eval/evaluate.py load unchanged), TensorBoard logs and progress.csv
(SB3's logger), evals.jsonl (success vs env steps with 95% Wilson intervals) and
summary.json (throughput). ``resume=<run dir>`` continues from latest.pt (fresh episodes:
environments cannot be checkpointed, so a resumed run is not bit-identical).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from envs.evaluation import VALIDATION_SEED_BASE, evaluate
from envs.instructions import TRAINING_SPLITS
from envs.stats import wilson_interval
from envs.tasks import task_ids
from envs.vocabulary import check_name
from vla.app.console import run_log
from vla.checkpoint import CheckpointError, build_policy, read_checkpoint, save_checkpoint
from vla.evaluation.closed_loop import policy_env_kwargs
from vla.inference import PolicyRunner
from vla.policy import VLAPolicy
from vla.rl.ppo import RegularisedPPO
from vla.rl.sb3_policy import VLAActorCriticPolicy
from vla.rl.token_env import ContinuousActionEnv, TokenActionEnv
from vla.tokenizer import ActionTokenizer
from vla.training.runtime import (
    check_device,
    check_start_points,
    check_whole_numbers,
    keep_rows_up_to,
    policy_config,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

ENV_ACTION_DIM = 7  # the action contract: [dx, dy, dz, droll, dpitch, dyaw, gripper]
ALGOS = ("vla", "cnn")
REWARD_TYPES = ("dense", "sparse", "progress")
VEC_ENVS = ("subproc", "dummy")
VALUE_HEADS = ("shared", "separate")


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no env: one clear error before any env or model starts."""
    tasks = task_ids(cfg.task)  # one name, or a list: multi-task PPO (env i runs task i mod n)
    if cfg.env.num_envs < len(tasks):
        raise ValueError(
            f"env.num_envs={cfg.env.num_envs} cannot run {len(tasks)} tasks: give at least one env per task"
        )
    check_name("algo", cfg.algo, ALGOS)
    check_name("env.reward_type", cfg.env.reward_type, REWARD_TYPES)
    check_name("env.vec_env", cfg.env.vec_env, VEC_ENVS)
    check_name("env.instruction_split", cfg.env.instruction_split, TRAINING_SPLITS)
    check_name("ppo.value_head", cfg.ppo.value_head, VALUE_HEADS)
    p = cfg.ppo
    check_whole_numbers({f"ppo.{k}": p[k] for k in ("total_timesteps", "n_steps", "batch_size", "n_epochs")})
    check_whole_numbers({"env.num_envs": cfg.env.num_envs})
    if not p.lr > 0 or not 0 < p.clip_range < 1 or not 0 < p.gamma <= 1 or not p.temperature > 0:
        raise ValueError(
            f"need ppo.lr > 0, 0 < ppo.clip_range < 1, 0 < ppo.gamma <= 1, ppo.temperature > 0; got {p.lr}, "
            f"{p.clip_range}, {p.gamma}, {p.temperature}"
        )
    critic_lr_scale(p)
    if p.kl_coef > 0 and not cfg.init and not cfg.resume:
        raise ValueError(f"ppo.kl_coef={p.kl_coef} anchors PPO to its starting policy: it needs init=<BC checkpoint>")
    check_start_points(cfg.resume, cfg.init)
    if cfg.algo == "vla" and not cfg.init and not cfg.resume:
        policy_config(cfg.model)
    check_device(cfg.device)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, and return the run's summary (throughput, last and best success)."""
    run_dir = Path(cfg.resume or cfg.run_dir)
    with run_log(run_dir / "ppo.log"):
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    tasks = task_ids(cfg.task)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    # --- the starting point: a resumed run, a BC checkpoint, or from scratch --------------------
    resume = read_resume(run_dir) if cfg.resume else None
    if resume is not None:
        cfg = merge_resumed_config(cfg, resume)
    p = cfg.ppo  # after the merge: a resumed run keeps its own PPO settings
    critic_scale = critic_lr_scale(p)  # a bad value fails before any env starts
    seed_everything(cfg.seed)
    vla = tokenizer = reference = None
    if cfg.algo == "vla":
        vla, tokenizer, reference = starting_policy(cfg, resume)

    # --- environments: SubprocVecEnv workers each build their own env ---------------------------
    env_kwargs = env_settings(cfg, vla)
    tokenizer_state = tokenizer.state_dict() if tokenizer else None
    env_fns = [  # env i runs task i mod len(tasks): every task gets its share of each rollout
        functools.partial(make_env, tasks[i % len(tasks)], env_kwargs, tokenizer_state, cfg.seed * 1000 + i)
        for i in range(cfg.env.num_envs)
    ]
    venv: VecEnv = SubprocVecEnv(env_fns) if cfg.env.vec_env == "subproc" else DummyVecEnv(env_fns)
    venv.seed(cfg.seed)

    common = dict(
        n_steps=p.n_steps,
        batch_size=p.batch_size,
        n_epochs=p.n_epochs,
        learning_rate=p.lr,
        gamma=p.gamma,
        gae_lambda=p.gae_lambda,
        clip_range=p.clip_range,
        ent_coef=p.ent_coef,
        vf_coef=p.vf_coef,
        max_grad_norm=p.max_grad_norm,
        target_kl=p.target_kl,
        seed=cfg.seed,
        device=device,
        verbose=0,
    )
    if cfg.algo == "vla":
        model = RegularisedPPO(
            VLAActorCriticPolicy,
            venv,
            policy_kwargs=dict(
                vla=vla,
                value_head=p.value_head,
                freeze_vision=p.freeze_vision,
                freeze_language=p.freeze_language,
                temperature=p.temperature,
                value_scale=p.value_scale,
                critic_lr_scale=critic_scale,
            ),
            reference=reference,
            kl_coef=p.kl_coef,
            critic_warmup_steps=p.critic_warmup_steps,
            **common,
        )
    else:
        model = PPO("MultiInputPolicy", venv, **common)
    if resume is not None:
        restore(model, resume)
        # what a kill cannot take back: the envs' mid-episode simulator and RNG states (episodes
        # start afresh) and the rollout steps since this checkpoint (collected again)
        print(
            f"resumed {run_dir} at env step {model.num_timesteps} from {str(resume.get('sha256'))[:16]}: "
            f"weights, optimiser, update count {model._n_updates}, RNG states restored"
        )

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    model.set_logger(configure(str(run_dir / "tb"), ["tensorboard", "csv"]))
    trainable = sum(x.numel() for x in model.policy.parameters() if x.requires_grad)
    print(
        f"run dir: {run_dir} | algo {cfg.algo} | {', '.join(tasks)} | {cfg.env.num_envs} {cfg.env.vec_env} envs | "
        f"{trainable / 1e6:.2f}M trainable params | device {device}"
    )

    # --- the loop: SB3's learn(), with evaluation, checkpoints and throughput as a callback -----
    periodic = PeriodicTasks(cfg, run_dir, tasks, vla, tokenizer, env_kwargs)
    remaining = int(p.total_timesteps) - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=periodic, reset_num_timesteps=resume is None)
    venv.close()
    summary = periodic.summary()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


def critic_lr_scale(p: DictConfig) -> float:
    """ppo.critic_lr as a multiple of ppo.lr (null: the same rate)."""
    if p.critic_lr is None:
        return 1.0
    if not float(p.critic_lr) > 0:
        raise ValueError(f"ppo.critic_lr must be > 0 or null, got {p.critic_lr}")
    return float(p.critic_lr) / float(p.lr)


# --- starting points -------------------------------------------------------------------------------
def starting_policy(cfg: DictConfig, resume: dict | None) -> tuple[VLAPolicy, ActionTokenizer, VLAPolicy | None]:
    """The VLA to train, its tokenizer, and the frozen initial policy (None from scratch)."""
    init = cfg.init
    reference = None
    if init:
        payload = read_init(init)
        reference, _ = build_policy(payload)
    if resume is not None:
        vla, tokenizer = build_policy(resume)
    elif init:
        vla, tokenizer = build_policy(payload)
        print(f"initialised from {payload['path']} (step {payload.get('step')})")
    else:
        config = policy_config(cfg.model)
        vla, tokenizer = VLAPolicy(config), ActionTokenizer(config.bins, action_dim=config.action_dim)
    check_action_space(vla, tokenizer, init or cfg.resume or "model config")
    vla.config.dropout = 0.0  # rollouts run in eval mode, updates in train mode: they must agree
    for module in vla.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return vla, tokenizer, reference


def read_init(path: str) -> dict:
    try:
        return read_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"cannot start from init={path}: {error}") from None


def check_action_space(vla: VLAPolicy, tokenizer: ActionTokenizer, source: str) -> None:
    """The policy's tokens must decode to the env's 7-D actions, with the bins it was trained on."""
    c = vla.config
    if c.action_dim != ENV_ACTION_DIM or tokenizer.action_dim != ENV_ACTION_DIM:
        raise CheckpointError(
            f"{source}: the policy emits {c.action_dim} action tokens (tokenizer {tokenizer.action_dim}) "
            f"but the env's action space is {ENV_ACTION_DIM}-D"
        )
    if tokenizer.bins != c.bins:
        raise CheckpointError(f"{source}: the tokenizer has {tokenizer.bins} bins but the policy head {c.bins}")


def read_resume(run_dir: Path) -> dict:
    try:
        return read_checkpoint(run_dir / "checkpoints" / "latest.pt")
    except CheckpointError as error:
        raise CheckpointError(f"cannot resume from {run_dir}: {error}") from None


def merge_resumed_config(cfg: DictConfig, payload: dict) -> DictConfig:
    """A resumed run keeps what it was started with (algo, init, env, ppo); the command line
    may still change the budget, evaluation and stopping point."""
    saved = OmegaConf.create(payload["train_config"])
    keep = {k: cfg[k] for k in ("eval", "checkpoint_every", "stop_at_step", "resume", "device", "threads")}
    saved.ppo.total_timesteps = cfg.ppo.total_timesteps
    return OmegaConf.merge(saved, keep)


def restore(model: PPO, payload: dict) -> None:
    state = payload["ppo"]
    policy: VLAActorCriticPolicy = model.policy
    policy.value_head.load_state_dict(state["value_head"])
    if policy.critic is not None:
        policy.critic.load_state_dict(state["critic"], strict=False)
    policy.optimizer.load_state_dict(state["optimizer"])
    model.num_timesteps = int(payload["step"])
    model._n_updates = int(state["n_updates"])
    set_rng_state(payload["rng"])


# --- environments ------------------------------------------------------------------------------------
def env_settings(cfg: DictConfig, vla: VLAPolicy | None) -> dict[str, Any]:
    e = cfg.env
    settings = dict(
        reward_type=e.reward_type,
        success_bonus=e.success_bonus,
        terminate_on_success=e.terminate_on_success,
        instruction_split=e.instruction_split,
    )
    camera = policy_env_kwargs(vla) if vla is not None else {"image_size": e.image_size, "cameras": ["scene"]}
    return {**settings, **camera}


def make_env(task_id: str, env_kwargs: dict, tokenizer_state: dict | None, seed: int):
    """One training env (runs in a SubprocVecEnv worker: builds everything it needs)."""
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    import envs  # noqa: F401  (registers the VLASandbox tasks in this process)

    env = gym.make(task_id, **env_kwargs)
    env.reset(seed=seed)
    # Monitor records episode return and length (rollout/ep_rew_mean, rollout/ep_len_mean)
    env = Monitor(env, info_keywords=("is_success",))
    if tokenizer_state is None:
        return ContinuousActionEnv(env)
    return TokenActionEnv(env, ActionTokenizer.from_state_dict(tokenizer_state))


class CnnRunner:
    """The SB3 baseline behind evaluate()'s ``act_batch`` (greedy: the distribution's mean)."""

    def __init__(self, model: PPO, length: int):
        self.model, self.length = model, length

    def act_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        converted = [ContinuousActionEnv.convert(o, self.length) for o in observations]
        batch = {k: np.stack([o[k] for o in converted]) for k in converted[0]}
        actions, _ = self.model.predict(batch, deterministic=True)
        return np.clip(actions, -1.0, 1.0)


# --- periodic work during learn() ----------------------------------------------------------------------
class PeriodicTasks(BaseCallback):
    """At every rollout start (i.e. after each update): throughput, evaluation, checkpoints;
    and the interruption point ``stop_at_step``. It also splits the time between collecting
    rollouts and the PPO updates (``time/rollout_s``, ``time/update_s``: where the time goes)."""

    def __init__(self, cfg, run_dir: Path, tasks: list[str], vla, tokenizer, env_kwargs: dict):
        super().__init__()
        self.cfg, self.run_dir, self.tasks = cfg, run_dir, tasks
        self.vla, self.tokenizer, self.env_kwargs = vla, tokenizer, env_kwargs
        self.best = -1.0
        self.last_eval = self.last_checkpoint = None
        self.stopping = False
        self.clock = self.started = time.perf_counter()
        self.clock_steps = self.start_steps = 0
        self.eval_seconds = 0.0
        self.rollout_seconds = self.update_seconds = 0.0
        self.rollout_ended: float | None = None  # when the last rollout ended (an update follows)
        self.last_rate: float | None = None

    def _on_training_start(self) -> None:
        self.clock_steps = self.start_steps = self.last_eval = self.last_checkpoint = self.num_timesteps
        if self.cfg.resume:
            self.best = read_checkpoint(self.run_dir / "checkpoints" / "latest.pt").get("best_success", -1.0)
            keep_rows_up_to(self.run_dir / "evals.jsonl", self.num_timesteps)
        else:
            (self.run_dir / "evals.jsonl").write_text("")
            if self.cfg.eval.every_steps and self.cfg.eval.at_start:
                self.evaluate()

    def _on_rollout_start(self) -> None:
        steps = self.num_timesteps
        if steps == self.clock_steps:
            self.clock = time.perf_counter()  # the first rollout starts now
            return
        now = time.perf_counter()
        self._count_update(now)
        self.logger.record("time/env_steps_per_s", (steps - self.clock_steps) / (now - self.clock))
        every = self.cfg.eval.every_steps
        if every and steps - self.last_eval >= every:
            self.evaluate()
        if steps - self.last_checkpoint >= self.cfg.checkpoint_every:
            self.checkpoint("latest.pt")
        stop = self.cfg.stop_at_step
        if stop is not None and steps >= stop:
            self.checkpoint("latest.pt")
            self.stopping = True
        self.clock, self.clock_steps = time.perf_counter(), steps

    def _on_rollout_end(self) -> None:
        self.rollout_ended = time.perf_counter()
        seconds = self.rollout_ended - self.clock  # the clock restarts as each rollout starts
        self.rollout_seconds += seconds
        self.logger.record("time/rollout_s", seconds)

    def _count_update(self, now: float) -> None:
        """The update that followed the last rollout ended at ``now``."""
        if self.rollout_ended is not None:
            self.update_seconds += now - self.rollout_ended
            self.logger.record("time/update_s", now - self.rollout_ended)
            self.rollout_ended = None

    def _on_step(self) -> bool:
        return not self.stopping

    def _on_training_end(self) -> None:
        self._count_update(time.perf_counter())
        if self.stopping:
            return
        if self.cfg.eval.every_steps and self.num_timesteps != self.last_eval:
            self.evaluate()
        self.checkpoint("latest.pt")
        self.logger.dump(self.num_timesteps)  # the last update's statistics

    def evaluate(self) -> None:
        """Greedy closed-loop success on the fixed validation seeds (the same every time;
        disjoint from eval/evaluate.py's test seeds, since this picks best.pt)."""
        start = time.perf_counter()
        if self.vla is not None:
            runner = PolicyRunner(self.vla, self.tokenizer, self.model.device)
            kwargs = policy_env_kwargs(self.vla)
        else:
            length = self.model.observation_space["instruction"].shape[0]
            runner, kwargs = CnnRunner(self.model, length), {"image_size": self.cfg.env.image_size}
        e = self.cfg.eval
        results, _ = evaluate(
            runner, self.tasks, e.episodes, num_envs=e.num_envs, seed=VALIDATION_SEED_BASE, env_kwargs=kwargs
        )
        successes = [s for r in results for s in r.successes]  # e.episodes per task, every task
        k, n = int(sum(successes)), len(successes)
        lo, hi = wilson_interval(k, n)
        rate = k / n
        row = {"step": self.num_timesteps, "success_rate": rate, "successes": k, "episodes": n, "ci95": [lo, hi]}
        row["per_task"] = {r.task_id: float(np.mean(r.successes)) for r in results}
        with (self.run_dir / "evals.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.logger.record("eval/success_rate", rate)
        self.last_eval, self.last_rate = self.num_timesteps, rate
        if rate > self.best:
            self.best = rate
            self.checkpoint("best.pt")
        self.eval_seconds += time.perf_counter() - start
        print(f"env step {self.num_timesteps}: success {100 * rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})")

    def checkpoint(self, name: str) -> None:
        path = self.run_dir / "checkpoints" / name
        if self.vla is None:  # the SB3 baseline: SB3's own zip format
            self.model.save(path.with_suffix(".zip"))
        else:
            policy: VLAActorCriticPolicy = self.model.policy
            critic = None
            if policy.critic is not None:  # the text encoder is the actor's, saved with it
                critic = {k: v for k, v in policy.critic.state_dict().items() if not k.startswith("text.")}
            save_checkpoint(
                path,
                self.vla,
                self.tokenizer,
                step=self.num_timesteps,
                best_success=self.best,
                ppo={
                    "value_head": policy.value_head.state_dict(),
                    "critic": critic,
                    "optimizer": policy.optimizer.state_dict(),
                    "n_updates": self.model._n_updates,
                },
                rng=rng_state(),
                train_config=OmegaConf.to_container(self.cfg, resolve=True),
            )
        if name == "latest.pt":
            self.last_checkpoint = self.num_timesteps

    def summary(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        steps = self.num_timesteps - self.start_steps
        return {
            "env_steps": int(self.num_timesteps),
            "env_steps_this_run": int(steps),
            "wall_s": round(wall, 1),
            "eval_s": round(self.eval_seconds, 1),
            "env_steps_per_s": round(steps / max(wall - self.eval_seconds, 1e-9), 1),
            "rollout_s": round(self.rollout_seconds, 1),  # collecting rollouts: env steps and the policy's actions
            "update_s": round(self.update_seconds, 1),  # the PPO updates (critic-only ones included)
            "last_success_rate": self.last_rate,
            "best_success_rate": self.best,
        }
