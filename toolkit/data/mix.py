"""Language-balanced sampling for multilingual pretraining (XLSR; docs/DESIGN.md, "Multilingual" and "Traps").

Language l, with n_l hours of audio out of N, is sampled with probability

    p_l = (n_l / N)^alpha / sum_k (n_k / N)^alpha,      alpha = 0.5 in XLSR,

so alpha = 1 keeps the natural distribution and alpha -> 0 tends to uniform.

`mix_languages` returns one *infinite* lazy CutSet: each language's cuts are repeated
without end and multiplexed with per-cut weights chosen so that the expected share of
*audio* (not of cuts) from language l is p_l. Because no stream ever runs out, the
proportions hold for the whole run; a finite `CutSet.mux` would, after the small
languages are exhausted, train on the large ones alone (icefall #1625). Training on the
result is step-based: the loader's epoch never ends.

(`CutSet.infinite_mux` is not used: it keeps a random subset of the streams open, drawn
with replacement, which is meant for many shards and distorts the shares over the first
thousands of draws when each language is a single stream.)
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from toolkit.utils import ToolkitError

log = logging.getLogger(__name__)

__all__ = ["language_weights", "mix_languages"]


def language_weights(durations: Mapping[str, float], alpha: float = 0.5) -> dict[str, float]:
    """p_l ∝ (n_l / N)^alpha over languages; a language with no audio gets 0. Sums to 1."""
    if not durations:
        raise ToolkitError("no languages to mix; give at least one training CutSet")
    if alpha < 0:
        raise ToolkitError(f"alpha={alpha}: the sampling exponent must be >= 0 (XLSR uses 0.5)")
    bad = {k: v for k, v in durations.items() if not v >= 0}
    if bad:
        raise ToolkitError(f"language durations must be >= 0 seconds, got {bad}")
    total = float(sum(durations.values()))
    if total <= 0:
        raise ToolkitError(f"every language has zero audio ({sorted(durations)}); check the manifests")
    raw = {k: (v / total) ** alpha if v > 0 else 0.0 for k, v in durations.items()}
    z = sum(raw.values())
    return {k: w / z for k, w in raw.items()}


def _stats(cuts: Any) -> tuple[float, int]:
    """Total duration (s) and number of cuts of a CutSet (one pass; cheap for manifests)."""
    total, count = 0.0, 0
    for cut in cuts:
        total += cut.duration
        count += 1
    return total, count


def mix_languages(cutsets: Mapping[str, Any], alpha: float = 0.5, seed: int = 0) -> Any:
    """An infinite lazy CutSet drawing language l's audio with probability p_l (see module doc).

    `cutsets` maps a language code to that language's training CutSet (lazy is fine).
    Cut ids get lhotse's repeat suffix (`_repeat<n>`) so they stay unique across passes.
    """
    from lhotse import CutSet

    stats = {lang: _stats(c) for lang, c in cutsets.items()}
    empty = sorted(lang for lang, (_, n) in stats.items() if n == 0)
    if empty:
        raise ToolkitError(f"languages {empty} have no cuts; remove them from the language list or fix the manifests")
    p = language_weights({lang: d for lang, (d, _) in stats.items()}, alpha)
    # Per-cut weight = p_l / mean cut duration of l, so the share of *seconds* is p_l.
    weights = [p[lang] * n / d for lang, (d, n) in stats.items()]
    for lang, (d, n) in stats.items():
        log.info("mix: %s %.2f h in %d cuts -> sampling share %.3f (alpha=%.2f)", lang, d / 3600, n, p[lang], alpha)
    streams = [cuts.repeat() for cuts in cutsets.values()]
    return CutSet.mux(*streams, weights=weights, seed=seed)
