"""The end of every `toolkit prepare` path: checks per split, the manifest written, the summary.

`toolkit.data.prepare` (LibriSpeech, Common Voice) and `toolkit.data.prepare_lhotse` (any corpus
lhotse has a recipe for) read their corpora differently and meet here:

- `SplitLimits`: which utterances a split keeps. Training splits (names starting with "train")
  drop utterances outside [--min-duration, --max-duration] and those whose text needs more CTC
  frames than the audio has. Dev and test splits are kept whole, as published results score
  them: only what cannot be decoded at all (no audio, corrupt audio, audio shorter than one
  model frame, empty text) is dropped, and the summary counts what a training limit would have
  removed.
- `write_cuts`: decodes every cut once (corrupt audio and NaN/Inf samples are dropped with a
  warning naming the file), writes the manifest atomically, and when nothing is left removes
  the split's old manifest rather than leaving a stale one behind.
- `check_scripts`: utterances whose letters are of another script than the split's main one are
  counted, and above a share the split fails before it is written.
- `fail_on_empty`: a split that yields nothing fails the command, naming it.
- `report_overlap`: dev/test sentences that also occur in train.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from toolkit.data import validate as V
from toolkit.utils import ToolkitError, atomic_path

log = logging.getLogger("toolkit.data.prepare")

LIBRILIGHT_SPLITS = ("train-10m", "train-1h", "train-10h")  # subsets of train-clean-100, not extra training text


def is_training_split(split: str) -> bool:
    """Training splits have names starting with "train" (train, train-clean-100, train-10m, ...)."""
    return split.startswith("train")


@dataclass(frozen=True)
class SplitLimits:
    """The duration limits of `toolkit prepare`; they apply to training splits only."""

    min_duration: float
    max_duration: float

    @classmethod
    def from_options(cls, min_duration: str | float, max_duration: float) -> "SplitLimits":
        """--min-duration resolved (auto = the model's receptive field); one-line error unless it
        is below --max-duration."""
        min_dur = V.resolve_min_duration(min_duration)
        if max_duration <= min_dur:
            raise ToolkitError(f"--max-duration {max_duration} must exceed --min-duration {min_dur}")
        return cls(min_dur, max_duration)

    def check(self, split: str, text: str, duration: float) -> str:
        """"" when the utterance stays in `split`, else the reason it is dropped."""
        if is_training_split(split):
            return V.check_text_and_duration(text, duration, self.min_duration, self.max_duration)
        return V.check_decodable(text, duration)


def note_kept_whole(report: V.DropReport, manifest: str, split: str, durations: list[float],
                    limits: SplitLimits) -> None:
    """For a dev/test split: say how many kept utterances a training limit would have removed."""
    if is_training_split(split):
        return
    long = [d for d in durations if d > limits.max_duration]
    line = f"{manifest}: evaluation split kept whole ({len(durations)} utterances"
    if long:
        line += f"; {len(long)} longer than --max-duration {limits.max_duration:g} s, the longest {max(long):.1f} s"
    report.notes.append(line + ")")


def script_of(ch: str) -> str | None:
    """The script family of a letter (LATIN, CYRILLIC, GREEK, ...; Chinese and Japanese kana are
    one family, CJK), None for anything that is not a letter."""
    import unicodedata

    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0] if name else "UNKNOWN"
    return "CJK" if first in ("CJK", "HIRAGANA", "KATAKANA") else first


def check_scripts(texts: dict[str, tuple[str, str]], manifest: str, report: V.DropReport, max_share: float) -> None:
    """`texts`: utterance id -> (language, normalised text). Per language, utterances with letters
    of another script than that language's main one in this split (foreign words, another
    language's sentences in a one-language corpus) are counted in the summary; above `max_share`
    of them, a one-line error before anything is written."""
    from collections import Counter, defaultdict

    by_lang: dict[str, dict[str, set[str]]] = defaultdict(dict)
    letters: dict[str, Counter] = defaultdict(Counter)
    for uid, (lang, text) in texts.items():
        scripts = [sc for sc in map(script_of, text) if sc]
        letters[lang].update(scripts)
        by_lang[lang][uid] = set(scripts)
    for lang, per_utt in sorted(by_lang.items()):
        if not letters[lang]:
            continue
        main = letters[lang].most_common(1)[0][0]
        foreign = {u: sorted(sc - {main}) for u, sc in per_utt.items() if sc - {main}}
        if not foreign:
            continue
        share = len(foreign) / len(per_utt)
        example = next(iter(foreign))
        line = (f"{manifest}: {len(foreign)} of {len(per_utt)} utterances of language {lang} ({100 * share:.1f}%) hold "
                f"letters of another script than {main} (e.g. {', '.join(foreign[example])} in {example})")
        if share > max_share:
            raise ToolkitError(f"{line}; above --max-foreign-share {max_share}: check the language of the corpus, or "
                               "raise --max-foreign-share to keep them")
        report.notes.append(line)
        log.warning("%s", line)


def write_cuts(cuts: Any, manifest: str, out_path: Path, report: V.DropReport, check_audio: str, nj: int,
               file_of: Callable[[Any], Any]) -> bool:
    """Last step of every preparation: with `check_audio == "decode"` drop cuts whose audio does
    not decode (warning naming `file_of(cut)`), count the kept ones, write the manifest
    atomically. False when no cut is left: then nothing is written and an old manifest of the
    split is removed (it would describe data that is no longer there)."""
    if check_audio == "decode" and len(cuts):
        bad = V.decode_errors(list(cuts), nj, f"{manifest}: decoding")
        for cut in cuts:
            if cut.id in bad:
                report.drop(manifest, bad[cut.id], file_of(cut))
        cuts = cuts.filter(lambda c: c.id not in bad).to_eager()
    if len(cuts) == 0:
        remove_stale(out_path, manifest)
        return False
    for cut in cuts:
        report.keep(manifest, cut.duration)
    with atomic_path(out_path) as tmp:
        cuts.to_file(tmp)
    log.info("%s: wrote %d cuts (%.2f h) to %s", manifest, len(cuts), report.kept_seconds[manifest] / 3600, out_path)
    return True


def remove_stale(out_path: Path, manifest: str) -> None:
    """Delete the old manifest of a split that now yields nothing (a later stage must not trust it)."""
    if out_path.exists():
        out_path.unlink()
        log.warning("%s: no usable utterance; removed the old %s", manifest, out_path)
    else:
        log.warning("%s: no usable utterance; %s not written", manifest, out_path)


def fail_on_empty(corpus_dir: Path, report: V.DropReport, empty: list[str]) -> None:
    """One-line ToolkitError naming the splits that yielded no utterance (the others were written)."""
    if not empty:
        return
    raise ToolkitError(f"{corpus_dir}: no usable utterance in split(s) {', '.join(empty)} "
                       f"({report.total_dropped()} dropped in all, see the warnings above); their manifests are not "
                       "written; check the corpus and --min-duration/--max-duration")


def report_overlap(out: Path, prefixes: list[str], report: V.DropReport) -> None:
    """Note dev/test sentences that also occur in the train split(s) of the same prefix."""
    from lhotse import CutSet

    for prefix in sorted(set(prefixes)):
        files = sorted(out.glob(f"{prefix}_cuts_*.jsonl.gz"))
        texts = {f.name[len(prefix) + 6:-len(".jsonl.gz")]: [s.text for c in CutSet.from_file(f) for s in c.supervisions]
                 for f in files}
        train = {t for split, ts in texts.items() if is_training_split(split) and split not in LIBRILIGHT_SPLITS
                 for t in ts}
        for split, ts in sorted(texts.items()):
            if split.startswith(("dev", "test")):
                n, total = V.sentence_overlap(train, ts)
                line = f"overlap: {prefix} {split}: {n} of {total} sentences also in train ({100 * n / max(total, 1):.1f}%)"
                report.notes.append(line)
                (log.warning if n else log.info)(line)
