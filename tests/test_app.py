"""The demo's handlers, called directly (no server): results, errors, options, layout."""

from __future__ import annotations

import base64
import csv
import logging
import re
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_helpers import (
    BAD_UPLOAD_MESSAGES,
    REPO,
    load_app,
    write_bad_uploads,
    write_bomb,
    write_odd_images,
)
from PIL import Image

from adaclip import cli
from adaclip.detector import Prediction
from adaclip.errors import HubError

app = load_app()


@pytest.fixture(scope="module")
def demo(golden_detector):
    return app.Demo(golden_detector)


@pytest.fixture(scope="module")
def golden_images(golden_dir: Path) -> list[Path]:
    return sorted((golden_dir / "images").iterdir())


def test_detect_returns_the_library_result(demo, golden_detector, golden_images, golden):
    image, name = golden_images[0], golden["cases"][0]["class_name"]
    expected = golden_detector.predict(str(image), name)

    overlay, score, verdict, heatmap, outlined, timing = demo.detect(str(image), name)

    assert score == expected.score
    np.testing.assert_array_equal(overlay, expected.overlay())
    assert outlined.shape == expected.image.shape and outlined.dtype == np.uint8
    assert heatmap.shape[0] == app.HEATMAP_HEIGHT and heatmap.shape[2] == 3
    assert f"{expected.score:.4f}" in verdict and f"`{name}`" in verdict
    assert "Scored in" in timing and "240 px" in timing and "on cpu, fp32," in timing


def test_verdict_follows_the_threshold(demo, golden_images):
    image = str(golden_images[2])
    score = demo.detect(image, "gravel")[1]

    below = demo.detect(image, "gravel", threshold=max(score - 0.01, 0.0))[2]
    above = demo.detect(image, "gravel", threshold=min(score + 0.01, 1.0))[2]

    assert "Anomalous" in below and "≥" in below
    assert "Normal" in above and "<" in above


def test_empty_class_name_uses_object_and_says_so(demo, golden_detector, golden_images):
    image = str(golden_images[1])

    _, score, verdict, *_ = demo.detect(image, "   ")

    assert score == golden_detector.predict(image, None).score
    assert "`object`" in verdict and "empty" in verdict


def test_apply_threshold_redraws_without_the_model(demo, golden_detector, golden_images):
    prediction = golden_detector.predict(str(golden_images[2]), "gravel")

    verdict_low, outlined_low = demo.apply_threshold(prediction, 0.0)
    verdict_high, outlined_high = demo.apply_threshold(prediction, 1.0)

    assert "Anomalous" in verdict_low
    assert ("Normal" in verdict_high) == (prediction.score < 1.0)
    assert not np.array_equal(outlined_low, outlined_high)
    assert demo.apply_threshold(None, 0.5) == ("", None)


@pytest.mark.parametrize("kind", sorted(BAD_UPLOAD_MESSAGES))
def test_bad_uploads_get_clear_errors(demo, tmp_path, kind, golden_images):
    bad = write_bad_uploads(tmp_path)[kind]

    with pytest.raises(gr.Error, match=BAD_UPLOAD_MESSAGES[kind]):
        demo.detect(str(bad), "bottle")
    assert demo.detect(str(golden_images[0]), "bottle")[1] > 0.0  # still serving


def test_image_over_the_pixel_limit_is_refused(demo, tmp_path):
    bomb = write_bomb(tmp_path / "big.png", side=9_000)  # 81 MP: under PIL's bomb check

    with pytest.raises(gr.Error, match="more than the limit"):
        demo.detect(str(bomb), "bottle")


def test_missing_image_asks_for_one(demo):
    with pytest.raises(gr.Error, match="no image yet"):
        demo.detect(None, "bottle")


def test_oversized_upload_is_refused(demo, golden_images, monkeypatch):
    monkeypatch.setattr(app, "MAX_UPLOAD_BYTES", 1000)

    with pytest.raises(gr.Error, match="upload limit"):
        demo.detect(str(golden_images[0]), "bottle")


