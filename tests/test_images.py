"""Reading every kind of image a user may have, and refusing the bad ones clearly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from adaclip.errors import ImageError
from adaclip.images import describe, list_images, load_image, preprocess


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


@pytest.mark.parametrize(("mode", "color"), [("La", (100, 128)), ("RGBa", (100, 0, 0, 128))])
def test_premultiplied_pil_images_become_rgb(mode, color):
    pixels = np.asarray(load_image(Image.new(mode, (3, 2), color)))
    assert pixels.shape == (2, 3, 3)
    assert 225 <= pixels[0, 0, 0] <= 229  # half of the un-premultiplied 199 over white


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
    with pytest.raises(
        ImageError, match="bomb.png is too large.*the limit of 64,000,000.*downscale"
    ):
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
    with pytest.raises(ImageError, match="is an int, not an image; give a file path"):
        load_image(42)
    with pytest.raises(ImageError, match="is None, not an image"):
        load_image(None)


def test_large_arrays_respect_the_pixel_limit():
    with pytest.raises(ImageError, match="more than the limit of 99"):
        load_image(np.zeros((10, 10), dtype=np.uint8), max_pixels=99)


def _tiff(path, array: np.ndarray):
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_integer_arrays_within_8_bits_are_8_bit(dtype):
    array = np.array([[0, 100, 127]], dtype=dtype)
    assert (np.asarray(load_image(array))[0, :, 0] == [0, 100, 127]).all()


def test_integer_arrays_from_astype_int_keep_their_brightness():
    photo = np.array([[[10, 128, 255]]], dtype=np.uint8)
    assert (np.asarray(load_image(photo.astype(int))) == photo).all()


def test_integer_arrays_above_8_bits_are_16_bit():
    array = np.array([[0, 1000, 65535]], dtype=np.int32)
    assert (np.asarray(load_image(array))[0, :, 0] == [0, 4, 255]).all()


def test_uint16_arrays_stay_16_bit_even_when_dark():
    array = np.array([[0, 255]], dtype=np.uint16)
    assert (np.asarray(load_image(array))[0, :, 0] == [0, 1]).all()


@pytest.mark.parametrize(
    ("values", "found"), [([-1, 200], r"\[-1, 200\]"), ([0, 70_000], r"\[0, 70000\]")]
)
def test_integer_arrays_out_of_range_are_refused(values, found):
    with pytest.raises(ImageError, match=found + r".*\[0, 255\].*\[0, 65535\].*float"):
        load_image(np.array([values], dtype=np.int64), name="scan")


def test_32_bit_integer_tiff_within_8_bits_is_8_bit(tmp_path):
    path = _tiff(tmp_path / "int.tiff", np.array([[0, 128, 255]], dtype=np.int32))
    assert Image.open(path).mode == "I"
    assert (np.asarray(load_image(path))[0, :, 0] == [0, 128, 255]).all()


def test_32_bit_integer_tiff_out_of_range_is_refused(tmp_path):
    path = _tiff(tmp_path / "big.tiff", np.array([[0, 100_000]], dtype=np.int32))
    with pytest.raises(ImageError, match=r"big.tiff has integer values in \[0, 100000\]") as info:
        load_image(path)
    assert "truncated" not in str(info.value)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_tiff_stays_16_bit_even_when_dark(mode, tmp_path):
    order = ">" if mode == "I;16B" else "<"
    values = np.array([0, 255, 65535], dtype=order + "u2").tobytes()
    source = Image.frombytes(mode, (3, 1), values)  # Pillow's convert to I;16B clips at 255
    path = tmp_path / "dark.tiff"
    source.save(path)
    assert Image.open(path).mode == mode
    assert (np.asarray(load_image(path))[0, :, 0] == [0, 1, 255]).all()


def test_16_bit_pgm_stays_16_bit_even_when_dark():
    data = b"P5\n2 1\n65535\n" + np.array([0, 255], dtype=">u2").tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert (np.asarray(load_image(data))[0, :, 0] == [0, 1]).all()


def test_float_tiff_in_unit_range_is_used_as_is(tmp_path):
    path = _tiff(tmp_path / "unit.tiff", np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert Image.open(path).mode == "F"
    assert (np.asarray(load_image(path))[0, :, 0] == [0, 128, 255]).all()


def test_float_tiff_with_any_range_is_stretched(tmp_path):
    path = _tiff(tmp_path / "ct.tiff", np.array([[-1000.0, 500.0, 2000.0]], dtype=np.float32))
    assert (np.asarray(load_image(path))[0, :, 0] == [0, 128, 255]).all()


def test_constant_float_tiff_outside_unit_range_is_black(tmp_path):
    path = _tiff(tmp_path / "flat.tiff", np.full((2, 2), 7.5, dtype=np.float32))
    assert (np.asarray(load_image(path)) == 0).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_tiff_with_nan_is_refused_without_blaming_truncation(bad, tmp_path):
    path = _tiff(tmp_path / "nan.tiff", np.array([[0.0, bad]], dtype=np.float32))
    with pytest.raises(ImageError, match="nan.tiff contains NaN or infinite values") as info:
        load_image(path)
    assert "truncated" not in str(info.value)


def test_folders_are_not_images(tmp_path):
    with pytest.raises(ImageError, match="is a folder; give an image file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="is a folder"):
        load_image(str(tmp_path))


def test_empty_path_is_named():
    with pytest.raises(ImageError, match="The image path is empty"):
        load_image("")


def test_broken_symlink_is_named(tmp_path):
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="gone.png does not exist.*missing.png"):
        load_image(link)


@pytest.mark.parametrize(
    ("source", "index", "message"),
    [
        (42, 4, r"^item 4 is an int, not an image; give a file path"),
        (None, 0, r"^item 0 is None, not an image"),
        ([1, 2], None, r"^the input is a list, not an image"),
        (3.5, None, r"^the input is a float, not an image"),
    ],
)
def test_unsupported_types_are_named_in_plain_words(source, index, message):
    with pytest.raises(ImageError, match=message):
        load_image(source, name=describe(source, index))
    with pytest.raises(ImageError, match=message.replace(f"item {index}", "the input")):
        load_image(source)


def _touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (2, 2)).save(path)
    return path


def test_list_images_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    _touch_image(outside / "deep" / "c.png")
    _touch_image(outside / "single.jpg")
    root = tmp_path / "root"
    _touch_image(root / "a.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "b.jpg").symlink_to(outside / "single.jpg")
    (root / "notes.txt").write_text("not an image")
    found = list_images(root)
    assert found == [
        root / "a.png",
        root / "b.jpg",
        root / "linked" / "deep" / "c.png",
        root / "linked" / "single.jpg",
    ]


def test_list_images_survives_symlink_loops(tmp_path):
    root = tmp_path / "root"
    _touch_image(root / "sub" / "a.png")
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root, target_is_directory=True)
    assert list_images(root) == [root / "sub" / "a.png"]


def test_list_images_keeps_broken_links_so_they_fail_clearly(tmp_path):
    root = tmp_path / "root"
    _touch_image(root / "a.png")
    (root / "b.png").symlink_to(tmp_path / "moved.png")
    (root / "c.txt").symlink_to(tmp_path / "moved.txt")
    assert list_images(root) == [root / "a.png", root / "b.png"]
    with pytest.raises(ImageError, match="b.png does not exist"):
        load_image(list_images(root)[1])


def test_list_images_is_sorted(tmp_path):
    for name in ["b/z.png", "a.png", "c.PNG", "b/a.tif"]:
        _touch_image(tmp_path / name)
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a.png",
        "b/a.tif",
        "b/z.png",
        "c.PNG",
    ]
