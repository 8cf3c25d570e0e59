"""The benchmark runs end to end on the tiny golden model and writes sane figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_table_and_json(tmp_path, shared_dir):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick"]
    command += ["--device", "cpu", "--batch-sizes", "1,2", "--accuracy-images", "2"]
    command += ["--pipeline-batches", "2", "--json", str(out)]
    env = {**os.environ, "ADACLIP_SHARED": str(shared_dir)}
    process = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert process.returncode == 0, process.stderr

    assert "| fp32 |" in process.stdout and "| bf16 |" in process.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_cores"] >= 1
    assert report["machine"]["torch"]
    assert report["settings"]["image_size"] == 240
    assert report["targets"] is None  # the targets are for ViT-L-14-336 at 518 px
    assert set(report["results"]) == {"fp32", "bf16"}
    for result in report["results"].values():
        latency = result["latency"]
        assert 0 < latency["model_s"]["median"] < 60
        assert 0 < latency["end_to_end_s"]["median"] < 60
        assert result["cold_start_s"] > 0
        assert set(result["throughput"]) == {"1", "2"}
        assert all(t["images_per_s"] > 0 for t in result["throughput"].values())
        assert result["pipelined"]["2"]["images"] == 4
        assert 10 < latency["peak_rss_mb"] < 20_000
        assert "outputs" not in result
    accuracy = report["results"]["bf16"]["accuracy_vs_fp32"]
    assert accuracy["images"] == 2
    assert 0 <= accuracy["max_map_diff"] < 0.1
    assert 0 <= accuracy["max_score_diff"] < 0.1
    assert "accuracy_vs_fp32" not in report["results"]["fp32"]
