"""train/bc.py and eval/evaluate.py end to end on a tiny real dataset: resume equality, DDP
smoke, evaluation outputs, and one clear error line for each kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, tiny_model_overrides

FAST = [
    "trainer.progress=false",
    "trainer.cache_keypoints=false",
    "trainer.log_every=1",
    "trainer.batch_size=8",
    "trainer.warmup_steps=2",
    "eval.every_steps=0",
    "eval.final_episodes=1",
    "eval.splits=[train]",
    "eval.language_swap=false",
    "eval.num_envs=1",
    "eval.video_episodes=0",
    "data.tasks=[reach,lift]",
    "data.num_workers=1",
    "data.val_fraction=0.25",
]


def run(script: str, *args: str, launcher: list[str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable]), str(REPO_ROOT / script), *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def train(tiny_demos: Path, run_dir: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    result = run(
        "train/bc.py", f"data.path={tiny_demos}", f"run_dir={run_dir}", *FAST, *tiny_model_overrides(), *extra, **kwargs
    )
    return result


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def trained_run(tiny_demos, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    result = train(tiny_demos, run_dir, "trainer.steps=6", "trainer.checkpoint_every=3")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_run_directory_holds_config_checkpoints_logs_and_evaluation(trained_run):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "evaluation.json",
        "evaluation.md",
        "checkpoints/latest.pt",
        "checkpoints/best.pt",
    ):
        assert (trained_run / name).exists(), name
    assert any((trained_run / "tb").iterdir())
    assert sorted(losses(trained_run)) == [1, 2, 3, 4, 5, 6]
    report = json.loads((trained_run / "evaluation.json").read_text())
    assert {row["task"] for row in report["tasks"]} == {"VLASandbox/Reach-v0", "VLASandbox/Lift-v0"}


def test_resumed_run_has_exactly_the_losses_of_the_uninterrupted_run(tiny_demos, trained_run, tmp_path):
    run_dir = tmp_path / "interrupted"
    first = train(tiny_demos, run_dir, "trainer.steps=6", "trainer.checkpoint_every=3", "trainer.stop_at_step=3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(losses(run_dir)) == [1, 2, 3]
    second = train(tiny_demos, run_dir, "trainer.steps=6", "trainer.checkpoint_every=3", f"resume={run_dir}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert losses(run_dir) == losses(trained_run)


def test_fp16_training_scales_its_loss_and_resumes_exactly(tiny_demos, tmp_path):
    """trainer.amp=fp16: autocast to fp16 with a loss scaler whose state the checkpoint keeps."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    steps = ("trainer.steps=4", "trainer.checkpoint_every=2", "trainer.amp=fp16", "eval.final_episodes=1")
    assert train(tiny_demos, whole, *steps).returncode == 0
    payload = torch.load(whole / "checkpoints" / "latest.pt", weights_only=False)
    assert payload["loss_scaler"]["scale"] > 1  # the loss was scaled up before backward
    assert train(tiny_demos, split, *steps, "trainer.stop_at_step=2").returncode == 0
    assert train(tiny_demos, split, *steps, f"resume={split}").returncode == 0
    assert losses(split) == losses(whole)


