"""CTC decoders: greedy against the collapsing rule, HLG (kaldi-decoder) on known paths, the LM
fixing what acoustics alone get wrong, lattice rescoring with a larger LM, parallel workers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from graph_fixtures import FOUR_WORDS as WORDS
from graph_fixtures import char_lang, ctc_frames, flat_model_lang, four_word_lang, spell_ids, write_arpa
from toolkit.decode.greedy import greedy_decode, greedy_ids
from toolkit.decode.options import SearchOptions
from toolkit.decode.wfst import decode_matrices
from toolkit.lm.graph import Lang, compile_graphs
from toolkit.utils import ToolkitError

@pytest.fixture
def lang(tmp_path):
    return four_word_lang(tmp_path / "lang")


class CharDetok:
    """Independent detokeniser for the hand-made char lang dir: | is a space."""

    def __init__(self, lang_dir):
        self.tokens = [ln.split()[0] for ln in (lang_dir / "tokens.txt").read_text().splitlines()]

    def decode(self, ids):
        return " ".join("".join(self.tokens[i] for i in ids).replace("|", " ").split())


def test_greedy_matches_the_collapsing_rule_on_padded_batches():
    rng = np.random.default_rng(0)
    B, T, V = 5, 30, 6
    lp = torch.from_numpy(rng.normal(size=(B, T, V)).astype(np.float32)).log_softmax(-1)
    lengths = torch.tensor([30, 1, 17, 0, 29])
    got = greedy_ids(lp, lengths)
    for b in range(B):
        frames = lp[b, : lengths[b]].argmax(-1).tolist()
        assert got[b] == [k for k, _ in itertools.groupby(frames) if k != 0]
    assert got[3] == []
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        greedy_ids(lp[0])


def test_greedy_text_uses_the_tokenizer(lang):
    from toolkit.text.tokenizer import Tokenizer

    tok = Tokenizer.from_lang_dir(lang)
    lp = torch.from_numpy(ctc_frames(spell_ids(lang, "ab cab"), tok.vocab_size))[None]
    assert greedy_decode(lp, None, tok) == ["ab cab"]
    assert greedy_decode(lp, None, CharDetok(lang)) == ["ab cab"]


def hlg_words(lang_dir, mats, method="hlg", nj=1, **kw):
    lg = Lang.load(lang_dir)
    kw.setdefault("backoff_id", lg.words["#0"])
    out = decode_matrices(mats, method, lang_dir / "HLG.fst", SearchOptions(**kw.pop("opts", {})), nj=nj, **kw)
    return [" ".join(lg.words_of(ids)) for ids, _ in out]


def test_lm_fixes_what_greedy_misspells(lang):
    compile_graphs(lang, lang / "lm.arpa")
    lg = Lang.load(lang)
    ids = spell_ids(lang, "ab cab")
    # the 'a' of "cab" (position 4) sounds just like an 'o': greedy writes "cob"
    lp = ctc_frames(ids, lg.num_tokens, ambiguous={4: [lg.tokens["o"]]})
    assert greedy_decode(torch.from_numpy(lp)[None], None, CharDetok(lang)) == ["ab cob"]
    assert hlg_words(lang, [lp]) == ["ab cab"]
    # ...and where the context says "cob" is fine, the LM keeps it
    lp2 = ctc_frames(spell_ids(lang, "cob"), lg.num_tokens, ambiguous={1: [lg.tokens["a"]]})
    assert hlg_words(lang, [lp2]) == ["cob"]


def test_lattice_rescoring_with_a_larger_lm(lang):
    # First pass with the unigram part only: alone, "cob" is likelier than "cab".
    compile_graphs(lang, lang / "lm.arpa", order=1)
    lg = Lang.load(lang)
    lp = ctc_frames(spell_ids(lang, "ab cab"), lg.num_tokens, ambiguous={4: [lg.tokens["o"]]})
    # 'o' a hair likelier than 'a' (a tie would leave the 1-best list's choice to chance)
    lp[:, lg.tokens["a"]] = np.maximum(lp[:, lg.tokens["a"]], lp[:, lg.tokens["o"]] - 0.01)
    assert hlg_words(lang, [lp]) == ["ab cob"]
    from toolkit.lm.graph import rescore_grammar

    g2, _ = rescore_grammar(lang, lang / "lm.arpa")
    assert hlg_words(lang, [lp], method="hlg-rescore", rescore_g=g2) == ["ab cab"]
    # n-best rescoring agrees once the right sentence is among the n best; a 1-best list cannot fix it
    assert hlg_words(lang, [lp], method="hlg-rescore", rescore_g=g2, opts={"num_paths": 10}) == ["ab cab"]
    assert hlg_words(lang, [lp], method="hlg-rescore", rescore_g=g2, opts={"num_paths": 1}) == ["ab cob"]
    # a clear acoustic signal is not overruled by the rescoring LM
    clear = ctc_frames(spell_ids(lang, "ab cob"), lg.num_tokens, peak=12.0)
    assert hlg_words(lang, [clear], method="hlg-rescore", rescore_g=g2) == ["ab cob"]
    with pytest.raises(ToolkitError, match="--rescore-lm"):
        hlg_words(lang, [lp], method="hlg-rescore")


@pytest.mark.parametrize("nj", [1, 2])
def test_rescoring_that_keeps_the_first_pass_says_how_often(lang, tmp_path, caplog, nj):
    """A rescoring LM without a lexicon word ("cab": 75% coverage passes the check) leaves every
    utterance whose lattice holds only paths with it at its first pass: one warning with the count."""
    import logging

    from toolkit.lm.graph import rescore_grammar

    compile_graphs(lang, lang / "lm.arpa")
    lg = Lang.load(lang)
    no_cab = write_arpa(tmp_path / "no_cab.arpa", {"<s>": (-99.0, -0.3), "</s>": (-0.8, None), "ab": (-0.5, -0.2),
                                                   "ba": (-0.7, -0.2), "cob": (-0.6, -0.2)})
    g2, _ = rescore_grammar(lang, no_cab)
    sentences = ["cab", "ab ba", "ab cab", "cob"]
    mats = [ctc_frames(spell_ids(lang, s), lg.num_tokens, peak=12.0, seed=i) for i, s in enumerate(sentences)]
    caplog.set_level(logging.WARNING, logger="toolkit.decode")
    assert hlg_words(lang, mats, method="hlg-rescore", rescore_g=g2, nj=nj) == sentences
    warnings = [r.getMessage() for r in caplog.records if "first-pass" in r.getMessage()]
    assert len(warnings) == 1 and "hlg-rescore: 2 utterance(s) kept their first-pass result" in warnings[0], warnings


def test_parallel_workers_give_the_same_results_in_order(lang):
    compile_graphs(lang, lang / "lm.arpa")
    lg = Lang.load(lang)
    sentences = ["ab cab", "ba", "cob cob", "ab ba", "cab", "ba ab cob"] * 2
    mats = [ctc_frames(spell_ids(lang, s), lg.num_tokens, seed=i) for i, s in enumerate(sentences)]
    serial = hlg_words(lang, mats)
    assert serial == sentences
    assert hlg_words(lang, mats, nj=2) == serial


def test_acoustic_scale_trades_acoustics_against_the_lm(lang):
    compile_graphs(lang, lang / "lm.arpa")
    lg = Lang.load(lang)
    # "ab cob" said clearly (but not overwhelmingly): the LM wants "cab" after "ab"
    lp = ctc_frames(spell_ids(lang, "ab cob"), lg.num_tokens, peak=3.0, noise=0.0)
    assert hlg_words(lang, [lp], opts={"acoustic_scale": 5.0}) == ["ab cob"]
    assert hlg_words(lang, [lp], opts={"acoustic_scale": 0.05}) == ["ab cab"]
    with pytest.raises(ToolkitError, match="positive"):
        hlg_words(lang, [lp], opts={"beam": -1.0})


# ------------------------------------------------------------------ LM scale x word penalty sweep

def crafted_frames(lg, spec):
    """(T, V) log-probs from per-frame logits {token: logit} (every other token far below)."""
    lp = np.full((len(spec), lg.num_tokens), -20.0, dtype=np.float32)
    for f, logits in enumerate(spec):
        for tok, v in logits.items():
            lp[f, lg.tokens[tok]] = v
    return (lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))).astype(np.float32)


def said(word, alt=None):
    """Frames of a word said clearly: each token (| included) twice, then a blank; ``alt`` =
    (position, token, logit) gives a rival token at that position, e.g. an 'o' for the 'a' of cab."""
    frames = []
    for i, ch in enumerate(word + "|"):
        f = {ch: 0.0, "<blk>": -8.0}
        if alt and i == alt[0]:
            f[alt[1]] = alt[2]
        frames += [f, f, {"<blk>": 0.0, ch: -8.0}]
    return frames


def faint(word, margin):
    """Frames where emitting ``word`` beats all-blank by ``margin`` nats in all (a word or a noise)."""
    per = margin / (len(word) + 1)
    return [{ch: 0.0, "<blk>": -per} for ch in word + "|"] + [{"<blk>": 0.0}]


def brute_force_best(lp, lg, arpa, lm_scale, penalty, max_words=3):
    """The best word sequence by exhaustive search, from independent references: torchaudio's CTC
    forced alignment (Viterbi acoustic cost) and KenLM's sentence score (-ln)."""
    import math

    import kenlm
    import torchaudio

    ken = kenlm.Model(str(arpa))
    words = [w for w in lg.words if w not in ("<eps>", "#0", "<s>", "</s>")]
    best = None
    for n in range(1, max_words + 1):
        for seq in itertools.product(words, repeat=n):
            ids = [lg.tokens[c] for w in seq for c in w + "|"]
            try:
                _, scores = torchaudio.functional.forced_align(torch.from_numpy(lp)[None], torch.tensor([ids]), blank=0)
            except RuntimeError:
                continue  # too few frames for this sequence
            cost = -float(scores.sum()) - lm_scale * ken.score(" ".join(seq)) * math.log(10) + penalty * n
            if best is None or cost < best[0]:
                best = (cost, " ".join(seq))
    return best[1]


