"""Reading untrusted images safely and turning them into network inputs."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from adaclip.config import OPENAI_MEAN, OPENAI_STD
from adaclip.errors import ImageError

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | BinaryIO
"""A path, encoded bytes or a binary file object, a PIL image, or a numpy array."""

MAX_PIXELS = 64_000_000
"""Largest image (width x height) we decode; larger files are refused as possible bombs."""

MAX_FILE_BYTES = 512 * 2**20
"""Largest encoded file we read into memory."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")

SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")
"""Formats whose PIL mode ``"I"`` always holds 16-bit samples (greyscale PNG, PGM)."""

_KINDS = (str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray)


def describe(source: ImageInput, index: int | None = None) -> str:
    """A short human name for an input, used in messages and results.

    Paths name themselves; other supported inputs are ``"item 3 (ndarray)"`` (or just the
    type without an index); anything else is ``"item 3"`` or ``"the input"``, because its
    type is what the error message goes on to explain.
    """
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if not (isinstance(source, _KINDS) or hasattr(source, "read")):
        return f"item {index}" if index is not None else "the input"
    kind = type(source).__name__
    return f"item {index} ({kind})" if index is not None else kind


def _a_kind(source: object) -> str:
    """The input's type with its article: ``"an int"``, ``"a list"``, ``"None"``."""
    if source is None:
        return "None"
    kind = type(source).__name__
    return f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}"


