"""Decoding graphs (toolkit.lm.graph, `toolkit compile-graph`) checked by the paths they accept.

References: CTC's collapsing rule written out independently, kenlm's sentence scores for G,
Kaldi's add_lex_disambig rules for L, and decoding a known path through HLG with kaldi-decoder.
"""
from __future__ import annotations

import itertools
import math
import os

import kaldifst
import kenlm
import numpy as np
import pytest

from graph_fixtures import FOUR_WORDS as WORDS
from graph_fixtures import ctc_frames, four_word_lang, spell_ids, write_arpa, write_lang
from toolkit.lm.graph import (
    TOKEN_OFFSET, Lang, add_disambig, build_ctc_topo, build_grammar_fst, build_lexicon_fst,
    compile_graphs, read_fst, remove_backoff_disambig,
)
from toolkit.utils import ToolkitError


def collapse(frames: list[int]) -> list[int]:
    """CTC's rule, independently: merge runs, then drop blanks (0)."""
    return [k for k, _ in itertools.groupby(frames) if k != 0]


def linear(labels: list[int]) -> kaldifst.StdVectorFst:
    fst = kaldifst.make_linear_acceptor(labels)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def accepts(frames: list[int], H: kaldifst.StdVectorFst, tokens: list[int]) -> bool:
    """Does H map this frame-label sequence to this token sequence (labels unshifted)?"""
    a = linear([f + TOKEN_OFFSET for f in frames])
    b = kaldifst.make_linear_acceptor([t + TOKEN_OFFSET for t in tokens])
    kaldifst.arcsort(b, sort_type="ilabel")
    out = kaldifst.compose(kaldifst.compose(a, H), b)
    return out.num_states > 0


@pytest.fixture
def lang(tmp_path):
    return four_word_lang(tmp_path / "lang", cab_cob_backoff=-0.20)


# ---------------------------------------------------------------------------------------- H

def test_standard_ctc_topo_maps_frames_to_collapsed_tokens():
    V = 4
    H = build_ctc_topo(V)
    assert sum(H.num_arcs(s) for s in range(H.num_states)) == V * V
    rng = np.random.default_rng(0)
    for _ in range(40):
        frames = rng.integers(0, V, size=int(rng.integers(1, 8))).tolist()
        want = collapse(frames)
        assert accepts(frames, H, want), (frames, want)
        # exactly one output: the frame sequence maps to nothing else
        out = kaldifst.compose(linear([f + TOKEN_OFFSET for f in frames]), H)
        ok, _, olabels, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(out))
        assert ok and [o - TOKEN_OFFSET for o in olabels] == want
    # a token repeated without blank in between is one token for the standard topology
    assert not accepts([1, 1], H, [1, 1]) and accepts([1, 0, 1], H, [1, 1])


def test_compact_ctc_topo_is_linear_size_and_accepts_ctc_paths():
    V = 5
    H = build_ctc_topo(V, compact=True)
    assert sum(H.num_arcs(s) for s in range(H.num_states)) == 1 + 3 * (V - 1)
    rng = np.random.default_rng(1)
    for _ in range(40):
        frames = rng.integers(0, V, size=int(rng.integers(1, 8))).tolist()
        assert accepts(frames, H, collapse(frames)), frames
    assert accepts([2, 2], H, [2, 2])  # the extra paths of the compact topology
    assert not accepts([2, 3], H, [3])  # but never drops a non-blank token


# ---------------------------------------------------------------------------------------- L

def test_disambig_follows_kaldi_rules():
    lex = [("he", ["▁he"]), ("hello", ["▁he", "llo"]), ("hi", ["▁hi"]), ("hy", ["▁hi"]), ("x", ["▁x"])]
    out, max_k = add_disambig(lex)
    assert dict((w, s) for w, s in out) == {
        "he": ["▁he", "#1"], "hello": ["▁he", "llo"], "hi": ["▁hi", "#1"], "hy": ["▁hi", "#2"], "x": ["▁x"]}
    assert max_k == 2