@pytest.mark.parametrize("method", ["hlg", "hlg-rescore"])
def test_sweep_picks_the_known_best_lm_scale_and_word_penalty(lang, method):
    """Four utterances built so that exactly one (lm_scale, word_penalty) of the grid gets all right:
    the LM must outweigh an 'o' that sounds a bit likelier than the 'a' of "ab cab" (lm_scale >= 2) but
    not a clear "ab cob" (lm_scale < 4); a faint spurious "ab" after "ba" must be suppressed (penalty
    >= 2) but a faint real one kept (penalty < 4). Every grid point's hypotheses are checked against an
    exhaustive search scored by torchaudio's forced alignment and KenLM, and the choice against jiwer.
    hlg-rescore: a unigram first pass rescored with the bigram, which must give the same choices."""
    import jiwer

    from toolkit.decode.search import WfstSearch
    from toolkit.decode.tuning import choose, score_sweep, sweep_settings
    from toolkit.lm.graph import rescore_grammar

    compile_graphs(lang, lang / "lm.arpa", order=1 if method == "hlg-rescore" else None)
    rescore_grammar(lang, lang / "lm.arpa")
    lg = Lang.load(lang)
    sil = [{"<blk>": 0.0}]
    # LM: "ab cab" vs "ab cob" differ by 1.0 log10 = 2.30 nats; "ba ab" vs "ba" by 1.8 log10 = 4.14 nats
    utts = {"u1": ("ab cab", said("ab") + said("cab", (1, "o", 3.45 / 2))),
            "u2": ("ab cob", said("ab") + said("cob", (1, "a", -6.9 / 2))),
            "u3": ("ba", said("ba") + faint("ab", 9.3)),
            "u4": ("ba ab", said("ba") + faint("ab", 11.3))}
    mats = {u: crafted_frames(lg, sil + spec) for u, (_, spec) in utts.items()}
    refs = {u: ref for u, (ref, _) in utts.items()}
    grid = sweep_settings([0.5, 1.0, 2.0, 4.0], [-2.0, 0.0, 2.0, 4.0], 1.0, 0.0)
    opts = SearchOptions(beam=30.0, lattice_beam=30.0)
    lengths = [m.shape[0] for m in mats.values()]
    batch = np.zeros((len(mats), max(lengths), lg.num_tokens), dtype=np.float32)  # padded like a model batch
    for i, m in enumerate(mats.values()):
        batch[i, : len(m)] = m
    with WfstSearch(method, opts, lang, sweep=grid) as search:
        hyps = search(torch.from_numpy(batch), torch.tensor(lengths))
    per_cut = {u: h.sweep for u, h in zip(mats, hyps)}
    if method == "hlg":  # the hypothesis of the options' own setting (1, 0) is the plain HLG one-best
        assert [h.text for h in hyps] == hlg_words(lang, list(mats.values()), opts={"beam": 30.0})
    reference_wer = {}
    for k, (scale, penalty) in enumerate(grid):
        want = {u: brute_force_best(mats[u], lg, lang / "lm.arpa", scale, penalty) for u in mats}
        assert {u: per_cut[u][k] for u in mats} == want, (scale, penalty)
        reference_wer[(scale, penalty)] = jiwer.wer([refs[u] for u in mats], [want[u] for u in mats])
    points = score_sweep(refs, per_cut, grid)
    for p in points:
        assert p.wer == pytest.approx(100 * reference_wer[(p.lm_scale, p.word_penalty)])
    best = choose(points)
    assert (best.lm_scale, best.word_penalty) == (2.0, 2.0) and best.word_errors == 0
    assert sorted(reference_wer.values())[1] > 0  # the best is unique: every other setting errs


