"""Text normalisation per script, and the character / SentencePiece tokenizers."""
from __future__ import annotations

import unicodedata

import pytest

from toolkit.text.normalize import normalize_text

# ----------------------------------------------------------------------------------------
# normalize_text


@pytest.mark.parametrize(
    "language, raw, expected",
    [
        ("en", "Hello, World!  Don’t  \"quote\" 'this'.", "hello world don't quote this"),
        ("en", "rock 'n' roll -- students' fees", "rock n roll students fees"),
        ("en", "\ufb01ne \uff21\uff22\uff23 \u00bd", "fine abc 1 2"),  # NFKC: ligature, full width, ½ -> 1⁄2
        ("fr", "L’HOMME a dit : « Bonjour ! » aujourd\u02bchui", "l'homme a dit bonjour aujourd'hui"),
        ("de", "STRASSE Straße ÄÖÜ, übermäßig.", "strasse straße äöü übermäßig"),
        ("tr", "İSTANBUL'DA IĞDIR ılık İyi", "istanbul'da ığdır ılık iyi"),
        ("az", "İLK IŞIQ", "ilk ışıq"),
        ("ru", "Привет, МИР! Ёлка — «ель».", "привет мир ёлка ель"),
        ("el", "ΟΔΟΣ ΣΟΦΟΣ; Καλός. ΣΑΣ", "οδος σοφος καλός σας"),
        ("hi", "नमस्ते। आप कैसे हैं॥ ठीक|है", "नमस्ते आप कैसे हैं ठीक है"),
        ("ar", "مرحبا، كيف حالك؟ العـــربية!", "مرحبا كيف حالك العربية"),
    ],
)
def test_normalize_per_script(language: str, raw: str, expected: str) -> None:
    assert normalize_text(raw, language) == expected


def test_turkish_i_differs_from_default_lowercasing() -> None:
    # Python's default maps İ to i + COMBINING DOT ABOVE and I to i; Turkish must not.
    assert normalize_text("İI", "en") == unicodedata.normalize("NFC", "İI".lower())
    assert normalize_text("İI", "tr") == "iı"
    assert normalize_text("İI", "tr-TR") == "iı"


def test_greek_final_sigma_follows_word_end_after_punctuation_removal() -> None:
    # The hyphen becomes a word break, so the sigma before it is final.
    assert normalize_text("ΛΟΓΟΣ-ΛΟΓΟΣ", "el") == "λογος λογος"
    assert "ς" not in normalize_text("ΣΟΦΙΑ", "el")


def test_uncased_scripts_are_untouched_and_word_boundary_removed() -> None:
    for text, lang in [("नमस्ते दुनिया", "hi"), ("مرحبا بالعالم", "ar"), ("你好 世界", "zh")]:
        assert normalize_text(text, lang) == text
    for lang in ("en", "hi", "ar"):
        assert "|" not in normalize_text("a|b || c", lang)
    out = normalize_text("।॥|", "hi")
    assert out == ""


def test_combining_marks_and_zero_width_joiners_are_kept() -> None:
    persian = "می\u200cخواهم"  # ZWNJ is spelling in Persian
    assert normalize_text(persian, "fa") == persian
    assert normalize_text("कि\u0902", "hi") == "कि\u0902"  # vowel sign + anusvara kept


def test_whitespace_and_controls_collapse_and_idempotent() -> None:
    raw = "\ufeff  A\tb\n\nC\u00a0d\u00ade  "
    out = normalize_text(raw, "en")
    assert out == "a b c de"
    for lang, text in [("fr", "L’Été, c'est «super» !"), ("tr", "IŞIK İÇİN"), ("el", "ΟΔΟΣ")]:
        once = normalize_text(text, lang)
        assert normalize_text(once, lang) == once


def test_normalize_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        normalize_text(None, "en")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------
# Tokenizer

import pickle  # noqa: E402

from toolkit.text.tokenizer import Tokenizer  # noqa: E402
from toolkit.utils import ToolkitError  # noqa: E402

RAW = {
    "en": ["The quick brown fox doesn't jump.", "A cat sat on the mat, quietly!"],
    "de": ["Größere Straßen führen über Brücken.", "Ein Mädchen isst Äpfel."],
    "fr": ["L'homme qu'il a vu était là.", "Où est-ce que ça se trouve ?"],
    "ru": ["Съешь же ещё этих мягких французских булок.", "Ёжик в тумане."],
    "el": ["Ο ΛΟΓΟΣ είναι σοφός.", "Καλημέρα σας, φίλοι!"],
    "tr": ["IŞIK İSTANBUL'DA yanıyor.", "Çocuklar ılık süt içti."],
    "hi": ["मैं घर जा रहा हूँ। तुम कहाँ हो॥", "यह एक परीक्षा है।"],
    "ar": ["مرحبا، كيف حالك؟", "اللغة العربية جميلة."],
}
SENTENCES = {lang: [normalize_text(t, lang) for t in texts] for lang, texts in RAW.items()}
ALL = [s for texts in SENTENCES.values() for s in texts]


