"""Inputs of `toolkit transcribe`: what to transcribe, and its audio as 16 kHz mono, block by block.

`collect_inputs(args)` turns the command line's INPUTs into `AudioItem`s (utterance id + where the
audio is) and the inputs that failed (one-line reasons):
- an audio file (anything soundfile reads, else anything ffmpeg decodes): id = its name without
  the suffix;
- a folder: every audio file below it (suffixes `AUDIO_SUFFIXES`, recursively, sorted); id = the
  path relative to the folder without the suffix, `/` written as `-`. Hidden files and everything in
  hidden folders (names starting with '.': `.DS_Store`, macOS's `._x.wav`, `.git/`) are left out,
  and so are files that are not audio by their suffix; the log counts both;
- a Kaldi `wav.scp` (the name `wav.scp` or the suffix `.scp`): `utt-id path` lines; piped commands
  (`... |`) are not run (each such line fails with a message);
- a Lhotse manifest (`.jsonl`, `.jsonl.gz`, `.json`): a CutSet (id = cut id; the cut's offset,
  duration and channel are honoured) or a RecordingSet (id = recording id). Its relative audio
  paths are relative to the current directory (lhotse's rule); a missing file is named with the
  folder to run from.
Whitespace in ids becomes `_` (Kaldi ids have none); two inputs with the same id are an error. A
text file that lists paths (not a `.scp`), and a `.scp` line with a bare path, fail with the form to use.

`AudioReader(item)` gives random access to the item's audio at 16 kHz mono: `read(start, stop)`
reads only those samples (plus a few for the resampler), so a long recording is never in memory
whole. Channels are averaged. Other sample rates are resampled with torchaudio's sinc resampler
(`torchaudio.functional.resample`, the one `toolkit.model.extract.load_audio` uses) on blocks
aligned to the rate ratio with enough margin for its kernel, so the blocks join into exactly what
resampling the whole file gives. Files soundfile cannot read are decoded once by ffmpeg into a
temporary 16 kHz mono WAV (deleted on `close()`), then read the same way.
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.utils import ToolkitError

log = logging.getLogger("toolkit.transcribe")

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".wma", ".aif",
                  ".aiff", ".au", ".caf", ".mka", ".spx", ".amr")
MANIFEST_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


@dataclass
class AudioItem:
    """One recording (or part of one) to transcribe."""

    id: str
    source: str  # what messages name: the file, or "wav.scp:LINE", "manifest: cut ID"
    path: Path | None = None  # the audio file (None: `lhotse` loads it)
    offset: float = 0.0  # seconds into the file (lhotse cuts)
    duration: float | None = None  # seconds from `offset` (None: to the end)
    channel: int | list[int] | None = None  # channels to average (None: all)
    default_channel: int | None = None  # --channel: the channel of a multi-channel file when `channel` is None
    lhotse: Any = None  # a lhotse Cut/Recording whose audio only lhotse can load (URL, command, transforms)
    language: str | None = None  # the manifest's supervision language, when given
    manifest: Path | None = None  # the Lhotse manifest that names the audio (for messages about its paths)
    extra: dict = field(default_factory=dict)


def clean_id(text: str) -> str:
    return re.sub(r"\s+", "_", text.strip())


def _is_manifest(path: Path) -> bool:
    return any(path.name.endswith(s) for s in MANIFEST_SUFFIXES)


def _is_scp(path: Path) -> bool:
    return path.name == "wav.scp" or path.suffix == ".scp"


def collect_inputs(inputs: list[str]) -> tuple[list[AudioItem], list[tuple[str, str]]]:
    """Items to transcribe, in the order given, and (input, reason) for the inputs that cannot be used.

    Raises ToolkitError when two items share an id (the outputs would overwrite each other).
    """
    items: list[AudioItem] = []
    failed: list[tuple[str, str]] = []
    for arg in inputs:
        path = Path(arg)
        try:
            if path.is_dir():
                found = _folder_items(path)
                if not found:
                    raise ToolkitError(f"{path}: no audio files below this folder (looked for "
                                       f"{', '.join(AUDIO_SUFFIXES)})")
                items += found
            elif not path.exists():
                raise ToolkitError(f"{path}: no such file or folder")
            elif _is_manifest(path):
                items += _manifest_items(path)
            elif _is_scp(path):
                its, bad = _scp_items(path)
                items += its
                failed += bad
            else:
                _refuse_path_list(path)
                items.append(AudioItem(id=clean_id(path.stem), source=str(path), path=path))
        except ToolkitError as e:
            failed.append((arg, str(e)))
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise ToolkitError(f"utterance id {it.id!r} is given twice ({seen[it.id]} and {it.source}); "
                               "rename one of the files or transcribe them in separate runs")
        seen[it.id] = it.source
    return items, failed


def _listed_path(target: str, listing: Path) -> Path:
    """A path written in a list file: as given, or relative to the list's folder when it is not
    relative to here."""
    audio = Path(target)
    return audio if audio.is_absolute() or audio.exists() else listing.parent / audio


def _refuse_path_list(path: Path) -> None:
    """A text file whose first line names an existing file is a list of paths, not audio: say how
    to give one (ffmpeg would only answer "Invalid data found when processing input")."""
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return  # binary: audio (or not) is for the decoder to tell
    first = next((line.strip() for line in head.splitlines() if line.strip()), "")
    words = first.split()
    if words and _listed_path(words[-1], path).is_file():
        raise ToolkitError(f"{path}: a text file listing audio files, not audio; give the files (or their folder) "
                           "as INPUTs, or write the list as a Kaldi wav.scp ('utt-id path' lines, a name ending in .scp)")


def _folder_items(folder: Path) -> list[AudioItem]:
    everything = [p for p in folder.rglob("*") if p.is_file()]
    # hidden: the first part of the path below `folder` that starts with '.' (a file, or a folder
    # such as .git/ counted once however many files it holds)
    hidden: dict[Path, None] = {}
    shown = []
    for p in everything:
        parts = p.relative_to(folder).parts
        first = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
        if first is None:
            shown.append(p)
        else:
            hidden[Path(*parts[: first + 1])] = None
    if hidden:
        names = sorted(hidden)
        log.info("%s: %d hidden file(s)/folder(s) below this folder left out (names starting with '.', e.g. %s); "
                 "give a hidden file by name to transcribe it", folder, len(names), folder / names[0])
    files = sorted(p for p in shown if p.suffix.lower() in AUDIO_SUFFIXES)
    others = sorted(p for p in shown if p.suffix.lower() not in AUDIO_SUFFIXES)
    if others:
        log.warning("%s: %d file(s) below this folder left out: not audio by their suffix (e.g. %s; audio is %s); "
                    "give such a file by name to try it", folder, len(others), others[0], " ".join(AUDIO_SUFFIXES))
    out = []
    for p in files:
        rel = p.relative_to(folder).with_suffix("")
        out.append(AudioItem(id=clean_id("-".join(rel.parts)), source=str(p), path=p))
    return out


def _scp_items(path: Path) -> tuple[list[AudioItem], list[tuple[str, str]]]:
    from toolkit.utils import read_utf8_lines

    items, failed = [], []
    for n, line in enumerate(read_utf8_lines(path, "INPUT", "a Kaldi wav.scp (utt-id path)"), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        where = f"{path}:{n}"
        if len(parts) != 2:
            bare = len(parts) == 1 and _listed_path(parts[0], path).is_file()
            hint = f" (a bare path: write '{clean_id(Path(parts[0]).stem)} {parts[0]}')" if bare else ""
            failed.append((where, f"{where}: expected 'utt-id path', got {line.strip()!r}{hint}"))
            continue
        utt, target = parts
        if target.endswith("|"):
            failed.append((where, f"{where}: {utt}: piped commands are not run; decode the audio to a file "
                                  "and list the file instead"))
            continue
        items.append(AudioItem(id=clean_id(utt), source=f"{where} ({target})", path=_listed_path(target, path)))
    return items, failed


def _manifest_items(path: Path) -> list[AudioItem]:
    from lhotse import CutSet, RecordingSet, load_manifest

    try:
        manifest = load_manifest(path)
    except Exception as e:  # noqa: BLE001 - lhotse raises many kinds for a bad manifest
        raise ToolkitError(f"{path}: cannot read this Lhotse manifest ({type(e).__name__}: {str(e)[:120]}); "
                           "give a cut or recording manifest") from None
    if isinstance(manifest, RecordingSet):
        return [_lhotse_item(r.id, f"{path}: recording {r.id}", r, 0.0, None, None, None, path) for r in manifest]
    if isinstance(manifest, CutSet):
        out = []
        for cut in manifest:
            sups = getattr(cut, "supervisions", None) or []
            lang = sups[0].language if sups else None
            if getattr(cut, "recording", None) is None:
                if not getattr(cut, "has_recording", False):
                    raise ToolkitError(f"{path}: cut {cut.id} has no recording (features only); give cuts with audio")
                # a mixed or padded cut: audio only lhotse can put together, loaded whole
                out.append(AudioItem(id=clean_id(cut.id), source=f"{path}: cut {cut.id}", lhotse=cut,
                                     duration=cut.duration, language=lang, manifest=path))
                continue
            channel = cut.channel if hasattr(cut, "channel") else None
            out.append(_lhotse_item(cut.id, f"{path}: cut {cut.id}", cut, cut.start, cut.duration, channel, lang, path))
        return out
    raise ToolkitError(f"{path}: a {type(manifest).__name__} has no audio to transcribe; give the recordings "
                       "or cuts manifest")


def _lhotse_item(uid: str, source: str, obj: Any, offset: float, duration: float | None,
                 channel: Any, language: str | None, manifest: Path) -> AudioItem:
    rec = obj if not hasattr(obj, "recording") else obj.recording
    plain = (len(rec.sources) == 1 and rec.sources[0].type == "file" and not getattr(rec, "transforms", None))
    if plain:
        src = rec.sources[0]
        # A multi-channel recording stored as one file: the cut's channel(s) index that file.
        if channel is not None and src.channels and len(src.channels) > 1:
            wanted = channel if isinstance(channel, list) else [channel]
            missing = [c for c in wanted if c not in src.channels]
            if missing:
                raise ToolkitError(f"{source}: channel {missing[0]} is not one of the recording's channels "
                                   f"{src.channels}; fix the cut's channel")
            ch = [src.channels.index(c) for c in wanted]
        else:
            ch = None
        return AudioItem(id=clean_id(uid), source=source, path=Path(src.source), offset=offset, duration=duration,
                         channel=ch, language=language, manifest=manifest)
    return AudioItem(id=clean_id(uid), source=source, lhotse=obj, duration=duration, language=language,
                     manifest=manifest)


def _lhotse_files(obj: Any) -> list[Path]:
    """The audio files a lhotse Recording / Cut / MixedCut reads (URLs and commands left out)."""
    if getattr(obj, "recording", None) is not None:
        recs = [obj.recording]
    elif hasattr(obj, "sources"):
        recs = [obj]
    else:  # a MixedCut: its tracks' recordings (padding has none)
        recs = [t.cut.recording for t in getattr(obj, "tracks", []) if getattr(t.cut, "recording", None) is not None]
    return [Path(s.source) for r in recs for s in r.sources if s.type == "file"]


def missing_audio(source: str, path: Path, manifest: Path | None = None) -> ToolkitError:
    """The one-line error for an audio file that is not there. A manifest's relative paths are
    relative to the current directory: the message names the folder of the manifest (or above it)
    from which the path exists, when there is one."""
    where = f"{source}: audio file {os.path.abspath(path)}"
    if path.is_dir():
        return ToolkitError(f"{where} is a folder, not an audio file; fix the path")
    if manifest is None or path.is_absolute():
        return ToolkitError(f"{where} not found; check the path")
    base = next((d for d in Path(os.path.abspath(manifest)).parents if (d / path).is_file()), None)
    fix = (f"run from {base}, where {path} exists, or make them absolute" if base is not None else
           "run from the folder they are relative to (often the manifest's or its recipe's), or make them absolute")
    return ToolkitError(f"{where} not found; the manifest's paths are relative to the current directory: {fix}")


# -------------------------------------------------------------------------------------------------
# Reading

class ConversionNotes:
    """Says once per run that audio is resampled / downmixed / decoded by ffmpeg (not once per file)."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def note(self, key: str, message: str) -> None:
        if key not in self.said:
            self.said.add(key)
            log.info("%s (said once; every such input is converted the same way)", message)


