"""CLIP's byte-pair-encoding tokenizer, without importing open_clip.

Importing ``open_clip`` also loads torchvision and ``torch._dynamo`` (about 220 MB of
resident memory), which a process that only turns prompt sentences into token ids does
not need. This module gives the same ids as ``open_clip.SimpleTokenizer()`` with its
default ("lower") cleaning, and reads the vocabulary file that ships inside the installed
open_clip package without executing that package.

Example::

    from adaclip.tokenizer import tokenize
    tokens = tokenize(["a photo of a bottle.", "a photo of a broken bottle."])  # (2, 77)
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import ftfy
import regex
import torch

from adaclip.clip import open_clip_folder
from adaclip.errors import AdaCLIPError

logger = logging.getLogger(__name__)

CONTEXT_LENGTH = 77
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
END_OF_WORD = "</w>"
# CLIP's 49408 ids: 256 byte symbols, the same 256 ending a word, the merges, 2 specials.
NUM_MERGES = 49408 - 2 * 256 - 2

Pair = tuple[str, str]


def _byte_symbols() -> dict[int, str]:
    """Maps each of the 256 byte values to one printable character.

    BPE runs on strings, so every UTF-8 byte needs a visible stand-in: bytes that already
    print as a Latin-1 glyph keep it, and the rest (controls, space, soft hyphen) borrow
    characters from U+0100 on. The insertion order fixes the first 256 vocabulary ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols = {byte: chr(byte) for byte in printable}
    hidden = [byte for byte in range(256) if byte not in symbols]
    symbols.update({byte: chr(256 + i) for i, byte in enumerate(hidden)})
    return symbols


BYTE_SYMBOLS = _byte_symbols()


def clean_text(text: str) -> str:
    """Repairs, unescapes, collapses whitespace and lower-cases, as CLIP was trained."""
    text = ftfy.fix_text(text)
    # Twice, because scraped captions are often escaped twice ("&amp;amp;").
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def _word_pattern() -> regex.Pattern:
    """Splits cleaned text into the pieces BPE works on, one at a time.

    A piece is a special token, an English contraction suffix, a run of letters, a single
    digit, or a run of other non-space characters.
    """
    alternatives = [
        regex.escape(START_OF_TEXT),
        regex.escape(END_OF_TEXT),
        *("'s", "'t", "'re", "'ve", "'m", "'ll", "'d"),
        r"\p{L}+",
        r"\p{N}",
        r"[^\s\p{L}\p{N}]+",
    ]
    return regex.compile("|".join(alternatives), regex.IGNORECASE)


def _join_pair(symbols: tuple[str, ...], pair: Pair) -> tuple[str, ...]:
    """Fuses every non-overlapping occurrence of ``pair``, scanning left to right."""
    first, second = pair
    joined = []
    i = 0
    while i < len(symbols):
        if symbols[i] == first and i + 1 < len(symbols) and symbols[i + 1] == second:
            joined.append(first + second)
            i += 2
        else:
            joined.append(symbols[i])
            i += 1
    return tuple(joined)


def read_merges(path: str | Path) -> list[tuple[str, ...]]:
    """Reads CLIP's merge rules, best first, from the gzipped vocabulary file.

    Raises:
        AdaCLIPError: The file cannot be read or decompressed.
    """
    try:
        with gzip.open(path, "rb") as handle:
            # Bytes, not text mode: universal newlines must not reinterpret the lines.
            lines = handle.read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise AdaCLIPError(
            f"CLIP's BPE vocabulary at {path} is unreadable ({err}). "
            "Reinstall it with `pip install --force-reinstall open_clip_torch`."
        ) from err
    # The first line is a version header.
    return [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]


MAX_CACHED_WORDS = 50_000
"""Words whose BPE split is remembered; later new words are split each time."""