def load_image(
    source: ImageInput, max_pixels: int = MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Decodes any supported input into an 8-bit RGB PIL image, upright.

    Paths, bytes, binary file objects and PIL images are decoded with the EXIF orientation
    applied; numpy arrays may be ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` of
    uint8, uint16, other integers or float in [0, 1] (RGB channel order). Transparent pixels
    are composited onto white. uint16 data, 16-bit files and float in [0, 1] are scaled to 8
    bits over their type's full range; other integer data counts as 8-bit when it lies in
    [0, 255] and as 16-bit when it lies in [0, 65535]. Float files (PIL mode ``"F"``) outside
    [0, 1] are stretched from their own minimum and maximum to [0, 1].

    Raises:
        ImageError: The input is missing, a folder, empty, corrupt, not an image, too large,
            integer data outside [0, 65535], float data with NaN or infinity, or a float array
            outside [0, 1]; the message names it.
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
            f"{name} is {_a_kind(source)}, not an image; give a file path, encoded image bytes, "
            "a binary file object, a PIL image or a numpy array."
        )
    _check_size(*image.size, max_pixels, name)
    image_format = image.format  # the upright copy below forgets it
    try:
        image = ImageOps.exif_transpose(image)  # decodes every pixel
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(
            f"{name} could not be decoded ({err}); the file may be truncated or corrupt."
        ) from err
    return to_rgb(image, name, image_format)


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
        if source == "":
            raise ImageError("The image path is empty; give an image file.")
        path = Path(source)
        if not path.is_file():
            raise ImageError(_not_a_file(path, name))
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
            f"pixels, far above the limit of {MAX_PIXELS:,} (it could be "
            "a decompression bomb); downscale it first."
        ) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageError(
            f"{name} is not an image PIL can read; use PNG, JPEG, BMP, TIFF or WebP."
        ) from err


def _not_a_file(path: Path, name: str) -> str:
    """Why ``path`` cannot be read as a file, in words."""
    if path.is_dir():
        return f"{name} is a folder; give an image file (the command line expands folders)."
    if path.is_symlink():
        target = os.readlink(path)
        return f"{name} does not exist: it is a symbolic link to {target}, which is missing."
    if not path.exists():
        return f"{name} does not exist."
    return f"{name} is not a regular file; give an image file."


def _check_size(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuses empty images and decompression bombs before any pixel is decoded."""
    if width < 1 or height < 1:
        raise ImageError(f"{name} has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is too large: {width}x{height} = {width * height:,} pixels, more than the "
            f"limit of {max_pixels:,}; downscale it first."
        )


def to_rgb(image: Image.Image, name: str = "image", image_format: str | None = None) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB (alpha composited on white).

    Modes ``"I;16*"`` are 16-bit, as is ``"I"`` from the :data:`SIXTEEN_BIT_I_FORMATS`
    (``image_format``, by default ``image.format``); other ``"I"`` data follows the integer
    rule of :func:`load_image`, and ``"F"`` data is used as is in [0, 1] or stretched.
    """
    image.load()
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image)
        if image.mode == "I" and (image_format or image.format) in SIXTEEN_BIT_I_FORMATS:
            array = np.clip(array, 0, 65535).astype(np.uint16)
        return _from_array(array, name, from_file=True)
    if image.mode in ("P", "La"):
        image = image.convert("RGBA" if image.mode == "P" else "LA")  # La: un-premultiply
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa"):
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, image).convert("RGB")
        return image.convert("RGB")
    except ValueError as err:
        raise ImageError(
            f"{name} has PIL mode {image.mode}, which cannot be turned into RGB ({err}); save "
            "it as RGB or greyscale."
        ) from err


def _from_array(array: np.ndarray, name: str, from_file: bool = False) -> Image.Image:
    """Turns a numpy image into RGB, scaling integer and float ranges to 8 bits.

    ``from_file`` marks pixels decoded from a file (or PIL image): float data outside [0, 1]
    is then stretched instead of refused, and the advice in errors speaks of files.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(
            f"{name} has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)."
        )
    if array.size == 0:
        raise ImageError(f"{name} has no pixels (shape {array.shape}).")
    if np.issubdtype(array.dtype, np.floating):
        scaled = _float_to_8_bits(array, name, from_file)
    elif np.issubdtype(array.dtype, np.integer):
        scaled = _integer_to_8_bits(array, name, from_file)
    else:
        raise ImageError(
            f"{name} has unsupported dtype {array.dtype}; pass uint8, uint16 or float in [0, 1]."
        )
    image = Image.fromarray(np.ascontiguousarray(scaled))
    return to_rgb(image, name) if image.mode != "RGB" else image


def _integer_to_8_bits(array: np.ndarray, name: str, from_file: bool) -> np.ndarray:
    """uint8 as is, uint16 over 16 bits; other integers by the range their values lie in."""
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        bits = 8 * array.dtype.itemsize
    else:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            advice = (
                "save it as 8- or 16-bit" if from_file else "rescale it or pass float in [0, 1]"
            )
            raise ImageError(
                f"{name} has integer values in [{low}, {high}]; integer images must lie in "
                f"[0, 255] (8-bit) or [0, 65535] (16-bit); {advice}."
            )
        bits = 8 if high <= 255 else 16
        logger.debug("%s: %s values in [%s, %s] read as %s-bit", name, array.dtype, low, high, bits)
    if bits == 8:
        return array.astype(np.uint8)
    scaled = np.rint(array.astype(np.float64) * (255.0 / 65535.0))  # [0, 65535] -> [0, 255]
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _float_to_8_bits(array: np.ndarray, name: str, from_file: bool) -> np.ndarray:
    """Float in [0, 1] to 8 bits; file data outside [0, 1] is first stretched to it."""
    if not np.isfinite(array).all():
        raise ImageError(f"{name} contains NaN or infinite values; replace them first.")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        if not from_file:
            raise ImageError(
                f"{name} is a float array with values in [{low:g}, {high:g}]; float images must "
                "lie in [0, 1]. Divide 8-bit data by 255 or pass it as uint8."
            )
        logger.debug("%s: float values in [%g, %g] stretched to [0, 1]", name, low, high)
        span = high - low  # float64, so even float32's full range does not overflow
        array = (array.astype(np.float64) - low) / span if span > 0 else np.zeros(array.shape)
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


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
    """Image files under ``folder`` (recursively), sorted, by their suffix.

    Symbolic links to files and folders are followed; a folder reached twice (a link loop, or
    two links to one place) is searched once, under the first path in sorted order. A broken
    link with an image suffix is kept, so that reading it fails with a message naming it.
    Folders that cannot be listed are skipped with a warning.
    """
    found: list[Path] = []
    searched: set[Path] = set()
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        real = current.resolve()
        if real in searched:
            logger.debug("%s leads to %s, which is searched already", current, real)
            continue
        searched.add(real)
        files, folders = _scan(current)
        found.extend(files)
        pending.extend(reversed(folders))  # depth-first, in sorted order
    return sorted(found)


def _scan(folder: Path) -> tuple[list[Path], list[Path]]:
    """One folder's image files (broken links included) and subfolders, each sorted."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as err:
        logger.warning("cannot list folder %s (%s); its images are skipped", folder, err)
        return [], []
    files, folders = [], []
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir():  # follows links
            folders.append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES and (entry.is_file() or entry.is_symlink()):
            files.append(path)
    return files, folders
