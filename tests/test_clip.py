"""The CLIP towers built without open_clip, memory-mapped weights, and page release."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU as QuickGELUOpenCLIP
from safetensors.torch import save_file
from test_exactness import compare, golden_inputs

from adaclip.backbone import cast_matmuls, load_backbone
from adaclip.checkpoint_io import read_tensors, release_mapped_pages
from adaclip.clip import CLIP, QuickGELU, known_models, model_config
from adaclip.detector import Detector
from adaclip.errors import CheckpointError


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path``."""
    total, inside = 0, False
    target = str(path.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            inside = fields[-1] == target
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def golden_config_with(golden_dir: Path, tmp_path: Path, change: dict) -> Path:
    """The golden JSON config with ``change`` applied (dicts merge into the tower configs)."""
    raw = json.loads((golden_dir / "ViT-T-golden.json").read_text())
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(raw))
    return path


def test_open_clip_configs_are_read_without_open_clip():
    assert "ViT-L-14-336" in known_models()
    config = model_config("ViT-L-14-336")
    assert (config.image_size, config.patch_size, config.embed_dim) == (336, 14, 768)
    assert (config.vision.width, config.vision.layers, config.vision.heads) == (1024, 24, 16)
    assert (config.text.width, config.text.layers, config.text.heads) == (768, 12, 12)
    assert config.vision.mlp_width == 4096 and not config.quick_gelu


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"vision_cfg": {"timm_model_name": "vit_base"}}, "vision_cfg.timm_model_name"),
        ({"text_cfg": {"hf_model_name": "bert"}}, "text_cfg.hf_model_name"),
        ({"vision_cfg": {"attentional_pool": True}}, "vision_cfg.attentional_pool"),
        ({"init_logit_bias": -10}, "init_logit_bias"),
    ],
)
def test_architectures_other_than_plain_vit_clip_are_refused(golden_dir, tmp_path, extra, named):
    path = golden_config_with(golden_dir, tmp_path, extra)
    with pytest.raises(CheckpointError, match=f"sets {named}=.*does not support"):
        model_config(str(path))


def test_quick_gelu_configs_match_open_clip(golden_model_args, golden_dir, golden, tmp_path):
    raw = json.loads((golden_dir / "ViT-T-golden.json").read_text())
    path = tmp_path / "ViT-T-golden-quickgelu.json"
    path.write_text(json.dumps({**raw, "quick_gelu": True}))
    detector = Detector.from_pretrained(**{**golden_model_args, "backbone": str(path)})
    assert isinstance(detector.model.clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)

    images, names = golden_inputs(golden_dir, golden)
    map_diff, score_diff = compare(detector.model, str(path), images[:2], names[:2])
    assert map_diff < 1e-5 and score_diff < 1e-5


def test_safetensors_weights_are_memory_mapped_and_equal(golden_model_args, tmp_path):
    state = torch.load(golden_model_args["backbone_weights"], weights_only=True)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)

    mapped = read_tensors(path, "weights", "advice", mmap=True)

    assert str(path.resolve()) in mapped_files()
    assert mapped.keys() == state.keys()
    assert all(torch.equal(mapped[k], state[k]) for k in state)
    clip = load_backbone(golden_model_args["backbone"], path, None, 240)
    reference = load_backbone(golden_model_args["backbone"], golden_model_args["backbone_weights"],
                              None, 240)  # fmt: skip
    assert all(
        torch.equal(a, b)
        for a, b in zip(clip.state_dict().values(), reference.state_dict().values())
    )


