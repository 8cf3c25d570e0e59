"""AdaCLIP checkpoints: where they come from, safe loading, strict checking, saving."""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch

from adaclip.errors import CheckpointError

logger = logging.getLogger(__name__)

PREFIX = "clip_model."
"""Key prefix of every tensor in a reference-format checkpoint."""


def resolve_checkpoint(spec: str | Path) -> Path:
    """Turns a checkpoint spec into a local file path.

    Raises:
        CheckpointError: The spec names no existing file.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    raise CheckpointError(
        f"checkpoint {str(spec)!r} is not an existing file. Give the path of a .pth, .pt "
        "or .safetensors AdaCLIP checkpoint."
    )


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a flat tensor dict without unpickling any object.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: The file is unreadable, truncated or holds something else.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {err}. The file may be truncated or corrupt; "
            "delete it and download it again."
        ) from err
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects, not only tensors ({err})."
        ) from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{path} is not an AdaCLIP checkpoint: expected a flat dict of tensors with keys "
            f"starting with {PREFIX!r}."
        )
    return state


def check_state(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Strips the reference prefix and checks keys and shapes against the model.

    Args:
        state: The checkpoint's tensors, keys with the ``clip_model.`` prefix.
        expected: The model's learnable tensors, keys without the prefix.
        source: Where the checkpoint came from, for messages.

    Returns:
        The tensors under the model's key names, as float32.

    Raises:
        CheckpointError: A key is missing or unexpected, or a shape differs; all are named.
    """
    if not any(k.startswith(PREFIX) for k in state):
        raise CheckpointError(
            f"{source} is not an AdaCLIP checkpoint: none of its {len(state)} keys starts with "
            f"{PREFIX!r} (it may be a CLIP backbone; pass that with --backbone-weights)."
        )
    stripped = {k.removeprefix(PREFIX): v for k, v in state.items()}
    missing = sorted(set(expected) - set(stripped))
    unexpected = sorted(set(stripped) - set(expected))
    misshapen = [
        f"{PREFIX}{k} {tuple(stripped[k].shape)} (model needs {tuple(v.shape)})"
        for k, v in expected.items()
        if k in stripped and stripped[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(PREFIX + k for k in missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(PREFIX + k for k in unexpected))
    if misshapen:
        problems.append("wrong shapes: " + "; ".join(misshapen))
    if problems:
        hint = (
            " The shapes do not fit the chosen backbone; use the backbone the checkpoint "
            "was trained on (ViT-L-14-336 for the published ones)."
            if misshapen and not missing
            else ""
        )
        raise CheckpointError(
            f"{source} does not fit this model: " + " | ".join(problems) + "." + hint
        )
    return {k: v.float() for k, v in stripped.items()}


def save_checkpoint(learnable: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Writes learnable tensors in the reference format (or safetensors by suffix).

    Args:
        learnable: Tensors under the model's key names (see ``AdaCLIP.learnable_state_dict``).
        path: Target file; ``.safetensors`` writes safetensors, anything else ``torch.save``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {PREFIX + k: v.detach().float().cpu().contiguous() for k, v in learnable.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    logger.info("checkpoint with %d tensors written to %s", len(state), path)
    return path