def test_error_messages_hide_the_temporary_upload_folder(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    text = tmp_path / "abc123" / "notes.png"
    text.parent.mkdir()
    text.write_text("not a picture")

    with pytest.raises(gr.Error) as caught:
        demo.detect(str(text), "bottle")

    assert "notes.png" in caught.value.message and str(tmp_path) not in caught.value.message


@pytest.mark.parametrize("kind", ["rgba", "grey16", "tiny"])
def test_odd_but_valid_images_work(demo, golden_detector, tmp_path, kind):
    image = write_odd_images(tmp_path)[kind]
    expected = golden_detector.predict(str(image), "object")

    overlay, score, _, heatmap, outlined, _ = demo.detect(str(image), "")

    assert score == expected.score
    H, W = expected.anomaly_map.shape
    factor = overlay.shape[0] // H  # small images are shown enlarged, pixel by pixel
    assert overlay.shape == outlined.shape == (factor * H, factor * W, 3)
    assert min(overlay.shape[:2]) >= app.MIN_SHOWN_SIDE
    np.testing.assert_array_equal(overlay[::factor, ::factor], expected.overlay())
    np.testing.assert_array_equal(
        overlay[factor - 1 :: factor, factor - 1 :: factor], expected.overlay()
    )
    assert heatmap.shape[0] == app.HEATMAP_HEIGHT


def test_bytes_input_scores_like_the_file(demo, golden_images):
    path = golden_images[3]

    assert demo.detect(path.read_bytes(), "brain")[1] == demo.detect(str(path), "brain")[1]


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_outside_zero_one_is_refused(demo, golden_images, threshold):
    with pytest.raises(gr.Error, match="threshold must be between 0 and 1"):
        demo.detect(str(golden_images[0]), "bottle", threshold=threshold)


def test_too_long_class_name_is_refused(demo, golden_images):
    with pytest.raises(gr.Error, match="class_name"):
        demo.detect(str(golden_images[0]), "very " * 100)


def test_checkpoint_not_offered_is_refused(demo, golden_images):
    with pytest.raises(gr.Error, match="not offered"):
        demo.detect(str(golden_images[0]), "bottle", checkpoint="/etc/passwd")


def test_checkpoint_that_cannot_download_is_refused_once_and_remembered(
    golden_detector, golden_images, monkeypatch
):
    demo = app.Demo(golden_detector)
    calls = []

    def offline(spec, force=False):
        calls.append(spec)
        raise HubError(f"cannot download checkpoint {spec!r}: the Hub is unreachable.")

    monkeypatch.setattr(app.checkpoints, "resolve_checkpoint", offline)

    for _ in range(2):
        with pytest.raises(gr.Error, match="`all` could not be loaded.*restart"):
            demo.detect(str(golden_images[0]), "bottle", checkpoint="all")
    assert calls == ["all"]  # the second request did not wait for the Hub again
    assert "all" not in demo._detectors
    assert demo.detect(str(golden_images[0]), "bottle")[1] > 0.0


def test_choosing_an_unavailable_checkpoint_falls_back_with_a_note(golden_detector, monkeypatch):
    demo = app.Demo(golden_detector)
    calls = []

    def offline(spec, force=False):
        calls.append(spec)
        raise HubError("the Hub is unreachable.")

    monkeypatch.setattr(app.checkpoints, "resolve_checkpoint", offline)

    menu, note, in_use = demo.choose_checkpoint("visa-clinicdb", None)
    again = demo.choose_checkpoint("visa-clinicdb", in_use)

    assert menu["value"] == in_use == demo.default_checkpoint
    assert "`visa-clinicdb` could not be loaded" in note and "restart" in note
    assert "python -m adaclip download --checkpoint visa-clinicdb" in note
    assert "Still using `adaclip_checkpoint.pth`" in note
    assert ("Checkpoint `visa-clinicdb` could not be loaded" in again[1]) and calls == [
        "visa-clinicdb"
    ]
    assert dict((v, k) for k, v in menu["choices"])["visa-clinicdb"].endswith("(unavailable)")


def test_both_menus_mark_failed_checkpoints_on_load_and_after_a_choice(
    golden_detector, monkeypatch
):
    demo = app.Demo(golden_detector)
    monkeypatch.setattr(app.checkpoints, "resolve_checkpoint", _offline)
    demo.choose_checkpoint("all", None)
    listeners = _listeners(app.build_demo(demo))

    refreshes = [i for i in listeners if i["name"] == "refresh_menus"]

    assert sorted(str(i["after"]) for i in refreshes) == ["None", *["choose_checkpoint"] * 2]
    for item in refreshes:
        assert [o.elem_id for o in item["f"].outputs] == ["checkpoint", "batch-checkpoint"]
    for update in demo.refresh_menus():
        unavailable = [value for label, value in update["choices"] if "(unavailable)" in label]
        assert unavailable == ["all"]


def _offline(spec, force=False):
    raise HubError("the Hub is unreachable.")


def test_choosing_a_loadable_checkpoint_switches_to_it(
    golden_detector, golden_model_args, tmp_path
):
    copy = tmp_path / "copy.pth"
    shutil.copy(golden_model_args["checkpoint"], copy)
    demo = app.Demo(golden_detector, choices=[golden_model_args["checkpoint"], str(copy)])

    menu, note, in_use = demo.choose_checkpoint("copy.pth", None)

    assert menu["value"] == in_use == "copy.pth" and "`copy.pth`" in note


def test_other_checkpoint_loads_once_on_the_shared_backbone(
    golden_detector, golden_model_args, golden_images, tmp_path
):
    copy = tmp_path / "copy.pth"
    shutil.copy(golden_model_args["checkpoint"], copy)
    demo = app.Demo(golden_detector, choices=[golden_model_args["checkpoint"], str(copy)])
    image = str(golden_images[0])

    score = demo.detect(image, "bottle", checkpoint="copy.pth")[1]
    other = demo.detector("copy.pth")

    assert score == demo.detect(image, "bottle")[1]
    assert demo.detector(str(copy)) is other and other is not golden_detector
    assert other.model.clip is golden_detector.model.clip


def test_start_checkpoint_is_listed_first_with_the_published_ones(golden_detector):
    demo = app.Demo(golden_detector)

    assert demo.choices[0] == Path(golden_detector.checkpoint).name
    assert {"all", "mvtec-colondb", "visa-clinicdb"} <= set(demo.choices)


def test_api_and_menus_name_checkpoints_without_server_folders(demo, golden_dir):
    blocks = app.build_demo(demo)
    api = str(blocks.get_api_info()) + str(blocks.get_config_file())

    assert str(golden_dir) not in api and "adaclip_checkpoint.pth" in api
    assert demo.menu_items()[0] == ("adaclip_checkpoint.pth (local file)", "adaclip_checkpoint.pth")


def test_unknown_checkpoint_error_lists_the_names_offered(demo, golden_images, golden_dir):
    with pytest.raises(gr.Error) as caught:
        demo.detect(str(golden_images[0]), "bottle", checkpoint="nope.pth")

    message = caught.value.message
    assert "'nope.pth' is not offered" in message and str(golden_dir) not in message
    assert "choose one of adaclip_checkpoint.pth, all, mvtec-colondb, visa-clinicdb" in message


def test_a_broken_local_checkpoint_is_named_by_its_file_only(
    golden_detector, golden_images, tmp_path
):
    broken = tmp_path / "secret" / "broken.pth"
    broken.parent.mkdir()
    broken.write_bytes(b"not a checkpoint")
    demo = app.Demo(golden_detector, choices=[str(broken)])

    with pytest.raises(gr.Error) as caught:
        demo.detect(str(golden_images[0]), "bottle", checkpoint="broken.pth")
    note = demo.choose_checkpoint("broken.pth", None)[1]

    assert "`broken.pth` could not be loaded" in caught.value.message
    assert str(tmp_path) not in caught.value.message and str(tmp_path) not in note


def test_files_sharing_a_name_get_numbered_menu_names(golden_detector, golden_model_args, tmp_path):
    copies = [tmp_path / d / "adaclip_checkpoint.pth" for d in ("a", "b")]
    for copy in copies:
        copy.parent.mkdir()
        shutil.copy(golden_model_args["checkpoint"], copy)

    demo = app.Demo(golden_detector, choices=[str(c) for c in copies])

    assert demo.choices == [
        "adaclip_checkpoint.pth",
        "adaclip_checkpoint.pth (2)",
        "adaclip_checkpoint.pth (3)",
    ]
    other = demo.detector("adaclip_checkpoint.pth (3)")
    assert other is not golden_detector and other.checkpoint == str(copies[1])


def test_detect_many_scores_good_files_and_reports_bad_ones(
    demo, golden_detector, golden_images, tmp_path
):
    bad = write_bad_uploads(tmp_path)
    files = [str(golden_images[0]), str(bad["not an image"]), str(golden_images[2])]

    gallery, rows, csv_path = demo.detect_many(files, "bottle", threshold=0.5)

    expected = [golden_detector.predict(files[i], "bottle").score for i in (0, 2)]
    assert [r[0] for r in rows] == [f"#{i} {Path(f).name}" for i, f in enumerate(files, 1)]
    assert [rows[0][2], rows[2][2]] == pytest.approx(expected, abs=1e-6)
    assert rows[1][2] is None and "not an image" in rows[1][4]
    assert str(tmp_path) not in rows[1][4]
    assert len(gallery) == 2 and max(gallery[0][0].shape[:2]) <= app.GALLERY_SIDE
    with open(csv_path, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == app.TABLE_HEADERS and len(table) == 4
    assert float(table[1][2]) == pytest.approx(expected[0], abs=1e-6)


def test_moving_the_threshold_redraws_many_verdicts_and_csv(demo, golden_images, tmp_path):
    bad = write_bad_uploads(tmp_path)["empty"]
    files = [str(golden_images[0]), str(bad), str(golden_images[2])]
    _, rows, _, scores = demo.detect_many_for_page(files, "bottle", threshold=0.5)

    low_rows, _, low_slider = demo.redraw_many(scores, 0.0)
    high_rows, high_csv, _ = demo.redraw_many(scores, 1.5)

    assert [r[3] for r in low_rows] == ["anomalous", "", "anomalous"]
    assert [r[3] for r in high_rows] == ["normal", "", "normal"]
    assert [r[:3] + r[4:] for r in low_rows] == [r[:3] + r[4:] for r in rows]
    with open(high_csv, newline="") as handle:
        assert [r[3] for r in list(csv.reader(handle))[1:]] == [r[3] for r in high_rows]
    assert low_slider == gr.skip() and demo.redraw_many(scores, 1.5)[2]["value"] == 1.0
    assert demo.redraw_many(None, 0.5)[:2] == (gr.skip(), gr.skip())


def test_the_many_images_threshold_redraws_without_the_model(demo):
    listeners = _listeners(app.build_demo(demo))

    on_slider = [i["name"] for i in listeners if i["on"] == [("batch-threshold", "change")]]

    assert on_slider == ["redraw_many"]
    assert "TODO(#4)" not in Path(app.__file__).read_text()


def test_files_of_the_same_name_are_numbered_alike_everywhere(demo, golden_images, tmp_path):
    files = []
    for folder, image in (("a", golden_images[0]), ("b", golden_images[2])):
        (tmp_path / folder).mkdir()
        files.append(str(shutil.copy(image, tmp_path / folder / "part.png")))

    gallery, rows, csv_path = demo.detect_many(files, "bottle")

    assert [r[0] for r in rows] == ["#1 part.png", "#2 part.png"]
    assert [c.split(":")[0] for _, c in gallery] == ["#1 part.png", "#2 part.png"]
    with open(csv_path, newline="") as handle:
        assert [r[0] for r in list(csv.reader(handle))[1:]] == ["#1 part.png", "#2 part.png"]


def test_detect_many_reports_files_over_the_upload_limit(demo, golden_images, monkeypatch):
    small, large = sorted(golden_images[:2], key=lambda p: p.stat().st_size)
    monkeypatch.setattr(app, "MAX_UPLOAD_BYTES", small.stat().st_size)

    gallery, rows, _ = demo.detect_many([str(large), str(small)], "")

    assert "upload limit" in rows[0][4] and rows[0][2] is None
    assert rows[1][4] == "" and rows[1][1] == "object" and len(gallery) == 1


def test_detect_many_needs_files_and_caps_their_number(demo, golden_images, monkeypatch):
    with pytest.raises(gr.Error, match="add one or more"):
        demo.detect_many([], "bottle")
    monkeypatch.setattr(app, "MAX_BATCH_IMAGES", 2)
    with pytest.raises(gr.Error, match="at most 2 images"):
        demo.detect_many([str(p) for p in golden_images[:3]], "bottle")


def test_concurrent_requests_do_not_mix_results(demo, golden_detector, golden_images):
    names = ["bottle", "tile", "gravel", "brain"]
    jobs = [(str(golden_images[i % 4]), names[i % 4]) for i in range(8)]
    expected = [golden_detector.predict(p, n).score for p, n in jobs]

    with ThreadPoolExecutor(max_workers=4) as pool:
        scores = list(pool.map(lambda job: demo.detect(*job)[1], jobs))

    assert scores == pytest.approx(expected, abs=1e-6)


def test_heatmap_panel_has_a_scale_from_hot_to_cold():
    anomaly_map = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (32, 1))

    panel = app.heatmap_panel(anomaly_map, 0.5)

    assert panel.shape == (app.HEATMAP_HEIGHT, 2 * app.HEATMAP_HEIGHT + 128, 3)
    bar_x = 2 * app.HEATMAP_HEIGHT + 16 + 16
    top, bottom = panel[app.SCALE_TOP + 5, bar_x], panel[-5, bar_x]
    assert top[0] > 100 and top[2] < 50  # red at 1
    assert bottom[2] > 100 and bottom[0] < 50  # blue at 0


def test_upload_source_passes_the_file_on_undecoded(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    data = base64.b64encode(b"\x89PNG fake").decode()

    assert app.upload_source({"path": str(text), "url": None}) == str(text)
    assert (
        app.upload_source({"path": None, "url": f"data:image/png;base64,{data}"}) == b"\x89PNG fake"
    )
    assert app.upload_source(None) is None
    with pytest.raises(gr.Error, match="base64"):
        app.upload_source({"path": None, "url": "data:image/png;base64,@@@"})


def test_page_handler_takes_gradio_image_data(demo, golden_images):
    path = str(golden_images[0])

    *outputs, prediction = demo.detect_for_page({"path": path}, "bottle")

    assert outputs[1] == prediction.score == demo.detect(path, "bottle")[1]


def test_the_page_keeps_a_large_result_at_a_bounded_size(demo, golden_detector, tmp_path):
    big = tmp_path / "big.png"
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (1500, 2400, 3), dtype=np.uint8)).save(big)

    *outputs, kept = demo.detect_for_page({"path": str(big)}, "cup", threshold=0.3)

    assert kept.anomaly_map.shape == (640, 1024) and kept.image.shape == (640, 1024, 3)
    assert kept.score == outputs[1] and kept.class_name == "cup"
    assert demo.redraw(kept, 0.3)[0] == outputs[2]


