"""k2 backend (optional): the same test data through k2 and through kaldi-decoder must agree.

Skipped where k2 is not installed; wherever it is (e.g. a CUDA box with k2's wheel), these tests
compare k2-ctc with greedy decoding, k2-hlg with hlg, and k2-nbest-rescore with hlg-rescore.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

k2 = pytest.importorskip("k2")

from graph_fixtures import FOUR_WORDS as WORDS  # noqa: E402
from graph_fixtures import ctc_frames, four_word_lang, spell_ids  # noqa: E402
from toolkit.decode.greedy import greedy_ids  # noqa: E402
from toolkit.decode.k2_decode import K2Search  # noqa: E402
from toolkit.decode.options import SearchOptions  # noqa: E402
from toolkit.decode.wfst import decode_matrices  # noqa: E402
from toolkit.lm.graph import Lang, compile_graphs, rescore_grammar  # noqa: E402
from toolkit.lm.k2_graph import save_k2_graphs  # noqa: E402

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


def test_k2_nbest_rescore_equals_hlg_rescore(lang):
    compile_graphs(lang, lang / "lm.arpa", order=1)
    save_k2_graphs(lang, lang / "lm.arpa", order=1)
    lg = Lang.load(lang)
    lp1 = ctc_frames(spell_ids(lang, "ab cab"), lg.num_tokens, ambiguous={4: [lg.tokens["o"]]})
    lp1[:, lg.tokens["a"]] = np.maximum(lp1[:, lg.tokens["a"]], lp1[:, lg.tokens["o"]])
    g2 = rescore_grammar(lang, lang / "lm.arpa")
    kaldi = [ids for ids, _ in decode_matrices([lp1], "hlg-rescore", lang / "HLG.fst", SearchOptions(num_paths=10),
                                               rescore_g=g2, backoff_id=lg.words["#0"])]
    lp, lengths = batch([lp1])
    search = K2Search("k2-nbest-rescore", options(num_paths=10), lang, None, DEVICE)
    assert search.decode_ids(lp, lengths) == kaldi
    assert lg.words_of(kaldi[0]) == ["ab", "cab"]
