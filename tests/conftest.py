"""Shared fixtures: headless rendering, a tiny model, small datasets (the repository root is
on sys.path through pyproject's pytest ``pythonpath``)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_WORKERS = 4  # test processes at most: each holds its own torch, models and simulators in memory

# Under pytest-xdist every worker is a process of its own: give each its share of the cores
# for torch, set before any test imports torch (which reads it once).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

import pytest  # noqa: E402


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's default): one worker per core, at most MAX_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


# A policy small enough to train for a few steps in seconds on 2 CPU cores.
TINY_MODEL = {
    "image_size": 32,
    "patch_size": 8,
    "vision_pool": 1,
    "vision_layers": 1,
    "width": 32,
    "layers": 1,
    "heads": 2,
    "text_encoder": "scratch",
    "keypoints": 0,
    "keypoint_sentence": False,
    "aux_weight": 0.0,
    "sentence_token": False,
    "word_tokens": True,
    "decoding": "autoregressive",
    "label_sigma": 0.0,
}


def tiny_model_overrides() -> list[str]:
    return [f"model.{k}={v}" for k, v in TINY_MODEL.items()]


@pytest.fixture(scope="session")
def tiny_demos(tmp_path_factory) -> Path:
    """Two expert episodes of reach and lift at 32 x 32 pixels, collected for real."""
    from envs.collection import CollectConfig, collect

    root = tmp_path_factory.mktemp("demos") / "demos"
    collect(
        CollectConfig(tasks=("reach", "lift"), episodes_per_task=2, output=root, workers=1, image_size=32),
        progress=False,
    )
    return root
