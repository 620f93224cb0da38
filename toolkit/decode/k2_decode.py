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
from dataclasses import dataclass
from pathlib import Path

import torch

from toolkit.lm.k2_graph import import_k2


@dataclass
class K2Options:
    acoustic_scale: float = 1.0
    search_beam: float = 20.0
    output_beam: float = 8.0
    min_active_states: int = 30
    max_active_states: int = 10000
    lm_scale: float = 1.0
    num_paths: int = 100


def get_lattice(graph, log_probs: torch.Tensor, lengths: torch.Tensor, opts: K2Options):
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
    lattice = k2.intersect_dense_pruned(graph, dense, search_beam=opts.search_beam, output_beam=opts.output_beam,
                                        min_active_states=opts.min_active_states,
                                        max_active_states=opts.max_active_states)
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

    from toolkit.decode.wfst import word_acceptor

    lat = lat.to("cpu")
    lat.scores = (lat.scores - lat.lm_scores) / lm_scale
    fst = k2_to_openfst(lat, olabels="aux_labels")
    arcs, finals = [], []
    for line in fst.to_str().splitlines():
        p = line.split()
        if len(p) >= 4:
            arcs.append((p[0], p[1], p[3], float(p[4]) if len(p) > 4 else 0.0))
        elif p:
            finals.append((p[0], float(p[1]) if len(p) > 1 else 0.0))
    return word_acceptor(arcs, finals)


class K2Search:
    """``search(log_probs (B,T,V), lengths) -> [(text, seconds)]`` for the k2 methods of `toolkit decode`."""

    def __init__(self, method: str, args, lang_dir: Path | None, tokenizer, device):
        from toolkit.lm.k2_graph import k2_ctc_topo

        import_k2()
        self.method = method
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.opts = K2Options(acoustic_scale=args.acoustic_scale, search_beam=args.beam,
                              output_beam=args.lattice_beam, max_active_states=args.max_active,
                              lm_scale=args.lm_scale, num_paths=args.num_paths or 100)
        self.lang = None
        self.G = None
        if method == "k2-ctc":
            self.graph = k2_ctc_topo(tokenizer.vocab_size, device=device)
            return
        self._load_hlg(args, lang_dir)

    def _load_hlg(self, args, lang_dir: Path) -> None:
        from toolkit.lm.graph import Lang, compile_graphs, read_fst, remove_backoff_disambig
        from toolkit.lm.k2_graph import load_k2_hlg, save_k2_graphs

        self.lang = Lang.load(lang_dir)
        if args.lm:
            compile_graphs(lang_dir, args.lm, order=args.order)
            save_k2_graphs(lang_dir, args.lm, order=args.order)
        self.graph = load_k2_hlg(Path(lang_dir) / "HLG.pt", self.device)
        if self.method == "k2-nbest-rescore":
            from toolkit.lm.compile import find_rescore_grammar

            G = read_fst(find_rescore_grammar(lang_dir, args.rescore_lm))
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
                                            self.opts.num_paths)
                if rescored is not None:
                    out[b] = rescored
        return out

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[tuple[str, float]]:
        t0 = time.perf_counter()
        ids = self.decode_ids(log_probs, lengths)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        per = (time.perf_counter() - t0) / max(len(ids), 1)
        if self.method == "k2-ctc":
            return [(self.tokenizer.decode(x), per) for x in ids]
        return [(" ".join(self.lang.words_of(x)), per) for x in ids]
