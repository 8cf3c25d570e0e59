"""Metrics against hand-computed cases, scikit-learn and a slow AUPRO written out in full."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from adaclip.metrics import (
    LEVELS,
    PixelAccumulator,
    area_up_to,
    auroc,
    average_precision,
    f1_max,
    image_metrics,
    mean_metrics,
    pixel_metrics,
    score_curve,
)


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.zeros_like(precision)
    good = precision + recall > 0
    f1[good] = 2 * precision[good] * recall[good] / (precision[good] + recall[good])
    return float(f1.max())


def on_levels(values: np.ndarray) -> np.ndarray:
    """Values already on the quantisation grid, so streamed metrics are exact."""
    return np.rint(np.clip(values, 0, 1) * (LEVELS - 1)) / (LEVELS - 1)


def slow_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """Every distinct threshold checked one by one; regions 8-connected per image."""
    regions = []
    for mask, amap in zip(masks, maps):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labelled == r] for r in range(1, count + 1)]
    normal = maps[~masks.astype(bool)]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fp_rate = np.mean(normal >= t)
        pro = np.mean([np.mean(r >= t) for r in regions])
        points.append((fp_rate, pro))
    points.sort()
    x, y = np.array(points).T
    cut = x <= limit
    xs, ys = list(x[cut]), list(y[cut])
    after = np.flatnonzero(~cut)
    if after.size and xs[-1] < limit:
        j = after[0]
        ys.append(y[j - 1] + (y[j] - y[j - 1]) * (limit - x[j - 1]) / (x[j] - x[j - 1]))
        xs.append(limit)
    return float(np.trapezoid(ys, xs) / limit)


def test_image_metrics_hand_computed():
    # thresholds 0.8 (P 1, R 1/2), 0.4 (P 1/2, R 1/2), 0.35 (P 2/3, R 1), 0.1 (P 1/2, R 1)
    metrics = image_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert metrics["image_auroc"] == pytest.approx(0.75)
    assert metrics["image_ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics["image_f1max"] == pytest.approx(0.8)


def test_perfect_and_inverted_ranking():
    labels = np.array([0, 0, 0, 1, 1])
    perfect = image_metrics(labels, np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert perfect == {"image_auroc": 1.0, "image_ap": 1.0, "image_f1max": 1.0}
    inverted = image_metrics(labels, np.array([0.9, 0.8, 0.7, 0.2, 0.1]))
    assert inverted["image_auroc"] == 0.0
    assert inverted["image_f1max"] == pytest.approx(2 * 0.4 / 1.4)  # everything flagged


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.4 * labels, 1 + seed)  # coarse rounding: many ties
    curve = score_curve(labels, scores)
    assert auroc(curve) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(curve) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    assert f1_max(curve) == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)


def test_one_class_gives_no_image_metrics():
    assert image_metrics(np.ones(4), np.arange(4.0)) == dict.fromkeys(
        ["image_auroc", "image_ap", "image_f1max"]
    )
    with pytest.raises(ValueError, match="as many labels as scores"):
        image_metrics(np.ones(3), np.ones(4))


def random_pixels(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((6, 32, 40), dtype=bool)
    masks[0, 4:10, 5:15] = True
    masks[1, 20:30, 30:38] = True
    masks[1, 2:4, 2:4] = True
    masks[3, 10:11, 10:11] = True
    maps = rng.random(masks.shape) * 0.7 + 0.3 * masks * rng.random(masks.shape)
    return masks, on_levels(maps)


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_metrics_match_sklearn(seed):
    masks, maps = random_pixels(seed)
    metrics = pixel_metrics(masks, maps)
    labels, scores = masks.ravel(), maps.ravel()
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-10)
    assert metrics["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-10)
    assert metrics["pixel_f1max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-10)


def test_streaming_equals_one_call():
    masks, maps = random_pixels(3)
    streamed = PixelAccumulator()
    for mask, amap in zip(masks, maps):
        streamed.update(amap, mask)
    assert streamed.compute() == pixel_metrics(masks, maps)


def test_aupro_perfect_map_is_one():
    masks, _ = random_pixels(0)
    assert pixel_metrics(masks, masks.astype(float))["pixel_aupro"] == pytest.approx(1.0)


def test_aupro_constant_map():
    # one threshold: the curve jumps from (0, 0) to (1, 1); up to 0.3 the area is 0.045
    masks, _ = random_pixels(0)
    metrics = pixel_metrics(masks, np.full(masks.shape, 0.5))
    assert metrics["pixel_aupro"] == pytest.approx(0.045 / 0.3)
    assert metrics["pixel_auroc"] == pytest.approx(0.5)


def test_aupro_averages_regions_not_pixels():
    # region A (1 px) at 0.9, region B (4 px) at 0.5, one of 31 normal pixels at 0.7, rest 0.
    # curve: (0, 0) (0, 1/2) (1/31, 1/2) (1/31, 1) (1, 1); pixel-wise overlap would give 1/5
    # instead of 1/2 at the top threshold.
    mask = np.zeros((6, 6), dtype=bool)
    amap = np.zeros((6, 6))
    mask[0, 0], amap[0, 0] = True, 0.9
    mask[3:5, 3:5], amap[3:5, 3:5] = True, 0.5
    amap[0, 5] = 0.7
    fp_rate = 1 / 31
    expected = (fp_rate * 0.5 + (0.3 - fp_rate) * 1.0) / 0.3
    metrics = pixel_metrics(mask[None], amap[None])
    assert metrics["pixel_aupro"] == pytest.approx(expected)
    assert metrics["pixel_aupro"] == pytest.approx(slow_aupro(mask[None], amap[None]))


def test_aupro_counts_diagonal_neighbours_as_one_region():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # touching corners: one 8-connected region
    amap = np.zeros((5, 5))
    amap[1, 1] = 1.0  # half of the region found at the top threshold
    accumulator = PixelAccumulator()
    accumulator.update(amap, mask)
    assert accumulator.regions == 1
    fp_rate, pro = accumulator.pro_curve()
    assert pro[1] == pytest.approx(0.5) and fp_rate[1] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_slow_implementation(seed):
    masks, maps = random_pixels(seed)
    maps = np.round(maps, 2)  # a few hundred distinct thresholds keep the slow version quick
    assert pixel_metrics(masks, maps)["pixel_aupro"] == pytest.approx(
        slow_aupro(masks, maps), abs=1e-9
    )


def test_no_anomalous_pixels_gives_no_pixel_metrics():
    metrics = pixel_metrics(np.zeros((2, 4, 4)), np.random.default_rng(0).random((2, 4, 4)))
    assert set(metrics.values()) == {None}


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_area_up_to_interpolates_at_the_limit():
    x, y = np.array([0.0, 0.2, 0.4, 1.0]), np.array([0.0, 1.0, 1.0, 1.0])
    assert area_up_to(x, y, 0.3) == pytest.approx(0.1 + 0.1)
    assert area_up_to(x, y, 0.2) == pytest.approx(0.1)


def test_mean_skips_undefined_values():
    per_category = {
        "a": {"image_auroc": 0.5, "pixel_auroc": None},
        "b": {"image_auroc": 1.0, "pixel_auroc": None},
    }
    mean = mean_metrics(per_category)
    assert mean["image_auroc"] == pytest.approx(0.75)
    assert mean["pixel_auroc"] is None
