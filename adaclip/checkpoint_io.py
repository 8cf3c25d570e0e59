"""Checkpoint files on disk: safe reading, key-name and shape checks, saving.

Nothing here touches the network (that is :mod:`adaclip.checkpoints`). Files are read without
unpickling any object: PyTorch files through ``torch.load(weights_only=True)``, safetensors
files through safetensors. Saving writes the reference format: the learnable tensors under
``clip_model.`` keys.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import mmap as mmap_module
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from adaclip.errors import CheckpointError
from adaclip.files import write_atomically

logger = logging.getLogger(__name__)

PREFIX = "clip_model."
"""Key prefix of every tensor in a reference-format checkpoint."""

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
"""File name endings accepted for checkpoints: ``torch.save`` files and safetensors."""


def checked_suffix(path: Path, shown: str) -> Path:
    """Refuses files (local or on the Hub, before any download) named unlike a checkpoint."""
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"{shown} is not a checkpoint file: its name must end in "
            f"{', '.join(CHECKPOINT_SUFFIXES)} (PyTorch's torch.save or safetensors)."
        )
    return path


def read_state(path: str | Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """Reads a flat tensor dict without unpickling any object.

    The file's first bytes decide how: a PyTorch file (zip or legacy pickle) goes
    through ``torch.load(weights_only=True)``, a safetensors file through safetensors.

    Args:
        path: The file; its name must end in one of ``CHECKPOINT_SUFFIXES``.
        source: How to name the file in messages (default: its path).

    Raises:
        CheckpointError: The file is misnamed, unreadable, truncated or holds something else.
    """
    path = Path(path)
    source = source or str(path)
    checked_suffix(path, source)
    advice = "Pass the AdaCLIP checkpoint file itself (see `python -m adaclip checkpoints`)."
    state = read_tensors(path, source, advice=advice)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{source} is not an AdaCLIP checkpoint: expected a flat dict of tensors with keys "
            f"starting with {PREFIX!r}."
        )
    return state


TORCH_ZIP_MAGIC = b"PK\x03\x04"
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8"
"""A pickle of protocol 2 whose first object is torch's legacy magic number."""


def read_tensors(path: Path, source: str, advice: str, mmap: bool = False) -> object:
    """Loads a ``torch.save`` or safetensors file, told apart by its first bytes, safely.

    Args:
        path: The file.
        source: How to name it in messages.
        advice: What to do, added when the file is neither format.
        mmap: Map the file instead of reading it (large backbones): only the pages that
            are used take memory. Zip-format PyTorch files and safetensors files whose
            tensors are aligned can be mapped; others are read.

    Returns:
        What the file holds: tensors in plain containers (no other Python objects).

    Raises:
        CheckpointError: The file is unreadable, damaged, holds objects or is another format.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
        size = path.stat().st_size
    except OSError as err:
        raise CheckpointError(f"cannot read {source}: {err.strerror or err}.") from err
    kind = _file_kind(head, size)
    if kind == "safetensors" or (kind is None and path.suffix.lower() == ".safetensors"):
        if mmap:
            _load_safetensors(path, source, header_only=True)
            return _map_safetensors(path, source)
        return _load_safetensors(path, source)
    if kind == "torch":
        return _load_torch(path, source, mmap)
    raise CheckpointError(
        f"{source} is not a PyTorch or safetensors checkpoint ({_describe(head, size)}). {advice}"
    )


def _file_kind(head: bytes, size: int) -> str | None:
    """``torch`` or ``safetensors`` from a file's first 16 bytes, or ``None`` for neither."""
    if head.startswith((TORCH_ZIP_MAGIC, TORCH_LEGACY_MAGIC)):
        return "torch"
    if len(head) > 8 and 0 < int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return "safetensors"  # an 8-byte header length, then the JSON header
    return None


def _describe(head: bytes, size: int) -> str:
    """A short phrase for what a file that is not a checkpoint seems to be."""
    text = head.lstrip()
    if size == 0:
        return "the file is empty"
    if head.startswith(b"\x89PNG"):
        return "it is a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "it is a JPEG image"
    if head.startswith(b"PK"):
        return "it is a zip archive without PyTorch's layout"
    if text.startswith((b"{", b"[")):
        return "it looks like JSON text"
    if all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return f"it looks like text: {head.decode('ascii')!r}..."
    return f"it starts with the bytes {head[:8].hex(' ')}"


