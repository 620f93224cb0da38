"""WER/CER scoring, icefall-style reports, `toolkit score` and `toolkit results`.

References: kaldialign.edit_distance (independent per-utterance counts), jiwer (wer/cer),
hand-written errs.txt lines, and RESULTS.md / recogs.txt parsed back.
"""
from __future__ import annotations

import ast
import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import jiwer
import kaldialign
import pytest

from toolkit.score import score_pairs, write_reports
from toolkit.score.report import merge_error_runs
from toolkit.utils import ToolkitError

REPO = Path(__file__).resolve().parents[1]
TOOLKIT = [sys.executable, "-m", "toolkit.cli"]
VOCAB = ["the", "cat", "sat", "on", "mat", "кот", "сидит", "नमस्ते", "दुनिया", "你好", "世界", "a", "b"]


def random_pairs(n: int, seed: int = 0, err: float = 0.2) -> tuple[dict, dict]:
    """References and corrupted hypotheses (substitutions, deletions, insertions, some empties)."""
    rng = random.Random(seed)
    refs, hyps = {}, {}
    for i in range(n):
        ref = [rng.choice(VOCAB) for _ in range(rng.randint(0, 10))]
        hyp = []
        for w in ref:
            r = rng.random()
            if r < err / 3:
                continue  # deletion
            hyp.append(rng.choice(VOCAB) if r < 2 * err / 3 else w)
            if rng.random() < err / 3:
                hyp.append(rng.choice(VOCAB))
        refs[f"utt{i:04d}"], hyps[f"utt{i:04d}"] = " ".join(ref), " ".join(hyp)
    return refs, hyps


def independent_counts(refs: dict, hyps: dict, unit: str) -> dict:
    total = {"sub": 0, "del": 0, "ins": 0, "total": 0, "ref_len": 0}
    for u in refs:
        r, h = refs[u].split(), hyps.get(u, "").split()
        if unit == "char":
            r, h = list("".join(r)), list("".join(h))
        d = kaldialign.edit_distance(r, h)
        for k in total:
            total[k] += d[k]
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_match_kaldialign_and_jiwer(seed):
    refs, hyps = random_pairs(200, seed)
    report = score_pairs(refs, hyps)
    for stats, unit in ((report.wer, "word"), (report.cer, "char")):
        ref = independent_counts(refs, hyps, unit)
        assert (stats.sub, stats.dele, stats.ins, stats.err, stats.num_ref) == (
            ref["sub"], ref["del"], ref["ins"], ref["total"], ref["ref_len"])
        assert stats.corr == stats.num_ref - stats.sub - stats.dele
    ids = sorted(refs)
    assert report.wer.rate == pytest.approx(100 * jiwer.wer([refs[u] for u in ids], [hyps[u] for u in ids]))
    joined = lambda d: ["".join(d[u].split()) for u in ids]  # noqa: E731 (CER without spaces)
    assert report.cer.rate == pytest.approx(100 * jiwer.cer(joined(refs), joined(hyps)))
    ser = sum(refs[u].split() != hyps[u].split() for u in ids)
    assert report.wer.sentence_errors == ser and report.num_sentences == 200


def test_bootstrap_interval_contains_estimate_and_narrows():
    widths = []
    for n in (40, 1500):
        refs, hyps = random_pairs(n, seed=7)
        report = score_pairs(refs, hyps)
        for stats in (report.wer, report.cer):
            lo, hi = stats.ci95
            assert lo - 1e-6 <= stats.rate <= hi + 1e-6 and lo < hi
        widths.append(report.wer.ci95[1] - report.wer.ci95[0])
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(n): 6x narrower expected


