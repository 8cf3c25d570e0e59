"""Makes the demo's example images: public-domain photographs with a painted-in defect.

The photographs ship inside scikit-image (``skimage.data``), each under CC0 or in the
public domain (see ``examples/README.md``). scikit-image is needed only to run this
script, not by the library or the app::

    pip install scikit-image
    python examples/make_examples.py

The defects are drawn with a fixed random seed, so running it again gives the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def _soft_blend(base: np.ndarray, paint: np.ndarray, mask: np.ndarray, blur: int) -> np.ndarray:
    """Blends ``paint`` into ``base`` where ``mask`` (uint8 0/255) is set, with soft edges."""
    weight = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), blur)
    if base.ndim == 3:
        weight = weight[:, :, None]  # (H, W) -> (H, W, 1)
    mixed = (1.0 - weight) * base.astype(np.float32) + weight * paint.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _crack_mask(
    shape: tuple[int, int], start: tuple[int, int], steps: int, seed: int
) -> np.ndarray:
    """A jagged line that wanders from ``start``: ``(H, W)`` uint8 0/255."""
    rng = np.random.default_rng(seed)
    points = [np.array(start, dtype=np.float64)]
    heading = rng.uniform(0, np.pi)
    for _ in range(steps):
        heading += rng.normal(0.0, 0.45)
        points.append(points[-1] + 9.0 * np.array([np.cos(heading), np.sin(heading)]))
    mask = np.zeros(shape, np.uint8)
    polyline = np.rint(np.stack(points)).astype(np.int32)  # (steps + 1, 2) as (x, y)
    cv2.polylines(mask, [polyline], isClosed=False, color=255, thickness=5)
    return mask


def cracked_brick(data) -> Image.Image:
    """A brick wall with a dark crack across two bricks (greyscale)."""
    brick = data.brick()  # (512, 512) uint8
    mask = _crack_mask(brick.shape, (200, 180), steps=16, seed=1)
    return Image.fromarray(_soft_blend(brick, np.full_like(brick, 25), mask, blur=1.2))


def patchy_grass(data) -> Image.Image:
    """Grass with a pale, burnt-looking patch (greyscale)."""
    grass = data.grass()  # (512, 512) uint8
    mask = np.zeros_like(grass)
    cv2.ellipse(mask, (330, 300), (70, 45), 25, 0, 360, 255, -1)
    return Image.fromarray(_soft_blend(grass, np.full_like(grass, 215), mask, blur=8))


def gravel_hole(data) -> Image.Image:
    """Gravel with a dark round hole (greyscale)."""
    gravel = data.gravel()  # (512, 512) uint8
    mask = np.zeros_like(gravel)
    cv2.circle(mask, (150, 340), 38, 255, -1)
    return Image.fromarray(_soft_blend(gravel, np.full_like(gravel, 10), mask, blur=3))


def chipped_cup(data) -> Image.Image:
    """A red espresso cup with a white chip knocked out of its side (RGB)."""
    coffee = data.coffee()  # (400, 600, 3) uint8
    mask = np.zeros(coffee.shape[:2], np.uint8)
    chip = np.array([[288, 222], [306, 216], [318, 228], [311, 246], [294, 250], [284, 238]])
    cv2.fillPoly(mask, [chip.astype(np.int32)], 255)
    porcelain = np.empty_like(coffee)
    porcelain[:] = (236, 232, 224)
    return Image.fromarray(_soft_blend(coffee, porcelain, mask, blur=1.5))


def spotted_retina(data) -> Image.Image:
    """A fundus photograph with yellow-white spots near the macula (RGB, 512 px)."""
    retina = np.asarray(Image.fromarray(data.retina()).resize((512, 512), Image.LANCZOS))
    rng = np.random.default_rng(3)
    mask = np.zeros(retina.shape[:2], np.uint8)
    for _ in range(7):
        x, y = rng.normal((300, 270), 22).astype(int)
        cv2.circle(mask, (int(x), int(y)), int(rng.integers(5, 10)), 255, -1)
    spots = np.empty_like(retina)
    spots[:] = (245, 230, 150)
    return Image.fromarray(_soft_blend(retina, spots, mask, blur=1.5))


EXAMPLES: dict[str, Callable] = {
    "brick_crack.png": cracked_brick,
    "grass_patch.jpg": patchy_grass,
    "gravel_hole.png": gravel_hole,
    "cup_chip.jpg": chipped_cup,
    "retina_spots.jpg": spotted_retina,
}


def main() -> None:
    """Writes every example next to this script."""
    from skimage import data

    for name, make in EXAMPLES.items():
        image = make(data)
        options = {"quality": 88} if name.endswith(".jpg") else {"optimize": True}
        image.save(HERE / name, **options)


if __name__ == "__main__":
    main()
