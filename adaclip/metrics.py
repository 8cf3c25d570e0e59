"""Anomaly-detection metrics: image and pixel AUROC, AP and F1-max, and AUPRO.

Image metrics sort the scores exactly. Pixel metrics stream: maps in [0, 1] are quantised
to :data:`LEVELS` levels and only per-level counts are kept, so memory does not grow with
the number of images and every metric is exact for the quantised maps. All curves follow
scikit-learn's conventions (one point per distinct score, thresholds inclusive).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

LEVELS = 65536
"""Quantisation levels of pixel maps in [0, 1] (a step of 1.5e-5)."""

AUPRO_FPR_LIMIT = 0.3
"""The false-positive rate up to which the per-region overlap curve is integrated."""

IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS


@dataclass(frozen=True)
class Curve:
    """Counts at each distinct threshold, from the highest threshold down.

    Attributes:
        thresholds: Distinct scores, descending, ``(T,)``.
        tps: Positives scoring at least each threshold, ``(T,)``.
        fps: Negatives scoring at least each threshold, ``(T,)``.
    """

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """False- and true-positive rates, starting at ``(0, 0)``, ``(T+1,)`` each."""
        fp_rate = np.concatenate([[0.0], self.fps / self.fps[-1]])
        tp_rate = np.concatenate([[0.0], self.tps / self.tps[-1]])
        return fp_rate, tp_rate

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Precision and recall at each threshold, ``(T,)`` each (no appended end point)."""
        precision = self.tps / np.maximum(self.tps + self.fps, 1)
        recall = self.tps / self.tps[-1]
        return precision, recall


def has_both_classes(curve: Curve) -> bool:
    """Whether the curve saw positives and negatives, so that every metric is defined."""
    return bool(curve.tps[-1] > 0 and curve.fps[-1] > 0)


def auroc(curve: Curve) -> float:
    """Area under the ROC curve (trapezoids, as scikit-learn)."""
    fp_rate, tp_rate = curve.roc()
    return float(np.trapezoid(tp_rate, fp_rate))


def average_precision(curve: Curve) -> float:
    """Average precision: the precision at each threshold weighted by the recall it adds."""
    precision, recall = curve.precision_recall()
    gained = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(gained * precision))


def f1_max(curve: Curve) -> float:
    """The best F1 score over all thresholds of the precision-recall curve."""
    precision, recall = curve.precision_recall()
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(f1.max())


def score_curve(labels: np.ndarray, scores: np.ndarray) -> Curve:
    """The exact curve of any real scores against binary labels.

    Args:
        labels: ``(n,)`` with 1 (or True) for anomalous.
        scores: ``(n,)`` higher means more anomalous.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape or labels.size == 0:
        raise ValueError(
            f"need as many labels as scores (at least one); got {labels.size} and {scores.size}."
        )
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    last = np.flatnonzero(np.diff(ranked) != 0)  # last index of each run of equal scores
    ends = np.concatenate([last, [ranked.size - 1]])
    tps = np.cumsum(hits)[ends]
    return Curve(thresholds=ranked[ends], tps=tps, fps=ends + 1 - tps)


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Image AUROC, AP and F1-max; all ``None`` unless both classes are present.

    Args:
        labels: ``(n,)`` image labels, 1 anomalous.
        scores: ``(n,)`` image anomaly scores.
    """
    curve = score_curve(labels, scores)
    if not has_both_classes(curve):
        return dict.fromkeys(IMAGE_KEYS)
    return {
        "image_auroc": auroc(curve),
        "image_ap": average_precision(curve),
        "image_f1max": f1_max(curve),
    }


