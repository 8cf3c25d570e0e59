"""Reference-format checkpoints: strict, safe loading and byte-compatible saving."""

from __future__ import annotations

import os

import pytest
import torch

from adaclip.checkpoint_io import (
    PREFIX,
    check_adaclip_names,
    check_state,
    read_state,
    save_checkpoint,
)
from adaclip.checkpoints import resolve_checkpoint
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


@pytest.mark.parametrize("zipped", [True, False])
def test_pickled_objects_are_refused_without_torchs_advice(tmp_path, zipped):
    path = tmp_path / "evil.pth"
    state = {"clip_model.x": torch.zeros(1), "payload": _Payload()}
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError, match="evil.pth: it contains Python objects") as info:
        read_state(path)
    assert "_Payload" in str(info.value)
    assert "weights_only" not in str(info.value)


class _Payload:
    """Any non-tensor object that weights_only loading must refuse."""


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"", "the file is empty"),
        (b"garbage" * 10, "it looks like text: 'garbagegarbagega'..."),
        (b'{"model_cfg": {"embed_dim": 64}}', "it looks like JSON text"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "it is a PNG image"),
        (bytes(range(200, 256)), "it starts with the bytes c8 c9 ca"),
        (b"\x80\x02junk" * 4, "it starts with the bytes 80 02 6a"),
    ],
)
def test_files_that_are_no_checkpoint_say_what_they_are(tmp_path, data, what):
    path = tmp_path / "bad.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        read_state(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a PyTorch or safetensors checkpoint ({what}")
    assert "Python objects" not in message and "weights_only" not in message


@pytest.mark.parametrize("data", [b"junk\n", b"\x10" + bytes(7) + b'{"a": 1}'])
def test_corrupt_safetensors_file(tmp_path, data):
    path = tmp_path / "j.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="j.safetensors is not a valid safetensors file"):
        read_state(path)


def test_truncated_safetensors_file(tmp_path, reference, expected):
    path = save_checkpoint(check_state(reference, expected, "golden"), tmp_path / "ck.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file .*re-download"):
        read_state(path)


def test_content_decides_the_format_not_the_suffix(tmp_path, reference, expected):
    path = save_checkpoint(check_state(reference, expected, "golden"), tmp_path / "ck.safetensors")
    renamed = path.rename(tmp_path / "ck.bin")
    assert read_state(renamed).keys() == reference.keys()


@pytest.mark.parametrize("name", ["weights.json", "ck.png", "ck"])
def test_local_files_must_have_a_checkpoint_suffix(tmp_path, golden_dir, name):
    path = tmp_path / name
    path.write_bytes((golden_dir / "adaclip_checkpoint.pth").read_bytes())
    match = "is not a checkpoint file: its name must end in .pth, .pt, .bin, .safetensors"
    with pytest.raises(CheckpointError, match=match):
        resolve_checkpoint(str(path))
    with pytest.raises(CheckpointError, match=match):
        read_state(path)


def test_adaclip_key_names_are_recognised(reference, golden_dir):
    check_adaclip_names(reference, "golden")
    backbone = read_state(golden_dir / "clip_weights.pt")
    with pytest.raises(CheckpointError, match="none of its 110 keys starts with 'clip_model.'"):
        check_adaclip_names(backbone, "clip_weights.pt")


def test_foreign_and_missing_key_names_are_named(reference):
    state = {k: v for k, v in reference.items() if "cls_token_layer" not in k}
    state[PREFIX + "visual.proj"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        check_adaclip_names(state, "odd.pth")
    message = str(info.value)
    assert message.startswith("odd.pth is not an AdaCLIP checkpoint")
    assert "keys no AdaCLIP checkpoint has: clip_model.visual.proj" in message
    assert "missing parts: clip_model.cls_token_layer" in message


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
