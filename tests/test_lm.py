"""n-gram estimation (modified Kneser-Ney), ARPA reading/writing/scoring, `toolkit lm train`.

References: a hand-computed bigram model, KenLM (`kenlm.Model`) loading our ARPA files,
normalisation of every distribution, and continuation counts recounted from the raw text.
"""
from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import kenlm
import pytest

from toolkit.lm.arpa import BOS, EOS, UNK, ArpaModel, read_arpa, validate_arpa, write_arpa
from toolkit.lm.kneser_ney import BOS_ID, adjusted_counts, compute_discounts, train_kneser_ney
from toolkit.utils import ToolkitError

REPO = Path(__file__).resolve().parents[1]
TOOLKIT = [sys.executable, "-m", "toolkit.cli"]


def make_corpus(n: int, seed: int = 0, vocab_size: int = 30) -> list[str]:
    """Zipf-like random sentences: enough repetition for real (non-fallback) discounts."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab_size)] + ["ёлка", "नमस्ते"]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(1, 9))) for _ in range(n)]


def histories(model: ArpaModel) -> list[tuple[str, ...]]:
    """Every history the model can be asked about: listed n-grams of order < N not ending in </s>."""
    hs = [()]
    for table in model.ngrams[:-1]:
        hs += [g for g in table if g[-1] != EOS]
    return hs


def assert_normalised(model: ArpaModel, tol: float = 1e-4) -> None:
    targets = [w for w in model.vocab if w != BOS]
    assert UNK in targets and EOS in targets
    for h in histories(model):
        total = sum(10 ** model.logprob(w, h) for w in targets)
        assert abs(total - 1.0) < tol, (h, total)


# ---------------------------------------------------------------------------------------


def test_hand_computed_bigram():
    # Sentences "<s> a b </s>", "<s> a </s>"; all count-of-counts lack n3 -> D = (0.5, 1, 1.5).
    # Unigram continuation counts a=1, b=1, </s>=2 (S=4, gamma=(.5*2+1*1)/4=.5, |V|=4 incl. <unk>):
    #   p(a)=.5/4+.5/4=.25, p(b)=.25, p(</s>)=1/4+.5/4=.375, p(<unk>)=.125.
    # Bigrams: p(a|<s>)=(2-1)/2+.5*.25=.625; p(b|a)=.5/2+.5*.25=.375; p(</s>|a)=.25+.5*.375=.4375;
    #   p(</s>|b)=.5/1+.5*.375=.6875; gamma(<s>)=gamma(a)=gamma(b)=.5.
    model, info = train_kneser_ney(["a b", "a"], order=2)
    assert info.fallback_orders == [1, 2]
    expect_uni = {"a": 0.25, "b": 0.25, EOS: 0.375, UNK: 0.125}
    for w, p in expect_uni.items():
        assert 10 ** model.ngrams[0][(w,)][0] == pytest.approx(p, abs=1e-12)
    expect_bi = {(BOS, "a"): 0.625, ("a", "b"): 0.375, ("a", EOS): 0.4375, ("b", EOS): 0.6875}
    assert set(model.ngrams[1]) == set(expect_bi)
    for g, p in expect_bi.items():
        assert 10 ** model.ngrams[1][g][0] == pytest.approx(p, abs=1e-12)
    for w in (BOS, "a", "b"):
        assert 10 ** model.ngrams[0][(w,)][1] == pytest.approx(0.5)
    assert 10 ** model.score("a b") == pytest.approx(0.625 * 0.375 * 0.6875)
    # Unseen bigram "b a": back-off 0.5 * p(a); OOV word scores as <unk>.
    assert 10 ** model.logprob("a", ["b"]) == pytest.approx(0.5 * 0.25)
    assert 10 ** model.logprob("zzz", ["a"]) == pytest.approx(0.5 * 0.125)


def test_continuation_counts_match_raw_text():
    corpus = make_corpus(200, seed=1)
    vocab: dict[str, int] = {BOS: 0, "</s>": 1, UNK: 2}
    ids = [[vocab.setdefault(w, len(vocab)) for w in s.split()] for s in corpus]
    counts = adjusted_counts(ids, 3)
    # Independent recount: left contexts of each bigram/unigram, raw counts of <s>-initial ones.
    left: dict[tuple, set] = defaultdict(set)
    raw: dict[tuple, int] = defaultdict(int)
    for s in ids:
        padded = [BOS_ID, *s, 1]
        for n in (1, 2):
            for i in range(1, len(padded) - n + 1):
                left[tuple(padded[i:i + n])].add(padded[i - 1])
        raw[tuple(padded[:2])] += 1
    for n in (1, 2):
        for g, c in counts[n - 1].items():
            expect = raw[g] if g[0] == BOS_ID else len(left[g])
            assert c == expect, g
    assert sum(1 for g in counts[1] if g[0] != BOS_ID) == sum(1 for g in left if len(g) == 2)


def test_discounts_from_count_of_counts():
    model, info = train_kneser_ney(make_corpus(3000, seed=2, vocab_size=500), order=3)
    assert info.fallback_orders == []
    for d1, d2, d3 in info.discounts:
        assert 0 < d1 < 1 and 0 < d2 < 2 and 0 < d3 < 3
    # Hand check of the formula on a toy table: n1=4, n2=2, n3=1, n4=1.
    from collections import Counter

    table = Counter({("a",): 1, ("b",): 1, ("c",): 1, ("d",): 1, ("e",): 2, ("f",): 2, ("g",): 3, ("h",): 4, ("i",): 9})
    (d1, d2, d3), fell = compute_discounts(table)
    y = 4 / (4 + 2 * 2)
    assert not fell
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 2 / 4, 2 - 3 * y * 1 / 2, 3 - 4 * y * 1 / 1))


@pytest.mark.parametrize("order", [2, 3, 4])
def test_distributions_sum_to_one(order):
    model, _ = train_kneser_ney(make_corpus(300, seed=order), order=order)
    assert_normalised(model)


def test_pruned_model_still_normalised_and_smaller():
    corpus = make_corpus(400, seed=5)
    full, _ = train_kneser_ney(corpus, order=3)
    pruned, _ = train_kneser_ney(corpus, order=3, prune=[0, 1, 1])
    assert len(pruned.ngrams[2]) < len(full.ngrams[2]) and len(pruned.ngrams[1]) < len(full.ngrams[1])
    assert pruned.ngrams[0].keys() == full.ngrams[0].keys()
    # Every kept n-gram's suffix and prefix are kept (a valid back-off model).
    for k in (1, 2):
        for g in pruned.ngrams[k]:
            assert g[1:] in pruned.ngrams[k - 1] and g[:-1] in pruned.ngrams[k - 1]
    # lmplz semantics: n-grams occurring more than once in the text stay; those seen once stay
    # only as the prefix or suffix of a kept trigram. Occurrences recounted from the text.
    occ: dict[tuple, int] = defaultdict(int)
    for s in corpus:
        padded = [BOS, *s.split(), EOS]
        for n in (2, 3):
            for i in range(len(padded) - n + 1):
                occ[tuple(padded[i:i + n])] += 1
    trigram_parts = {g[1:] for g in pruned.ngrams[2]} | {g[:-1] for g in pruned.ngrams[2]}
    for k in (1, 2):
        for g in full.ngrams[k]:
            if occ[g] > 1:
                assert g in pruned.ngrams[k], g
            elif g in pruned.ngrams[k]:
                assert k == 1 and g in trigram_parts, g
    assert_normalised(pruned)


@pytest.mark.parametrize("order,prune", [(2, None), (3, None), (4, None), (3, [0, 1, 2])])
def test_kenlm_agrees_with_our_scorer(tmp_path, order, prune):
    corpus = make_corpus(500, seed=10 + order)
    model, _ = train_kneser_ney(corpus, order=order, prune=prune)
    arpa = tmp_path / "lm.arpa"
    write_arpa(model, arpa)
    ours = read_arpa(arpa)
    ken = kenlm.Model(str(arpa))
    tests = make_corpus(60, seed=99) + ["w0 oov_word w1", "ёлка нет नमस्ते", "w3"]
    for s in tests:
        assert ours.score(s) == pytest.approx(ken.score(s, bos=True, eos=True), abs=1e-4), s
        assert ours.score(s, bos=False, eos=False) == pytest.approx(ken.score(s, bos=False, eos=False), abs=1e-4)
    assert ken.order == order


@pytest.mark.skipif(shutil.which("lmplz") is None, reason="KenLM's lmplz is not on PATH (local/install.sh builds it)")
@pytest.mark.parametrize("order,prune", [(2, None), (3, None), (4, None), (3, ["0", "1", "1"]), (4, ["0", "0", "1"])])
def test_lmplz_and_the_toolkit_estimator_agree_per_ngram(tmp_path, order, prune):
    """Both engines of `toolkit lm train` on the same text give the same n-grams, each log10
    probability and back-off within 1e-4 (pruned too). The one difference is <s>'s unigram
    probability, a placeholder no query uses (lmplz writes 0, the toolkit SRILM's -99)."""
    text = tmp_path / "text.txt"
    text.write_text("\n".join(make_corpus(3000, seed=order, vocab_size=300)) + "\n", encoding="utf-8")
    models = {}
    for engine in ("lmplz", "toolkit"):
        out = tmp_path / f"{engine}.arpa.gz"
        proc = run_cli("lm", "train", "--order", str(order), "--text", str(text), "--out", str(out), "--engine", engine,
                       *(["--prune", *prune] if prune else []))
        assert proc.returncode == 0, proc.stderr
        models[engine] = read_arpa(out)
    ken, ours = models["lmplz"], models["toolkit"]
    assert ours.order == ken.order == order
    for k in range(order):
        assert ours.ngrams[k].keys() == ken.ngrams[k].keys(), k + 1
        for g, (p, b) in ken.ngrams[k].items():
            if g != (BOS,):
                assert ours.ngrams[k][g][0] == pytest.approx(p, abs=1e-4), g
            assert ours.ngrams[k][g][1] == pytest.approx(b, abs=1e-4), g
    if prune:
        assert len(ours.ngrams[-1]) < sum(1 for _ in make_corpus(3000, seed=order, vocab_size=300))


def test_arpa_roundtrip_gzip(tmp_path):
    model, _ = train_kneser_ney(make_corpus(100), order=3)
    write_arpa(model, tmp_path / "lm.arpa.gz")
    back = read_arpa(tmp_path / "lm.arpa.gz")
    assert back.order == 3
    for table, table_back in zip(model.ngrams, back.ngrams):
        assert table.keys() == table_back.keys()
        for g, (p, b) in table.items():
            assert table_back[g][0] == pytest.approx(p, abs=1e-6)
            if g[-1] != EOS and len(g) < 3:
                assert table_back[g][1] == pytest.approx(b, abs=1e-6)
    assert validate_arpa(tmp_path / "lm.arpa.gz") == [len(t) for t in model.ngrams]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


GOOD = "\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-1.0\t<s>\t-0.3\n-0.5\ta\t-0.2\n-0.4\t</s>\n\n\\2-grams:\n-0.1\t<s> a\n\n\\end\\\n"


@pytest.mark.parametrize("text,line,what", [
    (GOOD.replace("\\data\\", "\\dat\\"), 1, "no \\data\\ header"),
    (GOOD.replace("ngram 1=3", "ngram 1=4"), 10, "has 3 entries"),
    (GOOD.replace("-0.5\ta", "x\ta"), 7, "non-numeric"),
    (GOOD.replace("-0.1\t<s> a", "-0.1\t<s>"), 11, "fields"),
    (GOOD.replace("\\end\\\n", ""), 12, "truncated"),
    (GOOD.replace("\\2-grams:", "\\3-grams:"), 10, "section marker"),
    (GOOD.replace("-0.5\ta", "0.7\ta"), 7, "not <= 0"),
])
def test_arpa_reader_rejects_corruption(tmp_path, text, line, what):
    path = tmp_path / "bad.arpa"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ToolkitError) as e:
        read_arpa(path)
    msg = str(e.value)
    assert f"{path}:{line}:" in msg and what in msg and "\n" not in msg


