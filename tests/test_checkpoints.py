"""Reference-format checkpoints: strict, safe loading and byte-compatible saving."""

from __future__ import annotations

import os

import pytest
import torch

from adaclip.checkpoints import PREFIX, check_state, read_state, save_checkpoint
from adaclip.errors import CheckpointError


@pytest.fixture(scope="module")
def reference(golden_dir):
    return read_state(golden_dir / "adaclip_checkpoint.pth")


@pytest.fixture(scope="module")
def expected(golden_detector):
    return golden_detector.model.learnable_state_dict()


def test_reference_checkpoint_has_exactly_the_model_keys(reference, expected):
    assert {PREFIX + k for k in expected} == set(reference)
    loaded = check_state(reference, expected, "golden")
    assert all(loaded[k].shape == v.shape for k, v in expected.items())


def test_missing_unexpected_and_misshapen_keys_are_named(reference, expected):
    state = dict(reference)
    del state[PREFIX + "cls_token_layer.head.0.bias"]
    state[PREFIX + "extra.weight"] = torch.zeros(1)
    state[PREFIX + "visual_prompter.static_prompts.1"] = torch.zeros(5, 7)
    with pytest.raises(CheckpointError) as info:
        check_state(state, expected, "my.pth")
    message = str(info.value)
    assert "missing keys: clip_model.cls_token_layer.head.0.bias" in message
    assert "unexpected keys: clip_model.extra.weight" in message
    assert "clip_model.visual_prompter.static_prompts.1 (5, 7) (model needs (5, 128))" in message


def test_shape_mismatch_points_at_the_backbone(reference, expected):
    state = {k: torch.zeros(*v.shape[:-1], v.shape[-1] * 2) for k, v in reference.items()}
    with pytest.raises(CheckpointError, match="do not fit the chosen backbone"):
        check_state(state, expected, "big.pth")


def test_backbone_weights_are_not_an_adaclip_checkpoint(golden_dir, expected):
    state = read_state(golden_dir / "clip_weights.pt")
    with pytest.raises(CheckpointError, match="not an AdaCLIP checkpoint.*--backbone-weights"):
        check_state(state, expected, "clip_weights.pt")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"clip_model.x": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_state(path)


class _Payload:
    """Any non-tensor object that weights_only loading must refuse."""


@pytest.mark.parametrize("data", [b"", b"garbage" * 10])
def test_corrupt_files(tmp_path, data):
    path = tmp_path / "bad.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="bad.pth"):
        read_state(path)


def test_truncated_checkpoint(tmp_path, golden_dir):
    data = (golden_dir / "adaclip_checkpoint.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state(path)


def test_non_dict_checkpoint(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="flat dict of tensors"):
        read_state(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_round_trip(tmp_path, expected, reference, suffix):
    path = save_checkpoint(check_state(reference, expected, "golden"), tmp_path / f"ck{suffix}")
    again = read_state(path)
    assert set(again) == set(reference)
    for key, tensor in reference.items():
        assert torch.equal(again[key], tensor)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # safetensors alone writes 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
