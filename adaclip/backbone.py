"""The frozen CLIP backbone: built by name or from a local JSON config, grid resized."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adaclip.checkpoint_io import read_tensors, release_mapped_pages
from adaclip.checkpoints import fetch_backbone
from adaclip.clip import CLIP, CLIPConfig, model_config
from adaclip.errors import AdaCLIPError, CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "ViT-L-14-336"
DEFAULT_PRETRAINED = "openai"

_REGISTERED: dict[str, CLIPConfig] = {}
"""Local JSON configs registered by :func:`register_config`, by the name they are known by."""


def is_config_file(backbone: str) -> bool:
    """Tells whether ``backbone`` names a local open_clip JSON config rather than a model."""
    return backbone.endswith(".json")


def register_config(path: str | Path) -> str:
    """Registers a local open_clip JSON config and returns the model name it is known by
    (the file's stem), so that it can be named like a built-in model.

    Raises:
        CheckpointError: The file is missing or is not a plain ViT CLIP config.
    """
    path = Path(path)
    _REGISTERED[path.stem] = model_config(str(path))
    return path.stem


def backbone_config(backbone: str) -> CLIPConfig:
    """The config of a model name, a registered name or a JSON config path.

    Raises:
        CheckpointError: Unknown name, unreadable file or an unsupported architecture.
    """
    return _REGISTERED.get(backbone) or model_config(backbone)


def load_backbone(
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    pretrained: str | None = DEFAULT_PRETRAINED,
    image_size: int = 518,
) -> CLIP:
    """Builds the frozen CLIP backbone in fp32 on the CPU, resized to ``image_size``.

    Args:
        backbone: An open_clip model name or the path of a local open_clip JSON config.
        weights: A local state dict (open_clip layout) to load instead of downloading
            ``pretrained``.
        pretrained: The open_clip pretrained tag, used for a model name without ``weights``;
            ``None`` builds random weights.
        image_size: Input side ``S``; the positional grid is resized to ``S // patch``.

    Returns:
        The model in ``eval()`` mode with gradients switched off.
    """
    started = time.perf_counter()
    # NOTE(paper): AdaCLIP runs the OpenAI weights with plain GELU, as the model configs
    # describe them, although open_clip's registry marks them as trained with QuickGELU.
    config = backbone_config(backbone)
    source = str(weights) if weights is not None else pretrained
    if is_config_file(backbone) and weights is None:
        source = None
    elif weights is None and pretrained and not Path(pretrained).is_file():
        source = str(fetch_backbone(backbone, pretrained))  # the Hub lives in checkpoints.py
    model = _create(config, backbone, source)
    resize_grid(model, image_size)
    model.eval().requires_grad_(False)
    logger.info(
        "backbone %s (weights: %s) ready at %d px in %.1f s",
        backbone,
        source or "random",
        image_size,
        time.perf_counter() - started,
    )
    return model


def _create(config: CLIPConfig, name: str, source: str | None) -> CLIP:
    """Builds the model; random weights when ``source`` is ``None``.

    With weights, the model is laid out on the meta device and the file's tensors are
    assigned to it directly (memory-mapped), so there is no random initialisation to pay
    for and no second copy of the weights in memory.
    """
    if source is None:
        return CLIP(config).init_random()
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"backbone weights file {source} does not exist.")
    with torch.device("meta"):
        model = CLIP(config)
    try:
        model.load_state_dict(_read_weights(path), strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"backbone weights {path} do not fit {name!r}: {err}. Pass the weights that "
            "belong to this backbone, or another --backbone."
        ) from err
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not meta, f"tensors left unloaded: {meta}"
    model.weights_file = path.resolve()
    return model


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
    P = visual.patch_size
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
    visual.image_size = image_size
    visual.grid_size = new


def cast_matmuls(clip: CLIP, dtype: torch.dtype) -> None:
    """Casts the weights of every attention and MLP block in both towers to ``dtype``.

    Layer norms, embeddings, projections and the residual stream stay float32, which keeps
    bf16 and fp16 close to the exact result at nearly the full speed of low precision. The
    float32 originals of memory-mapped weights are dropped from memory block by block, so
    casting never holds both copies of the model: only the few float32 pages still read
    (token embedding rows, layer norms) stay mapped.
    """
    if dtype == torch.float32:
        return
    current = clip.visual.transformer.resblocks[0].mlp.c_fc.weight.dtype
    if current == dtype:
        return  # already cast (a backbone shared by several detectors): leave it alone
    if current != torch.float32:
        raise ValueError(f"the backbone is already cast to {current}; load another for {dtype}.")
    released = 0
    for block in [*clip.visual.transformer.resblocks, *clip.transformer.resblocks]:
        originals = [p.data for p in [*block.attn.parameters(), *block.mlp.parameters()]]
        block.attn.to(dtype)
        block.mlp.to(dtype)
        if clip.weights_file is not None:
            released += release_mapped_pages(originals, clip.weights_file)
    if clip.weights_file is not None:
        logger.debug("cast to %s; %d MB of float32 pages released", dtype, released // 10**6)