def test_only_the_newest_csv_files_are_kept(demo, golden_images, monkeypatch):
    monkeypatch.setattr(app, "KEPT_CSV_FILES", 2)

    paths = [demo.detect_many([str(golden_images[0])], "bottle")[2] for _ in range(4)]

    assert [Path(p).is_file() for p in paths] == [False, False, True, True]


def test_page_exposes_detect_with_image_and_class_name_first(demo):
    info = app.build_demo(demo).get_api_info()["named_endpoints"]

    detect = info["/detect"]
    params = [(p["parameter_name"], p["parameter_has_default"]) for p in detect["parameters"]]
    assert params == [
        ("image", False),
        ("class_name", True),
        ("threshold", True),
        ("checkpoint", True),
    ]
    assert [r["component"] for r in detect["returns"][:2]] == ["Image", "Number"]
    assert "/detect_many" in info


def test_options_come_from_flags_then_environment_then_defaults():
    env = {"ADACLIP_CHECKPOINT": "visa-clinicdb", "ADACLIP_PORT": "9000", "ADACLIP_SHARE": "true"}

    from_env = app.build_parser(env).parse_args([])
    flagged = app.build_parser(env).parse_args(["--port", "9100", "--checkpoint", "x.pth"])
    plain = app.build_parser({}).parse_args([])
    space = app.build_parser({"SPACE_ID": "someone/adaclip"}).parse_args([])

    assert (from_env.checkpoint, from_env.port, from_env.share) == ("visa-clinicdb", 9000, True)
    assert (flagged.checkpoint, flagged.port) == ("x.pth", 9100)
    assert (plain.checkpoint, plain.host, plain.port, plain.share) == (
        "all",
        "127.0.0.1",
        None,
        False,
    )
    assert (plain.backbone, plain.image_size) == ("ViT-L-14-336", 518)
    assert (space.host, space.port) == ("0.0.0.0", 7860)


