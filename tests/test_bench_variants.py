"""eval/bench_variants.py runs every variant of both comparisons and writes its table (timing
itself is a benchmark's business, not a test's)."""

from __future__ import annotations

import json

import pytest

from tests.test_bc import run


@pytest.mark.parametrize("variants, model", [("heads", "large"), ("vision", "small")])
def test_bench_variants_times_every_variant(variants, model, tmp_path):
    out = tmp_path / "bench.json"
    result = run(
        "eval/bench_variants.py", "--variants", variants, "--model", model,
        "--batch-size", "2", "--rounds", "1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) >= 4 and all(r["latency_ms"] > 0 and r["train_samples_per_s"] > 0 for r in rows)
