"""Per-language text normalisation for ASR transcripts (docs/DESIGN.md, "Multilingual").

`normalize_text(text, language)` is the one function every corpus preparation step uses,
so that training text, lexicons, LM text and scoring references all agree.

Contract (in this order):
1. Unicode NFKC (compatibility forms such as full-width letters and ligatures unified).
2. Apostrophe variants (’ ‘ ʼ ′ ` ´ and full-width ') become the ASCII apostrophe `'`.
3. Punctuation (Unicode categories P*) and symbols (S*) become spaces; this includes
   the word-boundary token `|` and script punctuation such as the Devanagari danda
   (। ॥), the Arabic comma (،) and question mark (؟), so none of them can collide with
   the word boundary of the character vocabulary. An apostrophe survives only *inside*
   a word (between two letters, marks or digits): `l'homme`, `don't`; quoting
   apostrophes ('word') are removed.
4. Lower-casing where the script has case. We use `str.lower()`, not `str.casefold()`:
   casefold is for caseless *matching* and rewrites orthography (German ß -> ss, Greek
   final sigma ς -> σ), whereas lower() keeps a readable transcript and handles the
   Greek final sigma by context. Turkish and Azerbaijani get their dotted/dotless i
   pairs (I -> ı, İ -> i) instead of the default mapping (I -> i, İ -> i̇).
   Scripts without case are unchanged.
5. Format characters (soft hyphen, BOM, bidi marks) are dropped, except the zero-width
   (non-)joiners that are spelling in Persian and Indic scripts; the Arabic tatweel
   (a purely typographic elongation) is dropped.
6. Whitespace runs collapse to one space; leading/trailing space is stripped.

Digits are kept as digits (no number verbalisation). The result may be empty (a
transcript of punctuation only); callers decide whether to drop such utterances.
"""
from __future__ import annotations

import unicodedata

__all__ = ["normalize_text", "APOSTROPHE_VARIANTS"]

# Characters people (and keyboards) use for the apostrophe. U+02BC (modifier letter
# apostrophe) is a letter in Unicode, but in transcripts it plays the same role.
APOSTROPHE_VARIANTS = "\u2019\u2018\u02bc\u2032\u0060\u00b4\u02b9\u02bb\u2035\uff07"
_APOSTROPHE_TABLE = str.maketrans({c: "'" for c in APOSTROPHE_VARIANTS})

# Zero-width non-joiner / joiner: orthographic in Persian, Kurdish and Indic scripts.
_KEEP_FORMAT = {"\u200c", "\u200d"}
_TATWEEL = "\u0640"
_TURKIC = {"tr", "az", "crh", "gag", "tt", "kk"}  # languages using dotted/dotless i pairs in Latin script


def _base_language(language: str) -> str:
    """'tr-TR' / 'tr_TR' / 'TR' -> 'tr'."""
    return language.replace("_", "-").split("-")[0].lower()


def _is_word_char(ch: str) -> bool:
    """Letters, combining marks, digits and the zero-width joiners belong to words."""
    return unicodedata.category(ch)[0] in "LMN" or ch in _KEEP_FORMAT


def _strip_punctuation(text: str) -> str:
    """Punctuation/symbols -> space; keep apostrophes that sit between word characters."""
    out: list[str] = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch == "'":
            inside = 0 < i < n - 1 and _is_word_char(text[i - 1]) and _is_word_char(text[i + 1])
            out.append("'" if inside else " ")
            continue
        if ch == _TATWEEL:
            continue
        cat = unicodedata.category(ch)
        if cat[0] in "PS" or cat in ("Cc", "Zl", "Zp", "Zs"):
            out.append(" ")
        elif cat == "Cf" and ch not in _KEEP_FORMAT:
            continue
        elif cat in ("Co", "Cn", "Cs"):  # private use, unassigned, lone surrogates: no spelling
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _lower(text: str, language: str) -> str:
    if _base_language(language) in _TURKIC:
        # Must happen before lower(): Python maps I -> i and İ -> i + U+0307.
        text = text.replace("I", "ı").replace("İ", "i")
    return text.lower()


def normalize_text(text: str, language: str) -> str:
    """Normalise one transcript for language `language` (ISO code such as 'en', 'tr', 'hi').

    See the module docstring for the exact contract. Never raises on odd characters;
    raises TypeError when `text` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_text expects str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_APOSTROPHE_TABLE)
    text = _strip_punctuation(text)
    text = _lower(text, language)
    # lower() can produce decomposed sequences (e.g. for some Latin capitals); keep NFC.
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())
