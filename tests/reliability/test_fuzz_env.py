"""Generated bad input for the environment: actions, reset options, seeds and instructions.

Each case either works as documented (envs/tabletop_env.py) or raises a one-line ValueError;
afterwards the same env still takes a valid reset and step.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from envs.tabletop_env import MAX_INSTRUCTION_LENGTH, TabletopEnv
from tests.reliability.cases import record_case
from tests.reliability.errors import clear_error_or_ok

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@pytest.fixture(scope="module")
def env():
    env = TabletopEnv(task="stack", image_size=32)
    env.reset(seed=0)
    yield env
    env.close()


def still_works(env: TabletopEnv) -> None:
    obs, _ = env.reset(seed=1)
    assert obs["image"].shape == (32, 32, 3)
    obs, reward, *_ = env.step(np.zeros(7, np.float32))
    assert np.isfinite(reward) and np.all(np.isfinite(obs["proprio"]))


float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=9),
    elements=None,  # any value of the dtype: NaN, inf, huge, subnormal
)


@given(action=st.one_of(float_arrays, ANYTHING, st.lists(st.floats(), min_size=7, max_size=7)))
def test_any_action(env, action):
    record_case("env")
    env.reset(seed=0)
    with clear_error_or_ok() as outcome:
        obs, reward, *_ = env.step(action)
    if outcome["error"] is None:  # it was taken: it must have been seven finite numbers
        assert np.asarray(action, dtype=np.float64).shape == (7,)
        assert np.all(np.isfinite(obs["proprio"])) and np.isfinite(reward)
    still_works(env)


@given(seed=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), ANYTHING))
def test_any_seed(env, seed):
    record_case("env")
    with clear_error_or_ok():
        env.reset(seed=seed)
    still_works(env)


SPEC_KEYS = ["task", "target_colour", "target_shape", "base_colour", "base_shape", "zone_colour", "extra"]
SPEC_VALUES = st.sampled_from(["stack", "reach", "red", "blue", "purple", "cube", "sphere", "white", ""]) | ANYTHING
task_specs = st.one_of(
    ANYTHING,
    st.dictionaries(st.sampled_from(SPEC_KEYS), SPEC_VALUES, max_size=7),
    st.builds(  # a valid stack spec with one value broken
        lambda key, value: {**VALID_SPEC, key: value}, st.sampled_from(SPEC_KEYS), SPEC_VALUES
    ),
)
VALID_SPEC = {
    "task": "stack",
    "target_colour": "red",
    "target_shape": "cube",
    "base_colour": "blue",
    "base_shape": "cylinder",
}
OPTION_VALUES = {"task_spec": task_specs, "instruction": ANYTHING | st.text(max_size=30), "speed": ANYTHING}


@given(
    options=st.one_of(
        ANYTHING,
        st.sampled_from(sorted(OPTION_VALUES)).flatmap(lambda key: OPTION_VALUES[key].map(lambda v: {key: v})),
    )
)
def test_any_reset_options(env, options):
    record_case("env")
    with clear_error_or_ok():
        env.reset(seed=3, options=options)
    still_works(env)


@given(
    text=st.one_of(
        st.text(max_size=300),
        st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=100_000),
        st.text(alphabet="abc ", min_size=MAX_INSTRUCTION_LENGTH - 2, max_size=MAX_INSTRUCTION_LENGTH + 2),
    )
)
def test_any_instruction(env, text):
    record_case("env")
    with clear_error_or_ok() as outcome:
        obs, _ = env.reset(seed=4, options={"instruction": text})
    if outcome["error"] is None:
        assert obs["instruction"] == text  # taken exactly as typed, never silently replaced
    still_works(env)