class PixelAccumulator:
    """Streams anomaly maps and masks into per-level counts for the pixel metrics.

    Memory is ``O(LEVELS)`` whatever the number of images. Each mask's connected
    anomalous regions (8-connected) are found per image for AUPRO: a region of area
    ``A`` adds ``1 / A`` per pixel to its level, so that summing from the top level down
    gives the summed per-region overlap at every threshold.
    """

    def __init__(self) -> None:
        self.positives = np.zeros(LEVELS, dtype=np.int64)
        self.negatives = np.zeros(LEVELS, dtype=np.int64)
        self.region_overlap = np.zeros(LEVELS, dtype=np.float64)
        self.regions = 0

    def update(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Adds images.

        Args:
            maps: Anomaly maps ``(B, H, W)`` or ``(H, W)``, values in [0, 1].
            masks: Ground truth of the same shape, nonzero is anomalous.
        """
        maps, masks = np.asarray(maps), np.asarray(masks).astype(bool)
        if maps.shape != masks.shape:
            raise ValueError(f"maps {maps.shape} and masks {masks.shape} must have the same shape.")
        if maps.ndim == 2:
            maps, masks = maps[None], masks[None]
        levels = quantize(maps)
        self.positives += np.bincount(levels[masks], minlength=LEVELS)
        self.negatives += np.bincount(levels[~masks], minlength=LEVELS)
        for level, mask in zip(levels, masks):
            self._add_regions(level, mask)

    def _add_regions(self, levels: np.ndarray, mask: np.ndarray) -> None:
        """Adds the per-region overlap weights of one ``(H, W)`` image."""
        if not mask.any():
            return
        regions, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        areas = np.bincount(regions.ravel())  # areas[0] counts background pixels
        inside = regions > 0
        weights = 1.0 / areas[regions[inside]]
        self.region_overlap += np.bincount(levels[inside], weights=weights, minlength=LEVELS)
        self.regions += count

    def curve(self) -> Curve:
        """The pixel curve over the levels that hold at least one pixel."""
        keep = np.flatnonzero((self.positives + self.negatives)[::-1])
        level = LEVELS - 1 - keep
        tps = np.cumsum(self.positives[::-1])[keep]
        fps = np.cumsum(self.negatives[::-1])[keep]
        return Curve(thresholds=level / (LEVELS - 1), tps=tps, fps=fps)

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """False-positive rate and mean per-region overlap, from ``(0, 0)`` up, ``(T+1,)`` each."""
        used = (self.positives + self.negatives)[::-1] > 0
        fp_rate = np.cumsum(self.negatives[::-1])[used] / self.negatives.sum()
        pro = np.cumsum(self.region_overlap[::-1])[used] / self.regions
        return np.concatenate([[0.0], fp_rate]), np.concatenate([[0.0], pro])

    def compute(self) -> dict[str, float | None]:
        """Pixel AUROC, AP, F1-max and AUPRO; all ``None`` without both kinds of pixel."""
        if self.positives.sum() == 0 or self.negatives.sum() == 0:
            return dict.fromkeys(PIXEL_KEYS)
        curve = self.curve()
        return {
            "pixel_auroc": auroc(curve),
            "pixel_ap": average_precision(curve),
            "pixel_f1max": f1_max(curve),
            "pixel_aupro": area_up_to(*self.pro_curve(), AUPRO_FPR_LIMIT) / AUPRO_FPR_LIMIT,
        }


def quantize(maps: np.ndarray) -> np.ndarray:
    """Maps values in [0, 1] to integer levels ``0 .. LEVELS-1`` (out-of-range values clip)."""
    scaled = np.rint(np.clip(maps, 0.0, 1.0) * (LEVELS - 1))
    return scaled.astype(np.int64)


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``y(x)`` from ``x[0]`` to ``limit``, interpolating at ``limit``.

    Args:
        x: Non-decreasing abscissae, ``(T,)``.
        y: Ordinates, ``(T,)``.
        limit: Where to stop; the curve must reach it.
    """
    inside = np.searchsorted(x, limit, side="right")  # points with x <= limit
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and xs[-1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        ys = np.append(ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
        xs = np.append(xs, limit)
    return float(np.trapezoid(ys, xs))


def pixel_metrics(masks: np.ndarray, maps: np.ndarray) -> dict[str, float | None]:
    """Pixel AUROC, AP, F1-max and AUPRO of a stack of maps in one call.

    Args:
        masks: ``(B, H, W)`` ground truth, nonzero anomalous.
        maps: ``(B, H, W)`` anomaly maps in [0, 1].
    """
    accumulator = PixelAccumulator()
    accumulator.update(maps, masks)
    return accumulator.compute()


def mean_metrics(per_category: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """The mean of each metric over the categories where it is defined (``None`` if none)."""
    mean: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        values = [m[key] for m in per_category.values() if m.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    return mean
