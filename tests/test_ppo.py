"""PPO fine-tuning of the VLA (vla/sb3_policy.py, vla/ppo.py, train/ppo.py): the log-probs PPO
uses are those of the distribution the policy samples from; a tiny run changes the weights
and writes a checkpoint vla.load_policy loads; resume; one clear error per bad input."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # noqa: F401  (registers the tasks)
from tests.conftest import REPO_ROOT, TINY_MODEL, tiny_model_overrides
from vla.checkpoint import read_checkpoint, save_checkpoint
from vla.policy import PolicyConfig, VLAPolicy
from vla.rl.ppo import RegularisedPPO, token_kl
from vla.rl.sb3_policy import VLAActorCriticPolicy
from vla.rl.token_env import TokenActionEnv, decode_instructions, encode_instruction
from vla.tokenizer import ActionTokenizer

TASK = "VLASandbox/Reach-v0"


@pytest.fixture
def one_thread():
    """Two torch threads on this busy 2-core machine run the tiny model many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_ppo(
    bins: int = 256,
    seed: int = 0,
    temperature: float = 1.0,
    value_scale: float = 1.0,
    policy_options: dict | None = None,
    model_options: dict | None = None,
    **kwargs,
) -> RegularisedPPO:
    torch.manual_seed(seed)
    vla = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "bins": bins, **(model_options or {})}))
    tokenizer = ActionTokenizer(bins)
    venv = DummyVecEnv([lambda: TokenActionEnv(gym.make(TASK, image_size=32), tokenizer)] * 2)
    return RegularisedPPO(
        VLAActorCriticPolicy,
        venv,
        n_steps=8,
        batch_size=8,
        n_epochs=1,
        seed=seed,
        policy_kwargs={"vla": vla, "temperature": temperature, "value_scale": value_scale, **(policy_options or {})},
        **kwargs,
    )


def test_instruction_codes_round_trip_through_float_buffers():
    text = "put the gripper on the blue cylinder"
    codes = encode_instruction(text, 256)
    assert decode_instructions(codes[None].astype(np.float32)) == [text]
    with pytest.raises(ValueError, match="more than"):
        encode_instruction(text, 8)


