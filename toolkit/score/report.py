"""Scoring outputs in icefall's layouts, a results.json, and ESPnet-style RESULTS.md rows.

`write_reports(out_dir, refs, hyps, key)` writes, each atomically:
- `recogs.txt`:      `{id}:\\tref=['w', ...]` / `{id}:\\thyp=[...]` per utterance (icefall store_transcripts);
- `errs.txt`:        word errors in icefall's write_error_stats layout (`%WER = x.xx`, the `Errors:` line,
                     PER-UTT DETAILS with runs of errors merged and `*` for an empty side,
                     SUBSTITUTIONS / DELETIONS / INSERTIONS tables, PER-WORD STATS);
- `errs-cer.txt`:    the same over characters (headed `%CER`, "reference characters");
- `wer-summary.txt`: `settings\\tWER\\tCER\\tWER-CI95` then `key\\t2.40\\t1.10\\t2.10-2.70`
                     (icefall's two first columns; one directory holds one setting);
- `results.json`:    every number (see `Report.to_dict`), the key, RTF and the timing given.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from toolkit.score.compute import GAP, ErrorStats, Report, UttAlignment, score_pairs
from toolkit.utils import ToolkitError, atomic_write_text

log = logging.getLogger(__name__)

SHOWN_GAP = "*"
ESPNET_COLUMNS = ["dataset", "Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]


# ---------------------------------------------------------------------------------------
# recogs.txt and errs.txt


def format_recogs(ids: Sequence[str], refs: Mapping[str, str], hyps: Mapping[str, str]) -> str:
    lines = []
    for utt in ids:
        lines.append(f"{utt}:\tref={refs[utt].split()}")
        lines.append(f"{utt}:\thyp={hyps.get(utt, '').split()}")
    return "\n".join(lines) + ("\n" if lines else "")


def read_recogs(path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """(refs, hyps) of a recogs.txt written by `format_recogs`; one-line ToolkitError naming the line."""
    import ast

    from toolkit.utils import read_utf8_lines

    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    for n, line in enumerate(read_utf8_lines(path, "--decode-dirs", "a decode directory's recogs.txt"), start=1):
        if not line.strip():
            continue
        utt, sep, rest = line.partition(":\t")
        side, eq, words = rest.partition("=")
        try:
            value = ast.literal_eval(words) if sep and eq and side in ("ref", "hyp") else None
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise ToolkitError(f"{path}:{n}: not a recogs.txt line ('ID:<TAB>ref=[...]' or 'ID:<TAB>hyp=[...]'); "
                               "re-run toolkit decode for that directory")
        table = refs if side == "ref" else hyps
        if utt in table:
            raise ToolkitError(f"{path}:{n}: utterance {utt!r} has two {side} lines; re-run toolkit decode")
        table[utt] = " ".join(value)
    return refs, hyps


def merge_error_runs(alignment: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Correct pairs stay single; each run of consecutive errors becomes one (ref, hyp) pair of
    space-joined tokens, `*` standing for an empty side."""
    out: list[tuple[str, str]] = []
    run_ref: list[str] = []
    run_hyp: list[str] = []

    def flush() -> None:
        if run_ref or run_hyp:
            out.append((" ".join(run_ref) or SHOWN_GAP, " ".join(run_hyp) or SHOWN_GAP))
            run_ref.clear()
            run_hyp.clear()

    for r, h in alignment:
        if r == h:
            flush()
            out.append((r, h))
            continue
        if r != GAP:
            run_ref.append(r)
        if h != GAP:
            run_hyp.append(h)
    flush()
    return out


def per_utt_line(a: UttAlignment) -> str:
    """`id:\\tA (B->C) D`: correct tokens as they are, errors as (ref->hyp)."""
    parts = [r if r == h else f"({r}->{h})" for r, h in merge_error_runs(a.alignment)]
    return f"{a.utt_id}:\t" + " ".join(parts)


def _tables(alignments: Sequence[UttAlignment]):
    subs: dict[tuple[str, str], int] = defaultdict(int)
    dels: dict[str, int] = defaultdict(int)
    ins: dict[str, int] = defaultdict(int)
    words: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])  # corr, ref_sub, hyp_sub, ins, del
    for a in alignments:
        for r, h in a.alignment:
            if r == GAP:
                ins[h] += 1
                words[h][3] += 1
            elif h == GAP:
                dels[r] += 1
                words[r][4] += 1
            elif r != h:
                subs[(r, h)] += 1
                words[r][1] += 1
                words[h][2] += 1
            else:
                words[r][0] += 1
    return subs, dels, ins, words


def _by_count(table: Mapping) -> list:
    return sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))


