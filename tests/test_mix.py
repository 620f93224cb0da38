"""Language-balanced mixing: the XLSR formula, empirical shares of an infinite mux, no starvation."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from lhotse import CutSet
from lhotse.testing.dummies import dummy_cut

from toolkit.data.loader import make_loader
from toolkit.data.mix import language_weights, mix_languages
from toolkit.utils import ToolkitError

# language -> (number of cuts, seconds per cut): 1000 s, 40 s, 50 s of very different cut lengths
CORPUS = {"en": (200, 5.0), "fr": (20, 2.0), "ru": (5, 10.0)}


def corpus() -> dict[str, CutSet]:
    out = {}
    for lang, (n, dur) in CORPUS.items():
        cuts = []
        for i in range(n):
            cut = dummy_cut(i, duration=dur)
            cut.id = f"{lang}-{i:04d}"
            cuts.append(cut)
        out[lang] = CutSet.from_cuts(cuts)
    return out


def xlsr_reference(hours: dict[str, float], alpha: float) -> dict[str, float]:
    langs = sorted(hours)
    n = np.array([hours[k] for k in langs], dtype=np.float64)
    q = (n / n.sum()) ** alpha
    return dict(zip(langs, q / q.sum()))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_language_weights_formula(alpha: float) -> None:
    hours = {"en": 960.0, "sw": 3.5, "de": 120.0, "xx": 0.2}
    got = language_weights(hours, alpha)
    ref = xlsr_reference(hours, alpha)
    assert set(got) == set(ref) and abs(sum(got.values()) - 1) < 1e-12
    for k in hours:
        assert got[k] == pytest.approx(ref[k], rel=1e-12)
    if alpha == 1.0:
        assert got["en"] == pytest.approx(960 / sum(hours.values()))
    if alpha == 0.0:
        assert all(v == pytest.approx(0.25) for v in got.values())


def test_language_weights_upsample_small_languages() -> None:
    natural = language_weights({"big": 99.0, "small": 1.0}, alpha=1.0)
    xlsr = language_weights({"big": 99.0, "small": 1.0}, alpha=0.5)
    assert xlsr["small"] > natural["small"] and xlsr["small"] == pytest.approx(0.1 / (0.1 + 0.99 ** 0.5))
    assert language_weights({"a": 0.0, "b": 2.0})["a"] == 0.0


def test_language_weights_errors() -> None:
    with pytest.raises(ToolkitError, match="alpha"):
        language_weights({"a": 1.0}, alpha=-1)
    with pytest.raises(ToolkitError, match="zero audio"):
        language_weights({"a": 0.0})
    with pytest.raises(ToolkitError, match=">= 0"):
        language_weights({"a": -3.0, "b": 1.0})
    with pytest.raises(ToolkitError, match="no languages"):
        language_weights({})


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_mux_audio_shares_match_formula_over_10k_draws(alpha: float) -> None:
    seconds = {lang: n * d for lang, (n, d) in CORPUS.items()}
    expected = xlsr_reference(seconds, alpha)
    mixed = mix_languages(corpus(), alpha=alpha, seed=1)
    drawn: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for cut in itertools.islice(mixed, 10_000):
        lang = cut.id.split("-")[0]
        drawn[lang] += cut.duration
        counts[lang] += 1
    total = sum(drawn.values())
    for lang in CORPUS:
        assert abs(drawn[lang] / total - expected[lang]) < 0.02, (lang, drawn[lang] / total, expected[lang])
    # the 5-cut language was drawn far more often than it has cuts: it never ran out
    assert counts["ru"] > 10 * CORPUS["ru"][0]


def test_mix_is_seeded_and_unique_ids() -> None:
    a = [c.id for c in itertools.islice(mix_languages(corpus(), seed=3), 500)]
    b = [c.id for c in itertools.islice(mix_languages(corpus(), seed=3), 500)]
    c = [c.id for c in itertools.islice(mix_languages(corpus(), seed=4), 500)]
    assert a == b and a != c
    assert len(set(a)) == len(a)


def test_mix_feeds_the_bucketing_loader_and_resumes() -> None:
    class Ids:
        def __getitem__(self, cuts):
            return [c.id for c in cuts]

    mixed = mix_languages(corpus(), seed=0)
    loader, sampler = make_loader(mixed, Ids(), max_duration=30.0, num_workers=0, buffer_size=500)
    first = list(itertools.islice(iter(loader), 6))
    loader, sampler = make_loader(mix_languages(corpus(), seed=0), Ids(), max_duration=30.0, num_workers=0,
                                  buffer_size=500)
    head = list(itertools.islice(iter(loader), 4))
    state = sampler.state_dict()
    assert head == first[:4] and state["batches_consumed"] == 4
    loader, sampler = make_loader(mix_languages(corpus(), seed=0), Ids(), max_duration=30.0, num_workers=0,
                                  buffer_size=500)
    sampler.load_state_dict(state)
    assert list(itertools.islice(iter(loader), 2)) == first[4:6]


def test_mix_rejects_empty_language() -> None:
    sets = corpus()
    sets["sw"] = CutSet.from_cuts([])
    with pytest.raises(ToolkitError, match=r"\['sw'\]"):
        mix_languages(sets)