@pytest.mark.parametrize(
    "options", [{}, {"value_head": "separate"}, {"decoding": "parallel"}], ids=["autoregressive", "critic", "parallel"]
)
def test_rollout_log_probs_equal_evaluate_actions_on_the_buffer(one_thread, options):
    """Sample through SB3's own rollout collection (eval mode, uint8 channel-first images;
    tokens, log-probs and values from one decoding pass), then score the stored actions from
    the float32 buffer in train mode with a teacher-forced pass, in other minibatch
    compositions: the log-probs PPO's ratio starts from, and the values, must match to float
    precision."""
    decoding = {"decoding": options["decoding"]} if "decoding" in options else {}
    policy_options = {k: v for k, v in options.items() if k != "decoding"}
    model = tiny_ppo(model_options=decoding, policy_options=policy_options)
    _, callback = model._setup_learn(16, callback=None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    model.policy.set_training_mode(True)
    for batch_size in (16, 5):
        for data in model.rollout_buffer.get(batch_size):
            values, log_prob, entropy = model.policy.evaluate_actions(data.observations, data.actions)
            torch.testing.assert_close(log_prob, data.old_log_prob, atol=1e-4, rtol=0)
            torch.testing.assert_close(values.flatten(), data.old_values, atol=1e-4, rtol=0)
            assert (entropy > 0).all() and (entropy <= 7 * np.log(256) + 1e-3).all()


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_log_probs_are_those_of_the_autoregressive_sampler(one_thread, temperature):
    """With 2 bins there are 2^7 = 128 token sequences: enumerate them, score each through
    evaluate_actions, and compare with the frequencies of 20,000 sequences the policy samples.
    The tiny policy is first taught "all 7 tokens equal, 0s or 1s" (each token copies the
    previous one), so the joint is far from the product of the per-token marginals that
    independent categoricals would score: this test would catch that mistake."""
    model = tiny_ppo(bins=2, seed=1, temperature=temperature)
    policy = model.policy
    obs = model.env.reset()
    one = {k: torch.as_tensor(v[:1]) for k, v in obs.items()}
    batch = policy.to_batch({k: v.expand(64, *v.shape[1:]) for k, v in one.items()})
    copies = torch.arange(64).remainder(2)[:, None].expand(64, 7)
    optimizer = torch.optim.Adam(policy.vla.parameters(), lr=1e-2)
    for _ in range(60):
        loss = policy.vla.loss({**batch, "action_bins": copies}, augment=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    sequences = torch.tensor(list(itertools.product([0, 1], repeat=7)))
    with torch.no_grad():
        _, log_prob, _ = policy.evaluate_actions(expand(one, len(sequences)), sequences)
    exact = log_prob.exp()
    assert abs(exact.sum().item() - 1.0) < 1e-4
    marginals = torch.stack([(exact * sequences[:, i]).sum() for i in range(7)])
    independent = torch.where(sequences.bool(), marginals, 1 - marginals).prod(-1)
    assert 0.5 * (independent - exact).abs().sum().item() > 0.5  # strongly dependent tokens

    n = 20_000
    torch.manual_seed(0)
    with torch.no_grad():
        samples, _, sample_log_prob = policy(expand(one, n), deterministic=False)
    index = (samples * (2 ** torch.arange(6, -1, -1))).sum(-1)
    empirical = torch.bincount(index, minlength=128).float() / n
    torch.testing.assert_close(sample_log_prob.exp(), exact[index], atol=1e-4, rtol=1e-4)
    assert 0.5 * (empirical - exact).abs().sum().item() < 0.03


def expand(obs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(n, *v.shape[1:]) for k, v in obs.items()}


def test_value_scale_multiplies_the_value_heads_output(one_thread):
    """Same weights, value_scale 10: every value (rollout, scoring, bootstrap) is 10x larger."""
    plain, scaled = tiny_ppo(), tiny_ppo(value_scale=10.0)
    scaled.policy.load_state_dict(plain.policy.state_dict())
    with torch.no_grad():
        plain.policy.value_head.bias.fill_(0.3)
        scaled.policy.value_head.bias.fill_(0.3)
    obs = plain.env.reset()
    obs_tensor, _ = plain.policy.obs_to_tensor(obs)
    with torch.no_grad():
        torch.testing.assert_close(
            scaled.policy.predict_values(obs_tensor), 10 * plain.policy.predict_values(obs_tensor)
        )
        bins = plain.policy._predict(obs_tensor, deterministic=True)
        plain_values, _, _ = plain.policy.evaluate_actions(obs_tensor, bins)
        scaled_values, _, _ = scaled.policy.evaluate_actions(obs_tensor, bins)
    torch.testing.assert_close(scaled_values, 10 * plain_values)
    with pytest.raises(ValueError, match="value_scale must be > 0, got 0"):
        tiny_ppo(value_scale=0.0)


@pytest.mark.parametrize("value_head", ["shared", "separate"])
def test_critic_lr_gives_the_value_function_its_own_rate(one_thread, value_head):
    """Value head (and a separate critic's trunk, not the text encoder it shares) in their own
    Adam group at critic_lr_scale x the policy's rate, kept under SB3's per-update rate reset."""
    model = tiny_ppo(learning_rate=1e-5, policy_options={"value_head": value_head, "critic_lr_scale": 100.0})
    policy = model.policy
    actor_group, critic_group = policy.optimizer.param_groups
    critic_ids = {id(p) for p in critic_group["params"]}
    assert {id(p) for p in policy.value_head.parameters()} <= critic_ids
    assert not critic_ids & {id(p) for p in policy.vla.parameters()}
    if value_head == "separate":
        shared_text = {id(p) for p in policy.vla.text.parameters()}
        trunk = {id(p) for p in policy.critic.parameters() if p.requires_grad and id(p) not in shared_text}
        assert trunk and trunk <= critic_ids
    trainable = {id(p) for p in policy.parameters() if p.requires_grad}
    assert critic_ids | {id(p) for p in actor_group["params"]} == trainable
    model.set_logger(Logger(None, []))
    model._update_learning_rate(policy.optimizer)
    assert actor_group["lr"] == pytest.approx(1e-5) and critic_group["lr"] == pytest.approx(1e-3)
    assert len(tiny_ppo().policy.optimizer.param_groups) == 1  # the default: one rate for all
    with pytest.raises(ValueError, match="critic_lr_scale must be > 0, got 0"):
        tiny_ppo(policy_options={"critic_lr_scale": 0.0})


def test_kl_to_init_is_zero_at_init_and_positive_after_a_change():
    logits = torch.randn(3, 7, 11)
    assert token_kl(logits, logits).abs().max() < 1e-6
    assert (token_kl(logits, logits + torch.randn(3, 7, 11)) > 0).all()


# --- train/ppo.py end to end ---------------------------------------------------------------------------
FAST = [
    "env.num_envs=2",
    "env.vec_env=dummy",
    "ppo.n_steps=8",
    "ppo.batch_size=8",
    "ppo.n_epochs=2",
    "ppo.critic_warmup_steps=16",
    "eval.every_steps=16",
    "eval.episodes=1",
    "eval.num_envs=1",
    "checkpoint_every=16",
    "threads=1",
]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO_ROOT / "train/ppo.py"), *FAST, *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory) -> Path:
    """A tiny policy standing in for a BC result (real weights, real format)."""
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict(TINY_MODEL))
    path = tmp_path_factory.mktemp("bc") / "best.pt"
    save_checkpoint(path, policy, ActionTokenizer(256), step=0)
    return path


