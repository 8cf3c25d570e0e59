"""Config round-trip, prompt ensemble, backbone resizing and rendering helpers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from adaclip import render
from adaclip.backbone import load_backbone
from adaclip.config import AdaCLIPConfig
from adaclip.errors import AdaCLIPError, CheckpointError
from adaclip.prompts import sentences, tokenize_class


def test_config_json_round_trip():
    config = AdaCLIPConfig(image_size=240, hsf_alpha=0.3, use_hsf=False)
    assert AdaCLIPConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown AdaCLIPConfig keys \\['bogus'\\]"):
        AdaCLIPConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="hsf_alpha must lie in \\[0, 1\\]; got 2"):
        AdaCLIPConfig(hsf_alpha=2)
    with pytest.raises(AdaCLIPError, match="num_output_layers must be at least 1; got 0"):
        AdaCLIPConfig(num_output_layers=0)
    with pytest.raises(AdaCLIPError, match="map_sigma must be at least 0"):
        AdaCLIPConfig(map_sigma=float("nan"))


def test_sentence_ensemble():
    normal, abnormal = sentences("metal-nut")
    assert len(normal) == 28 and len(abnormal) == 20
    assert "a bad photo of a flawless metal nut." in normal
    assert "a cropped photo of the metal nut with damage." in abnormal
    tokens, num_normal = tokenize_class("metal-nut")
    assert tokens.shape == (48, 77) and num_normal == 28


def test_backbone_grid_is_resized(golden_dir):
    clip = load_backbone(
        str(golden_dir / "ViT-T-golden.json"), golden_dir / "clip_weights.pt", image_size=320
    )
    assert clip.visual.grid_size == 20
    assert clip.visual.positional_embedding.shape == (20 * 20 + 1, 128)
    assert not any(p.requires_grad for p in clip.parameters())


def test_backbone_errors_are_clear(golden_dir, tmp_path):
    with pytest.raises(CheckpointError, match="unknown backbone 'ViT-Nope'"):
        load_backbone("ViT-Nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not an open_clip model config"):
        load_backbone(str(bad))
    with pytest.raises(AdaCLIPError, match="positive multiple of the patch size 16; got 250"):
        load_backbone(str(golden_dir / "ViT-T-golden.json"), image_size=250)


def test_render_helpers():
    image = np.full((30, 40, 3), 100, dtype=np.uint8)
    heat = np.zeros((30, 40), dtype=np.float32)
    heat[10:20, 10:20] = 1.0
    blended = render.overlay(image, heat, alpha=0.5)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    assert not np.array_equal(blended[15, 15], blended[0, 0])
    drawn = render.outline(image, heat, threshold=0.5)
    assert (drawn != image).any(axis=-1).sum() > 0
    assert (drawn[15, 15] == image[15, 15]).all()  # inside the region stays untouched
    assert render.colorbar(100, 10).shape == (100, 10, 3)
    with pytest.raises(ValueError, match="must match"):
        render.overlay(image, heat[:10])


def test_loading_learnable_parts_leaves_the_shared_backbone_alone(golden_detector):
    import torch

    from adaclip.backbone import cast_matmuls
    from adaclip.model import AdaCLIP

    clip = golden_detector.model.clip
    pointers = {k: v.data_ptr() for k, v in clip.state_dict().items()}
    sibling = AdaCLIP(clip, golden_detector.config)
    sibling.load_learnable(golden_detector.model.learnable_state_dict())
    assert {k: v.data_ptr() for k, v in clip.state_dict().items()} == pointers
    with pytest.raises(ValueError, match=r"unexpected \['clip.logit_scale'\]"):
        sibling.load_learnable(
            {**sibling.learnable_state_dict(), "clip.logit_scale": torch.ones(())}
        )

    cast_matmuls(sibling.clip, torch.float32)  # fp32: nothing to do
    assert {k: v.data_ptr() for k, v in clip.state_dict().items()} == pointers


def test_casting_a_shared_backbone_twice_changes_nothing(golden_model_args):
    import torch

    from adaclip.backbone import cast_matmuls

    clip = load_backbone(golden_model_args["backbone"], golden_model_args["backbone_weights"],
                         None, 240)  # fmt: skip
    cast_matmuls(clip, torch.bfloat16)
    pointers = {k: v.data_ptr() for k, v in clip.state_dict().items()}
    cast_matmuls(clip, torch.bfloat16)
    assert {k: v.data_ptr() for k, v in clip.state_dict().items()} == pointers
    with pytest.raises(ValueError, match="already cast to torch.bfloat16"):
        cast_matmuls(clip, torch.float16)


def test_backbone_weights_in_any_torch_format_or_a_clear_refusal(golden_model_args, tmp_path):
    import torch

    state = torch.load(golden_model_args["backbone_weights"], weights_only=True)
    legacy = tmp_path / "legacy.pt"  # the pre-zip format cannot be memory-mapped
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    clip = load_backbone(golden_model_args["backbone"], legacy, None, 240)
    assert torch.equal(clip.visual.conv1.weight, state["visual.conv1.weight"])

    wrong = tmp_path / "weights.pt"
    wrong.write_text('{"embed_dim": 64}')
    with pytest.raises(
        CheckpointError, match="not a PyTorch or safetensors checkpoint.*--backbone-w"
    ):
        load_backbone(golden_model_args["backbone"], wrong, None, 240)
    pickled = tmp_path / "objects.pt"
    torch.save({"weights": state, "note": AdaCLIPConfig()}, pickled)
    with pytest.raises(CheckpointError, match="contains Python objects") as refused:
        load_backbone(golden_model_args["backbone"], pickled, None, 240)
    assert "weights_only" not in str(refused.value)


def test_inference_never_imports_open_clip_torchvision_or_dynamo(golden_model_args, golden_dir):
    # They cost about 220 MB of resident memory that inference does not use (issue 6).
    code = f"""
import sys
from adaclip import cli
from adaclip.detector import Detector
detector = Detector.from_pretrained(**{golden_model_args!r})
detector.predict({str(golden_dir / "images" / "input_0.png")!r}, "bottle")
print(sorted(m for m in ("open_clip", "torchvision", "torch._dynamo") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "name",
    [
        "a <end_of_text> bottle",
        "<START_OF_TEXT>nut",
        "&lt;end_of_text&gt;",
        "&amp;lt;start_of_text&amp;gt;",
        "&#60;end_of_text&#62;",
        "\uff1cend_of_text\uff1e",  # full-width brackets, which ftfy turns into < and >
    ],
)
def test_class_names_with_clip_control_tokens_are_refused(name):
    # The tokenizer would turn them into real control tokens and end the sentence early.
    from adaclip.errors import ClassNameError
    from adaclip.prompts import normalize_class_name

    with pytest.raises(ClassNameError, match="control tokens"):
        tokenize_class(normalize_class_name(name))
