"""Tiny synthetic benchmarks written in each supported layout, for data/evaluate/train tests."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = (48, 40)  # (W, H) of the images
MASK_SIZE = (24, 20)  # (W, H) of the masks: half the image size on purpose


@dataclass(frozen=True)
class Item:
    """One synthetic test image: a noisy texture, with a bright square when defective."""

    category: str
    name: str
    label: int
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (h, w) uint8 0/255 at MASK_SIZE, None if normal or maskless

    @property
    def defect(self) -> str:
        return "scratch" if self.label else "good"


def make_items(
    categories: tuple[str, ...] = ("widget", "juice_bottle"),
    normal: int = 2,
    defective: int = 2,
    seed: int = 0,
    masks: bool = True,
) -> list[Item]:
    """Normal and defective items per category, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    W, H = IMAGE_SIZE
    w, h = MASK_SIZE
    items = []
    for category in categories:
        for i in range(normal + defective):
            label = int(i >= normal)
            image = rng.integers(60, 120, size=(H, W, 3), dtype=np.uint8)
            mask = None
            if label:
                top, left = rng.integers(2, h - 8), rng.integers(2, w - 8)
                small = np.zeros((h, w), np.uint8)
                small[top : top + 6, left : left + 6] = 255
                image[2 * top : 2 * top + 12, 2 * left : 2 * left + 12] = 250
                mask = small if masks else None
            items.append(Item(category, f"{i:03d}", label, image, mask))
    return items


def write_mvtec(root: Path, items: list[Item]) -> Path:
    """``<cat>/test/<type>/<name>.png`` and ``<cat>/ground_truth/<type>/<name>_mask.png``."""
    for item in items:
        folder = root / item.category
        _save(folder / "test" / item.defect / f"{item.name}.png", item.image)
        if item.mask is not None:
            _save(folder / "ground_truth" / item.defect / f"{item.name}_mask.png", item.mask)
        (folder / "train" / "good").mkdir(parents=True, exist_ok=True)
    return root


def write_visa(root: Path, items: list[Item]) -> Path:
    """VisA: ``split_csv/1cls.csv``, ``<cat>/Data/{Images,Masks}/{Normal,Anomaly}``; masks 0/1."""
    rows = [
        {"object": "ignored", "split": "train", "label": "normal", "image": "x.png", "mask": ""}
    ]
    for item in items:
        kind = "Anomaly" if item.label else "Normal"
        image = f"{item.category}/Data/Images/{kind}/{item.name}.JPG"
        _save(root / image, item.image, quality=98)
        mask = ""
        if item.mask is not None:
            mask = f"{item.category}/Data/Masks/{kind}/{item.name}.png"
            _save(root / mask, (item.mask > 0).astype(np.uint8))
        label = "anomaly" if item.label else "normal"
        rows.append(
            {"object": item.category, "split": "test", "label": label, "image": image, "mask": mask}
        )
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["object", "split", "label", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_meta(root: Path, items: list[Item]) -> Path:
    """The reference ``meta.json`` layout, with anti-aliased (blurred) masks."""
    test: dict[str, list[dict]] = {}
    for item in items:
        image = f"{item.category}/test/{item.defect}/{item.name}.png"
        _save(root / image, item.image)
        mask = ""
        if item.mask is not None:
            mask = f"{item.category}/ground_truth/{item.defect}/{item.name}_mask.png"
            _save(root / mask, _antialiased(item.mask))
        test.setdefault(item.category, []).append(
            {
                "img_path": image,
                "mask_path": mask,
                "cls_name": item.category,
                "specie_name": item.defect,
                "anomaly": item.label,
            }
        )
    (root / "meta.json").write_text(json.dumps({"train": {}, "test": test}))
    return root


def write_folder(root: Path, items: list[Item]) -> Path:
    """Plain folders: ``<cat>/good``, ``<cat>/<type>``, masks in ``<cat>/masks/<name>.png``."""
    for item in items:
        folder = root / item.category
        _save(folder / item.defect / f"{item.name}.png", item.image)
        if item.mask is not None:
            _save(folder / "masks" / f"{item.name}.png", item.mask)
    return root


WRITERS = {"mvtec": write_mvtec, "visa": write_visa, "meta": write_meta, "folder": write_folder}


def _antialiased(mask: np.ndarray) -> np.ndarray:
    """Soft edges: a ring of grey (below half the peak) around each region."""
    padded = np.pad(mask, 1)
    H, W = mask.shape
    grown = np.max([padded[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3)], axis=0)
    return np.where(mask > 0, 255, np.where(grown > 0, 90, 0)).astype(np.uint8)


def _save(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
