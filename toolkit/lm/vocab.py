"""Words of external LMs and lexicons, normalised like the transcripts, and their coverage.

Every word that comes from outside (an ARPA file, a lexicon or word list, LM text) goes through
`toolkit.text.normalize.normalize_word` with the corpus language, the function the transcripts
went through: openslr's UPPER-case LibriSpeech files become the lower-case words of the lang dir.

- `arpa_unigrams(path)`: the words of an ARPA file (its 1-gram section only, read without the rest).
- `word_map(words, language)`: original -> normalised word (None: dropped), and which normalised
  words several originals fall onto (`The`, `THE` -> `the`).
- `normalize_arpa(src, dst, language)`: an ARPA file with every word normalised, streamed (a
  4-gram LM of hundreds of millions of n-grams is never held in memory). An n-gram with a dropped
  word is dropped (the set of dropped n-grams is closed under prefixes and suffixes, so the result
  is a valid back-off model; the mass of those n-grams is lost, and logged). Words that become
  equal (`THE`, `The`) are merged: each group keeps the continuations of its likeliest original
  (by unigram probability) as the merged word's, and drops the n-grams with another original in a
  history position (adding the conditional distributions of two histories would give one whose
  probabilities sum to about 2); n-grams that differ only in the last word's original add their
  probabilities and keep the back-off of the likeliest original. The result is an approximation
  (a model estimated on normalised text is exact), and the summary says how much was merged and
  dropped. Only n-grams holding a colliding word are buffered.
- `coverage(lexicon_words, lm_words)` and `diagnose(...)`: the share of the lexicon the LM knows,
  and the likely cause when it is small (case, script/language, another text).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from toolkit.lm.arpa import arpa_order, format_entry, iter_arpa
from toolkit.text.normalize import normalize_word
from toolkit.utils import ToolkitError, atomic_path

log = logging.getLogger(__name__)

NORMALIZATION_VERSION = 2  # part of the graph cache key: bump when normalize_arpa's output changes


def arpa_unigrams(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA file's 1-gram section, in file order (stops reading after it)."""
    words: list[str] = []
    for order, ngram, _, _ in iter_arpa(path):
        if order > 1:
            break
        words.append(ngram[0])
    if not words:
        raise ToolkitError(f"{path}: the ARPA file has no unigrams; re-create it")
    return words


@dataclass
class WordMap:
    """Original word -> normalised word (None = dropped), for one vocabulary."""

    mapping: dict[str, str | None]
    dropped: list[str] = field(default_factory=list)
    collisions: dict[str, list[str]] = field(default_factory=dict)  # normalised -> its originals (> 1)

    @property
    def identity(self) -> bool:
        """True when normalisation changes nothing (no rewrite needed)."""
        return not self.dropped and all(k == v for k, v in self.mapping.items())

    def words(self) -> set[str]:
        return {v for v in self.mapping.values() if v is not None}


def word_map(words: Iterable[str], language: str) -> WordMap:
    mapping: dict[str, str | None] = {}
    images: dict[str, list[str]] = {}
    dropped = []
    for w in words:
        if w in mapping:
            continue
        n = normalize_word(w, language)
        mapping[w] = n
        if n is None:
            dropped.append(w)
        else:
            images.setdefault(n, []).append(w)
    return WordMap(mapping, dropped, {n: ws for n, ws in images.items() if len(ws) > 1})


@dataclass
class ArpaNormalization:
    """What `normalize_arpa` did."""

    counts: list[int]  # n-grams per order written
    dropped_words: list[str]
    dropped_ngrams: int
    merged_ngrams: int
    collisions: dict[str, list[str]]
    history_dropped: int = 0  # n-grams with a less likely original of a merged word in their history

    def summary(self) -> str:
        parts = [f"n-grams per order {self.counts}"]
        if self.dropped_words:
            ex = ", ".join(self.dropped_words[:5])
            parts.append(f"{len(self.dropped_words)} words that are no transcript word dropped ({ex}"
                         f"{', ...' if len(self.dropped_words) > 5 else ''}) with {self.dropped_ngrams} n-grams")
        if self.collisions:
            ex = ", ".join(f"{'/'.join(v)}->{k}" for k, v in list(self.collisions.items())[:3])
            parts.append(f"{len(self.collisions)} words merged by normalisation ({ex}), "
                         f"{self.merged_ngrams} n-grams merged, {self.history_dropped} n-grams after a less "
                         "likely original dropped (estimate the LM on normalised text for an exact model)")
        return "; ".join(parts)


