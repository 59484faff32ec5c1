"""Rollout videos: frames with text drawn on them, saved as MP4 (or GIF by extension)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw


def annotate(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Draw ``lines`` of text on a dark band at the bottom of ``frame`` (uint8 HWC)."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    line_height = 12
    band = line_height * len(lines) + 4
    draw.rectangle([0, image.height - band, image.width, image.height], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((4, image.height - band + 2 + i * line_height), line, fill=(255, 255, 255))
    return np.asarray(image)


def side_by_side(pretty: np.ndarray, policy_view: np.ndarray) -> np.ndarray:
    """The video-camera frame next to the policy's own low-resolution view, upscaled."""
    scale = max(1, pretty.shape[0] // policy_view.shape[0])
    upscaled = np.kron(policy_view, np.ones((scale, scale, 1), dtype=np.uint8))
    pad = pretty.shape[0] - upscaled.shape[0]
    upscaled = np.pad(upscaled, ((0, pad), (0, 0), (0, 0)))
    return np.concatenate([pretty, upscaled], axis=1)


def save_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """MP4 through imageio-ffmpeg (its wheel ships ffmpeg), or GIF if ``path`` ends in .gif.

    Without imageio-ffmpeg (a bare machine given only the core wheels) imageio would pick
    another plugin for .mp4 and fail deep inside it; write a GIF beside it instead and say so.
    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix != ".gif" and importlib.util.find_spec("imageio_ffmpeg") is None:
        path = path.with_suffix(".gif")
        print(f"imageio-ffmpeg is not installed: writing the rollouts as {path} instead of MP4")
    if path.suffix == ".gif":
        imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, list(frames), fps=fps, macro_block_size=1)
    return path
