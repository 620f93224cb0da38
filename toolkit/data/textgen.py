"""Deterministic sentence generation per language, offline, for synthetic corpora.

Why this design: the synthetic corpus must build with no network, be identical for a
seed, and be learnable by a tiny CTC model from ~10 minutes of audio while still
giving an n-gram LM something to do. So the text comes from

* a small hand-written word list per language (`toolkit/data/lexicons/<lang>.txt`,
  ~110-130 common words in the sections `[nouns]`, `[verbs]`, `[adjectives]`,
  `[connectors]` and optionally `[numbers]`), and
* number words from the `num2words` package (cardinals 1..40) where it supports the
  language; languages it lacks (Swahili, Greek) list their numbers in `[numbers]`.

Sentences follow a handful of part-of-speech templates (noun verb noun, adjective noun
verb number noun, two clauses joined by a connector, ...), with words drawn from a
Zipf distribution inside each class. The vocabulary is small and repetitive (a tiny
model sees each frequent word many times), while the templates make word order
predictable, so an n-gram LM lowers the error rate measurably. Grammar (agreement,
case) is deliberately ignored: this is test data, not a language model of the
language. Sentences start with a capital letter and end with a full stop, so text
normalisation has something to undo.

Real corpora also have thousands of words, most of them rare (names, technical terms, inflected
forms), which an LM cannot predict from context: in real text about half the tokens lie outside
the few hundred most frequent words. With `rare_words=N` the generator makes N words from the
word list's own syllables (pronounceable by the language's espeak-ng voice, absent from the word
list) and puts one, Zipf-distributed, into a share (`RARE_SHARE`) of the content-word slots
(noun, verb, adjective): the vocabulary grows to real size and the lexicon no longer mends most
acoustic errors.

Adding a language = adding `lexicons/<code>.txt` (and an espeak-ng voice for it); without a
word list, `toolkit synth-corpus --text LANG=FILE` takes the language's sentences from a file.
"""
from __future__ import annotations

import itertools
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.utils import ToolkitError

LEXICON_DIR = Path(__file__).with_name("lexicons")
WORD_CLASSES = ("nouns", "verbs", "adjectives", "connectors", "numbers")
MAX_NUMBER = 40  # number words 1..MAX_NUMBER: keeps the vocabulary bounded
RARE_SHARE = 0.5  # with rare words: the share of noun, verb and adjective slots that take one
_CONTENT_CLASSES = ("nouns", "verbs", "adjectives")
MAX_RARE_WORDS = 100_000
# Letters that make a syllable's nucleus (Latin, Cyrillic and Greek scripts of the word lists).
VOWELS = "aeiouyàáâäèéêëìíîïòóôöùúûüœæãõåøаеёиоуыэюяіїєαεηιουωάέήίόύώϊϋΐΰ"
_STRESS_MARKS = ("\u0300", "\u0301")  # grave and acute (Greek tonos decomposes to the acute)
_CHUNK = re.compile(f"([^{VOWELS}]*)([{VOWELS}]+)")

# Part-of-speech templates: N noun, V verb, A adjective, C connector, U number.
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("N", "V", "N"),
    ("A", "N", "V", "N"),
    ("N", "V", "U", "N"),
    ("A", "N", "V", "A", "N"),
    ("U", "A", "N", "V", "N"),
    ("C", "N", "V", "A", "N"),
    ("N", "V", "N", ",", "C", "N", "V", "U", "N"),
    ("A", "N", "V", "N", ",", "C", "A", "N", "V", "N"),
)
_CLASS_OF = {"N": "nouns", "V": "verbs", "A": "adjectives", "C": "connectors", "U": "numbers"}


@dataclass
class Lexicon:
    """Word lists of one language, in the order of the file (most useful words first)."""

    language: str
    words: dict[str, list[str]] = field(default_factory=dict)

    def vocabulary(self) -> set[str]:
        return {w for ws in self.words.values() for w in ws}


def available_languages() -> list[str]:
    """Language codes that have a word list."""
    return sorted(p.stem for p in LEXICON_DIR.glob("*.txt"))


def _parse_lexicon_file(path: Path, language: str) -> Lexicon:
    lex = Lexicon(language, {c: [] for c in WORD_CLASSES})
    section = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in lex.words:
                raise ToolkitError(f"{path}:{lineno}: unknown section [{section}]; use one of {', '.join(WORD_CLASSES)}")
            continue
        if section is None:
            raise ToolkitError(f"{path}:{lineno}: words before the first [section] header")
        lex.words[section].extend(line.split())
    return lex


def _num2words_numbers(language: str) -> list[str]:
    """Cardinals 1..MAX_NUMBER from num2words, or [] when it does not know the language."""
    try:
        from num2words import num2words
    except ImportError:  # pragma: no cover - num2words is in requirements.txt
        raise ToolkitError("the num2words package is missing; run local/install.sh (it is in requirements.txt)")
    try:
        return [num2words(i, lang=language) for i in range(1, MAX_NUMBER + 1)]
    except (NotImplementedError, KeyError, ValueError):
        return []