def test_word_penalty_and_lm_scale_apply_to_plain_hlg_decoding(lang):
    compile_graphs(lang, lang / "lm.arpa")
    lg = Lang.load(lang)
    lp = crafted_frames(lg, [{"<blk>": 0.0}] + said("ba") + faint("ab", 9.3))
    assert hlg_words(lang, [lp]) == ["ba ab"]
    kw = {}
    # the faint "ab" gains 9.3 nats of acoustics and costs 4.14 nats of LM (x lm_scale) + the penalty
    assert hlg_words(lang, [lp], opts={"word_penalty": 4.0}, **kw) == ["ba ab"]
    assert hlg_words(lang, [lp], opts={"word_penalty": 6.0}, **kw) == ["ba"]   # the insertion is suppressed
    assert hlg_words(lang, [lp], opts={"lm_scale": 3.0}, **kw) == ["ba"]      # ... or the LM outweighs it
    assert hlg_words(lang, [lp], opts={"word_penalty": -4.0, "lm_scale": 3.0}, **kw) == ["ba ab"]


# ---------------------------------------------------------------------------------------- CLI

def make_cuts(tmp_path, texts_langs):
    import soundfile as sf
    from lhotse import CutSet, Recording, SupervisionSegment

    rng = np.random.default_rng(0)
    cuts = []
    for i, (text, language) in enumerate(texts_langs):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * (0.8 + 0.3 * i)))).astype(np.float32), 16000)
        rec = Recording.from_file(path, recording_id=f"u{i}")
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(id=f"u{i}", recording_id=f"u{i}", start=0.0, duration=rec.duration,
                                               text=text, language=language)]
        cuts.append(cut)
    out = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(out)
    return out, CutSet.from_cuts(cuts)


def test_references_kept_as_the_corpus_wrote_them_are_scored_normalised(tmp_path, lang, capsys):
    """lhotse's recipes keep case and punctuation in the supervision text; the model writes
    normalised words. "Ab, cab." against "ab cab" scored as two errors, exit 0: now the
    references are normalised (with a warning), and the WER equals that of a normalised manifest."""
    import jiwer

    from toolkit.cli import main
    from toolkit.score.report import read_recogs

    ckpt, *_ = tiny_checkpoint(tmp_path, lang)
    scores = {}
    for name, texts in (("clean", ["ab cab", "ba"]), ("raw", ["Ab, cab.", "BA!"])):
        (tmp_path / name).mkdir()
        cuts_path, _ = make_cuts(tmp_path / name, [(t, "xx") for t in texts])
        capsys.readouterr()
        assert main(["decode", "--checkpoint", str(ckpt), "--cuts", str(cuts_path),
                     "--out-dir", str(tmp_path / name / "out")]) == 0
        err = capsys.readouterr().err
        assert ("2 of 2 reference texts were not normalised" in err) == (name == "raw"), err
        refs, hyps = read_recogs(tmp_path / name / "out" / "recogs.txt")
        assert refs == {"u0": "ab cab", "u1": "ba"}
        scores[name] = (tmp_path / name / "out" / "wer-summary.txt").read_text()
        ids = sorted(refs)
        want = 100 * jiwer.wer([refs[i] for i in ids], [hyps[i] for i in ids])
        assert f"{want:.2f}" in scores[name]
    assert scores["raw"] == scores["clean"]


def tiny_checkpoint(tmp_path, lang, kind="ctc"):
    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
    from toolkit.text.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_lang_dir(lang)
    cfg = get_preset("tiny")
    model = Wav2Vec2ForCTC(cfg, tok.vocab_size) if kind == "ctc" else Wav2Vec2ForPretraining(cfg)
    path = tmp_path / f"{kind}.pt"
    save_checkpoint(path, model.eval(), cfg, kind, vocab=tok.to_dict())
    return path, model.eval(), tok, cfg


def read_hyps(recogs):
    import ast

    out = {}
    for line in recogs.read_text().splitlines():
        cid, rest = line.split(":\t", 1)
        if rest.startswith("hyp="):
            out[cid] = " ".join(ast.literal_eval(rest[4:]))
    return out


