"""External LMs, lexicons and LM text (openslr's LibriSpeech files, Common Voice sentence files):
words normalised like the transcripts, the coverage check, open vocabulary.

The openslr-format files are written here by hand, in the formats openslr ships: UPPER-case
ARPA (gzipped) and `WORD<TAB>PH PH ...` lexicon lines. References: KenLM reading the files,
the lower-case twin of each file, kaldialign/jiwer through toolkit.score.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import kenlm
import numpy as np
import pytest

from graph_fixtures import ctc_frames, spell_ids
from test_lang_dir import write_cuts
from toolkit.cli import main
from toolkit.decode.options import SearchOptions
from toolkit.decode.wfst import decode_matrices
from toolkit.lm.arpa import read_arpa, write_arpa
from toolkit.lm.graph import Lang
from toolkit.lm.kneser_ney import train_kneser_ney
from toolkit.lm.vocab import normalize_arpa
from toolkit.score import score_pairs

TRAIN = ["the cat sat on the mat", "a dog sat on a log", "the dog saw a cat", "cats and dogs", "on the log"]
LM_TEXT = TRAIN + ["the cat saw the dog on the mat", "a cat and a dog", "dogs saw cats on a mat", "the mat"]
TEST = ["the dog sat on the mat", "a cat saw the log", "cats and dogs sat"]


def upper_twin(src: Path, dst: Path, unk: str = "<UNK>") -> Path:
    """The ARPA file with every word UPPER-case, as openslr's LibriSpeech LMs, gzipped."""
    text = src.read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        p = line.split("\t")
        if len(p) >= 2:
            p[1] = " ".join(unk if w == "<unk>" else w if w in ("<s>", "</s>") else w.upper() for w in p[1].split())
        out.append("\t".join(p))
    with gzip.open(dst, "wt", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return dst


def openslr_lexicon(path: Path, words: list[str]) -> Path:
    """librispeech-lexicon.txt style: UPPER-case word, a tab, phones."""
    path.write_text("".join(f"{w.upper()}\t{' '.join('AH' for _ in w)}\n" for w in words), encoding="utf-8")
    return path


def decode_words(lang_dir: Path, mats: list[np.ndarray]) -> list[str]:
    lg = Lang.load(lang_dir)
    out = decode_matrices(mats, "hlg", lang_dir / "HLG.fst", SearchOptions(), backoff_id=lg.words["#0"])
    return [" ".join(lg.words_of(ids)) for ids, _ in out]


def test_upper_case_openslr_lm_and_lexicon_give_the_hlg_of_their_lower_case_twin(tmp_path):
    cuts = write_cuts(tmp_path / "train.jsonl.gz", [("en", t) for t in TRAIN])
    lm_words = sorted({w for s in LM_TEXT for w in s.split()})
    model, _ = train_kneser_ney(LM_TEXT, order=3)
    write_arpa(model, tmp_path / "lower.arpa")
    upper = upper_twin(tmp_path / "lower.arpa", tmp_path / "3-gram.arpa.gz")
    assert kenlm.Model(str(upper)).order == 3  # the file KenLM reads, as openslr's
    (tmp_path / "words.txt").write_text("\n".join(lm_words) + "\n", encoding="utf-8")
    lexicon = openslr_lexicon(tmp_path / "librispeech-lexicon.txt", lm_words)

    lower_dir, upper_dir = tmp_path / "lang_lower", tmp_path / "lang_upper"
    assert main(["lang-dir", "--type", "char", "--cuts", str(cuts), "--lexicon", str(tmp_path / "words.txt"),
                 "--out", str(lower_dir)]) == 0
    assert main(["lang-dir", "--type", "char", "--cuts", str(cuts), "--lexicon", str(lexicon), "--out", str(upper_dir)]) == 0
    for f in ("tokens.txt", "words.txt", "lexicon.txt"):  # the external lexicon's words, lower-cased
        assert (lower_dir / f).read_text() == (upper_dir / f).read_text(), f
    assert "saw" in (upper_dir / "words.txt").read_text().split()  # not in training, from the lexicon

    assert main(["compile-graph", "--lang-dir", str(lower_dir), "--lm", str(tmp_path / "lower.arpa")]) == 0
    assert main(["compile-graph", "--lang-dir", str(upper_dir), "--lm", str(upper)]) == 0
    lg = Lang.load(upper_dir)
    mats = [ctc_frames(spell_ids(upper_dir, s), lg.num_tokens, seed=i, noise=1.0, peak=4.0) for i, s in enumerate(TEST)]
    hyp_lower, hyp_upper = decode_words(lower_dir, mats), decode_words(upper_dir, mats)
    assert hyp_upper == hyp_lower and all(hyp_upper)
    refs = {str(i): s for i, s in enumerate(TEST)}
    wer_upper = score_pairs(refs, {str(i): h for i, h in enumerate(hyp_upper)})
    wer_lower = score_pairs(refs, {str(i): h for i, h in enumerate(hyp_lower)})
    assert wer_upper.wer.err == wer_lower.wer.err and wer_upper.wer.rate < 20.0
    # the G of the UPPER-case LM is the G of its twin: every state and arc
    g_lower, g_upper = (d / "G_3.fst" for d in (lower_dir, upper_dir))
    import kaldifst

    a, b = kaldifst.StdVectorFst.read(str(g_lower)), kaldifst.StdVectorFst.read(str(g_upper))
    assert (a.num_states, a.to_str()) == (b.num_states, b.to_str())


def test_normalize_arpa_merges_case_variants_and_drops_non_words(tmp_path):
    src = tmp_path / "mixed.arpa"
    src.write_text("\\data\\\nngram 1=7\nngram 2=4\n\n\\1-grams:\n"
                   "-1.0\t<s>\t-0.3\n-0.7\t</s>\n-1.2\tThe\t-0.2\n-0.9\tTHE\t-0.1\n-1.5\tCAT\t-0.2\n"
                   "-2.0\t<NOISE>\t-0.1\n-2.5\t<UNK>\n\n\\2-grams:\n"
                   "-0.6\t<s> The\n-0.9\t<s> THE\n-0.4\tTHE CAT\n-0.6\t<NOISE> CAT\n\n\\end\\\n", encoding="utf-8")
    info = normalize_arpa(src, tmp_path / "out.arpa", "en")
    out = read_arpa(tmp_path / "out.arpa")
    assert set(out.vocab) == {"<s>", "</s>", "the", "cat", "<unk>"}
    assert info.dropped_words == ["<NOISE>"] and info.dropped_ngrams == 2 and info.merged_ngrams == 2
    # probabilities of merged events add up; the likelier one's back-off is kept
    assert out.ngrams[0][("the",)][0] == pytest.approx(math.log10(10 ** -1.2 + 10 ** -0.9), abs=1e-6)
    assert out.ngrams[0][("the",)][1] == pytest.approx(-0.1)
    assert out.ngrams[1][("<s>", "the")][0] == pytest.approx(math.log10(10 ** -0.6 + 10 ** -0.9), abs=1e-6)
    assert ("<noise>", "cat") not in out.ngrams[1] and out.ngrams[1][("the", "cat")][0] == pytest.approx(-0.4)
    ken = kenlm.Model(str(tmp_path / "out.arpa"))  # a valid ARPA file for KenLM too
    assert ken.score("the cat", bos=True, eos=True) == pytest.approx(out.score("the cat"), abs=1e-4)


def test_a_cased_lm_merged_by_normalisation_stays_a_distribution(tmp_path):
    """A true-cased LM (`The` at sentence starts, `the` inside): after normalisation every history's
    probabilities, read back by KenLM, sum to one; adding the two histories' distributions gave ~2."""
    text = ["The cat sat on the mat", "The dog sat on the log", "the cat saw the dog", "The mat is on the log",
            "a dog saw the cat", "The log is red"] * 3
    model, _ = train_kneser_ney(text, 3)
    write_arpa(model, tmp_path / "cased.arpa")
    info = normalize_arpa(tmp_path / "cased.arpa", tmp_path / "out.arpa", "en")
    assert info.collisions == {"the": ["The", "the"]} and info.history_dropped > 0
    assert "n-grams after a less likely original dropped" in info.summary()
    ken = kenlm.Model(str(tmp_path / "out.arpa"))
    vocab = sorted({w for s in text for w in s.lower().split()})
    for history in ["the", "on the", "saw the", "the cat"]:
        base = ken.score(history, bos=True, eos=False)
        total = sum(10 ** (ken.score(f"{history} {w}", bos=True, eos=False) - base) for w in vocab)
        total += 10 ** (ken.score(history, bos=True, eos=True) - base)  # </s>
        assert total == pytest.approx(1.0, abs=0.02), history


@pytest.mark.parametrize("damage", ["crlf", "bom", "bom+crlf"])
def test_an_arpa_with_crlf_or_a_byte_order_mark_gives_the_g_of_its_plain_twin(tmp_path, damage):
    """kaldilm reads the file as it is: with CRLF, every n-gram without a back-off ended in a word
    "cat\r" unknown to words.txt and was skipped (a rescoring G without final states, no warning)."""
    from graph_fixtures import char_lang

    from toolkit.lm.graph import build_grammar_fst

    text = ["the cat sat on the mat", "a dog sat on the log", "the cat saw a dog"] * 2
    lang = char_lang(tmp_path / "lang", sorted({w for s in text for w in s.split()}))
    model, _ = train_kneser_ney(text, 3)
    write_arpa(model, tmp_path / "plain.arpa")
    raw = (tmp_path / "plain.arpa").read_bytes().lstrip(b"\n")  # the mark right before \\data\\
    damaged = (b"\xef\xbb\xbf" if "bom" in damage else b"") + (raw.replace(b"\n", b"\r\n") if "crlf" in damage else raw)
    (tmp_path / "damaged.arpa").write_bytes(damaged)
    plain = build_grammar_fst(tmp_path / "plain.arpa", lang / "words.txt")
    other = build_grammar_fst(tmp_path / "damaged.arpa", lang / "words.txt")
    assert other.num_states == plain.num_states and other.to_str() == plain.to_str()


@pytest.mark.parametrize("case", ["case", "language", "wrong file"])
def test_lm_covering_almost_nothing_is_a_one_line_error(tmp_path, capsys, case):
    from graph_fixtures import char_lang

    words = ["cat", "dog", "mat", "log"]
    lang = char_lang(tmp_path / "lang", [w.upper() for w in words] if case == "case" else words)
    lm_words = {"case": words, "language": ["кот", "пёс", "мат", "лог"], "wrong file": ["alpha", "beta", "cat"]}[case]
    from graph_fixtures import write_arpa as hand_arpa

    p = math.log10(1 / (len(lm_words) + 1))
    hand_arpa(tmp_path / "lm.arpa", {"<s>": (-99.0, None), "</s>": (p, None), **{w: (p, None) for w in lm_words}})
    (tmp_path / "dev.txt").write_text("cat dog\nmat zebra\n", encoding="utf-8")
    rc = main(["compile-graph", "--lang-dir", str(lang), "--lm", str(tmp_path / "lm.arpa"), "--dev-text",
               str(tmp_path / "dev.txt")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    share = {"case": "0.0%", "language": "0.0%", "wrong file": "25.0%"}[case]
    assert f"the LM has {share} of the 4 lexicon words" in err and "--min-coverage 50%" in err
    dev_oov = "100.00%" if case == "case" else "25.00%"  # against the lexicon: upper-case lexicon knows no dev word
    assert f"dev OOV rate against the lexicon {dev_oov} of 4 words" in err
    assert f"likely cause: {case}" in err
    assert not (lang / "HLG.fst").exists() and not list(lang.glob("G_*.fst"))
    if case == "wrong file":  # the threshold is an option
        assert main(["compile-graph", "--lang-dir", str(lang), "--lm", str(tmp_path / "lm.arpa"),
                     "--min-coverage", "0.2"]) == 0


def test_word_absent_from_training_is_recognised_through_external_lm_text(tmp_path):
    """Common Voice-like open vocabulary: 'mat' and 'log' are in no training transcript, only in the
    corpus's sentence file; the LM text and the lexicon spelled from characters make them decodable."""
    train = ["the cat sat", "a dog sat on a cat", "the dog on the cat", "a cat and a dog", "a mole"]
    assert not {"mat", "log"} & {w for s in train for w in s.split()}
    cuts = write_cuts(tmp_path / "train.jsonl.gz", [("en", t) for t in train])
    dev = write_cuts(tmp_path / "dev.jsonl.gz", [("en", "the cat on the mat")])
    cv = tmp_path / "cv" / "en"
    cv.mkdir(parents=True)
    (cv / "validated_sentences.tsv").write_text(
        "sentence_id\tsentence\tsentence_domain\tsource\tis_used\tclips_count\n"
        + "".join(f"{i}\t{s}\t\tsynthetic\t1\t0\n" for i, s in enumerate(
            ["The dog sat on the MAT.", "A cat on a log!", "The cat on the mat", "the log and the mat"])),
        encoding="utf-8")
    text = tmp_path / "lm" / "text.txt"
    assert main(["lm", "text", "--language", "en", "--commonvoice-dir", str(cv), "--cuts", str(cuts),
                 "--exclude-cuts", str(dev), "--out", str(text)]) == 0
    sentences = text.read_text().splitlines()
    assert "the cat on the mat" not in sentences  # a dev sentence never reaches the LM
    assert "the dog sat on the mat" in sentences and "a cat on a log" in sentences
    assert len(sentences) == len(set(sentences)) == 3 + len(train)  # 4 from the file, minus the dev one
    # the release's own dev.tsv and test.tsv are left out without --exclude-cuts too (any case, form)
    header = "client_id\tpath\tsentence\n"
    (cv / "dev.tsv").write_text(header + "c1\td1.mp3\tA CAT ON A LOG\n", encoding="utf-8")
    (cv / "test.tsv").write_text(header + "c2\tt1.mp3\tthe log and the mat.\n", encoding="utf-8")
    only_cv = tmp_path / "lm" / "cv_text.txt"
    assert main(["lm", "text", "--language", "en", "--commonvoice-dir", str(cv), "--out", str(only_cv)]) == 0
    assert only_cv.read_text().splitlines() == ["the dog sat on the mat", "the cat on the mat"]

    closed, open_ = tmp_path / "lang_closed", tmp_path / "lang_open"
    assert main(["lang-dir", "--type", "char", "--cuts", str(cuts), "--out", str(closed)]) == 0
    assert main(["lang-dir", "--type", "char", "--cuts", str(cuts), "--lm-text", str(text), "--out", str(open_)]) == 0
    assert main(["lm", "train", "--order", "3", "--text", str(text), "--out", str(tmp_path / "lm" / "lm.arpa")]) == 0
    for d in (closed, open_):
        assert main(["compile-graph", "--lang-dir", str(d), "--lm", str(tmp_path / "lm" / "lm.arpa"), "--dev-cuts", str(dev)]) == 0
    lg = Lang.load(open_)
    target = "the dog on the mat"
    mats = [ctc_frames(spell_ids(open_, target), lg.num_tokens, seed=3, noise=0.8, peak=5.0)]
    assert decode_words(open_, mats) == [target]
    assert "mat" not in decode_words(closed, mats)[0].split()  # the closed vocabulary cannot say it


def test_lang_dir_external_words_are_normalised_spelled_and_recorded(tmp_path, capsys):
    import json

    cuts = write_cuts(tmp_path / "train.jsonl.gz", [("en", "a cab"), ("en", "abc ba")])
    lex = tmp_path / "lex.txt"
    lex.write_text("BAC\tB AE K\nCAB\tK AE B\n<NOISE>\tNSN\nZAB\tZ AE B\n,\tPAUSE\n", encoding="utf-8")
    out = tmp_path / "lang"
    assert main(["lang-dir", "--type", "char", "--cuts", str(cuts), "--lexicon", str(lex), "--out", str(out)]) == 0
    log = capsys.readouterr().err
    words = [ln.split()[0] for ln in (out / "words.txt").read_text().splitlines()]
    assert words == ["<eps>", "<unk>", "a", "abc", "ba", "bac", "cab", "#0", "<s>", "</s>"]
    assert "bac b a c |" in (out / "lexicon.txt").read_text().splitlines()
    assert "need tokens the model lacks" in log and "zab" in log  # no 'z' in training
    assert json.loads((out / ".lang_dir.json").read_text())["language"] == "en"
    from toolkit.lm.graph import lang_dir_language

    assert lang_dir_language(out) == "en"
    assert main(["lang-dir", "--type", "char", "--cuts", str(cuts), "--lexicon", str(lex), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().err
    lex.write_text("CAB\tK AE B\n", encoding="utf-8")  # another lexicon: rebuilt
    assert main(["lang-dir", "--type", "char", "--cuts", str(cuts), "--lexicon", str(lex), "--out", str(out)]) == 0
    assert "bac" not in (out / "words.txt").read_text().split()
    lex.write_text("BAC\tB AE K\n", encoding="utf-8")
    # bpe: spellings from the SentencePiece model
    bpe = tmp_path / "bpe"
    assert main(["lang-dir", "--type", "bpe", "--vocab-size", "8", "--cuts", str(cuts), "--lexicon", str(lex),
                 "--out", str(bpe)]) == 0
    from toolkit.text.tokenizer import Tokenizer

    tok = Tokenizer.from_lang_dir(bpe)
    line = [ln for ln in (bpe / "lexicon.txt").read_text().splitlines() if ln.split()[0] == "bac"][0]
    assert line.split()[1:] == tok.sp.encode("bac", out_type=str)


def test_compile_graph_reports_the_dev_oov_rate(tmp_path, capsys):
    from graph_fixtures import four_word_lang

    lang = four_word_lang(tmp_path / "lang")
    dev = write_cuts(tmp_path / "dev.jsonl.gz", [("en", "ab cab"), ("en", "cob zzz yyy")])
    assert main(["compile-graph", "--lang-dir", str(lang), "--lm", str(lang / "lm.arpa"), "--dev-cuts", str(dev)]) == 0
    err = capsys.readouterr().err
    assert "the LM has 100.0% of the 4 lexicon words; dev OOV rate against the lexicon 40.00% of 5 words" in err
