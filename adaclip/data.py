"""Benchmark datasets on disk: MVTec AD and VisA layouts, the reference meta.json, plain folders.

Every layout is read into a flat list of :class:`Sample`; the torch datasets below turn
samples into network inputs and masks for evaluation and training.

Layouts (``detect_layout`` picks one; ``layout=`` forces it):

- ``mvtec``: ``ROOT/<category>/test/<type>/<image>`` with masks at
  ``ROOT/<category>/ground_truth/<type>/<stem>_mask.png``; type ``good`` is normal. A single
  category folder (``ROOT/test/...``, or its ``test`` folder itself) is one category named
  after the folder.
- ``visa``: ``ROOT/split_csv/1cls.csv`` with the columns ``object,split,label,image,mask``
  (label ``normal`` or ``anomaly``, paths relative to ``ROOT``); the ``test`` rows are used.
- ``meta``: ``ROOT/meta.json`` holding ``{"test": {category: [{"img_path", "mask_path",
  "cls_name", "specie_name", "anomaly"}, ...]}}`` with paths relative to ``ROOT``. An empty
  ``mask_path`` means none; ``anomaly`` is 0 or 1.
- ``folder``: ``ROOT/good/*`` normal and every other subfolder defective, masks optional in
  a ``ground_truth``, ``masks`` or ``mask`` subfolder as ``[<type>/]<stem>[_mask].<ext>``
  (mask folders are never read as images). A ``ROOT`` whose subfolders are such folders
  holds one category per subfolder.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from adaclip import prompts
from adaclip.errors import AdaCLIPError
from adaclip.images import IMAGE_SUFFIXES, MAX_PIXELS, load_image, preprocess

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "mvtec", "visa", "meta", "folder")
NORMAL_TYPE = "good"
MASK_FOLDERS = ("ground_truth", "masks", "mask")
LAYOUT_MARKS = {
    "meta": "ROOT/meta.json",
    "visa": "ROOT/split_csv/1cls.csv",
    "mvtec": "ROOT/<category>/test/<type>/<image> or ROOT/test/<type>/<image> (MVTec AD)",
    "folder": "ROOT/[<category>/]<type>/<image> with good/ normal (plain folders)",
}
"""What each layout needs, for messages."""


class DatasetError(AdaCLIPError):
    """A dataset folder does not match the layout it should have."""


@dataclass(frozen=True)
class Sample:
    """One test image of a benchmark.

    Attributes:
        image: Path of the image file.
        category: Category (object) name as the dataset spells it, e.g. ``juice_bottle``.
        label: 0 normal, 1 anomalous.
        mask: Path of the ground-truth mask, ``None`` when there is none. Normal images
            need none (their mask is empty).
        defect: Defect type (``good`` for normal images).
    """

    image: Path
    category: str
    label: int
    mask: Path | None = None
    defect: str = NORMAL_TYPE

    @property
    def class_name(self) -> str:
        """The name the text prompts use: underscores read as spaces."""
        return class_name(self.category)

    @property
    def has_truth(self) -> bool:
        """Whether the pixel ground truth is known (normal, or anomalous with a mask)."""
        return self.label == 0 or self.mask is not None


def class_name(category: str) -> str:
    """``juice_bottle`` -> ``juice bottle`` (``-`` is already read as a space by the prompts)."""
    return " ".join(category.replace("_", " ").split())


def load_dataset(
    root: str | Path, categories: Sequence[str] | None = None, layout: str = "auto"
) -> list[Sample]:
    """Reads the test samples of a benchmark folder.

    Args:
        root: The dataset folder.
        categories: Keep only these categories (all when ``None`` or empty).
        layout: One of :data:`LAYOUTS`; ``auto`` detects it.

    Raises:
        DatasetError: The folder is missing, matches no layout (or not the forced one),
            holds no images or lacks a requested category.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist or is not a folder; give the folder that "
            "holds the benchmark (for MVTec AD the one with the category folders)."
        )
    if layout not in LAYOUTS:
        raise DatasetError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}.")
    root = _category_of_test_folder(root)
    chosen = detect_layout(root) if layout == "auto" else _check_layout(root, layout)
    samples = READERS[chosen](root)
    if not samples:
        raise DatasetError(
            f"{root} holds no test images in the {chosen} layout, which expects "
            f"{LAYOUT_MARKS[chosen]}; image files must end in {', '.join(IMAGE_SUFFIXES)}."
        )
    defective = [s for s in samples if s.label]
    logger.info(
        "%s: %s layout, %d images (%d defective, %d of them with masks)",
        root, chosen, len(samples), len(defective), sum(s.mask is not None for s in defective),
    )  # fmt: skip
    return select_categories(samples, categories, root)


