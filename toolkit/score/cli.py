"""`toolkit score`: WER/CER of Kaldi text files (`uttid word word ...`).

    toolkit score --ref data/test/text --hyp exp/x/decode/test/greedy/text
    toolkit score --ref REF --hyp HYP --cer --markdown --out-dir D --utt2lang data/test/utt2lang

Prints Kaldi-style %WER (and with --cer %CER) lines with the sentence error rate and the 95%
bootstrap interval; --markdown prints ESPnet-style RESULTS.md rows; --out-dir writes
recogs.txt, errs.txt, errs-cer.txt, wer-summary.txt and results.json there. A decoding split
into jobs is scored once with `--decode-dirs JOB1 JOB2 ...` (their recogs.txt joined, their
timing.txt merged for the real-time factor); `--cuts` gives the languages of the utterances.
A hypothesis set that misses reference utterances is an error (`--allow-missing` counts them
as deletions), and one that matches none always is.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from toolkit.score.compute import Report, score_pairs
from toolkit.score.report import espnet_header, espnet_row, fmt_ci, write_reports
from toolkit.utils import ToolkitError, read_utf8_lines

log = logging.getLogger("toolkit.score")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", type=Path, help="reference Kaldi text file: uttid word word ...")
    parser.add_argument("--hyp", type=Path, help="hypothesis Kaldi text file: uttid word word ...")
    parser.add_argument("--decode-dirs", type=Path, nargs="+", default=None,
                        help="instead of --ref/--hyp: decode directories of toolkit decode (the jobs of a split "
                             "decoding), each with recogs.txt and timing.txt, scored together as one set")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a hypothesis set that lacks some reference utterances (they count as deletions)")
    parser.add_argument("--out-dir", type=Path, default=None, help="write recogs/errs/wer-summary/results.json here")
    parser.add_argument("--key", default="score", help="setting name in wer-summary.txt and the log lines")
    parser.add_argument("--utt2lang", type=Path, default=None, help="optional `uttid lang` file: per-language scores")
    parser.add_argument("--cuts", type=Path, default=None,
                        help="optional Lhotse cuts manifest: per-language scores from its supervisions' languages")
    parser.add_argument("--timing", type=Path, nargs="+", default=None,
                        help="timing.txt file(s) of toolkit decode (one per job of a split decoding): "
                             "real-time factor in the reports; with --out-dir the merged timing.txt is written there")
    parser.add_argument("--cer", action="store_true", help="also print the character error rate")
    parser.add_argument("--markdown", action="store_true", help="print ESPnet-style RESULTS.md table rows")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def read_kaldi_text(path: Path, option: str) -> dict[str, str]:
    """`uttid text...` lines into a dict; a line with only an id is an empty transcript."""
    lines = read_utf8_lines(path, option, "a Kaldi text file (uttid word word ...)")
    out: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        if parts[0] in out:
            raise ToolkitError(f"{option} {path}:{n}: utterance id {parts[0]!r} appears twice; ids must be unique")
        out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def summary_lines(report: Report, key: str, cer: bool) -> list[str]:
    lines = []
    for stats in [report.wer] + ([report.cer] if cer else []):
        lines.append(f"{stats.kaldi_line(key)}  %SER {stats.sentence_error_rate:.2f} "
                     f"[{stats.sentence_errors} / {stats.num_sentences}]  95% CI {fmt_ci(stats.ci95)}")
    for lang, sub in report.by_language.items():
        lines.append(f"  {lang}: " + sub.wer.kaldi_line(key) + (f"  %CER {sub.cer.rate:.2f}" if cer else ""))
    if report.missing:
        lines.append(f"  {len(report.missing)} utterances had no hypothesis (counted as deletions)")
    return lines


def markdown_lines(report: Report, name: str, cer: bool) -> list[str]:
    extra = ["WER 95% CI"]
    lines = ["### WER", "", espnet_header(extra), espnet_row(name, report.wer, [fmt_ci(report.wer.ci95)])]
    if cer:
        lines += ["", "### CER", "", espnet_header(["CER 95% CI"]),
                  espnet_row(name, report.cer, [fmt_ci(report.cer.ci95)])]
    return lines


def languages_of_cuts(path: Path) -> dict[str, str]:
    """`cut id -> language` of a Lhotse cuts manifest (cuts whose supervision has a language)."""
    from toolkit.data import read_cuts

    return {c.id: c.supervisions[0].language for c in read_cuts(path) if c.supervisions and c.supervisions[0].language}


def check_coverage(refs: dict[str, str], hyps: dict[str, str], allow_missing: bool, where: str) -> None:
    """A hypothesis set must cover every reference: a WER over a silently smaller set is wrong."""
    missing = [u for u in refs if u not in hyps]
    if not missing:
        return
    if len(missing) == len(refs):
        raise ToolkitError(f"{where}: no hypothesis id matches a reference id ({len(refs)} references, e.g. "
                           f"{next(iter(refs))!r}; hypotheses e.g. {next(iter(hyps), 'none')!r}); "
                           "score the hypotheses of this test set")
    if not allow_missing:
        raise ToolkitError(f"{where}: {len(missing)} of {len(refs)} reference utterances have no hypothesis "
                           f"(e.g. {missing[0]!r}); decode the whole set, or pass --allow-missing to count them as "
                           "deletions")


def warn_folded_words(refs: dict[str, str], hyps: dict[str, str], where: str) -> None:
    """Warn when hypothesis words match a reference word only after case and Unicode folding
    (`Hello` against `hello`, a decomposed `café`): each counts as an error, so the two files were
    probably normalised differently."""
    import unicodedata

    def fold(w: str) -> str:
        return unicodedata.normalize("NFC", w).casefold()

    ref_words = {w for t in refs.values() for w in t.split()}
    folded = {fold(w) for w in ref_words}
    odd = sorted({w for t in hyps.values() for w in t.split() if w not in ref_words and fold(w) in folded})
    if odd:
        log.warning("%s: %d hypothesis word(s) match a reference word only after case/Unicode folding (e.g. %r); "
                    "they count as errors: normalise references and hypotheses the same way", where, len(odd), odd[0])


def _from_decode_dirs(dirs: list[Path]) -> tuple[dict[str, str], dict[str, str], list[Path]]:
    from toolkit.score.report import read_recogs

    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    timings = []
    for d in dirs:
        r, h = read_recogs(d / "recogs.txt")
        twice = sorted(set(r) & set(refs))
        if twice:
            raise ToolkitError(f"--decode-dirs {d}: utterance {twice[0]!r} was decoded by another job too; "
                               "give each job's directory once")
        refs.update(r)
        hyps.update(h)
        if (d / "timing.txt").is_file():
            timings.append(d / "timing.txt")
    return refs, hyps, timings


def _decode_extras(dirs: list[Path]) -> dict:
    """What the jobs' results.json say beyond the scores, merged: the LM setting (the same in every
    job, else an error: the parts were decoded differently) and the OOV rate (counts added)."""
    import json

    lms, oov = [], {"oov_words": 0, "words": 0}
    lexicon = None
    for d in dirs:
        path = d / "results.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ToolkitError(f"--decode-dirs {path}: not a results.json written by toolkit decode; decode again") from None
        if "lm" in data:
            lms.append(data["lm"])
        if "oov" in data:
            oov["oov_words"] += data["oov"]["oov_words"]
            oov["words"] += data["oov"]["words"]
            lexicon = data["oov"].get("lexicon")
    extra: dict = {}
    if lms:
        if len(lms) != len(dirs) or any(lm != lms[0] for lm in lms):
            raise ToolkitError(f"--decode-dirs: the jobs were decoded with different LM settings ({lms[0]} vs "
                               f"{[lm for lm in lms if lm != lms[0]][:1] or 'none'}); decode every job with the same options")
        extra["lm"] = lms[0]
    if oov["words"]:
        extra["oov"] = {"oov_rate": 100.0 * oov["oov_words"] / oov["words"], **oov, "lexicon": lexicon}
    return extra


def run(args: argparse.Namespace) -> int:
    extra: dict = {}
    if args.decode_dirs:
        if args.ref or args.hyp:
            raise ToolkitError("give --decode-dirs or --ref/--hyp, not both")
        refs, hyps, timing_files = _from_decode_dirs(args.decode_dirs)
        args.timing = (args.timing or []) + timing_files
        extra = _decode_extras(args.decode_dirs)
        where = f"--decode-dirs {' '.join(map(str, args.decode_dirs))}"
    else:
        if not args.ref or not args.hyp:
            raise ToolkitError("give --ref and --hyp (Kaldi text files), or --decode-dirs")
        refs = read_kaldi_text(args.ref, "--ref")
        hyps = read_kaldi_text(args.hyp, "--hyp")
        where = f"--hyp {args.hyp}"
    if not refs:
        raise ToolkitError(f"{args.ref or where}: no utterances; the reference set is empty")
    check_coverage(refs, hyps, args.allow_missing, where)
    warn_folded_words(refs, hyps, where)
    languages = None
    if args.utt2lang is not None:
        languages = {u: t.split()[0] for u, t in read_kaldi_text(args.utt2lang, "--utt2lang").items() if t.split()}
        unknown = [u for u in languages if u not in refs]
        if unknown:
            log.warning("--utt2lang %s: %d of its %d ids are no reference utterance (e.g. %r); their references "
                        "are scored under 'und'", args.utt2lang, len(unknown), len(languages), unknown[0])
    if args.cuts is not None:
        from_cuts = {u: lang for u, lang in languages_of_cuts(args.cuts).items() if u in refs}
        languages = {**from_cuts, **(languages or {})}
    timing = None
    if args.timing:
        from toolkit.score.timing import Timing

        timing = Timing.read(args.timing, args.key)
    if args.out_dir is not None:
        report = write_reports(args.out_dir, refs, hyps, args.key, languages or None,
                               timing=timing.summary() if timing else None, extra=extra)
        if timing:
            timing.write(Path(args.out_dir) / "timing.txt")
    else:
        report = score_pairs(refs, hyps, languages)
    print("\n".join(summary_lines(report, args.key, args.cer)))
    if args.markdown:
        print("\n".join(markdown_lines(report, args.key, args.cer)))
    return 0