def load_lexicon(language: str) -> Lexicon:
    """Read `lexicons/<language>.txt` and add number words; ToolkitError if unusable."""
    path = LEXICON_DIR / f"{language}.txt"
    if not path.is_file():
        raise ToolkitError(
            f"no word list for language {language!r} ({path}); available: {', '.join(available_languages())}; "
            f"give its sentences with --text {language}=FILE, or add lexicons/<code>.txt"
        )
    lex = _parse_lexicon_file(path, language)
    if not lex.words["numbers"]:
        lex.words["numbers"] = _num2words_numbers(language)
    missing = [c for c in WORD_CLASSES if not lex.words[c]]
    if missing:
        raise ToolkitError(f"{path}: empty word class(es) {', '.join(missing)}; add a [{missing[0]}] section")
    return lex


def syllables(word: str) -> list[str]:
    """Onset + nucleus chunks of a word; of the consonants between two nuclei the last starts the
    next chunk and the others close the previous one; trailing consonants close the last chunk.
    `tavolo` -> ta vo lo, `parlare` -> par la re. [] for a word without a vowel."""
    chunks: list[str] = []
    end = 0
    for m in _CHUNK.finditer(word):
        onset, nucleus = m.groups()
        if chunks and len(onset) > 1:
            chunks[-1] += onset[:-1]
            onset = onset[-1]
        chunks.append(onset + nucleus)
        end = m.end()
    if chunks:
        chunks[-1] += word[end:]
    return chunks


def _stress_marks(word: str) -> int:
    """Written stress accents in a word: two syllables that each had one make a word that
    espeak-ng (which reads Greek and Spanish stress from the spelling) would stress twice."""
    return sum(unicodedata.normalize("NFD", ch)[1:2] in _STRESS_MARKS for ch in word)


def make_rare_words(lexicon: Lexicon, n: int, seed: int) -> list[str]:
    """n distinct lower-case words (seeded): a word-initial syllable of the word list, sometimes a
    medial one, and a word-final one; at least 4 letters, at most one written stress accent, none
    a word of the list."""
    if not 0 <= n <= MAX_RARE_WORDS:
        raise ToolkitError(f"--rare-words {n}: give 0 to {MAX_RARE_WORDS}")
    first, middle, last = set(), set(), set()
    taken = {word.lower() for word in lexicon.vocabulary()}
    for word in taken:
        chunks = syllables(word) if word.isalpha() else []
        if len(chunks) >= 2:
            first.add(chunks[0])
            last.add(chunks[-1])
            middle.update(chunks[1:-1])
    firsts, middles, lasts = sorted(first), sorted(middle), sorted(last)
    rng = random.Random(f"rare-words-{lexicon.language}-{seed}")
    words: list[str] = []
    attempts = 0
    while firsts and len(words) < n and attempts < 50 * n:
        attempts += 1
        word = rng.choice(firsts) + (rng.choice(middles) if middles and rng.random() < 0.5 else "") + rng.choice(lasts)
        if len(word) >= 4 and word not in taken and _stress_marks(word) <= 1:
            taken.add(word)
            words.append(word)
    if len(words) < n:
        raise ToolkitError(f"--rare-words {n}: the {lexicon.language} word list's syllables make only {len(words)} "
                           "distinct words; give fewer")
    return words


class SentenceGenerator:
    """Sentences of one language, identical for the same (language, seed, rare_words)."""

    def __init__(self, language: str, seed: int, rare_words: int = 0) -> None:
        self.language = language
        self.lexicon = load_lexicon(language)
        # str seeds are hashed with SHA-512 by `random`, so this is stable across runs.
        self.rng = random.Random(f"textgen-{language}-{seed}")
        self._classes: dict[str, tuple[list[str], list[float]]] = {}
        words_by_class = dict(self.lexicon.words)
        self.rare = make_rare_words(self.lexicon, rare_words, seed) if rare_words else []
        if self.rare:
            words_by_class["rare"] = self.rare
        for cls, words in words_by_class.items():
            order = list(words)
            self.rng.shuffle(order)  # which words are frequent depends on the seed
            weights = [1.0 / (rank + 1) for rank in range(len(order))]  # Zipf, exponent 1
            # Cumulative once (what random.choices computes from weights on every call).
            self._classes[cls] = (order, list(itertools.accumulate(weights)))

    def _word(self, slot: str) -> str:
        cls = _CLASS_OF[slot]
        if cls in _CONTENT_CLASSES and self.rare and self.rng.random() < RARE_SHARE:
            cls = "rare"
        words, cum_weights = self._classes[cls]
        return self.rng.choices(words, cum_weights=cum_weights)[0]

    def sentence(self) -> str:
        """One sentence, capitalised, with commas where the template has them and a full stop."""
        template = self.rng.choice(TEMPLATES)
        text = ""
        for slot in template:
            if slot == ",":
                text += ","
                continue
            text += (" " if text else "") + self._word(slot)
        return text[0].upper() + text[1:] + "."

    def sentences(self, n: int) -> list[str]:
        return [self.sentence() for _ in range(n)]
