"""Rollout videos: MP4 when imageio-ffmpeg is there, a GIF (and a message) when it is not."""

from __future__ import annotations

import importlib.util

import imageio.v2 as imageio
import numpy as np

from envs import video


def frames(n: int = 4) -> np.ndarray:
    return np.stack([np.full((16, 16, 3), 40 * i, np.uint8) for i in range(n)])


def test_an_mp4_is_written_with_imageio_ffmpeg(tmp_path):
    path = video.save_video(frames(), tmp_path / "rollouts.mp4")
    assert path == tmp_path / "rollouts.mp4" and path.stat().st_size > 0


def test_without_imageio_ffmpeg_the_rollouts_become_a_gif(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        video.importlib.util, "find_spec", lambda name: None if name == "imageio_ffmpeg" else real_find_spec(name)
    )
    path = video.save_video(frames(), tmp_path / "rollouts.mp4")
    assert path == tmp_path / "rollouts.gif" and "imageio-ffmpeg is not installed" in capsys.readouterr().out
    assert len(imageio.mimread(path)) == 4
