"""The text of a synthetic corpus: a sentence pool per language, the words held out of
training, and sentence-disjoint candidate lists for train, dev and test.

A real corpus differs from "the LM text is the training transcripts" in ways that decoding
must survive, and the synthetic corpus imitates them:

* **An external LM text much larger than the transcripts.** Every language has a pool of
  sentences: `--lm-sentences` unique sentences of its generator (`toolkit.data.textgen`), or
  every sentence of a user file (`--text LANG=FILE`). The recorded sentences are drawn from
  the pool; the whole pool is what Common Voice's `validated_sentences.tsv` lists and, minus
  the dev/test recordings, what the LibriSpeech-format `librispeech-lm-norm.txt.gz` holds.
* **Test words absent from training.** Some words are held out: no training sentence
  contains one, while a share (`OOV_SENTENCE_SHARE`) of the dev/test sentences does, as
  Common Voice's sentence-disjoint splits produce. Held-out words are drawn (seeded) among the
  words that occur in at most `MAX_HELDOUT_DF` of the pool's sentences (rare words, as real
  OOVs are), until `HELDOUT_SENTENCE_SHARE` of the pool's sentences contain one. Pool
  sentences with a held-out word that no dev/test list takes stay in the LM text, so an
  open-vocabulary LM knows most held-out words.
* **Sentence-disjoint splits.** The pool is shuffled (seeded) and dealt: dev and test get
  `--dev-fraction` / `--test-fraction` of the sentences without held-out words plus their
  share of sentences with one (spread evenly through each list), train gets the other
  sentences without held-out words. A split that needs more sentences than its list holds
  (a short user file) repeats them with other speakers, as Common Voice records a sentence
  several times, and a warning says so.

Sentences are compared and counted in their normalised form (`toolkit.text.normalize`); the
pool keeps the original form (capitals, punctuation) for espeak-ng and Common Voice's TSVs.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.textgen import SentenceGenerator
from toolkit.text.normalize import normalize_text
from toolkit.utils import ToolkitError, read_utf8_lines

log = logging.getLogger(__name__)

DEFAULT_LM_SENTENCES = 10_000   # generated pool per language (the recorded sentences are a few hundred)
HELDOUT_SENTENCE_SHARE = 0.15   # pool sentences that contain a held-out word
MAX_HELDOUT_DF = 0.04           # a held-out word occurs in at most this share of the pool's sentences
OOV_SENTENCE_SHARE = 0.2        # dev/test sentences that contain a held-out word
SPLITS = ("train", "dev", "test")


def words_of(sentence: str, language: str) -> list[str]:
    """The words of a sentence as transcripts are compared: normalised, lower-case."""
    return normalize_text(sentence, language).split()


class Normalizer:
    """`normalize_text` memoised per whitespace-separated token.

    Normalisation only looks inside a token (an apostrophe is kept between two word
    characters, and whitespace is neither), so normalising the tokens one by one gives the
    same text as normalising the sentence; a pool of ten thousand sentences reuses a few
    hundred tokens, which makes this about ten times faster.
    """

    def __init__(self, language: str) -> None:
        self.language = language
        self._tokens: dict[str, str] = {}

    def __call__(self, sentence: str) -> str:
        out = []
        for token in sentence.split():
            norm = self._tokens.get(token)
            if norm is None:
                norm = self._tokens[token] = normalize_text(token, self.language)
            if norm:
                out.append(norm)
        return " ".join(out)


@dataclass
class CorpusText:
    """A language's sentences: the pool and its sentence-disjoint split lists."""

    language: str
    source: str                      # "word list" or the --text file
    pool: list[str]                  # every sentence (original form), unique after normalisation, shuffled
    heldout: frozenset[str]          # normalised words no train sentence contains
    splits: dict[str, list[str]] = field(default_factory=dict)  # candidates per split, disjoint


def generated_pool(language: str, seed: int, n: int, rare_words: int = 0) -> tuple[list[str], list[str]]:
    """Up to n sentences of the language's generator (with `rare_words` generated words), unique after
    normalisation, in draw order, and their normalised forms."""
    if n < 3:
        raise ToolkitError(f"--lm-sentences {n}: need at least 3 sentences per language (train, dev and test)")
    gen = SentenceGenerator(language, seed, rare_words)
    normalize = Normalizer(language)
    seen: dict[str, str] = {}  # normalised -> original
    attempts = 0
    while len(seen) < n and attempts < 50 * n:
        attempts += 1
        sentence = gen.sentence()
        seen.setdefault(normalize(sentence), sentence)
    if len(seen) < n:
        log.info("%s: the word list yields %d distinct sentences, fewer than --lm-sentences %d", language, len(seen), n)
    return list(seen.values()), list(seen)


# A user's sentence becomes one utterance: 100 words is about 35-40 s of espeak-ng speech, the
# longest LibriSpeech test utterances; a longer line is a paragraph given by mistake.
MAX_SENTENCE_WORDS = 100


