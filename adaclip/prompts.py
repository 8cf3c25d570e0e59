"""The sentence ensemble that describes normal and abnormal objects, and its tokenisation."""

from __future__ import annotations

import functools

import torch

from adaclip.errors import ClassNameError
from adaclip.tokenizer import END_OF_TEXT, START_OF_TEXT, get_tokenizer

CONTEXT_LENGTH = 77
DEFAULT_CLASS_NAME = "object"
MAX_CLASS_NAME_CHARS = 200

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
TEMPLATES = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
)


def normalize_class_name(class_name: str | None) -> str:
    """Trims a user's class name and falls back to the generic word for an empty one.

    Raises:
        ClassNameError: The name is too long for the text encoder.
    """
    if class_name is not None and not isinstance(class_name, str):
        raise ClassNameError(
            f"class_name must be a string; got {type(class_name).__name__} {class_name!r}."
        )
    name = " ".join((class_name or "").split())
    if not name:
        return DEFAULT_CLASS_NAME
    if len(name) > MAX_CLASS_NAME_CHARS:
        raise ClassNameError(
            f"class_name must be at most {MAX_CLASS_NAME_CHARS} characters; got {len(name)}. "
            "Use a short noun such as 'bottle' or 'wood'."
        )
    return name


def sentences(class_name: str) -> tuple[list[str], list[str]]:
    """Returns the 28 normal and 20 abnormal sentences for one class name."""
    name = class_name.replace("-", " ")
    normal = [t.format(s.format(name)) for s in NORMAL_STATES for t in TEMPLATES]
    abnormal = [t.format(s.format(name)) for s in ABNORMAL_STATES for t in TEMPLATES]
    return normal, abnormal


@functools.lru_cache(maxsize=256)
def tokenize_class(class_name: str) -> tuple[torch.Tensor, int]:
    """Tokenises the sentence ensemble of one (normalised) class name, cached.

    Returns:
        ``(tokens, num_normal)``: int64 tokens of shape ``(N, 77)`` with the normal
        sentences first, and how many of them are normal.

    Raises:
        ClassNameError: A sentence does not fit in the 77-token context, or the name
            holds one of CLIP's control tokens once cleaned (``&lt;end_of_text&gt;`` too).
    """
    normal, abnormal = sentences(class_name)
    tokenizer = get_tokenizer()
    encoded = [tokenizer.encode(s) for s in normal + abnormal]
    control = {tokenizer.sot_token_id, tokenizer.eot_token_id}
    if any(control.intersection(ids) for ids in encoded):
        # The text feature is read at the first end token: one inside the name would cut
        # every sentence short.
        raise ClassNameError(
            f"class name {class_name!r} contains one of CLIP's control tokens "
            f"({START_OF_TEXT}, {END_OF_TEXT}); use a plain noun such as 'bottle'."
        )
    lengths = [len(ids) + 2 for ids in encoded]  # + start and end
    if max(lengths) > CONTEXT_LENGTH:
        raise ClassNameError(
            f"class name {class_name!r} is too long: its longest prompt sentence needs "
            f"{max(lengths)} tokens but CLIP reads at most {CONTEXT_LENGTH}. "
            "Use a shorter name (a few words)."
        )
    tokens = tokenizer(normal + abnormal, context_length=CONTEXT_LENGTH)
    return tokens, len(normal)


def eot_positions(tokens: torch.Tensor) -> torch.Tensor:
    """Returns the end-of-text position of each row: the highest token id in CLIP's BPE."""
    return tokens.argmax(dim=-1)
