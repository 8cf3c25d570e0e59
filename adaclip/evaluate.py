"""Benchmark evaluation: scores and maps through the detector, metrics per category, reports.

Pixel metrics are computed at a fixed ``P x P`` resolution (``P`` = the model input side
``S`` unless ``pixel_size`` says otherwise): each raw map is smoothed at ``S`` exactly as
:meth:`Detector.smooth` does for predictions and resized to ``P``; masks are binarised and
resized to ``P`` by nearest neighbour. The maps only ever exist one batch at a time.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adaclip import render
from adaclip.data import EvalSet, Sample, categories_of, collate_eval
from adaclip.detector import Detector
from adaclip.errors import AdaCLIPError
from adaclip.files import write_atomically
from adaclip.images import load_image
from adaclip.metrics import (
    METRIC_KEYS,
    PIXEL_KEYS,
    Curve,
    PixelAccumulator,
    has_both_classes,
    image_metrics,
    mean_metrics,
    score_curve,
)

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What an evaluation run measured.

    Attributes:
        per_category: Metric name -> value (``None`` where undefined) for each category.
        mean: The mean of each metric over the categories where it is defined.
        predictions: One row per scored image: ``image``, ``category``, ``label``, ``score``.
        image_curves: Image-level curve of each category that has both labels.
        pixel_curves: Pixel-level curve of each category that has masks.
        failures: ``{"image", "error"}`` for each image that could not be read.
        pixel_size: The side ``P`` at which pixel metrics were computed.
    """

    per_category: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    predictions: list[dict]
    image_curves: dict[str, Curve] = field(default_factory=dict)
    pixel_curves: dict[str, Curve] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    pixel_size: int = 0


