"""The golden vectors of the reference implementation, reproduced to 1e-4."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from adaclip.images import load_image, preprocess

TOL = 1e-4


def _inputs(golden_dir, golden):
    return [str(golden_dir / c["image"]) for c in golden["cases"]]


def _names(golden):
    return [c["class_name"] for c in golden["cases"]]


def test_preprocessing_matches_reference(golden_dir, golden):
    for case in golden["cases"]:
        tensor = preprocess(load_image(golden_dir / case["image"]), golden["image_size"])
        expected = np.load(golden_dir / case["input_tensor"])
        assert tensor.dtype == torch.float32
        np.testing.assert_allclose(tensor.numpy(), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_maps_and_scores_match_reference(golden_detector, golden_dir, golden, batch_size):
    results = golden_detector.predict_batch(
        _inputs(golden_dir, golden), _names(golden), batch_size=batch_size, raw_maps=True
    )
    for case, result in zip(golden["cases"], results):
        assert result.ok, result
        raw = np.load(golden_dir / case["expected_map"])
        smoothed = np.load(golden_dir / case["expected_map_smoothed"])
        assert abs(result.score - case["expected_score"]) <= TOL
        np.testing.assert_allclose(result.raw_map, raw, atol=TOL, rtol=0)
        np.testing.assert_allclose(
            golden_detector.smooth(result.raw_map, raw.shape), smoothed, atol=TOL, rtol=0
        )


def test_smoothed_map_is_returned_at_image_size(golden_detector, golden_dir, golden):
    case = golden["cases"][1]  # 248 x 373 greyscale JPEG
    result = golden_detector.predict(golden_dir / case["image"], case["class_name"])
    width, height = load_image(golden_dir / case["image"]).size
    assert result.anomaly_map.shape == (height, width)
    assert result.anomaly_map.dtype == np.float32
    assert 0.0 <= result.anomaly_map.min() <= result.anomaly_map.max() <= 1.0


def test_cli_reproduces_reference(golden_dir, golden, golden_cli_args, tmp_path):
    names = [arg for name in _names(golden) for arg in ("--class-name", name)]
    command = [sys.executable, "-m", "adaclip", "predict", *_inputs(golden_dir, golden), *names]
    command += [*golden_cli_args, "--batch-size", "4", "--raw-maps", "--output", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for case, row in zip(golden["cases"], results):
        assert abs(row["score"] - case["expected_score"]) <= TOL
        raw = np.load(tmp_path / row["map"])
        np.testing.assert_allclose(raw, np.load(golden_dir / case["expected_map"]), atol=TOL)
        assert (tmp_path / row["overlay"]).is_file()
    assert "bottle" in done.stdout and f"{golden['cases'][0]['expected_score']:.4f}" in done.stdout
