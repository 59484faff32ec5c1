"""The gymnasium contract of every task: spaces, checker, determinism, vector envs, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.tabletop_env import ACTION_NAMES, TabletopEnv


@pytest.mark.parametrize("task_id", envs.TASKS)
def test_env_checker_passes(task_id):
    env = gym.make(task_id, render_mode="rgb_array", render_size=64)
    check_env(env.unwrapped)
    env.close()


def test_five_tasks_registered_in_namespace():
    assert len(envs.TASKS) >= 5
    assert all(t.startswith("VLASandbox/") for t in envs.TASKS)
    assert "VLASandbox/PickPlace-v0" in envs.TASKS


def test_observation_contract_and_info():
    env = gym.make("VLASandbox/Stack-v0", cameras=["scene", "wrist"], image_size=48)
    obs, info = env.reset(seed=3)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (48, 48, 3)
    assert obs["wrist_image"].shape == (48, 48, 3)
    assert obs["proprio"].dtype == np.float32 and obs["proprio"].shape == (len(envs.PROPRIO_NAMES),)
    assert np.isclose(np.linalg.norm(obs["proprio"][3:7]), 1.0, atol=1e-4)
    assert isinstance(obs["instruction"], str) and obs["instruction"]
    spec = info["task_spec"]
    assert spec["task"] == "stack" and {"target_colour", "target_shape", "base_colour", "base_shape"} <= set(spec)
    assert spec["target_colour"] in obs["instruction"] and spec["base_colour"] in obs["instruction"]
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(info["is_success"], bool) and info["split"] == "train" and info["task"] == "stack"
    assert np.isfinite(reward)


def test_info_names_where_the_target_is_and_where_it_must_go():
    """Privileged key positions (for auxiliary losses): target centre, then destination."""
    for task_id in ("VLASandbox/Push-v0", "VLASandbox/Stack-v0", "VLASandbox/Reach-v0"):
        env = gym.make(task_id)
        _, info = env.reset(seed=5)
        world, spec, keys = env.unwrapped.world, info["task_spec"], info["key_positions"]
        target = world.object_pos(f"{spec['target_colour']}_{spec['target_shape']}")
        if "zone_colour" in spec:
            destination = world.zone_pos(spec["zone_colour"])
        elif "base_colour" in spec:
            destination = world.object_pos(f"{spec['base_colour']}_{spec['base_shape']}")
        else:
            destination = target
        assert keys.shape == (6,) and keys.dtype == np.float32
        np.testing.assert_allclose(keys, np.concatenate([target, destination]), atol=1e-6)
        env.close()


def test_same_seed_same_actions_same_images_and_states():
    def rollout():
        env = gym.make("VLASandbox/PickPlace-v0")
        obs, _ = env.reset(seed=11)
        rng = np.random.default_rng(0)
        frames, states = [obs["image"]], []
        for _ in range(15):
            obs, *_ = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
            frames.append(obs["image"])
            states.append(env.unwrapped.data.qpos.copy())
        return np.stack(frames), np.stack(states), obs["instruction"]

    a, b = rollout(), rollout()
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_different_seeds_give_different_scenes():
    env = gym.make("VLASandbox/Reach-v0")
    images = [env.reset(seed=s)[0]["image"] for s in range(3)]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])


def test_objects_start_apart_and_on_the_table():
    env = gym.make("VLASandbox/Stack-v0")
    for seed in range(20):
        env.reset(seed=seed)
        world = env.unwrapped.world
        placed = [n for n in world.object_body if world.object_pos(n)[2] > 0]
        assert len(placed) >= 3  # target and at least two distractors (plus a base for stack)
        positions = np.array([world.object_pos(n) for n in placed])
        gaps = np.linalg.norm(positions[:, None, :2] - positions[None, :, :2], axis=-1) + np.eye(len(placed))
        assert gaps.min() > 0.06
        data = env.unwrapped.data
        object_geoms = set(world.object_geom.values())
        for i in range(data.ncon):  # objects touch only the table at the start
            pair = {int(data.contact.geom1[i]), int(data.contact.geom2[i])}
            assert len(pair & object_geoms) <= 1


def make_lift():
    return gym.make("VLASandbox/Lift-v0")


@pytest.mark.parametrize("vector_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_works_in_vector_envs(vector_cls):
    # Async workers must be spawned (or forkserver): a forked child inherits this process's
    # EGL state from earlier renders and can hang on its first frame.
    kwargs = {"context": "spawn"} if vector_cls is gym.vector.AsyncVectorEnv else {}
    vec = vector_cls([make_lift for _ in range(2)], **kwargs)
    obs, info = vec.reset(seed=[0, 1])
    assert obs["image"].shape == (2, 64, 64, 3)
    assert len(obs["instruction"]) == 2
    for _ in range(3):
        obs, reward, terminated, truncated, info = vec.step(vec.action_space.sample())
    assert reward.shape == (2,) and info["is_success"].shape == (2,)
    vec.close()


def test_gripper_sign_convention():
    env = gym.make("VLASandbox/Reach-v0")
    env.reset(seed=0)
    world = env.unwrapped.world
    close = np.zeros(7, dtype=np.float32)
    close[6] = 1.0
    for _ in range(8):
        env.step(close)
    closed = world.gripper_opening()
    for _ in range(8):
        env.step(-close)
    assert closed < 0.01 < 0.09 < world.gripper_opening()


def test_translation_action_moves_the_gripper_in_the_world_frame():
    env = gym.make("VLASandbox/Reach-v0")
    env.reset(seed=0)
    start = env.unwrapped.world.grip_pos()
    action = np.zeros(7, dtype=np.float32)
    action[1] = 1.0  # +y
    for _ in range(4):
        env.step(action)
    moved = env.unwrapped.world.grip_pos() - start
    assert moved[1] > 0.06 and abs(moved[0]) < 0.02 and abs(moved[2]) < 0.02


def test_out_of_range_actions_are_clipped():
    def final_state(scale):
        env = gym.make("VLASandbox/Push-v0")
        env.reset(seed=5)
        action = np.array([1, -1, 0.5, 0, 0, 1, 1], dtype=np.float32) * scale
        action[2] = 0.5
        for _ in range(3):
            env.step(action)
        return env.unwrapped.data.qpos.copy()

    np.testing.assert_array_equal(final_state(1.0), final_state(7.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_names_the_element(bad):
    env = gym.make("VLASandbox/Reach-v0")
    env.reset(seed=0)
    action = np.zeros(7, dtype=np.float32)
    action[4] = bad
    with pytest.raises(ValueError, match="dpitch"):
        env.step(action)


def test_wrong_action_shape_is_rejected():
    env = TabletopEnv("reach")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(6))


def test_progress_reward_pays_the_change_in_closeness_plus_the_bonus():
    """Potential-based shaping: the return telescopes to final - initial closeness (+ bonus),
    so standing still earns nothing and the scripted expert earns the bonus."""
    env = gym.make("VLASandbox/Reach-v0", reward_type="progress", success_bonus=2.0)
    task, world = env.unwrapped.task, env.unwrapped.world
    for policy in ("still", "expert"):
        obs, _ = env.reset(seed=3)
        expert = envs.make_expert(env, seed=3)
        start = task.dense_reward(world, env.unwrapped.task_spec)
        total, done, info = 0.0, False, {}
        while not done:
            action = np.zeros(7, np.float32) if policy == "still" else expert(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            done = terminated or truncated
        end = task.dense_reward(world, env.unwrapped.task_spec)
        assert total == pytest.approx(end - start + 2.0 * info["is_success"], abs=1e-6)
        if policy == "still":
            assert not info["is_success"] and abs(total) < 0.05
        else:
            assert info["is_success"] and terminated and total > 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "juggle"}, "unknown task 'juggle'; valid values are: reach, push, lift, pick_place, stack"),
        ({"image_size": 7}, r"image_size must be an integer in \[16, 512\], got 7"),
        ({"image_size": 64.5}, "image_size must be an integer"),
        ({"instruction_split": "test"}, "valid values are: train, heldout"),
        ({"cameras": ["scene", "ceiling"]}, "unknown camera 'ceiling'"),
        ({"render_mode": "human"}, "unknown render mode 'human'"),
        ({"start_spread": 1.5}, r"start_spread must be in \[0, 1.0\] rad, got 1.5"),
        ({"reward_type": "shaped"}, "unknown reward type 'shaped'; valid values are: dense, sparse, progress"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TabletopEnv(**kwargs)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"target_colour": "pink", "target_shape": "cube", "zone_colour": "white"}, "red, green, blue, yellow"),
        ({"target_colour": "red", "target_shape": "sphere", "zone_colour": "white"}, "cube, cylinder"),
        ({"target_colour": "red", "target_shape": "cube", "zone_colour": "red"}, "purple, white, orange"),
        ({"target_colour": "red", "target_shape": "cube"}, "lacks"),
    ],
)
def test_bad_task_spec_lists_valid_values(spec, message):
    env = TabletopEnv("pick_place")
    with pytest.raises(ValueError, match=message):
        env.reset(seed=0, options={"task_spec": spec})


def test_task_spec_option_fixes_the_target_and_instruction_override():
    env = gym.make("VLASandbox/PickPlace-v0")
    spec = {"target_colour": "blue", "target_shape": "cylinder", "zone_colour": "orange"}
    obs, info = env.reset(seed=1, options={"task_spec": spec})
    assert "blue cylinder" in obs["instruction"] and "orange" in obs["instruction"]
    obs, info = env.reset(seed=1, options={"task_spec": spec, "instruction": "put the blue can on the orange mat"})
    assert obs["instruction"] == "put the blue can on the orange mat"


def test_render_gives_a_larger_frame_than_the_policy_camera():
    env = gym.make("VLASandbox/Lift-v0", render_mode="rgb_array", render_size=128)
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8 and frame.std() > 10
    # The pretty renderer must not have made the policy camera expensive or different.
    obs2, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["image"], obs2["image"])


def test_action_names_document_the_contract():
    assert ACTION_NAMES == ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")


def test_a_wider_start_spread_spreads_the_gripper_and_keeps_it_up_and_vertical():
    def starts(spread: float) -> np.ndarray:
        env = TabletopEnv(task="reach", start_spread=spread)
        rows = []
        for seed in range(40):
            obs, _ = env.reset(seed=seed)
            rows.append(obs["proprio"])
        env.close()
        return np.array(rows)

    default, wide = starts(0.05), starts(0.5)
    assert np.array_equal(default, starts(TabletopEnv().start_spread))  # the default is 0.05
    assert wide[:, :2].std(0).min() > 3 * default[:, :2].std(0).max()  # x and y spread out
    assert (wide[:, 2] >= 0.08).all() and (wide[:, 2] <= 0.30).all()  # above the objects, below the camera
    # the home orientation (gripper pointing down) is the identity quaternion: the wrist takes
    # back what the spread adds, so every start stays within 10 degrees of it
    rotation = np.degrees(2 * np.arccos(np.clip(np.abs(wide[:, 3]), 0, 1)))
    assert rotation.max() < 10


def test_the_expert_succeeds_from_wide_starts():
    from envs import make_expert

    env = TabletopEnv(task="reach", start_spread=0.5)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        expert = make_expert(env)
        for _ in range(env.max_steps):
            obs, _, terminated, truncated, info = env.step(expert(obs))
            if terminated or truncated:
                break
        assert info["is_success"], seed


def test_gripper_velocity_tells_closing_from_pressed_on_the_object():
    """The last proprio element is the opening's rate: large and negative while the pads
    close, about zero once they press on the object (the lift expert's grasp)."""
    env = gym.make("VLASandbox/Lift-v0")
    obs, _ = env.reset(seed=3)
    expert = envs.make_expert(env)
    world, name = env.unwrapped.world, env.unwrapped.task.target(env.unwrapped.task_spec)
    opening = envs.PROPRIO_NAMES.index("gripper_opening")
    velocity = envs.PROPRIO_NAMES.index("gripper_opening_velocity")
    closing, held = [], []
    for _ in range(40):
        obs, *_ = env.step(expert(obs))
        grasped = world.is_grasped(name)
        (held if grasped else closing).append(obs["proprio"][velocity])
        assert obs["proprio"][velocity] == pytest.approx(world.gripper_opening_velocity())
    assert held and min(closing) < -0.1  # the pads moved at > 10 cm/s while closing
    assert abs(np.median(held)) < 0.005 and obs["proprio"][opening] < 0.06
    env.close()


def test_true_keypoints_put_the_privileged_target_and_destination_into_each_observation():
    import torch

    from envs.camera import TrueKeypoints, key_image_coordinates
    from vla.data import observations_to_batch

    env = TrueKeypoints(gym.make("VLASandbox/PickPlace-v0", image_size=32))
    obs, info = env.reset(seed=3)
    assert np.allclose(obs["keypoint_uv"], key_image_coordinates(info["key_positions"]))
    assert obs["keypoint_uv"].shape == (2, 2) and np.abs(obs["keypoint_uv"]).max() <= 1.0
    assert not np.allclose(obs["keypoint_uv"][0], obs["keypoint_uv"][1])  # the object and its zone
    obs, *_, info = env.step(env.action_space.sample())
    assert np.allclose(obs["key_positions"], info["key_positions"])
    batch = observations_to_batch([obs, obs], torch.device("cpu"))
    assert batch["keypoint_coords"].shape == (2, 2, 2)  # the policy reads these instead of its reader's
    env.close()