def _load_safetensors(
    path: Path, source: str, header_only: bool = False
) -> dict[str, torch.Tensor] | None:
    """Loads a safetensors file onto the CPU, or with ``header_only`` just validates it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if header_only:
            with safe_open(str(path), framework="pt") as checked:  # checks offsets and sizes
                checked.keys()
            return None
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{source} is not a valid safetensors file ({err}); re-download or re-export it."
        ) from err


SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "BOOL": torch.bool,
}


def _map_safetensors(path: Path, source: str) -> dict[str, torch.Tensor]:
    """Maps a safetensors file: a little-endian 8-byte header length, a JSON header of dtypes,
    shapes and byte ranges, then the raw tensors.

    safetensors has validated the file already; the header is checked again here against the
    mapping itself, so a file swapped in between cannot slip through. The mapping is private:
    nothing written to a tensor reaches the file. A tensor not aligned to its element size
    is copied out on its own; the rest stay mapped. A file with a dtype missing from
    :data:`SAFETENSORS_DTYPES` is read by safetensors instead.

    Raises:
        CheckpointError: The header does not describe the bytes that follow it.
    """
    try:
        with open(path, "rb") as handle:
            mapped = mmap_module.mmap(handle.fileno(), 0, access=mmap_module.ACCESS_COPY)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot map {source}: {err}.") from err
    length = int.from_bytes(mapped[:8], "little")
    try:
        header = json.loads(mapped[8 : 8 + length]) if 8 + length <= len(mapped) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        mapped.close()
        raise CheckpointError(f"{source} has no readable safetensors header; re-download it.")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if any(not isinstance(e, dict) or e.get("dtype") not in SAFETENSORS_DTYPES
           for e in entries.values()):  # fmt: skip
        mapped.close()  # a dtype torch cannot view: safetensors reads the file
        return _load_safetensors(path, source)
    data = torch.frombuffer(mapped, dtype=torch.uint8)  # keeps the mapping alive
    start = 8 + length
    state = {}
    for name, entry in entries.items():
        begin, end, dtype, shape = _checked_entry(entry, len(mapped) - start, source, name)
        raw = data[start + begin : start + end]
        if (start + begin) % dtype.itemsize:
            logger.warning("%s: tensor %s is not aligned in the file; copying it", source, name)
            raw = raw.clone()
        state[name] = raw.view(dtype).reshape(shape)
    return state


def _checked_entry(
    entry: object, size: int, source: str, name: str
) -> tuple[int, int, torch.dtype, list[int]]:
    """``(begin, end, dtype, shape)`` of one header entry, checked against ``size`` bytes."""
    try:
        begin, end = entry["data_offsets"]
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        shape = [int(n) for n in entry["shape"]]
        valid = (
            all(isinstance(n, int) for n in (begin, end, *entry["shape"]))
            and 0 <= begin <= end <= size
            and min(shape, default=0) >= 0
            and math.prod(shape) * dtype.itemsize == end - begin
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CheckpointError(
            f"{source}: the safetensors header entry {name!r} does not describe the file's "
            "bytes (or uses a dtype AdaCLIP does not read); re-download or re-export it."
        )
    return begin, end, dtype, shape


MADV_DONTNEED = 4
"""Linux's advice to drop pages: private file pages are read again from the file if used."""

PAGEMAP_PRESENT, PAGEMAP_FILE = 1 << 63, 1 << 61
"""Bits of a ``/proc/self/pagemap`` entry: the page is in memory; it is the file's own page
(a private page that has been written to is anonymous instead)."""


def release_mapped_pages(tensors: Iterable[torch.Tensor], path: str | Path) -> int:
    """Drops from resident memory the pages of ``path``'s private mapping under ``tensors``.

    A memory-mapped weight that has been cast to another dtype is no longer read, but its
    pages stay resident as long as any other tensor keeps the file mapped. Only whole pages
    inside each tensor's own bytes are dropped, only inside a private mapping of ``path``,
    and only for tensors none of whose pages has been written to: such pages are the file's
    own, so touching them again just reads the file. Does nothing where Linux's ``/proc``
    and ``madvise`` are missing.

    Returns:
        How many bytes were released.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        spans = _private_mappings(os.path.realpath(path))
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        page = mmap_module.PAGESIZE
        released = 0
        with open("/proc/self/pagemap", "rb") as pagemap:
            for tensor in tensors:
                if tensor.device.type != "cpu" or not tensor.is_contiguous():
                    continue
                begin = -(-tensor.data_ptr() // page) * page  # first whole page
                end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
                inside = any(low <= begin and end <= high for low, high in spans)
                if end <= begin or not inside or _any_written(pagemap, begin, end, page):
                    continue
                if madvise(begin, end - begin, MADV_DONTNEED) == 0:
                    released += end - begin
    except (OSError, AttributeError) as err:
        logger.debug("memory-mapped pages not released: %s", err)
        return 0
    return released


def _private_mappings(target: str) -> list[tuple[int, int]]:
    """Address ranges of this process's private mappings of the file ``target``."""
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") == target and fields[1][3] == "p":
                low, high = (int(x, 16) for x in fields[0].split("-"))
                spans.append((low, high))
    return spans


