"""`adaclip predict` with weights from a Hub look-alike on 127.0.0.1, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_server import HubServer

from adaclip.checkpoints import CHECKPOINTS

GOLDEN_SPEC = "hf://tester/adaclip-golden/adaclip_checkpoint.pth"
TOL = 1e-4


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def hub_env(hub: HubServer, home: Path, offline: bool = False) -> dict[str, str]:
    """The environment of a user whose Hugging Face cache is ``home`` and Hub is ``hub``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), NO_PROXY="127.0.0.1,localhost")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def predict(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "adaclip", "predict", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)


def golden_predict_args(golden_dir: Path, golden: dict, output: Path) -> list[str]:
    """All golden images with their class names, the golden tiny backbone, raw maps."""
    args = [str(golden_dir / case["image"]) for case in golden["cases"]]
    for case in golden["cases"]:
        args += ["--class-name", case["class_name"]]
    return [
        *args,
        "--checkpoint", GOLDEN_SPEC,
        "--backbone", str(golden_dir / "ViT-T-golden.json"),
        "--backbone-weights", str(golden_dir / "clip_weights.pt"),
        "--image-size", "240", "--device", "cpu", "--raw-maps", "--output", str(output),
    ]  # fmt: skip


def assert_golden_numbers(output: Path, golden_dir: Path, golden: dict) -> None:
    rows = json.loads((output / "results.json").read_text())["results"]
    assert len(rows) == len(golden["cases"])
    for row, case in zip(rows, golden["cases"]):
        assert abs(row["score"] - case["expected_score"]) <= TOL
        expected = np.load(golden_dir / case["expected_map"])
        assert np.abs(np.load(output / row["map"]) - expected).max() <= TOL


def test_predict_from_the_hub_then_offline_reproduces_golden(
    hub: HubServer, golden_dir: Path, golden: dict, tmp_path: Path
) -> None:
    hub.add(
        "tester/adaclip-golden",
        "adaclip_checkpoint.pth",
        (golden_dir / "adaclip_checkpoint.pth").read_bytes(),
    )
    home = tmp_path / "hf"

    online = predict(golden_predict_args(golden_dir, golden, tmp_path / "on"), hub_env(hub, home))

    assert online.returncode == 0, online.stderr
    assert_golden_numbers(tmp_path / "on", golden_dir, golden)
    assert hub.count("GET", "/tester/adaclip-golden/") == 1
    before = len(hub.requests)

    args = golden_predict_args(golden_dir, golden, tmp_path / "off")
    offline = predict(args, hub_env(hub, home, offline=True))

    assert offline.returncode == 0, offline.stderr
    assert_golden_numbers(tmp_path / "off", golden_dir, golden)
    assert len(hub.requests) == before


def test_published_checkpoint_with_wrong_bytes_exits_with_checksum_message(
    hub: HubServer, golden_dir: Path, golden: dict, tmp_path: Path
) -> None:
    entry = CHECKPOINTS["all"]
    wrong = (golden_dir / "adaclip_checkpoint.pth").read_bytes()
    hub.add(entry.space_file.repo_id, entry.space_file.filename, wrong, repo_type="space")
    hub.add(entry.mirror_file.repo_id, entry.mirror_file.filename, wrong)
    args = golden_predict_args(golden_dir, golden, tmp_path / "out")
    args[args.index(GOLDEN_SPEC)] = "all"

    done = predict(args, hub_env(hub, tmp_path / "hf"))

    assert done.returncode != 0
    assert "failed its checksum" in done.stderr and entry.sha256 in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def adaclip(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "adaclip", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)


def test_offline_without_cache_gives_its_advice_once(hub: HubServer, tmp_path: Path) -> None:
    done = adaclip(["download", "--checkpoint", "all"], hub_env(hub, tmp_path / "hf", True))

    assert done.returncode == 2
    assert done.stderr.startswith("error: the published checkpoint 'all' has no intact copy")
    assert done.stderr.count("Unset HF_HUB_OFFLINE") == 1
    assert "WARNING" not in done.stderr and "Traceback" not in done.stderr
    assert hub.requests == []


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("j.safetensors", b"junk\n", "j.safetensors is not a valid safetensors file"),
        ("cfg.pth", b'{"embed_dim": 64}', "cfg.pth is not a PyTorch or safetensors checkpoint"),
        ("cfg.json", b'{"embed_dim": 64}', "cfg.json is not a checkpoint file"),
    ],
)
def test_predict_with_a_file_that_is_no_checkpoint_exits_with_a_message(
    hub: HubServer, golden_dir: Path, golden: dict, tmp_path: Path, name, data, message
) -> None:
    (tmp_path / name).write_bytes(data)
    args = golden_predict_args(golden_dir, golden, tmp_path / "out")
    args[args.index(GOLDEN_SPEC)] = str(tmp_path / name)

    done = predict(args, hub_env(hub, tmp_path / "hf"))

    assert done.returncode == 2
    assert "error: " in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr and "weights_only" not in done.stderr
