"""Shared fixtures: where the shared material lives, and the tiny golden detector."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from adaclip.detector import Detector

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """``ADACLIP_SHARED`` or ``<repo>/../shared``."""
    return Path(os.environ.get("ADACLIP_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not root.is_dir():
        pytest.fail(f"shared material not found at {root}; set ADACLIP_SHARED")
    return root


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return shared_dir / "golden"


@pytest.fixture(scope="session")
def golden(golden_dir: Path) -> dict:
    """golden.json, parsed."""
    return json.loads((golden_dir / "golden.json").read_text())


@pytest.fixture(scope="session")
def realdata_dir(shared_dir: Path) -> Path:
    root = Path(os.environ.get("ADACLIP_REALDATA", shared_dir / "realdata"))
    if not (root / "manifest.json").is_file():
        pytest.fail(f"real samples not found at {root}; set ADACLIP_REALDATA")
    return root


@pytest.fixture(scope="session")
def golden_model_args(golden_dir: Path) -> dict:
    """Keyword arguments of ``Detector.from_pretrained`` for the tiny golden model."""
    return {
        "checkpoint": str(golden_dir / "adaclip_checkpoint.pth"),
        "backbone": str(golden_dir / "ViT-T-golden.json"),
        "backbone_weights": str(golden_dir / "clip_weights.pt"),
        "image_size": 240,
        "device": "cpu",
    }


@pytest.fixture(scope="session")
def golden_cli_args(golden_model_args: dict) -> list[str]:
    """The same model as command-line options."""
    a = golden_model_args
    return [
        "--checkpoint", a["checkpoint"], "--backbone", a["backbone"],
        "--backbone-weights", a["backbone_weights"], "--image-size", "240", "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def golden_detector(golden_model_args: dict) -> Detector:
    """A detector on the golden tiny CLIP at S = 240 (shared; do not mutate)."""
    return Detector.from_pretrained(**golden_model_args)
