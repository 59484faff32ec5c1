"""The fast training settings (trainer.compile, trainer.gpu_data, trainer.fused_adam,
trainer.lr_scaling) change how a step runs, never what it computes: the same batches in the
same order, the same losses and gradients within rounding. No timing is checked here:
eval/profile_training.py --variants measures speed (docs/performance.md)."""

from __future__ import annotations

import itertools
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL
from tests.test_bc import losses, train
from vla.language import MINILM

# The recipe's model shape in miniature: keypoints with their auxiliary heatmap loss, one
# sentence token, parallel decoding, Gaussian labels.
KEYPOINT_MODEL = {
    **TINY_MODEL,
    "keypoints": 2,
    "keypoint_channels": 8,
    "keypoint_sentence": True,
    "aux_weight": 1.0,
    "sentence_token": True,
    "word_tokens": False,
    "decoding": "parallel",
    "label_sigma": 24.0,
}


def make_policy(values: dict, seed: int = 0):
    from vla.policy import PolicyConfig, VLAPolicy

    torch.manual_seed(seed)
    return VLAPolicy(PolicyConfig.from_dict(values)).train()


def random_batch(batch_size: int, image_size: int, bins: int, device: str = "cpu") -> dict:
    generator = torch.Generator().manual_seed(1)
    words = ["pick up the red cube", "push the blue cylinder onto the green zone", "touch the cube", "lift it up"]
    batch = {
        "image": torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8, generator=generator),
        "proprio": torch.randn(batch_size, 9, generator=generator),
        "action_bins": torch.randint(0, bins, (batch_size, 7), generator=generator),
        "key_uv": torch.rand(batch_size, 2, 2, generator=generator) * 2 - 1,
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["instruction"] = [words[i % len(words)] for i in range(batch_size)]
    return batch