def _logadd10(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return min(hi + math.log10(1.0 + 10.0 ** (lo - hi)), 0.0)


def normalize_arpa(src: str | os.PathLike, dst: str | os.PathLike, language: str,
                   wmap: WordMap | None = None) -> ArpaNormalization:
    """Write `dst` (plain ARPA, atomically): `src` with every word normalised (see the module doc)."""
    src, dst = Path(src), Path(dst)
    wmap = wmap or word_map(arpa_unigrams(src), language)
    colliding = set(wmap.collisions)
    unigram_logp: dict[str, float] = {}  # originals of colliding words
    dominant: set[str] = set()  # the likeliest original of each colliding word (filled after the 1-grams)
    dropped_ngrams = merged = history_dropped = 0
    counts: list[int] = []
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".normalize_arpa.") as tmp:
        sections: list[Path] = []
        out = None
        buffer: dict[tuple[str, ...], tuple[float, float, float]] = {}  # (logp, bow, rank of the bow's original)
        top = None

        def close_section() -> None:
            nonlocal out, buffer
            if out is None:
                return
            for g, (p, b, _) in sorted(buffer.items()):
                out.write(format_entry(g, p, None if top or g[-1] == "</s>" else b) + "\n")
                counts[-1] += 1
            buffer = {}
            out.close()
            out = None

        n_orders = arpa_order(src)
        for order, ngram, logp, bow in iter_arpa(src):
            if order != len(counts):
                close_section()
                if order == 2:
                    dominant.update(max(originals, key=lambda w: unigram_logp.get(w, -math.inf))
                                    for originals in wmap.collisions.values())
                while len(counts) < order:  # an empty section keeps its place
                    counts.append(0)
                    sections.append(Path(tmp) / f"{len(counts)}.txt")
                out = open(sections[-1], "w", encoding="utf-8")
                top = order == n_orders
            words = []
            for w in ngram:
                n = wmap.mapping[w] if w in wmap.mapping else normalize_word(w, language)
                if n is None:
                    break
                words.append(n)
            if len(words) < len(ngram):
                dropped_ngrams += 1
                continue
            g = tuple(words)
            has_bow = not top and g[-1] != "</s>"
            if colliding and not colliding.isdisjoint(g):
                if order == 1:
                    unigram_logp[ngram[0]] = logp
                elif any(n in colliding and w not in dominant for w, n in zip(ngram[:-1], g[:-1])):
                    history_dropped += 1
                    continue
                # whose back-off the merged n-gram keeps: the likeliest original's (by unigram probability)
                rank = logp if order == 1 else 0.0 if g[-1] not in colliding or ngram[-1] in dominant else -math.inf
                if g in buffer:
                    merged += 1
                    p0, b0, r0 = buffer[g]
                    buffer[g] = (_logadd10(p0, logp), bow if rank > r0 else b0, max(rank, r0))
                else:
                    buffer[g] = (logp, bow, rank)
                continue
            out.write(format_entry(g, logp, bow if has_bow else None) + "\n")
            counts[-1] += 1
        close_section()
        while len(counts) < n_orders:
            counts.append(0)
            sections.append(Path(tmp) / f"{len(counts)}.txt")
            sections[-1].write_text("", encoding="utf-8")
        if not counts or counts[0] == 0:
            raise ToolkitError(f"{src}: no word of the LM is a word after normalisation for language "
                               f"{language!r}; is this an ARPA LM of words?")
        with atomic_path(dst) as tmp_out, open(tmp_out, "w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for k, c in enumerate(counts, start=1):
                f.write(f"ngram {k}={c}\n")
            for k, section in enumerate(sections, start=1):
                f.write(f"\n\\{k}-grams:\n")
                with open(section, encoding="utf-8") as s:
                    shutil.copyfileobj(s, f)
            f.write("\n\\end\\\n")
    return ArpaNormalization(counts, list(wmap.dropped), dropped_ngrams, merged, dict(wmap.collisions),
                             history_dropped)


# ---------------------------------------------------------------------------------------
# Coverage of a lexicon by an LM, and why it can be small

SPECIALS = {"<eps>", "<unk>", "<s>", "</s>", "#0"}


def coverage(lexicon_words: Iterable[str], lm_words: Iterable[str]) -> tuple[float, int]:
    """(share of the lexicon's words that the LM has, number of lexicon words); specials left out."""
    lex = {w for w in lexicon_words if w not in SPECIALS}
    lm = set(lm_words)
    return (len(lex & lm) / len(lex) if lex else 0.0), len(lex)


def oov_rate(sentences: Iterable[str], vocabulary: set[str]) -> tuple[float, int, int]:
    """(OOV rate, OOV tokens, tokens) of whitespace-split sentences against a vocabulary."""
    tokens = oov = 0
    for s in sentences:
        for w in s.split():
            tokens += 1
            oov += w not in vocabulary
    return (oov / tokens if tokens else 0.0), oov, tokens


def _script(word: str) -> str | None:
    for ch in word:
        if unicodedata.category(ch)[0] == "L":
            try:
                return unicodedata.name(ch).split()[0]
            except ValueError:
                return None
    return None


def majority_script(words: Iterable[str]) -> str | None:
    c = Counter(s for s in map(_script, words) if s)
    return c.most_common(1)[0][0] if c else None


def diagnose(lexicon_words: Iterable[str], lm_raw_words: Iterable[str], lm_words: Iterable[str]) -> str:
    """The likely reason why an LM covers little of a lexicon: case, language (script), or another text."""
    lex = [w for w in lexicon_words if w not in SPECIALS]
    raw = [w for w in lm_raw_words if w.lower() not in SPECIALS]
    lm = [w for w in lm_words if w not in SPECIALS]
    folded_cov, _ = coverage({w.casefold() for w in lex}, {w.casefold() for w in lm})
    plain_cov, _ = coverage(lex, lm)
    if folded_cov >= 2 * plain_cov + 0.1:
        return ("case: the lexicon's words differ from the LM's only in case; build the lang dir with "
                "`toolkit lang-dir` (it normalises the words) instead of by hand")
    s_lex, s_lm = majority_script(lex), majority_script(raw)
    if s_lex and s_lm and s_lex != s_lm:
        return (f"language: the LM's words are in {s_lm.title()} script, the lexicon's in {s_lex.title()}; "
                "give the LM of this corpus's language")
    return "wrong file: the LM was estimated on another text than this lexicon's (another corpus or language?)"
