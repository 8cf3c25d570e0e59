"""Dataset layouts, masks and the evaluation/training datasets, on tiny generated benchmarks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dataset_helpers import MASK_SIZE, WRITERS, make_items, write_folder, write_mvtec
from PIL import Image

from adaclip.data import (
    DatasetError,
    EvalSet,
    TrainSet,
    class_name,
    detect_layout,
    load_dataset,
    load_mask,
)
from adaclip.images import load_image, preprocess


def summary(samples):
    """Layout-independent view: (category, label, has mask, mask pixels at the mask size)."""
    w, h = MASK_SIZE
    return sorted(
        (s.category, s.label, s.mask is not None, int(load_mask(s.mask, (h, w)).sum()))
        for s in samples
    )


@pytest.fixture(scope="module")
def items():
    return make_items()


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_every_layout_reads_the_same_benchmark(tmp_path, items, layout):
    root = WRITERS[layout](tmp_path / layout, items)
    assert detect_layout(root) == layout
    samples = load_dataset(root)
    assert summary(samples) == summary(load_dataset(WRITERS["mvtec"](tmp_path / "ref", items)))
    assert len(samples) == len(items)
    assert {s.category for s in samples} == {"widget", "juice_bottle"}
    assert all(s.image.is_file() for s in samples)
    expected = sorted(
        (i.category, i.label, int((i.mask > 0).sum()) if i.label else 0) for i in items
    )
    assert sorted((c, lbl, n) for c, lbl, _, n in summary(samples)) == expected


def test_forced_layout_and_category_filter(tmp_path, items):
    root = write_mvtec(tmp_path, items)
    samples = load_dataset(root, categories=["widget"], layout="mvtec")
    assert {s.category for s in samples} == {"widget"}
    assert {s.defect for s in samples} == {"good", "scratch"}
    with pytest.raises(DatasetError, match="no categories cable; it has: juice_bottle, widget"):
        load_dataset(root, categories=["cable"])
    with pytest.raises(DatasetError, match="layout must be one of"):
        load_dataset(root, layout="coco")


def test_single_plain_folder_is_one_category(tmp_path, items):
    write_folder(tmp_path, items)
    samples = load_dataset(tmp_path / "widget")
    assert {s.category for s in samples} == {"widget"}
    assert sum(s.mask is not None for s in samples) == 2


def test_maskless_defects_are_kept_without_truth(tmp_path):
    root = write_mvtec(tmp_path, make_items(masks=False))
    anomalous = [s for s in load_dataset(root) if s.label]
    assert anomalous and all(s.mask is None and not s.has_truth for s in anomalous)


def test_missing_and_unrecognised_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="matches no dataset layout"):
        load_dataset(tmp_path / "empty")


def test_bad_visa_label_and_bad_meta(tmp_path, items):
    root = WRITERS["visa"](tmp_path / "visa", items)
    table = root / "split_csv" / "1cls.csv"
    table.write_text(table.read_text().replace("anomaly", "broken", 1))
    with pytest.raises(DatasetError, match="label must be normal or anomaly; got 'broken'"):
        load_dataset(root)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "meta.json").write_text(json.dumps({"train": {}}))
    with pytest.raises(DatasetError, match="not a usable meta.json"):
        load_dataset(meta)


def test_class_names_read_naturally():
    assert class_name("juice_bottle") == "juice bottle"
    assert class_name("pipe__fryum") == "pipe fryum"
    assert class_name("metal_nut") == "metal nut"


@pytest.mark.parametrize("peak", [1, 255])
def test_masks_are_binarised_and_resized(tmp_path, peak):
    mask = np.zeros((10, 20), dtype=np.uint8)
    mask[2:6, 4:12] = peak
    mask[0, 0] = peak // 3  # a faint pixel stays normal
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    same = load_mask(path, (10, 20))
    assert same.dtype == np.uint8 and set(np.unique(same)) == {0, 1}
    assert same.sum() == 32 and same[0, 0] == 0
    doubled = load_mask(path, (20, 40))
    assert doubled.shape == (20, 40) and doubled.sum() == 4 * 32
    assert load_mask(None, (3, 4)).shape == (3, 4)


def test_colour_mask_is_read_as_grey(tmp_path):
    mask = np.zeros((8, 8, 3), dtype=np.uint8)
    mask[:4, :4] = (255, 0, 0)
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png", (8, 8)).sum() == 16


def test_unreadable_mask_says_which(tmp_path):
    path = tmp_path / "broken_mask.png"
    path.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken_mask.png cannot be read"):
        load_mask(path, (4, 4))


def test_eval_set_items(tmp_path, items):
    samples = load_dataset(write_mvtec(tmp_path, items))
    dataset = EvalSet(samples, image_size=64, pixel_size=32)
    item = dataset[next(i for i, s in enumerate(samples) if s.label)]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (32, 32)
    assert item["mask"].sum() > 0
    normal = dataset[0]
    assert normal["mask"].sum() == 0
    samples[0].image.write_bytes(b"")
    failed = EvalSet(samples, 64, 32)[0]
    assert failed["image"] is None and "empty" in failed["error"]


def test_train_set_without_mosaic_matches_inference_preprocessing(tmp_path, items):
    samples = load_dataset(write_mvtec(tmp_path, items))
    dataset = TrainSet(samples, image_size=64, mosaic_prob=0.0)
    index = next(i for i, s in enumerate(samples) if s.label)
    image, mask, label, has_mask, name = dataset[index]
    expected = preprocess(load_image(samples[index].image), 64)
    assert torch.equal(image, expected)
    assert mask.shape == (64, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert label == 1.0 and bool(has_mask) and name == samples[index].class_name


def test_mosaic_tiles_four_images_of_one_category(tmp_path, items):
    samples = load_dataset(write_mvtec(tmp_path, items))
    dataset = TrainSet(samples, image_size=64, mosaic_prob=1.0, seed=3)
    image, mask, label, _, name = dataset[0]  # a normal image, mixed with three peers
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
    assert name == samples[0].class_name
    assert (label == 1.0) == bool(mask.sum() > 0)
    again = dataset[0]
    assert torch.equal(again[0], image)  # same seed, epoch and index: same mosaic
    assert not torch.equal(image, preprocess(load_image(samples[0].image), 64))
    dataset.set_epoch(1)
    other = [dataset[i][0] for i in range(len(dataset))]
    dataset.set_epoch(0)
    assert any(not torch.equal(a, dataset[i][0]) for i, a in enumerate(other))


def test_train_set_flags_unknown_masks(tmp_path):
    samples = load_dataset(write_mvtec(tmp_path, make_items(masks=False)))
    index = next(i for i, s in enumerate(samples) if s.label)
    _, mask, label, has_mask, _ = TrainSet(samples, 32, mosaic_prob=0.0)[index]
    assert label == 1.0 and not bool(has_mask) and mask.sum() == 0
    with pytest.raises(ValueError, match="mosaic_prob must lie in"):
        TrainSet(samples, 32, mosaic_prob=1.5)


def test_single_mvtec_category_is_one_category_without_its_masks(tmp_path, items):
    write_mvtec(tmp_path, items)
    category = tmp_path / "widget"
    assert detect_layout(category) == "mvtec"
    for root in (category, category / "test"):
        samples = load_dataset(root, categories=["widget"])
        assert {s.category for s in samples} == {"widget"}
        assert len(samples) == sum(i.category == "widget" for i in items)
        assert all(s.image.parent.parent.name == "test" for s in samples)
        assert sum(s.mask is not None for s in samples) == 2


def test_mask_folders_of_plain_folders_are_never_images(tmp_path, items):
    root = write_folder(tmp_path, items)
    for category in ("widget", "juice_bottle"):
        (root / category / "masks").rename(root / category / "Masks")
    nested = root / "widget" / "Masks" / "scratch"
    nested.mkdir()
    for mask in (root / "widget" / "Masks").glob("*.png"):
        mask.rename(nested / f"{mask.stem}_mask.png")
    samples = load_dataset(root)
    assert {s.defect for s in samples} == {"good", "scratch"}
    assert len(samples) == len(items)
    assert sum(s.mask is not None for s in samples) == 4


def test_forced_layout_must_match_the_folder(tmp_path, items):
    root = write_mvtec(tmp_path / "mvtec", items)
    for layout in ("visa", "meta", "folder"):
        with pytest.raises(DatasetError, match=f"not in the {layout} layout.*looks like the mvtec"):
            load_dataset(root, layout=layout)
    plain = write_folder(tmp_path / "plain", items)
    with pytest.raises(DatasetError, match="--layout folder"):
        load_dataset(plain, layout="mvtec")


def test_folder_without_images_says_what_was_expected(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"matches no dataset layout\. Expected one of meta"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not in the mvtec layout.*matches no layout"):
        load_dataset(tmp_path, layout="mvtec")


def test_unknown_categories_list_the_available_ones(tmp_path, items):
    root = write_mvtec(tmp_path, items)
    with pytest.raises(DatasetError, match="no categories Widget, cable; it has: juice_bottle, w"):
        load_dataset(root, categories=["widget", "Widget", "cable"])


def test_bad_meta_values_and_short_visa_rows_are_dataset_errors(tmp_path, items):
    meta = tmp_path / "meta"
    meta.mkdir()
    entry = {"img_path": "a.png", "mask_path": "", "anomaly": "yes"}
    (meta / "meta.json").write_text(json.dumps({"test": {"widget": [entry]}}))
    with pytest.raises(DatasetError, match=r"not a usable meta.json .*\{'test'"):
        load_dataset(meta)
    visa = WRITERS["visa"](tmp_path / "visa", items)
    table = visa / "split_csv" / "1cls.csv"
    table.write_text(table.read_text() + "widget,test\n")
    with pytest.raises(DatasetError, match="line 11: label must be normal or anomaly; got ''"):
        load_dataset(visa)


def test_eval_set_names_the_file_that_failed(tmp_path, items):
    samples = load_dataset(write_mvtec(tmp_path, items))
    index = next(i for i, s in enumerate(samples) if s.mask is not None)
    samples[index].mask.write_bytes(b"not a mask")
    item = EvalSet(samples, 64, 32)[index]
    assert item["image"] is None and item["file"] == samples[index].mask
    assert "cannot be read" in item["error"]
    assert EvalSet(samples, 64, 32)[0]["file"] is None


def test_an_empty_mask_file_says_so(tmp_path):
    mask = tmp_path / "000_mask.png"
    mask.write_bytes(b"")
    with pytest.raises(DatasetError, match="000_mask.png is empty"):
        load_mask(mask, (8, 8))