def detect_layout(root: Path) -> str:
    """Guesses the layout of ``root`` from the files that mark each one.

    Raises:
        DatasetError: Nothing matches.
    """
    for layout in LAYOUT_TESTS:  # the most specific marks first
        if LAYOUT_TESTS[layout](root):
            return layout
    marks = "; ".join(f"{name}: {mark}" for name, mark in LAYOUT_MARKS.items())
    raise DatasetError(f"{root} matches no dataset layout. Expected one of {marks}.")


def _check_layout(root: Path, layout: str) -> str:
    """Returns ``layout`` if ``root`` looks like it, else says what ``root`` looks like."""
    if LAYOUT_TESTS[layout](root):
        return layout
    try:
        found = detect_layout(root)
        hint = f"it looks like the {found} layout; use that (--layout {found}) or auto."
    except DatasetError:
        hint = "it matches no layout; check the folder."
    raise DatasetError(
        f"{root} is not in the {layout} layout, which expects {LAYOUT_MARKS[layout]}; {hint}"
    )


def _category_of_test_folder(root: Path) -> Path:
    """An MVTec AD category's ``test`` folder given as the root stands for its category."""
    if root.name == "test" and (root.parent / "ground_truth").is_dir():
        logger.info("%s is the test folder of category %s; reading that", root, root.parent.name)
        return root.parent
    return root


def _is_mvtec(root: Path) -> bool:
    """``<category>/test/`` folders, or ``root`` itself a category with a ``test/`` folder."""
    return _is_mvtec_category(root) or any(_is_mvtec_category(d) for d in _subfolders(root))


def _is_mvtec_category(folder: Path) -> bool:
    """A ``test/`` folder whose subfolders hold images."""
    test = folder / "test"
    return test.is_dir() and _images_in_subfolders(test)


def _is_folder(root: Path) -> bool:
    """Image subfolders in ``root`` or in its (non-mask) subfolders."""
    return _images_in_subfolders(root) or any(
        _images_in_subfolders(d) for d in _subfolders(root) if not _is_mask_folder(d)
    )


def select_categories(
    samples: list[Sample], categories: Sequence[str] | None, root: Path
) -> list[Sample]:
    """Keeps the requested categories, refusing names the dataset does not have."""
    if not categories:
        return samples
    found = categories_of(sorted(samples, key=lambda s: s.category))
    unknown = [c for c in dict.fromkeys(categories) if c not in found]
    if unknown:
        raise DatasetError(
            f"{root} has no categories {', '.join(unknown)}; it has: {', '.join(found)}. "
            "Give some of those, or leave out the category filter to evaluate all."
        )
    wanted = set(categories)
    return [s for s in samples if s.category in wanted]


def read_mvtec(root: Path) -> list[Sample]:
    """The MVTec AD layout: ``<category>/test/<type>/<image>`` plus ``ground_truth``."""
    folders = [root] if _is_mvtec_category(root) else _subfolders(root)
    samples = []
    for category_dir in folders:
        test = category_dir / "test"
        if not test.is_dir():
            continue
        truth = category_dir / "ground_truth"
        for type_dir in _subfolders(test):
            for image in _images(type_dir):
                normal = type_dir.name == NORMAL_TYPE
                mask = None if normal else _find_mask(truth, type_dir.name, image.stem)
                samples.append(
                    Sample(image, category_dir.name, int(not normal), mask, type_dir.name)
                )
    return samples


def read_visa(root: Path) -> list[Sample]:
    """The VisA layout: the test rows of ``split_csv/1cls.csv``."""
    # TODO(#5): the 2cls splits are not read; 1cls is the zero-shot protocol's split.
    table = root / "split_csv" / "1cls.csv"
    try:
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{table} cannot be read as a CSV table ({err}).") from err
    if rows and not {"object", "split", "label", "image"} <= set(rows[0]):
        missing = sorted({"object", "split", "label", "image"} - set(rows[0]))
        raise DatasetError(f"{table} lacks the columns {missing}.")
    return [
        _visa_sample(root, row, table, line)
        for line, row in enumerate(rows, start=2)
        if (row["split"] or "").strip() == "test"
    ]


def _visa_sample(root: Path, row: dict, table: Path, line: int) -> Sample:
    """One test row of ``1cls.csv``; a mask only counts for an anomalous row."""
    label = _visa_label(row["label"] or "", table, line)
    mask = (row.get("mask") or "").strip()
    return Sample(
        image=root / (row["image"] or "").strip(),
        category=(row["object"] or "").strip(),
        label=label,
        mask=root / mask if mask and label else None,
        defect="bad" if label else NORMAL_TYPE,
    )


def _visa_label(value: str, table: Path, line: int) -> int:
    """``normal`` -> 0, ``anomaly`` -> 1."""
    labels = {"normal": 0, "anomaly": 1}
    if value.strip() not in labels:
        raise DatasetError(f"{table} line {line}: label must be normal or anomaly; got {value!r}.")
    return labels[value.strip()]