def format_errs(stats: ErrorStats, alignments: Sequence[UttAlignment]) -> str:
    """errs.txt in icefall's write_error_stats layout (see the module docstring)."""
    name, noun = ("WER", "words") if stats.unit == "word" else ("CER", "characters")
    rate = "inf" if math.isinf(stats.rate) else f"{stats.rate:.2f}"
    lines = [
        f"%{name} = {rate}",
        f"Errors: {stats.ins} insertions, {stats.dele} deletions, {stats.sub} substitutions, "
        f"over {stats.num_ref} reference {noun} ({stats.corr} correct)",
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, "
        "INSERTIONS:, PER-WORD STATS:",
        "",
        "PER-UTT DETAILS: corr or (ref->hyp)  ",
    ]
    lines += [per_utt_line(a) for a in alignments]
    subs, dels, ins, words = _tables(alignments)
    lines += ["", "SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{c}   {r} -> {h}" for (r, h), c in _by_count(subs)]
    lines += ["", "DELETIONS: count ref"] + [f"{c}   {w}" for w, c in _by_count(dels)]
    lines += ["", "INSERTIONS: count hyp"] + [f"{c}   {w}" for w, c in _by_count(ins)]
    lines += ["", "PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp"]
    stats_rows = sorted(words.items(), key=lambda kv: (-sum(kv[1][1:]), kv[0]))
    for w, (corr, ref_sub, hyp_sub, n_ins, n_del) in stats_rows:
        tot = ref_sub + hyp_sub + n_ins + n_del
        lines.append(f"{w}   {corr} {tot} {corr + ref_sub + n_del} {corr + hyp_sub + n_ins}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Summaries


def fmt_pct(x: float | None, digits: int = 1) -> str:
    if x is None or math.isinf(x):
        return "inf" if x is not None else "-"
    return f"{x:.{digits}f}"


def fmt_ci(ci: Sequence[float] | None) -> str:
    return f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"


def format_wer_summary(key: str, report: Report) -> str:
    return (f"settings\tWER\tCER\tWER-CI95\n"
            f"{key}\t{fmt_pct(report.wer.rate, 2)}\t{fmt_pct(report.cer.rate, 2)}\t{fmt_ci(report.wer.ci95)}\n")


def espnet_header(extra: Sequence[str] = ()) -> str:
    cols = list(ESPNET_COLUMNS) + list(extra)
    return "|" + "|".join(cols) + "|\n|" + "|".join("---" for _ in cols) + "|"


def espnet_row(name: str, stats: ErrorStats, extra: Sequence[str] = ()) -> str:
    """`|name|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|...|` with percentages to one decimal (ESPnet)."""
    cells = [name, str(stats.num_sentences), str(stats.num_ref),
             fmt_pct(stats.percent(stats.corr)), fmt_pct(stats.percent(stats.sub)),
             fmt_pct(stats.percent(stats.dele)), fmt_pct(stats.percent(stats.ins)),
             fmt_pct(stats.rate), fmt_pct(stats.sentence_error_rate)]
    return "|" + "|".join(cells + list(extra)) + "|"


def real_time_factor(timing: Mapping[str, float] | None) -> float | None:
    """Decode seconds / audio seconds, from `timing["decode_seconds"]` and `timing["audio_seconds"]`."""
    if not timing:
        return None
    decode, audio = timing.get("decode_seconds"), timing.get("audio_seconds")
    if decode is None or not audio or audio <= 0:
        return None
    return float(decode) / float(audio)


# ---------------------------------------------------------------------------------------


def write_reports(
    out_dir: str | os.PathLike,
    refs: Mapping[str, str],
    hyps: Mapping[str, str],
    key: str,
    languages: Mapping[str, str] | None = None,
    timing: Mapping[str, float] | None = None,
) -> Report:
    """Score and write recogs.txt, errs.txt, errs-cer.txt, wer-summary.txt and results.json into
    `out_dir` (created), each atomically; log Kaldi-style %WER/%CER lines; return the Report.

    `key` names the setting (e.g. "greedy", "lm_scale_0.6"); `timing` may hold `decode_seconds`
    and `audio_seconds` (RTF = their ratio) and anything else worth keeping in results.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = score_pairs(refs, hyps, languages)
    ids = sorted(refs)
    atomic_write_text(out / "recogs.txt", format_recogs(ids, refs, hyps))
    atomic_write_text(out / "errs.txt", format_errs(report.wer, report.word_alignments))
    atomic_write_text(out / "errs-cer.txt", format_errs(report.cer, report.char_alignments))
    atomic_write_text(out / "wer-summary.txt", format_wer_summary(key, report))
    rtf = real_time_factor(timing)
    results = {"key": key, **report.to_dict(), "rtf": rtf, "timing": dict(timing) if timing else None}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    log.info(report.wer.kaldi_line(key))
    log.info(report.cer.kaldi_line(key))
    for lang, sub in report.by_language.items():
        log.info(sub.wer.kaldi_line(f"{key} {lang}"))
    log.info("wrote %s/{recogs.txt,errs.txt,errs-cer.txt,wer-summary.txt,results.json}", out)
    return report
