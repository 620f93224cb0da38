"""CTC decoders: greedy against the collapsing rule, HLG (kaldi-decoder) on known paths, the LM
fixing what acoustics alone get wrong, lattice rescoring with a larger LM, parallel workers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from graph_fixtures import FOUR_WORDS as WORDS
from graph_fixtures import char_lang, ctc_frames, four_word_lang, spell_ids
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
    out = decode_matrices(mats, method, lang_dir / "HLG.fst", SearchOptions(**kw.pop("opts", {})), nj=nj,
                          backoff_id=lg.words["#0"], **kw)
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
    lp[:, lg.tokens["a"]] = np.maximum(lp[:, lg.tokens["a"]], lp[:, lg.tokens["o"]])  # a tie
    assert hlg_words(lang, [lp]) == ["ab cob"]
    from toolkit.lm.graph import rescore_grammar

    g2 = rescore_grammar(lang, lang / "lm.arpa")
    assert hlg_words(lang, [lp], method="hlg-rescore", rescore_g=g2) == ["ab cab"]
    # n-best rescoring agrees once the right sentence is among the n best; a 1-best list cannot fix it
    assert hlg_words(lang, [lp], method="hlg-rescore", rescore_g=g2, opts={"num_paths": 10}) == ["ab cab"]
    assert hlg_words(lang, [lp], method="hlg-rescore", rescore_g=g2, opts={"num_paths": 1}) == ["ab cob"]
    # a clear acoustic signal is not overruled by the rescoring LM
    clear = ctc_frames(spell_ids(lang, "ab cob"), lg.num_tokens, peak=12.0)
    assert hlg_words(lang, [clear], method="hlg-rescore", rescore_g=g2) == ["ab cob"]
    with pytest.raises(ToolkitError, match="--rescore-lm"):
        hlg_words(lang, [lp], method="hlg-rescore")


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
