"""k2 backend (optional): the same test data through k2 and through independent references must agree.

Skipped where k2 is not installed (`local/run_tests.sh` says so on one line); wherever it is
(a build of local/install_k2.sh, CPU or CUDA), these tests compare k2-ctc with greedy decoding,
k2-hlg with kaldi-decoder's hlg, both k2 rescoring methods with kaldifst's hlg-rescore at several
LM scales, and k2's CTC loss with torch's.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

k2 = pytest.importorskip("k2")

from graph_fixtures import ctc_frames, flat_model_lang, four_word_lang, spell_ids  # noqa: E402
from toolkit.decode.greedy import greedy_ids  # noqa: E402
from toolkit.decode.k2_decode import K2Search  # noqa: E402
from toolkit.decode.options import SearchOptions  # noqa: E402
from toolkit.decode.wfst import decode_matrices  # noqa: E402
from toolkit.lm.graph import GraphCache, Lang, compile_graphs, rescore_grammar  # noqa: E402
from toolkit.lm.k2_graph import save_k2_graphs, save_k2_rescore_grammar  # noqa: E402
from toolkit.utils import ToolkitError  # noqa: E402

pytestmark = pytest.mark.k2
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def lang(tmp_path):
    return four_word_lang(tmp_path / "lang")


def options(**kw):
    return SearchOptions(**{"beam": 20.0, "max_active": 10000, **kw})


def batch(mats):
    lengths = torch.tensor([m.shape[0] for m in mats])
    return torch.nn.utils.rnn.pad_sequence([torch.from_numpy(m) for m in mats], batch_first=True), lengths


class Tok:
    def __init__(self, n):
        self.vocab_size = n

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_k2_ctc_equals_greedy():
    rng = np.random.default_rng(0)
    mats = [torch.from_numpy(rng.normal(size=(n, 6)).astype(np.float32)).log_softmax(-1).numpy() for n in (9, 20, 3)]
    lp, lengths = batch(mats)
    search = K2Search("k2-ctc", options(), None, Tok(6), DEVICE)
    assert search.decode_ids(lp, lengths) == greedy_ids(lp, lengths)


def test_k2_hlg_equals_kaldi_hlg(lang):
    compile_graphs(lang, lang / "lm.arpa")
    save_k2_graphs(lang, lang / "lm.arpa")
    lg = Lang.load(lang)
    sentences = ["ab cab", "ba ab cob", "cob"]
    mats = [ctc_frames(spell_ids(lang, s), lg.num_tokens, seed=i) for i, s in enumerate(sentences)]
    mats.append(ctc_frames(spell_ids(lang, "ab cab"), lg.num_tokens, ambiguous={4: [lg.tokens["o"]]}))
    kaldi = [ids for ids, _ in decode_matrices(mats, "hlg", lang / "HLG.fst", SearchOptions())]
    lp, lengths = batch(mats)
    search = K2Search("k2-hlg", options(), lang, None, DEVICE)
    assert search.decode_ids(lp, lengths) == kaldi
    assert [" ".join(lg.words_of(k)) for k in kaldi] == sentences + ["ab cab"]
    # one DenseFsaVec per batch: the same words as one utterance at a time (and an empty one is empty)
    for m, want in zip(mats, kaldi):
        assert search.decode_ids(*batch([m])) == [want]
    lp0, len0 = batch(mats[:2] + [np.zeros((0, lg.num_tokens), np.float32)])
    assert search.decode_ids(lp0, len0) == kaldi[:2] + [[]]


def rescoring_lang(lang):
    """First pass with the unigram part of lm.arpa; the whole bigram LM as the rescoring LM (k2 form too)."""
    compile_graphs(lang, lang / "lm.arpa", order=1)
    g2, _ = rescore_grammar(lang, lang / "lm.arpa")
    save_k2_graphs(lang, lang / "lm.arpa", order=1)
    pt = save_k2_rescore_grammar(lang)
    assert pt.name == "G_2gram.pt" and pt.name in GraphCache(lang).graphs
    return Lang.load(lang), g2


def kaldi_rescore(lang, lg, g2, mats, **kw):
    return [ids for ids, _ in decode_matrices(mats, "hlg-rescore", lang / "HLG.fst", SearchOptions(**kw),
                                              rescore_g=g2, backoff_id=lg.words["#0"])]


@pytest.mark.parametrize("method,num_paths", [("k2-nbest-rescore", 10), ("k2-whole-lattice-rescore", 0)])
def test_k2_rescoring_equals_hlg_rescore(lang, method, num_paths):
    lg, g2 = rescoring_lang(lang)
    # a/o tie in "cab": the unigram first pass says "cob", the bigram after "ab" says "cab"
    lp1 = ctc_frames(spell_ids(lang, "ab cab"), lg.num_tokens, ambiguous={4: [lg.tokens["o"]]})
    lp1[:, lg.tokens["a"]] = np.maximum(lp1[:, lg.tokens["a"]], lp1[:, lg.tokens["o"]])
    mats = [lp1, ctc_frames(spell_ids(lang, "ba ab cob"), lg.num_tokens, seed=3),
            ctc_frames(spell_ids(lang, "ab cob"), lg.num_tokens, peak=12.0)]
    kaldi = kaldi_rescore(lang, lg, g2, mats, num_paths=num_paths)
    assert [lg.words_of(k) for k in kaldi] == [["ab", "cab"], ["ba", "ab", "cob"], ["ab", "cob"]]
    first_pass = K2Search("k2-hlg", options(), lang, None, DEVICE).decode_ids(*batch(mats[:1]))
    assert lg.words_of(first_pass[0]) == ["ab", "cob"]  # so the rescoring is what fixes it
    search = K2Search(method, options(num_paths=num_paths or None), lang, None, DEVICE)
    assert search.decode_ids(*batch(mats)) == kaldi


@pytest.mark.parametrize("method,num_paths", [("k2-nbest-rescore", 20), ("k2-whole-lattice-rescore", 0)])
def test_lm_scale_sweep_from_one_lattice_equals_a_decoding_per_scale(lang, method, num_paths):
    lg, g2 = rescoring_lang(lang)
    # the acoustics say "cob", a hair louder than "cab"; the bigram after "ab" says "cab"
    lp = ctc_frames(spell_ids(lang, "ab cab"), lg.num_tokens, ambiguous={4: [lg.tokens["o"]]}, peak=3.0, noise=0.0)
    lp[:, lg.tokens["o"]] += 0.4 * (lp[:, lg.tokens["o"]] > -1.0)
    scales = (0.05, 0.3, 1.0, 3.0)
    kaldi = {s: kaldi_rescore(lang, lg, g2, [lp], num_paths=num_paths, lm_scale=s)[0] for s in scales}
    words = {s: lg.words_of(k) for s, k in kaldi.items()}
    assert words[0.05] == ["ab", "cob"] and words[3.0] == ["ab", "cab"], words  # the scale matters here
    sweep = [(s, 0.0) for s in scales]
    search = K2Search(method, options(num_paths=num_paths or None, lm_scale=1.0), lang, None, DEVICE, sweep=sweep)
    per_setting = search.decode_settings(*batch([lp]))
    assert {s: per_setting[(s, 0.0)][0] for s in scales} == kaldi
    hyp = search(*batch([lp]))[0]
    assert hyp.text == " ".join(words[1.0])
    assert hyp.sweep == [" ".join(words[s]) for s in scales]


@pytest.mark.parametrize("method", ["k2-hlg", "k2-nbest-rescore", "k2-whole-lattice-rescore"])
def test_lm_scale_and_word_penalty_sweep_equals_the_wfst_sweep(lang, method):
    """One (lm_scale, word_penalty) grid through both backends: the same words for every setting."""
    lg, g2 = rescoring_lang(lang)
    sentences = ["ab cab", "ba ab cob", "cob", "ab ab ba"]
    mats = [ctc_frames(spell_ids(lang, s), lg.num_tokens, seed=i, peak=2.5) for i, s in enumerate(sentences)]
    mats.append(ctc_frames(spell_ids(lang, "ab cab"), lg.num_tokens, ambiguous={4: [lg.tokens["o"]]}, peak=2.0))
    # "ab ab" whose second word (frames 10-17: a, b, |) is about as likely blank: the LM scale and
    # the penalty decide between one word and two
    for shift in (-0.5, 0.0, 0.3):
        lp = ctc_frames(spell_ids(lang, "ab ab"), lg.num_tokens, seed=1)
        lp[10:18, 0] = lp[10:18].max(axis=1) + shift
        mats.append(lp)
    grid = [(s, p) for s in (0.3, 1.0, 2.0) for p in (-2.0, 0.0, 3.0)]
    wfst_method = "hlg" if method == "k2-hlg" else "hlg-rescore"
    num_paths = 20 if method == "k2-nbest-rescore" else 0
    kaldi = [ids for ids, _ in decode_matrices(mats, wfst_method, lang / "HLG.fst",
                                                SearchOptions(num_paths=num_paths, lattice_beam=20.0),
                                                rescore_g=g2 if wfst_method == "hlg-rescore" else None,
                                                backoff_id=lg.words["#0"], settings=grid)]
    # k2's n-best is sampled: enough samples to meet every distinct sequence of these small lattices
    search = K2Search(method, options(num_paths=num_paths * 10 or None, lattice_beam=20.0), lang, None, DEVICE,
                      sweep=grid)
    per_setting = search.decode_settings(*batch(mats))
    for k, setting in enumerate(grid):
        assert per_setting[setting] == [per_mat[k] for per_mat in kaldi], setting
    # the grid changes the words somewhere (else this test would prove nothing)
    assert len({tuple(map(tuple, per_setting[g])) for g in grid}) > 1
    hyps = search(*batch(mats))
    assert [h.sweep for h in hyps] == [[" ".join(lg.words_of(per_setting[g][b])) for g in grid] for b in range(len(mats))]


def test_k2_rescoring_needs_the_k2_rescoring_grammar(lang):
    compile_graphs(lang, lang / "lm.arpa", order=1)
    save_k2_graphs(lang, lang / "lm.arpa", order=1)
    with pytest.raises(ToolkitError, match="--rescore-lm"):
        K2Search("k2-whole-lattice-rescore", options(), lang, None, DEVICE)
    rescore_grammar(lang, lang / "lm.arpa")
    with pytest.raises(ToolkitError, match=r"G_2gram\.pt: not found.*--rescore-lm BIG_LM --k2"):
        K2Search("k2-nbest-rescore", options(), lang, None, DEVICE)


def test_compile_graph_k2_writes_and_records_the_k2_graphs(lang):
    from toolkit.cli import main

    assert main(["compile-graph", "--lang-dir", str(lang), "--lm", str(lang / "lm.arpa"), "--order", "1",
                 "--rescore-lm", str(lang / "lm.arpa"), "--k2"]) == 0
    graphs = json.loads((lang / "graphs.json").read_text())["graphs"]
    assert {"HLG.pt", "G_2gram.pt"} <= set(graphs)
    G = k2.Fsa.from_dict(torch.load(lang / "G_2gram.pt", weights_only=False))
    lg = Lang.load(lang)
    assert not hasattr(G, "aux_labels") and lg.words["#0"] not in G.labels.tolist()  # back-off is epsilon
    # the G of "ab cab": its score is the bigram LM's log-probability (ln 10 x the ARPA's log10 sums)
    words = k2.linear_fsa([[lg.words["ab"], lg.words["cab"]]])
    scored = k2.intersect(k2.arc_sort(G), k2.add_epsilon_self_loops(words), treat_epsilons_specially=False)
    want = (-0.10 - 0.05 - 0.05) * np.log(10)  # <s> ab, ab cab, cab </s>
    assert float(k2.shortest_path(k2.connect(scored), True).scores.sum()) == pytest.approx(want, abs=1e-4)


# ---------------------------------------------------------------------------------------- CTC loss

def random_batch(seed, B=6, T=24, V=7, L=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    out_lengths = torch.randint(T // 3, T + 1, (B,), generator=g)
    out_lengths[0] = T
    target_lengths = torch.randint(0, L + 1, (B,), generator=g)
    targets = torch.full((B, L), -1)
    for b in range(B):
        targets[b, : target_lengths[b]] = torch.randint(1, V, (int(target_lengths[b]),), generator=g)
    targets[1, :4] = torch.tensor([2, 2, 3, 3])  # repeats need a blank between them
    target_lengths[1] = 4
    out_lengths[1] = 5  # 4 labels + 2 repeats = 6 frames needed: dropped by the standard topology
    return logits, out_lengths, targets, target_lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k2_ctc_loss_equals_torch_ctc_loss(seed):
    from toolkit.model.wav2vec2 import ctc_loss
    from toolkit.train.ctc import make_ctc_loss

    logits, out_lengths, targets, target_lengths = random_batch(seed)
    ref = ctc_loss(logits.log_softmax(-1), out_lengths, targets, target_lengths)
    (g_ref,) = torch.autograd.grad(ref.loss, logits)
    got = make_ctc_loss("k2")(logits.log_softmax(-1), out_lengths, targets, target_lengths)
    (g_got,) = torch.autograd.grad(got.loss, logits)
    assert (got.kept, got.dropped) == (ref.kept, ref.dropped) and ref.dropped >= 1
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-5, atol=1e-5)
    # gradients w.r.t. the logits (torch's CTC backward assumes log-softmax inputs)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-4)
    # one utterance at a time: the same per-utterance losses
    for b in range(logits.shape[0]):
        sl = slice(b, b + 1)
        one_ref = ctc_loss(logits[sl].log_softmax(-1), out_lengths[sl], targets[sl], target_lengths[sl])
        one_got = make_ctc_loss("k2")(logits[sl].log_softmax(-1), out_lengths[sl], targets[sl], target_lengths[sl])
        torch.testing.assert_close(one_got.loss, one_ref.loss, rtol=1e-5, atol=1e-5)


def modified_ctc_reference(lp: torch.Tensor, labels: list[int]) -> float:
    """-log P(labels) under k2's modified CTC topology, by enumerating every frame labelling.

    The topology's paths: each label is a run of one or more frames of that token, runs in label
    order, blank frames only between runs (or at the ends); two runs of the same token may touch.
    """
    T, _ = lp.shape
    total = []

    def runs(t, k, score):
        if k == len(labels):
            rest = float(lp[t:, 0].sum())
            total.append(score + rest)
            return
        for start in range(t, T):  # blanks from t to start-1, then a run of labels[k]
            blanks = float(lp[t:start, 0].sum())
            for end in range(start + 1, T + 1):
                runs(end, k + 1, score + blanks + float(lp[start:end, labels[k]].sum()))

    runs(0, 0, 0.0)
    return -float(torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0)) if total else float("inf")


def test_k2_modified_topology_loss_by_enumeration():
    from toolkit.train.ctc import make_ctc_loss

    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 7, 4, generator=g).log_softmax(-1)
    targets = torch.tensor([[1, 1, 2], [3, 2, -1], [2, 2, 2]])
    target_lengths = torch.tensor([3, 2, 3])
    out_lengths = torch.tensor([7, 6, 3])  # [2, 2, 2] in 3 frames: only the modified topology aligns it
    got = make_ctc_loss("k2", "modified")(lp, out_lengths, targets, target_lengths)
    want = sum(modified_ctc_reference(lp[b, : out_lengths[b]], targets[b, : target_lengths[b]].tolist())
               for b in range(3))
    assert (got.kept, got.dropped) == (3, 0)
    assert float(got.loss) == pytest.approx(want, rel=1e-5)
    std = make_ctc_loss("k2", "standard")(lp, out_lengths, targets, target_lengths)
    assert (std.kept, std.dropped) == (2, 1)


def test_training_config_chooses_the_ctc_loss(tmp_path):
    from toolkit.train.config import load_config
    from toolkit.train.ctc import K2CtcLoss

    cfg = load_config(None, "finetune", ["exp_dir=exp/x", "train.ctc_loss=k2", "train.ctc_topo=modified"])
    assert (cfg.train.ctc_loss, cfg.train.ctc_topo) == ("k2", "modified")
    from toolkit.train.ctc import make_ctc_loss

    loss = make_ctc_loss(cfg.train.ctc_loss, cfg.train.ctc_topo)
    assert isinstance(loss, K2CtcLoss) and loss.modified
    with pytest.raises(ToolkitError, match="train.ctc_topo: modified needs train.ctc_loss=k2"):
        load_config(None, "finetune", ["exp_dir=exp/x", "train.ctc_topo=modified"])
    with pytest.raises(ToolkitError, match="train.ctc_loss: 'warp' is not one of torch, k2"):
        load_config(None, "finetune", ["exp_dir=exp/x", "train.ctc_loss=warp"])


# ---------------------------------------------------------------------------------------- CLI

def test_decode_command_sweeps_on_dev_and_applies_the_choice_to_test(tmp_path, lang, capsys):
    from test_decode import make_cuts, read_hyps, tiny_checkpoint
    from toolkit.cli import main

    rescoring_lang(lang)
    ckpt, *_ = tiny_checkpoint(tmp_path, lang)
    cuts, _ = make_cuts(tmp_path, [("ab cab", "xx"), ("ba", "xx"), ("cob ab", "xx")])
    dev = tmp_path / "dev"
    common = ["decode", "--checkpoint", str(ckpt), "--cuts", str(cuts), "--lang-dir", str(lang), "--device", "cpu",
              "--max-duration", "2.0"]
    methods = "k2-ctc,k2-hlg,k2-nbest-rescore,k2-whole-lattice-rescore"
    assert main([*common, "--methods", methods, "--out-dir", str(dev), "--sweep-lm-scales", "0.5,2",
                 "--sweep-word-penalties=-1,0"]) == 0
    for m in methods.split(",")[1:]:
        tuning = json.loads((dev / m / "tuning.json").read_text())
        assert len(tuning["grid"]) == 4 and (tuning["lm_scale"], tuning["word_penalty"]) in \
            {(s, p) for s in (0.5, 2.0) for p in (-1.0, 0.0)}
        assert (dev / m / "sweep.txt").is_file()
        res = json.loads((dev / m / "results.json").read_text())
        assert res["lm"]["lm_scale"] == tuning["lm_scale"] and res["num_sentences"] == 3
    assert not (dev / "k2-ctc" / "tuning.json").exists()
    # the test set (here the same cuts) with the dev choice gives the dev hypotheses of that choice
    test = tmp_path / "test"
    assert main([*common, "--methods", methods, "--out-dir", str(test), "--tuning-from", str(dev)]) == 0
    for m in methods.split(","):
        assert read_hyps(test / m / "recogs.txt") == read_hyps(dev / m / "recogs.txt"), m
    capsys.readouterr()
    assert main([*common, "--method", "k2-ctc", "--out-dir", str(tmp_path / "x"), "--sweep-lm-scales", "0.5"]) == 1
    assert "none of the methods k2-ctc can be swept" in capsys.readouterr().err
    assert main([*common, "--method", "k2-hlg", "--out-dir", str(tmp_path / "x"), "--tuning-from", str(tmp_path)]) == 1
    assert "no tuning.json for method k2-hlg" in capsys.readouterr().err


@pytest.mark.slow
def test_finetuning_with_the_k2_loss_follows_the_torch_loss(tmp_path, lang):
    """`train.ctc_loss: k2` through the whole training step: the same losses as torch's, update by update."""
    import subprocess
    import sys
    from pathlib import Path

    from test_decode import make_cuts

    cuts, _ = make_cuts(tmp_path, [("ab cab", "xx"), ("ba", "xx"), ("cob ab", "xx"), ("cab ba", "xx")])
    config = Path(__file__).resolve().parents[1] / "toolkit" / "train" / "configs" / "finetune_tiny.yaml"
    losses = {}
    for kind in ("torch", "k2"):
        exp = tmp_path / f"exp_{kind}"
        r = subprocess.run([sys.executable, "-m", "toolkit.cli", "finetune", "--config", str(config),
                            "--set", f"exp_dir={exp}", "--set", f"data.train_cuts=[{cuts}]", "--set", "data.dev_cuts=[]",
                            "--set", f"data.lang_dir={lang}", "--set", "train.max_updates=4",
                            "--set", "train.log_interval=1", "--set", "train.device=cpu",
                            "--set", f"train.ctc_loss={kind}"], capture_output=True, text=True, timeout=900,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
        losses[kind] = [row["loss"] for row in rows if row["split"] == "train"]
    assert len(losses["torch"]) == 4
    np.testing.assert_allclose(losses["k2"], losses["torch"], rtol=1e-4)


@pytest.mark.parametrize("method", ["k2-nbest-rescore", "k2-whole-lattice-rescore"])
def test_k2_rescoring_of_a_barely_trained_models_lattice_is_pruned_to_its_bound(tmp_path, method, caplog, monkeypatch):
    """A near-uniform model's lattice (tens of arcs per frame beyond the bound) made k2's rescoring
    grow past 10 GB: it is pruned on arc posteriors to its bound first, with a warning, and answers."""
    import logging

    from toolkit.decode.k2_decode import get_lattice
    from toolkit.decode.options import lattice_bounds

    lang_dir = tmp_path / "lang"
    lg, lp = flat_model_lang(lang_dir)
    save_k2_graphs(lang_dir, lang_dir / "lm4.arpa", order=2)
    save_k2_rescore_grammar(lang_dir)
    search = K2Search(method, SearchOptions(), lang_dir, None, DEVICE)
    max_arcs = lattice_bounds(lp.shape[0])[0]
    lattice, _ = get_lattice(search.graph, *batch([lp]), search.opts)
    assert lattice.num_arcs > 10 * max_arcs  # the case this is about
    import toolkit.decode.k2_decode as k2_decode

    name = "nbest_rescore" if method == "k2-nbest-rescore" else "whole_lattice_rescore"
    rescore, answers = getattr(k2_decode, name), []  # None would mean the first pass was kept instead
    monkeypatch.setattr(k2_decode, name, lambda *a, **kw: answers.append(rescore(*a, **kw)) or answers[-1])
    with caplog.at_level(logging.WARNING, logger="toolkit.decode"):
        ids = search.decode_ids(*batch([lp]))
    assert len(answers) == 1 and ids == answers[0][(1.0, 0.0)] and len(ids[0]) >= 3
    warned = [r.getMessage() for r in caplog.records if "was pruned to" in r.getMessage()]
    assert len(warned) == 1 and f"to stay under {max_arcs}" in warned[0]
    kept = int(warned[0].split(" was pruned to ")[1].split()[0])
    assert kept <= max_arcs