def test_decode_command_writes_reports_for_each_method(tmp_path, lang):
    from toolkit.cli import main
    from toolkit.data.dataset import AudioDataset

    ckpt, model, tok, cfg = tiny_checkpoint(tmp_path, lang)
    cuts_path, cuts = make_cuts(tmp_path, [("ab cab", "xx"), ("ba", "yy"), ("cob ab", "xx")])
    out = tmp_path / "decode"
    compile_graphs(lang, lang / "lm.arpa")
    rc = main(["decode", "--checkpoint", str(ckpt), "--cuts", str(cuts_path), "--lang-dir", str(lang),
               "--methods", "greedy,hlg", "--out-dir", str(out),
               "--max-duration", "2.0", "--nj", "1"])
    assert rc == 0
    for m in ["greedy", "hlg"]:
        for f in ["recogs.txt", "errs.txt", "wer-summary.txt", "timing.txt"]:
            assert (out / m / f).is_file(), (m, f)
        timing = (out / m / "timing.txt").read_text()
        assert all(f"u{i}\t" in timing for i in range(3)) and "# rtf=" in timing
    # greedy through the command == greedy on each utterance alone (batching must not change outputs)
    data = AudioDataset(normalize=cfg.normalize, drop_unfit=False)
    want = {}
    for cut in cuts:
        from lhotse import CutSet

        b = data[CutSet.from_cuts([cut])]
        with torch.inference_mode():
            lp, n = model(b["audio"], b["lengths"])
        want[cut.id] = greedy_decode(lp, n, tok)[0]
    assert read_hyps(out / "greedy" / "recogs.txt") == want
    vocab = set(WORDS)
    assert all(set(h.split()) <= vocab for h in read_hyps(out / "hlg" / "recogs.txt").values())


