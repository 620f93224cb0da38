"""WER / CER of hypotheses against references, with error counts, alignments and bootstrap intervals.

Units (icefall's `write_error_stats` semantics):
- words: the text split on whitespace;
- characters: the words joined *without* spaces, then split into Unicode code points
  (icefall's `compute_CER=True` does `list("".join(words))`), so spaces are never counted
  as characters and CER does not depend on word segmentation (CJK text without spaces gives
  the same CER as the same text with them).

Counts come from one Levenshtein alignment per utterance (`kaldialign.align`, unit costs, as
Kaldi's `compute-wer` and icefall do), so the tables in errs.txt and the numbers in
results.json always agree; the total number of errors is cross-checked against jiwer, whose
alignment may break ties between substitutions and insertion+deletion differently but whose
edit distance must be the same. The 95% interval is Bisani & Ney's bootstrap over utterances
(`kaldialign.bootstrap_wer_ci`, Kaldi's `compute-wer-bootci`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import jiwer
import kaldialign

from toolkit.utils import ToolkitError

log = logging.getLogger(__name__)

# The empty side of an insertion or deletion. A space can never be a token (tokens come from
# whitespace splitting), so it cannot collide with a real "*" in the text; the report writer
# prints it as icefall's "*".
GAP = " "
UNKNOWN_LANGUAGE = "und"  # ISO 639-2 "undetermined", for utterances without a language
BOOTSTRAP_REPLICATIONS = 10000


def tokenize(text: str, unit: str) -> list[str]:
    """Words (whitespace split) or characters (code points of the words joined without spaces)."""
    words = text.split()
    if unit == "word":
        return words
    if unit == "char":
        return list("".join(words))
    raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")


@dataclass
class UttAlignment:
    """One utterance: its tokens and their alignment as (ref, hyp) pairs with GAP for gaps."""

    utt_id: str
    ref: list[str]
    hyp: list[str]
    alignment: list[tuple[str, str]]

    @property
    def num_errors(self) -> int:
        return sum(r != h for r, h in self.alignment)


@dataclass
class ErrorStats:
    """Error counts of one unit (word or char) over a set of utterances; rates in percent."""

    unit: str
    num_sentences: int = 0
    num_ref: int = 0
    corr: int = 0
    sub: int = 0
    dele: int = 0
    ins: int = 0
    sentence_errors: int = 0
    ci95: tuple[float, float] | None = None  # bootstrap interval of the error rate, percent

    @property
    def err(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        """Error rate in percent; 0 for no errors over no words, inf for insertions over none."""
        if self.num_ref == 0:
            return 0.0 if self.err == 0 else math.inf
        return 100.0 * self.err / self.num_ref

    @property
    def sentence_error_rate(self) -> float:
        return 100.0 * self.sentence_errors / self.num_sentences if self.num_sentences else 0.0

    def percent(self, count: int) -> float:
        """A count as a percentage of the reference tokens (ESPnet's Corr/Sub/Del/Ins columns)."""
        return 100.0 * count / self.num_ref if self.num_ref else (0.0 if count == 0 else math.inf)

    def kaldi_line(self, key: str) -> str:
        """`[key] %WER 2.40% [n / N, i ins, d del, s sub ]` (%CER for characters)."""
        name = "%WER" if self.unit == "word" else "%CER"
        return (f"[{key}] {name} {self.rate:.2f}% [{self.err} / {self.num_ref}, {self.ins} ins, "
                f"{self.dele} del, {self.sub} sub ]")

    def to_dict(self) -> dict:
        return {
            "unit": self.unit, "num_sentences": self.num_sentences, "num_ref": self.num_ref,
            "corr": self.corr, "sub": self.sub, "del": self.dele, "ins": self.ins, "err": self.err,
            "sentence_errors": self.sentence_errors,
            "err_rate": _finite(self.rate), "sentence_error_rate": self.sentence_error_rate,
            "ci95": list(self.ci95) if self.ci95 else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "ErrorStats":
        ci = d.get("ci95")
        return cls(unit=d["unit"], num_sentences=d["num_sentences"], num_ref=d["num_ref"], corr=d["corr"],
                   sub=d["sub"], dele=d["del"], ins=d["ins"], sentence_errors=d["sentence_errors"],
                   ci95=tuple(ci) if ci else None)


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x  # JSON has no infinity


@dataclass
class Report:
    """WER and CER of a set of utterances, per-language sub-reports and the alignments behind them."""

    wer: ErrorStats
    cer: ErrorStats
    missing: list[str] = field(default_factory=list)  # reference ids without a hypothesis
    by_language: dict[str, "Report"] = field(default_factory=dict)
    word_alignments: list[UttAlignment] = field(default_factory=list, repr=False)
    char_alignments: list[UttAlignment] = field(default_factory=list, repr=False)

    @property
    def num_sentences(self) -> int:
        return self.wer.num_sentences

    @property
    def num_words(self) -> int:
        return self.wer.num_ref

    def to_dict(self) -> dict:
        d = {"num_sentences": self.num_sentences, "num_words": self.num_words,
             "wer": self.wer.to_dict(), "cer": self.cer.to_dict(), "missing_hyps": len(self.missing)}
        if self.by_language:
            d["by_language"] = {lang: sub.to_dict() for lang, sub in sorted(self.by_language.items())}
        return d


def align_utterances(ids: Sequence[str], refs: Mapping[str, str], hyps: Mapping[str, str], unit: str) -> list[UttAlignment]:
    out = []
    for utt in ids:
        r, h = tokenize(refs[utt], unit), tokenize(hyps.get(utt, ""), unit)
        out.append(UttAlignment(utt, r, h, kaldialign.align(r, h, GAP)))
    return out


def count_errors(alignments: Sequence[UttAlignment], unit: str) -> ErrorStats:
    stats = ErrorStats(unit=unit, num_sentences=len(alignments))
    for a in alignments:
        stats.num_ref += len(a.ref)
        errors = 0
        for r, h in a.alignment:
            if r == GAP:
                stats.ins += 1
            elif h == GAP:
                stats.dele += 1
            elif r != h:
                stats.sub += 1
            else:
                stats.corr += 1
                continue
            errors += 1
        stats.sentence_errors += errors > 0
    return stats


def bootstrap_ci(alignments: Sequence[UttAlignment], replications: int = BOOTSTRAP_REPLICATIONS,
                 seed: int = 0) -> tuple[float, float] | None:
    """95% bootstrap interval of the error rate (percent, lower bound clipped at 0); None with
    `replications` 0 (no interval wanted, e.g. validation during training).

    Bisani & Ney via `kaldialign.bootstrap_wer_ci`: utterances resampled with replacement,
    mean +- 1.96 standard deviations of the resampled rates. None without reference tokens.
    """
    if replications <= 0 or not alignments or sum(len(a.ref) for a in alignments) == 0:
        return None
    ci = kaldialign.bootstrap_wer_ci([a.ref for a in alignments], [a.hyp for a in alignments],
                                     replications=replications, seed=seed)
    lo, hi = ci["ci95min"], ci["ci95max"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        # Some resample held only empty references (tiny sets with empty refs): kaldialign's
        # mean becomes infinite. Redo it skipping such resamples, which have no defined rate.
        lo, hi = _bootstrap_skipping_empty(alignments, replications, seed)
    return max(0.0, 100.0 * lo), 100.0 * hi


def _bootstrap_skipping_empty(alignments: Sequence[UttAlignment], replications: int, seed: int) -> tuple[float, float]:
    import numpy as np

    errs = np.array([a.num_errors for a in alignments], dtype=np.float64)
    lens = np.array([len(a.ref) for a in alignments], dtype=np.float64)
    num, den = _resampled_sums([errs, lens], replications, seed)
    rates = num[den > 0] / den[den > 0]
    mean, std = float(rates.mean()), float(rates.std())
    return mean - 1.96 * std, mean + 1.96 * std


@dataclass
class PairedComparison:
    """System A against system B on the same references (word level, percent points)."""

    delta: float                  # WER(A) - WER(B); negative: A makes fewer errors
    ci95: tuple[float, float]     # 2.5th and 97.5th percentile of the resampled difference
    p_a_better: float             # share of resamples in which A has fewer errors than B
    p_b_better: float             # ... B fewer than A (ties count in neither)
    utterances: int
    replications: int


def paired_bootstrap(refs: Mapping[str, str], hyps_a: Mapping[str, str], hyps_b: Mapping[str, str],
                     replications: int = BOOTSTRAP_REPLICATIONS, seed: int = 0) -> PairedComparison:
    """Bisani & Ney's paired bootstrap: utterances resampled with replacement, the same draw for
    both systems, so what they share (hard utterances) cancels. `p_a_better` is their
    "probability of improvement" (Kaldi's compute-wer-bootci with two systems: A strictly fewer
    errors); the interval is of the WER difference. A missing hypothesis counts as empty."""
    import numpy as np

    ids = sorted(refs)
    a = align_utterances(ids, refs, hyps_a, "word")
    b = align_utterances(ids, refs, hyps_b, "word")
    lens = np.array([len(x.ref) for x in a], dtype=np.float64)
    if not ids or lens.sum() == 0:
        raise ToolkitError("a paired comparison needs references with words; none were given")
    ea = np.array([x.num_errors for x in a], dtype=np.float64)
    eb = np.array([x.num_errors for x in b], dtype=np.float64)
    num_a, num_b, den = _resampled_sums([ea, eb, lens], replications, seed)
    keep = den > 0  # a resample of empty references only has no rate
    diff = 100.0 * (num_a[keep] - num_b[keep]) / den[keep]
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return PairedComparison(delta=100.0 * float(ea.sum() - eb.sum()) / float(lens.sum()),
                            ci95=(float(lo), float(hi)), p_a_better=float((num_a < num_b).mean()),
                            p_b_better=float((num_b < num_a).mean()),
                            utterances=len(ids), replications=replications)


def _resampled_sums(columns: list, replications: int, seed: int) -> list:
    """Per-utterance columns summed over `replications` bootstrap resamples of the utterances (the
    same draw for every column), drawn in chunks so that memory stays bounded on whole test sets."""
    import numpy as np

    n = len(columns[0])
    rng = np.random.default_rng(seed)
    sums = [np.empty(replications) for _ in columns]
    step = max(1, 2_000_000 // n)
    for start in range(0, replications, step):
        idx = rng.integers(0, n, size=(min(step, replications - start), n))
        for out, col in zip(sums, columns):
            out[start:start + len(idx)] = col[idx].sum(axis=1)
    return sums


def _check_with_jiwer(alignments: Sequence[UttAlignment], stats: ErrorStats) -> None:
    if not alignments:
        return
    refs = [" ".join(a.ref) for a in alignments]
    hyps = [" ".join(a.hyp) for a in alignments]
    out = jiwer.process_words(refs, hyps)  # chars are joined by spaces too, so one call serves both
    total = out.substitutions + out.deletions + out.insertions
    if total != stats.err:
        raise RuntimeError(f"{stats.unit} errors disagree: kaldialign {stats.err}, jiwer {total}")


def _score_ids(ids: Sequence[str], refs, hyps, replications: int, seed: int) -> Report:
    parts = {}
    for unit in ("word", "char"):
        ali = align_utterances(ids, refs, hyps, unit)
        stats = count_errors(ali, unit)
        _check_with_jiwer(ali, stats)
        stats.ci95 = bootstrap_ci(ali, replications, seed)
        parts[unit] = (stats, ali)
    return Report(wer=parts["word"][0], cer=parts["char"][0], missing=[u for u in ids if u not in hyps],
                  word_alignments=parts["word"][1], char_alignments=parts["char"][1])


def score_pairs(
    refs: Mapping[str, str],
    hyps: Mapping[str, str],
    languages: Mapping[str, str] | None = None,
    replications: int = BOOTSTRAP_REPLICATIONS,
    seed: int = 0,
) -> Report:
    """Score hypotheses against references (both: utterance id -> text).

    Every reference is scored, in sorted id order; a reference without a hypothesis counts as
    all deletions (logged as a warning); hypotheses without a reference are ignored (warned).
    With `languages` (id -> code), `Report.by_language` holds one sub-report per language
    (ids without one go under "und").
    """
    ids = sorted(refs)
    missing = [u for u in ids if u not in hyps]
    if missing:
        log.warning("%d of %d references have no hypothesis (counted as deletions), e.g. %s",
                    len(missing), len(ids), missing[0])
    extra = [u for u in hyps if u not in refs]
    if extra:
        log.warning("%d hypotheses have no reference and are ignored, e.g. %s", len(extra), sorted(extra)[0])
    report = _score_ids(ids, refs, hyps, replications, seed)
    if languages is not None:
        groups: dict[str, list[str]] = {}
        for u in ids:
            groups.setdefault(languages.get(u) or UNKNOWN_LANGUAGE, []).append(u)
        report.by_language = {lang: _score_ids(g, refs, hyps, replications, seed) for lang, g in sorted(groups.items())}
    return report
