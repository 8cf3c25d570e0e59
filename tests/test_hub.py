"""Checkpoints and backbones from a Hub look-alike on 127.0.0.1, via the real huggingface_hub."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hub_server import HubServer
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download
from huggingface_hub.utils import _http

from adaclip import checkpoints, cli
from adaclip.backbone import load_backbone, register_config
from adaclip.checkpoint_io import read_state, save_checkpoint
from adaclip.checkpoints import (
    CHECKPOINTS,
    HubFile,
    PublishedCheckpoint,
    cached_backbone,
    cached_checkpoint,
    cached_status,
    fetch_backbone,
    fetch_checkpoint,
    file_sha256,
    parse_hub_spec,
    resolve_checkpoint,
)
from adaclip.detector import Detector
from adaclip.errors import CheckpointError, HubError

GOLDEN_SPEC = "hf://tester/adaclip-golden/adaclip_checkpoint.pth"
OPENAI_L14_336 = "timm/vit_large_patch14_clip_336.openai"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running Hub look-alike, with HF_ENDPOINT and an empty HF_HOME pointing at it."""
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        # huggingface_hub asks its import-time endpoint for an agent registry; not from tests.
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
        yield server


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skips huggingface_hub's sleeps between retries, so failure tests take no time."""
    instant = SimpleNamespace(sleep=lambda seconds: None)
    monkeypatch.setattr(_http, "time", instant)
    monkeypatch.setattr(file_download, "time", instant)


@pytest.fixture
def golden_bytes(golden_dir: Path) -> bytes:
    return (golden_dir / "adaclip_checkpoint.pth").read_bytes()


@pytest.fixture
def golden_entry(monkeypatch: pytest.MonkeyPatch, golden_dir: Path) -> PublishedCheckpoint:
    """A published-checkpoint entry whose sha256 is the golden checkpoint's."""
    entry = PublishedCheckpoint(
        name="golden",
        trained_on="nothing (random weights)",
        space_file=HubFile("tester/AdaCLIP", "weights/golden.pth", repo_type="space"),
        mirror_file=HubFile("tester/adaclip-mirror", "golden.pth"),
        sha256=file_sha256(golden_dir / "adaclip_checkpoint.pth"),
        size_mb=0.4,
    )
    monkeypatch.setitem(CHECKPOINTS, "golden", entry)
    return entry


def serve(hub: HubServer, file: HubFile, data: bytes) -> None:
    hub.add(file.repo_id, file.filename, data, repo_type=file.repo_type)


def tampered(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def test_parse_hub_spec_reads_repo_types_and_revisions() -> None:
    assert parse_hub_spec("hf://a/b/c/d.pth") == HubFile("a/b", "c/d.pth")
    assert parse_hub_spec("hf://spaces/a/b/w/x.pt") == HubFile("a/b", "w/x.pt", "space")
    assert parse_hub_spec("hf://datasets/a/b/x.safetensors@v1") == HubFile(
        "a/b", "x.safetensors", "dataset", "v1"
    )
    assert str(HubFile("a/b", "w/x.pt", "space", "dev")) == "hf://spaces/a/b/w/x.pt@dev"
    assert parse_hub_spec("hf://a/b/x.pth@refs/pr/1") == HubFile(
        "a/b", "x.pth", "model", "refs/pr/1"
    )
    with pytest.raises(CheckpointError, match="hf://OWNER/REPO/PATH"):
        parse_hub_spec("hf://just-a-repo/x.pth")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("hf://my org/g/x.pth", "'my org/g' is not a valid OWNER/REPO name"),
        ("hf://tester/g/../../x.pth", "the path '../../x.pth' must be relative"),
        ("hf://tester/g/./x.pth", "the path './x.pth' must be relative"),
        ("hf://tester/g/x.pth@", "the revision '' after '@'"),
        ("hf://tester/g/x.pth@a b", "the revision 'a b' after '@'"),
        ("hf://tester/g/x.pth@../main", "the revision '../main' after '@'"),
    ],
)
def test_invalid_specs_are_refused_before_any_request(
    hub: HubServer, spec: str, problem: str
) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(spec)

    assert not isinstance(info.value, HubError)
    assert f"cannot read the Hub spec {spec!r}: {problem}" in str(info.value)
    assert "hf://spaces/OWNER/REPO/PATH" in str(info.value)
    assert hub.requests == []