@pytest.fixture(scope="module")
def tiny_run(bc_checkpoint, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ppo") / "run"
    result = run(f"init={bc_checkpoint}", f"run_dir={run_dir}", "ppo.total_timesteps=48", "ppo.kl_coef=0.1")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_tiny_run_changes_the_weights_and_saves_a_loadable_checkpoint(bc_checkpoint, tiny_run):
    from vla import load_policy

    before = read_checkpoint(bc_checkpoint)["model"]
    after = read_checkpoint(tiny_run / "checkpoints" / "latest.pt")
    assert after["step"] == 48
    changed = [k for k in before if not torch.equal(before[k], after["model"][k])]
    assert any(k.startswith("head.") for k in changed) and any(k.startswith("blocks.") for k in changed)
    runner = load_policy(tiny_run / "checkpoints" / "latest.pt")
    env = gym.make(TASK, image_size=32)
    obs, _ = env.reset(seed=0)
    action = runner.act(obs)
    assert action.shape == (7,) and np.all(np.abs(action) <= 1)
    assert (tiny_run / "checkpoints" / "best.pt").exists()
    evals = [json.loads(line) for line in (tiny_run / "evals.jsonl").read_text().splitlines()]
    assert [row["step"] for row in evals] == [0, 16, 32, 48]
    progress = (tiny_run / "tb" / "progress.csv").read_text().splitlines()[0].split(",")
    for key in ("train/clip_fraction", "train/approx_kl", "train/entropy", "train/explained_variance"):
        assert key in progress, key
    assert "train/kl_to_init" in progress and "time/env_steps_per_s" in progress
    assert "time/rollout_s" in progress and "time/update_s" in progress
    summary = json.loads((tiny_run / "summary.json").read_text())  # where the time went
    assert summary["rollout_s"] > 0 and summary["update_s"] > 0
    assert summary["rollout_s"] + summary["update_s"] + summary["eval_s"] <= summary["wall_s"] + 0.2


def test_resume_continues_from_the_interrupted_step(bc_checkpoint, tmp_path):
    run_dir = tmp_path / "interrupted"
    first = run(f"init={bc_checkpoint}", f"run_dir={run_dir}", "ppo.total_timesteps=48", "stop_at_step=32")
    assert first.returncode == 0, first.stderr[-3000:]
    saved = read_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert saved["step"] == 32
    second = run(f"resume={run_dir}", "ppo.total_timesteps=48")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed" in second.stdout
    final = read_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert final["step"] == 48 and final["ppo"]["n_updates"] > saved["ppo"]["n_updates"]
    assert any(not torch.equal(saved["model"][k], final["model"][k]) for k in saved["model"])
    steps = [json.loads(line)["step"] for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert steps == [0, 16, 32, 48]


def test_resume_keeps_the_runs_own_ppo_settings(bc_checkpoint, tmp_path):
    """Resuming without repeating the overrides must not fall back to the config's defaults
    (a separate critic's optimiser state only fits a separate critic)."""
    run_dir = tmp_path / "separate"
    own = ("ppo.value_head=separate", "ppo.temperature=0.5", "ppo.lr=1e-4", "ppo.critic_lr=1e-3")
    first = run(f"init={bc_checkpoint}", f"run_dir={run_dir}", "ppo.total_timesteps=32", "stop_at_step=16", *own)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(f"resume={run_dir}", "ppo.total_timesteps=32")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = OmegaConf.load(run_dir / "config.yaml").ppo
    assert (resumed.value_head, resumed.temperature, resumed.lr, resumed.critic_lr) == ("separate", 0.5, 1e-4, 1e-3)
    state = read_checkpoint(run_dir / "checkpoints" / "latest.pt")["ppo"]
    assert state["critic"]
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == pytest.approx([1e-4, 1e-3])


def test_missing_init_is_one_clear_error(tmp_path):
    result = run(f"init={tmp_path / 'nope.pt'}", f"run_dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot start from init=")
    assert "Traceback" not in result.stderr


def test_checkpoint_with_another_action_space_is_one_clear_error(tmp_path):
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "action_dim": 6}))
    path = save_checkpoint(tmp_path / "six.pt", policy, ActionTokenizer(256, action_dim=6))
    result = run(f"init={path}", f"run_dir={tmp_path / 'run'}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "6 action tokens" in last and "7-D" in last
    assert "Traceback" not in result.stderr


def test_from_scratch_and_cnn_baseline_run(tmp_path):
    scratch = run("init=null", *tiny_model_overrides(), f"run_dir={tmp_path / 'scratch'}", "ppo.total_timesteps=16")
    assert scratch.returncode == 0, scratch.stderr[-3000:]
    cnn = run("algo=cnn", "env.image_size=48", f"run_dir={tmp_path / 'cnn'}", "ppo.total_timesteps=16")
    assert cnn.returncode == 0, cnn.stderr[-3000:]
    assert (tmp_path / "cnn" / "checkpoints" / "latest.zip").exists()
    assert len((tmp_path / "cnn" / "evals.jsonl").read_text().splitlines()) == 2


def test_ppo_fine_tunes_a_policy_with_grounded_keypoints(tmp_path):
    from vla import load_policy

    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "keypoints": 2, "aux_weight": 1.0}))
    save_checkpoint(tmp_path / "kp.pt", policy, ActionTokenizer(256), step=0)
    # ... on the progress reward, whose episodes end at success (the evaluation's count)
    progress = ("env.reward_type=progress", "env.terminate_on_success=true")
    result = run(f"init={tmp_path / 'kp.pt'}", f"run_dir={tmp_path / 'run'}", "ppo.total_timesteps=32", *progress)
    assert result.returncode == 0, result.stderr[-3000:]
    runner = load_policy(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert runner.policy.keypoint_reader is not None
    env = gym.make(TASK, image_size=32)
    obs, _ = env.reset(seed=0)
    assert runner.act(obs).shape == (7,)
    env.close()


def test_multi_task_ppo_runs_every_task_and_evaluates_each(bc_checkpoint, tmp_path):
    run_dir = tmp_path / "multi"
    steps = ("ppo.total_timesteps=16", "eval.every_steps=16")
    result = run(f"init={bc_checkpoint}", f"run_dir={run_dir}", "task=[reach,push]", *steps)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "VLASandbox/Reach-v0, VLASandbox/Push-v0" in result.stdout
    evals = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert [row["step"] for row in evals] == [0, 16]
    for row in evals:  # one episode per task: the mean is over both
        assert set(row["per_task"]) == {"VLASandbox/Reach-v0", "VLASandbox/Push-v0"} and row["episodes"] == 2


def test_more_tasks_than_envs_is_one_clear_error(tmp_path):
    result = run("task=[reach,push,lift]", f"run_dir={tmp_path / 'run'}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "env.num_envs=2" in last and "3 tasks" in last


def test_the_task_recipes_compose_to_what_they_name():
    from envs.tasks import task_ids
    from vla.app.cli import compose_config
    from vla.rl.finetune import check_config

    stack = compose_config("ppo", ["+recipe=stack_gpu", "init=null", "ppo.kl_coef=0"])  # the scratch baseline
    five = compose_config("ppo", ["+recipe=five_tasks_gpu", "init=null", "ppo.kl_coef=0"])
    for cfg in (stack, five):
        check_config(cfg)
    assert task_ids(stack.task) == ["VLASandbox/Stack-v0"] and len(task_ids(five.task)) == 5
    assert stack.ppo.total_timesteps == five.ppo.total_timesteps == 49152
    assert five.env.num_envs % 5 == 0  # every task the same number of envs
    assert (five.env.num_envs * five.ppo.n_steps) % five.ppo.batch_size == 0  # whole minibatches
    with pytest.raises(ValueError, match="it needs init"):  # the KL anchor needs a starting policy
        check_config(compose_config("ppo", ["+recipe=stack_gpu", "init=null"]))
    # the CPU recipe is what was measured: reach_cpu over all five tasks, one env each
    five_cpu = compose_config("ppo", ["+recipe=five_tasks_cpu"])
    measured = ["+recipe=reach_cpu", "task=[reach,push,lift,pick_place,stack]", "env.num_envs=5", "eval.episodes=10"]
    assert five_cpu == compose_config("ppo", measured)


def test_training_envs_draw_the_configured_wordings_and_never_the_held_out_ones():
    from vla.app.cli import compose_config
    from vla.rl.finetune import check_config, env_settings, make_env

    cfg = compose_config("ppo", ["algo=cnn", "env.instruction_split=augmented_large"])
    env = make_env(TASK, env_settings(cfg, None), None, seed=0)
    assert env.unwrapped.instruction_split == "augmented_large"
    env.close()
    with pytest.raises(ValueError, match="heldout"):  # the test wordings stay out of training
        check_config(compose_config("ppo", ["algo=cnn", "env.instruction_split=heldout"]))
