"""`python -m adaclip predict` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaclip.cli import main
from adaclip.detector import Detector


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
    assert "FAILED" in done.stdout and "1 of 2 images failed" in done.stderr


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


def test_too_long_class_name_exits_2_before_loading_weights(tmp_path, golden_dir):
    # A checkpoint that does not exist proves the name is checked first.
    image = str(golden_dir / "images" / "input_0.png")
    args = ["predict", image, "--class-name", "nut," * 45, "--checkpoint", "missing.pth"]
    done = _run([*args, "--output", str(tmp_path)])
    assert done.returncode == 2
    assert "is too long" in done.stderr and "missing.pth" not in done.stderr


def test_counts_below_one_are_usage_errors(tmp_path, golden_dir, capsys):
    image = str(golden_dir / "images" / "input_0.png")
    with pytest.raises(SystemExit) as stop:
        main(["predict", image, "--batch-size", "0", "--output", str(tmp_path)])
    assert stop.value.code == 2
    assert "--batch-size: must be at least 1, got 0" in capsys.readouterr().err


def test_version_and_verbose_after_the_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("adaclip ")
    assert main(["checkpoints", "-v"]) == 0


def test_rerun_replaces_maps_and_failed_rows_keep_their_class(
    tmp_path, golden_dir, golden_cli_args
):
    out = tmp_path / "out"
    first = [str(golden_dir / "images" / n) for n in ("input_0.png", "input_1.jpg")]
    assert main(["predict", *first, *golden_cli_args, "--output", str(out)]) == 0
    assert len(list((out / "maps").glob("*.npy"))) == 2
    (out / "notes.txt").write_text("mine")
    (out / "overlays" / "2024_holiday.png").write_bytes(b"a user's own file")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    second = [str(golden_dir / "images" / "input_3.jpg"), str(broken)]
    names = ["--class-name", "wood_grain", "--class-name", "metal-nut"]
    assert main(["predict", *second, *names, *golden_cli_args, "--output", str(out)]) == 1
    assert [p.name for p in (out / "maps").glob("*.npy")] == ["0000_input_3.npy"]
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert overlays == ["0000_input_3.png", "2024_holiday.png"]
    assert (out / "notes.txt").read_text() == "mine"
    good, bad = json.loads((out / "results.json").read_text())["results"]
    assert good["class_name"] == "wood_grain"
    assert bad["class_name"] == "metal-nut" and "empty" in bad["error"]


def test_rerun_in_the_scored_folder_leaves_its_own_outputs_alone(
    tmp_path, golden_dir, golden_cli_args, monkeypatch
):
    Image.open(golden_dir / "images" / "input_3.jpg").save(tmp_path / "part.png")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["predict", ".", *golden_cli_args]) == 0
        rows = json.loads((tmp_path / "adaclip-output" / "results.json").read_text())["results"]
        assert [r["image"] for r in rows] == ["part.png"]
        assert (tmp_path / "adaclip-output" / rows[0]["overlay"]).is_file()


def test_unwritable_output_stops_before_loading(tmp_path, golden_dir, capsys):
    (tmp_path / "out" / "results.json").mkdir(parents=True)
    (tmp_path / "file").write_text("")
    image = str(golden_dir / "images" / "input_0.png")
    for output in ("out", "file"):
        args = ["predict", image, "--checkpoint", "missing.pth"]
        assert main([*args, "--output", str(tmp_path / output)]) == 2
        assert "cannot write to the output folder" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    assert "results.json in it is a folder" in capsys.readouterr().err


def test_long_names_and_an_interrupted_run(tmp_path, golden_dir, golden_cli_args, monkeypatch):
    long = tmp_path / ("x" * 240 + ".png")
    Image.open(golden_dir / "images" / "input_0.png").save(long)
    images = [str(long), *(str(golden_dir / "images" / f"input_{i}.png") for i in (0, 2))]
    out = tmp_path / "out"
    real = Detector.iter_predict

    def stopped_after_one(self, *args, **kwargs):
        results = real(self, *args, **kwargs)
        yield next(results)
        raise KeyboardInterrupt

    monkeypatch.setattr(Detector, "iter_predict", stopped_after_one)
    assert main(["predict", *images, *golden_cli_args, "--output", str(out)]) == 130
    report = json.loads((out / "results.json").read_text())
    assert report["complete"] is False and len(report["results"]) == 1
    assert (out / report["results"][0]["map"]).is_file()
    assert len(Path(report["results"][0]["map"]).name) < 100