def test_an_ngram_listed_twice_is_refused_and_hash_collisions_are_not(tmp_path, monkeypatch):
    """A copied n-gram whose header count includes it passed every check: the reader kept the
    last entry, the graph compiler both. validate_arpa keeps hashes only; with every n-gram hashing
    alike its second pass must still tell a collision from a copy."""
    import toolkit.lm.arpa as arpa_module

    dup = tmp_path / "dup.arpa"
    dup.write_text(GOOD.replace("ngram 2=1", "ngram 2=2").replace("-0.1\t<s> a\n", "-0.1\t<s> a\n-0.7\t<s> a\n"))
    for reader in (read_arpa, validate_arpa):
        with pytest.raises(ToolkitError) as e:
            reader(dup)
        msg = str(e.value)
        assert msg.startswith(f"{dup}: the 2-gram '<s> a' is listed twice") and "\n" not in msg
    good = tmp_path / "good.arpa"
    good.write_text(GOOD)
    monkeypatch.setattr(arpa_module, "_ngram_hash", lambda ngram: 7)
    assert validate_arpa(good) == [3, 1]
    with pytest.raises(ToolkitError, match="listed twice"):
        validate_arpa(dup)


def test_arpa_reader_accepts_external_file(tmp_path):
    path = tmp_path / "ext.arpa"
    path.write_text("some preamble is not allowed\n", encoding="utf-8")
    with pytest.raises(ToolkitError):
        read_arpa(path)
    path.write_text("# a comment header, as some tools write\n" + GOOD, encoding="utf-8")
    model = read_arpa(path)
    assert model.ngrams[1][(BOS, "a")] == (-0.1, 0.0)
    assert model.logprob("a", [BOS]) == pytest.approx(-0.1)
    assert model.logprob(EOS, ["a"]) == pytest.approx(-0.2 + -0.4)
    assert model.score("a") == pytest.approx(kenlm.Model(str(path)).score("a"), abs=1e-6)
    with pytest.raises(ToolkitError, match="not found"):
        read_arpa(tmp_path / "missing.arpa")


