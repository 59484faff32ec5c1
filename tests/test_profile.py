"""eval/profile_training.py: it profiles the real training step and says so in its files."""

from __future__ import annotations

import gzip
import json

from tests.conftest import tiny_model_overrides
from tests.test_bc import run


def test_profile_reports_stages_resident_batches_and_a_trace(tiny_demos, tmp_path):
    out = tmp_path / "profile"
    result = run(
        "eval/profile_training.py",
        *("--steps", "2", "--warmup", "1", "--trace-steps", "1", "--out", str(out), "--batch-sizes", "2,4"),
        f"data.path={tiny_demos}",
        "data.tasks=[reach,lift]",
        "data.num_workers=0",
        "trainer.batch_size=4",
        "trainer.progress=false",
        "trainer.cache_keypoints=false",
        *tiny_model_overrides(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "profile.json").read_text())
    assert set(report["stage_ms"]) == {"data wait", "to device", "forward", "backward", "optimizer"}
    assert all(ms >= 0 for ms in report["stage_ms"].values()) and report["stage_ms"]["forward"] > 0
    assert [row["batch_size"] for row in report["resident"]] == [2, 4]
    assert report["end_to_end_samples_per_s"] > 0 and report["top_ops"]
    assert report["loader_us_per_sample"] > 0 and report["end_to_end_later_samples_per_s"] > 0
    assert any(op["op"].startswith("aten::") for op in report["top_ops"])
    trace = json.loads(gzip.open(out / "trace.json.gz").read())
    assert any(event.get("name") == "train step" for event in trace["traceEvents"])
    assert "| forward |" in (out / "profile.md").read_text()


def test_profile_rejects_a_bad_device_in_one_line(tiny_demos, tmp_path):
    result = run("eval/profile_training.py", "--device", "tpu", f"data.path={tiny_demos}")
    assert result.returncode != 0
    assert "--device must be cpu or cuda, got 'tpu'" in result.stderr
    assert "Traceback" not in result.stderr