def test_edge_cases_empty_and_missing(caplog):
    refs = {"ins": "", "del": "a b", "both": "", "missing": "x y z", "ok": "a"}
    hyps = {"ins": "p q", "del": "", "both": "", "ok": "a", "extra": "zzz"}
    with caplog.at_level(logging.WARNING):
        report = score_pairs(refs, hyps)
    assert "no hypothesis" in caplog.text and "no reference" in caplog.text
    w = report.wer
    assert (w.num_ref, w.ins, w.dele, w.sub, w.corr) == (6, 2, 5, 0, 1)
    assert w.sentence_errors == 3 and report.missing == ["missing"]
    assert w.rate == pytest.approx(100 * 7 / 6)
    lo, hi = w.ci95
    assert lo <= w.rate <= hi and hi < float("inf")
    # Nothing to score at all: 0 errors over 0 words is 0%, insertions over nothing are infinite.
    assert score_pairs({"a": ""}, {"a": ""}).wer.rate == 0.0
    empty_ins = score_pairs({"a": ""}, {"a": "x"})
    assert empty_ins.wer.rate == float("inf") and empty_ins.wer.ci95 is None
    assert empty_ins.to_dict()["wer"]["err_rate"] is None  # JSON-safe


@pytest.mark.parametrize("ref,hyp,cer", [
    ("привет мир", "привет мор", 100 / 9),          # Cyrillic: 9 letters, 1 substituted
    ("नमस्ते दुनिया", "नमस्ते", 100 * 6 / 12),        # Devanagari code points, virama and matras included
    ("你好 世界", "你好世", 25.0),                    # CJK: spaces do not matter
    ("你好世界", "你 好 世 界", 0.0),
])
def test_cer_unicode(ref, hyp, cer):
    report = score_pairs({"u": ref}, {"u": hyp})
    assert report.cer.rate == pytest.approx(cer)
    assert report.cer.rate == pytest.approx(100 * jiwer.cer("".join(ref.split()), "".join(hyp.split())))


def test_per_language_reports_add_up():
    refs, hyps = random_pairs(120, seed=3)
    langs = {u: ("en", "ru", "hi")[i % 3] for i, u in enumerate(sorted(refs))}
    del langs["utt0000"]
    report = score_pairs(refs, hyps, langs)
    assert sorted(report.by_language) == ["en", "hi", "ru", "und"]
    for field in ("num_ref", "sub", "dele", "ins", "corr", "sentence_errors", "num_sentences"):
        assert sum(getattr(r.wer, field) for r in report.by_language.values()) == getattr(report.wer, field)
    sub_refs = {u: refs[u] for u in refs if langs.get(u) == "ru"}
    assert report.by_language["ru"].wer.err == independent_counts(sub_refs, hyps, "word")["total"]


def test_merge_error_runs():
    ali = [("a", "a"), ("b", " "), ("c", "x"), ("d", "d"), (" ", "y"), ("e", "e")]
    assert merge_error_runs(ali) == [("a", "a"), ("b c", "x"), ("d", "d"), ("*", "y"), ("e", "e")]


