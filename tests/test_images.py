"""Reading every kind of image a user may have, and refusing the bad ones clearly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from adaclip.errors import ImageError
from adaclip.images import load_image, preprocess


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size; its pixels are never needed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red, but fully transparent on the left half
    rgba[:, 3:, 3] = 255
    image = load_image(_png_bytes(Image.fromarray(rgba, "RGBA")))
    pixels = np.asarray(image)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert (pixels[:, :3] == 255).all()
    assert (pixels[:, 3:] == [200, 0, 0]).all()


def test_16_bit_greyscale_uses_full_range():
    values = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    image = load_image(_png_bytes(Image.fromarray(values)))
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert pixels[0, 0, 0] == 0 and pixels[0, 1, 0] == 255 and pixels[1, 0, 0] == 128


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "1", "I"])
def test_other_modes_become_rgb(mode, tmp_path):
    source = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8) * 5).convert(mode)
    path = tmp_path / ("image.tiff" if mode in ("CMYK", "I") else "image.png")
    source.save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (8, 6)


def test_exif_orientation_is_applied(tmp_path):
    landscape = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = landscape.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    landscape.save(path, exif=exif.tobytes())
    assert load_image(path).size == (20, 40)


@pytest.mark.parametrize(
    ("array", "size"),
    [
        (np.full((2, 3, 3), 7, dtype=np.uint8), (3, 2)),
        (np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), (4, 3)),
        (np.zeros((5, 6, 4), dtype=np.uint8), (6, 5)),
        (np.zeros((5, 6, 1), dtype=np.uint16), (6, 5)),
    ],
)
def test_numpy_arrays(array, size):
    assert load_image(array).size == size


def test_tiny_image_preprocesses_to_full_size():
    tensor = preprocess(load_image(np.full((2, 3, 3), 128, dtype=np.uint8)), 64)
    assert tensor.shape == (3, 64, 64)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "not an image"),
    ],
)
def test_bad_bytes_raise_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data, name="upload.png")


def test_truncated_file_is_named(tmp_path, golden_dir):
    data = (golden_dir / "images" / "input_0.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cut.png.*truncated"):
        load_image(path)


def test_truncated_jpeg(tmp_path, golden_dir):
    data = (golden_dir / "images" / "input_1.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(path)


@pytest.mark.parametrize("side", [9_000, 40_000])
def test_decompression_bomb_is_refused_before_decoding(side):
    with pytest.raises(ImageError, match="bomb.png is too large.*downscale"):
        load_image(_bomb_png(side, side), name="bomb.png")


def test_pixel_limit_is_configurable():
    data = _png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageError, match="10,000 pixels, more than the limit of 9,999"):
        load_image(data, max_pixels=9_999)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)


@pytest.mark.parametrize("shape", [(3, 3, 2), (2, 2, 2, 2), (0, 4)])
def test_bad_array_shapes(shape):
    with pytest.raises(ImageError):
        load_image(np.zeros(shape, dtype=np.uint8))


def test_nan_array_refused():
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4), np.nan, dtype=np.float32))


def test_float_arrays_outside_unit_range_are_refused():
    with pytest.raises(
        ImageError, match=r"values in \[0, 255\]; float images must lie in \[0, 1\]"
    ):
        load_image(np.array([[0.0, 255.0]], dtype=np.float32))
    with pytest.raises(ImageError, match="must lie in"):
        load_image(np.array([[-0.5, 0.5]], dtype=np.float64))


def test_binary_file_objects_are_read(golden_dir):
    with open(golden_dir / "images" / "input_3.jpg", "rb") as handle:
        from_file = load_image(handle)
    assert from_file.size == load_image(golden_dir / "images" / "input_3.jpg").size
    assert load_image(io.BytesIO(_png_bytes(Image.new("L", (3, 2))))).size == (3, 2)


def test_text_streams_and_other_types_are_refused():
    with pytest.raises(ImageError, match="binary mode"):
        load_image(io.StringIO("hello"), name="notes")
    with pytest.raises(ImageError, match="is a int; give a file path"):
        load_image(42)
    with pytest.raises(ImageError, match="is a NoneType"):
        load_image(None)


def test_large_arrays_respect_the_pixel_limit():
    with pytest.raises(ImageError, match="more than the limit of 99"):
        load_image(np.zeros((10, 10), dtype=np.uint8), max_pixels=99)
