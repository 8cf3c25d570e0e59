"""Every real benchmark sample goes through the tiny golden model without error."""

from __future__ import annotations

import json

import numpy as np


def test_every_real_sample_is_scored(golden_detector, realdata_dir):
    manifest = json.loads((realdata_dir / "manifest.json").read_text())
    paths = [str(realdata_dir / entry["image"]) for entry in manifest]
    names = [entry["category"].replace("_", " ") for entry in manifest]
    results = golden_detector.predict_batch(paths, names, batch_size=8)
    failures = [r.message for r in results if not r.ok]
    assert not failures
    for entry, result in zip(manifest, results):
        assert 0.0 <= result.score <= 1.0
        assert result.anomaly_map.shape == (entry["height"], entry["width"])
        assert np.isfinite(result.anomaly_map).all()
