"""Where a world point appears in the fixed ``scene`` camera's image.

A training label, not an observation: grounding pretraining and the keypoint loss teach
the policy to point at the named object in the image, and they need the object's image
coordinates. The scene camera never moves, so its pose is read once from the compiled
model (the MJCF in ``envs.scene`` stays the one source of truth for it).
"""

from __future__ import annotations

from functools import lru_cache

import gymnasium as gym
import mujoco
import numpy as np

from envs.scene import build_mjcf


@lru_cache(maxsize=1)
def _scene_camera() -> tuple[np.ndarray, np.ndarray, float]:
    """(position, world-from-camera rotation, vertical field of view in radians)."""
    model = mujoco.MjModel.from_xml_string(build_mjcf())
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    camera = model.camera("scene").id
    return (
        data.cam_xpos[camera].copy(),
        data.cam_xmat[camera].reshape(3, 3).copy(),
        float(np.deg2rad(model.cam_fovy[camera])),
    )


def scene_image_coordinates(points: np.ndarray) -> np.ndarray:
    """World points (..., 3) in metres -> image coordinates (..., 2) in [-1, 1]: u to the
    right, v down, -1 and 1 the image's outer edges (pixel i of n spans [i, i + 1] / n * 2 - 1).
    The same at every resolution: the image is square and the field of view fixed."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {points.shape}")
    position, rotation, fovy = _scene_camera()
    local = (points - position) @ rotation  # camera frame: x right, y up, looking along -z
    depth = -local[..., 2]
    if np.any(depth <= 0):
        raise ValueError("a point lies behind the scene camera")
    focal = 1.0 / np.tan(fovy / 2)  # in units of half the image
    return np.stack([focal * local[..., 0] / depth, -focal * local[..., 1] / depth], -1).astype(np.float32)


def key_image_coordinates(key_positions: np.ndarray) -> np.ndarray:
    """Key positions (..., 6), the target's and the destination's centres
    (``Task.key_positions``) -> their image coordinates (..., 2, 2)."""
    key_positions = np.asarray(key_positions)
    return scene_image_coordinates(key_positions.reshape(*key_positions.shape[:-1], 2, 3))


class TrueKeypoints(gym.Wrapper):
    """Puts the true target and destination the env reports in ``info`` (privileged) into each
    observation, where a policy reads them: ``key_positions`` (6,) in metres (the state-based
    imitator of ``eval/probes/expert_imitability.py``) and ``keypoint_uv`` (2, 2) in image
    coordinates. A VLA policy with keypoints reads ``keypoint_uv`` instead of its reader's
    (``vla.data.observations_to_batch``): the keypoint oracle of ``eval/evaluate.py
    keypoints=oracle``, which separates failing to point at the named objects from failing to
    act on the right points."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return _with_keypoints(obs, info), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return _with_keypoints(obs, info), reward, terminated, truncated, info


def _with_keypoints(obs: dict, info: dict) -> dict:
    uv = key_image_coordinates(info["key_positions"]).astype(np.float32)
    return {**obs, "key_positions": info["key_positions"], "keypoint_uv": uv}
