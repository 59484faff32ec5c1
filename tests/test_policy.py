"""The policy itself: decoding paths agree, padding is invisible, it learns, the API works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer

INSTRUCTIONS = [
    "touch the red cube",
    "pick up the blue cylinder and put it in the orange zone",
    "lift the green cube",
    "stack the yellow cube on the red cylinder please, carefully",
]


def make_policy(**overrides) -> VLAPolicy:
    torch.manual_seed(0)
    return VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "layers": 2, "proprio_dim": 8, **overrides})).eval()


def random_batch(n: int = 4, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g),
        "proprio": torch.randn(n, 8, generator=g),
        "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)],
        "action_bins": torch.randint(0, 256, (n, 7), generator=g),
    }


def test_kv_cache_decoding_gives_the_same_tokens_as_recomputing_everything():
    policy, batch = make_policy(), random_batch(8)
    for temperature in (0.0, 1.0):
        cached = policy.decode(
            batch, use_cache=True, temperature=temperature, generator=torch.Generator().manual_seed(1)
        )
        full = policy.decode(
            batch, use_cache=False, temperature=temperature, generator=torch.Generator().manual_seed(1)
        )
        assert torch.equal(cached, full)
        everything = policy.decode(
            batch,
            use_cache=False,
            reuse_prefix=False,
            temperature=temperature,
            generator=torch.Generator().manual_seed(1),
        )
        assert torch.equal(cached, everything)


def test_greedy_decoding_matches_the_teacher_forced_argmax():
    """Feeding the decoded tokens back as teacher-forcing inputs reproduces them (V1)."""
    policy, batch = make_policy(), random_batch(4)
    bins = policy.decode(batch)
    logits = policy.action_logits({**batch, "action_bins": bins})
    assert torch.equal(logits.argmax(-1), bins)


def test_parallel_decoding_is_one_pass_and_deterministic():
    policy, batch = make_policy(decoding="parallel"), random_batch(4)
    assert torch.equal(policy.decode(batch), policy.decode(batch))
    assert policy.decode(batch).shape == (4, 7)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"sentence_token": True}, {"sentence_token": True, "word_tokens": False}],
    ids=["word tokens", "with sentence token", "sentence token alone"],
)
def test_padding_is_invisible_to_each_sample(overrides):
    """V8: a sample's action logits do not depend on how long the *other* instructions are."""
    policy = make_policy(**overrides)
    batch = random_batch(4)
    together = policy.action_logits(batch)
    for i in range(4):
        alone = policy.action_logits(
            {k: (v[i : i + 1] if torch.is_tensor(v) else v[i : i + 1]) for k, v in batch.items()}
        )
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_loss_falls_on_a_tiny_dataset():
    policy = make_policy()
    policy.train()
    batch = random_batch(16, seed=3)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(60):
        loss = policy.loss(batch, augment=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_parallel_decoding_leaves_the_action_embedding_out_of_training():
    """It is never read; a trainable weight without gradient stops DistributedDataParallel."""
    assert not any(p.requires_grad for p in make_policy(decoding="parallel").action_embed.parameters())
    assert all(p.requires_grad for p in make_policy().action_embed.parameters())


def test_soft_labels_change_the_loss_and_still_teach_the_labelled_bins():
    batch = random_batch(16, seed=3)
    hard, soft = make_policy(), make_policy(label_sigma=4.0)
    assert not torch.isclose(hard.loss(batch, augment=False)["loss"], soft.loss(batch, augment=False)["loss"])
    soft.train()
    optimizer = torch.optim.AdamW([p for p in soft.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(80):
        out = soft.loss(batch, augment=False)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    # the argmax lands on (or next to) the labelled bin, which one-hot accuracy counts
    logits = soft.eval().action_logits(batch)
    assert (logits.argmax(-1) - batch["action_bins"]).abs().float().mean() < 2.0


def test_runner_acts_on_env_observations(tmp_path):
    from vla.checkpoint import save_checkpoint
    from vla.inference import load_policy

    path = save_checkpoint(tmp_path / "policy.pt", make_policy(), ActionTokenizer(256))
    runner = load_policy(path)
    obs = {
        "image": np.zeros((32, 32, 3), np.uint8),
        "proprio": np.zeros(8, np.float32),
        "instruction": "lift the red cube",
    }
    action = runner.act(obs)
    assert action.shape == (7,) and np.all(np.abs(action) <= 1)
    assert runner.act_batch([obs, obs]).shape == (2, 7)
    runner.reset()
    with pytest.raises(ValueError, match="uint8"):
        runner.act({**obs, "image": np.zeros((32, 32, 3), np.float32)})


def test_the_onnx_backend_acts_as_the_torch_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from vla.checkpoint import save_checkpoint
    from vla.inference import load_policy

    policy = make_policy()
    policy.head.weight.data *= 50  # far-apart logits: float order cannot flip a token
    path = save_checkpoint(tmp_path / "policy.pt", policy, ActionTokenizer(256))
    torch_runner, onnx_runner = load_policy(path), load_policy(path, backend="onnx")
    for i in range(4):
        obs = {
            "image": np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "proprio": np.random.default_rng(i).normal(size=9).astype(np.float32),  # one more than it reads
            "instruction": INSTRUCTIONS[i],
        }
        np.testing.assert_array_equal(onnx_runner.act(obs), torch_runner.act(obs))
    assert onnx_runner._onnx is not None  # batch 1 went through ONNX Runtime
    with pytest.raises(ValueError, match="backend must be one of torch, onnx"):
        load_policy(path, backend="tensorrt")


def test_a_run_directory_without_best_loads_its_latest_checkpoint(tmp_path):
    from vla.checkpoint import read_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "checkpoints" / "latest.pt", make_policy(), ActionTokenizer(256), step=3)
    assert read_checkpoint(tmp_path)["step"] == 3


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("decoding", "beam", "decoding"),
        ("colour", 1, "unknown policy config"),
        ("cameras", ["wrist"], "cameras must start with 'scene'"),
        ("cameras", ["scene", "thermal"], "cameras must start with 'scene'"),
        ("label_sigma", -0.5, "label_sigma must be >= 0 bins"),
        ("keypoint_sentence", True, "needs keypoints=2"),
    ],
)
def test_bad_policy_config_names_the_valid_values(key, value, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig.from_dict({**TINY_MODEL, key: value})


def test_the_wrist_camera_adds_its_own_vision_tokens_and_is_read():
    policy = make_policy(cameras=["scene", "wrist"])
    batch = random_batch(4)
    batch["wrist_image"] = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    layout = dict(policy.token_layout(batch))
    assert layout["vision"] == 2 * policy.vision.num_tokens
    assert torch.equal(policy.decode(batch, use_cache=True), policy.decode(batch, use_cache=False))
    other_view = {**batch, "wrist_image": 255 - batch["wrist_image"]}
    assert not torch.allclose(policy.action_logits(batch), policy.action_logits(other_view))
    with pytest.raises(ValueError, match="no 'wrist_image'"):
        policy.decode(random_batch(4))


def test_proprio_is_standardised_with_the_demo_statistics_and_saved(tmp_path):
    from vla.checkpoint import build_policy, read_checkpoint, save_checkpoint

    mean, std = torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8)
    policy, batch = make_policy(), random_batch(4)
    policy.set_proprio_statistics(mean, std)
    plain = make_policy()  # same weights (same seed), identity statistics
    standardised = {**batch, "proprio": (batch["proprio"] - mean) / std}
    assert torch.allclose(policy.action_logits(batch), plain.action_logits(standardised), atol=1e-5)
    loaded, _ = build_policy(read_checkpoint(save_checkpoint(tmp_path / "p.pt", policy, ActionTokenizer(256))))
    assert torch.equal(loaded.proprio_mean, mean) and torch.equal(loaded.proprio_std, std)
    with pytest.raises(ValueError, match="8 elements"):
        policy.set_proprio_statistics(torch.zeros(3), torch.ones(3))