def read_meta(root: Path) -> list[Sample]:
    """The reference ``meta.json`` layout (its ``test`` part)."""
    path = root / "meta.json"
    try:
        meta = json.loads(path.read_text())
        entries = meta["test"]
        samples = [
            _meta_sample(root, category, item)
            for category, items in entries.items()
            for item in items
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DatasetError(
            f"{path} is not a usable meta.json ({err!r}); it needs {{'test': {{category: "
            "[{'img_path', 'mask_path', 'anomaly', ...}]}} with paths relative to the folder."
        ) from err
    return samples


def _meta_sample(root: Path, category: str, item: dict) -> Sample:
    """One ``meta.json`` entry; ``cls_name`` wins over the key it is listed under."""
    label = int(item["anomaly"])
    mask = (item.get("mask_path") or "").strip()
    return Sample(
        image=root / item["img_path"],
        category=item.get("cls_name") or category,
        label=label,
        mask=root / mask if mask and label else None,
        defect=item.get("specie_name") or ("bad" if label else NORMAL_TYPE),
    )


def read_folders(root: Path) -> list[Sample]:
    """Plain folders: one category in ``root``, or one per (non-mask) subfolder of it."""
    if _images_in_subfolders(root):
        return read_folder(root, root.name)
    return [s for d in _subfolders(root) if not _is_mask_folder(d) for s in read_folder(d, d.name)]


def read_folder(folder: Path, category: str) -> list[Sample]:
    """One category: ``good/`` normal, every other image subfolder defective."""
    truth = next((d for d in _subfolders(folder) if _is_mask_folder(d)), None)
    samples = []
    for type_dir in _subfolders(folder):
        if _is_mask_folder(type_dir):
            continue
        normal = type_dir.name == NORMAL_TYPE
        for image in _images(type_dir):
            mask = None if normal or truth is None else _find_mask(truth, type_dir.name, image.stem)
            samples.append(Sample(image, category, int(not normal), mask, type_dir.name))
    return samples


def _images_in_subfolders(folder: Path) -> bool:
    """Whether some non-mask subfolder of ``folder`` holds images directly."""
    return any(_images(d) for d in _subfolders(folder) if not _is_mask_folder(d))


def _is_mask_folder(folder: Path) -> bool:
    """``ground_truth``, ``masks`` or ``mask``, in any letter case."""
    return folder.name.lower() in MASK_FOLDERS


def _find_mask(truth: Path | None, defect: str, stem: str) -> Path | None:
    """The mask of image ``stem``: ``[<type>/]<stem>[_mask].<ext>`` under ``truth``."""
    # TODO(#5): MVTec LOCO keeps a folder of several masks per image; they are not merged.
    if truth is None:
        return None
    for folder in (truth / defect, truth):
        for name in (f"{stem}_mask", stem):
            for suffix in IMAGE_SUFFIXES:
                candidate = folder / (name + suffix)
                if candidate.is_file():
                    return candidate
    return None


def _subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_mask(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """Reads a mask, binarises it and resizes it (nearest neighbour).

    A pixel is anomalous when it exceeds half of the mask's largest value, so 0/1, 0/255
    and anti-aliased masks all work; colour masks are read as greyscale first.

    Args:
        path: Mask file, or ``None`` for an empty mask.
        size: ``(H, W)`` to resize to.

    Returns:
        ``(H, W)`` uint8, 1 anomalous.
    """
    H, W = size
    if path is None:
        return np.zeros((H, W), dtype=np.uint8)
    try:
        if path.stat().st_size == 0:
            raise DatasetError(f"mask {path} is empty (0 bytes); fix or remove it.")
        with Image.open(path) as image:
            array = np.asarray(
                image.convert("L") if image.mode not in ("L", "I", "I;16") else image
            )
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"mask {path} cannot be read ({err}); fix or remove it.") from err
    top = float(array.max())
    binary = (array > top / 2).astype(np.uint8) if top > 0 else np.zeros(array.shape, np.uint8)
    if binary.shape != (H, W):
        binary = cv2.resize(binary, (W, H), interpolation=cv2.INTER_NEAREST)
    return binary


def categories_of(samples: Iterable[Sample]) -> list[str]:
    """The distinct categories, in order of first appearance."""
    return list(dict.fromkeys(s.category for s in samples))


class EvalSet(torch.utils.data.Dataset):
    """Test samples as network inputs plus masks at the pixel-metric resolution.

    An item is a dict: ``index``, ``image`` ``(3, S, S)`` float32 (``None`` if a file
    failed), ``mask`` ``(P, P)`` uint8 in {0, 1} or ``None`` when unknown, ``class_name``
    (normalised and checked like :meth:`Detector.predict`'s), ``error`` (message or ``None``)
    and ``file`` (the image or mask file that failed, or ``None``). Use
    :func:`collate_eval` as the loader's ``collate_fn``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        pixel_size: int,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.pixel_size = pixel_size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        P = self.pixel_size
        failed = sample.image
        try:
            class_name = prompts.normalize_class_name(sample.class_name)
            prompts.tokenize_class(class_name)
            picture = load_image(sample.image, self.max_pixels, str(sample.image))
            failed = sample.mask
            mask = load_mask(sample.mask, (P, P)) if sample.has_truth else None
        except (AdaCLIPError, OSError) as err:
            error = str(err) if isinstance(err, AdaCLIPError) else f"{failed}: {err}"
            return {"index": index, "image": None, "mask": None, "error": error, "file": failed}
        image = preprocess(picture, self.image_size)
        return {
            "index": index,
            "image": image,
            "mask": mask,
            "class_name": class_name,
            "error": None,
            "file": None,
        }


def collate_eval(items: list[dict]) -> list[dict]:
    """Keeps evaluation items as a list (some may be failures)."""
    return items


class TrainSet(torch.utils.data.Dataset):
    """Training samples with the mosaic augmentation, deterministic per (seed, epoch, index).

    With probability ``mosaic_prob`` an item is a 2x2 mosaic of itself and three other
    images of the same category (and dataset); its mask is the mosaic of their masks and
    it is anomalous if any tile is. An item is ``(image (3, S, S) float32, mask (S, S)
    float32 in {0, 1}, label float32, has_mask bool, class name)``; ``has_mask`` is false
    when an anomalous tile has no mask, and the pixel losses then skip that item. An item
    with an unreadable image or mask is ``None`` (logged with the file at fault), and
    :func:`collate_train` leaves it out of its batch.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        mosaic_prob: float = 0.5,
        seed: int = 0,
        groups: Sequence[str] | None = None,
    ) -> None:
        if not 0.0 <= mosaic_prob <= 1.0:
            raise ValueError(f"mosaic_prob must lie in [0, 1]; got {mosaic_prob}.")
        self.samples = list(samples)
        self.image_size = image_size
        self.mosaic_prob = mosaic_prob
        self.seed = seed
        self.epoch = 0
        keys = list(groups) if groups is not None else [s.category for s in self.samples]
        self.peers: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            self.peers.setdefault(key, []).append(i)
        self.keys = keys

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch whose random mosaics the next items use."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        tiles = [index]
        if rng.random() < self.mosaic_prob:
            tiles += [int(i) for i in rng.choice(self.peers[self.keys[index]], size=3)]
        try:
            images, masks, known = zip(*(self._load(i) for i in tiles))
        except AdaCLIPError as err:
            logger.warning("skipping training item %d: %s", index, err)
            return None
        S = self.image_size
        image = preprocess(_mosaic(images, Image.Resampling.BICUBIC), S)
        mask = np.asarray(_mosaic(masks, Image.Resampling.NEAREST))  # (S, S) uint8 0/255
        sample = self.samples[index]
        label = max(self.samples[i].label for i in tiles)
        return (
            image,
            torch.from_numpy((mask > 0).astype(np.float32)),
            torch.tensor(float(label)),
            torch.tensor(all(known)),
            sample.class_name,
        )

    def _load(self, index: int) -> tuple[Image.Image, Image.Image, bool]:
        """One image at ``S x S`` with its mask (``L`` mode, 0/255) and whether it is known."""
        sample = self.samples[index]
        S = self.image_size
        picture = load_image(sample.image, MAX_PIXELS, str(sample.image))
        mask = load_mask(sample.mask, (S, S)) * 255
        return (
            picture.resize((S, S), Image.Resampling.BICUBIC),
            Image.fromarray(mask),
            sample.has_truth,
        )


def collate_train(items: Sequence[tuple | None]) -> list | None:
    """Batches the readable training items; ``None`` when none of them could be read."""
    readable = [item for item in items if item is not None]
    return torch.utils.data.default_collate(readable) if readable else None


def _mosaic(tiles: Sequence[Image.Image], resample: Image.Resampling) -> Image.Image:
    """One image unchanged, or four ``S x S`` images as a 2x2 grid at ``2S x 2S``."""
    if len(tiles) == 1:
        return tiles[0]
    S = tiles[0].size[0]
    canvas = Image.new(tiles[0].mode, (2 * S, 2 * S))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % 2) * S, (i // 2) * S))
    return canvas.resize((S, S), resample)


READERS = {"mvtec": read_mvtec, "visa": read_visa, "meta": read_meta, "folder": read_folders}
LAYOUT_TESTS = {
    "meta": lambda root: (root / "meta.json").is_file(),
    "visa": lambda root: (root / "split_csv" / "1cls.csv").is_file(),
    "mvtec": _is_mvtec,
    "folder": _is_folder,
}
