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
languages, per-language tables follow (column `lang` after `dataset`). A last section names, for
every decoding with a lang dir, the OOV rate of the references against its words and the LM scale
and word insertion penalty used, with where they were chosen (`toolkit decode --sweep-...` on dev).

`--compare NAME=EXP_DIR ...` puts several experiments side by side on one test set: one row per
decoding method with each experiment's WER and CER and the utterances scored, then picks the
method with the lowest WER for the first experiment and prints `RESULT cer_<NAME>=` and
`RESULT wer_<NAME>=` lines (CER first) for every experiment with that method. Each row also pairs
the first experiment with every other one on the same utterances (Bisani & Ney's paired bootstrap,
`compute.paired_bootstrap`): the WER difference with its 95% interval and the share of resamples in
which the first makes fewer errors, printed for the chosen method as `RESULT p_<FIRST>_better_than_<NAME>=`;
the section says whether the difference is clear (one side better in 97.5% of the resamples,
so that its 95% interval excludes 0; no verdict on fewer than 20 utterances).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from toolkit.score.compute import ErrorStats, PairedComparison, paired_bootstrap
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
        for loose in sorted(exp.glob("decode/*/results.json")):
            log.warning("%s: a decoding written straight into the test-set directory (`toolkit decode --method`) is "
                        "not read; decode with --methods (decode/<test-set>/<method>/)", loose)
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
    check_one_checkpoint_per_set(entries)
    if not entries:
        raise ToolkitError(f"no results.json under {', '.join(str(e) for e in exp_dirs)}/decode/*/*/; decode first")
    return entries


def check_one_checkpoint_per_set(entries: list[Entry]) -> None:
    """The methods of one experiment's test set must come from one checkpoint (results.json records
    it): a later decoding of some methods with another model beside older ones was reported as one
    model's table."""
    by_set: dict[tuple[str, str], dict[str, str]] = {}
    for e in entries:
        if e.data.get("checkpoint"):
            by_set.setdefault((e.model, e.test_set), {})[e.method] = e.data["checkpoint"]
    for (model, test_set), ckpts in by_set.items():
        first_method: dict[str, str] = {}  # checkpoint -> the first method decoded with it
        for m, c in ckpts.items():
            first_method.setdefault(c, m)
        if len(first_method) > 1:
            (ca, a), (cb, b) = sorted(first_method.items())[:2]
            raise ToolkitError(f"{model}/decode/{test_set}: {a} was decoded with {ca}, {b} with {cb}; decode every "
                               "method of a set with one checkpoint (or into another decode directory)")


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


def _tuned_on(path: str | None) -> str:
    """Where an LM setting was chosen: the decode dir of the sweep (…/decode/<set>/<method>), or 'default'."""
    if not path:
        return "default (not tuned)"
    parts = Path(path).parts
    return f"{parts[-3]} sweep" if len(parts) >= 3 else path


def _lm_section(entries: list[Entry]) -> list[str]:
    rows = [e for e in entries if e.data.get("oov") or e.data.get("lm")]
    if not rows:
        return []
    cols = ["dataset", "OOV words (%)", "OOV / words", "LM scale", "word penalty", "chosen on"]
    lines = ["## Vocabulary and LM weights", "",
             "OOV: reference words missing from the lang dir's words.txt (no graph can output them).", "",
             "|" + "|".join(cols) + "|", "|" + "|".join("---" for _ in cols) + "|"]
    for e in rows:
        oov, lm = e.data.get("oov") or {}, e.data.get("lm") or {}
        cells = [e.name,
                 fmt_pct(oov["oov_rate"], 2) if oov else "-",
                 f"{oov['oov_words']} / {oov['words']}" if oov else "-",
                 f"{lm['lm_scale']:g}" if lm else "-",
                 f"{lm['word_penalty']:g}" if lm else "-",
                 _tuned_on(lm.get("tuned_on")) if lm else "-"]
        lines.append("|" + "|".join(cells) + "|")
    return lines + [""]


def format_results(entries: list[Entry], title: str) -> str:
    lines = [f"# {title}", "",
             "Percentages of the reference tokens (Corr/Sub/Del/Ins/Err) and of the sentences (S.Err);",
             "95% CI: bootstrap interval of the error rate; RTF: decoding seconds per audio second.",
             "CER counts characters without spaces (icefall's compute_CER).", ""]
    return "\n".join(lines + _section(entries, "wer") + _section(entries, "cer") + _lm_section(entries))


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


