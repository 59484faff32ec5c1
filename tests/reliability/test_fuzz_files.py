"""Damaged files: checkpoints and episode files truncated at random offsets or with random
bytes flipped, and a dataset index that disagrees with its episode files.

Each either loads exactly what was saved or ends in one clear error naming the file (a
``CheckpointError`` / ``DatasetError``); nothing loads silently different.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from envs.dataset import DatasetError, DemoDataset, build_index, episode_files
from tests.conftest import TINY_MODEL
from tests.reliability.cases import record_case
from tests.reliability.errors import clear_error_or_ok
from vla.checkpoint import CheckpointError, build_policy, read_checkpoint, save_checkpoint
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer


@st.composite
def damage(draw, size: int) -> tuple[str, int, list[tuple[int, int]]]:
    """("truncate", offset, []) or ("flip", 0, [(offset, xor mask), ...])."""
    if draw(st.booleans()):
        return "truncate", draw(st.integers(0, size - 1)), []
    flips = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=4))
    return "flip", 0, flips


def damaged_copy(source: Path, target: Path, how: tuple[str, int, list[tuple[int, int]]]) -> bytes:
    data = bytearray(source.read_bytes())
    kind, offset, flips = how
    if kind == "truncate":
        data = data[:offset]
    for at, mask in flips:
        data[at] ^= mask
    target.write_bytes(bytes(data))
    return bytes(data)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict(TINY_MODEL))
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", policy, ActionTokenizer(256), step=7)
    return path, {k: v.clone() for k, v in policy.trainable_state_dict().items()}


CHECKPOINT_SIZE = 200_000  # larger than the tiny checkpoint: offsets are taken modulo its size


@given(how=damage(CHECKPOINT_SIZE))
def test_a_damaged_checkpoint_loads_exactly_or_fails_clearly(checkpoint, tmp_path_factory, how):
    record_case("files")
    source, weights = checkpoint
    size = source.stat().st_size
    how = (how[0], how[1] % size, [(at % size, mask) for at, mask in how[2]])
    target = tmp_path_factory.mktemp("bad") / "damaged.pt"
    damaged_copy(source, target, how)
    with clear_error_or_ok(allowed=(CheckpointError,)) as outcome:
        policy, _ = build_policy(read_checkpoint(target))
    if outcome["error"] is None:  # a flip in a part torch never reads: the weights must be the same
        loaded = policy.trainable_state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    else:
        assert str(target) in str(outcome["error"])


@pytest.fixture(scope="module")
def small_dataset(tiny_demos) -> Path:
    return tiny_demos


EPISODE_SIZE = 400_000


@given(how=damage(EPISODE_SIZE), which=st.integers(0, 4))
def test_a_damaged_episode_file_reads_exactly_or_fails_clearly(small_dataset, tmp_path_factory, how, which):
    record_case("files")
    root = tmp_path_factory.mktemp("ds") / "demos"
    shutil.copytree(small_dataset, root)
    files = [*episode_files(root), root / "index.h5"]
    victim = files[which % len(files)]
    clean = DemoDataset(small_dataset).preload(progress=False)
    size = victim.stat().st_size
    damaged_copy(victim, victim, (how[0], how[1] % size, [(at % size, mask) for at, mask in how[2]]))
    with clear_error_or_ok(allowed=(DatasetError,)) as outcome:
        demos = DemoDataset(root).preload(progress=False)
        assert len(demos) == len(clean)
        for i in range(len(demos)):
            a, b = demos.sample(i), clean.sample(i)
            assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["action"], b["action"])
            assert np.array_equal(a["proprio"], b["proprio"]) and a["instruction"] == b["instruction"]
    if outcome["error"] is not None:
        assert victim.name in str(outcome["error"]) or "index" in str(outcome["error"])


@given(change=st.sampled_from(["drop_file", "drop_index", "garbage_index", "stale_index"]))
def test_an_index_that_disagrees_with_its_episodes_is_rebuilt(small_dataset, tmp_path_factory, change):
    record_case("files")
    root = tmp_path_factory.mktemp("ds") / "demos"
    shutil.copytree(small_dataset, root)
    files = episode_files(root)
    if change == "drop_file":
        files[0].unlink()
    elif change == "drop_index":
        (root / "index.h5").unlink()
    elif change == "garbage_index":
        (root / "index.h5").write_bytes(b"not an index")
    else:  # an index written before one episode was removed and another added back
        stale = root / "index.h5"
        files[1].rename(files[1].with_suffix(".keep"))
        build_index(root)
        files[1].with_suffix(".keep").rename(files[1])
        assert stale.exists()
    demos = DemoDataset(root).preload(progress=False)
    expected = episode_files(root)
    assert [e.path for e in demos.episodes] == [str(p.relative_to(root)) for p in expected]
    assert len(demos) == sum(e.num_samples for e in demos.episodes)
