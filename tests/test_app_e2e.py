"""The demo as a user's client sees it: ``python app.py`` on 127.0.0.1, driven by gradio_client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_helpers import (
    BAD_UPLOAD_MESSAGES,
    REPO,
    running_app,
    write_bad_uploads,
    write_odd_images,
)
from gradio_client import Client, handle_file


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server") / "app.log"


@pytest.fixture(scope="module")
def server_url(golden_cli_args, server_log) -> Iterator[str]:
    """``python app.py`` with the golden tiny model on a free port, stopped afterwards."""
    with running_app(golden_cli_args, server_log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server_url) -> Client:
    return Client(server_url, verbose=False)


@pytest.fixture(scope="module")
def golden_images(golden_dir: Path) -> list[Path]:
    return sorted((golden_dir / "images").iterdir())


def test_detect_gives_the_library_score_and_an_overlay(client, golden_detector, golden_images):
    expected = golden_detector.predict(str(golden_images[0]), "bottle")

    overlay, score, verdict, heatmap, outlined, timing = client.predict(
        handle_file(str(golden_images[0])), "bottle", api_name="/detect"
    )

    assert abs(score - expected.score) < 1e-5
    assert Path(overlay).is_file() and Path(heatmap).is_file() and Path(outlined).is_file()
    assert {Path(p).suffix for p in (overlay, heatmap, outlined)} == {".png"}  # lossless
    assert "on cpu, fp32," in timing
    assert f"{expected.score:.4f}" in verdict and "Scored in" in timing


def test_only_image_and_class_name_are_needed(client, golden_detector, golden_images):
    result = client.predict(image=handle_file(str(golden_images[1])), api_name="/detect")

    assert abs(result[1] - golden_detector.predict(str(golden_images[1])).score) < 1e-5
    assert "`object`" in result[2]


@pytest.mark.parametrize("kind", sorted(BAD_UPLOAD_MESSAGES))
def test_bad_uploads_get_clear_errors_and_the_app_keeps_serving(
    client, tmp_path, kind, golden_images
):
    bad = write_bad_uploads(tmp_path)[kind]

    with pytest.raises(Exception, match=BAD_UPLOAD_MESSAGES[kind]) as caught:
        client.predict(handle_file(str(bad)), "bottle", api_name="/detect")

    assert "/tmp/gradio" not in str(caught.value)
    assert client.predict(handle_file(str(golden_images[2])), "gravel", api_name="/detect")[1] > 0


def test_upload_over_the_size_limit_is_refused(client, tmp_path, golden_images):
    big = tmp_path / "big.png"
    big.write_bytes(golden_images[0].read_bytes() + b"\0" * (21 * 2**20))

    with pytest.raises(Exception, match="(?i)size|large|limit|413"):
        client.predict(handle_file(str(big)), "bottle", api_name="/detect")


def test_odd_but_valid_images_just_work(client, golden_detector, tmp_path):
    for kind, path in write_odd_images(tmp_path).items():
        score = client.predict(handle_file(str(path)), "", api_name="/detect")[1]
        assert abs(score - golden_detector.predict(str(path)).score) < 1e-5, kind


def test_eight_concurrent_clients_each_get_their_own_result(
    server_url, golden_detector, golden_images, tmp_path
):
    odd = list(write_odd_images(tmp_path).values())
    examples = sorted((REPO / "examples").glob("*.[pj][np]g"))
    images = (golden_images + odd + examples)[:8]
    names = ["bottle", "tile", "gravel", "brain", "object", "object", "object", "brick"]
    expected = [golden_detector.predict(str(p), n).score for p, n in zip(images, names)]
    scores: list[float | None] = [None] * 8
    errors: list[BaseException] = []

    def one_client(i: int) -> None:
        try:
            own = Client(server_url, verbose=False)
            scores[i] = own.predict(handle_file(str(images[i])), names[i], api_name="/detect")[1]
        except Exception as err:  # collected and reported by the test
            errors.append(err)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    assert len(set(map(str, images))) == 8
    for i in range(8):
        assert abs(scores[i] - expected[i]) < 1e-5, (images[i], scores[i], expected[i])


def test_many_images_endpoint_returns_table_and_csv(
    client, golden_detector, golden_images, tmp_path
):
    bad = write_bad_uploads(tmp_path)["empty"]
    files = [handle_file(str(golden_images[0])), handle_file(str(bad))]

    gallery, table, csv_path = client.predict(files, "bottle", api_name="/detect_many")

    rows = table["data"]
    assert abs(rows[0][2] - golden_detector.predict(str(golden_images[0]), "bottle").score) < 1e-5
    assert "empty" in rows[1][4]
    assert len(gallery) == 1 and Path(csv_path).read_text().startswith("file,class name,score")


def test_a_bad_upload_logs_one_warning_line_and_no_traceback(client, server_log, tmp_path):
    bad = write_bad_uploads(tmp_path)["truncated"]
    before = server_log.read_text()

    with pytest.raises(Exception, match="truncated"):
        client.predict(handle_file(str(bad)), "bottle", api_name="/detect")

    new = server_log.read_text()[len(before) :].splitlines()
    assert [line.split(" ")[0] for line in new if "truncated.png" in line] == ["WARNING"]
    assert not any("Traceback" in line for line in new)


def test_the_api_description_names_no_server_folder(client, golden_dir, golden_images):
    api = str(client.view_api(print_info=False, return_format="dict"))

    assert str(golden_dir) not in api and "adaclip_checkpoint.pth" in api
    with pytest.raises(Exception, match="choose one of adaclip_checkpoint.pth, all") as caught:
        client.predict(handle_file(str(golden_images[0])), "x", 0.5, "x.pth", api_name="/detect")
    assert str(golden_dir) not in str(caught.value)
