"""Evaluation on tiny generated benchmarks and on the shared real samples, with the golden model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import make_items, write_mvtec
from sklearn.metrics import average_precision_score, roc_auc_score

from adaclip.cli import main
from adaclip.data import load_dataset, load_mask
from adaclip.evaluate import evaluate
from adaclip.metrics import METRIC_KEYS, PIXEL_KEYS, pixel_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    """``widget`` with masks, ``plain`` without masks, ``onlybad`` without normal images."""
    root = tmp_path_factory.mktemp("bench")
    write_mvtec(root, make_items(("widget",), normal=3, defective=3, seed=1))
    write_mvtec(root, make_items(("plain",), normal=2, defective=2, seed=2, masks=False))
    write_mvtec(root, make_items(("onlybad",), normal=0, defective=2, seed=3))
    return root


@pytest.fixture(scope="module")
def evaluation(benchmark, golden_detector):
    return evaluate(golden_detector, load_dataset(benchmark), batch_size=3)


def test_scores_are_the_detectors(benchmark, evaluation, golden_detector):
    samples = load_dataset(benchmark)
    results = golden_detector.predict_batch(
        [str(s.image) for s in samples], [s.class_name for s in samples], batch_size=4
    )
    assert [r["image"] for r in evaluation.predictions] == [str(s.image) for s in samples]
    scores = [r["score"] for r in evaluation.predictions]
    np.testing.assert_allclose(scores, [r.score for r in results], atol=1e-6)


def test_image_metrics_agree_with_sklearn(evaluation):
    rows = [r for r in evaluation.predictions if r["category"] == "widget"]
    labels, scores = [r["label"] for r in rows], [r["score"] for r in rows]
    metrics = evaluation.per_category["widget"]
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert metrics["image_ap"] == pytest.approx(average_precision_score(labels, scores))


def test_pixel_metrics_from_smoothed_maps_at_s(benchmark, evaluation, golden_detector):
    samples = [s for s in load_dataset(benchmark) if s.category == "widget"]
    S = golden_detector.config.image_size
    results = golden_detector.predict_batch(
        [str(s.image) for s in samples], "widget", raw_maps=True
    )
    maps = np.stack([golden_detector.smooth(r.raw_map, (S, S)) for r in results])
    masks = np.stack([load_mask(s.mask, (S, S)) for s in samples])
    expected = pixel_metrics(masks, maps)
    for key in PIXEL_KEYS:
        assert evaluation.per_category["widget"][key] == pytest.approx(expected[key], abs=1e-5)
    assert evaluation.pixel_size == S


def test_undefined_metrics_are_null_not_errors(evaluation):
    plain, onlybad = evaluation.per_category["plain"], evaluation.per_category["onlybad"]
    assert plain["image_auroc"] is not None
    assert all(plain[k] is None for k in PIXEL_KEYS)  # no masks
    assert onlybad["image_auroc"] is None  # no normal images
    assert onlybad["pixel_auroc"] is not None  # but normal pixels exist
    assert evaluation.mean["pixel_auroc"] == pytest.approx(
        np.mean([evaluation.per_category[c]["pixel_auroc"] for c in ("widget", "onlybad")])
    )


def test_batch_size_does_not_change_results(benchmark, evaluation, golden_detector):
    samples = [s for s in load_dataset(benchmark) if s.category == "widget"]
    one = evaluate(golden_detector, samples, batch_size=1)
    for key in METRIC_KEYS:
        assert one.per_category["widget"][key] == pytest.approx(
            evaluation.per_category["widget"][key], abs=1e-5
        )


def test_cli_writes_the_report(benchmark, tmp_path, golden_cli_args, capsys):
    output = tmp_path / "report"
    code = main(
        ["evaluate", str(benchmark), *golden_cli_args, "--categories", "widget", "plain",
         "--batch-size", "4", "--pixel-size", "64", "--overlays", "--output", str(output)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((output / "metrics.json").read_text())
    assert set(report["per_category"]) == {"widget", "plain"}
    assert set(report["per_category"]["widget"]) == set(METRIC_KEYS) == set(report["mean"])
    assert report["pixel_size"] == 64 and report["per_category"]["plain"]["pixel_aupro"] is None
    with (output / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "category", "label", "score"] and len(rows) == 10
    for name in ("metrics.md", "roc.png", "pr.png"):
        assert (output / name).stat().st_size > 0
    assert len(list((output / "overlays").rglob("*.png"))) == 10
    assert "| widget |" in capsys.readouterr().out


def test_cli_reports_unreadable_images_and_bad_folders(tmp_path, golden_cli_args, capsys):
    root = write_mvtec(tmp_path / "bench", make_items(("widget",), seed=4))
    next(root.rglob("000.png")).write_bytes(b"garbage")
    output = tmp_path / "out"
    assert main(["evaluate", str(root), *golden_cli_args, "--output", str(output)]) == 1
    report = json.loads((output / "metrics.json").read_text())
    assert len(report["failures"]) == 1 and "000.png" in report["failures"][0]["image"]
    assert report["images"] == 3
    assert main(["evaluate", str(tmp_path / "missing"), *golden_cli_args]) == 2
    assert "does not exist" in capsys.readouterr().err


def realdata_as_mvtec(realdata_dir: Path, root: Path) -> Path:
    """Symlinks the shared samples into ``root/<category>/{test,ground_truth}/...``."""
    manifest = json.loads((realdata_dir / "manifest.json").read_text())
    for entry in manifest:
        image = realdata_dir / entry["image"]
        kind = "defect" if entry["label"] else "good"
        link = root / entry["category"] / "test" / kind / image.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(image)
        if entry["mask"]:
            mask = root / entry["category"] / "ground_truth" / kind / f"{image.stem}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.symlink_to(realdata_dir / entry["mask"])
    return root


def test_real_samples_as_mvtec_tree(realdata_dir, tmp_path, golden_cli_args):
    root = realdata_as_mvtec(realdata_dir, tmp_path / "mvtec")
    output = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-m", "adaclip", "evaluate", str(root), *golden_cli_args,
         "--batch-size", "16", "--output", str(output)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads((output / "metrics.json").read_text())
    with (output / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    manifest = json.loads((realdata_dir / "manifest.json").read_text())
    assert len(rows) == len(manifest) == report["images"]
    with_masks = {e["category"] for e in manifest if e["mask"]}
    for category, metrics in report["per_category"].items():
        mine = [r for r in rows if r["category"] == category]
        labels = [int(r["label"]) for r in mine]
        scores = [float(r["score"]) for r in mine]
        if len(set(labels)) == 2:
            assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
            assert metrics["image_ap"] == pytest.approx(average_precision_score(labels, scores))
        else:
            assert metrics["image_auroc"] is None
        defined = [metrics[k] is not None for k in PIXEL_KEYS]
        assert all(defined) if category in with_masks else not any(defined), category
    assert report["mean"]["pixel_aupro"] is not None
