"""Evaluation on tiny generated benchmarks and on the shared real samples, with the golden model."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import make_items, write_mvtec
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from adaclip.cli import main
from adaclip.data import load_dataset, load_mask
from adaclip.evaluate import evaluate, write_report
from adaclip.files import write_atomically
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
    printed = capsys.readouterr()
    assert "1 images failed and are not in the metrics" in printed.out
    assert "1 of 4 images failed" in printed.err
    assert main(["evaluate", str(tmp_path / "missing"), *golden_cli_args]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_class_name_too_long_for_clip_fails_its_items_only(tmp_path, golden_detector):
    root = write_mvtec(tmp_path / "bench", make_items(("widget",), normal=2, defective=2))
    samples = load_dataset(root)
    wordy = dataclasses.replace(samples[0], category="nut," * 45)
    evaluation = evaluate(golden_detector, [wordy, *samples[1:]], batch_size=2)
    assert len(evaluation.predictions) == len(samples) - 1
    assert "is too long" in evaluation.failures[0]["error"]


def test_bad_files_are_failures_and_the_rest_is_scored(tmp_path, golden_detector):
    root = write_mvtec(tmp_path / "bench", make_items(("widget", "broken"), normal=3, seed=6))
    widget = root / "widget"
    (widget / "test" / "good" / "000.png").write_bytes(b"garbage")
    (widget / "test" / "good" / "001.png").write_bytes(b"")
    (widget / "ground_truth" / "scratch" / "003_mask.png").write_bytes(b"no mask")
    small = np.zeros((7, 13), np.uint8)
    small[2:5, 3:9] = 200  # another size and peak than the image: resized and binarised
    Image.fromarray(small).save(widget / "ground_truth" / "scratch" / "004_mask.png")
    for image in (root / "broken").rglob("test/*/*.png"):
        image.write_bytes(b"")
    samples = load_dataset(root)
    evaluation = evaluate(golden_detector, samples, batch_size=2)
    failures = {(f["category"], Path(f["file"]).name): f for f in evaluation.failures}
    assert len(failures) == 8 and {c for c, _ in failures} == {"widget", "broken"}
    assert "not an image" in failures["widget", "000.png"]["error"]
    assert "empty" in failures["widget", "001.png"]["error"]
    bad_mask = failures["widget", "003_mask.png"]
    assert "003_mask.png cannot be read" in bad_mask["error"]
    assert bad_mask["image"].endswith("scratch/003.png")
    assert [Path(r["image"]).name for r in evaluation.predictions] == ["002.png", "004.png"]
    assert evaluation.per_category["widget"]["pixel_auroc"] is not None
    assert evaluation.per_category["broken"] == dict.fromkeys(METRIC_KEYS)
    report = json.loads((write_report(evaluation, tmp_path / "out") / "metrics.json").read_text())
    assert report["images"] == 2 and report["failed"] == 8
    assert bad_mask in report["failures"]
    markdown = (tmp_path / "out" / "metrics.md").read_text()
    assert "| broken | - |" in markdown and "8 images failed" in markdown
    assert "003_mask.png`: mask" in markdown


def test_resized_mask_counts_like_one_at_the_image_size(tmp_path, golden_detector):
    items = make_items(("widget",), normal=1, defective=1, seed=7)
    root = write_mvtec(tmp_path / "bench", items)
    mask = next(root.rglob("*_mask.png"))
    full = load_dataset(root)
    expected = evaluate(golden_detector, full, pixel_size=40).per_category["widget"]
    Image.open(mask).resize((240, 200), Image.Resampling.NEAREST).save(mask)
    resized = evaluate(golden_detector, full, pixel_size=40).per_category["widget"]
    assert resized == pytest.approx(expected)


def test_cli_reads_one_mvtec_category_and_refuses_bad_choices(tmp_path, golden_cli_args, capsys):
    root = write_mvtec(tmp_path / "bench", make_items(("widget", "gadget"), seed=8))
    output = tmp_path / "out"
    assert main(["evaluate", str(root / "widget"), *golden_cli_args, "--output", str(output)]) == 0
    report = json.loads((output / "metrics.json").read_text())
    assert list(report["per_category"]) == ["widget"] and report["images"] == 4
    capsys.readouterr()
    code = main(["evaluate", str(root), "--categories", "cable", *golden_cli_args])
    assert code == 2
    assert "no categories cable; it has: gadget, widget" in capsys.readouterr().err
    assert main(["evaluate", str(root), "--layout", "visa", *golden_cli_args]) == 2
    assert "looks like the mvtec layout" in capsys.readouterr().err


def test_written_files_are_atomic_and_world_readable(tmp_path):
    import torch
    from safetensors.torch import save_file

    previous = os.umask(0o022)
    try:
        path = write_atomically(
            tmp_path / "w.safetensors", lambda p: save_file({"a": torch.zeros(2)}, str(p))
        )
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o600)
        with pytest.raises(RuntimeError, match="disk full"):
            write_atomically(path, lambda p: (p.write_text("half"), _fail("disk full")))
        assert path.stat().st_mode & 0o777 == 0o600  # untouched by the failed write
    finally:
        os.umask(previous)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def _fail(message: str) -> None:
    raise RuntimeError(message)


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


def test_precision_recall_plot_is_a_step_curve_whose_area_is_the_ap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaclip.evaluate import _plot_level
    from adaclip.metrics import score_curve

    labels, scores = np.array([1, 0, 1, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
    figure, axis = plt.subplots()
    _plot_level(axis, {"widget": score_curve(labels, scores)}, "pr", "image")
    (line,) = axis.lines
    assert line.get_drawstyle() == "steps-pre"
    recall, precision = line.get_data()
    area = float(np.sum(np.diff(recall) * precision[1:]))  # steps-pre: y[i] over (x[i-1], x[i]]
    assert area == pytest.approx(average_precision_score(labels, scores))
    plt.close(figure)
