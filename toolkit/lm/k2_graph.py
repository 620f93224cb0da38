"""The decoding graphs of toolkit.lm.graph in k2's form (``k2.Fsa``), for k2 decoding (optional).

Built from the same lang-dir text files and the same kaldifst L and G (so both backends share one
lexicon/disambiguation logic), then composed with k2 as in icefall's ``compile_hlg.py``:
``H = k2.ctc_topo``; ``LG = det(connect(L o G))`` with the disambiguation symbols zeroed, epsilons
removed; ``HLG = H o LG`` with ``inner_labels="tokens"``. In k2 labels are token ids themselves
(blank = 0 is a symbol, the final arc has -1), so the kaldifst input shift is undone here.

Files (written by ``toolkit compile-graph --k2``, recorded in graphs.json like every graph):
``HLG.pt`` (from the first-pass G_<n>.fst) and, when a rescoring LM is compiled,
``G_<n>gram.pt``: the rescoring G_<n>_rescore.fst as a k2 word acceptor (``#0`` made epsilon),
for ``k2-nbest-rescore`` and ``k2-whole-lattice-rescore``.

k2 is imported lazily: without it, only the functions here fail, with one clear message.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from toolkit.lm.arpa import arpa_order
from toolkit.lm.graph import (TOKEN_OFFSET, GraphCache, Lang, build_lexicon_fst, checked_graph, k2_rescore_name,
                              read_fst)
from toolkit.utils import ToolkitError, atomic_torch_save

log = logging.getLogger(__name__)

K2_MISSING = ("k2 is not installed in this environment: build it for this torch with local/install_k2.sh "
              "(add --cuda true for GPUs; see README)")


def import_k2():
    """``import k2`` or a ToolkitError saying how to install it."""
    try:
        import k2  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError:
        raise ToolkitError(K2_MISSING) from None
    return k2


def fst_text_for_k2(fst, unshift_ilabels: bool) -> str:
    """OpenFst text of a kaldifst FST, input labels moved back to token ids when asked.

    Only for FSTs whose input side never carries the blank (L): there, label 0 keeps meaning epsilon.
    """
    lines = []
    for line in fst.to_str().splitlines():
        p = line.split()
        if len(p) >= 4 and unshift_ilabels and int(p[2]) > 0:
            p[2] = str(int(p[2]) - TOKEN_OFFSET)
        # explicit costs: OpenFst omits zero weights, older k2 parsers need every field
        if len(p) == 4 or len(p) == 1:
            p.append("0")
        lines.append(" ".join(p))
    return "\n".join(lines) + "\n"


def k2_ctc_topo(num_tokens: int, compact: bool = False, device=None):
    """H as k2 builds it: ``k2.ctc_topo(max_token, modified)``; labels are token ids, 0 = blank."""
    k2 = import_k2()
    return k2.arc_sort(k2.ctc_topo(max_token=num_tokens - 1, modified=compact, device=device))


def k2_lexicon(lang: Lang):
    """L_disambig as a k2 transducer (labels: token ids and ``#k``; aux_labels: words)."""
    k2 = import_k2()
    L, first_disambig = build_lexicon_fst(lang)
    return k2.arc_sort(k2.Fsa.from_openfst(fst_text_for_k2(L, unshift_ilabels=True), acceptor=False)), \
        first_disambig - TOKEN_OFFSET


def k2_grammar(g_path: str | os.PathLike):
    """G (kaldifst's G_<n>.fst) as a k2 transducer: labels words with ``#0``, aux_labels words."""
    k2 = import_k2()
    return k2.arc_sort(k2.Fsa.from_openfst(fst_text_for_k2(read_fst(g_path), unshift_ilabels=False),
                                           acceptor=False))


def k2_hlg(lang: Lang, g_path: str | os.PathLike, compact: bool = False):
    """HLG in k2 (CPU); ``aux_labels`` are word ids, ``tokens`` the matched token ids."""
    import torch

    k2 = import_k2()
    L, first_token_disambig = k2_lexicon(lang)
    G = k2_grammar(g_path)
    first_word_disambig = lang.words["#0"]
    LG = k2.connect(k2.compose(L, G))
    LG = k2.connect(k2.determinize(LG))
    # The disambiguation symbols have done their job (determinizability): make them epsilons.
    LG.labels = torch.where(LG.labels >= first_token_disambig, torch.zeros_like(LG.labels), LG.labels)
    LG.__dict__["_properties"] = None  # labels changed: let k2 recompute the cached properties
    aux = LG.aux_labels
    if isinstance(aux, torch.Tensor):
        aux[aux >= first_word_disambig] = 0
    else:
        aux.values[aux.values >= first_word_disambig] = 0
    LG = k2.connect(k2.remove_epsilon(LG))
    if not isinstance(LG.aux_labels, torch.Tensor):
        LG.aux_labels = LG.aux_labels.remove_values_eq(0)
    LG = k2.arc_sort(LG)
    H = k2_ctc_topo(lang.num_tokens, compact=compact)
    HLG = k2.arc_sort(k2.connect(k2.compose(H, LG, inner_labels="tokens")))
    return HLG


def save_k2_graphs(lang_dir: str | os.PathLike, lm: str | os.PathLike | None, compact: bool = False,
                   order: int | None = None) -> Path:
    """Build (or reuse) ``HLG.pt`` (``Fsa.as_dict()``) from the lang dir and G_<order>.fst."""
    if lm is None:
        raise ToolkitError("--k2 needs --lm: the k2 HLG is built from the same G as HLG.fst")
    d = Path(lang_dir)
    order = order or arpa_order(lm)
    g_path = d / f"G_{order}.fst"
    if not g_path.is_file():
        raise ToolkitError(f"{g_path}: not found; run `toolkit compile-graph --lm {lm}` first")
    cache = GraphCache(d)
    key = cache.key([d / "tokens.txt", d / "words.txt", d / "lexicon.txt", Path(lm)], order=order, compact=compact,
                    backend="k2")
    out = d / "HLG.pt"
    if not cache.fresh(out.name, key):
        log.info("building the k2 HLG in %s", out)
        HLG = k2_hlg(Lang.load(d), g_path, compact=compact)
        atomic_torch_save(HLG.as_dict(), out)
        cache.record(out.name, key)
    return out


def k2_word_acceptor(g_path: str | os.PathLike, backoff_id: int):
    """A kaldifst G as a k2 acceptor over word ids: ``#0`` (back-off) becomes epsilon, no aux_labels.

    k2 scores are log-probabilities (the negated costs), so higher is better.
    """
    import torch

    G = k2_grammar(g_path)
    k2 = import_k2()
    G.labels = torch.where(G.labels == backoff_id, torch.zeros_like(G.labels), G.labels)
    del G.aux_labels
    G.__dict__["_properties"] = None  # labels changed
    return k2.arc_sort(G)


def save_k2_rescore_grammar(lang_dir: str | os.PathLike) -> Path | None:
    """Build (or reuse) the k2 form of the lang dir's rescoring G (``G_<n>gram.pt``), if one is recorded."""
    d = Path(lang_dir)
    cache = GraphCache(d)
    if not cache.rescore_g:
        return None
    g_fst = checked_graph(d, cache.rescore_g)
    out = d / k2_rescore_name(cache.rescore_g)
    key = cache.key([g_fst, d / "words.txt"], backend="k2")
    if not cache.fresh(out.name, key):
        log.info("building the k2 rescoring G %s from %s", out, g_fst.name)
        G = k2_word_acceptor(g_fst, Lang.load(d).words["#0"])
        atomic_torch_save(G.as_dict(), out)
        cache.record(out.name, key, ("words.txt",))
    return out


def load_k2_rescore_grammar(lang_dir: str | os.PathLike, device=None, epsilon_loops: bool = False):
    """The recorded rescoring G as a k2 FsaVec of one FSA with ``lm_scores`` (= its scores), on ``device``.

    ``epsilon_loops``: with an epsilon self-loop on every state (whole-lattice rescoring intersects
    it with a lattice whose arcs mostly carry no word).
    """
    from toolkit.lm.graph import rescore_grammar_path

    k2 = import_k2()
    d = Path(lang_dir)
    name = k2_rescore_name(rescore_grammar_path(d).name)
    G = load_k2_fsa(checked_graph(d, name))
    G = k2.Fsa.from_fsas([G]).to(device or "cpu")
    G.lm_scores = G.scores.clone()
    if epsilon_loops:
        G = k2.add_epsilon_self_loops(G)
    return k2.arc_sort(G)


def load_k2_fsa(path: Path):
    """An Fsa saved with ``atomic_torch_save(fsa.as_dict())`` by this module (our own file: full unpickling)."""
    import torch

    k2 = import_k2()
    return k2.Fsa.from_dict(torch.load(path, map_location="cpu", weights_only=False))


def load_k2_hlg(path: str | os.PathLike, device=None):
    """Read ``HLG.pt`` written by ``save_k2_graphs`` (our own file: k2 objects need full unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: not found; run `toolkit compile-graph --k2 --lm LM` first")
    return load_k2_fsa(path).to(device or "cpu")
