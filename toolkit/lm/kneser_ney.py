"""Interpolated modified Kneser-Ney n-gram estimation (Chen & Goodman 1998), written to ARPA.

The recipe, as KenLM's `lmplz` does it:

1. Each sentence is padded `<s> w1 .. wn </s>`. The *full* n-grams are those ending at every
   position after `<s>`, truncated at the sentence start: order-N n-grams plus shorter ones that
   begin with `<s>` (nothing can precede `<s>`). They keep their raw counts.
2. Every other lower-order n-gram g gets the continuation count N1+(. g): the number of
   distinct words seen to its left, i.e. of distinct (k+1)-grams in the model ending in g.
3. Per order, three discounts from the count-of-counts n1..n4 of those adjusted counts:
   Y = n1 / (n1 + 2 n2),  D1 = 1 - 2Y n2/n1,  D2 = 2 - 3Y n3/n2,  D3+ = 3 - 4Y n4/n3.
   Small corpora can make them undefined or out of range; then a fallback (0.5, 1, 1.5, as
   `lmplz --discount_fallback`) is used for that order and logged.
4. Interpolation, with a(.) the adjusted counts, S(h) = sum_w a(h w) and n_i(h) the number of
   words seen after h with count i (3 = three or more):
       p(w | h) = max(a(h w) - D(a(h w)), 0) / S(h) + gamma(h) p(w | h[1:]),
       gamma(h) = (D1 n1(h) + D2 n2(h) + D3 n3+(h)) / S(h),
   bottoming out in the uniform distribution over the vocabulary (words, </s>, <unk>).
   Because every listed n-gram stores its interpolated probability, the ARPA back-off of a
   history is exactly gamma(h), and each distribution sums to one.
5. Optional count pruning, exactly as `lmplz --prune` does it: order-k n-grams (k >= 2) that
   occur in the text at most threshold-k times (raw occurrences) are dropped. Discounts come from
   the unpruned counts. A dropped n-gram's whole adjusted count moves into its history's gamma:
       gamma(h) = (sum_kept D(a) + sum_pruned a) / S(h),
   and the kept ones interpolate with that gamma, so every distribution still sums to one and
   the ARPA back-off of h is gamma(h). (Counts are monotone, so a kept n-gram's prefix and
   suffix are always kept.)
"""
from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from toolkit.lm.arpa import BOS, EOS, UNK, ArpaModel
from toolkit.utils import ToolkitError

log = logging.getLogger(__name__)

DEFAULT_FALLBACK = (0.5, 1.0, 1.5)
IdGram = tuple[int, ...]
BOS_ID, EOS_ID, UNK_ID = 0, 1, 2


@dataclass
class KneserNeyInfo:
    """What the estimation found: per order the discounts, whether they fell back, n-gram counts."""

    discounts: list[tuple[float, float, float]] = field(default_factory=list)
    fallback_orders: list[int] = field(default_factory=list)
    ngram_counts: list[int] = field(default_factory=list)
    num_sentences: int = 0
    num_tokens: int = 0


def full_ngram_counts(sentences: Iterable[Sequence[int]], order: int) -> Counter:
    """Raw counts of the full n-grams: order-N ones and the shorter ones starting with <s>."""
    full: Counter = Counter()
    for ids in sentences:
        padded = (BOS_ID, *ids, EOS_ID)
        for i in range(1, len(padded)):
            full[padded[max(0, i - order + 1): i + 1]] += 1
    return full


def adjusted_counts(sentences: Iterable[Sequence[int]], order: int, full: Counter | None = None) -> list[Counter]:
    """Adjusted counts per order (index k-1 for order k) of id-sentences without padding."""
    full = full_ngram_counts(sentences, order) if full is None else full
    counts: list[Counter] = [Counter() for _ in range(order)]
    for gram, c in full.items():
        counts[len(gram) - 1][gram] = c
    # Continuation counts: each distinct (k+1)-gram adds one left context to its suffix.
    # Suffixes never start with <s>, so they never collide with the raw-count <s>-grams.
    for k in range(order - 1, 0, -1):
        lower = counts[k - 1]
        for gram in counts[k]:
            lower[gram[1:]] += 1
    return counts