def test_a_policy_reads_the_leading_proprio_elements_it_was_built_for():
    """An 8-element model (pose, opening) ignores the gripper velocity the env now appends;
    a 9-element one reads it, and is refused 8-element observations with a clear error."""
    batch = random_batch(4)
    longer = {**batch, "proprio": torch.cat([batch["proprio"], torch.randn(4, 1)], -1)}
    eight = make_policy()
    assert torch.equal(eight.action_logits(batch), eight.action_logits(longer))
    nine = make_policy(proprio_dim=9)
    faster = {**longer, "proprio": longer["proprio"].clone()}
    faster["proprio"][:, 8] += 1.0
    assert not torch.allclose(nine.action_logits(longer), nine.action_logits(faster))
    with pytest.raises(ValueError, match="reads 9 proprio elements but the observation has 8"):
        nine.action_logits(batch)


def test_the_auxiliary_loss_regresses_where_the_instruction_points():
    policy = make_policy(aux_weight=1.0).train()
    batch = {**random_batch(8), "key_positions": torch.rand(8, 6) * 0.4 - 0.2}
    out = policy.loss(batch, augment=False)
    assert torch.isclose(out["loss"], out["action_loss"] + out["aux_loss"])
    out["loss"].backward()
    assert policy.key_position_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="key_positions"):
        policy.loss(random_batch(8))
    assert make_policy().key_position_head is None  # off by default: no extra weights