class ClipTokenizer:
    """Turns text into CLIP token ids with byte-level BPE.

    Attributes:
        sot_token_id: Id of the start-of-text token (49406 for CLIP).
        eot_token_id: Id of the end-of-text token (49407); the highest id in a row.
        vocab_size: Number of ids (49408 for CLIP).
    """

    def __init__(self, merges: Sequence[tuple[str, ...]]) -> None:
        """Builds the vocabulary from merge rules.

        Args:
            merges: Merge rules, best first, each the two symbols to fuse.
        """
        symbols = list(BYTE_SYMBOLS.values())
        vocab = [
            *symbols,
            *(symbol + END_OF_WORD for symbol in symbols),
            *("".join(merge) for merge in merges),
            START_OF_TEXT,
            END_OF_TEXT,
        ]
        # A repeated entry keeps its last id, as a dict built from (token, id) pairs does.
        self._ids = {token: i for i, token in enumerate(vocab)}
        self._ranks = {merge: rank for rank, merge in enumerate(merges)}
        self._pattern = _word_pattern()
        # Special tokens found in the text are kept whole, without the end-of-word mark.
        self._cache: dict[str, tuple[str, ...]] = {
            START_OF_TEXT: (START_OF_TEXT,),
            END_OF_TEXT: (END_OF_TEXT,),
        }
        self.sot_token_id = self._ids[START_OF_TEXT]
        self.eot_token_id = self._ids[END_OF_TEXT]
        self.vocab_size = len(self._ids)

    @classmethod
    def from_file(cls, path: str | Path) -> ClipTokenizer:
        """Builds the tokenizer from a gzipped merges file such as CLIP's."""
        return cls(read_merges(path))

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Splits one word (in byte symbols) into vocabulary entries, memoised."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached

        symbols = (*word[:-1], word[-1] + END_OF_WORD)
        while len(symbols) > 1:
            pairs = itertools.pairwise(symbols)
            best = min(pairs, key=lambda pair: self._ranks.get(pair, math.inf))
            if best not in self._ranks:
                break
            symbols = _join_pair(symbols, best)

        if len(self._cache) < MAX_CACHED_WORDS:  # a server sees endless new words: stay bounded
            self._cache[word] = symbols
        return symbols

    def encode(self, text: str) -> list[int]:
        """Returns the token ids of ``text``, without start and end tokens."""
        ids = []
        for word in self._pattern.findall(clean_text(text)):
            as_symbols = "".join(BYTE_SYMBOLS[byte] for byte in word.encode("utf-8"))
            ids.extend(self._ids[piece] for piece in self._bpe(as_symbols))
        return ids

    def __call__(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH
    ) -> torch.Tensor:
        """Tokenises texts into fixed-length rows.

        Each row is the start token, the text's ids and the end token, padded with 0.
        A text too long for the row keeps its first ``context_length - 2`` ids and still
        ends with the end token, which CLIP's text encoder reads its feature from.

        Args:
            texts: One text or a sequence of texts.
            context_length: Length of each row; CLIP models use 77.

        Returns:
            int64 tensor of shape ``(N, context_length)``, N being the number of texts
            (1 for a single string).

        Raises:
            AdaCLIPError: ``context_length`` is below 1.
        """
        if context_length < 1:
            raise AdaCLIPError(f"context_length must be at least 1; got {context_length}.")
        if isinstance(texts, str):
            texts = [texts]

        rows = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in zip(rows, texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                ids = [*ids[: context_length - 1], self.eot_token_id]
            row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return rows


def vocab_path() -> Path:
    """Locates CLIP's BPE vocabulary inside the installed open_clip package.

    Raises:
        AdaCLIPError: open_clip is not installed or its vocabulary file is missing.
    """
    path = open_clip_folder() / VOCAB_FILE
    if not path.is_file():
        raise AdaCLIPError(
            f"CLIP's BPE vocabulary {VOCAB_FILE} is missing from {path.parent}. "
            "Reinstall open_clip with `pip install --force-reinstall open_clip_torch`.",
            reason=f"{VOCAB_FILE} not found",
        )
    return path


@functools.cache
def get_tokenizer() -> ClipTokenizer:
    """CLIP's tokenizer, built on first use and shared afterwards.

    Raises:
        AdaCLIPError: The vocabulary file is missing or unreadable.
    """
    path = vocab_path()
    start = time.perf_counter()
    tokenizer = ClipTokenizer.from_file(path)
    logger.info("Built CLIP tokenizer from %s in %.2f s", path, time.perf_counter() - start)
    return tokenizer


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Tokenises texts with the shared CLIP tokenizer; see :meth:`ClipTokenizer.__call__`."""
    return get_tokenizer()(texts, context_length=context_length)
