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

from adaclip.checkpoint_io import read_tensors
from adaclip.checkpoints import fetch_backbone
from adaclip.errors import AdaCLIPError, CheckpointError

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
    elif weights is None and pretrained and not Path(pretrained).is_file():
        source = str(fetch_backbone(name, pretrained))  # the Hub download lives in checkpoints.py
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
    """Builds the open_clip model; random weights when ``source`` is ``None``.

    With weights, the model is laid out on the meta device and the file's tensors are
    assigned to it directly (memory-mapped), so there is no random initialisation to pay
    for and no second copy of the weights in memory.
    """
    if source is None:
        return open_clip.create_model(name, pretrained=None)
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"backbone weights file {source} does not exist.")
    quiet = _DropRecords("No pretrained weights loaded")  # they are loaded just below
    logging.getLogger().addFilter(quiet)
    try:
        with torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None, device="meta")
    finally:
        logging.getLogger().removeFilter(quiet)
    try:
        model.load_state_dict(_read_weights(path), strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"backbone weights {path} do not fit {name!r}: {err}. Pass the weights that "
            "belong to this backbone, or another --backbone."
        ) from err
    context = model.positional_embedding.shape[0]
    model.attn_mask = torch.full((context, context), float("-inf")).triu_(1)  # causal mask
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not meta, f"tensors left unloaded: {meta}"
    return model


class _DropRecords(logging.Filter):
    """Drops log records whose message starts with a given text."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Reads a backbone state dict (torch, memory-mapped, or safetensors) without unpickling
    objects."""
    advice = "Pass an open_clip state dict (torch.save or safetensors) with --backbone-weights."
    state = read_tensors(path, f"backbone weights {path}", advice, mmap=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"backbone weights {path} are not a state dict.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def resize_grid(model: CLIP, image_size: int) -> None:
    """Resizes the vision positional embedding to the grid of ``image_size``, in place.

    The patch grid (excluding the class token) is resized bicubically with
    ``align_corners=False`` and no antialiasing, as METHOD.md section 1 requires.
    """
    visual = model.visual
    P = visual.patch_size[0]
    if image_size < P or image_size % P:
        raise AdaCLIPError(
            f"image_size must be a positive multiple of the patch size {P}; got {image_size} "
            f"(518 for the published checkpoints)."
        )
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