def test_char_vocabulary_layout_is_deterministic() -> None:
    tok = Tokenizer.build_char(ALL)
    assert tok.tokens[0] == "<blk>" and tok.blank_id == 0
    assert tok.tokens[1] == "|" and tok.tokens[-1] == "<unk>" and tok.unk_id == tok.vocab_size - 1
    chars = tok.tokens[2:-1]
    # every character of the text exactly once, most frequent first (ties by code point)
    from collections import Counter

    counts = Counter(c for s in ALL for c in s.replace(" ", ""))
    assert set(chars) == set(counts)
    assert chars == sorted(counts, key=lambda c: (-counts[c], ord(c)))
    assert Tokenizer.build_char(list(reversed(ALL))).tokens == tok.tokens


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_char_round_trip_every_language(lang: str) -> None:
    tok = Tokenizer.build_char(ALL)
    for sent in SENTENCES[lang]:
        ids = tok.encode(sent)
        assert ids.count(tok.tokens.index("|")) == len(sent.split())  # one boundary per word
        assert tok.decode(ids) == sent
    assert tok.oov_count == 0


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_bpe_round_trip_every_language(model_type: str) -> None:
    tok = Tokenizer.train_bpe(ALL * 3, vocab_size=120, model_type=model_type)
    assert tok.type == "bpe" and tok.tokens[0] == "<blk>" and tok.blank_id == 0 and tok.unk_id == 1
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=tok.bpe_model)  # independent reader of the model
    for lang, sents in SENTENCES.items():
        for sent in sents:
            ids = tok.encode(sent)
            assert ids == sp.encode(sent), lang
            assert 0 not in ids
            assert tok.decode(ids) == sent, lang
    assert tok.oov_count == 0


def test_oov_characters_map_to_unk_and_are_counted() -> None:
    tok = Tokenizer.build_char(SENTENCES["en"])
    ids = tok.encode("the ωω cat")
    assert ids.count(tok.unk_id) == 2 and tok.oov_count == 2
    assert tok.decode(ids) == "the <unk><unk> cat"
    assert tok.reset_oov() == 2 and tok.oov_count == 0
    bpe = Tokenizer.train_bpe(SENTENCES["en"] * 10, vocab_size=30)
    ids = bpe.encode("the ωω cat")
    assert bpe.unk_id in ids and bpe.oov_count == ids.count(bpe.unk_id) >= 1
    assert bpe.decode(ids) == "the <unk> cat"


def test_decode_does_not_collapse_but_drops_blanks() -> None:
    tok = Tokenizer.build_char(["ab"])
    a, b, bar = (tok.tokens.index(c) for c in "ab|")
    assert tok.decode([0, a, a, 0, b, bar, 0]) == "aab"
    with pytest.raises(ToolkitError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize("bad, kind", [("a|b", "char"), ("नमस्ते।", "char"), ("a\u2581b", "bpe"), ("oh, no", "char")])
def test_delimiter_collisions_are_errors_naming_the_character(bad: str, kind: str) -> None:
    with pytest.raises(ToolkitError) as err:
        if kind == "char":
            Tokenizer.build_char(["fine text", bad])
        else:
            Tokenizer.train_bpe(["fine text", bad], vocab_size=10)
    msg = str(err.value)
    assert "normalize_text" in msg and "\n" not in msg
    odd = next(c for c in bad if not c.isalnum() and c != " " and not c.isspace() and unicodedata.category(c)[0] != "M")
    assert f"U+{ord(odd):04X}" in msg


def test_empty_text_and_too_small_vocab_are_errors() -> None:
    with pytest.raises(ToolkitError, match="no non-empty sentence"):
        Tokenizer.build_char(["", "  "])
    n_chars = len(set("".join(ALL).replace(" ", "")))
    with pytest.raises(ToolkitError, match=f"use --vocab-size {n_chars + 3} or more"):
        Tokenizer.train_bpe(ALL, vocab_size=50)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_to_dict_from_dict_and_pickle_round_trip(kind: str) -> None:
    tok = Tokenizer.build_char(ALL) if kind == "char" else Tokenizer.train_bpe(ALL * 3, vocab_size=150)
    d = tok.to_dict()
    assert d["type"] == kind and d["tokens"] == tok.tokens
    assert (d["bpe_model"] is None) == (kind == "char")
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"vocab": d}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["vocab"]  # checkpoints are loaded like this
    for other in (Tokenizer.from_dict(loaded), pickle.loads(pickle.dumps(tok))):
        assert other.tokens == tok.tokens
        for s in ALL:
            assert other.encode(s) == tok.encode(s)
    with pytest.raises(ToolkitError, match="malformed"):
        Tokenizer.from_dict({"tokens": []})


def test_ascii_fast_path_equals_the_general_path() -> None:
    """normalize_text takes a shortcut for plain ASCII (LM texts of hundreds of millions of words);
    it must give exactly what the step-by-step contract gives."""
    import random

    from toolkit.text.normalize import _normalize_general

    rng = random.Random(0)
    alphabet = "aZ09' \t`-.'AbCdI"
    cases = ["DON'T", "'QUOTED'", "ROCK 'N' ROLL", "A''B", "''", "'", "x'", "'y", "ONE  TWO", "", "   ",
             "STUDENTS' FEES", "O'BRIEN'S", "I", "İ"]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    for lang in ("en", "tr", "und"):
        for text in cases:
            assert normalize_text(text, lang) == _normalize_general(text, lang), (lang, text)


def test_normalize_word_of_external_files() -> None:
    from toolkit.text.normalize import normalize_word

    assert normalize_word("D'ARTAGNAN", "en") == "d'artagnan"
    assert [normalize_word(w, "en") for w in ("<UNK>", "<s>", "</S>")] == ["<unk>", "<s>", "</s>"]
    assert [normalize_word(w, "en") for w in ("<NOISE>", "[laughter]", ",", "--", "A.B", "")] == [None] * 6
    assert normalize_word("IŞIK", "tr") == "ışık" and normalize_word("Straße", "de") == "straße"
