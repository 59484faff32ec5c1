"""Writes that fail part-way, as on a full disk: a file-size limit (RLIMIT_FSIZE, so a write
past it fails with EFBIG as ENOSPC would) on the real scripts. Each ends in one ``error:`` line;
the previous checkpoint and every complete episode stay readable; no temporary file is left."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap

import h5py

from envs.dataset import check_episode, episode_files, read_arrays
from tests.conftest import REPO_ROOT, TINY_MODEL, tiny_model_overrides
from tests.reliability.cases import record_case
from tests.test_bc import FAST
from vla.checkpoint import read_checkpoint, save_checkpoint
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer


def run_limited(args: list[str], limit: int, timeout: int = 600) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=cap
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr + result.stdout).strip().splitlines()
    return next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")


def test_a_checkpoint_write_that_fails_keeps_the_previous_checkpoint(tmp_path):
    record_case("files")
    path = save_checkpoint(tmp_path / "latest.pt", VLAPolicy(PolicyConfig.from_dict(TINY_MODEL)), ActionTokenizer(256))
    before = read_checkpoint(path)["sha256"]
    script = textwrap.dedent(f"""
        import torch
        from tests.conftest import TINY_MODEL
        from vla.checkpoint import save_checkpoint
        from vla.policy import PolicyConfig, VLAPolicy
        from vla.tokenizer import ActionTokenizer
        torch.manual_seed(1)
        save_checkpoint({str(path)!r}, VLAPolicy(PolicyConfig.from_dict(TINY_MODEL)), ActionTokenizer(256))
    """)
    result = run_limited(["-c", script], limit=path.stat().st_size // 2)
    assert result.returncode != 0
    assert "CheckpointError: could not write" in result.stderr and "the previous file is intact" in result.stderr
    assert read_checkpoint(path)["sha256"] == before  # untouched, and it still loads
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temporary left behind


def test_collection_on_a_full_disk_stops_in_one_line_and_keeps_every_episode(tiny_demos, tmp_path):
    record_case("files")
    root = tmp_path / "demos"
    shutil.copytree(tiny_demos, root)
    kept = {p.name: p.read_bytes() for p in episode_files(root)}
    limit = min(len(b) for b in kept.values()) // 2  # no new episode fits
    result = run_limited(
        [
            "train/collect.py",
            f"output={root}",
            "tasks=[reach,lift]",
            "episodes_per_task=4",
            "image_size=32",
            "workers=1",
            "video=false",
            "progress=false",
        ],
        limit,
    )
    assert result.returncode != 0
    assert last_line(result).startswith("error: could not write"), (result.stderr + result.stdout)[-2000:]
    assert "Traceback" not in result.stderr
    files = episode_files(root)
    assert {p.name: p.read_bytes() for p in files} == kept  # every complete episode, byte for byte
    for path in files:
        with h5py.File(path, "r") as f:
            check_episode(f, read_arrays(f))
    assert not list(root.rglob("*.tmp"))


def test_bc_on_a_full_disk_stops_in_one_line_and_its_last_checkpoint_resumes(tiny_demos, tmp_path):
    record_case("files")
    run_dir = tmp_path / "run"
    common = ["train/bc.py", f"data.path={tiny_demos}", *FAST, "trainer.checkpoint_every=2", *tiny_model_overrides()]
    first = run_limited([*common, "trainer.steps=2", f"run_dir={run_dir}"], limit=2**40)
    assert first.returncode == 0, first.stderr[-2000:]
    latest = run_dir / "checkpoints" / "latest.pt"
    before = read_checkpoint(latest)
    full = run_limited([*common, "trainer.steps=6", f"resume={run_dir}"], limit=latest.stat().st_size // 2)
    assert full.returncode != 0
    assert last_line(full).startswith("error: could not write"), (full.stderr + full.stdout)[-2000:]
    assert "Traceback" not in full.stderr
    assert read_checkpoint(latest)["sha256"] == before["sha256"]
    assert not list(run_dir.rglob("*.tmp"))
    again = run_limited([*common, "trainer.steps=6", f"resume={run_dir}"], limit=2**40)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_checkpoint(latest)["step"] == 6
