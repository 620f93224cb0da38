"""CTC decoding with k2 (optional; GPU when the graph and log-probs live there).

- ``k2-ctc``: intersection with ``k2.ctc_topo`` (no lexicon, no LM), best path -> tokens.
- ``k2-hlg``: intersection with the k2 HLG (toolkit.lm.k2_graph), best path -> words.
- ``k2-nbest-rescore``: the k2 HLG lattice, its LM scores replaced by a larger LM's over the
  ``num_paths`` best distinct word sequences (on CPU with kaldifst, shared with ``hlg-rescore``).

Decoding follows k2's documented API: ``k2.DenseFsaVec(log_probs, supervision_segments)``, then
``k2.intersect_dense_pruned(graph, dense, search_beam, output_beam, min_active_states,
max_active_states)`` and ``k2.shortest_path(lattice, use_double_scores=True)``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from toolkit.decode.options import DEFAULT_K2_NBEST, Hypothesis, SearchOptions
from toolkit.lm.k2_graph import import_k2
from toolkit.utils import ToolkitError


def get_lattice(graph, log_probs: torch.Tensor, lengths: torch.Tensor, opts: SearchOptions):
    """Pruned intersection of ``graph`` with each utterance's (T_i, V) log-probs.

    Returns the lattice FsaVec and, for each of its FSAs, the batch index it belongs to (k2 wants
    the supervision segments longest first). Utterances with no frames are left out.
    """
    k2 = import_k2()
    lengths = lengths.to(torch.int32).cpu()
    order = [int(i) for i in torch.argsort(lengths, descending=True, stable=True) if lengths[i] > 0]
    if not order:
        return None, []
    idx = torch.tensor(order, dtype=torch.int32)
    segments = torch.stack([idx, torch.zeros_like(idx), lengths[idx.long()]], dim=1).to(torch.int32)
    dense = k2.DenseFsaVec(log_probs.float() * opts.acoustic_scale, segments)
    lattice = k2.intersect_dense_pruned(graph, dense, search_beam=opts.beam, output_beam=opts.lattice_beam,
                                        min_active_states=opts.min_active, max_active_states=opts.max_active)
    return lattice, order


def path_labels(fsa) -> list[int]:
    """The positive ``aux_labels`` of a linear FSA (tokens of H, words of HLG), in order."""
    aux = fsa.aux_labels
    values = aux if isinstance(aux, torch.Tensor) else aux.values
    return [int(x) for x in values.tolist() if x > 0]


def best_paths(lattice, order: list[int], batch_size: int) -> list[list[int]]:
    """Output labels of the best path of each utterance, in batch order ([] where none)."""
    out: list[list[int]] = [[] for _ in range(batch_size)]
    if lattice is None:
        return out
    k2 = import_k2()
    best = k2.shortest_path(lattice, use_double_scores=True)
    for j, b in enumerate(order):
        out[b] = path_labels(best[j])
    return out


def lattice_word_fst(lat, lm_scale: float):
    """A k2 lattice (one utterance) as a kaldifst word acceptor costing acoustics / lm_scale.

    The first-pass LM part is taken out through ``lm_scores``, which the graph carried into the
    lattice (set before the intersection).
    """
    from kaldifst.utils.k2_converter import k2_to_openfst

    from toolkit.decode.wfst import word_fst_from_text

    lat = lat.to("cpu")
    lat.scores = (lat.scores - lat.lm_scores) / lm_scale
    return word_fst_from_text(k2_to_openfst(lat, olabels="aux_labels").to_str(), float)


class K2Search:
    """``search(log_probs (B,T,V), lengths) -> [Hypothesis]`` for the k2 methods (see toolkit.decode.search)."""

    def __init__(self, method: str, opts: SearchOptions, lang_dir: Path | None, tokenizer, device):
        from toolkit.lm.k2_graph import k2_ctc_topo

        import_k2()
        self.method = method
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.opts = opts
        self.num_paths = opts.num_paths if opts.num_paths is not None else DEFAULT_K2_NBEST
        if method == "k2-nbest-rescore" and self.num_paths < 1:
            raise ToolkitError(f"--num-paths {opts.num_paths}: k2-nbest-rescore rescores the N best paths, N >= 1")
        self.lang = None
        self.G = None
        if method == "k2-ctc":
            self.graph = k2_ctc_topo(tokenizer.vocab_size, device=device)
            return
        self._load_hlg(lang_dir)

    def _load_hlg(self, lang_dir: Path) -> None:
        from toolkit.lm.graph import Lang, checked_graph, read_fst, remove_backoff_disambig, rescore_grammar_path
        from toolkit.lm.k2_graph import load_k2_hlg

        self.lang = Lang.load(lang_dir)
        self.graph = load_k2_hlg(checked_graph(lang_dir, "HLG.pt"), self.device)
        if self.method == "k2-nbest-rescore":
            G = read_fst(rescore_grammar_path(lang_dir))
            self.G = remove_backoff_disambig(G, self.lang.words["#0"])
            self.graph.lm_scores = self.graph.scores.clone()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def decode_ids(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Token ids (k2-ctc) or word ids (k2-hlg, k2-nbest-rescore) per utterance."""
        lattice, order = get_lattice(self.graph, log_probs.to(self.device), lengths, self.opts)
        out = best_paths(lattice, order, log_probs.shape[0])
        if self.method == "k2-nbest-rescore" and lattice is not None:
            from toolkit.decode.wfst import rescore_word_fst

            for j, b in enumerate(order):
                rescored = rescore_word_fst(lattice_word_fst(lattice[j], self.opts.lm_scale), self.G,
                                            self.num_paths)
                if rescored is not None:
                    out[b] = rescored
        return out

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        t0 = time.perf_counter()
        ids = self.decode_ids(log_probs, lengths)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        per = (time.perf_counter() - t0) / max(len(ids), 1)
        if self.method == "k2-ctc":
            return [Hypothesis(self.tokenizer.decode(x), per) for x in ids]
        return [Hypothesis(" ".join(self.lang.words_of(x)), per) for x in ids]