def test_write_reports_layouts(tmp_path, caplog):
    refs = {"u2": "the cat sat on the mat", "u1": "привет мир", "u3": "", "u4": "a b c"}
    hyps = {"u2": "the cat sit on mat", "u1": "привет", "u3": "oops"}
    langs = {"u1": "ru", "u2": "en", "u3": "en", "u4": "en"}
    with caplog.at_level(logging.INFO):
        report = write_reports(tmp_path, refs, hyps, "greedy", langs, {"decode_seconds": 3.0, "audio_seconds": 12.0})
    assert "[greedy] %WER 63.64% [7 / 11, 1 ins, 5 del, 1 sub ]" in caplog.text
    errs = (tmp_path / "errs.txt").read_text(encoding="utf-8").splitlines()
    assert errs[0] == "%WER = 63.64"
    assert errs[1] == "Errors: 1 insertions, 5 deletions, 1 substitutions, over 11 reference words (5 correct)"
    start = errs.index("PER-UTT DETAILS: corr or (ref->hyp)  ")
    assert errs[start + 1: start + 5] == [
        "u1:\tпривет (мир->*)",
        "u2:\tthe cat (sat->sit) on (the->*) mat",
        "u3:\t(*->oops)",
        "u4:\t(a b c->*)",
    ]
    sub = errs.index("SUBSTITUTIONS: count ref -> hyp")
    assert errs[sub + 1] == "1   sat -> sit" and errs[sub + 2] == ""
    dels = errs.index("DELETIONS: count ref")
    assert errs[dels + 1: dels + 6] == ["1   a", "1   b", "1   c", "1   the", "1   мир"]
    assert errs[errs.index("INSERTIONS: count hyp") + 1] == "1   oops"
    per_word = errs[errs.index("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp") + 1:]
    assert "the   1 1 2 1" in per_word and "cat   1 0 1 1" in per_word
    cer = (tmp_path / "errs-cer.txt").read_text(encoding="utf-8").splitlines()
    assert cer[0] == f"%CER = {report.cer.rate:.2f}" and "reference characters" in cer[1]
    assert "u1:\tп р и в е т (м и р->*)" in cer
    # recogs.txt: icefall's ref=[...] / hyp=[...] lines, sorted by id, readable back.
    recogs = (tmp_path / "recogs.txt").read_text(encoding="utf-8").splitlines()
    assert recogs[0] == "u1:\tref=['привет', 'мир']" and recogs[1] == "u1:\thyp=['привет']"
    back = {}
    for line in recogs:
        utt, rest = line.split(":\t", 1)
        side, value = rest.split("=", 1)
        back[(utt, side)] = ast.literal_eval(value)
    assert back[("u4", "hyp")] == [] and back[("u2", "ref")] == refs["u2"].split()
    summary = (tmp_path / "wer-summary.txt").read_text().splitlines()
    assert summary[0].split("\t")[:2] == ["settings", "WER"]
    assert summary[1].split("\t")[:3] == ["greedy", "63.64", f"{report.cer.rate:.2f}"]
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert results["key"] == "greedy" and results["rtf"] == pytest.approx(0.25)
    assert results["wer"]["err"] == 7 and results["wer"]["del"] == 5 and results["num_words"] == 11
    assert results["by_language"]["ru"]["wer"]["err_rate"] == pytest.approx(50.0)
    assert results["missing_hyps"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------
# CLIs


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOLKIT, *args], capture_output=True, text=True, cwd=REPO)


def write_kaldi(path: Path, texts: dict) -> Path:
    path.write_text("".join(f"{u} {t}\n" for u, t in texts.items()), encoding="utf-8")
    return path


def parse_table(lines: list[str], header_start: str) -> list[list[str]]:
    """The rows of the markdown table whose header row begins with `header_start`."""
    i = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.strip("|").split("|"))
    return rows


def test_score_cli(tmp_path):
    refs, hyps = random_pairs(50, seed=11)
    hyps.pop("utt0003")
    ref = write_kaldi(tmp_path / "ref", refs)
    hyp = write_kaldi(tmp_path / "hyp", hyps)
    utt2lang = write_kaldi(tmp_path / "utt2lang", {u: ("en", "hi")[i % 2] for i, u in enumerate(sorted(refs))})
    proc = run_cli("score", "--ref", str(ref), "--hyp", str(hyp), "--cer", "--markdown",
                   "--out-dir", str(tmp_path / "out"), "--key", "k", "--utt2lang", str(utt2lang))
    # one hypothesis is missing: a WER over part of the set is refused, with the count
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().endswith("1 of 50 reference utterances have no hypothesis (e.g. 'utt0003'); decode "
                                        "the whole set, or pass --allow-missing to count them as deletions")
    assert not (tmp_path / "out").exists()
    proc = run_cli("score", "--ref", str(ref), "--hyp", str(hyp), "--cer", "--markdown", "--allow-missing",
                   "--out-dir", str(tmp_path / "out"), "--key", "k", "--utt2lang", str(utt2lang))
    assert proc.returncode == 0, proc.stderr
    report = score_pairs(refs, hyps)
    out = proc.stdout.splitlines()
    assert out[0].startswith(report.wer.kaldi_line("k")) and out[1].startswith(report.cer.kaldi_line("k"))
    row = parse_table(out, "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|WER 95% CI|")[0]
    assert row[:3] == ["k", "50", str(report.wer.num_ref)]
    assert float(row[7]) == pytest.approx(report.wer.rate, abs=0.05)
    assert float(row[4]) == pytest.approx(100 * report.wer.sub / report.wer.num_ref, abs=0.05)
    assert (tmp_path / "out" / "errs.txt").read_text(encoding="utf-8").startswith(f"%WER = {report.wer.rate:.2f}")
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert sorted(results["by_language"]) == ["en", "hi"] and results["missing_hyps"] == 1
    assert sum(v["wer"]["err"] for v in results["by_language"].values()) == report.wer.err
    assert any(line.startswith("  hi: ") for line in out)