class AudioReader:
    """16 kHz mono float32 samples of one `AudioItem`, read block by block (see module docstring)."""

    def __init__(self, item: AudioItem, notes: ConversionNotes | None = None):
        self.item = item
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._file = None
        self._lhotse_audio: torch.Tensor | None = None
        notes = notes or ConversionNotes()
        if item.lhotse is not None:
            self._open_lhotse(notes)
            return
        path = item.path
        if path is None:
            raise ToolkitError(f"{item.source}: no audio file given")
        if not path.is_file():
            raise missing_audio(item.source, path, item.manifest)
        self._file = self._open_soundfile(path)
        if self._file is None:
            self._file = self._decode_with_ffmpeg(path, notes)
        self.rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self._channel = [item.channel] if isinstance(item.channel, int) else item.channel
        if self._channel is None and item.default_channel is not None and self.channels > 1:
            self._channel = [item.default_channel]
        if self.channels > 1 and self._channel is None:
            notes.note("downmix", f"{item.source}: {self.channels} channels, averaged to mono")
        if self.rate != SAMPLE_RATE:
            notes.note(f"rate{self.rate}", f"{item.source}: {self.rate} Hz, resampled to {SAMPLE_RATE} Hz")
        total_in = self._file.frames
        if self._channel is not None and max(self._channel) >= self.channels:
            raise ToolkitError(f"{item.source}: channel index {max(self._channel)} of a {self.channels}-channel file; "
                               "fix the manifest's channel (or --channel)")
        self._cancel_warned = False
        declared = _wav_header_frames(path) if self._tmpdir is None else None  # ffmpeg's copy: another rate
        if declared is not None and declared > total_in + self.rate // 100:
            log.warning("%s: the WAV header announces %.2f s but the file holds %.2f s (truncated copy?); "
                        "transcribing what is there", item.source, declared / self.rate, total_in / self.rate)
        self.in_offset = min(total_in, int(round(item.offset * self.rate)))
        end = total_in if item.duration is None else min(total_in, self.in_offset + int(round(item.duration * self.rate)))
        self.in_samples = max(0, end - self.in_offset)
        if item.duration is not None and self.in_samples < int(round(item.duration * self.rate)) - self.rate // 100:
            if self.in_samples == 0:
                raise ToolkitError(f"{item.source}: starts at {item.offset:.2f} s, past the end of the audio "
                                   f"({total_in / self.rate:.2f} s); fix the manifest")
            log.warning("%s: asks for %.2f s from %.2f s, but the audio ends at %.2f s; transcribing the %.2f s "
                        "there are", item.source, item.duration, item.offset, total_in / self.rate,
                        self.in_samples / self.rate)
        g = math.gcd(self.rate, SAMPLE_RATE)
        self._ro, self._no = self.rate // g, SAMPLE_RATE // g
        # torchaudio's kernel reaches `width` input samples either side; two extra periods of margin.
        base = min(self._ro, self._no) * 0.99
        width = math.ceil(6 * self._ro / base)
        self._margin_periods = math.ceil(width / self._ro) + 2
        self.num_samples = -(-self.in_samples * self._no // self._ro)  # ceil, as torchaudio's output length

    # -- opening
    @staticmethod
    def _open_soundfile(path: Path):  # noqa: ANN205 - soundfile.SoundFile
        import soundfile as sf

        try:
            f = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            log.debug("soundfile cannot read %s (%s); trying ffmpeg", path, e)
            return None
        return f

    def _decode_with_ffmpeg(self, path: Path, notes: ConversionNotes):  # noqa: ANN202
        import soundfile as sf

        from toolkit.model.extract import ffmpeg_to_wav

        self._tmpdir = tempfile.TemporaryDirectory(prefix="toolkit-transcribe-")
        wav = Path(self._tmpdir.name) / "audio.wav"
        try:
            ffmpeg_to_wav(path, wav, self.item.source)
        except ToolkitError:
            self.close()
            raise
        notes.note("ffmpeg", f"{self.item.source}: not a format soundfile reads; decoded with ffmpeg to "
                             f"{SAMPLE_RATE} Hz")
        return sf.SoundFile(str(wav))

    def _open_lhotse(self, notes: ConversionNotes) -> None:
        obj = self.item.lhotse
        for path in _lhotse_files(obj):  # lhotse's own error for a missing file spans many lines
            if not path.is_file():
                raise missing_audio(self.item.source, path, self.item.manifest)
        try:
            audio = obj.resample(SAMPLE_RATE).load_audio()
        except Exception as e:  # noqa: BLE001 - lhotse raises many kinds for unreadable audio
            detail = " ".join(str(e).split())  # one line: lhotse's messages hold one line per backend tried
            raise ToolkitError(f"{self.item.source}: lhotse cannot load the audio ({type(e).__name__}: "
                               f"{detail[:200]})") from None
        audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        if audio.dim() == 2:
            audio = audio.mean(dim=0)
        notes.note("lhotse", f"{self.item.source}: not a plain file; loaded whole by lhotse (resampled to "
                             f"{SAMPLE_RATE} Hz, channels averaged)")
        self._lhotse_audio = audio
        self.rate, self.channels = SAMPLE_RATE, 1
        self.num_samples = int(audio.numel())

    # -- reading
    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Samples [start, stop) at 16 kHz (clipped to the recording), mono float32, 1-D."""
        start, stop = max(0, start), min(self.num_samples, stop)
        if stop <= start:
            return torch.zeros(0)
        if self._lhotse_audio is not None:
            return self._lhotse_audio[start:stop]
        if self.rate == SAMPLE_RATE:
            wav = self._read_input(start, stop)
        else:
            ro, no, m = self._ro, self._no, self._margin_periods
            p0 = max(0, start // no - m)  # first period (one period: ro input samples <-> no output samples)
            p1 = -(-stop // no) + m
            a0, a1 = p0 * ro, min(self.in_samples, p1 * ro)
            import torchaudio.functional as AF

            wav = AF.resample(self._read_input(a0, a1), self.rate, SAMPLE_RATE)
            wav = wav[start - p0 * no: stop - p0 * no]
        if not torch.isfinite(wav).all():
            raise ToolkitError(f"{self.item.source}: audio contains NaN/Inf samples; the file is corrupt")
        return wav

    def _read_input(self, a: int, b: int) -> torch.Tensor:
        """Input-rate samples [a, b) of the item's span, channels averaged."""
        import soundfile as sf

        try:
            self._file.seek(self.in_offset + a)
            data = self._file.read(b - a, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise ToolkitError(f"{self.item.source}: cannot read the audio at {a / self.rate:.2f} s "
                               f"({str(e).splitlines()[0][:120]}); the file is damaged") from None
        if self._channel is not None:
            data = data[:, self._channel]
        if data.shape[1] > 1:
            mixed = data.mean(axis=1)
            self._check_cancellation(data, mixed, a)
        else:
            mixed = data[:, 0]
        wav = torch.from_numpy(np.ascontiguousarray(mixed))
        if wav.numel() < b - a:  # a file shorter than its header says: pad, it is the file's own end
            wav = torch.nn.functional.pad(wav, (0, b - a - wav.numel()))
        return wav

    def _check_cancellation(self, data: np.ndarray, mixed: np.ndarray, a: int) -> None:
        """Warn (once) when averaging the channels wipes out what they hold: channels in opposite
        phase (a miswired microphone) average to near silence, and the transcript comes out empty."""
        if self._cancel_warned or len(mixed) < self.rate // 10:
            return
        each = float(np.sqrt(np.mean(data.astype(np.float64) ** 2, axis=0)).mean())
        together = float(np.sqrt(np.mean(mixed.astype(np.float64) ** 2)))
        if each > 1e-3 and together < 0.1 * each:
            self._cancel_warned = True
            log.warning("%s: its %d channels cancel out when averaged (%.1f dB below them, from %.1f s: opposite "
                        "phase?); transcribe one channel with --channel N", self.item.source, data.shape[1],
                        20 * math.log10(max(together, 1e-12) / each), a / self.rate)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        self._lhotse_audio = None

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _wav_header_frames(path: Path) -> int | None:
    """Sample frames a RIFF/WAVE file's `data` chunk announces (None: not a plain PCM WAV, or a
    streamed one whose size fields are placeholders). libsndfile quietly reads a truncated file's
    frames from what is there, so only the header tells that audio is missing."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20:pos + 22])[0]
        elif chunk == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


def probe_duration(item: AudioItem) -> float | None:
    """Seconds of audio from the file's header (no decoding); None when only decoding can tell."""
    if item.lhotse is not None:
        return float(item.duration if item.duration is not None else item.lhotse.duration)
    import soundfile as sf

    try:
        info = sf.info(str(item.path))
    except Exception:  # noqa: BLE001 - unreadable here: the reader says why later
        return None
    total = info.frames / info.samplerate if info.samplerate else 0.0
    rest = max(0.0, total - item.offset)
    return rest if item.duration is None else min(rest, item.duration)
