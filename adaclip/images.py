"""Reading untrusted images safely and turning them into network inputs."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from adaclip.config import OPENAI_MEAN, OPENAI_STD
from adaclip.errors import ImageError

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | BinaryIO
"""A path, encoded bytes or a binary file object, a PIL image, or a numpy array."""

MAX_PIXELS = 64_000_000
"""Largest image (width x height) we decode; larger files are refused as possible bombs."""

MAX_FILE_BYTES = 512 * 2**20
"""Largest encoded file we read into memory."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


def describe(source: ImageInput, index: int | None = None) -> str:
    """A short human name for an input, used in messages and results."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    kind = type(source).__name__
    return f"item {index} ({kind})" if index is not None else kind


def load_image(
    source: ImageInput, max_pixels: int = MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Decodes any supported input into an 8-bit RGB PIL image, upright.

    Paths, bytes, binary file objects and PIL images are decoded with the EXIF orientation
    applied; numpy arrays may be ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` of
    uint8, uint16 or float in [0, 1] (RGB channel order). Transparent pixels are composited
    onto white. 16-bit and float images are scaled to 8 bits over their type's full range.

    Raises:
        ImageError: The input is missing, empty, corrupt, not an image or too large; the
            message names it.
    """
    name = name or describe(source)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_size(source.shape[1], source.shape[0], max_pixels, name)
        return _from_array(source, name)
    if hasattr(source, "read"):
        source = _read_stream(source, name)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (str, os.PathLike, bytes, bytearray)):
        image = _open(source, name)
    else:
        raise ImageError(
            f"{name} is a {type(source).__name__}; give a file path, encoded image bytes, a "
            "binary file object, a PIL image or a numpy array."
        )
    _check_size(*image.size, max_pixels, name)
    try:
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(
            f"{name} could not be decoded ({err}); the file may be truncated."
        ) from err


def _read_stream(stream: BinaryIO, name: str) -> bytes:
    """Reads a binary file object, refusing text streams and oversized content."""
    data = stream.read(MAX_FILE_BYTES + 1)
    if not isinstance(data, (bytes, bytearray)):
        raise ImageError(f"{name} is a text stream; open the file in binary mode ('rb').")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB; use a smaller file.")
    return bytes(data)


def _open(source: str | os.PathLike | bytes, name: str) -> Image.Image:
    """Opens a path or bytes lazily (header only) and turns every failure into ImageError."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(f"{name} is empty (0 bytes); give an image file.")
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name} does not exist or is not a file.")
        size = path.stat().st_size
        if size == 0:
            raise ImageError(f"{name} is empty (0 bytes); give an image file.")
        if size > MAX_FILE_BYTES:
            raise ImageError(
                f"{name} is {size / 2**20:.0f} MB, more than the {MAX_FILE_BYTES // 2**20} MB "
                "limit; use a smaller file."
            )
        stream = io.BytesIO(path.read_bytes())
    try:
        return Image.open(stream)
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"{name} is too large: its header claims more than {2 * Image.MAX_IMAGE_PIXELS:,} "
            "pixels, which could be a decompression bomb; downscale it first."
        ) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageError(
            f"{name} is not an image PIL can read; use PNG, JPEG, BMP, TIFF or WebP."
        ) from err


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuses empty images and decompression bombs before any pixel is decoded."""
    if width < 1 or height < 1:
        raise ImageError(f"{name} has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is too large: {width}x{height} = {width * height:,} pixels, more than the "
            f"limit of {max_pixels:,}; downscale it first."
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB (16-bit scaled, alpha composited on white)."""
    image.load()
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _from_array(np.asarray(image), "image")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    """Turns a numpy image into RGB, scaling integer and float ranges to 8 bits."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(
            f"{name} has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)."
        )
    if array.size == 0:
        raise ImageError(f"{name} has no pixels (shape {array.shape}).")
    if array.dtype == np.uint8:
        scaled = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{name} contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"{name} is a float array with values in [{low:g}, {high:g}]; float images must "
                "lie in [0, 1]. Divide 8-bit data by 255 or pass it as uint8."
            )
        scaled = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        top = max(65535, int(array.max()))  # 16-bit range unless values exceed it
        scaled = np.clip(np.rint(array.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"{name} has unsupported dtype {array.dtype}.")
    image = Image.fromarray(np.ascontiguousarray(scaled))
    return to_rgb(image) if image.mode != "RGB" else image


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """Squashes an RGB image to ``size x size`` (bicubic) and normalises it.

    Returns:
        Float32 tensor ``(3, size, size)`` normalised with the OpenAI CLIP mean and std.
    """
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0  # (S, S, 3) in [0, 1]
    tensor = torch.from_numpy(array).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return (tensor - mean) / std


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted, by their suffix."""
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