# ---------------------------------------------------------------------------------------
# CLI


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOLKIT, *args], capture_output=True, text=True, cwd=REPO, env=env)


def _env_without_lmplz(extra_path: str | None = None) -> dict:
    env = dict(os.environ)
    dirs = [d for d in env.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "lmplz").exists()]
    env["PATH"] = os.pathsep.join(([extra_path] if extra_path else []) + dirs)
    return env


def test_cli_train_toolkit_engine(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(make_corpus(2000, seed=3)) + "\n", encoding="utf-8")
    out = tmp_path / "lm" / "lm.arpa"
    proc = run_cli("lm", "train", "--order", "3", "--text", str(text), "--out", str(out), env=_env_without_lmplz())
    assert proc.returncode == 0, proc.stderr
    assert "toolkit estimator" in proc.stderr
    ken = kenlm.Model(str(out))
    ours = read_arpa(out)
    for s in make_corpus(20, seed=4):
        assert ours.score(s) == pytest.approx(ken.score(s), abs=1e-4)


@pytest.mark.parametrize("args,msg", [
    (["--order", "3", "--text", "MISSING"], "--text MISSING: file not found"),
    (["--order", "0", "--text", "TEXT"], "--order 0"),
    (["--order", "3", "--text", "TEXT", "--prune", "0", "2", "1"], "non-decreasing"),
    (["--order", "3", "--text", "EMPTY"], "no sentences"),
    (["--order", "3", "--text", "MARKERS"], "MARKERS:2: contains <s>; the LM text holds words only"),
    (["--order", "3", "--text", "UNK"], "UNK:2: contains <UNK>; the LM text holds words only"),  # was a word "unk"
    # a traceback (math domain error), or an ARPA with positive log-probs left on disk
    (["--order", "3", "--text", "TEXT", "--discount-fallback", "0", "0", "0"], "need 0 < D1 < 1"),
    (["--order", "3", "--text", "TEXT", "--discount-fallback", "3", "3", "3"], "--discount-fallback 3 3 3"),
])
def test_cli_train_errors(tmp_path, args, msg):
    files = {"TEXT": "a b\n", "EMPTY": "\n  \n", "MARKERS": "a\n<s> a\n", "UNK": "a b\nthe <UNK> sat\n"}
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    args = [str(tmp_path / a) if a in files else a for a in args]
    msg = msg.replace("MARKERS", str(tmp_path / "MARKERS")).replace("UNK:", f"{tmp_path / 'UNK'}:")
    proc = run_cli("lm", "train", *args, "--out", str(tmp_path / "o.arpa"), env=_env_without_lmplz())
    assert proc.returncode == 1
    assert msg in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "o.arpa").exists()


