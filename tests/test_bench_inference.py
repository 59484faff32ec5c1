"""eval/bench_inference.py runs on the default and the large model config (few repeats: a
smoke test of the script, never of its timings) and checks KV-cache tokens against recomputation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("model", ["small", "large"])
def test_the_inference_benchmark_runs_on_the_model_configs(model, tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "eval/bench_inference.py", "--model", model, "--repeats", "2", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["identical_tokens"] and set(report["median_ms"]) == {
        "kv_cache",
        "recompute",
        "recompute_all",
        "parallel",
    }
    assert "kv_cache" in result.stdout and "parallel" in result.stdout