def test_revision_with_slashes_is_downloaded(hub: HubServer, golden_bytes: bytes) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes, revision="refs/pr/1")

    path = resolve_checkpoint(GOLDEN_SPEC + "@refs/pr/1")

    assert path.read_bytes() == golden_bytes
    assert hub.count("GET", "/resolve/refs%2Fpr%2F1/") == 1


def test_download_then_cache_then_offline(
    hub: HubServer,
    golden_bytes: bytes,
    golden_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)

    first = resolve_checkpoint(GOLDEN_SPEC)
    assert first.read_bytes() == golden_bytes
    assert first.is_relative_to(tmp_path / "hf" / "hub")
    assert read_state(first).keys() == read_state(golden_dir / "adaclip_checkpoint.pth").keys()
    assert resolve_checkpoint(GOLDEN_SPEC) == first
    assert hub.count("GET") == 1

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    assert resolve_checkpoint(GOLDEN_SPEC) == first
    assert len(hub.requests) == before


def test_spaces_datasets_revisions_and_safetensors(
    hub: HubServer, golden_dir: Path, golden_bytes: bytes, tmp_path: Path
) -> None:
    state = read_state(golden_dir / "adaclip_checkpoint.pth")
    learnable = {k.removeprefix("clip_model."): v for k, v in state.items()}
    safe = save_checkpoint(learnable, tmp_path / "golden.safetensors").read_bytes()
    hub.add("tester/data", "ckpt/golden.safetensors", safe, repo_type="dataset")
    hub.add("tester/demo", "weights/golden.pth", golden_bytes, repo_type="space", revision="v1")

    from_dataset = read_state(
        resolve_checkpoint("hf://datasets/tester/data/ckpt/golden.safetensors")
    )
    from_space = resolve_checkpoint("hf://spaces/tester/demo/weights/golden.pth@v1")

    assert all(torch.equal(from_dataset[k], state[k]) for k in state)
    assert from_space.read_bytes() == golden_bytes
    assert hub.count("HEAD", "/datasets/tester/data/resolve/main/") == 1
    assert hub.count("HEAD", "/spaces/tester/demo/resolve/v1/") == 1