def test_lexicon_fst_maps_each_spelling_to_its_word(lang):
    L_fst, first_disambig = build_lexicon_fst(Lang.load(lang))
    lg = Lang.load(lang)
    assert first_disambig == lg.num_tokens + TOKEN_OFFSET
    for word in WORDS:
        ids = spell_ids(lang, word)
        out = kaldifst.compose(linear([i + TOKEN_OFFSET for i in ids]), L_fst)
        ok, _, olabels, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(out))
        assert ok and lg.words_of(olabels) == [word]


# ---------------------------------------------------------------------------------------- G

def g_cost(G, lang: Lang, sentence: str) -> float:
    ids = [lang.words[w] for w in sentence.split()]
    a = kaldifst.make_linear_acceptor(ids)
    kaldifst.arcsort(a, sort_type="olabel")
    best = kaldifst.shortest_path(kaldifst.compose(a, G))
    ok, _, _, w = kaldifst.get_linear_symbol_sequence(best)
    assert ok and best.num_states > 0
    return float(w.value)


def test_grammar_fst_scores_sentences_like_kenlm(lang):
    lg = Lang.load(lang)
    G = remove_backoff_disambig(build_grammar_fst(lang / "lm.arpa", lang / "words.txt"), lg.words["#0"])
    model = kenlm.Model(str(lang / "lm.arpa"))
    for sentence in ["ab cab", "ab ba", "cob", "ba ab cob", "cab cab"]:
        want = -model.score(sentence, bos=True, eos=True) * math.log(10)
        assert g_cost(G, lg, sentence) == pytest.approx(want, abs=2e-3), sentence


def test_arpa_words_missing_from_words_txt_are_skipped(lang, tmp_path):
    arpa = write_arpa(tmp_path / "oov.arpa", {"<s>": (-99, -0.3), "</s>": (-0.5, None), "ab": (-0.5, -0.1),
                                              "zzz": (-0.5, -0.1)}, {("ab", "zzz"): -0.1, ("<s>", "ab"): -0.1})
    lg = Lang.load(lang)
    G = remove_backoff_disambig(build_grammar_fst(arpa, lang / "words.txt"), lg.words["#0"])
    assert g_cost(G, lg, "ab") > 0


