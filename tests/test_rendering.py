"""The cheap render path and the sleeping parked objects change nothing a user sees."""

import gymnasium as gym
import mujoco
import numpy as np

import envs


def _frames(env, seed: int, steps: int) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    expert = envs.make_expert(env, noise_std=0.1, seed=seed)
    frames = [obs["image"]]
    for _ in range(steps):
        obs, *_ = env.step(expert(obs))
        frames.append(obs["image"])
    return frames


def test_frames_are_the_same_when_other_gl_contexts_render_in_between():
    alone = _frames(gym.make("VLASandbox/Stack-v0"), seed=3, steps=12)

    # Two envs and a video renderer in one thread: each render must switch to its own context.
    first = gym.make("VLASandbox/Stack-v0")
    second = gym.make("VLASandbox/PickPlace-v0", render_mode="rgb_array")
    obs, _ = first.reset(seed=3)
    other, _ = second.reset(seed=4)
    expert = envs.make_expert(first, noise_std=0.1, seed=3)
    other_expert = envs.make_expert(second, noise_std=0.1, seed=4)
    interleaved = [obs["image"]]
    for _ in range(12):
        other, *_ = second.step(other_expert(other))
        assert second.render().shape == (256, 256, 3)
        obs, *_ = first.step(expert(obs))
        interleaved.append(obs["image"])
    assert all(np.array_equal(a, b) for a, b in zip(alone, interleaved, strict=True))


def test_frames_equal_mujoco_renderers_and_are_new_arrays():
    env = gym.make("VLASandbox/PickPlace-v0")
    base = env.unwrapped
    obs, _ = env.reset(seed=0)
    expert = envs.make_expert(env, seed=0)
    base.model.vis.global_.offwidth = base.model.vis.global_.offheight = 64
    reference = mujoco.Renderer(base.model, 64, 64)  # mujoco's own renderer, same settings
    reference.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
    previous = obs["image"]
    for _ in range(10):
        obs, *_ = env.step(expert(obs))
        reference.update_scene(base.data, "scene", scene_option=base._scene_option)
        assert np.array_equal(obs["image"], reference.render())
        assert not np.shares_memory(obs["image"], previous)
        previous = obs["image"]
    reference.close()


def test_parked_objects_sleep_and_objects_on_the_table_stay_awake():
    env = gym.make("VLASandbox/Stack-v0")
    base = env.unwrapped
    for seed in range(3):
        env.reset(seed=seed)
        for _ in range(40):  # objects at rest for longer than MuJoCo needs to put them to sleep
            env.step(np.zeros(7, np.float32))
        for name, body in base.world.object_body.items():
            awake = bool(base.data.tree_awake[base.model.body_treeid[body]])
            assert awake == (name in base.scene_objects), name
