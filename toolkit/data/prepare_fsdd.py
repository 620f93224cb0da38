"""`toolkit prepare fsdd`: the Free Spoken Digit Dataset as speaker-disjoint Lhotse manifests.

FSDD (https://github.com/Jakobovski/free-spoken-digit-dataset, CC BY-SA 4.0) holds real
recordings of isolated English digits, `recordings/<digit>_<speaker>_<index>.wav`, 8 kHz mono,
six speakers with 50 takes of each digit. It becomes

- isolated-digit cuts (text `zero` ... `nine`), and
- connected-digit cuts: 3 to 7 recordings of one speaker joined with pauses of
  `--pause` seconds (uniform), filled with Gaussian noise at the level of the quieter neighbour's
  background (the RMS of its quietest 20 ms frame), so the joins sound like one take and CTC
  sees sequences; every recording is used once per pass (`--train-passes` shuffled passes for
  the training speakers, one pass for dev and test). The joined audio is written as 8 kHz WAV
  files (atomically) under `--audio-dir`.

Splits are speaker-disjoint (`--train-speakers`, `--dev-speakers`, `--test-speakers`;
default: the first four speakers in alphabetical order train, the fifth dev, the sixth test):

    <prefix>_cuts_train.jsonl.gz            isolated + connected, training speakers
    <prefix>_cuts_dev.jsonl.gz              connected, dev speaker   (model selection)
    <prefix>_cuts_dev-isolated.jsonl.gz     isolated, dev speaker
    <prefix>_cuts_test.jsonl.gz             connected, test speaker  (the headline WER)
    <prefix>_cuts_test-isolated.jsonl.gz    isolated, test speaker

Recordings stay at 8 kHz on disk; the cuts are resampled to 16 kHz on the fly (lhotse's
resample transform), as every other corpus. Each manifest goes through the same checks and
writer as the other corpora (`toolkit.data.validate`, `prepare.write_cuts`): a file that
cannot be read or is too short is dropped with one warning naming it; manifests are written
atomically and existing ones kept unless `--overwrite`. Everything is a function of `--seed`.
"""
from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.data import validate as V
from toolkit.data.manifests import SplitLimits, fail_on_empty, note_kept_whole, report_overlap, write_cuts
from toolkit.utils import ToolkitError, atomic_path

log = logging.getLogger("toolkit.data.prepare")

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FILE_RE = re.compile(r"^([0-9])_([A-Za-z0-9]+)_([0-9]+)\.wav$")
LANGUAGE = "en"


@dataclass(frozen=True)
class Take:
    """One FSDD recording."""

    path: Path
    digit: int
    speaker: str
    index: int

    @property
    def utt_id(self) -> str:
        return f"{self.digit}_{self.speaker}_{self.index}"

    @property
    def word(self) -> str:
        return DIGITS[self.digit]


