"""Grounding: the scene camera projection, the rendered scene sets and their cache, and the
keypoint reader's pretraining on them."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the tasks)
from envs.camera import scene_image_coordinates
from envs.grounding import load_or_render_scenes, render_scenes
from envs.vocabulary import OBJECT_COLOURS
from tests.conftest import TINY_MODEL, tiny_model_overrides
from vla.policy import PolicyConfig, VLAPolicy
from vla.training.grounding import heldout_error, pretrain_keypoints


def nearest_object_colour(pixel: np.ndarray) -> str:
    """The object colour whose direction in RGB is closest to the pixel's (shading scales
    brightness, not hue)."""
    rgb = pixel.astype(np.float64) / max(np.linalg.norm(pixel), 1e-6)
    return max(OBJECT_COLOURS, key=lambda c: rgb @ (np.array(OBJECT_COLOURS[c]) / np.linalg.norm(OBJECT_COLOURS[c])))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_projected_target_centre_lands_on_the_target_in_the_image(seed):
    env = gym.make("VLASandbox/Reach-v0", image_size=128)
    obs, info = env.reset(seed=seed)
    env.close()
    u, v = scene_image_coordinates(info["key_positions"][:3])
    size = obs["image"].shape[0]
    column, row = int((u + 1) / 2 * size), int((v + 1) / 2 * size)
    assert nearest_object_colour(obs["image"][row, column]) == info["task_spec"]["target_colour"]


def test_projection_rejects_points_without_three_coordinates():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        scene_image_coordinates(np.zeros((4, 2)))


def test_scene_sets_are_labelled_cached_and_checked(tmp_path):
    path = tmp_path / "scenes.npz"
    scenes = load_or_render_scenes(path, count=12, seed=0, image_size=32, workers=1, progress=False)
    assert scenes["images"].shape == (12, 32, 32, 3) and scenes["images"].dtype == np.uint8
    assert scenes["key_uv"].shape == (12, 2, 2) and np.abs(scenes["key_uv"]).max() <= 1.0
    assert len(set(scenes["instructions"].tolist())) > 5  # five tasks, many objects
    np.testing.assert_allclose(scenes["key_uv"], scene_image_coordinates(scenes["key_positions"].reshape(12, 2, 3)))
    stamp = path.stat().st_mtime_ns
    again = load_or_render_scenes(path, count=12, seed=0, image_size=32, workers=1, progress=False)
    assert path.stat().st_mtime_ns == stamp  # read back, not rendered anew
    np.testing.assert_array_equal(again["images"], scenes["images"])
    other = load_or_render_scenes(path, count=12, seed=1, image_size=32, workers=1, progress=False)
    assert not np.array_equal(other["key_positions"], scenes["key_positions"])  # another seed: rendered anew
    with pytest.raises(ValueError, match="count must be positive, got 0"):
        render_scenes(0)


def test_augmented_scenes_are_cached_apart_and_heldout_wording_is_refused(tmp_path):
    path = tmp_path / "scenes.npz"
    small = {"count": 10, "seed": 0, "image_size": 32, "workers": 1, "progress": False}
    train = load_or_render_scenes(path, **small)
    augmented = load_or_render_scenes(path, **small, split="augmented")
    np.testing.assert_array_equal(augmented["key_uv"], train["key_uv"])  # same layouts, other words
    assert augmented["instructions"].tolist() != train["instructions"].tolist()
    stamp = path.stat().st_mtime_ns
    again = load_or_render_scenes(path, **small, split="augmented")
    assert path.stat().st_mtime_ns == stamp and again["instructions"].tolist() == augmented["instructions"].tolist()
    with pytest.raises(ValueError, match=r"training split \(train, augmented, augmented_large\), got 'heldout'"):
        load_or_render_scenes(path, count=10, split="heldout")


def test_a_cache_worded_before_its_split_changed_is_rendered_again(tmp_path, monkeypatch):
    import envs.grounding

    path = tmp_path / "scenes.npz"
    small = {"count": 10, "seed": 0, "image_size": 32, "workers": 1, "progress": False, "split": "augmented_large"}
    load_or_render_scenes(path, **small)
    stamp = path.stat().st_mtime_ns
    load_or_render_scenes(path, **small)
    assert path.stat().st_mtime_ns == stamp
    monkeypatch.setattr(envs.grounding, "split_fingerprint", lambda split: "templates edited")
    load_or_render_scenes(path, **small)
    assert path.stat().st_mtime_ns != stamp


def test_the_held_out_split_rewords_the_same_scenes(tmp_path):
    train = render_scenes(6, seed=0, image_size=32, workers=1, progress=False, start=4)
    reworded = render_scenes(6, seed=0, image_size=32, workers=1, progress=False, split="heldout", start=4)
    np.testing.assert_array_equal(reworded["key_uv"], train["key_uv"])  # same layouts
    assert not set(reworded["instructions"].tolist()) & set(train["instructions"].tolist())
    assert any(word in text for text in reworded["instructions"] for word in ("block", " can"))
    first = render_scenes(10, seed=0, image_size=32, workers=1, progress=False)
    np.testing.assert_array_equal(first["key_uv"][4:], train["key_uv"])  # start skips into the sequence
    with pytest.raises(ValueError, match="grounding scenes per seed, got -1"):
        render_scenes(3, start=-1)


def keypoint_policy() -> VLAPolicy:
    torch.manual_seed(0)
    return VLAPolicy(
        PolicyConfig.from_dict(
            {
                **TINY_MODEL,
                "keypoints": 2,
                "keypoint_channels": 16,
                "text_encoder": "sentence-transformers/all-MiniLM-L6-v2",
            }
        )
    )


def test_grounding_pretraining_moves_the_keypoints_towards_the_truth(tmp_path):
    scenes = load_or_render_scenes(tmp_path / "s.npz", count=300, seed=0, image_size=32, workers=2, progress=False)
    policy = keypoint_policy()
    before = heldout_error(policy, scenes, range(270, 300))
    decoder_before = policy.head.weight.clone()
    result = pretrain_keypoints(policy, scenes, steps=400, batch_size=64, lr=3e-3, heldout=30, progress=False)
    assert result["heldout_error_px"] < 0.7 * before["heldout_error_px"], (before, result)
    assert torch.equal(policy.head.weight, decoder_before)  # only the keypoint reader learns
    with pytest.raises(ValueError, match="keypoints"):
        pretrain_keypoints(VLAPolicy(PolicyConfig.from_dict(TINY_MODEL)), scenes, steps=1)


def synthetic_scenes(count: int = 160) -> dict[str, np.ndarray]:
    """Random images and labels: enough to drive the training loop without rendering."""
    rng = np.random.default_rng(0)
    return {
        "images": rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
        "instructions": np.array([f"touch the red cube number {i % 7}" for i in range(count)]),
        "key_uv": rng.uniform(-1, 1, (count, 2, 2)).astype(np.float32),
    }


def test_scenes_label_what_each_keypoint_names():
    from envs.grounding import KEY_KINDS

    scenes = render_scenes(10, seed=0, image_size=32, workers=1, progress=False)  # two of each task
    for task, text, (target, destination) in zip(
        scenes["tasks"], scenes["instructions"], scenes["key_kinds"], strict=True
    ):
        assert KEY_KINDS[target] in text  # train wording: "the red cube", "the blue cylinder"
        if task in ("push", "pick_place"):
            assert KEY_KINDS[destination] == "zone"
        elif task == "stack":
            assert text.endswith(KEY_KINDS[destination])  # "... on the green cylinder"
        else:
            assert destination == target
    assert scenes["target_sibling"].dtype == bool and len(scenes["target_sibling"]) == 10
    from envs.grounding import has_sibling

    spec = {"target_colour": "red", "target_shape": "cube"}
    assert has_sibling(spec, ["blue_cube", "red_cylinder"]) and not has_sibling(spec, ["red_cube", "blue_cylinder"])


def test_the_kind_loss_asks_the_reader_what_each_keypoint_names():
    scenes = synthetic_scenes()
    scenes["key_kinds"] = np.random.default_rng(1).integers(0, 3, (len(scenes["images"]), 2))

    def train(kind_weight: float, scenes=scenes) -> dict[str, float]:
        return pretrain_keypoints(
            keypoint_policy(), scenes, steps=3, batch_size=32, progress=False, kind_weight=kind_weight
        )

    plain = train(0.0)
    assert train(1.0)["train_loss"] > plain["train_loss"]  # the heatmap loss plus a cross-entropy
    with pytest.raises(ValueError, match="kind_weight must be 0 or more, got -1"):
        train(-1.0)
    without = {k: v for k, v in scenes.items() if k != "key_kinds"}
    with pytest.raises(ValueError, match="needs scenes with key_kinds"):
        train(1.0, without)


def test_the_grounding_probe_breaks_paraphrase_errors_down_by_template_and_noun(tmp_path):
    from eval.probes.grounding_probe import markdown, noun_of, probe
    from vla.app.cli import compose_config

    overrides = [
        *tiny_model_overrides(),
        "model.keypoints=2",
        "model.keypoint_channels=16",
        "model.text_encoder=sentence-transformers/all-MiniLM-L6-v2",
        "grounding.scenes=300",
        "grounding.steps=5",
        "grounding.batch_size=32",
        "grounding.workers=2",
        f"grounding.path={tmp_path}/scenes.npz",
        "data.instructions=augmented_large",
        "device=cpu",
    ]
    report = probe(compose_config("bc", overrides), progress=False)
    assert report["split"] == "augmented_large" and report["kept_out_scenes"] == 30
    rows = report["target_by_template"]
    assert sum(r["scenes"] for r in rows) == 30 and {r["group"][0] for r in rows} >= {"reach", "push", "stack"}
    assert all(0 <= r["missed"] <= r["scenes"] and r["mean_px"] >= 0 for r in rows)
    assert {r["group"][1] for r in report["target_by_noun"]} <= {"block", "can"}
    by_sibling = report["target_by_sibling"]
    assert sum(r["scenes"] for r in by_sibling) == 30
    assert {r["group"][1] for r in by_sibling} <= {"sibling on the table", "no sibling"}
    assert "| held-out template |" in markdown(report)
    assert noun_of("destination", "build a tower: blue can over red block") == "block"
    assert noun_of("destination", "tap the red block") == "block"  # reach: the target is the destination
    with pytest.raises(ValueError, match="model.keypoints=2, got 0"):
        probe(compose_config("bc", [*tiny_model_overrides(), "device=cpu"]), progress=False)


def test_training_wordings_reword_and_ask_for_absent_things_in_their_shares(tmp_path):
    from envs.grounding import training_wordings
    from envs.rewrites import TRAINING

    scenes = load_or_render_scenes(tmp_path / "s.npz", count=60, seed=0, image_size=32, workers=1, progress=False)
    texts, named = training_wordings(scenes, seed=0, rewrites=0.4, negatives=0.3, indices=range(60))
    assert named.shape == (60, 2) and texts == training_wordings(scenes, 0, 0.4, 0.3, range(60))[0]
    negatives = ~named[:, 0]
    assert 6 <= negatives.sum() <= 30
    for text, objects, out in zip(texts, scenes["objects"], negatives, strict=True):
        named_objects = {o.replace("_", " ") for o in str(objects).split(",")}
        if out and text not in TRAINING.nonsense:  # the target: an absent or unknown object
            target = re.search(r"the (\w+ \w+)", text).group(1)
            assert target not in named_objects, (text, objects)
    kept = [t == str(s) for t, s, out in zip(texts, scenes["instructions"], negatives, strict=True) if not out]
    assert 0.2 < 1 - np.mean(kept) < 0.9  # 0.4 / 0.7 of the positives re-worded (a rewrite may keep the words)
    with pytest.raises(ValueError, match="summing to at most 1, got 0.8, 0.5"):
        training_wordings(scenes, 0, 0.8, 0.5, range(5))


def test_the_abstain_cell_learns_when_the_instruction_names_nothing_in_view(tmp_path):
    from envs.grounding import training_wordings

    scenes = load_or_render_scenes(tmp_path / "s.npz", count=400, seed=0, image_size=32, workers=2, progress=False)
    policy = keypoint_policy()
    reader = policy.keypoint_reader
    assert reader.absent is not None  # model.scope_check defaults on
    pretrain_keypoints(policy, scenes, steps=300, batch_size=64, lr=3e-3, heldout=40, progress=False, negatives=0.5)
    texts, named = training_wordings(scenes, seed=7, rewrites=0.0, negatives=0.5, indices=range(360, 400))
    images = torch.from_numpy(scenes["images"][360:])
    with torch.no_grad():
        states, mask = policy.text(texts, torch.device("cpu"))
        nothing = reader.nothing_named(images, states, mask)[:, 0].numpy()
    out, valid = nothing[~named[:, 0]], nothing[named[:, 0]]
    assert out.mean() > valid.mean() + 0.3, (out, valid)  # held-out scenes, new draws of the negatives
    with pytest.raises(ValueError, match="abstain cell"):
        no_abstain = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "keypoints": 2, "scope_check": False}))
        pretrain_keypoints(no_abstain, scenes, steps=1, batch_size=32, heldout=40, progress=False, negatives=0.5)