def test_golden_detector_from_the_hub_matches_local(
    hub: HubServer, golden_bytes: bytes, golden_model_args: dict, golden_detector: Detector
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    detector = Detector.from_pretrained(**{**golden_model_args, "checkpoint": GOLDEN_SPEC})
    image = torch.rand(1, 3, 240, 240)

    scores, maps = detector.run(image, ["bottle"])
    expected_scores, expected_maps = golden_detector.run(image, ["bottle"])

    assert scores.tolist() == expected_scores.tolist()
    assert (maps == expected_maps).all()


def test_training_can_start_from_a_hub_checkpoint(
    hub: HubServer, golden_bytes: bytes, golden_model_args: dict, golden_detector: Detector
) -> None:
    from adaclip.train import TrainSettings, build_model

    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    settings = TrainSettings(
        train=("unused",), val="unused", output="unused", init=GOLDEN_SPEC, image_size=240,
        backbone=golden_model_args["backbone"],
        backbone_weights=golden_model_args["backbone_weights"],
    )  # fmt: skip
    model = build_model(settings)
    for key, value in golden_detector.model.learnable_state_dict().items():
        assert torch.equal(model.learnable_state_dict()[key], value), key


def test_published_checkpoint_is_verified_and_listed_as_cached(
    hub: HubServer, golden_entry: PublishedCheckpoint, golden_bytes: bytes
) -> None:
    serve(hub, golden_entry.space_file, golden_bytes)
    assert cached_checkpoint(golden_entry) is None

    path = resolve_checkpoint("golden")

    assert path.read_bytes() == golden_bytes
    assert cached_checkpoint(golden_entry) == path
    assert hub.count("GET", "/spaces/tester/AdaCLIP/") == 1
    assert hub.count("HEAD", "adaclip-mirror") == 0
    before = len(hub.requests)
    assert resolve_checkpoint("golden") == path
    assert len(hub.requests) == before


def test_corrupted_cached_copy_is_refused_and_fetched_again(
    hub: HubServer,
    golden_entry: PublishedCheckpoint,
    golden_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    serve(hub, golden_entry.space_file, golden_bytes)
    path = resolve_checkpoint("golden")
    path.resolve().write_bytes(tampered(golden_bytes))

    with caplog.at_level(logging.WARNING, logger="adaclip"):
        again = resolve_checkpoint("golden")

    assert again.read_bytes() == golden_bytes
    assert "cached copy refused" in caplog.text and "failed its checksum" in caplog.text
    assert hub.count("GET", "/spaces/tester/AdaCLIP/") == 2


def test_tampered_published_checkpoint_is_refused_and_forgotten(
    hub: HubServer, golden_entry: PublishedCheckpoint, golden_bytes: bytes, tmp_path: Path
) -> None:
    serve(hub, golden_entry.space_file, tampered(golden_bytes))

    with pytest.raises(CheckpointError, match="failed its checksum: sha256") as info:
        resolve_checkpoint("golden")

    assert not isinstance(info.value, HubError)
    assert golden_entry.sha256 in str(info.value)
    assert "python -m adaclip download --checkpoint golden" in str(info.value)
    assert f"{hub.url}/tester/adaclip-mirror/resolve/main/golden.pth" in str(info.value)
    assert cached_checkpoint(golden_entry) is None
    blobs = list((tmp_path / "hf" / "hub").glob("spaces--tester--AdaCLIP/blobs/*"))
    assert blobs == []


def test_tampered_space_falls_back_to_an_intact_mirror(
    hub: HubServer,
    golden_entry: PublishedCheckpoint,
    golden_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    serve(hub, golden_entry.space_file, tampered(golden_bytes))
    serve(hub, golden_entry.mirror_file, golden_bytes)

    with caplog.at_level(logging.WARNING, logger="adaclip"):
        path = resolve_checkpoint("golden")

    assert path.read_bytes() == golden_bytes
    assert "adaclip-mirror" in str(path)
    assert "checksum" in caplog.text


@pytest.mark.parametrize("space_problem", ["missing", "500"])
def test_failing_space_falls_back_to_the_mirror(
    hub: HubServer,
    golden_entry: PublishedCheckpoint,
    golden_bytes: bytes,
    space_problem: str,
    no_backoff: None,
) -> None:
    serve(hub, golden_entry.mirror_file, golden_bytes)
    if space_problem == "500":
        serve(hub, golden_entry.space_file, golden_bytes)
        hub.fail(golden_entry.space_file.repo_id, "weights/golden.pth", "500", "space")

    path = resolve_checkpoint("golden")

    assert path.read_bytes() == golden_bytes
    assert hub.count("GET", "/tester/adaclip-mirror/") == 1
    assert hub.count("HEAD", "/spaces/tester/AdaCLIP/") >= 1


def test_offline_mode_finds_a_mirror_copy_without_requests(
    hub: HubServer,
    golden_entry: PublishedCheckpoint,
    golden_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve(hub, golden_entry.mirror_file, golden_bytes)
    online = resolve_checkpoint("golden")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)

    assert resolve_checkpoint("golden") == online
    assert len(hub.requests) == before


def test_offline_mode_without_cache_says_what_to_do(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1 forbids downloading") as info:
        resolve_checkpoint("all")

    assert "python -m adaclip download" in str(info.value)
    assert str(info.value).count("Unset HF_HUB_OFFLINE") == 1
    assert hub.requests == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hf://tester/absent/x.pth", "model repo tester/absent was not found"),
        ("hf://spaces/tester/absent/x.pth", "space repo tester/absent was not found"),
        ("hf://tester/adaclip-golden/other.pth", "has no file 'other.pth' at revision main"),
        (GOLDEN_SPEC + "@v9", "revision 'v9' does not exist"),
    ],
)
def test_not_found_errors_name_what_is_missing(
    hub: HubServer, golden_bytes: bytes, spec: str, message: str
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)

    with pytest.raises(HubError, match=message):
        resolve_checkpoint(spec)


def test_server_error_is_explained(hub: HubServer, golden_bytes: bytes, no_backoff: None) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    hub.fail("tester/adaclip-golden", "adaclip_checkpoint.pth", "500")

    with pytest.raises(
        HubError, match=r"the Hub at .* answered HTTP 500 \(a server error\)"
    ) as info:
        resolve_checkpoint(GOLDEN_SPEC)

    assert "Try again later, use the mirror" in str(info.value)
    assert "could not reach" not in str(info.value) and "connection" not in str(info.value)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("truncate", "arrived truncated"),
        ("drop", "closed the connection before the whole file arrived"),
    ],
)
def test_cut_downloads_are_refused_and_not_kept(
    hub: HubServer,
    golden_bytes: bytes,
    tmp_path: Path,
    mode: str,
    message: str,
    no_backoff: None,
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    hub.fail("tester/adaclip-golden", "adaclip_checkpoint.pth", mode)

    with pytest.raises(HubError, match=message):
        resolve_checkpoint(GOLDEN_SPEC)

    kept = [p for p in (tmp_path / "hf" / "hub").rglob("*") if p.is_file() and p.stat().st_size]
    assert [p for p in kept if "blobs" in p.parts or "snapshots" in p.parts] == []


def test_unreachable_hub_is_explained(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch, no_backoff: None
) -> None:
    with HubServer() as closed:
        url = closed.url
    monkeypatch.setenv("HF_ENDPOINT", url)

    with pytest.raises(HubError, match=r"could not reach the Hub .*\(could not connect\)"):
        resolve_checkpoint(GOLDEN_SPEC)


def test_timeout_is_explained(
    hub: HubServer, golden_bytes: bytes, monkeypatch: pytest.MonkeyPatch, no_backoff: None
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    hub.fail("tester/adaclip-golden", "adaclip_checkpoint.pth", "hang")
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 0.2)
    monkeypatch.setattr(file_download, "_ETAG_RETRY_TIMEOUT", 0.2)

    with pytest.raises(HubError, match="timed out"):
        resolve_checkpoint(GOLDEN_SPEC)


def test_concurrent_first_requests_download_once(hub: HubServer, golden_bytes: bytes) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    hub.fail("tester/adaclip-golden", "adaclip_checkpoint.pth", "slow")
    paths: list[Path] = []

    threads = [
        threading.Thread(target=lambda: paths.append(resolve_checkpoint(GOLDEN_SPEC)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(paths) == 4 and len(set(paths)) == 1
    assert paths[0].read_bytes() == golden_bytes
    assert hub.count("GET") == 1


def test_non_checkpoint_names_are_refused_before_any_request(hub: HubServer) -> None:
    with pytest.raises(CheckpointError, match="must end in .pth, .pt, .bin, .safetensors"):
        resolve_checkpoint("hf://tester/adaclip-golden/README.md")
    with pytest.raises(CheckpointError, match="not a published name .*all, mvtec-colondb"):
        resolve_checkpoint("no-such-checkpoint")
    assert hub.requests == []


def test_hub_file_that_is_not_adaclip_is_explained(
    hub: HubServer, golden_dir: Path, golden_model_args: dict
) -> None:
    hub.add("tester/clip", "clip_weights.pt", (golden_dir / "clip_weights.pt").read_bytes())

    with pytest.raises(CheckpointError, match="is not an AdaCLIP checkpoint"):
        Detector.from_pretrained(
            **{**golden_model_args, "checkpoint": "hf://tester/clip/clip_weights.pt"}
        )


def test_hub_checkpoint_with_wrong_shapes_is_explained(
    hub: HubServer, golden_dir: Path, golden_model_args: dict, tmp_path: Path
) -> None:
    state = read_state(golden_dir / "adaclip_checkpoint.pth")
    key = next(k for k, v in state.items() if v.ndim >= 2)
    state[key] = torch.cat([state[key], state[key]], dim=-1)  # (..., C) -> (..., 2C)
    torch.save(state, tmp_path / "wide.pth")
    hub.add("tester/wide", "wide.pth", (tmp_path / "wide.pth").read_bytes())

    with pytest.raises(CheckpointError, match="wrong shapes: .*do not fit the chosen backbone"):
        Detector.from_pretrained(**{**golden_model_args, "checkpoint": "hf://tester/wide/wide.pth"})


def test_backbone_comes_from_open_clips_hub_repo(
    hub: HubServer, golden_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = (golden_dir / "clip_weights.pt").read_bytes()
    hub.add(OPENAI_L14_336, "open_clip_pytorch_model.bin", weights)

    path = fetch_backbone("ViT-L-14-336", "openai")

    assert path.read_bytes() == weights
    assert cached_backbone("ViT-L-14-336", "openai") == path
    assert hub.count("HEAD", "open_clip_model.safetensors") == 1
    assert hub.count("GET") == 1
    before = len(hub.requests)
    assert fetch_backbone("ViT-L-14-336", "openai") == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_backbone("ViT-L-14-336", "openai") == path
    assert len(hub.requests) == before


def test_load_backbone_by_tag_downloads_through_checkpoints(
    hub: HubServer, golden_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(golden_dir / "ViT-T-golden.json")
    name = register_config(config)
    monkeypatch.setitem(checkpoints.BACKBONE_HUB, (name, "golden"), "tester/golden-clip/")
    hub.add(
        "tester/golden-clip",
        "open_clip_pytorch_model.bin",
        (golden_dir / "clip_weights.pt").read_bytes(),
    )

    from_hub = load_backbone(name, pretrained="golden", image_size=240)
    local = load_backbone(config, weights=golden_dir / "clip_weights.pt", image_size=240)

    assert all(
        torch.equal(a, b)
        for a, b in zip(from_hub.state_dict().values(), local.state_dict().values())
    )
    assert hub.count("GET", "/tester/golden-clip/") == 1


def test_unknown_backbone_tag_is_explained(hub: HubServer) -> None:
    with pytest.raises(
        CheckpointError, match="no Hub weights for backbone 'ViT-L-14-336' with tag 'x'"
    ):
        fetch_backbone("ViT-L-14-336", "x")
    assert hub.requests == []


def test_download_command_fetches_and_prints_paths(
    hub: HubServer,
    golden_bytes: bytes,
    golden_dir: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    hub.add(OPENAI_L14_336, "open_clip_model.safetensors", b"not really weights")

    status = cli.main(["download", "--checkpoint", GOLDEN_SPEC, "--backbone", "ViT-L-14-336"])

    out = capsys.readouterr().out
    assert status == 0
    assert str(resolve_checkpoint(GOLDEN_SPEC)) in out
    assert "open_clip_model.safetensors" in out
    assert hub.count("GET") == 2


def test_download_command_refuses_tampered_all(
    hub: HubServer, golden_bytes: bytes, capsys: pytest.CaptureFixture
) -> None:
    entry = CHECKPOINTS["all"]
    serve(hub, entry.space_file, golden_bytes)
    serve(hub, entry.mirror_file, golden_bytes)

    status = cli.main(["download", "--checkpoint", "all"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("failed its checksum") == 2
    assert entry.sha256 in err


def test_checkpoints_command_lists_names_and_cache_state(
    hub: HubServer,
    golden_entry: PublishedCheckpoint,
    golden_bytes: bytes,
    capsys: pytest.CaptureFixture,
) -> None:
    serve(hub, golden_entry.mirror_file, golden_bytes)
    resolve_checkpoint("golden")
    before = len(hub.requests)

    status = cli.main(["checkpoints"])

    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.split()}
    assert status == 0
    assert len(hub.requests) == before
    assert "MVTec AD + ColonDB" in rows["mvtec-colondb"] and "42.7 MB" in rows["mvtec-colondb"]
    assert rows["all"].rstrip().endswith("no")
    assert rows["golden"].rstrip().endswith("yes")


def test_hf_hub_cache_wins_over_hf_home(
    hub: HubServer, golden_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))

    path = resolve_checkpoint(GOLDEN_SPEC)

    assert path.is_relative_to(tmp_path / "elsewhere")
    assert not (tmp_path / "hf" / "hub").exists()


NOT_CHECKPOINTS = [
    (b'{"model_cfg": {"embed_dim": 64}}', "it looks like JSON text"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "it is a PNG image"),
    (bytes(range(256)), "it starts with the bytes 00 01 02"),
]


@pytest.mark.parametrize(("data", "what"), NOT_CHECKPOINTS)
def test_hub_file_that_is_no_checkpoint_says_what_it_is(
    hub: HubServer, data: bytes, what: str
) -> None:
    hub.add("tester/g", "x.pth", data)

    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("hf://tester/g/x.pth")

    message = str(info.value)
    assert message.startswith("hf://tester/g/x.pth (cached at ")
    assert f"is not a PyTorch or safetensors checkpoint ({what}" in message
    assert "Python objects" not in message and "weights_only" not in message
    assert "--force" not in message  # a fresh download: fetching it again would not help


def test_damaged_cached_hub_file_names_its_path_and_force(
    hub: HubServer, golden_bytes: bytes
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    path = resolve_checkpoint(GOLDEN_SPEC)
    path.resolve().write_bytes(golden_bytes[: len(golden_bytes) // 2])

    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(GOLDEN_SPEC)

    assert f"(cached at {path})" in str(info.value)
    assert f"python -m adaclip download --force --checkpoint {GOLDEN_SPEC}" in str(info.value)
    assert fetch_checkpoint(GOLDEN_SPEC, force=True)[0].read_bytes() == golden_bytes
    assert hub.count("GET") == 2


def test_force_downloads_a_cached_file_again(hub: HubServer, golden_bytes: bytes) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    first = resolve_checkpoint(GOLDEN_SPEC)

    assert resolve_checkpoint(GOLDEN_SPEC, force=True) == first
    assert hub.count("GET") == 2


def test_force_downloads_a_published_checkpoint_again(
    hub: HubServer, golden_entry: PublishedCheckpoint, golden_bytes: bytes
) -> None:
    serve(hub, golden_entry.space_file, golden_bytes)
    path = resolve_checkpoint("golden")

    assert resolve_checkpoint("golden", force=True) == path
    assert hub.count("GET", "/spaces/tester/AdaCLIP/") == 2


def test_force_is_refused_offline(
    hub: HubServer, golden_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    resolve_checkpoint(GOLDEN_SPEC)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1 forbids network access"):
        resolve_checkpoint(GOLDEN_SPEC, force=True)


def test_fetch_checkpoint_refuses_a_backbone_by_its_key_names(
    hub: HubServer, golden_dir: Path, tmp_path: Path
) -> None:
    hub.add("tester/g", "backbone.pth", (golden_dir / "clip_weights.pt").read_bytes())
    local = tmp_path / "backbone.pt"
    local.write_bytes((golden_dir / "clip_weights.pt").read_bytes())

    with pytest.raises(CheckpointError, match="is not an AdaCLIP checkpoint: none of its 110"):
        fetch_checkpoint("hf://tester/g/backbone.pth")
    with pytest.raises(CheckpointError, match="backbone.pt is not an AdaCLIP checkpoint"):
        fetch_checkpoint(local)


def test_fetch_checkpoint_refuses_foreign_keys(
    hub: HubServer, golden_dir: Path, tmp_path: Path
) -> None:
    state = read_state(golden_dir / "adaclip_checkpoint.pth")
    state["clip_model.visual.proj"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "odd.pth")
    hub.add("tester/g", "odd.pth", (tmp_path / "odd.pth").read_bytes())

    with pytest.raises(CheckpointError, match="keys no AdaCLIP checkpoint has: clip_model.visual"):
        fetch_checkpoint("hf://tester/g/odd.pth")


def test_fetch_checkpoint_returns_path_and_tensors(hub: HubServer, golden_bytes: bytes) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)

    path, state = fetch_checkpoint(GOLDEN_SPEC)

    assert path == resolve_checkpoint(GOLDEN_SPEC)
    assert len(state) == 38 and all(k.startswith("clip_model.") for k in state)


def test_download_command_refuses_a_backbone_as_checkpoint(
    hub: HubServer, golden_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    hub.add("tester/g", "backbone.pth", (golden_dir / "clip_weights.pt").read_bytes())

    status = cli.main(["download", "--checkpoint", "hf://tester/g/backbone.pth"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: hf://tester/g/backbone.pth (cached at ")
    assert "is not an AdaCLIP checkpoint" in err and "--backbone-weights" in err


def test_cached_status_verifies_the_digest(
    hub: HubServer, golden_entry: PublishedCheckpoint, golden_bytes: bytes
) -> None:
    serve(hub, golden_entry.mirror_file, golden_bytes)
    assert cached_status(golden_entry) == "no"
    path = resolve_checkpoint("golden")
    assert cached_status(golden_entry) == "yes"

    path.resolve().write_bytes(tampered(golden_bytes))

    assert cached_status(golden_entry) == "corrupt (sha256 mismatch; re-downloaded on next use)"
    assert path.exists()  # listing changes nothing
    assert resolve_checkpoint("golden").read_bytes() == golden_bytes
    assert cached_status(golden_entry) == "yes"


def test_one_failing_source_warns_once_and_briefly(
    hub: HubServer,
    golden_entry: PublishedCheckpoint,
    golden_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
    no_backoff: None,
) -> None:
    serve(hub, golden_entry.mirror_file, golden_bytes)

    with caplog.at_level(logging.WARNING, logger="adaclip"):
        resolve_checkpoint("golden")

    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("adaclip")]
    assert len(warnings) == 1
    assert "space repo tester/AdaCLIP was not found" in warnings[0]
    assert warnings[0].endswith("trying hf://tester/adaclip-mirror/golden.pth next")
    assert "local file" not in warnings[0]


def test_checkpoints_command_shows_a_corrupt_cached_copy(
    hub, golden_entry, golden_bytes, capsys
) -> None:
    serve(hub, golden_entry.mirror_file, golden_bytes)
    resolve_checkpoint("golden").resolve().write_bytes(tampered(golden_bytes))
    assert cli.main(["checkpoints"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.split()}
    assert rows["golden"].rstrip().endswith("corrupt (sha256 mismatch; re-downloaded on next use)")


def test_download_force_fetches_again(hub, golden_bytes) -> None:
    hub.add("tester/adaclip-golden", "adaclip_checkpoint.pth", golden_bytes)
    assert cli.main(["download", "--checkpoint", GOLDEN_SPEC]) == 0
    assert cli.main(["download", "--force", "--checkpoint", GOLDEN_SPEC]) == 0
    assert hub.count("GET") == 2
