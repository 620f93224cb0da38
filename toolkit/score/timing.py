"""Per-utterance decoding times and the real-time factor (processing seconds / audio seconds).

Written by `toolkit decode` (timing.txt), merged and reported by `toolkit score --timing`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from toolkit.utils import atomic_write_text


@dataclass
class UttTime:
    """Seconds spent on one utterance."""

    duration: float  # audio seconds
    forward: float = 0.0  # this utterance's share of its batch's model forward (by duration)
    search: float = 0.0  # decoding of its log-probs


@dataclass
class Timing:
    """Times of one decoding method over a test set."""

    method: str
    utts: dict[str, UttTime] = field(default_factory=dict)

    def add(self, cut_id: str, duration: float, forward: float, search: float) -> None:
        self.utts[cut_id] = UttTime(duration, forward, search)

    @property
    def audio_seconds(self) -> float:
        return sum(u.duration for u in self.utts.values())

    @property
    def forward_seconds(self) -> float:
        return sum(u.forward for u in self.utts.values())

    @property
    def search_seconds(self) -> float:
        return sum(u.search for u in self.utts.values())

    def rtf(self, include_forward: bool = True) -> float:
        """Real-time factor: < 1 means faster than real time."""
        audio = self.audio_seconds
        spent = self.search_seconds + (self.forward_seconds if include_forward else 0.0)
        return spent / audio if audio > 0 else float("nan")

    def summary(self) -> dict[str, float]:
        """The figures handed to the score reports (``write_reports(timing=...)``)."""
        return {
            "decode_seconds": round(self.forward_seconds + self.search_seconds, 4),
            "audio_seconds": round(self.audio_seconds, 3),
            "forward_seconds": round(self.forward_seconds, 3),
            "search_seconds": round(self.search_seconds, 3),
            "rtf": round(self.rtf(), 5),
            "search_rtf": round(self.rtf(include_forward=False), 5),
        }

    def write(self, path: str | os.PathLike) -> None:
        """``timing.txt``: one ``cut_id duration forward search`` line per utterance, then the totals."""
        lines = ["# cut_id\tduration_s\tforward_s\tsearch_s"]
        lines += [f"{k}\t{u.duration:.3f}\t{u.forward:.4f}\t{u.search:.4f}" for k, u in sorted(self.utts.items())]
        lines += [f"# {k}={v}" for k, v in self.summary().items()]
        atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def read(cls, paths: "list[str | os.PathLike]", method: str = "") -> "Timing":
        """Merge the per-utterance lines of ``timing.txt`` files (the jobs of a split decoding)."""
        from toolkit.utils import ToolkitError, read_utf8_lines

        timing = cls(method)
        for path in paths:
            for n, line in enumerate(read_utf8_lines(path, "--timing", "a timing.txt of toolkit decode"), start=1):
                if not line.strip() or line.startswith("#"):
                    continue
                parts = line.split("\t")
                try:
                    cut_id, duration, forward, search = parts[0], *map(float, parts[1:4])
                except ValueError:
                    raise ToolkitError(f"--timing {path}:{n}: expected 'cut_id<TAB>duration<TAB>forward<TAB>search', "
                                       f"got {line.strip()!r}") from None
                if cut_id in timing.utts:
                    raise ToolkitError(f"--timing {path}:{n}: utterance {cut_id!r} was timed twice; "
                                       "give each job's timing.txt once")
                timing.add(cut_id, duration, forward, search)
        return timing