def test_decode_command_rejects_mismatched_inputs(tmp_path, lang, capsys):
    from toolkit.cli import main

    cuts_path, _ = make_cuts(tmp_path, [("ab", "xx")])
    pre, *_ = tiny_checkpoint(tmp_path, lang, kind="pretrain")
    assert main(["decode", "--checkpoint", str(pre), "--cuts", str(cuts_path), "--out-dir", str(tmp_path / "o")]) == 1
    assert "no CTC head" in capsys.readouterr().err
    ckpt, *_ = tiny_checkpoint(tmp_path, lang)
    other = char_lang(tmp_path / "other", ["xyz"])
    assert main(["decode", "--checkpoint", str(ckpt), "--cuts", str(cuts_path), "--lang-dir", str(other),
                 "--method", "hlg", "--out-dir", str(tmp_path / "o")]) == 1
    assert "does not match the checkpoint's vocabulary" in capsys.readouterr().err
    assert main(["decode", "--checkpoint", str(ckpt), "--cuts", str(tmp_path / "none.jsonl.gz"),
                 "--out-dir", str(tmp_path / "o")]) == 1
    assert "file not found" in capsys.readouterr().err
    # cuts without reference texts were scored as empty references: a WER of "inf", exit 0
    (tmp_path / "bare").mkdir()
    bare, _ = make_cuts(tmp_path / "bare", [("", "xx"), ("  ", "xx")])
    assert main(["decode", "--checkpoint", str(ckpt), "--cuts", str(bare), "--out-dir", str(tmp_path / "o2")]) == 1
    assert "no cut has a reference text; decode scores against references" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    # some without: every word of theirs an insertion (a WER of 20% instead of 3%, and a sweep steered by it)
    (tmp_path / "some").mkdir()
    some, _ = make_cuts(tmp_path / "some", [("ab", "xx"), ("", "xx")])
    assert main(["decode", "--checkpoint", str(ckpt), "--cuts", str(some), "--out-dir", str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err
    assert "1 of 2 cuts have no reference text" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o3").exists()


def test_k2_methods_without_k2_say_how_to_install_it(tmp_path, lang):
    import importlib.util

    if importlib.util.find_spec("k2") is not None:
        pytest.skip("k2 is installed here; tests/test_k2.py covers it")
    from toolkit.lm.k2_graph import K2_MISSING, k2_ctc_topo

    with pytest.raises(ToolkitError) as e:
        k2_ctc_topo(5)
    assert str(e.value) == K2_MISSING
    from toolkit.cli import main

    ckpt, *_ = tiny_checkpoint(tmp_path, lang)
    cuts_path, _ = make_cuts(tmp_path, [("ab", "xx")])
    assert main(["decode", "--checkpoint", str(ckpt), "--cuts", str(cuts_path), "--lang-dir", str(lang),
                 "--method", "k2-ctc", "--out-dir", str(tmp_path / "o")]) == 1


def test_decode_refuses_graphs_of_another_lang_dir(tmp_path, lang, capsys):
    """A lang dir rebuilt after its graphs were compiled (words.txt changed: word ids mean other words)
    must not decode with the old HLG; missing or empty graphs are one-line errors naming compile-graph."""
    from toolkit.cli import main

    ckpt, *_ = tiny_checkpoint(tmp_path, lang)
    cuts_path, _ = make_cuts(tmp_path, [("ab cab", "xx")])
    args = ["decode", "--checkpoint", str(ckpt), "--cuts", str(cuts_path), "--lang-dir", str(lang),
            "--method", "hlg", "--out-dir", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "HLG.fst: not found" in err and "toolkit compile-graph --lang-dir" in err and err.count("\n") == 1
    compile_graphs(lang, lang / "lm.arpa")
    assert main(args) == 0
    capsys.readouterr()
    # the lang dir changes (another word list: same tokens, other word ids); HLG.fst stays behind
    words = (lang / "words.txt").read_text().splitlines()
    (lang / "words.txt").write_text("\n".join(words[:2] + [words[3], words[2]] + words[4:]) + "\n")
    hlg_before = (lang / "HLG.fst").read_bytes()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "HLG.fst: built from another words.txt" in err and "toolkit compile-graph" in err
    assert (lang / "HLG.fst").read_bytes() == hlg_before  # decode never rebuilds graphs
    compile_graphs(lang, lang / "lm.arpa")
    assert main(args) == 0
    capsys.readouterr()
    (lang / "HLG.fst").write_bytes(b"")
    assert main(args) == 1
    assert "empty file" in capsys.readouterr().err


def test_long_utterances_are_decoded_in_windows_and_every_one_is_scored(tmp_path, lang):
    """An utterance longer than --chunk-above runs alone in overlapping windows (the code of
    toolkit transcribe): within one window that is exactly the plain forward; with several windows
    exactly `chunked_log_probs`; and the whole set is scored."""
    from lhotse import CutSet

    from toolkit.cli import main
    from toolkit.data.dataset import AudioDataset
    from toolkit.decode.chunking import ChunkOptions, chunked_log_probs

    ckpt, model, tok, cfg = tiny_checkpoint(tmp_path, lang)
    cuts_path, cuts = make_cuts(tmp_path, [("ab cab", "xx"), ("ba", "yy"), ("cob ab", "xx")])
    plain, one_window, windows = tmp_path / "plain", tmp_path / "one", tmp_path / "many"
    base = ["decode", "--checkpoint", str(ckpt), "--cuts", str(cuts_path), "--method", "greedy"]
    assert main(base + ["--out-dir", str(plain)]) == 0
    assert main(base + ["--out-dir", str(one_window), "--chunk-above", "0.5", "--chunk-s", "30"]) == 0
    assert read_hyps(one_window / "recogs.txt") == read_hyps(plain / "recogs.txt")
    assert main(base + ["--out-dir", str(windows), "--chunk-above", "0.5", "--chunk-s", "0.4",
                        "--context-s", "0.1"]) == 0
    raw = AudioDataset(drop_unfit=False)
    want = {}
    for cut in cuts:
        wav = raw[CutSet.from_cuts([cut])]["audio"][0]
        lp = chunked_log_probs(model, wav, ChunkOptions(chunk_s=0.4, context_s=0.1), normalize=cfg.normalize)
        want[cut.id] = greedy_decode(lp[None], None, tok)[0]
    got = read_hyps(windows / "recogs.txt")
    assert got == want and len(got) == 3


def test_decode_command_sweeps_on_dev_and_applies_the_choice_to_test(tmp_path, lang, capsys):
    import json

    from toolkit.cli import main

    ckpt, *_ = tiny_checkpoint(tmp_path, lang)
    compile_graphs(lang, lang / "lm.arpa")
    dev_cuts, _ = make_cuts(tmp_path, [("ab cab", "xx"), ("ba", "xx"), ("cob zzz", "xx")])
    dev = tmp_path / "decode" / "dev"
    base = ["decode", "--checkpoint", str(ckpt), "--lang-dir", str(lang), "--methods", "greedy,hlg"]
    assert main(base + ["--cuts", str(dev_cuts), "--out-dir", str(dev), "--sweep-lm-scales", "0.5,1,2",
                        "--sweep-word-penalties=-1,0,1"]) == 0
    rows = [ln.split("\t") for ln in (dev / "hlg" / "sweep.txt").read_text().splitlines() if not ln.startswith("#")]
    assert [(float(r[0]), float(r[1])) for r in rows] == [(s, p) for s in (0.5, 1.0, 2.0) for p in (-1.0, 0.0, 1.0)]
    tuning = json.loads((dev / "hlg" / "tuning.json").read_text())
    results = json.loads((dev / "hlg" / "results.json").read_text())
    # the dev outputs are those of the chosen setting, and say so
    assert results["lm"]["lm_scale"] == tuning["lm_scale"] and results["lm"]["word_penalty"] == tuning["word_penalty"]
    chosen = [r for r in rows if (float(r[0]), float(r[1])) == (tuning["lm_scale"], tuning["word_penalty"])][0]
    from toolkit.score.compute import ErrorStats

    assert float(chosen[2]) == pytest.approx(ErrorStats.from_dict(results["wer"]).rate, abs=0.01)
    assert min(float(r[3]) for r in rows) == float(chosen[3])
    # OOV rate of the references against the lang dir's words: "zzz" is 1 of 5 words
    assert results["oov"]["oov_words"] == 1 and results["oov"]["words"] == 5
    assert results["oov"]["oov_rate"] == pytest.approx(100 / 5)
    assert not (dev / "greedy" / "sweep.txt").exists() and "lm" not in json.loads((dev / "greedy" / "results.json").read_text())

    (tmp_path / "t").mkdir()
    test_cuts, _ = make_cuts(tmp_path / "t", [("ba ab", "xx")])
    test = tmp_path / "decode" / "test"
    assert main(base + ["--cuts", str(test_cuts), "--out-dir", str(test), "--tuning-from", str(dev)]) == 0
    lm = json.loads((test / "hlg" / "results.json").read_text())["lm"]
    assert (lm["lm_scale"], lm["word_penalty"]) == (tuning["lm_scale"], tuning["word_penalty"])
    assert lm["tuned_on"] == str(dev / "hlg" / "tuning.json")
    # RESULTS.md names the OOV rate and the LM setting of every LM decoding, and where it was chosen
    assert main(["results", "--exp-dir", str(tmp_path), "--out", str(tmp_path / "RESULTS.md")]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    scale, penalty = f"{tuning['lm_scale']:g}", f"{tuning['word_penalty']:g}"
    assert f"|{tmp_path.name}/dev/hlg|20.00|1 / 5|{scale}|{penalty}|dev sweep|" in md
    assert f"|{tmp_path.name}/test/hlg|0.00|0 / 2|{scale}|{penalty}|dev sweep|" in md
    assert f"{tmp_path.name}/dev/greedy|" not in md.split("## Vocabulary and LM weights")[1]
    capsys.readouterr()
    # no tuning for the method: one line naming the file and how to make it
    assert main(base + ["--cuts", str(test_cuts), "--out-dir", str(tmp_path / "x"), "--tuning-from", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no tuning.json for method hlg" in err and "--sweep-lm-scales" in err and err.count("\n") == 1
    # an explicit setting beside --tuning-from was silently replaced by the tuning
    for flag in ("--lm-scale", "--word-penalty"):
        assert main(base + ["--cuts", str(test_cuts), "--out-dir", str(tmp_path / "x"), "--tuning-from", str(dev),
                            flag, "0.5"]) == 1
        assert "give either --lm-scale/--word-penalty or --tuning-from" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(base[:-2] + ["--method", "greedy", "--cuts", str(test_cuts), "--out-dir", str(tmp_path / "y"),
                             "--sweep-lm-scales", "1,2"]) == 1
    assert "none of the methods greedy can be swept" in capsys.readouterr().err
    # a tuning chosen with graphs since rebuilt from another LM, or for a checkpoint trained again into
    # the same path, is refused (it was applied without a word)
    import os

    saved = {n: (lang / n).read_bytes() for n in ("graphs.json", "G_2.fst", "HLG.fst")}
    other_lm = tmp_path / "other_lm.arpa"
    other_lm.write_text((lang / "lm.arpa").read_text().replace("-1.5000\tcab", "-0.3000\tcab"))
    compile_graphs(lang, other_lm)
    assert main(base + ["--cuts", str(test_cuts), "--out-dir", str(tmp_path / "z"), "--tuning-from", str(dev)]) == 1
    assert "tuned with another HLG.fst" in capsys.readouterr().err
    for n, data in saved.items():
        (lang / n).write_bytes(data)
    st = os.stat(ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same path, written again
    assert main(base + ["--cuts", str(test_cuts), "--out-dir", str(tmp_path / "z"), "--tuning-from", str(dev)]) == 1
    assert "the file has changed since" in capsys.readouterr().err
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main(base + ["--cuts", str(test_cuts), "--out-dir", str(tmp_path / "z"), "--tuning-from", str(dev)]) == 0
    capsys.readouterr()
    # a tuning chosen for another checkpoint is refused (it was applied to any model)
    (tmp_path / "other_model").mkdir()
    other, *_ = tiny_checkpoint(tmp_path / "other_model", lang)
    other_base = ["decode", "--checkpoint", str(other), "--lang-dir", str(lang), "--methods", "greedy,hlg"]
    assert main(other_base + ["--cuts", str(test_cuts), "--out-dir", str(tmp_path / "z"), "--tuning-from", str(dev)]) == 1
    assert f"tuned for the checkpoint {ckpt.resolve()}" in capsys.readouterr().err
    # decoding dev again without a sweep into the same directory: its old tuning goes (it was reused)
    assert main(other_base + ["--cuts", str(dev_cuts), "--out-dir", str(dev)]) == 0
    assert not (dev / "hlg" / "tuning.json").exists() and not (dev / "hlg" / "sweep.txt").exists()
    assert main(other_base + ["--cuts", str(test_cuts), "--out-dir", str(tmp_path / "z"), "--tuning-from", str(dev)]) == 1
    assert "no tuning.json for method hlg" in capsys.readouterr().err
    # greedy decoded again with the first model beside the other model's hlg: one table would mix them
    assert main(base[:-2] + ["--methods", "greedy", "--cuts", str(dev_cuts), "--out-dir", str(dev)]) == 0
    capsys.readouterr()
    assert main(["results", "--exp-dir", str(tmp_path), "--out", str(tmp_path / "R2.md")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path.name}/decode/dev: greedy was decoded with {ckpt.resolve()}, hlg with {other.resolve()}" in err
    assert not (tmp_path / "R2.md").exists()


def test_lattice_best_paths_equal_openfst_shortest_path_per_setting(lang):
    """The sweep's dynamic programme against OpenFst's shortest path on the same lattice, re-weighted
    arc by arc, for flat (untrained-model) posteriors that make big lattices."""
    import kaldi_decoder
    import kaldifst

    from toolkit.decode.wfst import LatticeArcs, to_matrix
    from toolkit.lm.graph import read_fst

    compile_graphs(lang, lang / "lm.arpa")
    lg = Lang.load(lang)
    settings = [(0.3, 0.0), (1.0, 0.0), (1.0, 2.5), (2.0, -1.0), (5.0, 1.0)]
    graph = read_fst(lang / "HLG.fst")
    decoder = kaldi_decoder.LatticeSimpleDecoder(graph, kaldi_decoder.LatticeSimpleDecoderConfig(beam=12.0, lattice_beam=6.0))
    rng = np.random.default_rng(7)
    for T in (30, 80):
        lp = rng.normal(0.0, 0.7, size=(T, lg.num_tokens)).astype(np.float32)
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
        decoder.decode(kaldi_decoder.DecodableCtc(to_matrix(lp)))
        ok, lat = decoder.get_raw_lattice(use_final_probs=True)
        assert ok and lat.num_states > 100
        arcs = LatticeArcs.from_lattice(lat)
        ours = arcs.best_paths(settings)
        text = lat.to_str()
        for (scale, penalty), words in zip(settings, ours):
            lines = []
            for line in text.splitlines():
                p = line.split()
                if len(p) >= 4:
                    g, a = map(float, p[4].split(","))
                    lines.append(f"{p[0]} {p[1]} {p[3]} {p[3]} {a + scale * g + (penalty if p[3] != '0' else 0.0)}")
                elif p:
                    g, a = map(float, p[1].split(","))
                    lines.append(f"{p[0]} {a + scale * g}")
            best = kaldifst.shortest_path(kaldifst.compile("\n".join(lines) + "\n"))
            ok, _, want, _ = kaldifst.get_linear_symbol_sequence(best)
            assert ok and [w for w in want if w] == words, (T, scale, penalty)


def random_lattice(seed: int, num_states: int = 9, num_words: int = 4):
    """A small random acyclic lattice (`LatticeArcs`): arcs go forward, half of them word-less, two
    final states; and every complete path as (arc indices, final state index)."""
    from toolkit.decode.wfst import LatticeArcs

    rng = np.random.default_rng(seed)
    arcs = [(i, j) for i in range(num_states - 1) for j in range(i + 1, min(i + 4, num_states)) if rng.random() < 0.8]
    arcs += [(i, i + 1) for i in range(num_states - 1) if (i, i + 1) not in arcs]  # connected
    E = len(arcs)
    olabel = np.where(rng.random(E) < 0.5, 0, rng.integers(1, num_words + 1, E))
    finals = np.array([num_states - 2, num_states - 1])
    lat = LatticeArcs(0, num_states, np.array([a for a, _ in arcs]), np.array([b for _, b in arcs]), olabel,
                      rng.uniform(0, 3, E), rng.uniform(0, 5, E), finals, rng.uniform(0, 1, 2), rng.uniform(0, 1, 2))
    paths = []

    def walk(state, taken):
        for k, f in enumerate(finals):
            if f == state:
                paths.append((list(taken), k))
        for e in np.flatnonzero(lat.src == state):
            walk(int(lat.dst[e]), taken + [int(e)])

    walk(0, [])
    return lat, paths


def first_pass_cost(lat, path):
    arcs, k = path
    return float(sum(lat.acoustic[e] + lat.graph[e] for e in arcs) + lat.final_acoustic[k] + lat.final_graph[k])


@pytest.mark.parametrize("seed", range(4))
def test_lattice_pruning_keeps_exactly_the_paths_within_the_beam(seed):
    """`LatticeArcs.margins`, `pruned` and `bounded` against every path of a random lattice, enumerated."""
    lat, paths = random_lattice(seed)
    costs = [first_pass_cost(lat, p) for p in paths]
    best = min(costs)
    want_arc = np.full(len(lat.src), np.inf)
    want_final = np.full(len(lat.final_state), np.inf)
    for (arcs, k), c in zip(paths, costs):
        want_arc[arcs] = np.minimum(want_arc[arcs], c - best)
        want_final[k] = min(want_final[k], c - best)
    arc_margin, final_margin = lat.margins
    assert len(paths) > 20 and np.allclose(arc_margin, want_arc) and np.allclose(final_margin, want_final)
    for beam in (0.5, 2.0, 4.0):
        kept = lat.pruned(beam)
        assert sorted(zip(kept.src.tolist(), kept.dst.tolist())) == \
            sorted((int(lat.src[e]), int(lat.dst[e])) for e in np.flatnonzero(want_arc <= beam))
    for max_arcs in (6, 12):
        small, beam = lat.bounded(max_arcs=max_arcs, beam=8.0)
        next_margin = arc_margin[arc_margin > beam].min()  # the largest beam: one more step keeps too many
        assert len(small.src) <= max_arcs < len(lat.pruned(next_margin).src)
    assert lat.bounded(max_arcs=len(lat.src), beam=8.0) == (lat, None)


@pytest.mark.parametrize("seed", range(4))
def test_word_lattice_holds_each_word_sequence_at_its_best_cost_and_stays_bounded(seed):
    """The determinised word lattice rescoring composes with G, against the enumerated paths: every
    word sequence once, at its best (acoustic + penalty x words) / lm_scale; over its state bound, the
    same of the lattice pruned to the beam it names (the margins are checked above)."""
    import kaldifst

    from toolkit.decode.wfst import word_lattice

    lat, paths = random_lattice(seed, num_states=12, num_words=6)
    scale, penalty = 0.5, 1.0

    def sequences(fst):
        got = {}
        for p in kaldifst.convert_nbest_to_vector(kaldifst.shortest_path(fst, n=100000)):
            ok, _, seq, w = kaldifst.get_linear_symbol_sequence(p)
            got[tuple(seq)] = float(w.value)
        return got

    def enumerated(beam=np.inf):
        """The paths left by pruning to ``beam``: those whose arcs and final state all lie on some
        path within the beam of the best (`LatticeArcs.pruned`)."""
        arc_margin, final_margin = lat.margins
        want = {}
        for arcs, k in paths:
            if max(arc_margin[arcs].max(initial=0), final_margin[k]) > beam:
                continue
            seq = tuple(int(lat.olabel[e]) for e in arcs if lat.olabel[e])
            cost = (sum(lat.acoustic[e] for e in arcs) + penalty * len(seq) + lat.final_acoustic[k]) / scale
            want[seq] = min(want.get(seq, np.inf), cost)
        return want

    fst, pruned_to = word_lattice(lat, scale, penalty, beam=8.0, max_states=10000)
    want = enumerated()
    got = sequences(fst)
    assert pruned_to is None and len(want) > 10 and got.keys() == want.keys()
    assert all(np.isclose(got[s], want[s], rtol=1e-4, atol=2e-3) for s in want)  # float32 weights
    limit = fst.num_states - 2
    small, pruned_to = word_lattice(lat, scale, penalty, beam=8.0, max_states=limit)
    got = sequences(small)
    want = enumerated(pruned_to)
    assert pruned_to is not None and small.num_states < limit and got.keys() == want.keys()
    assert all(np.isclose(got[s], want[s], rtol=1e-4, atol=2e-3) for s in want)  # float32 weights


def test_word_lattice_of_tied_paths_over_its_bound_keeps_one_best_path():
    """Exactly flat scores: 2^4 word sequences tied at the best cost overflow a 4-state bound at any
    beam; the halving stops and one of the tied sequences is kept."""
    import kaldifst

    from toolkit.decode.wfst import LatticeArcs, word_lattice

    src = np.repeat(np.arange(4), 2)
    lat = LatticeArcs(0, 5, src, src + 1, np.tile([1, 2], 4) + 2 * src, np.ones(8), np.ones(8), np.array([4]),
                      np.zeros(1), np.zeros(1))
    fst, pruned_to = word_lattice(lat, 1.0, 0.0, beam=8.0, max_states=4)
    paths = kaldifst.convert_nbest_to_vector(kaldifst.shortest_path(fst, n=100))
    assert pruned_to == 0.0 and len(paths) == 1
    ok, _, seq, _ = kaldifst.get_linear_symbol_sequence(paths[0])
    assert ok and [w - 2 * k in (1, 2) for k, w in enumerate(seq)] == [True] * 4


def test_rescoring_a_barely_trained_models_lattice_is_pruned_to_its_bound(tmp_path, caplog, monkeypatch):
    """A near-uniform model's lattice holds more word sequences than a composition with a 4-gram can
    hold (composing it whole ran for minutes and gigabytes): hlg-rescore prunes it to its bound, says
    so, and still answers, whole-lattice and n-best alike."""
    import logging

    import kaldi_decoder

    from toolkit.decode.options import lattice_bounds
    from toolkit.decode.wfst import LatticeArcs, read_fst, to_matrix

    lang_dir = tmp_path / "lang"
    lg, lp = flat_model_lang(lang_dir)
    graph = read_fst(lang_dir / "HLG.fst")
    decoder = kaldi_decoder.LatticeSimpleDecoder(graph, kaldi_decoder.LatticeSimpleDecoderConfig(beam=10.0, lattice_beam=8.0))
    decoder.decode(kaldi_decoder.DecodableCtc(to_matrix(lp)))
    raw = LatticeArcs.from_lattice(decoder.get_raw_lattice(use_final_probs=True)[1])
    max_arcs, max_states = lattice_bounds(lp.shape[0])
    assert len(raw.src) > 10 * max_arcs  # the case this is about
    import toolkit.decode.wfst as wfst

    answers = []  # what each rescoring found (None would mean the first pass was kept instead)

    def spy(*a, **kw):
        answers.append(rescore_word_fst(*a, **kw))
        return answers[-1]

    rescore_word_fst = wfst.rescore_word_fst
    monkeypatch.setattr(wfst, "rescore_word_fst", spy)
    for num_paths in (0, 50):
        caplog.clear()
        answers.clear()
        with caplog.at_level(logging.WARNING, logger="toolkit.decode"):
            # the same setting three times in one sweep: each from the same bounded lattice (the search's
            # probe off: it would lower the beams first, the next test; this is the bound behind it)
            out = decode_matrices([lp], "hlg-rescore", lang_dir / "HLG.fst", SearchOptions(beam=10.0, num_paths=num_paths, probe_arcs=0),
                                  rescore_g=lang_dir / "G_4_rescore.fst", backoff_id=lg.words["#0"],
                                  settings=[(1.0, 0.0)] * 3)[0][0]
        assert len(answers) == 3 and all(a is not None and len(a) >= 3 for a in answers)
        assert out == [answers[0]] * 3
        warned = [r.getMessage() for r in caplog.records if "was pruned to beam" in r.getMessage()]
        assert len(warned) == 1 and f"under {max_arcs} arcs and a {max_states}-state word lattice" in warned[0]


def test_lattice_search_of_flat_posteriors_lowers_its_beams_and_of_peaky_ones_does_not(tmp_path, caplog, monkeypatch):
    """kaldi-decoder's lattice search has no max-active: on a barely trained model's near-flat
    posteriors its beams are lowered (a probe on the least certain frames keeps too many lattice
    arcs), with a warning, and the answer is that of the search at the lowered beams; a confident
    model's search is left exactly as configured. Checked against kaldi-decoder called directly."""
    import logging

    import kaldi_decoder

    import toolkit.decode.wfst as wfst
    from toolkit.decode.wfst import LatticeArcs, LatticeSearch, read_fst, to_matrix

    lang_dir = tmp_path / "lang"
    lg, flat = flat_model_lang(lang_dir)
    graph = read_fst(lang_dir / "HLG.fst")
    # a confident model: one token per frame far above the rest (the flat model's argmax)
    peaky = np.full_like(flat, -30.0)
    peaky[np.arange(len(flat)), flat.argmax(axis=1)] = 0.0

    def direct(lp, beam, lattice_beam):  # best word sequence and lattice arcs, kaldi-decoder alone
        dec = kaldi_decoder.LatticeSimpleDecoder(graph, kaldi_decoder.LatticeSimpleDecoderConfig(beam=beam, lattice_beam=lattice_beam))
        dec.decode(kaldi_decoder.DecodableCtc(to_matrix(lp)))
        arcs = LatticeArcs.from_lattice(dec.get_raw_lattice(use_final_probs=True)[1])
        return arcs.best_paths([(1.0, 0.0)])[0], len(arcs.src)

    opts = SearchOptions(beam=16.0, lattice_beam=8.0)
    search = LatticeSearch(lang_dir / "HLG.fst", None, None, opts)
    for lp, lowered in ((flat, True), (peaky, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="toolkit.decode"):
            beam, lattice_beam = search.search_beams(lp)
            words = search.decode(lp)
        warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lattice search:")]
        want, size = direct(lp, beam, lattice_beam)
        assert words == want and len(words) > 0
        if lowered:
            assert beam < opts.beam and lattice_beam < opts.lattice_beam and len(warned) == 2  # search_beams, decode
            assert f"(over {opts.probe_arcs:g})" in warned[0] and f"searched at beam {beam:.3g}" in warned[0]
            assert size * 10 < direct(lp, opts.beam, opts.lattice_beam)[1]  # the lattice it would have searched
        else:
            assert (beam, lattice_beam) == (opts.beam, opts.lattice_beam) and warned == []
    # --probe-arcs 0: the configured search, whatever the posteriors
    off = SearchOptions(beam=16.0, lattice_beam=8.0, probe_arcs=0)
    assert LatticeSearch(lang_dir / "HLG.fst", None, None, off).search_beams(flat) == (16.0, 8.0)
    # no path survives the rescoring LM: the first pass's best path, not an error (it raised before)
    monkeypatch.setattr(wfst, "rescore_word_fst", lambda *a, **kw: None)
    rescore = LatticeSearch(lang_dir / "HLG.fst", lang_dir / "G_4_rescore.fst", lg.words["#0"], opts)
    assert rescore.decode(peaky) == direct(peaky, opts.beam, opts.lattice_beam)[0]


@pytest.mark.parametrize("bad", [{"beam": float("inf")}, {"lattice_beam": float("nan")}, {"probe_arcs": -1.0},
                                 {"probe_arcs": float("inf")}])
def test_search_options_refuse_beams_no_search_can_use(bad):
    from toolkit.utils import ToolkitError

    with pytest.raises(ToolkitError, match="must be"):
        SearchOptions(**bad).check()