def one_step(policy, batch: dict, compile, autocast=None) -> tuple[dict, torch.Tensor, dict]:
    from vla.training.runtime import make_optimizer
    from vla.training.step import TrainStep

    device = batch["proprio"].device
    optimizer = make_optimizer(policy, 1e-3, 0.05, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    step = TrainStep(policy, policy, optimizer, scaler, autocast or nullcontext(), 1.0, False, compile)
    out, grad_norm = step(batch)
    grads = {n: p.grad.detach().clone() for n, p in policy.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grad_norm.detach(), grads


def assert_same_step(eager: tuple, compiled: tuple, rel: float) -> None:
    """Same losses and gradients: compared as one vector, since a gradient that is zero in
    exact arithmetic (a bias the softmax cancels) is rounding noise in both."""
    (out_e, norm_e, grads_e), (out_c, norm_c, grads_c) = eager, compiled
    assert set(out_c) == set(out_e) and set(grads_c) == set(grads_e)
    for key in out_e:
        assert out_c[key].item() == pytest.approx(out_e[key].item(), rel=rel, abs=rel), key
    assert norm_c.item() == pytest.approx(norm_e.item(), rel=rel)
    flat_e = torch.cat([g.float().flatten() for g in grads_e.values()])
    flat_c = torch.cat([grads_c[n].float().flatten() for n in grads_e])
    assert ((flat_c - flat_e).norm() / flat_e.norm()).item() < rel


def test_a_compiled_step_gives_the_eager_loss_and_gradients_on_the_cpu():
    values = {**KEYPOINT_MODEL, "text_encoder": "scratch"}
    batch = random_batch(6, values["image_size"], 256)
    eager = one_step(make_policy(values), batch, compile=False)
    compiled = one_step(make_policy(values), batch, compile="default")
    assert "aux_loss" in eager[0] and "keypoint_error_px" in compiled[0]  # the heatmap loss ran compiled
    assert_same_step(eager, compiled, rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compiled_bf16_step_on_the_gpu_gives_the_eager_loss_and_gradients(mode):
    values = {**KEYPOINT_MODEL, "text_encoder": "scratch"}
    batch = random_batch(32, values["image_size"], 256, "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    eager = one_step(make_policy(values).cuda(), batch, False, autocast)
    compiled = one_step(make_policy(values).cuda(), batch, mode, autocast)
    assert_same_step(eager, compiled, rel=3e-2)  # bf16 operands: rounding differs by fusion


def test_read_instructions_pads_the_encoder_states_without_changing_the_loss():
    from vla.training.step import read_instructions

    values = {**KEYPOINT_MODEL, "text_encoder": "scratch"}
    policy = make_policy(values).eval()
    batch = random_batch(4, values["image_size"], 256)
    read = read_instructions(policy, batch)
    assert "instruction" not in read and read["text_states"].shape[1] == policy.config.text_max_length
    assert read["text_mask"].sum() == policy.text(batch["instruction"], torch.device("cpu"))[1].sum()
    with torch.no_grad():
        from_strings, from_states = policy.loss(batch, augment=False), policy.loss(read, augment=False)
    assert from_states["loss"].item() == pytest.approx(from_strings["loss"].item(), rel=1e-5)


@pytest.fixture(scope="module")
def reworded_dataset(tiny_demos):
    """The tiny demos, each step re-worded (and some typed as people type), as training reads them."""
    from envs.dataset import DemoDataset
    from vla.data import ActionTokenDataset
    from vla.tokenizer import ActionTokenizer

    demos = DemoDataset(tiny_demos).preload(progress=False)
    demos.reword_instructions(0, "augmented").rewrite_instructions(0, 0.5)
    indices = np.arange(len(demos))[::2]  # a subset, as the training split is
    return ActionTokenDataset(demos, ActionTokenizer(256), indices)


@pytest.mark.parametrize(("start", "rank", "world"), [(0, 0, 1), (-5, 0, 1), (-5, 1, 2)])
def test_device_batches_are_the_loaders_batches_in_the_same_order(reworded_dataset, start, rank, world):
    """From any position (here across an epoch's end) and on any rank: the DataLoader's
    batches, the instruction read as the encoder reads it for the policy."""
    from vla.data import collate
    from vla.training.device_data import DeviceBatches
    from vla.training.runtime import StepSampler
    from vla.training.step import read_instructions

    dataset = reworded_dataset
    start = start % len(dataset)
    policy = make_policy({**KEYPOINT_MODEL, "text_encoder": MINILM})
    batches = DeviceBatches(dataset, policy, torch.device("cpu"), 4, seed=3, start=start, rank=rank, world_size=world)
    assert len(dict.fromkeys(batches.text_rows.tolist())) == len(batches.text_states) > 1  # each wording once
    sampler = iter(StepSampler(len(dataset), 3, start, rank, world))
    for _ in range(3):
        expected = read_instructions(policy, collate([dataset[i] for i in itertools.islice(sampler, 4)]))
        got = next(batches)
        assert set(got) == set(expected)
        for key, value in expected.items():
            if key == "text_states":
                torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4)
            else:
                assert torch.equal(got[key], value), key


def test_the_fast_settings_are_checked_before_any_work():
    from vla.app.cli import compose_config
    from vla.training.bc import check_config

    def error(*overrides: str) -> str:
        with pytest.raises(ValueError) as caught:
            check_config(compose_config("bc", list(overrides)))
        return str(caught.value)

    assert "trainer.compile must be off or one of default, reduce-overhead" in error("trainer.compile=fast")
    assert "model.text_encoder=scratch is trained with the policy" in error(
        "trainer.gpu_data=true", "model.text_encoder=scratch"
    )
    assert "trainer.lr_scaling" in error("trainer.lr_scaling=cubic")
    assert "must be true or false" in error("trainer.gpu_data=yes")
    check_config(compose_config("bc", ["trainer.compile=reduce-overhead", "trainer.gpu_data=true"]))


def test_the_learning_rate_scales_with_the_batch_as_asked():
    from vla.training.runtime import scaled_lr

    assert scaled_lr(3e-4, 1024, 256, "none") == 3e-4
    assert scaled_lr(3e-4, 1024, 256, "sqrt") == pytest.approx(6e-4)
    assert scaled_lr(3e-4, 1024, 256, "linear") == pytest.approx(1.2e-3)
    assert scaled_lr(3e-4, 256, 256, "linear") == 3e-4  # at the batch it was tuned at: unchanged


def test_fused_adam_is_asked_for_on_cuda_only_where_configured():
    from vla.training.runtime import make_optimizer

    model = torch.nn.Linear(2, 2)
    assert not make_optimizer(model, 1e-3, 0.0, torch.device("cpu"), fused=True).defaults["fused"]
    if torch.cuda.is_available():
        model = model.cuda()
        assert make_optimizer(model, 1e-3, 0.0, torch.device("cuda"), fused=True).defaults["fused"]
        assert not make_optimizer(model, 1e-3, 0.0, torch.device("cuda"), fused=False).defaults["fused"]


def test_a_run_on_device_batches_compiled_logs_the_losses_of_a_loader_run(tiny_demos, tmp_path):
    """train/bc.py end to end: the same batches and the same losses, whichever way they come
    (no augmentation: compiled random numbers come from another generator)."""
    common = ["trainer.steps=3", "trainer.augment=false", f"model.text_encoder={MINILM}", "data.instructions=augmented"]
    loader = train(tiny_demos, tmp_path / "loader", *common)
    assert loader.returncode == 0, loader.stderr[-3000:]
    fast = train(tiny_demos, tmp_path / "fast", *common, "trainer.gpu_data=true", "trainer.compile=default")
    assert fast.returncode == 0, fast.stderr[-3000:]
    a, b = losses(tmp_path / "loader"), losses(tmp_path / "fast")
    assert sorted(a) == [1, 2, 3] and b == pytest.approx(a, rel=1e-4)