def _any_written(pagemap: BinaryIO, begin: int, end: int, page: int) -> bool:
    """Whether a page in ``[begin, end)`` is in memory but no longer the file's own."""
    pagemap.seek(begin // page * 8)
    entries = np.frombuffer(pagemap.read((end - begin) // page * 8), dtype=np.uint64)
    present = (entries & np.uint64(PAGEMAP_PRESENT)) != 0
    own = (entries & np.uint64(PAGEMAP_FILE)) != 0
    return bool((present & ~own).any())


TORCH_LOAD_ERRORS = (
    OSError,
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    zipfile.BadZipFile,
)
"""What ``torch.load`` raises for a damaged file (its unpickler fails in many ways)."""


def _load_torch(path: Path, source: str, mmap: bool = False) -> object:
    """Loads a ``torch.save`` file with ``weights_only=True``: tensors and plain containers only.

    Torch's advice to retry with ``weights_only=False`` is never passed on: that would run
    whatever code the file carries.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as err:
        if mmap and "mmap" in str(err):  # the legacy (non-zip) format cannot be mapped
            return _load_torch(path, source)
        raise CheckpointError(
            f"cannot read checkpoint {source}: {_first_line(err)}. "
            "The file may be truncated or corrupt; delete it and download it again."
        ) from err
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(
                f"cannot read checkpoint {source}: its pickled index is damaged. The file may "
                "be truncated or corrupt; delete it and download it again."
            ) from err
        raise CheckpointError(
            f"refusing to load {source}: it contains Python objects ({found[1]}), not only "
            "tensors. AdaCLIP checkpoints hold a flat dict of tensors; re-export it that way "
            "(torch.save of a state dict, or safetensors)."
        ) from err
    except TORCH_LOAD_ERRORS as err:
        raise CheckpointError(
            f"cannot read checkpoint {source}: {_first_line(err)}. "
            "The file may be truncated or corrupt; delete it and download it again."
        ) from err


def _first_line(err: Exception) -> str:
    """The first line of an exception's message, or its repr when it has none."""
    text = str(err)
    return text.splitlines()[0] if text else repr(err)


ADACLIP_KEY = re.compile(
    re.escape(PREFIX) + r"(?:(?:visual|text)_prompter\.static_prompts\.\d+"
    r"|(?:dynamic_visual_prompt_generator|dynamic_text_prompt_generator|patch_token_layer"
    r"|cls_token_layer)\.head\.\d+\.(?:weight|bias))"
)
"""The key names of an AdaCLIP checkpoint (METHOD.md section 3); counts depend on the config."""

ADACLIP_PARTS = (
    "visual_prompter",
    "text_prompter",
    "dynamic_visual_prompt_generator",
    "dynamic_text_prompt_generator",
    "patch_token_layer",
    "cls_token_layer",
)


def check_adaclip_names(state: dict[str, torch.Tensor], source: str) -> None:
    """Checks by key names alone (shapes depend on the backbone) that ``state`` is AdaCLIP's.

    Raises:
        CheckpointError: A key has no AdaCLIP name, or a learnable part is missing.
    """
    _check_prefix(state, source)
    strange = [k for k in state if not ADACLIP_KEY.fullmatch(k)]
    parts = {k.removeprefix(PREFIX).split(".", 1)[0] for k in state}
    missing = [part for part in ADACLIP_PARTS if part not in parts]
    if strange or missing:
        shown = ", ".join(strange[:5]) + (f" and {len(strange) - 5} more" if strange[5:] else "")
        problems = ([f"keys no AdaCLIP checkpoint has: {shown}"] if strange else []) + (
            [f"missing parts: {', '.join(PREFIX + m for m in missing)}"] if missing else []
        )
        raise CheckpointError(
            f"{source} is not an AdaCLIP checkpoint: " + "; ".join(problems) + ". An AdaCLIP "
            "checkpoint holds only the prompts and heads listed in METHOD.md section 3."
        )


def _check_prefix(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuses a state none of whose keys carries the reference prefix."""
    if not any(k.startswith(PREFIX) for k in state):
        raise CheckpointError(
            f"{source} is not an AdaCLIP checkpoint: none of its {len(state)} keys starts with "
            f"{PREFIX!r} (it may be a CLIP backbone; pass that with --backbone-weights)."
        )


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
    _check_prefix(state, source)
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
            It is replaced atomically and gets the usual file mode.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {PREFIX + k: v.detach().float().cpu().contiguous() for k, v in learnable.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        write_atomically(path, lambda p: save_file(state, str(p)))
    else:
        write_atomically(path, lambda p: torch.save(state, p))
    logger.info("checkpoint with %d tensors written to %s", len(state), path)
    return path