def find_recordings(corpus_dir: Path) -> Path:
    """The folder holding the WAVs: `<corpus_dir>/recordings` (the repository) or corpus_dir itself."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise ToolkitError(f"--corpus-dir {corpus_dir}: not found; get FSDD with `git clone "
                           "https://github.com/Jakobovski/free-spoken-digit-dataset` and pass that folder")
    for cand in (corpus_dir / "recordings", corpus_dir):
        if cand.is_dir() and any(FILE_RE.match(p.name) for p in cand.iterdir()):
            return cand
    raise ToolkitError(f"--corpus-dir {corpus_dir}: no <digit>_<speaker>_<index>.wav files in it or in its "
                       "recordings/ folder; point it at a clone of free-spoken-digit-dataset")


def scan(recordings: Path) -> list[Take]:
    takes = []
    for p in sorted(recordings.iterdir()):
        m = FILE_RE.match(p.name)
        if m:
            takes.append(Take(p, int(m.group(1)), m.group(2), int(m.group(3))))
    return sorted(takes, key=lambda t: (t.speaker, t.digit, t.index))


def speaker_splits(speakers: list[str], train: list[str] | None, dev: list[str] | None,
                   test: list[str] | None) -> dict[str, list[str]]:
    """{"train": [...], "dev": [...], "test": [...]}: disjoint, all present; defaults by sorted order."""
    speakers = sorted(speakers)
    if train is None and dev is None and test is None:
        if len(speakers) < 3:
            raise ToolkitError(f"FSDD: {len(speakers)} speaker(s) found ({', '.join(speakers)}); speaker-disjoint "
                               "train/dev/test splits need at least 3; give --train/--dev/--test-speakers")
        train, dev, test = speakers[:-2], [speakers[-2]], [speakers[-1]]
    chosen = {"train": train or [], "dev": dev or [], "test": test or []}
    for split, names in chosen.items():
        if not names:
            raise ToolkitError(f"--{split}-speakers: empty; give at least one of: {', '.join(speakers)}")
        unknown = [s for s in names if s not in speakers]
        if unknown:
            raise ToolkitError(f"--{split}-speakers: {', '.join(unknown)} not in the corpus "
                               f"(speakers found: {', '.join(speakers)})")
    seen: dict[str, str] = {}
    for split, names in chosen.items():
        for s in names:
            if s in seen:
                raise ToolkitError(f"speaker {s} is in both --{seen[s]}-speakers and --{split}-speakers; "
                                   "splits must be speaker-disjoint")
            seen[s] = split
    return chosen


# ---------------------------------------------------------------------------------------
# Audio

def read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), sr


def noise_floor(audio: np.ndarray, sr: int) -> float:
    """The recording's background level: the RMS of its quietest 20 ms frame (FSDD's recordings are
    trimmed close to the word, so a percentile would often land inside the speech)."""
    frame = max(1, int(0.02 * sr))
    n = len(audio) // frame
    if n == 0:
        return float(np.sqrt(np.mean(audio ** 2))) if len(audio) else 0.0
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))
    return float(rms.min())


def join_takes(waves: list[np.ndarray], floors: list[float], sr: int, pause: tuple[float, float],
               rng: random.Random) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Recordings with noise-filled pauses before, between and after them.

    Returns the audio and each recording's (start, duration) in seconds within it.
    """
    nrng = np.random.default_rng(rng.getrandbits(63))
    parts, spans, pos = [], [], 0

    def gap(level: float) -> np.ndarray:
        n = int(round(rng.uniform(*pause) * sr))
        return (nrng.standard_normal(n) * level).astype(np.float32)

    for i, (wav, floor) in enumerate(zip(waves, floors)):
        before = gap(floor if i == 0 else min(floor, floors[i - 1]))
        parts.append(before)
        pos += len(before)
        spans.append((pos / sr, len(wav) / sr))
        parts.append(wav.astype(np.float32))
        pos += len(wav)
    parts.append(gap(floors[-1]))
    audio = np.concatenate(parts)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > 1.0:  # never clip when written as 16-bit PCM
        audio = audio / peak
    return audio, spans


def group_sizes(n: int, lo: int, hi: int, rng: random.Random) -> list[int]:
    """Random group sizes in [lo, hi] that add up to n, never leaving a remainder under lo where
    that can be avoided (with hi >= 2 lo - 1 it always can once n >= lo); otherwise the last group
    is the short remainder."""
    sizes: list[int] = []
    left = n
    while left > 0:
        ok = [k for k in range(lo, min(hi, left) + 1) if left - k == 0 or left - k >= lo]
        k = rng.choice(ok) if ok else min(hi, left)
        sizes.append(k)
        left -= k
    return sizes


# ---------------------------------------------------------------------------------------
# Cuts

def isolated_cut(take: Take, prefix: str):  # noqa: ANN201 - lhotse MonoCut
    from lhotse import Recording, SupervisionSegment

    rec = Recording.from_file(take.path, recording_id=take.utt_id)
    sup = SupervisionSegment(id=take.utt_id, recording_id=rec.id, start=0.0, duration=rec.duration,
                             text=take.word, language=LANGUAGE, speaker=take.speaker,
                             custom={"orig_text": str(take.digit), "corpus": prefix})
    cut = rec.to_cut()
    cut.supervisions = [sup]
    cut.id = take.utt_id
    return cut


def connected_cuts(takes: list[Take], split: str, passes: int, sizes: tuple[int, int],
                   pause: tuple[float, float], audio_dir: Path, prefix: str, seed: int,
                   report: V.DropReport, manifest: str) -> list:
    """Connected-digit cuts of one split: per speaker and pass, the takes shuffled and joined in groups."""
    from lhotse import Recording, SupervisionSegment

    by_speaker: dict[str, list[Take]] = {}
    for t in takes:
        by_speaker.setdefault(t.speaker, []).append(t)
    cuts = []
    for speaker, own in sorted(by_speaker.items()):
        cache: dict[Path, tuple[np.ndarray, float]] = {}
        usable, sr = [], None
        for t in own:
            try:
                wav, rate = read_wav(t.path)
            except Exception as e:  # noqa: BLE001 - any decoder failure: drop that file
                report.drop(manifest, f"unreadable audio ({type(e).__name__})", t.path)
                continue
            if sr is not None and rate != sr:
                report.drop(manifest, f"sample rate {rate} differs from the speaker's {sr}", t.path)
                continue
            sr = rate
            cache[t.path] = (wav, noise_floor(wav, rate))
            usable.append(t)
        for p in range(passes):
            rng = random.Random(f"{seed}/{split}/{speaker}/{p}")
            order = usable[:]
            rng.shuffle(order)
            start = 0
            for g, k in enumerate(group_sizes(len(order), sizes[0], sizes[1], rng)):
                group = order[start:start + k]
                start += k
                utt_id = f"{prefix}-connected-{split}-{speaker}-{p}-{g:04d}"
                audio, spans = join_takes([cache[t.path][0] for t in group], [cache[t.path][1] for t in group],
                                          sr, pause, rng)
                path = audio_dir / split / f"{utt_id}.wav"
                _write_wav(path, audio, sr)
                rec = Recording.from_file(path, recording_id=utt_id)
                text = " ".join(t.word for t in group)
                sup = SupervisionSegment(
                    id=utt_id, recording_id=utt_id, start=0.0, duration=rec.duration, text=text,
                    language=LANGUAGE, speaker=speaker,
                    custom={"orig_text": " ".join(str(t.digit) for t in group), "corpus": prefix,
                            "sources": [t.utt_id for t in group],
                            "source_spans": [[round(s, 4), round(d, 4)] for s, d in spans]})
                cut = rec.to_cut()
                cut.supervisions = [sup]
                cut.id = utt_id
                cuts.append(cut)
    return cuts


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sr, subtype="PCM_16", format="WAV")


