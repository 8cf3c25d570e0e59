"""The frozen open_clip backbone: built by name or from a local JSON config, grid resized."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from adaclip.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "ViT-L-14-336"
DEFAULT_PRETRAINED = "openai"


def is_config_file(backbone: str) -> bool:
    """Tells whether ``backbone`` names a local open_clip JSON config rather than a model."""
    return backbone.endswith(".json")


def register_config(path: str | Path) -> str:
    """Registers a local open_clip JSON config and returns the model name it is known by.

    Raises:
        CheckpointError: The file is missing or is not an open_clip model config.
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"cannot read backbone config {path}: {err}. Give an open_clip model name "
            f"such as {DEFAULT_BACKBONE!r} or the path of an open_clip JSON config."
        ) from err
    if not isinstance(config, dict) or not {"vision_cfg", "text_cfg", "embed_dim"} <= set(config):
        raise CheckpointError(
            f"{path} is not an open_clip model config: it needs the keys "
            "'embed_dim', 'vision_cfg' and 'text_cfg'."
        )
    open_clip.add_model_config(path)
    return path.stem


def load_backbone(
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    pretrained: str | None = DEFAULT_PRETRAINED,
    image_size: int = 518,
) -> CLIP:
    """Builds the frozen CLIP backbone in fp32 on the CPU, resized to ``image_size``.

    Args:
        backbone: An open_clip model name or the path of a local open_clip JSON config.
        weights: A local state dict (open_clip or OpenAI layout) to load instead of
            downloading ``pretrained``.
        pretrained: The open_clip pretrained tag, used for a model name without ``weights``.
        image_size: Input side ``S``; the positional grid is resized to ``S // patch``.

    Returns:
        The open_clip ``CLIP`` model in ``eval()`` mode with gradients switched off.
    """
    started = time.perf_counter()
    name = register_config(backbone) if is_config_file(backbone) else backbone
    if name not in open_clip.list_models():
        raise CheckpointError(
            f"unknown backbone {backbone!r}. Use an open_clip model name "
            f"(for example {DEFAULT_BACKBONE!r}) or the path of a JSON config."
        )
    source = str(weights) if weights is not None else pretrained
    if is_config_file(backbone) and weights is None:
        source = None
    with warnings.catch_warnings():
        # NOTE(paper): AdaCLIP runs the OpenAI weights with plain GELU; open_clip warns about it.
        warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
        model = _create(name, source)
    if not isinstance(model, CLIP):
        raise CheckpointError(f"backbone {backbone!r} is not a plain open_clip ViT CLIP model.")
    resize_grid(model, image_size)
    model.eval().requires_grad_(False)
    logger.info(
        "backbone %s (weights: %s) ready at %d px in %.1f s",
        name,
        source or "random",
        image_size,
        time.perf_counter() - started,
    )
    return model


def _create(name: str, source: str | None) -> torch.nn.Module:
    """Calls open_clip and turns its failures into project errors."""
    is_path = source is not None and source != DEFAULT_PRETRAINED and bool(Path(source).suffix)
    if is_path and not Path(source).is_file():
        raise CheckpointError(f"backbone weights file {source} does not exist.")
    try:
        return open_clip.create_model(name, pretrained=source, weights_only=True)
    except (RuntimeError, OSError, KeyError) as err:
        raise CheckpointError(
            f"could not load backbone {name!r} with weights {source!r}: {err}. "
            "Check the name and weights, or pass --backbone-weights with a local file."
        ) from err


def resize_grid(model: CLIP, image_size: int) -> None:
    """Resizes the vision positional embedding to the grid of ``image_size``, in place.

    The patch grid (excluding the class token) is resized bicubically with
    ``align_corners=False`` and no antialiasing, as METHOD.md section 1 requires.
    """
    visual = model.visual
    P = visual.patch_size[0]
    if image_size % P:
        raise ValueError(f"image_size must be a multiple of the patch size {P}; got {image_size}.")
    pos = visual.positional_embedding.data
    N, D = pos.shape
    old = math.isqrt(N - 1)
    new = image_size // P
    if new != old:
        grid = pos[1:].reshape(1, old, old, D).permute(0, 3, 1, 2)  # (1, g, g, D) -> (1, D, g, g)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(new * new, D)  # (1, D, G, G) -> (G*G, D)
        visual.positional_embedding = torch.nn.Parameter(torch.cat([pos[:1], grid]))
    visual.image_size = (image_size, image_size)
    visual.grid_size = (new, new)
