"""Checks every utterance must pass before it becomes a training/evaluation cut.

Each rejected utterance produces exactly ONE warning line naming its file and the
reason, and is counted per (manifest, reason) in a `DropReport`, printed at the end of
`toolkit prepare`. Nothing here raises for a single bad utterance: a corpus with a few
broken files is normal; only an empty result is an error (the caller decides).

Checks, cheapest first:
* missing audio file; unreadable header (lhotse's `Recording.from_file`, i.e. exactly
  what the recipe will do, so a file that passes cannot crash the recipe);
* empty text after normalisation;
* duration below the minimum (`auto` = 0.1 s: the wav2vec 2.0 encoder needs 400
  samples = 25 ms for one frame, and under ~5 frames no word fits) or above the maximum;
* text too long for the audio under character CTC: the frame count (stride 320,
  receptive field 400 at 16 kHz) must cover the characters, the `|` word boundaries
  and one blank between repeated characters (icefall #580: such utterances make CTC
  infinite and the model learn blanks);
* corrupt audio: the whole file is decoded (at 16 kHz, as training will load it).
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from toolkit.model.config import SAMPLE_RATE, num_frames, receptive_field

log = logging.getLogger("toolkit.data.prepare")

AUTO_MIN_DURATION = 0.1


@dataclass
class DropReport:
    """Kept / dropped counts per manifest and reason; every drop logs one warning line."""

    kept: Counter = field(default_factory=Counter)
    dropped: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    kept_seconds: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # e.g. the dev/test-in-train overlap lines

    def drop(self, manifest: str, reason: str, file: str | Path, detail: str = "") -> None:
        self.dropped[manifest][reason] += 1
        log.warning("%s: dropped %s: %s%s", manifest, file, reason, f" ({detail})" if detail else "")

    def keep(self, manifest: str, seconds: float) -> None:
        self.kept[manifest] += 1
        self.kept_seconds[manifest] += seconds

    def total_dropped(self, manifest: str | None = None) -> int:
        if manifest is not None:
            return sum(self.dropped[manifest].values())
        return sum(sum(c.values()) for c in self.dropped.values())

    def summary(self) -> str:
        lines = ["manifest | kept | hours | dropped (reason: count)"]
        for name in sorted(set(self.kept) | set(self.dropped)):
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.dropped[name].items())) or "-"
            lines.append(f"{name} | {self.kept[name]} | {self.kept_seconds[name] / 3600:.3f} | "
                         f"{self.total_dropped(name)} ({reasons})")
        return "\n".join(lines + self.notes)


def resolve_min_duration(value: str | float) -> float:
    """`auto` -> AUTO_MIN_DURATION; never below one encoder frame."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO_MIN_DURATION
    return max(float(value), receptive_field() / SAMPLE_RATE)


def text_min_frames(text: str) -> int:
    """Frames character CTC needs for a normalised transcript: its characters with `|` between
    words, plus one blank between repeated characters (`toolkit.model.wav2vec2.ctc_min_frames`)."""
    import torch

    from toolkit.model.wav2vec2 import ctc_min_frames

    chars = [ord(c) for c in "|".join(text.split())]
    return int(ctc_min_frames(torch.tensor([chars]), torch.tensor([len(chars)]))[0]) if chars else 0


def header_duration(path: Path) -> tuple[float | None, str]:
    """(duration, "") if lhotse can read the file's header, else (None, why)."""
    from lhotse import Recording

    if not path.is_file():
        return None, "missing audio file"
    try:
        rec = Recording.from_file(path)
    except Exception as e:  # any backend failure means the recipe would fail on it
        return None, f"unreadable audio ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if rec.num_samples == 0:
        return None, "unreadable audio (no samples)"
    return rec.duration, ""


def check_decodable(text: str, duration: float) -> str:
    """"" if an evaluation utterance can be decoded and scored, else the reason it cannot: empty
    text (nothing to score) or audio shorter than one model frame (nothing to decode)."""
    if not text:
        return "empty text after normalisation"
    if num_frames(round(duration * SAMPLE_RATE)) == 0:
        return f"too short to decode ({duration:.3f} s is less than one model frame)"
    return ""


def check_text_and_duration(text: str, duration: float, min_duration: float, max_duration: float) -> str:
    """"" if usable, else the drop reason (with the numbers that made it fail)."""
    if not text:
        return "empty text after normalisation"
    if duration < min_duration:
        return f"too short ({duration:.3f} s < --min-duration {min_duration:g} s)"
    if duration > max_duration:
        return f"too long ({duration:.2f} s > --max-duration {max_duration:g} s)"
    need, have = text_min_frames(text), num_frames(round(duration * SAMPLE_RATE))
    if need > have:
        return f"text too long for the audio ({need} CTC frames needed, {have} available)"
    return ""


def headers_in_parallel(paths: list[Path], nj: int, desc: str) -> list[tuple[float | None, str]]:
    """header_duration for many files; threads, since the work is I/O and C code."""
    with ThreadPoolExecutor(max(1, nj)) as ex:
        return list(tqdm(ex.map(header_duration, paths), total=len(paths), desc=desc, unit="file", leave=False))


def decode_errors(cuts: list, nj: int, desc: str) -> dict[str, str]:
    """cut id -> why its audio cannot be used, for the cuts whose audio fails to load, decodes to
    nothing, or holds NaN/Inf samples (which would stop decoding or poison training)."""
    import numpy as np

    def one(cut) -> tuple[str, str]:
        try:
            audio = cut.load_audio()
        except Exception as e:
            msg = str(e).splitlines()[0][:160] if str(e) else ""
            return cut.id, f"corrupt audio ({type(e).__name__}: {msg})"
        if audio.size == 0:
            return cut.id, "corrupt audio (decoded to no samples)"
        if not np.isfinite(audio).all():
            return cut.id, "corrupt audio (NaN or infinite samples)"
        return cut.id, ""

    with ThreadPoolExecutor(max(1, nj)) as ex:
        results = list(tqdm(ex.map(one, cuts), total=len(cuts), desc=desc, unit="cut", leave=False))
    return {cid: why for cid, why in results if why}


def sentence_overlap(train_texts: set[str], texts: list[str]) -> tuple[int, int]:
    """(how many of `texts` also occur in train, how many `texts`)."""
    return sum(1 for t in texts if t in train_texts), len(texts)