def test_environment_number_that_is_not_one_is_a_usage_error(capsys):
    for value, message in (
        ("big", "expected a whole number, got 'big'"),
        ("0", "must be at least 1, got 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            app.build_parser({"ADACLIP_IMAGE_SIZE": value})

        assert exit_info.value.code == 2
        assert f"ADACLIP_IMAGE_SIZE {message}" in capsys.readouterr().err


def test_cli_serve_runs_app_py_with_its_options(tmp_path, capsys):
    missing = tmp_path / "missing.pth"

    with pytest.raises(SystemExit) as help_exit:
        cli.main(["serve", "--help"])
    status = cli.main(["serve", "--checkpoint", str(missing), "--device", "cpu"])

    assert help_exit.value.code == 0 and "--share" in capsys.readouterr().out
    assert status == 2


def test_examples_exist_with_class_names():
    for file, class_name in app.EXAMPLES:
        path = app.EXAMPLES_DIR / file
        assert path.is_file() and path.stat().st_size < 300_000
        assert class_name and class_name in (app.EXAMPLES_DIR / "README.md").read_text()


def _listeners(blocks: gr.Blocks) -> list[dict]:
    """Each event listener of the page: its function's name, triggers and API exposure."""
    fns = blocks.fns.values()
    names = {f._id: f.name for f in fns}
    return [
        {
            "name": f.name,
            "on": [(getattr(blocks.blocks.get(b), "elem_id", None), e) for b, e in f.targets],
            "after": names.get(f.trigger_after),
            "api_name": f.api_name,
            "public": f.api_visibility == "public",
            "f": f,
        }
        for f in fns
    ]


def test_any_threshold_change_redraws_without_the_model(demo):
    listeners = _listeners(app.build_demo(demo))

    redraws = [item for item in listeners if item["name"] == "redraw" and not item["after"]]

    assert [item["on"] for item in redraws] == [[("threshold", "change")]]  # typing, Enter, drag
    assert "detect_for_page" not in [
        item["name"] for item in listeners if item["on"] == [("threshold", "change")]
    ]


def test_redraw_moves_verdict_heat_map_line_and_outline(demo, golden_detector, golden_images):
    prediction = golden_detector.predict(str(golden_images[2]), "gravel")

    low = demo.redraw(prediction, 0.0)
    high = demo.redraw(prediction, 1.0)
    clamped = demo.redraw(prediction, 7)

    assert "Anomalous" in low[0] and "threshold 0.000" in low[0]
    assert not np.array_equal(low[1], high[1])  # the threshold mark on the colour scale
    assert not np.array_equal(low[2], high[2])
    assert clamped[0] == high[0] and np.array_equal(clamped[1], high[1])
    assert clamped[3]["value"] == 1.0 and low[3] == high[3] == gr.skip()
    skip = gr.skip()
    assert demo.redraw(None, 0.5) == (skip, skip, skip, skip)
    assert demo.redraw(prediction, None) == (skip, skip, skip, skip)


def _prediction(score: float, side: int = 8) -> Prediction:
    """A made-up prediction with the given score and a map rising from left to right."""
    anomaly_map = np.tile(np.linspace(0.0, 1.0, side, dtype=np.float32), (side, 1))
    image = np.zeros((side, side, 3), np.uint8)
    return Prediction(score, anomaly_map, image, "cup", "made up")


@pytest.mark.parametrize(
    ("typed", "shown"), [(0.9589, 0.959), (0.955, 0.955), (0.959, 0.959), (1.5, 1.0), (-0.3, 0.0)]
)
def test_typed_threshold_box_slider_and_verdict_agree(demo, typed, shown):
    score = 0.958993
    verdict, _, _, slider = demo.redraw(_prediction(score), typed)

    assert slider == gr.skip() if typed == shown else slider["value"] == shown
    assert f"threshold {shown:.3f}." in verdict
    score_shown = float(re.search(r"\*\*([0-9.]+)\*\*", verdict)[1])
    anomalous = score >= shown
    assert ("Anomalous" in verdict) == anomalous == (score_shown >= shown)
    assert ("≥" if anomalous else "<") in verdict


def test_threshold_slider_steps_by_a_thousandth(demo):
    blocks = app.build_demo(demo)
    sliders = [b for b in blocks.blocks.values() if isinstance(b, gr.Slider)]

    assert [s.step for s in sliders] == [0.001, 0.001]


def test_a_run_clears_old_results_first_and_the_api_stays_the_same(demo):
    listeners = _listeners(app.build_demo(demo))
    by_name = {}
    for item in listeners:
        by_name.setdefault(item["name"], []).append(item)

    detect = [i for i in by_name["detect_for_page"] if i["api_name"] == "detect"]
    assert len(detect) == 1 and detect[0]["public"] and detect[0]["after"] == "clear_results"
    clears = by_name["clear_results"]
    assert not any(c["public"] for c in clears)
    assert ("run", "click") in [t for c in clears for t in c["on"]]
    assert demo.clear_results() == (None, None, "", None, None, "", None)
    public = sorted(i["api_name"] for i in listeners if i["public"])
    assert public == ["detect", "detect_many"]


def test_an_example_click_runs_detection(demo):
    listeners = _listeners(app.build_demo(demo))

    runs = [i for i in listeners if i["name"] == "detect_for_page" and not i["public"]]

    assert len(runs) == 1 and runs[0]["after"] == "clear_results"
    clear = next(i for i in listeners if i["f"]._id == runs[0]["f"].trigger_after)
    assert clear["after"] == "load_example"


def test_result_images_are_sent_as_png_and_the_score_starts_empty(demo):
    blocks = app.build_demo(demo)
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}

    assert {by_id[i].format for i in ("overlay", "heatmap", "outlined")} == {"png"}
    assert all(b.format == "png" for b in blocks.blocks.values() if isinstance(b, gr.Gallery))
    assert by_id["score"].value is None


def test_about_states_the_licences_and_the_citation():
    about = " ".join(app.ABOUT.split())

    assert "MIT, see `LICENSE`" in about
    assert "CLIP backbone weights** (ViT-L-14-336, by OpenAI): MIT" in about
    assert "licence is not stated by the authors and has not been verified" in about
    assert "Consult the authors' repository before any commercial use" in about
    assert (
        'Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot '
        'Anomaly Detection", ECCV 2024' in about
    )


@pytest.mark.parametrize("case", ["not an image", "no image", "bad threshold", "long name"])
def test_user_errors_log_one_warning_line_without_traceback(demo, tmp_path, caplog, case):
    bad = str(write_bad_uploads(tmp_path)["not an image"])
    good = str(sorted((Path(app.__file__).parent / "examples").glob("*.png"))[0])
    args = {
        "not an image": (bad, "bottle"),
        "no image": (None, "bottle"),
        "bad threshold": (good, "bottle", 2.0),
        "long name": (good, "very " * 100),
    }[case]

    with caplog.at_level("INFO", logger="adaclip"), pytest.raises(gr.Error) as caught:
        demo.detect(*args)

    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)]
    assert "\n" not in records[0].getMessage()
    assert caught.value.print_exception is False  # Gradio prints no traceback either


