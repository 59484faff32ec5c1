"""Frames for the page: camera images as JPEG data URLs, and the policy's own low-resolution
view enlarged with the keypoints drawn on it."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

VIEW_SIZE = 192  # pixels of the enlarged policy view
# keypoint 0 is the named target, 1 its destination (vla/vision.py TextQueriedKeypoints)
KEYPOINT_COLOURS = ((255, 64, 64), (64, 160, 255))


def data_url(image: np.ndarray, quality: int = 85) -> str:
    """A uint8 HWC RGB image as a ``data:image/jpeg;base64,...`` URL (an <img> shows it as is)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pixel(uv: np.ndarray, size: int) -> tuple[float, float]:
    """Image coordinates in [-1, 1] (u right, v down; envs/camera.py) -> pixels of a ``size`` image."""
    return (float(uv[0]) + 1) / 2 * size, (float(uv[1]) + 1) / 2 * size


def policy_view(image: np.ndarray, read: np.ndarray | None, truth: np.ndarray) -> np.ndarray:
    """The policy's camera image enlarged (nearest neighbour: its real pixels stay visible),
    with the true keypoints as rings and the policy's read keypoints as filled dots."""
    view = Image.fromarray(image).resize((VIEW_SIZE, VIEW_SIZE), Image.NEAREST)
    draw = ImageDraw.Draw(view)
    for k, uv in enumerate(truth):
        x, y = _pixel(uv, VIEW_SIZE)
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], outline=KEYPOINT_COLOURS[k % 2], width=2)
    for k, uv in enumerate(read if read is not None else []):
        x, y = _pixel(uv, VIEW_SIZE)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=KEYPOINT_COLOURS[k % 2], outline=(255, 255, 255))
    return np.asarray(view)