def test_train_names_orders_that_pruning_emptied(tmp_path):
    """An ARPA whose header announces order 3 with no 2- and 3-grams left was logged as "order 1",
    and nothing said the LM had become a unigram model."""
    (tmp_path / "t.txt").write_text("".join(f"a b c d e {i}\n" for i in range(30)), encoding="utf-8")
    proc = run_cli("lm", "train", "--order", "3", "--text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "p.arpa"),
                   "--prune", "0", "100000", "100000", env=_env_without_lmplz())
    assert proc.returncode == 0, proc.stderr
    assert "order 3, n-grams per order [38, 0, 0]" in proc.stderr
    assert "no 2/3-grams left" in proc.stderr and "works as order 1" in proc.stderr
    assert kenlm.Model(str(tmp_path / "p.arpa")).order == 3


def test_lm_text_refuses_an_unknown_word_marker(tmp_path):
    (tmp_path / "extra.txt").write_text("the cat sat\na <unk> sat on the mat\n", encoding="utf-8")
    proc = run_cli("lm", "text", "--language", "en", "--text", str(tmp_path / "extra.txt"), "--out", str(tmp_path / "t.txt"))
    assert proc.returncode == 1 and f"--text {tmp_path / 'extra.txt'}:2: contains <unk>" in proc.stderr
    assert not (tmp_path / "t.txt").exists()


