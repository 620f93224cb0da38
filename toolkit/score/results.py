"""`toolkit results`: collect decode results into an ESPnet-style RESULTS.md.

    toolkit results --exp-dir exp/ctc_tiny [--exp-dir exp/ctc_base ...] --out RESULTS.md [--title T]
    toolkit results --compare pretrained=exp/ft_pre scratch=exp/ft_scratch --test-set cv-it_test \
        [--methods greedy hlg] [--out RESULTS.md --append]

Reads every `E/decode/<test-set>/<method>/results.json` (written by `write_reports`) and
writes, atomically, a WER section and a CER section with ESPnet's columns
`|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|` (percentages, one decimal) plus the 95%
bootstrap interval and the real-time factor; one row per (model, test set, method), the
dataset cell being `<model>/<test-set>/<method>` with <model> the experiment directory's name.
Rows follow the order of --exp-dir, then test set and method sorted. When results carry
languages, per-language tables follow (column `lang` after `dataset`).

`--compare NAME=EXP_DIR ...` puts several experiments side by side on one test set: one row per
decoding method with each experiment's WER and CER and the utterances scored, then picks the
method with the lowest WER for the first experiment and prints `RESULT cer_<NAME>=` and
`RESULT wer_<NAME>=` lines (CER first) for every experiment with that method.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from toolkit.score.compute import ErrorStats
from toolkit.score.report import ESPNET_COLUMNS, espnet_row, fmt_ci, fmt_pct
from toolkit.utils import ToolkitError, atomic_write_text

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", type=Path, action="append", default=None,
                        help="experiment directory holding decode/<test-set>/<method>/results.json (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="RESULTS.md to write")
    parser.add_argument("--title", default="Results", help="heading of the file (--compare: of its section)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="NAME=EXP_DIR",
                        help="compare experiments on one --test-set; prints the table and RESULT lines")
    parser.add_argument("--test-set", default=None, help="--compare: the decode/<test-set> to compare on")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="--compare: decoding methods (default: those every experiment has)")
    parser.add_argument("--append", action="store_true", help="--compare: append the table to --out")
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


def _parse_compare(items: list[str]) -> list[tuple[str, Path]]:
    pairs = []
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name or not path or not name.replace("_", "").replace("-", "").isalnum():
            raise ToolkitError(f"--compare {item!r}: expected NAME=EXP_DIR with NAME letters, digits, - and _")
        pairs.append((name, Path(path)))
    if len({n for n, _ in pairs}) != len(pairs):
        raise ToolkitError(f"--compare {' '.join(items)}: names must be distinct")
    return pairs


def compare(pairs: list[tuple[str, Path]], test_set: str, methods: list[str] | None) -> tuple[list[str], str, dict]:
    """(markdown lines, best method, {name: results.json of the best method}) for `--compare`."""
    found: dict[str, dict[str, dict]] = {}
    for name, exp in pairs:
        entries = [e for e in load_entries([exp]) if e.test_set == test_set]
        if not entries:
            raise ToolkitError(f"--compare {name}={exp}: no decode/{test_set}/<method>/results.json; decode it first")
        found[name] = {e.method: e.data for e in entries}
    common = [m for m in sorted(set.intersection(*(set(v) for v in found.values())))]
    wanted = methods or common
    for name, by_method in found.items():
        lacking = [m for m in wanted if m not in by_method]
        if lacking:
            raise ToolkitError(f"--compare {name}: no results for method(s) {', '.join(lacking)} on {test_set}; "
                               "decode them or leave them out of --methods")
    if not wanted:
        raise ToolkitError(f"--compare: no decoding method common to {', '.join(found)} on {test_set}")
    names = list(found)
    head = ["method"] + [f"WER {n} (%)" for n in names] + [f"CER {n} (%)" for n in names] + ["utterances scored"]
    lines = ["|" + "|".join(head) + "|", "|" + "|".join("---" for _ in head) + "|"]
    for m in wanted:
        wer = [fmt_pct(ErrorStats.from_dict(found[n][m]["wer"]).rate, 2) for n in names]
        cer = [fmt_pct(ErrorStats.from_dict(found[n][m]["cer"]).rate, 2) for n in names]
        counts = sorted({f"{found[n][m]['num_sentences'] - found[n][m].get('missing_hyps', 0)} / "
                         f"{found[n][m]['num_sentences']}" for n in names})
        lines.append("|" + "|".join([m] + wer + cer + [", ".join(counts)]) + "|")
    first = names[0]
    best = min(wanted, key=lambda m: (ErrorStats.from_dict(found[first][m]["wer"]).rate, wanted.index(m)))
    return lines, best, {n: found[n][best] for n in names}


def run_compare(args: argparse.Namespace) -> int:
    if not args.test_set:
        raise ToolkitError("--compare needs --test-set (the decode/<test-set> directory name)")
    pairs = _parse_compare(args.compare)
    table, best, chosen = compare(pairs, args.test_set, args.methods)
    section = [f"## {args.title}", "", *table, "",
               f"Best method for {pairs[0][0]} on {args.test_set} (lowest WER): {best}.", ""]
    text = "\n".join(section)
    if args.out is not None:
        old = args.out.read_text(encoding="utf-8") if args.append and args.out.is_file() else ""
        atomic_write_text(args.out, (old.rstrip("\n") + "\n\n" if old else "") + text)
    print(text)
    for unit in ("cer", "wer"):
        for name, _ in pairs:
            print(f"RESULT {unit}_{name}={ErrorStats.from_dict(chosen[name][unit]).rate:.2f}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return run_compare(args)
    if not args.exp_dir or args.out is None:
        raise ToolkitError("give --exp-dir (repeatable) and --out RESULTS.md, or --compare NAME=EXP_DIR ... --test-set T")
    entries = load_entries(args.exp_dir)
    atomic_write_text(args.out, format_results(entries, args.title))
    log.info("wrote %s: %d rows from %d experiment(s)", args.out, len(entries), len(args.exp_dir))
    return 0