def occurrence_counts(full: Counter, order: int) -> list[Counter]:
    """How often each n-gram occurs in the padded text (what lmplz's --prune compares).

    Every occurrence of a k-gram ends where exactly one full n-gram ends, and is its suffix.
    """
    occ: list[Counter] = [Counter() for _ in range(order)]
    for gram, c in full.items():
        for k in range(1, len(gram) + 1):
            occ[k - 1][gram[-k:]] += c
    return occ


def compute_discounts(counts: Counter, fallback: Sequence[float] = DEFAULT_FALLBACK) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from count-of-counts; `(fallback, True)` when they are undefined or out of range."""
    n = Counter(c for c in counts.values() if c <= 4)
    n1, n2, n3, n4 = (n[i] for i in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:
        return tuple(fallback), True  # type: ignore[return-value]
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < di < i for i, di in enumerate(d, start=1)):
        return tuple(fallback), True  # type: ignore[return-value]
    return d, False


def _context_stats(counts: Counter, disc: Sequence[float], kept: set[IdGram] | None
                   ) -> tuple[dict[IdGram, float], dict[IdGram, float]]:
    """S(h) and gamma(h) for every history h of one order (`kept`: the n-grams surviving pruning)."""
    total: dict[IdGram, float] = defaultdict(float)
    mass: dict[IdGram, float] = defaultdict(float)
    for gram, c in counts.items():
        h = gram[:-1]
        total[h] += c
        mass[h] += disc[min(c, 3) - 1] if kept is None or gram in kept else c
    return total, {h: mass[h] / total[h] for h in total}


def interpolate(
    counts: list[Counter], discounts: list[Sequence[float]], vocab_size: int,
    keep: list[set[IdGram]] | None = None,
) -> tuple[list[dict[IdGram, float]], list[dict[IdGram, float]]]:
    """Interpolated probabilities per order and gamma(h) per history (both keyed by id tuples).

    `vocab_size` is the size of the predicted vocabulary (words, </s>, <unk>): the uniform
    distribution at the bottom of the recursion. `keep` (per order, from `prune_ngrams`) limits
    the n-grams to those surviving pruning. Returns (probs, gammas) where probs[k-1] maps the
    k-grams of the model to p(w | h) and gammas[k-1] maps histories of length k-1.
    """
    probs: list[dict[IdGram, float]] = []
    gammas: list[dict[IdGram, float]] = []
    for k, (table, disc) in enumerate(zip(counts, discounts), start=1):
        kept = keep[k - 1] if keep is not None and k > 1 else None
        total, gamma = _context_stats(table, disc, kept)
        lower = probs[-1] if probs else None
        p: dict[IdGram, float] = {}
        for gram, c in table.items():
            if kept is not None and gram not in kept:
                continue
            h = gram[:-1]
            back = lower[gram[1:]] if lower is not None else 1.0 / vocab_size
            p[gram] = max(c - disc[min(c, 3) - 1], 0.0) / total[h] + gamma[h] * back
        if k == 1 and (UNK_ID,) not in p:
            p[(UNK_ID,)] = gamma[()] / vocab_size
        probs.append(p)
        gammas.append(gamma)
    return probs, gammas


def prune_thresholds(prune: Sequence[int] | None, order: int) -> list[int] | None:
    """Expand lmplz-style thresholds (the last one repeats); validate them."""
    if not prune:
        return None
    values = [int(v) for v in prune]
    if any(v < 0 for v in values) or any(b < a for a, b in zip(values, values[1:])):
        raise ToolkitError(f"--prune {' '.join(map(str, prune))}: thresholds must be >= 0 and non-decreasing")
    if values[0] != 0:
        raise ToolkitError(f"--prune {' '.join(map(str, prune))}: unigrams cannot be pruned; start with 0")
    if len(values) > order:
        raise ToolkitError(f"--prune: {len(values)} thresholds given for an order-{order} model")
    return (values + [values[-1]] * order)[:order]


def prune_ngrams(occurrences: list[Counter], thresholds: Sequence[int]) -> list[set[IdGram]]:
    """The n-grams kept per order: occurring more than the threshold, or needed by a kept longer one.

    A kept (k+1)-gram needs its k-suffix (the back-off target) and its k-prefix (which
    carries the back-off weight), so pruning goes from the top order down.
    """
    order = len(occurrences)
    keep: list[set[IdGram]] = [set() for _ in range(order)]
    keep[0] = set(occurrences[0])  # unigrams are never pruned
    for k in range(order, 1, -1):
        t = thresholds[k - 1]
        kept = {g for g, c in occurrences[k - 1].items() if c > t}
        if k < order:
            for g in keep[k]:
                kept.add(g[1:])
                kept.add(g[:-1])
        keep[k - 1] = kept
    return keep


def _to_ids(sentences: Iterable[str], vocab: dict[str, int], info: KneserNeyInfo) -> list[list[int]]:
    out: list[list[int]] = []
    for n, s in enumerate(sentences, start=1):
        words = s.split()
        if not words:
            continue  # blank lines are no sentences (normalisation artefacts)
        if BOS in words or EOS in words:
            raise ToolkitError(f"sentence {n}: contains {BOS} or {EOS}; remove the markers from the LM text")
        out.append([vocab.setdefault(w, len(vocab)) for w in words])
        info.num_tokens += len(words)
    info.num_sentences = len(out)
    return out


def train_kneser_ney(
    sentences: Iterable[str],
    order: int,
    prune: Sequence[int] | None = None,
    discount_fallback: Sequence[float] = DEFAULT_FALLBACK,
) -> tuple[ArpaModel, KneserNeyInfo]:
    """Estimate an interpolated modified Kneser-Ney model of `order` from whitespace-split sentences.

    Returns the model (with <s> at log10 prob -99, as lmplz writes it, and an <unk> unigram)
    and a `KneserNeyInfo`. Raises `ToolkitError` for order < 1 or a text without words.
    """
    if order < 1:
        raise ToolkitError(f"--order {order}: the n-gram order must be at least 1")
    thresholds = prune_thresholds(prune, order)
    info = KneserNeyInfo()
    vocab = {BOS: BOS_ID, EOS: EOS_ID, UNK: UNK_ID}
    ids = _to_ids(sentences, vocab, info)
    if not ids:
        raise ToolkitError("the LM training text has no words; check the --text file")
    full = full_ngram_counts(ids, order)
    counts = adjusted_counts(ids, order, full)
    discounts = []
    for k, table in enumerate(counts, start=1):
        d, fell_back = compute_discounts(table, discount_fallback)
        discounts.append(d)
        if fell_back:
            info.fallback_orders.append(k)
    if info.fallback_orders:
        log.warning("discounts of order(s) %s undefined from count-of-counts (small text); using fallback %s",
                    info.fallback_orders, tuple(discount_fallback))
    info.discounts = [tuple(d) for d in discounts]
    keep = prune_ngrams(occurrence_counts(full, order), thresholds) if thresholds else None
    probs, gammas = interpolate(counts, discounts, len(vocab) - 1, keep)  # <s> is never predicted
    model = _build_model(probs, gammas[1:], vocab)
    info.ngram_counts = [len(t) for t in model.ngrams]
    return model, info


def _build_model(
    probs: list[dict[IdGram, float]],
    bows: list[dict[IdGram, float]],
    vocab: dict[str, int],
) -> ArpaModel:
    """String-keyed ARPA model in log10 (`probs` holds only the n-grams kept); `bows[k-1]` maps the
    histories of length k to their back-off gamma. <s> gets lmplz's -99 and its back-off as a history."""
    words = [""] * len(vocab)
    for w, i in vocab.items():
        words[i] = w
    ngrams: list[dict] = []
    for k, p in enumerate(probs, start=1):
        bow = bows[k - 1] if k - 1 < len(bows) else {}
        table = {}
        for g, prob in p.items():
            b = bow.get(g, 1.0)
            table[tuple(words[i] for i in g)] = (math.log10(prob), math.log10(b) if b > 0 else -99.0)
        ngrams.append(table)
    bos_bow = bows[0].get((BOS_ID,), 1.0) if bows else 1.0
    ngrams[0][(BOS,)] = (-99.0, math.log10(bos_bow))
    return ArpaModel(ngrams)