def test_score_cli_reads_files_as_editors_write_them_and_warns_of_unnormalised_words(tmp_path):
    """A byte-order mark on the first id, CRLF and a U+2028 inside a line score like the clean
    files (the mark made u1 'missing', U+2028 cut the line); words that differ from the reference
    only in case or Unicode form are counted (as jiwer does) with a warning; utt2lang ids that are
    no reference utterance are warned about."""
    import jiwer

    refs = {"u1": "the cat sat", "u2": "caf\u00e9 au lait", "u3": "a b c"}
    clean = write_kaldi(tmp_path / "ref", refs)
    (tmp_path / "ref_bom").write_bytes(b"\xef\xbb\xbf" + clean.read_bytes().replace(b"\n", b"\r\n"))
    (tmp_path / "hyp").write_text("u1 the cat sat\nu2 caf\u00e9 au\u2028lait\nu3 a b c\n", encoding="utf-8")
    proc = run_cli("score", "--ref", str(tmp_path / "ref_bom"), "--hyp", str(tmp_path / "hyp"))
    assert proc.returncode == 0 and proc.stdout.startswith("[score] %WER 0.00% [0 / 9,"), proc.stdout + proc.stderr
    (tmp_path / "utt2lang").write_text("\ufeffu1 en\nu2 fr\nu9 de\n", encoding="utf-8")
    (tmp_path / "hyp2").write_text("u1 The cat sat\nu2 cafe\u0301 au lait\nu3 a b c\n", encoding="utf-8")
    proc = run_cli("score", "--ref", str(clean), "--hyp", str(tmp_path / "hyp2"), "--utt2lang", str(tmp_path / "utt2lang"))
    assert proc.returncode == 0
    expected = 100 * jiwer.wer([refs[u] for u in sorted(refs)], ["The cat sat", "cafe\u0301 au lait", "a b c"])
    assert proc.stdout.startswith(f"[score] %WER {expected:.2f}% [2 / 9,")
    assert "2 hypothesis word(s) match a reference word only after case/Unicode folding (e.g. 'The')" in proc.stderr
    assert "--utt2lang" in proc.stderr and "1 of its 3 ids are no reference utterance (e.g. 'u9')" in proc.stderr
    assert "  en: " in proc.stdout and "  fr: " in proc.stdout  # the marked first id keeps its language


@pytest.mark.parametrize("ref_text,msg", [
    (None, "--ref"),
    ("u1 a\nu1 b\n", ":2: utterance id 'u1' appears twice"),
    ("\n", "no utterances"),
])
def test_score_cli_errors(tmp_path, ref_text, msg):
    ref = tmp_path / "ref"
    if ref_text is not None:
        ref.write_text(ref_text, encoding="utf-8")
    hyp = write_kaldi(tmp_path / "hyp", {"u1": "a"})
    proc = run_cli("score", "--ref", str(ref), "--hyp", str(hyp))
    assert proc.returncode == 1 and msg in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr


def test_results_cli_roundtrip(tmp_path):
    expected = {}
    for model, seed in (("zmodel", 1), ("amodel", 2)):
        for test_set in ("test", "dev"):
            for method in ("greedy", "hlg"):
                refs, hyps = random_pairs(30, seed=seed * 100 + len(test_set) + len(method))
                langs = {u: ("en", "ru")[i % 2] for i, u in enumerate(sorted(refs))}
                out = tmp_path / model / "decode" / test_set / method
                expected[f"{model}/{test_set}/{method}"] = write_reports(
                    out, refs, hyps, method, langs, {"decode_seconds": 1.0, "audio_seconds": 8.0})
    md = tmp_path / "RESULTS.md"
    proc = run_cli("results", "--exp-dir", str(tmp_path / "zmodel"), "--exp-dir", str(tmp_path / "amodel"),
                   "--out", str(md), "--title", "Tiny")
    assert proc.returncode == 0, proc.stderr
    lines = md.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# Tiny"
    for unit in ("wer", "cer"):
        section = lines[lines.index(f"## {unit.upper()}"):]
        rows = parse_table(section, "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|")
        # --exp-dir order, then test set and method sorted.
        assert [r[0] for r in rows] == [f"{m}/{t}/{k}" for m in ("zmodel", "amodel")
                                        for t in ("dev", "test") for k in ("greedy", "hlg")]
        for r in rows:
            stats = getattr(expected[r[0]], unit)
            assert int(r[1]) == stats.num_sentences and int(r[2]) == stats.num_ref
            assert float(r[7]) == pytest.approx(stats.rate, abs=0.05)
            assert float(r[8]) == pytest.approx(stats.sentence_error_rate, abs=0.05)
            lo, hi = (float(x) for x in r[9].split("-"))
            assert lo == pytest.approx(stats.ci95[0], abs=0.005) and r[10] == "0.125"
        lang_rows = parse_table(section, "|dataset|lang|")
        assert len(lang_rows) == 16 and {r[1] for r in lang_rows} == {"en", "ru"}
        r = lang_rows[0]
        stats = getattr(expected[r[0]].by_language[r[1]], unit)
        assert float(r[8]) == pytest.approx(stats.rate, abs=0.05)
    # Deterministic: a second run writes the same file.
    first = md.read_text(encoding="utf-8")
    assert run_cli("results", "--exp-dir", str(tmp_path / "zmodel"), "--exp-dir", str(tmp_path / "amodel"),
                   "--out", str(md), "--title", "Tiny").returncode == 0
    assert md.read_text(encoding="utf-8") == first


def test_results_cli_errors(tmp_path):
    (tmp_path / "exp" / "decode" / "test" / "greedy").mkdir(parents=True)
    proc = run_cli("results", "--exp-dir", str(tmp_path / "exp"), "--out", str(tmp_path / "R.md"))
    assert proc.returncode == 1 and "decode first" in proc.stderr
    (tmp_path / "exp" / "decode" / "test" / "greedy" / "results.json").write_text("{broken")
    proc = run_cli("results", "--exp-dir", str(tmp_path / "exp"), "--out", str(tmp_path / "R.md"))
    assert proc.returncode == 1 and "results.json" in proc.stderr and "re-run scoring" in proc.stderr
    assert not (tmp_path / "R.md").exists()