def file_pool(language: str, path: Path, seed: int) -> tuple[list[str], list[str]]:
    """The sentences of a user file (UTF-8, one a line), unique after normalisation, shuffled
    (seeded), and their normalised forms."""
    lines = read_utf8_lines(path, "--text", f"the {language} sentences (UTF-8, one sentence a line)")
    seen: dict[str, str] = {}
    normalize = Normalizer(language)
    for n, line in enumerate(lines, start=1):
        sentence = " ".join(line.split())
        if len(sentence.split()) > MAX_SENTENCE_WORDS:
            raise ToolkitError(f"--text {language}={path}:{n}: a line of {len(sentence.split())} words (minutes of "
                               f"speech as one utterance); give one sentence a line, at most {MAX_SENTENCE_WORDS} words")
        key = normalize(sentence)
        if key:
            seen.setdefault(key, sentence)
    if len(seen) < 3:
        raise ToolkitError(f"--text {language}={path}: {len(seen)} distinct sentence(s) with words; give at least 3 "
                           "(train, dev and test take different sentences)")
    pairs = [(original, norm) for norm, original in seen.items()]
    random.Random(f"text-file-{language}-{seed}").shuffle(pairs)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def choose_heldout(normalised: list[str], language: str, seed: int) -> frozenset[str]:
    """Rare words (seeded) held out of training until HELDOUT_SENTENCE_SHARE of the pool contains one."""
    pool = normalised
    sentence_words = [set(s.split()) for s in normalised]
    df: dict[str, int] = {}
    for words in sentence_words:
        for w in words:
            df[w] = df.get(w, 0) + 1
    limit = max(1, int(MAX_HELDOUT_DF * len(pool)))
    candidates = sorted(w for w, n in df.items() if n <= limit)
    random.Random(f"heldout-{language}-{seed}").shuffle(candidates)
    target = HELDOUT_SENTENCE_SHARE * len(pool)
    heldout: set[str] = set()
    covered = [False] * len(pool)
    n_covered = 0
    by_word: dict[str, list[int]] = {}
    for i, words in enumerate(sentence_words):
        for w in words:
            by_word.setdefault(w, []).append(i)
    for w in candidates:
        new = sum(1 for i in by_word[w] if not covered[i])
        if n_covered + new > target:
            continue
        heldout.add(w)
        for i in by_word[w]:
            if not covered[i]:
                covered[i] = True
                n_covered += 1
    return frozenset(heldout)


def _spread(clean: list[str], oov: list[str]) -> list[str]:
    """Merge two lists so that every prefix holds its share of `oov` sentences, rounded
    (with a share of 0.2 the third sentence is the first with a held-out word)."""
    total = len(clean) + len(oov)
    out: list[str] = []
    ci = oi = 0
    for k in range(total):
        want_oov = (2 * (k + 1) * len(oov) + total) // (2 * total)
        if oi < want_oov:
            out.append(oov[oi])
            oi += 1
        else:
            out.append(clean[ci])
            ci += 1
    return out


def deal_splits(pool: list[str], normalised: list[str], heldout: frozenset[str], language: str,
                fractions: dict[str, float]) -> dict[str, list[str]]:
    """Sentence-disjoint candidate lists; train never holds a held-out word (see the module docstring)."""
    clean, oov = [], []
    for s, norm in zip(pool, normalised):
        (oov if heldout.intersection(norm.split()) else clean).append(s)
    lists: dict[str, list[str]] = {}
    start = 0
    oov_start = 0
    for split in ("dev", "test"):
        if fractions[split] <= 0:
            lists[split] = []
            continue
        n_clean = max(1, round(len(clean) * fractions[split]))
        part = clean[start:start + n_clean]
        start += len(part)
        n_oov = round(len(part) * OOV_SENTENCE_SHARE / (1 - OOV_SENTENCE_SHARE))
        extra = oov[oov_start:oov_start + n_oov]
        oov_start += len(extra)
        lists[split] = _spread(part, extra)
    lists["train"] = clean[start:]
    for split in SPLITS:
        if fractions[split] > 0 and not lists[split]:
            raise ToolkitError(f"{language}: {len(pool)} sentences leave none for {split} ({len(clean)} without held-out "
                               "words); give more sentences (--text) or --lm-sentences")
    return lists


def corpus_text(language: str, seed: int, fractions: dict[str, float], text_file: Path | None = None,
                lm_sentences: int = DEFAULT_LM_SENTENCES, rare_words: int = 0) -> CorpusText:
    """The pool, held-out words and split lists of one language (a pure function of the arguments).
    `rare_words` applies to a generated pool only: a user's sentences are taken as they are."""
    if text_file is not None:
        (pool, normalised), source = file_pool(language, text_file, seed), str(text_file)
    else:
        (pool, normalised), source = generated_pool(language, seed, lm_sentences, rare_words), "word list"
    heldout = choose_heldout(normalised, language, seed)
    return CorpusText(language, source, pool, heldout, deal_splits(pool, normalised, heldout, language, fractions))


def parse_text_options(values: list[str] | None) -> dict[str, Path]:
    """`--text LANG=FILE` options as {language: path}; one-line errors for a bad form or a repeat."""
    out: dict[str, Path] = {}
    for value in values or []:
        lang, sep, path = value.partition("=")
        lang = lang.strip()
        if not sep or not lang or not path:
            raise ToolkitError(f"--text {value!r}: use --text LANG=FILE, e.g. --text pt=sentences.txt")
        if lang in out:
            raise ToolkitError(f"--text {lang}= given twice; give one file per language")
        out[lang] = Path(path)
    return out