def compare(pairs: list[tuple[str, Path]], test_set: str, methods: list[str] | None) -> tuple[list[str], str, dict, dict]:
    """(markdown lines, best method, {name: results.json of the best method},
    {name: PairedComparison of the first experiment against it, best method}) for `--compare`."""
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
    first, others = names[0], names[1:]
    exp_of = dict(pairs)
    head = (["method"] + [f"WER {n} (%)" for n in names] + [f"CER {n} (%)" for n in names] + ["utterances scored"]
            + [c for n in others for c in (f"WER {first} - {n} (95% CI)", f"P({first} better than {n})")])
    lines = ["|" + "|".join(head) + "|", "|" + "|".join("---" for _ in head) + "|"]
    paired: dict[str, dict[str, PairedComparison]] = {}
    for m in wanted:
        wer = [fmt_pct(ErrorStats.from_dict(found[n][m]["wer"]).rate, 2) for n in names]
        cer = [fmt_pct(ErrorStats.from_dict(found[n][m]["cer"]).rate, 2) for n in names]
        counts = sorted({f"{found[n][m]['num_sentences'] - found[n][m].get('missing_hyps', 0)} / "
                         f"{found[n][m]['num_sentences']}" for n in names})
        paired[m] = {n: _paired(exp_of[first], exp_of[n], test_set, m) for n in others}
        cells = [c for n in others for c in (f"{paired[m][n].delta:+.2f} ({paired[m][n].ci95[0]:+.2f}..{paired[m][n].ci95[1]:+.2f})",
                                             f"{paired[m][n].p_a_better:.3f}")]
        lines.append("|" + "|".join([m] + wer + cer + [", ".join(counts)] + cells) + "|")
    best = min(wanted, key=lambda m: (ErrorStats.from_dict(found[first][m]["wer"]).rate, wanted.index(m)))
    return lines, best, {n: found[n][best] for n in names}, paired[best]


def _paired(exp_a: Path, exp_b: Path, test_set: str, method: str) -> PairedComparison:
    """The paired bootstrap of two decodings of one test set; both must hold the same references."""
    from toolkit.score.report import read_recogs

    paths = [exp / "decode" / test_set / method / "recogs.txt" for exp in (exp_a, exp_b)]
    for path in paths:
        if not path.is_file():
            raise ToolkitError(f"{path}: missing (a results.json without its recogs.txt); re-run scoring for that directory")
    (refs_a, hyps_a), (refs_b, hyps_b) = (read_recogs(p) for p in paths)
    if refs_a != refs_b:
        only = sorted(set(refs_a) ^ set(refs_b))
        what = (f"{len(only)} utterance(s) in one only, e.g. {only[0]}" if only else
                f"{sum(refs_a[u] != refs_b[u] for u in refs_a)} reference text(s) differ")
        raise ToolkitError(f"{paths[0]} and {paths[1]} score different references ({what}); "
                           f"decode both on the same {test_set} manifest")
    return paired_bootstrap(refs_a, hyps_a, hyps_b)


def run_compare(args: argparse.Namespace) -> int:
    if not args.test_set:
        raise ToolkitError("--compare needs --test-set (the decode/<test-set> directory name)")
    pairs = _parse_compare(args.compare)
    table, best, chosen, paired = compare(pairs, args.test_set, args.methods)
    first = pairs[0][0]
    section = [f"## {args.title}", "", *table, "",
               f"Best method for {first} on {args.test_set} (lowest WER): {best}."]
    for name, pc in paired.items():
        section.append(
            f"With {best}, {first} minus {name}: {pc.delta:+.2f} WER points (95% CI {pc.ci95[0]:+.2f} to "
            f"{pc.ci95[1]:+.2f}); {first} is better in {100 * pc.p_a_better:.1f}% of {pc.replications} "
            f"paired bootstrap resamples of the {pc.utterances} utterances (Bisani & Ney): "
            + _verdict(first, name, pc) + ".")
    text = "\n".join(section + [""])
    if args.out is not None:
        old = args.out.read_text(encoding="utf-8") if args.append and args.out.is_file() else ""
        atomic_write_text(args.out, (old.rstrip("\n") + "\n\n" if old else "") + text)
    print(text)
    for unit in ("cer", "wer"):
        for name, _ in pairs:
            print(f"RESULT {unit}_{name}={ErrorStats.from_dict(chosen[name][unit]).rate:.2f}")
    for name, pc in paired.items():
        print(f"RESULT p_{first}_better_than_{name}={pc.p_a_better:.3f}")
    return 0


# A difference is called clear when one system is better in at least this share of the resamples:
# the two-sided 95% level, so that a clear difference is one whose printed 95% interval excludes 0.
CLEAR_P = 0.975
# Fewer utterances than this get no verdict: the bootstrap is too optimistic on a handful
# (one utterance with one error fewer would be "better in 100% of the resamples").
MIN_UTTERANCES = 20


def _verdict(first: str, other: str, pc: PairedComparison) -> str:
    if pc.utterances < MIN_UTTERANCES:
        return f"too few utterances for a verdict ({pc.utterances}, fewer than {MIN_UTTERANCES})"
    if pc.p_a_better >= CLEAR_P:
        return f"{first} is clearly better (P >= {CLEAR_P})"
    if pc.p_b_better >= CLEAR_P:
        return f"{other} is clearly better ({other} better in {100 * pc.p_b_better:.1f}% of them)"
    return f"no clear difference on this set (neither better in {100 * CLEAR_P:.1f}% of them)"


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return run_compare(args)
    if not args.exp_dir or args.out is None:
        raise ToolkitError("give --exp-dir (repeatable) and --out RESULTS.md, or --compare NAME=EXP_DIR ... --test-set T")
    entries = load_entries(args.exp_dir)
    atomic_write_text(args.out, format_results(entries, args.title))
    log.info("wrote %s: %d rows from %d experiment(s)", args.out, len(entries), len(args.exp_dir))
    return 0
