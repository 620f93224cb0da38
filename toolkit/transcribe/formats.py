"""Output formats of `toolkit transcribe` (`--format`, comma-separated).

Per recording (utterance id `ID`, its text = the segments' texts joined by spaces):
- `text`: Kaldi text, one `ID word word ...` line (`ID` alone for an empty transcript); `--out-dir`: `text`.
- `jsonl`: one JSON object per line: `{"id", "source", "duration", "language", "text", "words":
  [{"word", "start", "end", "confidence"}, ...]}` (seconds; see toolkit.transcribe.align for the
  definitions); `--out-dir`: `transcripts.jsonl`.
- `ctm`: NIST CTM, one `ID 1 start duration word confidence` line per word; `--out-dir`: `ctm`.
- `srt`, `vtt`: subtitles, one file per recording (`--out-dir`/srt/ID.srt, /vtt/ID.vtt). Cues are
  runs of words of at most `max_chars` characters (wrapped into lines of at most 42) and
  `max_cue_s` seconds, broken early at pauses longer than `max_gap_s`; a cue spans its first
  word's start to its last word's end. Cue text is HTML-escaped (`&lt;unk&gt;`): both formats read
  `<...>` as markup.
Without `--out-dir`, text, jsonl and ctm go to standard output as each recording finishes.

Writers get a recording's segments as they are decoded (`begin`, `segment`, `end`) and keep only
that recording's rendered text until `end`, so a recording that fails half-way leaves nothing
behind (`discard`). The files of a run are written through `toolkit.utils.atomic_path`, and the
subtitle files into a hidden temporary folder (`staged_folder`) whose files move into srt/ (vtt/)
when the run ends: they appear complete when the run ends, or not at all (an interrupted or failed run
removes its temporary files). A run that transcribed nothing (`keep_earlier`: every input failed)
leaves the earlier files of the out dir as they were.
"""
from __future__ import annotations

import contextlib
import html
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from toolkit.transcribe.align import WordTiming
from toolkit.utils import ToolkitError, atomic_path, current_umask

FORMATS = ("text", "jsonl", "ctm", "srt", "vtt")
FILE_NAMES = {"text": "text", "jsonl": "transcripts.jsonl", "ctm": "ctm"}
NEEDS_TIMES = {"jsonl", "ctm", "srt", "vtt"}
PER_RECORDING = ("srt", "vtt")  # one file per recording, named by its id


def output_paths(out_dir: Path, formats: Iterable[str], ids: Iterable[str]) -> list[Path]:
    """The files a run of `formats` over recordings `ids` writes into `out_dir`."""
    ids = list(ids)
    return ([out_dir / FILE_NAMES[f] for f in formats if f in FILE_NAMES]
            + [out_dir / f / f"{i}.{f}" for f in formats if f in PER_RECORDING for i in ids])