def test_keypoints_add_tokens_that_read_the_image_where_the_instruction_points():
    policy = make_policy(keypoints=2)
    batch = random_batch(4)
    assert dict(policy.token_layout(batch))["vision"] == policy.vision.num_tokens + 2
    assert torch.equal(policy.decode(batch, use_cache=True), policy.decode(batch, use_cache=False))
    text_states, text_mask = policy.text(batch["instruction"], torch.device("cpu"))
    tokens, coords, logits = policy.keypoint_reader(batch["image"], text_states, text_mask)
    assert tokens.shape == (4, 2, policy.config.width) and coords.shape == (4, 2, 2)
    assert logits.shape == (4, 2, (32 // 2) ** 2) and coords.abs().max() <= 1.0
    # another instruction asks another question of the same images
    other_states, other_mask = policy.text(batch["instruction"][1:] + batch["instruction"][:1], torch.device("cpu"))
    _, other, _ = policy.keypoint_reader(batch["image"], other_states, other_mask)
    assert not torch.allclose(coords, other)


def swapped_keypoints_logits(policy: VLAPolicy, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Action logits with the two keypoints pinned to two far-apart cells, and pinned the
    other way round (target and destination swapped)."""
    reader = policy.keypoint_reader
    heatmaps = reader.heatmaps

    def pinned(first: int, second: int):
        def read(*args):
            logits, cells = heatmaps(*args)
            peaks = torch.zeros_like(logits)
            peaks[:, 0, first] = peaks[:, 1, second] = 50.0
            return logits + peaks, cells

        return read

    try:
        reader.heatmaps = pinned(0, -1)  # top-left and bottom-right cells
        as_read = policy.action_logits(batch)
        _, coords, _ = reader(batch["image"], *policy.text(batch["instruction"], torch.device("cpu")))
        assert (coords[:, 0] - coords[:, 1]).abs().min() > 1.5  # the two really are apart
        reader.heatmaps = pinned(-1, 0)
        swapped = policy.action_logits(batch)
    finally:
        del reader.heatmaps
    return as_read, swapped


def test_keypoint_roles_tell_the_decoder_which_keypoint_is_the_target():
    """No positions over the prefix: only the learned roles tell the two keypoint tokens apart."""
    policy, batch = make_policy(keypoints=2), random_batch(4)
    assert torch.count_nonzero(policy.keypoint_reader.roles) == 0  # zeros at init: interchangeable
    as_read, swapped = swapped_keypoints_logits(policy, batch)
    assert torch.allclose(as_read, swapped, atol=1e-5)
    with torch.no_grad():
        policy.keypoint_reader.roles.normal_()  # as training leaves them
    as_read, swapped = swapped_keypoints_logits(policy, batch)
    assert not torch.allclose(as_read, swapped, atol=1e-3)


def test_keypoints_must_be_off_or_two():
    with pytest.raises(ValueError, match="keypoints must be 0 .* got 3"):
        make_policy(keypoints=3)


def test_the_keypoint_heatmap_loss_trains_the_reader_and_not_the_decoder():
    policy = make_policy(keypoints=2, aux_weight=1.0).train()
    batch = {**random_batch(8), "key_uv": torch.rand(8, 2, 2) * 2 - 1}
    out = policy.loss(batch, augment=False)
    assert torch.isclose(out["loss"], out["action_loss"] + out["aux_loss"]) and out["keypoint_error_px"] > 0
    out["aux_loss"].backward()  # the heatmap loss alone must reach the keypoint conv map
    assert policy.keypoint_reader.features[0].weight.grad.abs().sum() > 0
    assert policy.head.weight.grad is None  # and not the action head
    policy.zero_grad(set_to_none=True)
    policy.loss(batch, augment=False)["action_loss"].backward()  # the decoder reads detached coordinates
    assert policy.keypoint_reader.features[0].weight.grad is None
    with pytest.raises(ValueError, match="key_positions"):
        policy.loss(random_batch(8))


def test_heatmap_loss_is_lowest_on_the_true_point():
    policy = make_policy(keypoints=2)
    side = 16
    target = torch.tensor([[[0.3, -0.5], [-0.7, 0.1]]])
    cells = torch.stack(
        torch.meshgrid(
            (torch.arange(side) + 0.5) / side * 2 - 1, (torch.arange(side) + 0.5) / side * 2 - 1, indexing="xy"
        ),
        -1,
    ).reshape(-1, 2)
    sharp = -((cells[None, None] - target[:, :, None]) ** 2).sum(-1) * 200
    loss_true, error_true = policy.keypoint_reader.heatmap_loss(sharp, target)
    loss_off, error_off = policy.keypoint_reader.heatmap_loss(sharp, -target)
    assert loss_true < loss_off and error_true < 0.5 < error_off


def test_a_chunked_policy_executes_the_first_action_of_its_chunk():
    """Action chunking: trained on 3 actions (21 tokens); the executed action's logits do not
    depend on the later actions (causal), so decoding stops after 7 tokens."""
    policy, batch = make_policy(chunk=3), random_batch(4)
    chunk_bins = torch.randint(0, 256, (4, 21), generator=torch.Generator().manual_seed(5))
    other_future = chunk_bins.clone()
    other_future[:, 7:] = 255 - other_future[:, 7:]
    first = policy.action_logits({**batch, "action_bins": chunk_bins})[:, :7]
    assert torch.allclose(first, policy.action_logits({**batch, "action_bins": other_future})[:, :7], atol=1e-5)
    assert torch.allclose(first, policy.action_logits({**batch, "action_bins": chunk_bins[:, :7]}), atol=1e-5)
    bins = policy.decode(batch)
    assert bins.shape == (4, 7) and torch.equal(bins, policy.decode(batch, use_cache=False))
    assert dict(policy.token_layout(batch))["action"] == 21
    with pytest.raises(ValueError, match="1 to 3 actions of 7 tokens, got 10"):
        policy.action_logits({**batch, "action_bins": chunk_bins[:, :10]})


def test_the_chunk_loss_ignores_actions_past_the_episode_end():
    policy = make_policy(chunk=2)
    batch = {**random_batch(4), "action_bins": torch.randint(0, 256, (4, 14), generator=torch.Generator())}
    valid = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    changed = batch["action_bins"].clone()
    changed[~valid.repeat_interleave(7, 1)] = 0  # relabel only the masked tokens

    def loss(bins, mask=None):
        extra = {} if mask is None else {"action_valid": mask}
        return policy.loss({**batch, "action_bins": bins, **extra}, augment=False)["loss"]

    assert torch.isclose(loss(batch["action_bins"], valid), loss(changed, valid))
    assert not torch.isclose(loss(batch["action_bins"]), loss(changed))  # unmasked, the relabel counts


@pytest.mark.parametrize("chunk", [0, -2, 1.5])
def test_a_bad_chunk_names_what_is_allowed(chunk):
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        PolicyConfig.from_dict({**TINY_MODEL, "chunk": chunk})


def test_a_format_1_checkpoint_is_migrated_and_a_retired_option_is_refused_by_name(tmp_path):
    """Old checkpoints name encoders by short names and leave later fields out; those trained
    with options retired since cannot be rebuilt and say so."""
    import pytest

    from vla.checkpoint import CheckpointError, build_policy, read_checkpoint, save_checkpoint

    policy = make_policy()
    path = save_checkpoint(tmp_path / "p.pt", policy, ActionTokenizer(256))
    payload = torch.load(path, weights_only=False)
    old = {k: v for k, v in payload["policy_config"].items() if k != "label_sigma"}  # a field added later
    payload.update(format="vla-sandbox-policy/1", policy_config=old)
    del payload["sha256"]  # a digest came later too
    torch.save(payload, path)
    loaded, _ = build_policy(read_checkpoint(path))
    assert loaded.config.label_sigma == 0.0  # format 1's default, not today's 24
    retired = {**old, "text_encoder": "minilm_tuned"}
    torch.save({**payload, "policy_config": retired}, path)
    with pytest.raises(CheckpointError, match="retired since .*text_encoder=minilm_tuned"):
        read_checkpoint(path)


def test_the_sentence_token_is_one_more_text_token_and_is_read():
    plain, batch = make_policy(), random_batch(4)
    policy = make_policy(sentence_token=True)
    layout, plain_layout = dict(policy.token_layout(batch)), dict(plain.token_layout(batch))
    assert layout["text"] == plain_layout["text"] + 1 and layout["vision"] == plain_layout["vision"]
    # made last: every other weight starts as without it
    plain_state, state = plain.state_dict(), policy.state_dict()
    assert set(state) - set(plain_state) == {"sentence_proj.weight", "sentence_proj.bias"}
    assert all(torch.equal(plain_state[k], state[k]) for k in plain_state)
    before = policy.action_logits(batch)
    with torch.no_grad():
        policy.sentence_proj.weight.mul_(3.0)
    assert not torch.allclose(before, policy.action_logits(batch), atol=1e-4)


def test_without_word_tokens_the_sentence_token_is_the_decoders_only_text_token():
    batch = random_batch(4)
    policy = make_policy(sentence_token=True, word_tokens=False)
    assert dict(policy.token_layout(batch))["text"] == 1 and policy.text_proj is None
    assert torch.equal(policy.decode(batch, use_cache=True), policy.decode(batch, use_cache=False))
    # the instruction still reaches the actions, through the sentence embedding
    reworded = {**batch, "instruction": batch["instruction"][::-1]}
    assert not torch.allclose(policy.action_logits(batch), policy.action_logits(reworded), atol=1e-4)
    with pytest.raises(ValueError, match="word_tokens=false .* needs sentence_token=true, got sentence_token=False"):
        make_policy(word_tokens=False)


def test_cached_keypoints_without_a_vit_need_no_image_but_a_vit_does():
    batch = random_batch(4)
    coords = {"keypoint_coords": torch.zeros(4, 2, 2)}
    no_image = {k: v for k, v in batch.items() if k != "image"}
    policy = make_policy(keypoints=2, vision_tokens=False)
    assert torch.equal(policy.action_logits({**no_image, **coords}), policy.action_logits({**batch, **coords}))
    with pytest.raises(ValueError, match="has no 'image'"):
        make_policy(keypoints=2).action_logits({**no_image, **coords})


def test_without_vision_tokens_the_scene_reaches_the_decoder_through_the_keypoints_only():
    policy, batch = make_policy(keypoints=2, vision_tokens=False), random_batch(4)
    assert policy.vision is None and not any(k.startswith("vision.") for k in policy.state_dict())
    assert dict(policy.token_layout(batch))["vision"] == 2
    assert torch.equal(policy.decode(batch, use_cache=True), policy.decode(batch, use_cache=False))
    # the image still matters, through where the reader points
    other_image = {**batch, "image": batch["image"].flip(1)}
    assert not torch.allclose(policy.action_logits(batch), policy.action_logits(other_image))
    loss = policy.loss({**batch, "key_uv": torch.zeros(4, 2, 2)}, augment=True)
    assert torch.isfinite(loss["loss"])


@pytest.mark.parametrize("overrides", [{"keypoints": 0}, {"keypoints": 2, "cameras": ["scene", "wrist"]}])
def test_without_vision_tokens_keypoints_and_the_scene_camera_alone_are_required(overrides):
    with pytest.raises(ValueError, match="vision_tokens=false .* needs keypoints=2 and cameras=\\[scene\\]"):
        make_policy(vision_tokens=False, **overrides)


def test_keypoints_read_once_give_the_decoder_what_reading_them_gives():
    policy, batch = make_policy(keypoints=2, vision_tokens=False), random_batch(4)
    with torch.no_grad():
        policy.keypoint_reader.roles.normal_()
        _, coords, _ = policy.keypoint_reader(batch["image"], *policy.text(batch["instruction"], torch.device("cpu")))
    cached = {**batch, "keypoint_coords": coords}
    assert torch.allclose(policy.action_logits(batch), policy.action_logits(cached), atol=1e-6)
    elsewhere = torch.tensor([[-0.8, -0.8], [0.8, 0.8]]).expand(4, 2, 2)  # the decoder reads the coordinates
    moved = {**batch, "keypoint_coords": elsewhere}
    assert not torch.allclose(policy.action_logits(cached), policy.action_logits(moved))
    # nothing left to supervise: the auxiliary loss says so instead of training nothing
    aux = make_policy(keypoints=2, vision_tokens=False, aux_weight=1.0)
    with pytest.raises(ValueError, match="model.aux_weight=0"):
        aux.loss({**cached, "key_uv": coords})


def test_freezing_the_reader_stops_its_reading_part_but_not_its_token_embedding():
    reader = make_policy(keypoints=2).keypoint_reader
    reader.freeze_reading()
    frozen = {n for n, p in reader.named_parameters() if not p.requires_grad}
    assert {n for n, _ in reader.named_parameters()} - frozen == {
        n for n, _ in reader.named_parameters() if n.startswith("embed.") or n == "roles"
    }
    assert any(n.startswith("features.") for n in frozen) and "questions" in frozen


def test_minilm_cache_gives_what_encoding_gives_whatever_the_order_it_filled_in():
    """The frozen encoder's cache (one padded table, grown as new instructions arrive)
    returns, for any batch, the states and mask that encoding the batch afresh gives."""
    from vla.language import MINILM, PretrainedTextEncoder, normalise_instruction

    encoder = PretrainedTextEncoder(MINILM)
    device = torch.device("cpu")
    encoder(INSTRUCTIONS[:1], device)  # one row first: the table must grow (twice) later
    encoder(INSTRUCTIONS[2:], device)
    batch = [INSTRUCTIONS[i] for i in (1, 0, 3, 1, 2)]  # one not cached yet, one repeated
    states, mask = encoder(batch, device)
    with torch.no_grad():
        fresh, fresh_mask = encoder._encode([normalise_instruction(t) for t in batch], device)  # what it encodes
    assert torch.equal(mask, fresh_mask)
    assert torch.allclose(states, fresh * fresh_mask[..., None], atol=1e-5)
    assert len(encoder._lengths) == len(INSTRUCTIONS)  # each instruction encoded once


def test_a_reader_with_the_sentence_asks_each_keypoint_from_it_and_padding_stays_invisible():
    """``keypoint_sentence``: each keypoint's question moves with the sentence embedding (its
    own projection for each), and padding the instruction changes nothing (V8)."""
    policy = make_policy(keypoints=2, keypoint_sentence=True)
    reader = policy.keypoint_reader
    batch = random_batch(4)
    states, mask = policy.text(batch["instruction"], torch.device("cpu"))
    questions = reader.ask(states, mask)
    with torch.no_grad():
        reader.read_sentence.weight[: policy.config.width].mul_(2.0)  # keypoint 0's projection only
    changed = reader.ask(states, mask)
    assert not torch.allclose(changed[:, 0], questions[:, 0]) and torch.allclose(changed[:, 1], questions[:, 1])
    padded_states = torch.cat([states, torch.randn(4, 3, states.shape[-1])], 1)
    padded_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1)
    assert torch.allclose(reader.ask(padded_states, padded_mask), changed, atol=1e-5)
    reader.freeze_reading()
    assert not reader.read_sentence.weight.requires_grad


def test_act_stops_on_an_empty_instruction_and_says_why():
    from vla.inference import PolicyRunner

    torch.manual_seed(0)
    config = {**TINY_MODEL, "keypoints": 2, "keypoint_channels": 8}
    runner = PolicyRunner(VLAPolicy(PolicyConfig.from_dict(config)), ActionTokenizer(bins=256))
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "proprio": np.zeros(9, np.float32), "instruction": " ?! "}
    action, info = runner.act_with_info(obs)
    assert info["stopped"] and "is empty" in info["message"] and not action[:6].any()
    _, info = runner.act_with_info({**obs, "instruction": "touch the red cube"})
    assert set(info) == {"stopped", "message", "nothing_named", "command_similarity", "read_as"}
    assert 0 <= info["nothing_named"] <= 1 and info["command_similarity"] == 1.0  # no known commands yet
    assert runner.scope_threshold == 0.5  # an uncalibrated reader's default
    with pytest.raises(
        ValueError, match=r"scope_threshold must be 'calibrated', a number in \(0, 1\) or None, got 1.5"
    ):
        PolicyRunner(runner.policy, runner.tokenizer, scope_threshold=1.5)
    plain = PolicyRunner(VLAPolicy(PolicyConfig.from_dict({**config, "scope_check": False})), runner.tokenizer)
    assert plain.scope_threshold is None  # no abstain cell: it stops only on empty instructions
    assert plain.act_with_info(obs)[1]["stopped"]


def test_act_stops_on_an_instruction_like_no_known_command_and_the_bank_saves_and_loads(tmp_path):
    """The known commands (set by calibrate_scope): an instruction whose sentence embedding is
    below the least similarity to every one of them stops, saying why; the bank's length
    travels with the weights."""
    from vla.inference import PolicyRunner

    torch.manual_seed(0)
    config = {**TINY_MODEL, "keypoints": 2, "keypoint_channels": 8}
    policy = VLAPolicy(PolicyConfig.from_dict(config))
    known = ["touch the red cube", "push the blue cylinder to the green zone", "lift the white cube"]
    sentences = policy.sentences(known, torch.device("cpu"))
    policy.known_commands.set(sentences, 0.999)
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "proprio": np.zeros(9, np.float32), "instruction": known[0]}
    runner = PolicyRunner(policy, ActionTokenizer(bins=256), scope_threshold=0.99)
    action, info = runner.act_with_info(obs)
    assert not info["stopped"] and info["command_similarity"] == pytest.approx(1.0)
    action, info = runner.act_with_info({**obs, "instruction": "qwerty asdf zxcv"})
    assert info["stopped"] and "reads as no task this policy was trained for" in info["message"]
    assert info["command_similarity"] < 0.999 and not action[:6].any()
    torch.save(policy.state_dict(), tmp_path / "w.pt")
    again = VLAPolicy(PolicyConfig.from_dict(config))
    again.load_trainable_state_dict(torch.load(tmp_path / "w.pt"))
    assert torch.equal(again.known_commands.bank, sentences) and float(again.known_commands.threshold) == pytest.approx(
        0.999
    )
    older = {k: v for k, v in policy.state_dict().items() if not k.startswith("known_commands.")}
    again = VLAPolicy(PolicyConfig.from_dict(config))
    again.load_trainable_state_dict(older)  # a checkpoint from before the bank: no check
    assert len(again.known_commands.bank) == 0


@pytest.mark.parametrize("encoder", ["scratch", "sentence-transformers/all-MiniLM-L6-v2"], ids=["scratch", "minilm"])
def test_calibration_sets_both_out_of_scope_checks_on_real_scenes(encoder):
    """calibrate_scope on rendered validation scenes: the reader's threshold within its range,
    the known commands from training scenes, and their least similarity between the training
    lexicon's nonsense and the valid instructions, which it lets through."""
    from envs.evaluation import VALIDATION_SEED_BASE
    from envs.rewrites import TRAINING
    from vla.evaluation.closed_loop import policy_env_kwargs
    from vla.evaluation.robustness import THRESHOLD_RANGE, calibrate_scope, valid_instructions

    torch.manual_seed(0)
    config = {**TINY_MODEL, "keypoints": 2, "keypoint_channels": 8, "text_encoder": encoder}
    policy = VLAPolicy(PolicyConfig.from_dict(config)).eval()
    ids, kwargs = ["VLASandbox/Reach-v0", "VLASandbox/Lift-v0"], policy_env_kwargs(policy)
    threshold = calibrate_scope(policy, ids, 20, kwargs)
    assert THRESHOLD_RANGE[0] <= threshold <= THRESHOLD_RANGE[1]
    commands, cpu = policy.known_commands, torch.device("cpu")
    assert 0 < len(commands.bank) <= 2 * 20 * 4  # unique valid instructions of the training scenes
    valid = [obs["instruction"] for obs in valid_instructions(ids, range(20), kwargs)]
    assert (commands.similarity(policy.sentences(valid, cpu)) >= commands.threshold).all()
    validation = valid_instructions(ids, range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + 20), kwargs)
    quantile = commands.similarity(policy.sentences([obs["instruction"] for obs in validation], cpu)).quantile(0.01)
    nonsense = commands.similarity(policy.sentences(list(TRAINING.nonsense), cpu)).max()
    assert commands.threshold <= quantile + 1e-6  # at most 1% of valid validation instructions stop
    assert nonsense < quantile or encoder == "scratch"  # a pretrained encoder tells commands from chatter
    if nonsense < quantile:  # separable: halfway, so unlike nonsense stops too
        assert float(commands.threshold) == pytest.approx(float(nonsense + quantile) / 2, abs=1e-5)