def evaluate(
    detector: Detector,
    samples: Sequence[Sample],
    batch_size: int = 8,
    pixel_size: int | None = None,
    workers: int = 0,
    overlay_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Scores every sample and computes image and pixel metrics per category.

    Args:
        detector: The model; only :meth:`Detector.run` and :meth:`Detector.smooth` are used.
        samples: Test samples (see :func:`adaclip.data.load_dataset`).
        batch_size: Images per forward pass.
        pixel_size: Side of the pixel-metric resolution; the model's input side by default.
        workers: Data-loading processes (0 loads in this process).
        overlay_dir: If given, a heat-map overlay per image is written under it.
        progress: Called with ``(done, total)`` after each batch.

    Returns:
        The metrics, per-image scores and curves.
    """
    if batch_size < 1:
        raise AdaCLIPError(f"batch size must be at least 1; got {batch_size}.")
    if pixel_size is not None and pixel_size < 1:
        raise AdaCLIPError(f"pixel size must be at least 1 pixel; got {pixel_size}.")
    S = detector.config.image_size
    # TODO(#5): metrics at the masks' own resolution (anomalib's habit) are not offered.
    P = pixel_size or S
    with_masks = {s.category for s in samples if s.label == 1 and s.mask is not None}
    accumulators = {c: PixelAccumulator() for c in categories_of(samples) if c in with_masks}
    loader = torch.utils.data.DataLoader(
        EvalSet(samples, S, P, detector.max_pixels),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_eval,
    )
    predictions, failures, done = [], [], 0
    for items in loader:
        ok = [item for item in items if item["error"] is None]
        failures += [_failure(samples[item["index"]], item) for item in items if item["error"]]
        if ok:
            rows = _score_batch(detector, samples, ok, P, accumulators, overlay_dir)
            predictions.extend(rows)
        done += len(items)
        if progress is not None:
            progress(done, len(samples))
    if failures:
        logger.warning(
            "%d of %d images failed and are left out of the metrics; see the failures list",
            len(failures), len(samples),
        )  # fmt: skip
    return _summarise(samples, predictions, accumulators, failures, P)


def _failure(sample: Sample, item: dict) -> dict:
    """The failures entry of an item that could not be loaded: image, bad file, reason."""
    logger.warning("skipping %s: %s", sample.image, item["error"])
    return {
        "image": str(sample.image),
        "category": sample.category,
        "file": str(item["file"]),
        "error": item["error"],
    }


def _score_batch(
    detector: Detector,
    samples: Sequence[Sample],
    items: list[dict],
    P: int,
    accumulators: dict[str, PixelAccumulator],
    overlay_dir: str | Path | None,
) -> list[dict]:
    """Runs one batch, feeds the pixel accumulators and returns the prediction rows."""
    batch = torch.stack([item["image"] for item in items])  # (B, 3, S, S)
    chosen = [samples[item["index"]] for item in items]
    scores, raw_maps = detector.run(batch, [item["class_name"] for item in items])
    rows = []
    for item, sample, score, raw in zip(items, chosen, scores, raw_maps):
        if item["mask"] is not None and sample.category in accumulators:
            accumulators[sample.category].update(detector.smooth(raw, (P, P)), item["mask"])
        if overlay_dir is not None:
            write_overlay(detector, sample, raw, Path(overlay_dir))
        rows.append(
            {
                "image": str(sample.image),
                "category": sample.category,
                "label": sample.label,
                "score": float(score),
            }
        )
    return rows


def _summarise(
    samples: Sequence[Sample],
    predictions: list[dict],
    accumulators: dict[str, PixelAccumulator],
    failures: list[dict],
    P: int,
) -> Evaluation:
    """Turns the per-image scores and pixel counts into metrics per category."""
    per_category, image_curves, pixel_curves = {}, {}, {}
    for category in categories_of(samples):
        rows = [r for r in predictions if r["category"] == category]
        if not rows:
            logger.warning("%s: every image failed, its metrics are undefined", category)
            per_category[category] = dict.fromkeys(METRIC_KEYS)
            continue
        labels = np.array([r["label"] for r in rows])
        scores = np.array([r["score"] for r in rows])
        metrics = image_metrics(labels, scores)
        curve = score_curve(labels, scores)
        if has_both_classes(curve):
            image_curves[category] = curve
        else:
            logger.info("%s: only one image label, image metrics undefined", category)
        accumulator = accumulators.get(category)
        metrics.update(accumulator.compute() if accumulator else dict.fromkeys(PIXEL_KEYS))
        if accumulator is not None and metrics["pixel_auroc"] is not None:
            pixel_curves[category] = accumulator.curve()
        per_category[category] = metrics
    return Evaluation(
        per_category=per_category,
        mean=mean_metrics(per_category),
        predictions=predictions,
        image_curves=image_curves,
        pixel_curves=pixel_curves,
        failures=failures,
        pixel_size=P,
    )


def write_overlay(detector: Detector, sample: Sample, raw_map: np.ndarray, folder: Path) -> Path:
    """Saves the heat map over the image at its size as ``folder/<category>/<type>_<stem>.png``."""
    picture = np.asarray(load_image(sample.image, detector.max_pixels, str(sample.image)))
    anomaly_map = detector.smooth(raw_map, picture.shape[:2])
    path = folder / sample.category / f"{sample.defect}_{sample.image.stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render.overlay(picture, anomaly_map)).save(path)
    return path


def write_report(evaluation: Evaluation, output: str | Path, settings: dict | None = None) -> Path:
    """Writes ``metrics.json``, ``predictions.csv``, ``metrics.md``, ``roc.png`` and ``pr.png``.

    Each file is written whole or not at all (through a temporary file in the same folder).
    ``metrics.json`` counts the scored ``images`` and lists the ``failures``; the Markdown
    report lists them too.

    Returns:
        The output folder.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    report = {
        "per_category": evaluation.per_category,
        "mean": evaluation.mean,
        "pixel_size": evaluation.pixel_size,
        "images": len(evaluation.predictions),
        "failed": len(evaluation.failures),
        "failures": evaluation.failures,
        "settings": settings or {},
    }
    write_atomically(output / "metrics.json", lambda p: p.write_text(json.dumps(report, indent=2)))
    write_atomically(output / "predictions.csv", lambda p: _write_predictions(evaluation, p))
    write_atomically(output / "metrics.md", lambda p: p.write_text(markdown_report(evaluation)))
    plot_curves(evaluation, output)
    logger.info("evaluation report written to %s", output)
    return output


def _write_predictions(evaluation: Evaluation, path: Path) -> None:
    """One CSV row per scored image."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "category", "label", "score"])
        writer.writeheader()
        writer.writerows(evaluation.predictions)


def markdown_report(evaluation: Evaluation) -> str:
    """The metrics table plus, if any image failed, a list of the failures."""
    text = markdown_table(evaluation)
    if evaluation.failures:
        lines = [f"\n{len(evaluation.failures)} images failed and are not in the metrics:\n"]
        lines += [f"- `{f['file']}`: {f['error']}" for f in evaluation.failures]
        text += "\n".join(lines) + "\n"
    return text


def markdown_table(evaluation: Evaluation) -> str:
    """The metrics as a Markdown table in percent, one row per category plus the mean."""
    header = ["category", *(k.replace("_", " ") for k in METRIC_KEYS)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    rows = [*evaluation.per_category.items(), ("**mean**", evaluation.mean)]
    for name, metrics in rows:
        cells = ["-" if metrics[k] is None else f"{100 * metrics[k]:.1f}" for k in METRIC_KEYS]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(evaluation: Evaluation, output: Path) -> None:
    """ROC curves to ``roc.png`` and precision-recall curves to ``pr.png`` (image | pixel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, kind in (("roc.png", "roc"), ("pr.png", "pr")):
        figure, axes = plt.subplots(1, 2, figsize=(11, 5))
        for axis, level, curves in zip(
            axes, ("image", "pixel"), (evaluation.image_curves, evaluation.pixel_curves)
        ):
            _plot_level(axis, curves, kind, level)
        figure.tight_layout()
        write_atomically(output / name, lambda p, f=figure: f.savefig(p, dpi=100))
        plt.close(figure)


def _plot_level(axis, curves: dict[str, Curve], kind: str, level: str) -> None:
    """Draws one panel: a line per category.

    Precision-recall curves are steps (each precision holds up to its recall), so the area
    under a drawn curve is its average precision, not an optimistic interpolation.
    """
    for category, curve in curves.items():
        if kind == "roc":
            x, y = curve.roc()
            axis.plot(x, y, linewidth=1, label=category)
        else:
            precision, recall = curve.precision_recall()
            x, y = np.concatenate([[0.0], recall]), np.concatenate([[1.0], precision])
            axis.plot(x, y, linewidth=1, label=category, drawstyle="steps-pre")
    xlabel, ylabel = (
        ("false-positive rate", "true-positive rate") if kind == "roc" else ("recall", "precision")
    )
    axis.set(
        xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=f"{level} {kind.upper()}"
    )
    if curves:
        axis.legend(fontsize=7, loc="best")
    else:
        axis.text(0.5, 0.5, "undefined (one label only or no masks)", ha="center", fontsize=9)
