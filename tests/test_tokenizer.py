"""adaclip.tokenizer gives open_clip's ids without importing open_clip."""

from __future__ import annotations

import random
from pathlib import Path

import open_clip
import pytest
import torch

from adaclip import clip
from adaclip import tokenizer as tok
from adaclip.errors import AdaCLIPError
from adaclip.prompts import sentences

REPO = Path(__file__).resolve().parents[1]

CLASS_NAMES = [
    # MVTec AD, VisA and other benchmark classes, spelled as users type them.
    *("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal nut"),
    *("pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper", "Zipper"),
    *("candle", "capsules", "cashew", "chewinggum", "fryum", "pipe_fryum", "macaroni1"),
    *("macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "screw-bag", "brain MRI", "colon polyp"),
    # Unicode, emoji and scripts that are not Latin.
    *("café", "Größe", "蛋糕", "🍕 pizza", "😀😃", "👨‍👩‍👧 family", "naïve façade"),
    *("ÅNGSTRÖM", "İstanbul", "straße", "ﬁsh ﬀ", "한국어", "Ελληνικά", "русский", "עברית"),
    *("K-nife", "'ſ", "\u200bzero width", "no\u00a0break", "e\u0301 combining"),
    # Punctuation, escapes, whitespace, digits and case.
    *("o'clock", "it's DON'T we'll I'd", "a&amp;b", "&amp;amp;", "&lt;tag&gt;", "x & y"),
    *("  spaced   out  ", "tab\there\nnewline", "123", "3.14", "v2.0", "½ ٣ ²", "MiXeD CaSe"),
    *("...", "--", "!?", "#1 (best)", "__init__", "a/b\\c", 'quote"s', "C++", "100%"),
    # Mojibake that ftfy repairs, and the special tokens written out in text.
    *("cafÃ©", "â€œquotedâ€\x9d", "Ã¼ber", "<start_of_text>", "<END_OF_TEXT> bottle"),
    # A long word, so BPE runs many merge rounds.
    *("x" * 120, "antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis"),
]

RAW_TEXTS = [
    "",
    " ",
    "\n\t",
    "a",
    "A photo of a BOTTLE.",
    "\x00\x01 control",
    "a\ud800b",  # a lone surrogate, which ftfy replaces
    "lots of        spaces and\r\nwindows lines",
    "&amp;lt;double&amp;gt;",
]


def _fuzz_texts(count: int, seed: int = 0) -> list[str]:
    """Deterministic random strings drawn from several Unicode blocks."""
    blocks = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4FFF)]
    blocks += [(0x1F600, 0x1F64F), (0x2000, 0x206F), (0x0600, 0x06FF)]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        low, high = rng.choice(blocks)
        chars = [chr(rng.randint(low, high)) for _ in range(rng.randint(1, 30))]
        texts.append("".join(c if rng.random() > 0.15 else " " for c in chars))
    return texts


def _corpus() -> list[str]:
    texts = []
    for name in CLASS_NAMES:
        normal, abnormal = sentences(name)
        texts += normal + abnormal
    return texts


@pytest.fixture(scope="module")
def reference() -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer()


@pytest.fixture(scope="module")
def ours() -> tok.ClipTokenizer:
    return tok.get_tokenizer()


def test_vocabulary_matches(ours: tok.ClipTokenizer, reference: open_clip.SimpleTokenizer):
    assert ours.vocab_size == reference.vocab_size == 49408
    assert (ours.sot_token_id, ours.eot_token_id) == (49406, 49407)


def test_prompt_sentences_match(ours: tok.ClipTokenizer, reference: open_clip.SimpleTokenizer):
    texts = _corpus()
    assert len(texts) == 48 * len(CLASS_NAMES)

    for text in texts:
        assert ours.encode(text) == reference.encode(text), text
    assert torch.equal(ours(texts), reference(texts))


@pytest.mark.parametrize("text", CLASS_NAMES + RAW_TEXTS)
def test_raw_strings_match(
    text: str, ours: tok.ClipTokenizer, reference: open_clip.SimpleTokenizer
):
    assert ours.encode(text) == reference.encode(text)
    assert torch.equal(ours(text), reference(text))


def test_random_unicode_matches(ours: tok.ClipTokenizer, reference: open_clip.SimpleTokenizer):
    for text in _fuzz_texts(400):
        assert ours.encode(text) == reference.encode(text), ascii(text)


@pytest.mark.parametrize("context_length", [1, 2, 3, 10, 77, 100])
def test_overflow_matches(
    context_length: int, ours: tok.ClipTokenizer, reference: open_clip.SimpleTokenizer
):
    texts = ["a photo of a " * 30, "short", "a bad photo of a metal nut with defect."]

    expected = reference(texts, context_length=context_length)
    assert torch.equal(ours(texts, context_length=context_length), expected)


def test_overflow_keeps_the_head_and_ends_with_eot(ours: tok.ClipTokenizer):
    ids = ours.encode("a photo of a " * 30)

    row = ours("a photo of a " * 30)[0]
    assert row.tolist() == [ours.sot_token_id, *ids[:75], ours.eot_token_id]


def test_empty_string(ours: tok.ClipTokenizer):
    assert ours.encode("") == []
    assert ours("")[0, :3].tolist() == [ours.sot_token_id, ours.eot_token_id, 0]


def test_single_string_is_a_batch_of_one(ours: tok.ClipTokenizer):
    single = ours("a photo of a bottle.")

    assert single.shape == (1, 77) and single.dtype == torch.long
    assert torch.equal(single, ours(["a photo of a bottle."]))
    assert ours([]).shape == (0, 77)


def test_batch_equals_one_by_one(ours: tok.ClipTokenizer):
    texts = ["a", "a photo of a bottle.", "蛋糕 " * 50]

    rows = [ours(text) for text in texts]
    assert torch.equal(ours(texts), torch.cat(rows))


def test_tokenize_uses_the_shared_tokenizer(ours: tok.ClipTokenizer):
    assert tok.get_tokenizer() is ours
    assert torch.equal(tok.tokenize("a bottle", context_length=8), ours("a bottle", 8))


def test_rejects_bad_context_length(ours: tok.ClipTokenizer):
    with pytest.raises(AdaCLIPError, match="context_length must be at least 1; got 0"):
        ours("a bottle", context_length=0)


def test_missing_open_clip_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(clip, "OPEN_CLIP_PACKAGE", "no_such_package_for_adaclip")

    with pytest.raises(AdaCLIPError, match=r"not installed.*pip install open_clip_torch"):
        tok.vocab_path()


def test_missing_vocabulary_says_what_to_reinstall(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setattr(tok, "open_clip_folder", lambda: tmp_path)

    with pytest.raises(AdaCLIPError, match=r"bpe_simple_vocab_16e6.*--force-reinstall"):
        tok.vocab_path()


def test_unreadable_vocabulary(tmp_path: Path):
    broken = tmp_path / "vocab.txt.gz"
    broken.write_bytes(b"not gzip")

    with pytest.raises(AdaCLIPError, match="unreadable"):
        tok.ClipTokenizer.from_file(broken)
