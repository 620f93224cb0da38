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
