"""Detector behaviour: batching, determinism, class names, concurrency, failures."""

from __future__ import annotations

import gc
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from adaclip import ClassNameError, Failure, ImageError
from adaclip.prompts import DEFAULT_CLASS_NAME


@pytest.fixture(scope="module")
def images(golden_dir, golden):
    return [str(golden_dir / c["image"]) for c in golden["cases"]]


def test_batch_equals_one_by_one_with_mixed_names(golden_detector, images):
    names = ["screw", "", "wood grain", "  cable  "]
    together = golden_detector.predict_batch(images, names, batch_size=3, raw_maps=True)
    for image, name, batched in zip(images, names, together):
        single = golden_detector.predict(image, name, raw_map=True)
        assert abs(single.score - batched.score) < 1e-5
        np.testing.assert_allclose(single.raw_map, batched.raw_map, atol=1e-5)


def test_same_image_always_gives_same_score(golden_detector, images):
    scores = {golden_detector.predict(images[2], "gravel").score for _ in range(3)}
    assert len(scores) == 1


def test_class_name_default_and_trimming(golden_detector, images):
    empty = golden_detector.predict(images[0], "")
    none = golden_detector.predict(images[0], None)
    generic = golden_detector.predict(images[0], DEFAULT_CLASS_NAME)
    assert empty.class_name == none.class_name == DEFAULT_CLASS_NAME
    assert empty.score == none.score == generic.score
    padded = golden_detector.predict(images[0], "  bottle \n")
    assert padded.class_name == "bottle"
    assert padded.score == golden_detector.predict(images[0], "bottle").score


def test_dash_reads_as_space(golden_detector, images):
    dashed = golden_detector.predict(images[1], "magnetic-tile")
    spaced = golden_detector.predict(images[1], "magnetic tile")
    assert dashed.score == pytest.approx(spaced.score, abs=1e-6)


def test_too_long_class_name_is_refused_with_the_limit(golden_detector, images):
    with pytest.raises(ClassNameError, match="77"):
        golden_detector.predict(images[0], " ".join(["x"] * 90))
    with pytest.raises(ClassNameError, match="at most 200 characters; got 201"):
        golden_detector.predict(images[0], "x" * 201)


def test_bad_item_fails_alone(golden_detector, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not really a png")
    results = golden_detector.predict_batch([images[0], str(broken), images[2]], "object")
    assert results[0].ok and results[2].ok
    assert isinstance(results[1], Failure)
    assert results[1].index == 1
    assert "broken.png" in results[1].message
    alone = golden_detector.predict(images[2], "object")
    assert results[2].score == pytest.approx(alone.score, abs=1e-6)


def test_single_predict_raises_project_error(golden_detector, tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        golden_detector.predict(tmp_path / "missing.png")


def test_class_name_count_must_match(golden_detector, images):
    with pytest.raises(ValueError, match="one per image; got 2 names for 4 images"):
        golden_detector.predict_batch(images, ["a", "b"])


def test_concurrent_requests_do_not_mix(golden_detector, images):
    expected = [golden_detector.predict(i, n).score for i, n in zip(images, ["a", "b", "c", "d"])]
    jobs = [(i % 4, images[i % 4], "abcd"[i % 4]) for i in range(12)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        scores = list(pool.map(lambda job: golden_detector.predict(job[1], job[2]).score, jobs))
    for (k, _, _), score in zip(jobs, scores):
        assert score == pytest.approx(expected[k], abs=1e-5)


def test_overlay_and_mask(golden_detector, images):
    result = golden_detector.predict(images[3], "brain")
    picture = result.overlay()
    assert picture.shape == result.image.shape and picture.dtype == np.uint8
    mask = result.mask(0.5)
    assert mask.dtype == bool and mask.shape == result.anomaly_map.shape


def test_overlapped_fusion_gives_the_same_results(golden_detector, images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    inputs = [images[0], images[1], str(broken), images[2], images[3]]
    plain = golden_detector.predict_batch(inputs, "part", batch_size=2, raw_maps=True)
    seen = []
    golden_detector.overlap_fusion = True
    try:
        overlapped = golden_detector.predict_batch(
            inputs, "part", batch_size=2, raw_maps=True, progress=lambda d, t: seen.append((d, t))
        )
    finally:
        golden_detector.overlap_fusion = False
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert not overlapped[2].ok and "broken.jpg" in overlapped[2].message
    for a, b in zip(plain, overlapped):
        if a.ok:
            assert a.score == b.score
            np.testing.assert_array_equal(a.raw_map, b.raw_map)


def test_non_string_class_names_are_refused(golden_detector, images):
    with pytest.raises(ClassNameError, match="must be a string; got int 123"):
        golden_detector.predict(images[0], 123)


def test_a_single_path_is_not_a_batch(golden_detector, images):
    with pytest.raises(TypeError, match="takes a list of images"):
        golden_detector.predict_batch(images[0], "screw")


def test_bad_batch_size_and_device(golden_detector, images):
    from adaclip import AdaCLIPError
    from adaclip.detector import resolve_device

    with pytest.raises(AdaCLIPError, match="batch_size must be at least 1; got 0"):
        golden_detector.predict_batch(images, batch_size=0)
    with pytest.raises(AdaCLIPError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_prediction_repr_is_short(golden_detector, images):
    text = repr(golden_detector.predict(images[3], "brain"))
    assert text.startswith("Prediction(score=") and "brain" in text and len(text) < 200


@pytest.mark.parametrize("overlap", [False, True])
def test_iter_predict_hands_results_over_and_keeps_none(golden_detector, images, overlap):
    expected = [r.score for r in golden_detector.predict_batch(images, "part", batch_size=2)]
    golden_detector.overlap_fusion = overlap
    try:
        alive = []
        for result in golden_detector.iter_predict((i for i in images), "part", batch_size=2):
            alive.append(weakref.ref(result))
            assert result.score == expected[len(alive) - 1]
            del result
            gc.collect()
            assert all(ref() is None for ref in alive)  # the detector holds no earlier result
    finally:
        golden_detector.overlap_fusion = False
    assert len(alive) == len(images)


def test_devices_torch_knows_but_we_cannot_use():
    from adaclip import AdaCLIPError
    from adaclip.detector import resolve_device

    for device in ("meta", "mps", "xla"):
        with pytest.raises(AdaCLIPError, match="is not supported; use auto, cpu, cuda"):
            resolve_device(device)


def test_overlay_weight_must_lie_in_the_unit_range(golden_detector, images):
    prediction = golden_detector.predict(images[0])
    for alpha in (2.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha must lie in"):
            prediction.overlay(alpha)
