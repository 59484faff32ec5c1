"""Generated bad observations for ``PolicyRunner.act`` and ``act_batch``: missing keys, wrong
image shapes and dtypes, wrong proprio lengths, non-finite numbers, mixed batches.

Each case acts (returning finite actions in [-1, 1]) or raises a one-line ValueError; the same
runner then still acts on a valid observation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.conftest import TINY_MODEL
from tests.reliability.cases import record_case
from tests.reliability.errors import clear_error_or_ok
from vla.inference import PolicyRunner
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer

SIZE = TINY_MODEL["image_size"]


@pytest.fixture(scope="module")
def runner() -> PolicyRunner:
    torch.manual_seed(0)
    return PolicyRunner(VLAPolicy(PolicyConfig.from_dict(TINY_MODEL)), ActionTokenizer(256))


def valid(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        "proprio": rng.normal(size=9).astype(np.float32),
        "instruction": "lift the green cube",
    }


def acts_on_valid(runner: PolicyRunner) -> None:
    action = runner.act(valid())
    assert action.shape == (7,) and np.all(np.abs(action) <= 1)


images = st.one_of(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.bool_, np.float16]),
        shape=st.sampled_from(
            [
                (SIZE, SIZE, 3),
                (SIZE, SIZE),
                (SIZE, SIZE, 4),
                (SIZE + 1, SIZE, 3),
                (3, SIZE, SIZE),
                (0, 0, 3),
                (1, SIZE, SIZE, 3),
                (64, 64, 3),
            ]
        ),
    ),
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.lists(st.integers(0, 255), max_size=4),
)
proprios = st.one_of(
    hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int32]), shape=st.integers(0, 12)),
    hnp.arrays(dtype=np.float64, shape=st.sampled_from([(9,), (3, 3), ()])),
    st.lists(st.floats(), max_size=12),
    st.none(),
    st.text(max_size=5),
)
instructions = st.one_of(st.text(max_size=50), st.text(min_size=1000, max_size=10_000), st.none(), st.integers())
KEYS = ("image", "proprio", "instruction")


@st.composite
def observations(draw) -> dict:
    """A valid observation with some keys replaced by generated values or dropped."""
    obs = valid(draw(st.integers(0, 3)))
    for key, values in zip(KEYS, (images, proprios, instructions), strict=True):
        change = draw(st.sampled_from(["keep", "replace", "drop"]))
        if change == "replace":
            obs[key] = draw(values)
        elif change == "drop":
            del obs[key]
    if draw(st.booleans()):
        obs[draw(st.text(max_size=8))] = draw(st.integers())  # an extra key is allowed and ignored
    return obs


@given(obs=observations())
def test_any_observation(runner, obs):
    record_case("policy")
    with clear_error_or_ok() as outcome:
        action, info = runner.act_with_info(obs)
    if outcome["error"] is None:
        assert action.shape == (7,) and np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1)
        assert isinstance(info["stopped"], bool)
    acts_on_valid(runner)


@given(
    batch=st.one_of(
        st.lists(observations(), min_size=0, max_size=4), st.none(), st.integers(), st.lists(st.integers(), max_size=2)
    )
)
def test_any_batch(runner, batch):
    record_case("policy")
    if isinstance(batch, list) and batch and all(isinstance(o, dict) for o in batch) and len(batch) > 1:
        batch = [valid(i) for i in range(len(batch) - 1)] + batch[-1:]  # a mixed batch: valid ones, then one generated
    with clear_error_or_ok() as outcome:
        actions = runner.act_batch(batch)
    if outcome["error"] is None:
        assert actions.shape == (len(batch), 7) and np.all(np.isfinite(actions))
    acts_on_valid(runner)
