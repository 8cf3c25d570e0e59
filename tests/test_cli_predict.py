"""`python -m adaclip predict` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def _run(args, timeout=120):
    command = [sys.executable, "-m", "adaclip", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_folder_with_a_bad_file_reports_it_and_exits_1(tmp_path, golden_dir, golden_cli_args):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(golden_dir / "images" / "input_3.jpg").save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    out = tmp_path / "out"
    done = _run(["predict", str(folder), *golden_cli_args, "--output", str(out)])
    assert done.returncode == 1, done.stderr
    report = json.loads((out / "results.json").read_text())
    assert report["failed"] == 1
    good, bad = report["results"]
    assert good["class_name"] == "object" and 0.0 <= good["score"] <= 1.0
    width, height = Image.open(folder / "a.png").size
    assert np.load(out / good["map"]).shape == (height, width)
    assert "b.jpg" in bad["image"] and "not an image" in bad["error"]
    assert "FAILED" in done.stdout


def test_map_is_at_image_size_without_raw_maps(tmp_path, golden_dir, golden_cli_args):
    out = tmp_path / "out"
    image = golden_dir / "images" / "input_1.jpg"
    done = _run(["-v", "predict", str(image), "--class-name", "tile", *golden_cli_args,
                 "--output", str(out)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = json.loads((out / "results.json").read_text())["results"][0]
    width, height = Image.open(image).size
    assert np.load(out / row["map"]).shape == (height, width)
    assert Image.open(out / row["overlay"]).size == (width, height)


def test_wrong_number_of_class_names_exits_2(tmp_path, golden_dir, golden_cli_args):
    images = [str(golden_dir / "images" / n) for n in ("input_0.png", "input_1.jpg", "input_2.png")]
    args = ["predict", *images, "--class-name", "a", "--class-name", "b", *golden_cli_args]
    done = _run([*args, "--output", str(tmp_path)])
    assert done.returncode == 2
    assert "once per image; got 2 for 3 images" in done.stderr


def test_missing_checkpoint_exits_2_with_advice(tmp_path, golden_dir, golden_cli_args):
    args = [a if a != golden_cli_args[1] else str(tmp_path / "none.pth") for a in golden_cli_args]
    done = _run(["predict", str(golden_dir / "images" / "input_0.png"), *args,
                 "--output", str(tmp_path)])  # fmt: skip
    assert done.returncode == 2
    assert "none.pth" in done.stderr and "Traceback" not in done.stderr