def _checked(cuts: list, manifest: str, split: str, report: V.DropReport, limits: SplitLimits):
    """The cuts passing the checks every corpus gets (duration limits on training splits only),
    resampled to 16 kHz on the fly."""
    from lhotse import CutSet

    kept = []
    for cut in cuts:
        why = limits.check(split, cut.supervisions[0].text, cut.duration)
        if why:
            report.drop(manifest, why, cut.recording.sources[0].source)
            continue
        kept.append(cut)
    note_kept_whole(report, manifest, split, [c.duration for c in kept], limits)
    return CutSet.from_cuts(kept).resample(V.SAMPLE_RATE).to_eager()


def prepare_fsdd(corpus_dir: Path, out: Path, prefix: str = "fsdd", audio_dir: Path | None = None,
                 train_speakers: list[str] | None = None, dev_speakers: list[str] | None = None,
                 test_speakers: list[str] | None = None, train_passes: int = 2,
                 group_size: tuple[int, int] = (3, 7), pause: tuple[float, float] = (0.1, 0.5),
                 seed: int = 0, min_duration: str | float = "auto", max_duration: float = 20.0,
                 check_audio: str = "decode", overwrite: bool = False, nj: int = 2) -> V.DropReport:
    """Write the five manifests (see the module docstring); ToolkitError when nothing is usable."""
    lo, hi = group_size
    if not (1 <= lo <= hi):
        raise ToolkitError(f"--group-size {lo} {hi}: need 1 <= min <= max (e.g. 3 7)")
    if not (0 <= pause[0] <= pause[1]):
        raise ToolkitError(f"--pause {pause[0]} {pause[1]}: need 0 <= min <= max seconds (e.g. 0.1 0.5)")
    if train_passes < 0:
        raise ToolkitError(f"--train-passes {train_passes}: must be >= 0")
    limits = SplitLimits.from_options(min_duration, max_duration)
    recordings = find_recordings(Path(corpus_dir))
    takes = scan(recordings)
    spk = speaker_splits(sorted({t.speaker for t in takes}), train_speakers, dev_speakers, test_speakers)
    out = Path(out)
    audio_dir = Path(audio_dir) if audio_dir is not None else out.parent / "audio" / prefix
    out.mkdir(parents=True, exist_ok=True)
    report = V.DropReport()
    plan = [("train", "train", True, train_passes), ("dev", "dev", False, 1), ("dev-isolated", "dev", True, 0),
            ("test", "test", False, 1), ("test-isolated", "test", True, 0)]
    empty = []
    for name, split, isolated, passes in plan:
        out_path = out / f"{prefix}_cuts_{name}.jsonl.gz"
        if out_path.is_file() and not overwrite:
            log.info("%s exists; skipping %s (use --overwrite to redo it)", out_path, name)
            continue
        manifest = f"{prefix}_{name}"
        own = [t for t in takes if t.speaker in spk[split]]
        cuts = []
        if isolated:
            for t in own:
                try:
                    cuts.append(isolated_cut(t, prefix))
                except Exception as e:  # noqa: BLE001 - unreadable header
                    report.drop(manifest, f"unreadable audio ({type(e).__name__})", t.path)
        if passes:
            cuts += connected_cuts(own, split, passes, (lo, hi), pause, audio_dir, prefix, seed, report, manifest)
        log.info("%s: speakers %s, %d cuts", manifest, ", ".join(spk[split]), len(cuts))
        checked = _checked(cuts, manifest, name, report, limits)
        if not write_cuts(checked, manifest, out_path, report, check_audio, nj,
                          lambda cut: cut.recording.sources[0].source):
            empty.append(manifest)
    fail_on_empty(Path(corpus_dir), report, empty)
    report_overlap(out, [prefix], report)
    return report