@pytest.mark.parametrize("reader", [False, True], ids=["no keypoints", "keypoint reader trained"])
def test_two_process_ddp_on_cpu_trains_and_checkpoints(tiny_demos, tmp_path, reader):
    """With the keypoint reader trained on (the large trainer), its abstain head, which only
    grounding trains, must not stop DDP: DDP refuses trainable weights the loss never reaches."""
    run_dir = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    grounding = [
        "grounding.scenes=100",
        "grounding.steps=2",
        "grounding.batch_size=8",
        f"grounding.path={tmp_path}/g.npz",
    ]
    extra = ["model.keypoints=2", "model.aux_weight=1.0", "model.scope_check=true", *grounding] if reader else []
    result = train(tiny_demos, run_dir, "trainer.steps=3", "eval.final_episodes=1", *extra, launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x2" in result.stdout  # the run reports both ranks
    assert (run_dir / "checkpoints" / "latest.pt").exists()


def evaluate_reach(checkpoint: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """eval/evaluate.py on two reach episodes with two envs, quietly, into ``out``."""
    common = ("episodes=2", "tasks=[reach]", "num_envs=2", "progress=false", f"out_dir={out}")
    return run("eval/evaluate.py", f"checkpoint={checkpoint}", *common, *overrides)


def test_evaluate_reports_splits_language_swap_open_loop_and_video(trained_run, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_reach(trained_run, out, "splits=[train,heldout]")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert [(r["split"], r["episodes"]) for r in report["tasks"]] == [("train", 2), ("heldout", 2)]
    assert all(0 <= r["ci95"][0] <= r["success_rate"] <= r["ci95"][1] <= 1 for r in report["tasks"])
    for row in report["tasks"]:  # the stage funnel: reach's one stage, then success (ever reached)
        assert list(row["stages_reached"]) == ["above target", "success"]
        assert row["stages_reached"]["success"] >= row["success_rate"]
        assert sum(row["first_object"].values()) == pytest.approx(1.0)
    assert report["language_swap"]["tasks"][0]["episodes"] == 2
    assert report["open_loop"]["samples"] > 0
    assert (out / "rollouts.mp4").stat().st_size > 0
    assert "all tasks" in (out / "evaluation.md").read_text()
    assert "above target" in (out / "evaluation.md").read_text()


def assert_one_clear_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-2000:]


def test_resume_with_a_different_model_config_is_one_clear_error(tiny_demos, trained_run, tmp_path):
    result = train(tiny_demos, trained_run, "trainer.steps=6", f"resume={trained_run}", "model.width=64")
    assert_one_clear_error(result, "different model config", "width")


def test_corrupted_checkpoint_is_one_clear_error(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not a checkpoint" * 10)
    assert_one_clear_error(run("eval/evaluate.py", f"checkpoint={broken}"), "not a readable checkpoint", str(broken))


def test_missing_dataset_is_one_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    result = run("train/bc.py", f"data.path={missing}", "data.collect_if_missing=false", f"run_dir={tmp_path / 'r'}")
    assert_one_clear_error(result, "no dataset at", "train/collect.py")


def test_training_on_heldout_wordings_is_one_clear_error(tmp_path):
    result = run("train/bc.py", "data.instructions=heldout", f"run_dir={tmp_path / 'r'}")
    assert_one_clear_error(result, "unknown data.instructions 'heldout'", "train, augmented")


def test_unknown_task_is_one_clear_error(trained_run):
    result = run("eval/evaluate.py", f"checkpoint={trained_run}", "tasks=[fly]")
    assert_one_clear_error(result, "unknown task 'fly'", "reach")


def test_a_task_the_demos_lack_is_one_clear_error(tiny_demos, tmp_path):
    # tiny_demos holds reach and lift: asking for push as well must not train on the two alone
    result = train(tiny_demos, tmp_path / "r", "trainer.steps=2", "data.tasks=[reach,push,lift]")
    assert_one_clear_error(result, "holds no episodes of ['push']", "it holds ['lift', 'reach']", "train/collect.py")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_model_camera_the_demos_lack_is_one_clear_error(tiny_demos, tmp_path):
    result = train(tiny_demos, tmp_path / "r", "trainer.steps=2", "model.cameras=[scene,wrist]")
    assert_one_clear_error(result, "recorded only ['scene']", "cameras=[scene,wrist]")


def test_a_model_reading_more_proprio_than_the_demos_hold_is_one_clear_error(tiny_demos, tmp_path):
    result = train(tiny_demos, tmp_path / "r", "trainer.steps=2", "model.proprio_dim=10")
    assert_one_clear_error(result, "model.proprio_dim=10", "recorded 9 proprio elements", "gripper_opening_velocity")


def test_auxiliary_key_position_loss_trains_from_the_recorded_demos(tiny_demos, tmp_path):
    result = train(tiny_demos, tmp_path / "aux", "trainer.steps=3", "model.aux_weight=1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "aux" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["aux_error_cm"] > 0 for r in rows if "loss" in r)


def test_a_chunked_policy_trains_on_future_actions_and_evaluates_closed_loop(tiny_demos, tmp_path):
    result = train(tiny_demos, tmp_path / "chunk", "trainer.steps=3", "model.chunk=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "action 28]" in result.stdout  # the token layout: 4 actions of 7 tokens
    report = json.loads((tmp_path / "chunk" / "evaluation.json").read_text())
    assert report["tasks"] and 0 <= report["open_loop"]["token_accuracy"] <= 1


def test_an_int8_evaluation_runs_the_quantised_policy_closed_loop(trained_run, tmp_path):
    out = tmp_path / "int8"
    quiet = ("language_swap=false", "video_episodes=0")
    result = evaluate_reach(trained_run, out, "splits=[train]", "precision=int8", *quiet)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "int8" in result.stdout and (out / "evaluation.json").exists()
    assert_one_clear_error(
        run("eval/evaluate.py", f"checkpoint={trained_run}", "precision=int4"), "unknown precision 'int4'", "fp32, bf16"
    )


def test_an_oracle_evaluation_needs_a_policy_with_keypoints(trained_run, tmp_path):
    result = run("eval/evaluate.py", f"checkpoint={trained_run}", "keypoints=oracle", f"out_dir={tmp_path}")
    assert_one_clear_error(result, "keypoints=oracle", "this checkpoint has none")
    result = run("eval/evaluate.py", f"checkpoint={trained_run}", "keypoints=truth", f"out_dir={tmp_path}")
    assert_one_clear_error(result, "unknown keypoints 'truth'; valid values are: read, oracle")


def test_keypoints_are_grounded_on_rendered_scenes_before_behaviour_cloning(tiny_demos, tmp_path):
    # with instruction augmentation: demos and grounding scenes both re-worded
    scenes = tmp_path / "scenes.npz"
    grounding = ["grounding.scenes=200", "grounding.steps=5", "grounding.batch_size=16", f"grounding.path={scenes}"]
    args = ["trainer.steps=3", "model.keypoints=2", "model.aux_weight=1.0", "data.instructions=augmented", *grounding]
    result = train(tiny_demos, tmp_path / "kp", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grounding: keypoints" in result.stdout and scenes.exists()
    report = json.loads((tmp_path / "kp" / "grounding.json").read_text())
    assert report["steps"] == 5 and report["heldout_error_px"] > 0 and report["paraphrase_error_px"] > 0
    assert report["split"] == "augmented"
    rows = [json.loads(line) for line in (tmp_path / "kp" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["keypoint_error_px"] > 0 for r in rows if "loss" in r)
    # the same policy acting on the true keypoints instead of its reader's (keypoints=oracle)
    out = tmp_path / "oracle"
    common = ["episodes=2", "tasks=[reach]", "num_envs=2", "splits=[train]", "progress=false", "video_episodes=0"]
    result = run("eval/evaluate.py", f"checkpoint={tmp_path / 'kp'}", "keypoints=oracle", *common, f"out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["tasks"][0]["episodes"] == 2 and report["language_swap"] is None


def test_keypoints_read_once_after_grounding_train_as_reading_them_every_step_does(tiny_demos, tmp_path):
    """Without the auxiliary loss the reader gets no gradient in behaviour cloning (its
    coordinates reach the decoder detached), so reading each demo step once must leave the
    losses as they were, with re-worded instructions too (each sample keeps its one wording):
    only the work per step changes."""
    scenes = tmp_path / "scenes.npz"
    grounding = ["grounding.scenes=200", "grounding.steps=5", "grounding.batch_size=16", f"grounding.path={scenes}"]
    model = ["model.keypoints=2", "model.aux_weight=0", "model.vision_tokens=false"]
    steps = ["trainer.steps=4", "data.instructions=augmented_large"]  # each sample keeps its one wording
    cached = train(tiny_demos, tmp_path / "cached", *steps, "trainer.cache_keypoints=true", *model, *grounding)
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert "[vision 2," in cached.stdout
    every_step = train(tiny_demos, tmp_path / "every", *steps, *model, *grounding)
    assert every_step.returncode == 0, every_step.stderr[-3000:]
    a, b = losses(tmp_path / "cached"), losses(tmp_path / "every")
    assert sorted(a) == [1, 2, 3, 4] and a == pytest.approx(b, rel=1e-4)

    bad = ["trainer.cache_keypoints=true", "model.keypoints=2", "model.aux_weight=1", "model.keypoint_sentence=true"]
    wrong = train(tiny_demos, tmp_path / "bad", *bad)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    needs = "cache_keypoints=true needs model.keypoints=2 and model.aux_weight=0"
    assert needs in wrong.stderr and "got 2 and 1.0" in wrong.stderr


def test_the_default_and_the_recipes_compose_to_their_measured_settings():
    from envs.vocabulary import colour_palette, scene_nouns
    from vla.app.cli import compose_config
    from vla.policy import PolicyConfig
    from vla.training.bc import check_config

    cfg = compose_config("bc", [])  # python train/bc.py: five tasks, the ViT model, on the CPU
    config = check_config(cfg)
    # the small model is PolicyConfig's defaults, with the world's colours and nouns to read by
    assert config == PolicyConfig(colour_palette=colour_palette(), scene_nouns=scene_nouns())
    assert (
        config.vision_tokens
        and config.keypoints == 2
        and list(cfg.data.tasks) == ["reach", "push", "lift", "pick_place", "stack"]
    )
    assert config.text_encoder == "sentence-transformers/all-mpnet-base-v2" and cfg.trainer.cache_keypoints

    keypoints_only = check_config(compose_config("bc", ["+recipe=five_cpu_keypoints"]))
    assert not keypoints_only.vision_tokens and (keypoints_only.width, keypoints_only.layers) == (64, 2)
    flow = check_config(compose_config("bc", ["+recipe=five_cpu_flow"]))  # the same recipe, the flow head
    assert flow == PolicyConfig(**{**vars(keypoints_only), "action_head": "flow"})
    reader32 = check_config(compose_config("bc", ["+recipe=five_cpu_reader32"]))  # the default, a wider reader
    assert reader32 == PolicyConfig(**{**vars(config), "keypoint_channels": 32})

    gpu = compose_config("bc", ["+recipe=five_gpu"])
    large = PolicyConfig.from_dict(dict(gpu.model))
    assert (large.width, large.layers, large.patch_size, large.keypoints) == (256, 6, 8, 2)
    assert large.sentence_token and not large.word_tokens and large.proprio_dim == 9 and large.aux_weight == 1
    assert (large.label_sigma, large.decoding) == (24.0, "parallel")
    assert (gpu.trainer.steps, gpu.trainer.lr, gpu.data.episodes_per_task) == (6000, 3e-4, 2000)
    assert gpu.grounding.path.endswith("_augmented_large.npz")  # its own grounding scenes
    assert list(gpu.eval.splits) == ["train", "heldout"]
    assert (gpu.data.rewrites, gpu.grounding.negatives, gpu.eval.robustness_episodes) == (0.5, 0.25, 20)
    gpu_flow = compose_config("bc", ["+recipe=five_gpu_flow"])  # the same recipe, the flow head
    assert PolicyConfig.from_dict(dict(gpu_flow.model)) == PolicyConfig(**{**vars(large), "action_head": "flow"})
    assert gpu_flow.trainer == gpu.trainer and gpu_flow.data == gpu.data and gpu_flow.grounding == gpu.grounding


def test_closed_loop_probe_compares_the_policy_with_the_expert_on_its_own_states(trained_run, tmp_path):
    out = tmp_path / "probe.json"
    args = ["--checkpoint", str(trained_run), "--tasks", "reach", "--episodes", "1", "--out", str(out)]
    result = run("eval/probes/closed_loop_probe.py", *args, "--variants", "policy", "expert_translation")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["policy", "expert_translation"]
    assert set(rows[0]["mean_abs_error"]) == {"dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"}
    assert "| Reach-v0 | policy |" in result.stdout
    assert list(rows[0]["stages_reached"]) == ["above target", "success"]
    assert rows[1]["stages_reached"]["above target"] == 1.0  # the expert's translation gets there


def test_perception_oracle_trains_camera_and_privileged_policies_and_runs_them(tiny_demos, tmp_path):
    out = tmp_path / "oracle.json"
    args = ["--data", str(tiny_demos), "--task", "reach", "--steps", "2", "--batch-size", "4", "--episodes", "1"]
    result = run(
        "eval/probes/perception_oracle.py", *args, "--threads", "1", "--oracle-noise-cm", "0", "3", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["camera"]["episodes"] == report["oracle"]["episodes"] == report["oracle, 3 cm error"]["episodes"] == 1
    assert "| oracle |" in result.stdout and "| camera |" in result.stdout
    missing = run("eval/probes/perception_oracle.py", "--data", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "no dataset at" in missing.stderr


def test_periodic_evaluation_picks_best_on_validation_seeds_not_the_test_seeds(monkeypatch):
    """best.pt is chosen by the periodic score: it must not see eval/evaluate.py's episodes."""
    from omegaconf import OmegaConf

    import vla.evaluation.closed_loop as closed_loop
    from envs.evaluation import EVAL_SEED_BASE, VALIDATION_SEED_BASE
    from tests.conftest import TINY_MODEL
    from vla.policy import PolicyConfig, VLAPolicy
    from vla.tokenizer import ActionTokenizer

    seen: list[list[int]] = []
    real_evaluate = closed_loop.evaluate

    def recording_evaluate(*args, **kwargs):
        results, frames = real_evaluate(*args, **kwargs)
        seen.append([s for r in results for s in r.seeds])
        return results, frames

    monkeypatch.setattr(closed_loop, "evaluate", recording_evaluate)
    cfg = OmegaConf.create({"data": {"tasks": ["reach"]}, "eval": {"episodes": 2, "num_envs": 2}})
    policy = VLAPolicy(PolicyConfig.from_dict(TINY_MODEL)).eval()
    rate = closed_loop.success_rate(policy, ActionTokenizer(256), cfg, torch.device("cpu"))
    assert 0.0 <= rate <= 1.0
    assert seen == [[VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + 1]]
    assert VALIDATION_SEED_BASE >= EVAL_SEED_BASE + 1_000_000  # far past any test episode


def test_fp16_weights_copy_is_smaller_and_loads_as_the_same_policy(trained_run, tmp_path):

    from vla.checkpoint import build_policy, read_checkpoint, save_weights_fp16

    best = trained_run / "checkpoints" / "best.pt"
    slim_path = save_weights_fp16(trained_run, tmp_path / "best_fp16.pt")
    assert slim_path.stat().st_size < best.stat().st_size / 2  # no optimiser state, half the bytes per weight
    original, slim = read_checkpoint(best), read_checkpoint(slim_path)
    assert "optimizer" not in slim and slim["step"] == original["step"]
    policy, tokenizer = build_policy(slim)
    weights = policy.trainable_state_dict()
    for name, value in original["model"].items():
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(weights[name], expected), name
    assert tokenizer.state_dict().keys() == build_policy(original)[1].state_dict().keys()


def test_success_by_wording_replays_each_seed_to_its_template(trained_run):
    from envs.instructions import TEMPLATES
    from eval.probes.by_wording import success_by_wording, table

    rows = success_by_wording(trained_run / "evaluation.json", progress=False)
    report = json.loads((trained_run / "evaluation.json").read_text())
    for entry in report["per_episode"]:
        mine = [r for r in rows if (r["task"], r["split"]) == (entry["task"], entry["split"])]
        assert sorted(s for r in mine for s in r["successes"]) == sorted(entry["successes"])
    for r in rows:
        task = r["task"].split("/")[-1].removesuffix("-v0").lower().replace("pickplace", "pick_place")
        assert r["template"] in TEMPLATES[task][r["split"]]
        assert f"| {r['template']} |" in table(rows)


def test_a_config_group_typo_is_one_clear_error_and_leaves_no_run_directory(tmp_path):
    run_dir = tmp_path / "r"
    result = run("train/bc.py", "data=nosuchsuite", f"run_dir={run_dir}")
    assert_one_clear_error(result, "data=nosuchsuite", "valid values are: five, reach")
    assert len(result.stderr.strip().splitlines()) == 1 and not run_dir.exists()
    result = run("train/bc.py", "trainer.stepz=3", f"run_dir={run_dir}")
    assert_one_clear_error(result, "trainer.stepz=3: no such setting", "steps, batch_size")
    result = run("train/ppo.py", "+recipe=nope", f"run_dir={run_dir}")
    assert_one_clear_error(result, "+recipe=nope", "reach_cpu_smoke, reach_gpu")
    assert not run_dir.exists()


def test_a_bad_task_name_fails_before_any_data_is_collected_or_loaded(tmp_path):
    data, run_dir = tmp_path / "demos", tmp_path / "r"
    result = run("train/bc.py", "data.tasks=[flyaway]", f"data.path={data}", f"run_dir={run_dir}")
    assert_one_clear_error(result, "unknown task 'flyaway'", "pick_place")
    assert not data.exists() and not run_dir.exists()  # nothing collected, no empty run directory
    assert "collect" not in result.stdout and "load demos" not in result.stderr


def test_the_run_log_holds_what_the_run_printed(trained_run):
    log = (trained_run / "bc.log").read_text()
    assert "config: tasks ['reach', 'lift']" in log and "token layout per step" in log
    assert "all tasks" in log  # the final evaluation table
    assert "\r" not in log  # no progress-bar refreshes


def test_a_flow_head_film_policy_with_learned_loss_weights_trains_and_evaluates_closed_loop(tiny_demos, tmp_path):
    options = ("model.action_head=flow", "model.chunk=2", "model.fusion=film", "model.word_tokens=false")
    balance = ("model.aux_weight=1.0", "model.loss_weighting=uncertainty")
    result = train(tiny_demos, tmp_path / "flow", "trainer.steps=3", *options, *balance)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "text 0," in result.stdout and "action 2]" in result.stdout  # no text tokens; one token per action
    rows = [json.loads(line) for line in (tmp_path / "flow" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["weight_action"] > 0 and r["weight_aux"] > 0 for r in rows if "loss" in r)
    report = json.loads((tmp_path / "flow" / "evaluation.json").read_text())
    assert report["tasks"] and 0 <= report["open_loop"]["token_accuracy"] <= 1


def test_a_run_takes_the_grounded_reader_of_another_instead_of_grounding_its_own(tiny_demos, tmp_path):
    """grounding.reader: every variant of an experiment starts from one grounded reader; with
    the reader frozen (cache_keypoints) the new run's checkpoint holds exactly those weights."""
    from vla.checkpoint import read_checkpoint

    scenes = tmp_path / "scenes.npz"
    grounding = ["grounding.scenes=200", "grounding.steps=5", "grounding.batch_size=16", f"grounding.path={scenes}"]
    model = ["model.keypoints=2", "model.aux_weight=0", "model.vision_tokens=false", "trainer.cache_keypoints=true"]
    source = train(tiny_demos, tmp_path / "source", "trainer.steps=2", *model, *grounding)
    assert source.returncode == 0, source.stderr[-3000:]
    taker = train(tiny_demos, tmp_path / "taker", "trainer.steps=2", *model, f"grounding.reader={tmp_path / 'source'}")
    assert taker.returncode == 0, taker.stderr[-3000:]
    assert "no grounding here" in taker.stdout and "grounding: keypoints" not in taker.stdout
    weights = [read_checkpoint(tmp_path / run)["model"] for run in ("source", "taker")]
    grounded = ("keypoint_reader.features.", "keypoint_reader.questions", "keypoint_reader.query.")
    reader = [k for k in weights[0] if k.startswith(grounded)]
    assert reader and all(torch.equal(weights[0][k], weights[1][k]) for k in reader)
    other = train(
        tiny_demos, tmp_path / "other", *model, "model.keypoint_channels=8", f"grounding.reader={tmp_path / 'source'}"
    )
    assert_one_clear_error(other, "grounding.reader=", "keypoint_channels: checkpoint 16 vs config 8")


@pytest.mark.parametrize("adapt", ["model.vision_frozen_layers=1", "model.vision_lora_rank=2"], ids=["frozen", "lora"])
def test_a_run_fine_tunes_the_vit_of_another_frozen_or_through_lora(trained_run, tiny_demos, tmp_path, adapt):
    """vision_init: the ViT starts from another run's; frozen (or under LoRA adapters) its own
    weights come out of training exactly as they went in, while the rest of the policy learns."""
    from vla.checkpoint import read_checkpoint

    result = train(tiny_demos, tmp_path / "run", "trainer.steps=3", adapt, "model.vision_layers=1",
                   f"vision_init={trained_run}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ViT from {trained_run}" in result.stdout
    source, tuned = (read_checkpoint(path)["model"] for path in (trained_run, tmp_path / "run"))
    vit = [k for k in source if k.startswith("vision.")]

    def own(key: str) -> str:  # under LoRA a linear layer's weights sit in its base_layer
        module, _, leaf = key.rpartition(".")
        return key if key in tuned else f"{module}.base_layer.{leaf}"

    assert vit and all(torch.equal(source[k], tuned[own(k)]) for k in vit)
    assert not torch.equal(source["head.weight"], tuned["head.weight"])  # the decoder trained
    if "lora" in adapt:
        adapters = [k for k in tuned if "lora_B" in k]
        assert adapters and any(tuned[k].abs().sum() > 0 for k in adapters)  # B left zero: the adapters learned
    other = train(tiny_demos, tmp_path / "other", adapt, "model.width=64", f"vision_init={trained_run}")
    assert_one_clear_error(other, "vision_init=", "width: checkpoint 32 vs config 64")
