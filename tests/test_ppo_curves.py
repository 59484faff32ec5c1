"""eval/ppo_curves.py: the learning-curve PNG of PPO runs, and where its legend goes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from eval.ppo_curves import SIZE, legend_place

REPO = Path(__file__).resolve().parents[1]
FRAME = (0.0, 0.0, 300.0, 200.0)


def test_legend_goes_where_it_hides_no_points():
    top_band = [(x, y) for x in range(0, 301, 10) for y in (10, 30, 50)]  # curves along the top
    x, y = legend_place(top_band, (100, 40), FRAME)
    assert not any(x <= px <= x + 100 and y <= py <= y + 40 for px, py in top_band)
    assert (x, y) == (8.0, 8 + (200 - 16 - 40) / 2)  # the first free row, left column first


def test_legend_stays_top_left_on_an_empty_plot():
    assert legend_place([], (100, 40), FRAME) == (8.0, 8.0)


def write_run(run_dir: Path, rates: list[float]) -> Path:
    run_dir.mkdir(parents=True)
    rows = [
        {"step": 1000 * i, "success_rate": r, "episodes": 10, "ci95": [max(0, r - 0.1), min(1, r + 0.1)]}
        for i, r in enumerate(rates)
    ]
    (run_dir / "evals.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run_dir


def test_cli_writes_a_png_of_the_runs(tmp_path):
    a, b = write_run(tmp_path / "a", [0.1, 0.5, 0.8]), write_run(tmp_path / "b", [0.0])
    out = tmp_path / "curves.png"
    done = subprocess.run(
        [sys.executable, "eval/ppo_curves.py", f"BC+PPO={a}", f"scratch={b}", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(out)
    assert Image.open(out).size == SIZE


def test_a_run_without_evals_is_one_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "eval/ppo_curves.py", f"x={tmp_path}", "--out", str(tmp_path / "c.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"error: no evals.jsonl in {tmp_path} (a train/ppo.py run directory?)"]
