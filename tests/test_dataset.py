"""The on-disk demo format: round trip, lazy reads, index, atomic commits."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from envs.dataset import (
    DemoDataset,
    EpisodeRecord,
    build_index,
    episode_files,
    remove_stale_tmp_files,
    write_episode,
    write_episode_tmp,
)


def make_record(task="lift", seed=0, steps=5, wrist=False, proprio_width=9):
    rng = np.random.default_rng(seed)
    return EpisodeRecord(
        task=task,
        env_id="VLASandbox/Lift-v0",
        seed=seed,
        instruction=f"lift the red cube {seed}",
        split="train",
        task_spec={"task": task, "target_colour": "red", "target_shape": "cube"},
        images=rng.integers(0, 255, (steps, 16, 16, 3), dtype=np.uint8),
        proprio=rng.normal(size=(steps, proprio_width)).astype(np.float32),
        actions=rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
        executed_actions=rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
        rewards=rng.uniform(0, 1, steps).astype(np.float32),
        success=True,
        wrist_images=rng.integers(0, 255, (steps, 16, 16, 3), dtype=np.uint8) if wrist else None,
    )


def test_write_read_round_trip(tmp_path):
    records = [make_record(seed=s, steps=3 + s, wrist=True) for s in range(4)]
    for r in records:
        write_episode(tmp_path, r)
    build_index(tmp_path, {"image_size": 16})
    ds = DemoDataset(tmp_path)
    assert ds.num_episodes == 4 and len(ds) == sum(3 + s for s in range(4))
    assert ds.env_config == {"image_size": 16}
    for k, r in enumerate(records):
        ep = ds.episode(k)
        np.testing.assert_array_equal(ep["image"], r.images)
        np.testing.assert_array_equal(ep["wrist_image"], r.wrist_images)
        np.testing.assert_array_equal(ep["proprio"], r.proprio)
        np.testing.assert_array_equal(ep["actions"], r.actions)
        np.testing.assert_array_equal(ep["executed_actions"], r.executed_actions)
        assert ep["dones"][-1] and not ep["dones"][:-1].any()
        assert ep["attrs"]["instruction"] == r.instruction and ep["attrs"]["task_spec"] == r.task_spec
    # Global sample indexing walks episodes in order.
    sample = ds.sample(3)  # first step of episode 1
    assert sample["episode"] == 1 and sample["step"] == 0
    np.testing.assert_array_equal(sample["action"], records[1].actions[0])
    all_actions = np.concatenate([r.actions for r in records])
    np.testing.assert_allclose(ds.action_stats["q99"], np.quantile(all_actions, 0.99, axis=0), rtol=1e-5)
    with pytest.raises(IndexError):
        ds.sample(len(ds))


@pytest.mark.parametrize("preloaded", [False, True])
def test_action_chunks_stay_within_their_episode(tmp_path, preloaded):
    records = [make_record(seed=s, steps=3 + s) for s in range(2)]  # 3 and 4 steps
    for r in records:
        write_episode(tmp_path, r)
    build_index(tmp_path)
    ds = DemoDataset(tmp_path)
    if preloaded:
        ds.preload(progress=False)
    actions, valid = ds.actions_from(1, 4)  # episode 0, step 1: two steps left
    np.testing.assert_array_equal(actions[:2], records[0].actions[1:3])
    np.testing.assert_array_equal(actions[2:], records[0].actions[[2, 2]])  # filler, masked
    assert valid.tolist() == [True, True, False, False]
    actions, valid = ds.actions_from(3, 4)  # episode 1, step 0: a whole chunk
    np.testing.assert_array_equal(actions, records[1].actions)
    assert valid.all()


@pytest.mark.parametrize("preloaded", [False, True])
def test_reworded_instructions_vary_per_step_name_the_same_object_and_repeat_per_seed(tmp_path, preloaded):
    write_episode(tmp_path, make_record(steps=40))
    build_index(tmp_path)

    def wordings(seed):
        ds = DemoDataset(tmp_path)
        if preloaded:
            ds.preload(progress=False)
        assert ds.sample(0)["instruction"] == "lift the red cube 0"  # the recorded words, until asked
        ds.reword_instructions(seed)
        return [ds.sample(i)["instruction"] for i in range(len(ds))]

    first = wordings(seed=0)
    assert len(set(first)) >= 8  # one episode, many wordings
    assert all("red " in text and text.split("red ")[1].split()[0] in ("cube", "box") for text in first)
    assert wordings(seed=0) == first  # resumes and workers see the same words
    assert wordings(seed=1) != first


def test_rewording_from_the_large_split_uses_its_nouns_and_refuses_other_splits(tmp_path):
    write_episode(tmp_path, make_record(steps=60))
    build_index(tmp_path)
    ds = DemoDataset(tmp_path).reword_instructions(0, "augmented_large")
    nouns = {ds.sample(i)["instruction"].split("red ")[1].split()[0] for i in range(len(ds))}
    assert nouns <= {"cube", "box", "brick", "crate", "chunk", "slab", "dice", "cuboid"} and len(nouns) >= 5
    for split in ("heldout", "train"):  # never the evaluation's words; "train" is the recorded wording
        with pytest.raises(ValueError, match=f"'{split}'.*augmented, augmented_large"):
            DemoDataset(tmp_path).reword_instructions(0, split)


def test_older_episodes_report_their_proprio_width_and_mixed_widths_are_refused(tmp_path):
    """Demos from before the gripper velocity hold 8 proprio elements: the width is reported
    (train/bc.py refuses a model that reads more), and a dataset mixing 8 and 9 says so."""
    write_episode(tmp_path, make_record(seed=0, proprio_width=8))
    build_index(tmp_path, {"image_size": 16})
    assert DemoDataset(tmp_path).proprio_width == 8
    write_episode(tmp_path, make_record(seed=1, proprio_width=9))
    build_index(tmp_path, {"image_size": 16})
    with pytest.raises(ValueError, match=r"mixes episodes with \[8, 9\] proprio elements"):
        DemoDataset(tmp_path).preload(progress=False)


def test_index_is_a_robomimic_style_view(tmp_path):
    write_episode(tmp_path, make_record(seed=1))
    index = build_index(tmp_path)
    with h5py.File(index, "r") as f:
        assert f["data"].attrs["num_episodes"] == 1
        assert f["data/demo_0/obs/image"].shape == (5, 16, 16, 3)  # through the external link
        assert f["data/demo_0"].attrs["num_samples"] == 5


def test_reader_is_lazy_and_limits_open_files(tmp_path):
    for s in range(6):
        write_episode(tmp_path, make_record(seed=s))
    build_index(tmp_path)
    ds = DemoDataset(tmp_path, max_open_files=2)
    assert not ds._handles  # nothing but the index read at construction
    for i in range(len(ds)):
        ds.sample(i)
    assert len(ds._handles) <= 2
    ds.close()


def test_uncommitted_episode_is_invisible_and_cleaned_up(tmp_path):
    write_episode(tmp_path, make_record(seed=1))
    tmp = write_episode_tmp(tmp_path, make_record(seed=2))
    assert tmp.exists() and len(episode_files(tmp_path)) == 1
    assert remove_stale_tmp_files(tmp_path) == 1 and not tmp.exists()


def test_missing_dataset_says_how_to_collect(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/collect.py"):
        DemoDataset(tmp_path / "nowhere")


def test_mismatched_lengths_are_rejected(tmp_path):
    bad = make_record()
    bad = EpisodeRecord(**{**bad.__dict__, "rewards": bad.rewards[:-1]})
    with pytest.raises(ValueError, match="rewards has 4 steps"):
        write_episode(tmp_path, bad)


def test_rewritten_instructions_keep_their_share_and_repeat_per_seed(tmp_path):
    write_episode(tmp_path, make_record(steps=60))
    build_index(tmp_path)
    ds = DemoDataset(tmp_path)
    recorded = ds.sample(0)["instruction"]
    ds.rewrite_instructions(seed=0, share=0.5)
    texts = [ds.sample(i)["instruction"] for i in range(len(ds))]
    kept = sum(t == recorded for t in texts)
    assert 15 <= kept <= 45 and len(set(texts)) >= 4  # about half as recorded, the rest reworded
    assert texts == [ds.sample(i)["instruction"] for i in range(len(ds))]  # fixed per sample
    assert ds.task_spec(0)["target_colour"] == "red"
    with pytest.raises(ValueError, match=r"share of rewritten instructions must be in \[0, 1\], got 2"):
        ds.rewrite_instructions(seed=0, share=2)