def test_split_decoding_scored_once_with_merged_timing_and_cut_languages(tmp_path):
    """`toolkit score --timing job1 job2 --cuts`: what the recipes run after a decoding split into jobs."""
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut, dummy_supervision

    from toolkit.cli import main
    from toolkit.score.timing import Timing

    cuts = []
    for i, lang in enumerate(["de", "de", "fr"]):
        c = dummy_cut(i, supervisions=[dummy_supervision(i)])
        c.supervisions[0].language = lang
        cuts.append(c)
    CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl.gz")
    ids = [c.id for c in cuts]
    (tmp_path / "ref").write_text(f"{ids[0]} a b\n{ids[1]} c d\n{ids[2]} e f\n", encoding="utf-8")
    (tmp_path / "hyp").write_text(f"{ids[0]} a b\n{ids[1]} c x\n{ids[2]} e\n", encoding="utf-8")
    jobs = []
    for j, part in enumerate([ids[:2], ids[2:]]):
        t = Timing("hlg")
        for k in part:
            t.add(k, duration=2.0, forward=0.1, search=0.3)
        t.write(tmp_path / f"timing.{j}.txt")
        jobs.append(str(tmp_path / f"timing.{j}.txt"))
    out = tmp_path / "hlg"
    assert main(["score", "--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "hyp"), "--out-dir", str(out),
                 "--key", "hlg", "--cuts", str(tmp_path / "cuts.jsonl.gz"), "--timing", *jobs]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["rtf"] == pytest.approx(3 * 0.4 / 6.0)  # (forward + search) / audio over both jobs
    assert res["timing"]["audio_seconds"] == pytest.approx(6.0)
    assert res["by_language"]["de"]["wer"]["err"] == 1 and res["by_language"]["fr"]["wer"]["err"] == 1
    assert Timing.read([out / "timing.txt"]).utts.keys() == set(ids)
    with pytest.raises(ToolkitError, match="timed twice"):
        Timing.read([jobs[0], jobs[0]])
    (tmp_path / "bad.txt").write_text("x\t1.0\n", encoding="utf-8")
    with pytest.raises(ToolkitError, match="bad.txt:1: expected"):
        Timing.read([tmp_path / "bad.txt"])


def test_score_cli_refuses_hypotheses_of_another_set(tmp_path):
    ref = write_kaldi(tmp_path / "ref", {"a1": "x y", "a2": "z"})
    hyp = write_kaldi(tmp_path / "hyp", {"b1": "x y", "b2": "z"})
    for extra in ([], ["--allow-missing"]):
        proc = run_cli("score", "--ref", str(ref), "--hyp", str(hyp), *extra)
        assert proc.returncode == 1
        assert "no hypothesis id matches a reference id (2 references, e.g. 'a1'; hypotheses e.g. 'b1')" in proc.stderr
        assert proc.stderr.count("\n") == 1


def test_score_decode_dirs_equals_scoring_the_whole_set(tmp_path):
    """The jobs of a split decoding, scored together, give the numbers of one job over the whole set."""
    from toolkit.score import write_reports
    from toolkit.score.timing import Timing

    refs, hyps = random_pairs(30, seed=5)
    ids = sorted(refs)
    jobs = [ids[:11], ids[11:20], ids[20:]]
    for j, part in enumerate(jobs, start=1):
        d = tmp_path / f"split/{j}"
        t = Timing("m")
        for u in part:
            t.add(u, 2.0, 0.1, 0.05)
        lm = {"lm_scale": 1.5, "word_penalty": 0.5, "tuned_on": "decode/dev/hlg/tuning.json"}
        oov = {"oov_rate": 100.0 * j / (10 * j), "oov_words": j, "words": 10 * j, "lexicon": "L/words.txt"}
        write_reports(d, {u: refs[u] for u in part}, {u: hyps[u] for u in part}, "m", timing=t.summary(),
                      extra={"lm": lm, "oov": oov})
        t.write(d / "timing.txt")
    proc = run_cli("score", "--decode-dirs", *[str(tmp_path / f"split/{j}") for j in (1, 2, 3)],
                   "--out-dir", str(tmp_path / "merged"), "--key", "m")
    assert proc.returncode == 0, proc.stderr
    whole = write_reports(tmp_path / "whole", refs, hyps, "m")
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["wer"] == json.loads((tmp_path / "whole" / "results.json").read_text())["wer"]
    assert merged["num_sentences"] == 30 and merged["wer"]["err"] == whole.wer.err
    assert merged["rtf"] == pytest.approx(0.15 / 2.0)
    # the jobs' LM setting carries over, their OOV counts add up
    assert merged["lm"] == lm and merged["oov"]["oov_words"] == 6 and merged["oov"]["words"] == 60
    assert merged["oov"]["oov_rate"] == pytest.approx(10.0)
    assert len([l for l in (tmp_path / "merged" / "timing.txt").read_text().splitlines() if not l.startswith("#")]) == 30
    # a job given twice is an error, not a double count
    proc = run_cli("score", "--decode-dirs", str(tmp_path / "split/1"), str(tmp_path / "split/1"),
                   "--out-dir", str(tmp_path / "twice"))
    assert proc.returncode == 1 and "decoded by another job too" in proc.stderr
    # jobs decoded with different LM settings cannot be one result
    data = json.loads((tmp_path / "split/2/results.json").read_text())
    data["lm"]["lm_scale"] = 0.7
    (tmp_path / "split/2/results.json").write_text(json.dumps(data))
    proc = run_cli("score", "--decode-dirs", *[str(tmp_path / f"split/{j}") for j in (1, 2, 3)],
                   "--out-dir", str(tmp_path / "mixed"))
    assert proc.returncode == 1 and "different LM settings" in proc.stderr and proc.stderr.count("\n") == 1


def test_results_compare_picks_the_best_method_of_the_first_experiment(tmp_path):
    from toolkit.score import write_reports

    refs = {"u1": "a b c d", "u2": "e f g h"}
    hyps = {  # (experiment, method) -> hypotheses; pretrained: hlg best; scratch: greedy best
        ("pre", "greedy"): {"u1": "a x c d", "u2": "e f x x"}, ("pre", "hlg"): {"u1": "a b c d", "u2": "e f g x"},
        ("scr", "greedy"): {"u1": "a b x d", "u2": "e f g h"}, ("scr", "hlg"): {"u1": "x x x x", "u2": "e f g h"},
    }
    for (exp, method), h in hyps.items():
        write_reports(tmp_path / exp / "decode" / "cv-it_test" / method, refs, h, method)
    out = tmp_path / "RESULTS.md"
    out.write_text("# earlier content\n")
    proc = run_cli("results", "--compare", f"pretrained={tmp_path / 'pre'}", f"scratch={tmp_path / 'scr'}",
                   "--test-set", "cv-it_test", "--out", str(out), "--append", "--title", "P vs S")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = parse_table(lines, "|method|WER pretrained (%)|WER scratch (%)|")
    # one-letter words: CER equals WER here; then the paired difference and how often pretrained wins
    assert [r[:6] for r in rows] == [["greedy", "37.50", "12.50", "37.50", "12.50", "2 / 2"],
                                     ["hlg", "12.50", "50.00", "12.50", "50.00", "2 / 2"]]
    assert rows[0][6].startswith("+25.00 (") and rows[1][6].startswith("-37.50 (")
    assert "Best method for pretrained on cv-it_test (lowest WER): hlg." in lines
    assert lines[-5:-1] == ["RESULT cer_pretrained=12.50", "RESULT cer_scratch=50.00",
                            "RESULT wer_pretrained=12.50", "RESULT wer_scratch=50.00"]
    assert lines[-1].startswith("RESULT p_pretrained_better_than_scratch=")
    # two utterances: pretrained's hlg wins every resample that draws u1 (3 in 4), loses u2 twice
    assert float(lines[-1].split("=")[1]) == pytest.approx(0.75, abs=0.02)
    assert any("too few utterances for a verdict (2, fewer than 20)" in l for l in lines)
    text = out.read_text()
    assert text.startswith("# earlier content\n\n## P vs S") and "|hlg|12.50|50.00|" in text
    proc = run_cli("results", "--compare", f"pretrained={tmp_path / 'pre'}", "--test-set", "cv-it_dev")
    assert proc.returncode == 1 and "no decode/cv-it_dev/<method>/results.json" in proc.stderr
    proc = run_cli("results", "--compare", f"pretrained={tmp_path / 'pre'}", "--test-set", "cv-it_test",
                   "--methods", "hlg-rescore")
    assert proc.returncode == 1 and "no results for method(s) hlg-rescore" in proc.stderr


def test_paired_bootstrap_matches_kaldialign_and_says_when_a_difference_is_clear(tmp_path):
    """The paired comparison against kaldialign's two-system bootstrap (Kaldi's compute-wer-bootci):
    the same probability of improvement within Monte Carlo error; a clear case is called clear."""
    import kaldialign

    from toolkit.score import write_reports
    from toolkit.score.compute import paired_bootstrap

    def systems(p_a: float, p_b: float) -> tuple[dict, dict, dict]:
        rng = random.Random(7)
        vocab = "a b c d e f g h".split()
        refs, hyps_a, hyps_b = {}, {}, {}
        for i in range(60):
            ref = [rng.choice(vocab) for _ in range(rng.randint(2, 9))]
            refs[f"u{i:02d}"] = " ".join(ref)
            for hyps, p in ((hyps_a, p_a), (hyps_b, p_b)):
                hyps[f"u{i:02d}"] = " ".join(w if rng.random() > p else rng.choice(vocab + ["z"]) for w in ref)
        return refs, hyps_a, hyps_b

    def words(hyps: dict, ids: list[str]) -> list[list[str]]:
        return [hyps[u].split() for u in ids]

    # two cases away from 0 and 1 (P about 0.4/0.5 and 0.95/0.04), where an unpaired bootstrap or
    # ties counted as wins would move the probabilities by more than the tolerance
    for p_a, p_b in ((0.13, 0.16), (0.14, 0.17)):
        refs, hyps_a, hyps_b = systems(p_a, p_b)
        pc = paired_bootstrap(refs, hyps_a, hyps_b)
        ids = sorted(refs)
        ref_w = [refs[u].split() for u in ids]
        k_a = kaldialign.bootstrap_wer_ci(ref_w, words(hyps_b, ids), words(hyps_a, ids), replications=10000, seed=3)
        k_b = kaldialign.bootstrap_wer_ci(ref_w, words(hyps_a, ids), words(hyps_b, ids), replications=10000, seed=3)
        assert 0.3 < pc.p_a_better < 0.97 and pc.p_b_better < 0.6
        assert pc.p_a_better == pytest.approx(k_a["p_s2_improv_over_s1"], abs=0.015)
        assert pc.p_b_better == pytest.approx(k_b["p_s2_improv_over_s1"], abs=0.015)
        # the point difference is the plain WER difference, inside its own interval
        errs = lambda h: sum(sum(r != x for r, x in kaldialign.align(refs[u].split(), h[u].split(), "*")) for u in ids)
        n_words = sum(len(r) for r in ref_w)
        assert pc.delta == pytest.approx(100 * (errs(hyps_a) - errs(hyps_b)) / n_words)
        assert pc.ci95[0] <= pc.delta <= pc.ci95[1]
    # a test set large enough that the resamples are drawn in chunks (memory bounded): same answer
    big = [{f"{u}-{k}": h[u] for u in h for k in range(40)} for h in (refs, hyps_a, hyps_b)]
    ids = sorted(big[0])
    k_big = kaldialign.bootstrap_wer_ci(words(big[0], ids), words(big[2], ids), words(big[1], ids), replications=10000)
    assert paired_bootstrap(*big).p_a_better == pytest.approx(k_big["p_s2_improv_over_s1"], abs=0.01)
    # identical systems: a zero difference and neither better
    same = paired_bootstrap(refs, hyps_a, hyps_a)
    assert same.delta == 0 and same.ci95 == (0.0, 0.0) and same.p_a_better == same.p_b_better == 0.0
    # A right everywhere, B wrong in every utterance: clearly better, and `results --compare` says so
    perfect = dict(refs)
    wrong = {u: "z " + r for u, r in refs.items()}
    assert paired_bootstrap(refs, perfect, wrong).p_a_better == 1.0
    for exp, h in (("a", perfect), ("b", wrong), ("c", hyps_b)):
        write_reports(tmp_path / exp / "decode" / "t" / "greedy", refs, h, "greedy")
    proc = run_cli("results", "--compare", f"good={tmp_path / 'a'}", f"bad={tmp_path / 'b'}", "--test-set", "t")
    assert proc.returncode == 0, proc.stderr
    assert "good is clearly better (P >= 0.975)" in proc.stdout and "RESULT p_good_better_than_bad=1.000" in proc.stdout
    proc = run_cli("results", "--compare", f"bad={tmp_path / 'b'}", f"good={tmp_path / 'a'}", "--test-set", "t")
    assert "good is clearly better (good better in 100.0% of them)" in proc.stdout
    # different references are not a paired comparison: one line naming both files
    del refs["u00"]
    write_reports(tmp_path / "d" / "decode" / "t" / "greedy", refs, {u: h for u, h in hyps_b.items() if u in refs}, "greedy")
    proc = run_cli("results", "--compare", f"c={tmp_path / 'c'}", f"d={tmp_path / 'd'}", "--test-set", "t")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "score different references (1 utterance(s) in one only, e.g. u00)" in proc.stderr
    assert str(tmp_path / "c") in proc.stderr and str(tmp_path / "d") in proc.stderr