def parse_formats(spec: str) -> list[str]:
    fmts = [f.strip() for f in spec.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ToolkitError(f"--format {spec!r}: unknown {bad}; choose from {', '.join(FORMATS)} (comma-separated)")
    return list(dict.fromkeys(fmts))


@dataclass
class Recording:
    id: str
    source: str
    duration: float
    language: str | None = None


def _seconds(t: float) -> str:
    return f"{t:.2f}"


class _Writer:
    def begin(self, rec: Recording) -> None:
        self.rec = rec
        self.texts: list[str] = []

    def segment(self, text: str, words: list[WordTiming] | None) -> None:
        if text:
            self.texts.append(text)

    def end(self) -> str:
        raise NotImplementedError

    @property
    def text(self) -> str:
        return " ".join(self.texts)


class KaldiTextWriter(_Writer):
    def end(self) -> str:
        return f"{self.rec.id} {self.text}".rstrip() + "\n"


class JsonLinesWriter(_Writer):
    def begin(self, rec: Recording) -> None:
        super().begin(rec)
        self.words: list[str] = []  # rendered JSON, not objects: a long recording's words stay small

    def segment(self, text: str, words: list[WordTiming] | None) -> None:
        super().segment(text, words)
        for w in words or []:
            self.words.append(json.dumps({"word": w.word, "start": w.start, "end": w.end,
                                          "confidence": w.confidence}, ensure_ascii=False))

    def end(self) -> str:
        head = json.dumps({"id": self.rec.id, "source": self.rec.source, "duration": round(self.rec.duration, 3),
                           "language": self.rec.language, "text": self.text}, ensure_ascii=False)
        return head[:-1] + ', "words": [' + ", ".join(self.words) + "]}\n"


class CtmWriter(_Writer):
    def begin(self, rec: Recording) -> None:
        super().begin(rec)
        self.buf = io.StringIO()

    def segment(self, text: str, words: list[WordTiming] | None) -> None:
        super().segment(text, words)
        for w in words or []:
            self.buf.write(f"{self.rec.id} 1 {_seconds(w.start)} {_seconds(max(0.0, w.end - w.start))} {w.word} "
                           f"{w.confidence:.4f}\n")

    def end(self) -> str:
        return self.buf.getvalue()


def _clock(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def wrap(words: list[str], width: int = 42) -> list[str]:
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 1 + len(w) <= width:
            lines[-1] += " " + w
        else:
            lines.append(w)
    return lines


class SubtitleWriter(_Writer):
    """SRT (`vtt=False`) or WebVTT cues, built as words arrive."""

    def __init__(self, vtt: bool, max_chars: int = 84, max_cue_s: float = 7.0, max_gap_s: float = 1.0):
        self.vtt = vtt
        self.max_chars, self.max_cue_s, self.max_gap_s = max_chars, max_cue_s, max_gap_s

    def begin(self, rec: Recording) -> None:
        super().begin(rec)
        self.buf = io.StringIO()
        if self.vtt:
            self.buf.write("WEBVTT\n\n")
        self.cue: list[WordTiming] = []
        self.n = 0

    def segment(self, text: str, words: list[WordTiming] | None) -> None:
        super().segment(text, words)
        for w in words or []:
            if self.cue:
                chars = sum(len(x.word) + 1 for x in self.cue) + len(w.word)
                if (chars > self.max_chars or w.end - self.cue[0].start > self.max_cue_s
                        or w.start - self.cue[-1].end > self.max_gap_s):
                    self._flush()
            self.cue.append(w)

    def _flush(self) -> None:
        if not self.cue:
            return
        self.n += 1
        sep = "." if self.vtt else ","
        start, end = self.cue[0].start, max(self.cue[-1].end, self.cue[0].start + 0.001)
        if not self.vtt:
            self.buf.write(f"{self.n}\n")
        self.buf.write(f"{_clock(start, sep)} --> {_clock(end, sep)}\n")
        # cue text is markup in both formats (<i>, <c.x>, &amp;): escape, so that `<unk>` stays visible
        self.buf.write(html.escape("\n".join(wrap([x.word for x in self.cue])), quote=False) + "\n\n")
        self.cue = []

    def end(self) -> str:
        self._flush()
        return self.buf.getvalue()


def make_writer(fmt: str) -> _Writer:
    return {"text": KaldiTextWriter, "jsonl": JsonLinesWriter, "ctm": CtmWriter,
            "srt": lambda: SubtitleWriter(vtt=False), "vtt": lambda: SubtitleWriter(vtt=True)}[fmt]()


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A hidden temporary folder for a run's per-recording files. When `final` is not there yet it
    is made beside it and renamed into place on success; when it is (with the earlier files of other
    recordings, which stay), it is made inside it and its files are moved out one by one (on the
    same file system, a linked folder included). On an exception the temporary folder goes.
    (`toolkit.model.export`'s staging replaces a whole folder; subtitles are merged into one.)"""
    new = not final.is_dir()
    where = final.parent if new else final
    where.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=where))
    try:
        yield tmp
        if new:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's folder is private (0700)
            os.replace(tmp, final)
        else:
            for p in tmp.iterdir():
                os.replace(p, final / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _KeptEarlier(Exception):
    """Thrown into the open outputs on exit after `Outputs.keep_earlier()`: nothing is committed."""


class Outputs:
    """Every requested format for a run: `begin(rec)`, `segment(text, words)`, `end()` or `discard()` per
    recording; use as a context manager (files committed on a normal exit, removed on an exception or
    after `keep_earlier()`)."""

    def __init__(self, formats: Iterable[str], out_dir: str | Path | None, stdout: TextIO | None = None):
        self.formats = list(formats)
        self.out_dir = Path(out_dir) if out_dir else None
        if self.out_dir is None and any(f in PER_RECORDING for f in self.formats):
            raise ToolkitError("--format srt/vtt writes one file per recording: give --out-dir")
        self.writers = {f: make_writer(f) for f in self.formats}
        self.stdout = stdout or sys.stdout
        self._stack = contextlib.ExitStack()
        self._files: dict[str, TextIO] = {}
        self._folders: dict[str, Path] = {}  # srt/vtt: the run's temporary folder
        self._keep_earlier = False
        self.recordings = 0

    def __enter__(self) -> "Outputs":
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for f in self.formats:
                if f in FILE_NAMES:
                    tmp = self._stack.enter_context(atomic_path(self.out_dir / FILE_NAMES[f]))
                    self._files[f] = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
                elif f in PER_RECORDING:
                    self._folders[f] = self._stack.enter_context(staged_folder(self.out_dir / f))
        return self

    def keep_earlier(self) -> None:
        """Commit nothing on exit: this run's files are dropped, the out dir's earlier ones stay (a run
        whose every input failed must not replace earlier transcripts with empty files)."""
        self._keep_earlier = True

    def __exit__(self, *exc) -> bool | None:
        if exc[0] is None and self._keep_earlier:
            with contextlib.suppress(_KeptEarlier):
                self._stack.__exit__(_KeptEarlier, _KeptEarlier(), None)
            return None
        return self._stack.__exit__(*exc)

    @property
    def needs_times(self) -> bool:
        return bool(NEEDS_TIMES & set(self.formats))

    def begin(self, rec: Recording) -> None:
        for w in self.writers.values():
            w.begin(rec)

    def segment(self, text: str, words: list[WordTiming] | None) -> None:
        for w in self.writers.values():
            w.segment(text, words)

    def discard(self) -> None:
        """Forget the current recording (it failed half-way)."""

    def end(self) -> str:
        """Write the current recording everywhere; returns its text."""
        text = ""
        for f, w in self.writers.items():
            rendered = w.end()
            text = w.text
            if f in PER_RECORDING:
                (self._folders[f] / f"{w.rec.id}.{f}").write_text(rendered, encoding="utf-8")
            elif self.out_dir is not None:
                self._files[f].write(rendered)
            else:
                self.stdout.write(rendered)
                self.stdout.flush()
        self.recordings += 1
        return text