def test_misaligned_safetensors_are_read_instead_of_mapped(tmp_path):
    # A 3-byte int8 tensor first leaves the float32 one at an odd offset, which a view of
    # the mapping cannot take: the file is read the ordinary way.
    small, big = np.arange(3, dtype=np.int8), np.arange(6, dtype=np.float32)
    header = {
        "a": {"dtype": "I8", "shape": [3], "data_offsets": [0, 3]},
        "b": {"dtype": "F32", "shape": [2, 3], "data_offsets": [3, 27]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + small.tobytes() + big.tobytes())

    state = read_tensors(path, "odd", "advice", mmap=True)

    assert state["a"].tolist() == [0, 1, 2]
    assert state["b"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_released_pages_leave_memory_and_read_back_unchanged(golden_model_args):
    path = Path(golden_model_args["backbone_weights"])
    state = read_tensors(path, "weights", "advice", mmap=True)
    embedding = state["token_embedding.weight"]  # 49408 x 64 float32: about 12.6 MB
    expected = embedding.clone()
    before = resident_kib(path)

    released = release_mapped_pages([embedding], path)

    assert released > 12_000_000
    assert resident_kib(path) < before - 12_000
    assert torch.equal(embedding, expected)  # read again from the file


def test_release_keeps_pages_that_were_written_to(golden_model_args):
    path = Path(golden_model_args["backbone_weights"])
    embedding = read_tensors(path, "weights", "advice", mmap=True)["token_embedding.weight"]
    embedding[5000, 0] = 7.0  # the private mapping copies that page: it is not the file's now

    assert release_mapped_pages([embedding], path) == 0
    assert float(embedding[5000, 0]) == 7.0


def test_release_leaves_memory_that_is_not_the_file_alone(golden_model_args):
    anonymous = torch.arange(1_000_000, dtype=torch.float32)
    assert release_mapped_pages([anonymous], golden_model_args["backbone_weights"]) == 0
    assert torch.equal(anonymous, torch.arange(1_000_000, dtype=torch.float32))


def test_bf16_cast_drops_the_float32_pages_of_the_blocks(golden_model_args):
    path = Path(golden_model_args["backbone_weights"])
    clip = load_backbone(golden_model_args["backbone"], path, None, 240)
    for block in clip.visual.transformer.resblocks:  # touch every block weight
        float(sum(p.sum() for p in block.parameters()))
    before = resident_kib(path)
    expected = clip.visual.transformer.resblocks[0].mlp.c_fc.weight.to(torch.bfloat16)

    cast_matmuls(clip, torch.bfloat16)

    assert resident_kib(path) < before
    assert torch.equal(clip.visual.transformer.resblocks[0].mlp.c_fc.weight, expected)
    assert clip.token_embedding.weight.dtype == torch.float32  # stays mapped, mostly unread


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"vision_cfg": [1, 2]}, "must be objects"),
        ({"vision_cfg": {"width": "128"}}, "vision_cfg.width='128'"),
        ({"vision_cfg": {"patch_size": [16, 16]}}, r"vision_cfg.patch_size=\[16, 16\]"),
        ({"text_cfg": {"layers": 0}}, "text_cfg.layers=0"),
        ({"text_cfg": {"mlp_ratio": "4"}}, "text_cfg.mlp_ratio='4'"),
        ({"embed_dim": 64.5}, "embed_dim=64.5"),
    ],
)
def test_malformed_sizes_are_explained(golden_dir, tmp_path, change, named):
    path = golden_config_with(golden_dir, tmp_path, change)
    with pytest.raises(CheckpointError, match=named):
        model_config(str(path))


def test_every_accepted_open_clip_config_lays_out_like_open_clip():
    # Built on the meta device: names, shapes and activations only, no weights.
    accepted = []
    for name in known_models():
        try:
            config = model_config(name)
        except CheckpointError:
            continue
        accepted.append(name)
        with torch.device("meta"):
            ours = CLIP(config)
            theirs = open_clip.create_model(name, pretrained=None, device="meta")
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }, name
        quick = isinstance(theirs.visual.transformer.resblocks[0].mlp.gelu, QuickGELUOpenCLIP)
        assert config.quick_gelu == quick, name
    assert "ViT-L-14-336" in accepted and len(accepted) >= 20


def test_random_backbone_is_seeded_and_complete():
    config = model_config("ViT-B-16")
    torch.manual_seed(0)
    first = CLIP(config).init_random()
    torch.manual_seed(0)
    second = CLIP(config).init_random()
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
        assert torch.isfinite(a).all(), name
    assert bool((first.visual.ln_pre.weight == 1.0).all())