def test_unexpected_errors_log_a_traceback_and_say_so(golden_detector, golden_images, caplog):
    demo = app.Demo(golden_detector)

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("boom")

    demo._detectors[demo.default_checkpoint] = Broken()
    failing = pytest.raises(gr.Error, match="failed unexpectedly")
    with caplog.at_level("INFO", logger="adaclip"), failing:
        demo.detect(str(golden_images[0]), "bottle")

    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "0"], "--port: must be a port number from 1 to 65535; got '0'"),
        (["--port", "70000"], "--port: must be a port number from 1 to 65535; got '70000'"),
        (["--port", "web"], "--port: must be a port number from 1 to 65535; got 'web'"),
        (["--concurrency", "0"], "--concurrency: must be at least 1, got 0"),
        (["--image-size", "0"], "--image-size: must be at least 1, got 0"),
    ],
)
def test_bad_server_flags_are_usage_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        app.build_parser({}).parse_args(flags)

    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bad_server_environment_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        app.build_parser({"ADACLIP_PORT": "99999"})

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "ADACLIP_PORT must be a port number from 1 to 65535; got '99999'" in err


def test_usage_names_the_program_it_was_started_as(monkeypatch):
    monkeypatch.setattr(app.sys, "argv", ["/x/app.py"])
    assert app.build_parser({}).prog == "app.py"
    monkeypatch.setattr(app.sys, "argv", ["/x/site-packages/adaclip/__main__.py", "serve"])
    assert app.build_parser({}).prog == "python -m adaclip serve"
    assert app.build_parser({}, prog="adaclip serve").prog == "adaclip serve"


def test_port_in_use_exits_2_naming_the_port(golden_cli_args, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level("ERROR", logger="adaclip"):
            status = app.main([*golden_cli_args, "--host", "127.0.0.1", "--port", str(port)])

    assert status == 2
    message = caplog.records[-1].getMessage()
    assert f"port {port} on 127.0.0.1 is already in use" in message and "--port" in message
    assert caplog.records[-1].exc_info is None


def test_unloadable_checkpoint_at_start_exits_2_without_traceback(tmp_path, capfd):
    missing = tmp_path / "missing.pth"

    status = subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--checkpoint", str(missing), "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert status.returncode == 2
    assert "cannot start the demo" in status.stderr and "missing.pth" in status.stderr
    assert "Traceback" not in status.stderr
