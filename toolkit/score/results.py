"""`toolkit results`: collect decode results into an ESPnet-style RESULTS.md.

    toolkit results --exp-dir exp/ctc_tiny [--exp-dir exp/ctc_base ...] --out RESULTS.md [--title T]

Reads every `E/decode/<test-set>/<method>/results.json` (written by `write_reports`) and
writes, atomically, a WER section and a CER section with ESPnet's columns
`|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|` (percentages, one decimal) plus the 95%
bootstrap interval and the real-time factor; one row per (model, test set, method), the
dataset cell being `<model>/<test-set>/<method>` with <model> the experiment directory's name.
Rows follow the order of --exp-dir, then test set and method sorted. When results carry
languages, per-language tables follow (column `lang` after `dataset`).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from toolkit.score.compute import ErrorStats
from toolkit.score.report import ESPNET_COLUMNS, espnet_row, fmt_ci
from toolkit.utils import ToolkitError, atomic_write_text

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", type=Path, action="append", required=True,
                        help="experiment directory holding decode/<test-set>/<method>/results.json (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="RESULTS.md to write")
    parser.add_argument("--title", default="Results", help="level-1 heading of the file")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


@dataclass
class Entry:
    """One decode directory's results."""

    model: str
    test_set: str
    method: str
    data: dict

    @property
    def name(self) -> str:
        return f"{self.model}/{self.test_set}/{self.method}"


def load_entries(exp_dirs: list[Path]) -> list[Entry]:
    entries: list[Entry] = []
    for exp in exp_dirs:
        if not exp.is_dir():
            raise ToolkitError(f"--exp-dir {exp}: not a directory; give an experiment directory")
        found = sorted(exp.glob("decode/*/*/results.json"), key=lambda p: (p.parent.parent.name, p.parent.name))
        for stale in sorted(exp.glob("decode/*/*/wer-summary.txt")):
            if not (stale.parent / "results.json").exists():
                log.warning("%s has no results.json (decoded by an older toolkit?); skipped", stale.parent)
        if not found:
            log.warning("--exp-dir %s: no decode/<test-set>/<method>/results.json", exp)
        for path in found:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                ErrorStats.from_dict(data["wer"]), ErrorStats.from_dict(data["cer"])
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
                raise ToolkitError(f"{path}: not a results.json written by the toolkit ({e}); "
                                   f"re-run scoring for that directory") from None
            entries.append(Entry(exp.name, path.parent.parent.name, path.parent.name, data))
    if not entries:
        raise ToolkitError(f"no results.json under {', '.join(str(e) for e in exp_dirs)}/decode/*/*/; decode first")
    return entries


def _rtf(data: dict) -> str:
    rtf = data.get("rtf")
    return f"{rtf:.3f}" if isinstance(rtf, (int, float)) else "-"


def _section(entries: list[Entry], unit: str) -> list[str]:
    label = unit.upper()
    cols = ESPNET_COLUMNS + [f"{label} 95% CI", "RTF"]
    lines = [f"## {label}", "", "|" + "|".join(cols) + "|", "|" + "|".join("---" for _ in cols) + "|"]
    for e in entries:
        stats = ErrorStats.from_dict(e.data[unit])
        lines.append(espnet_row(e.name, stats, [fmt_ci(stats.ci95), _rtf(e.data)]))
    with_lang = [e for e in entries if e.data.get("by_language")]
    if with_lang:
        cols = ESPNET_COLUMNS[:1] + ["lang"] + ESPNET_COLUMNS[1:] + [f"{label} 95% CI"]
        lines += ["", f"### {label} per language", "",
                  "|" + "|".join(cols) + "|", "|" + "|".join("---" for _ in cols) + "|"]
        for e in with_lang:
            for lang, sub in sorted(e.data["by_language"].items()):
                stats = ErrorStats.from_dict(sub[unit])
                row = espnet_row(e.name, stats, [fmt_ci(stats.ci95)])
                head, rest = row[1:].split("|", 1)
                lines.append(f"|{head}|{lang}|{rest}")
    return lines + [""]


def format_results(entries: list[Entry], title: str) -> str:
    lines = [f"# {title}", "",
             "Percentages of the reference tokens (Corr/Sub/Del/Ins/Err) and of the sentences (S.Err);",
             "95% CI: bootstrap interval of the error rate; RTF: decoding seconds per audio second.",
             "CER counts characters without spaces (icefall's compute_CER).", ""]
    return "\n".join(lines + _section(entries, "wer") + _section(entries, "cer"))


def run(args: argparse.Namespace) -> int:
    entries = load_entries(args.exp_dir)
    atomic_write_text(args.out, format_results(entries, args.title))
    log.info("wrote %s: %d rows from %d experiment(s)", args.out, len(entries), len(args.exp_dir))
    return 0