def test_bad_arpa_and_bad_lang_dir_raise_one_line_errors(lang, tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("this is not an LM\n")
    with pytest.raises(ToolkitError, match="bad.arpa.*not an ARPA"):
        build_grammar_fst(bad, lang / "words.txt")
    with pytest.raises(ToolkitError, match="missing.arpa.*not found"):
        compile_graphs(lang, tmp_path / "missing.arpa")
    with pytest.raises(ToolkitError, match="lang dir not found"):
        Lang.load(tmp_path / "nowhere")
    (lang / "lexicon.txt").write_text("ab a b | Q\n")
    with pytest.raises(ToolkitError, match="lexicon.txt.*Q"):
        Lang.load(lang)


# ---------------------------------------------------------------------------------------- HLG

def best_words(hlg_path, lang_dir, log_probs) -> list[str]:
    from toolkit.decode.options import SearchOptions
    from toolkit.decode.wfst import HlgDecoder

    return Lang.load(lang_dir).words_of(HlgDecoder(hlg_path, SearchOptions()).decode(log_probs))


def test_hlg_decodes_a_known_path(lang):
    paths = compile_graphs(lang, lang / "lm.arpa")
    V = Lang.load(lang).num_tokens
    for sentence in ["ab cab", "ba ab cob", "cob cob ba"]:
        lp = ctc_frames(spell_ids(lang, sentence), V, seed=len(sentence))
        assert best_words(paths.HLG, lang, lp) == sentence.split()


def test_words_absent_from_the_lm_are_never_hypothesised(lang):
    (lang / "lm.arpa").write_text((lang / "lm.arpa").read_text().replace("-0.6000\tcob\t-0.2000\n", "")
                                  .replace("ngram 1=6", "ngram 1=5").replace("-0.3000\tcob </s>\n", "")
                                  .replace("ngram 2=6", "ngram 2=5"))
    paths = compile_graphs(lang, lang / "lm.arpa")
    lp = ctc_frames(spell_ids(lang, "ab cob"), Lang.load(lang).num_tokens)
    hyp = best_words(paths.HLG, lang, lp)
    assert "cob" not in hyp and hyp[0] == "ab"


def test_bpe_lexicon_with_prefix_spellings(tmp_path):
    tokens = ["<blk>", "▁he", "llo", "▁hel", "p", "▁wor", "ld", "<unk>"]
    lex = [("he", ["▁he"]), ("hello", ["▁he", "llo"]), ("help", ["▁hel", "p"]), ("world", ["▁wor", "ld"])]
    d = write_lang(tmp_path / "bpe", tokens, lex)
    write_arpa(d / "lm.arpa", {"<s>": (-99, -0.3), "</s>": (-0.7, None), "he": (-0.8, -0.1),
                               "hello": (-0.8, -0.1), "help": (-0.8, -0.1), "world": (-0.8, -0.1)})
    paths = compile_graphs(d, d / "lm.arpa")
    for sentence in ["he hello world", "hello he", "help world he"]:
        lp = ctc_frames(spell_ids(d, sentence), len(tokens), seed=3)
        assert best_words(paths.HLG, d, lp) == sentence.split()


def test_graphs_are_rebuilt_only_when_an_input_changes(lang):
    first = compile_graphs(lang, lang / "lm.arpa")
    assert first.rebuilt == ["H.fst", "L_disambig.fst", "G_2.fst", "HLG.fst"]
    mtimes = {p: os.stat(lang / p).st_mtime_ns for p in first.rebuilt}
    assert compile_graphs(lang, lang / "lm.arpa").rebuilt == []
    assert {p: os.stat(lang / p).st_mtime_ns for p in first.rebuilt} == mtimes
    os.utime(lang / "lexicon.txt")  # touched, same content: still up to date
    assert compile_graphs(lang, lang / "lm.arpa").rebuilt == []
    with open(lang / "lexicon.txt", "a", encoding="utf-8") as f:
        f.write("cab c a a b |\n")  # a second spelling
    assert compile_graphs(lang, lang / "lm.arpa").rebuilt == ["L_disambig.fst", "HLG.fst"]
    assert compile_graphs(lang, lang / "lm.arpa", order=1).rebuilt == ["G_1.fst", "HLG.fst"]
    assert compile_graphs(lang, lang / "lm.arpa", compact=True).rebuilt == ["H.fst", "HLG.fst"]


def test_compile_graph_command(lang, tmp_path):
    from toolkit.cli import main

    assert main(["compile-graph", "--lang-dir", str(lang), "--lm", str(lang / "lm.arpa")]) == 0
    assert all((lang / f).is_file() for f in ["H.fst", "L_disambig.fst", "G_2.fst", "HLG.fst", "graphs.json"])
    HLG = read_fst(lang / "HLG.fst")
    assert HLG.num_states > 0
    assert main(["compile-graph", "--lang-dir", str(tmp_path / "none"), "--lm", str(lang / "lm.arpa")]) == 1


def test_gzipped_arpa_gives_the_same_graph(lang, tmp_path):
    import gzip

    gz = tmp_path / "lm.arpa.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write((lang / "lm.arpa").read_text())
    plain = compile_graphs(lang, lang / "lm.arpa")
    plain_text = read_fst(plain.HLG).to_str()
    assert compile_graphs(lang, gz).rebuilt == ["G_2.fst", "HLG.fst"]  # a new input file: rebuilt
    assert read_fst(lang / "HLG.fst").to_str() == plain_text


def test_rescoring_grammar_is_recorded_for_decode(lang, tmp_path):
    from toolkit.cli import main
    from toolkit.lm.graph import rescore_grammar_path

    with pytest.raises(ToolkitError, match="--rescore-lm"):
        rescore_grammar_path(lang)
    assert main(["compile-graph", "--lang-dir", str(lang), "--lm", str(lang / "lm.arpa"), "--order", "1",
                 "--rescore-lm", str(lang / "lm.arpa")]) == 0
    assert rescore_grammar_path(lang) == lang / "G_2_rescore.fst"
    assert (lang / "G_1.fst").is_file()
    # A rescoring LM of the first-pass order has its own file: HLG's G is never replaced by it.
    first_pass = (lang / "G_1.fst").read_bytes()
    uni = tmp_path / "uni.arpa"
    uni.write_text("\\data\\\nngram 1=6\n\n\\1-grams:\n-0.5\t</s>\n-99\t<s>\n-0.5\tab\n-0.7\tba\n"
                       "-0.9\tcab\n-0.9\tcob\n\n\\end\\\n")
    assert main(["compile-graph", "--lang-dir", str(lang), "--lm", str(lang / "lm.arpa"), "--order", "1",
                 "--rescore-lm", str(uni)]) == 0
    assert rescore_grammar_path(lang) == lang / "G_1_rescore.fst"
    assert (lang / "G_1.fst").read_bytes() == first_pass


def test_a_new_lm_leaves_no_recorded_hlg_of_the_old_one(lang, tmp_path, monkeypatch):
    """HLG.fst and the k2 HLG.pt stop counting as current once compile-graph starts on another LM:
    a failure while building (or a run without --k2) must not leave the old LM's HLG looking usable."""
    import toolkit.lm.graph as graph
    from toolkit.lm.graph import GraphCache, checked_graph

    compile_graphs(lang, lang / "lm.arpa")
    (lang / "HLG.pt").write_bytes(b"k2 graph of lm.arpa")  # as `compile-graph --k2` leaves it
    GraphCache(lang).record("HLG.pt", "key-of-lm.arpa")
    assert checked_graph(lang, "HLG.fst") and checked_graph(lang, "HLG.pt")
    assert compile_graphs(lang, lang / "lm.arpa").rebuilt == []  # same LM: both records stay
    assert checked_graph(lang, "HLG.pt")

    other = tmp_path / "other.arpa"
    text = (lang / "lm.arpa").read_text()
    other.write_text(text.replace("-1.5000\tcab", "-0.3000\tcab"))
    assert other.read_text() != text

    def fail(*a, **k):
        raise ToolkitError("out of memory while composing")

    monkeypatch.setattr(graph, "build_hlg", fail)
    with pytest.raises(ToolkitError, match="out of memory"):
        compile_graphs(lang, other)
    for name in ("HLG.fst", "HLG.pt"):
        with pytest.raises(ToolkitError, match=rf"{name}: no current build record .*rebuild it with"):
            checked_graph(lang, name)
    monkeypatch.undo()
    assert compile_graphs(lang, other).rebuilt == ["HLG.fst"]  # G_2.fst of other.arpa was written before the failure
    assert checked_graph(lang, "HLG.fst")
    with pytest.raises(ToolkitError, match=r"HLG.pt: no current build record .*--k2"):
        checked_graph(lang, "HLG.pt")  # still the old LM's until `compile-graph --k2` rebuilds it


def test_a_new_rescoring_lm_leaves_no_recorded_k2_form_of_the_old_one(lang, tmp_path, capsys):
    """compile-graph --rescore-lm NEW without --k2: G_<n>gram.pt (the k2 rescoring G) is of the old
    LM and stops counting as current, so the k2 rescoring methods refuse it instead of using it;
    the summary line names the rebuilt rescoring G instead of saying "up to date"."""
    from toolkit.cli import main
    from toolkit.lm.graph import GraphCache, checked_graph

    args = ["compile-graph", "--lang-dir", str(lang), "--lm", str(lang / "lm.arpa"), "--rescore-lm"]
    assert main([*args, str(lang / "lm.arpa")]) == 0
    (lang / "G_2gram.pt").write_bytes(b"k2 form of lm.arpa")  # as `compile-graph --k2` leaves it
    GraphCache(lang).record("G_2gram.pt", "key-of-lm.arpa", ("words.txt",))
    assert checked_graph(lang, "G_2gram.pt")
    other = tmp_path / "other.arpa"
    other.write_text((lang / "lm.arpa").read_text().replace("-1.5000\tcab", "-0.3000\tcab"))
    capsys.readouterr()
    assert main([*args, str(other)]) == 0
    log = capsys.readouterr().err
    assert "built G_2_rescore.fst" in log and "up to date" not in log, log
    with pytest.raises(ToolkitError, match=r"G_2gram.pt: no current build record .*--k2"):
        checked_graph(lang, "G_2gram.pt")


def test_compile_graph_refuses_a_corrupt_arpa_an_order_above_it_and_an_lm_of_other_words(lang, tmp_path, capsys):
    """kaldilm ignores an ARPA's header counts: a cut-off section compiled silently before. An
    --order above the LM's gave a 2-gram G named G_3.fst; an LM sharing no word with the lexicon
    gave (under --min-coverage 0) a graph that only says <unk>."""
    from toolkit.cli import main

    def compile_graph(lm, *extra) -> tuple[int, str]:
        capsys.readouterr()
        rc = main(["compile-graph", "--lang-dir", str(lang), "--lm", str(lm), *extra])
        return rc, capsys.readouterr().err.strip().splitlines()[-1]

    text = (lang / "lm.arpa").read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("ngram 2=")][0]
    cut = tmp_path / "cut.arpa"
    cut.write_text(text.replace(header, f"ngram 2={int(header.split('=')[1]) + 1}"))
    rc, err = compile_graph(cut)
    assert rc == 1 and err.startswith("toolkit compile-graph: error:") and "cut.arpa:" in err and "the header says" in err
    bigram = text.split("\\2-grams:")[1].strip().splitlines()[0]
    dup = tmp_path / "dup.arpa"
    dup.write_text(text.replace(header, f"ngram 2={int(header.split('=')[1]) + 1}").replace(bigram, f"{bigram}\n{bigram}"))
    before = {f.name: f.stat().st_mtime_ns for f in lang.iterdir()}
    rc, err = compile_graph(dup)
    assert rc == 1 and f"dup.arpa: the 2-gram {' '.join(bigram.split()[1:3])!r} is listed twice" in err, err
    assert {f.name: f.stat().st_mtime_ns for f in lang.iterdir()} == before  # no graph written
    upper = tmp_path / "upper.arpa"  # the normalising path (openslr's case) carried the copy over too
    upper.write_text(dup.read_text().upper().replace("\\DATA\\", "\\data\\").replace("NGRAM", "ngram")
                     .replace("-GRAMS:", "-grams:").replace("\\END\\", "\\end\\").replace("<S>", "<s>")
                     .replace("</S>", "</s>"))
    rc, err = compile_graph(upper)
    assert rc == 1 and "upper.arpa: the 2-gram" in err and "listed twice" in err, err
    assert {f.name: f.stat().st_mtime_ns for f in lang.iterdir()} == before
    rc, err = compile_graph(lang / "lm.arpa", "--order", "3")
    assert rc == 1 and "--order 3" in err and "2-gram" in err
    assert not (lang / "G_3.fst").exists()
    other = write_arpa(tmp_path / "other.arpa", {"<s>": (-99, -0.3), "</s>": (-0.5, None), "zzz": (-0.3, -0.1)})
    rc, err = compile_graph(other, "--min-coverage", "0")
    assert rc == 1 and "the LM has 0.0% of the 4 lexicon words" in err and "none of its words" in err, err