def test_cli_uses_lmplz_above_the_threshold(tmp_path):
    # A stand-in lmplz that records its arguments and the text it was given, and writes a valid
    # ARPA where --arpa says.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "lmplz"
    fake.write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" > {tmp_path}/argv\n"
        "while [ $# -gt 0 ]; do if [ \"$1\" = --arpa ]; then out=$2; fi; "
        f"if [ \"$1\" = --text ]; then cp \"$2\" {tmp_path}/text_seen; fi; shift; done\n"
        f"cat {tmp_path}/good.arpa > \"$out\"\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "good.arpa").write_text(GOOD, encoding="utf-8")
    text = tmp_path / "text.txt"
    text.write_text("A B, c!\n\nD'ARTAGNAN said\n", encoding="utf-8")
    out = tmp_path / "lm.arpa"
    env = _env_without_lmplz(str(bindir))
    proc = run_cli("lm", "train", "--order", "4", "--text", str(text), "--out", str(out), "--prune", "0", "1",
                   "--lmplz-above", "3", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "estimator: lmplz" in proc.stderr
    argv = (tmp_path / "argv").read_text().split()
    assert argv[argv.index("-o") + 1] == "4"
    assert argv[argv.index("--prune") + 1: argv.index("--prune") + 3] == ["0", "1"]
    # lmplz reads the normalised text (as the transcripts are normalised), blank lines left out
    assert (tmp_path / "text_seen").read_text(encoding="utf-8") == "a b c\nd'artagnan said\n"
    assert out.read_text(encoding="utf-8") == GOOD
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lm_train")]  # temp dir removed
    # at or below the threshold (5 words), auto takes the toolkit's estimator; so does --engine toolkit
    for extra in (["--lmplz-above", "5"], ["--engine", "toolkit", "--lmplz-above", "0"]):
        (tmp_path / "argv").unlink(missing_ok=True)
        proc = run_cli("lm", "train", "--order", "2", "--text", str(text), "--out", str(tmp_path / "t.arpa"),
                       *extra, env=env)
        assert proc.returncode == 0 and "toolkit estimator" in proc.stderr, proc.stderr
        assert not (tmp_path / "argv").exists()
        assert set(read_arpa(tmp_path / "t.arpa").vocab) == {"<s>", "</s>", "<unk>", "a", "b", "c", "d'artagnan", "said"}
    # above the threshold without lmplz: one line saying what to do, nothing written
    proc = run_cli("lm", "train", "--order", "2", "--text", str(text), "--out", str(tmp_path / "n.arpa"),
                   "--lmplz-above", "1", env=_env_without_lmplz())
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    assert "more than --lmplz-above 1" in proc.stderr and "local/install.sh" in proc.stderr
    assert not (tmp_path / "n.arpa").exists()


def test_cli_perplexity_matches_kenlm(tmp_path):
    model, _ = train_kneser_ney(make_corpus(300, seed=8), order=3)
    arpa = tmp_path / "lm.arpa"
    write_arpa(model, arpa)
    dev = make_corpus(40, seed=9) + ["unseen words here"]
    (tmp_path / "dev.txt").write_text("\n".join(dev) + "\n", encoding="utf-8")
    proc = run_cli("lm", "perplexity", "--lm", str(arpa), "--text", str(tmp_path / "dev.txt"))
    assert proc.returncode == 0, proc.stderr
    ken = kenlm.Model(str(arpa))
    expect = 10 ** (-sum(ken.score(s) for s in dev) / sum(len(s.split()) + 1 for s in dev))
    reported = float(proc.stdout.rsplit("perplexity", 1)[1])
    assert reported == pytest.approx(expect, rel=1e-3)
    assert " 3 OOVs" in proc.stdout
    # the same in UPPER case, text and LM (as openslr's): normalised, the same perplexity
    upper = tmp_path / "UPPER.arpa"
    upper.write_text("\n".join("\t".join([p[0], p[1].upper() if p[1] not in ("<s>", "</s>", "<unk>") else p[1], *p[2:]])
                               if len(p := line.split("\t")) >= 2 else line
                               for line in arpa.read_text(encoding="utf-8").splitlines()) + "\n", encoding="utf-8")
    (tmp_path / "DEV.txt").write_text("\n".join(s.upper() + "." for s in dev) + "\n", encoding="utf-8")
    proc = run_cli("lm", "perplexity", "--lm", str(upper), "--text", str(tmp_path / "DEV.txt"), "--language", "en")
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.rsplit("perplexity", 1)[1]) == pytest.approx(reported, rel=1e-6)
