"""CTC decoding with k2 (optional): a batch of utterances at once, on the GPU or the CPU.

- ``k2-ctc``: intersection with ``k2.ctc_topo`` (no lexicon, no LM), best path -> tokens.
- ``k2-hlg``: intersection with the k2 HLG (toolkit.lm.k2_graph), best path -> words.
- ``k2-nbest-rescore``: the HLG lattice, ``num_paths`` paths sampled from it with ``k2.Nbest``
  (their distinct word sequences), each scored by its best acoustic path in the lattice and by the
  rescoring G (``G_<n>gram.pt``); the best ``acoustic / lm_scale + LM`` wins.
- ``k2-whole-lattice-rescore``: the HLG lattice's first-pass LM scores replaced by the rescoring G
  over the whole lattice (``k2.intersect_device`` with G, ``k2.top_sort``, ``k2.shortest_path``).

A path's score is ``acoustic + lm_scale * LM - word_penalty * words`` (`SearchOptions`), with LM
the first-pass G's score (``k2-hlg``) or the rescoring G's. A sweep (``settings``: several
(lm_scale, word_penalty) pairs, as `toolkit.decode.tuning` asks for on dev) costs one lattice per
batch: every setting's best path comes from the same lattice (icefall's ``lm_scale_list``; the
first setting is the result, the others go to ``Hypothesis.sweep``). Where rescoring leaves no
path (the rescoring LM lacks a word of every hypothesis), the first-pass best path is kept, as
``hlg-rescore`` does.

A batch is one ``k2.DenseFsaVec`` (supervision segments longest first, as k2 wants) and one
``k2.intersect_dense_pruned(graph, dense, search_beam, output_beam, min_active_states,
max_active_states)``; the graph and the log-probs live on the searcher's device.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from toolkit.decode.options import DEFAULT_K2_NBEST, RESCORE_METHODS, Hypothesis, SearchOptions, lattice_bounds
from toolkit.lm.k2_graph import import_k2
from toolkit.utils import ToolkitError

log = logging.getLogger("toolkit.decode")

Setting = tuple[float, float]  # (lm_scale, word_penalty)


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


def words_per_arc(fsa) -> torch.Tensor:
    """How many words each arc of ``fsa`` outputs (its positive ``aux_labels``), as scores' dtype."""
    aux = fsa.aux_labels
    if isinstance(aux, torch.Tensor):
        return (aux > 0).to(fsa.scores.dtype)
    return aux.remove_values_leq(0).shape.row_splits(1).diff().to(fsa.scores.dtype)


def best_paths_at(lattice, am: torch.Tensor, lm: torch.Tensor, settings: list[Setting]) -> dict[Setting, list]:
    """For each (lm_scale, word_penalty): the word ids of each FSA's best path under
    ``am + lm_scale * lm - word_penalty * words`` (per-arc scores of ``lattice``; None: no path)."""
    lat = lattice.clone()
    words = words_per_arc(lat)
    out: dict[Setting, list] = {}
    for scale, penalty in settings:
        lat.scores = am + scale * lm - penalty * words
        out[(scale, penalty)] = best_word_paths(lat)
    return out


def best_word_paths(lattice) -> list[list[int] | None]:
    """Output labels of each FSA's best path (None where the FSA has no path), in lattice order."""
    k2 = import_k2()
    best = k2.shortest_path(lattice, use_double_scores=True)
    arcs_per_fsa = best.arcs.shape().remove_axis(1).row_splits(1).diff().tolist()  # 0: no path survived
    return [path_labels(best[j]) if arcs_per_fsa[j] > 0 else None for j in range(best.shape[0])]


def in_batch_order(per_fsa: list, order: list[int], batch_size: int, fallback: list | None = None) -> list[list[int]]:
    """Per-lattice-FSA results back in batch order; ``[]`` (or ``fallback``'s entry) where None / absent."""
    out: list[list[int]] = [[] for _ in range(batch_size)]
    for j, b in enumerate(order):
        got = per_fsa[j]
        if got is None:
            got = (fallback[j] if fallback is not None else None) or []
        out[b] = got
    return out


def acoustic_only(lattice):
    """A copy of the lattice whose scores are the acoustic part only (first-pass LM scores removed)."""
    lat = lattice.clone()
    lat.scores = lattice.scores - lattice.lm_scores
    del lat.lm_scores
    return lat


# arc-posterior thresholds tried in turn on a lattice too large to rescore
PRUNE_THRESHOLDS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def bounded_lattice(lattice, num_frames: int, what: str):
    """The lattice (a batch's FsaVec) as it is if it has at most `lattice_bounds` arcs for
    ``num_frames``, the batch's frames, else pruned on arc posteriors (``k2.prune_on_arc_post``, the thresholds of
    `PRUNE_THRESHOLDS` in turn, as icefall prunes a lattice whose rescoring runs out of memory)
    until it does, with a warning naming ``what`` (the method): a barely trained model's lattice
    would otherwise exhaust memory in the composition with a 4-gram."""
    k2 = import_k2()
    max_arcs = lattice_bounds(num_frames)[0]
    size = lattice.num_arcs
    if size <= max_arcs:
        return lattice
    for threshold in PRUNE_THRESHOLDS:
        pruned = k2.prune_on_arc_post(lattice, threshold, True)
        if pruned.num_arcs <= max_arcs:
            break
    log.warning("%s: a lattice of %d arcs over %d frames was pruned to %d arcs (arc posterior >= %g) to stay "
                "under %d%s; a barely trained model?", what, size, num_frames, pruned.num_arcs, threshold, max_arcs,
                "" if pruned.num_arcs <= max_arcs else " (still over it at the largest threshold)")
    return pruned


def nbest_rescore(lattice, G, num_paths: int, nbest_scale: float, settings: list[Setting]) -> dict[Setting, list]:
    """n-best rescoring: for each setting, the word ids of the best sequence per lattice FSA (None: none).

    ``lattice`` must carry ``lm_scores`` (the first-pass LM part of its scores); ``G`` is the
    rescoring acceptor over words (`toolkit.lm.k2_graph.load_k2_rescore_grammar`, no self-loops).
    The distinct word sequences come from ``k2.Nbest.from_lattice`` (``num_paths`` sampled paths);
    each gets the acoustic score of its best path through the lattice (the lattice with only its
    acoustic scores, inverted to words, intersected with the sequence) and its LM score under G
    (best path, i.e. the tropical score over back-off choices, as kaldifst's n-best rescoring).
    """
    k2 = import_k2()
    nbest = k2.Nbest.from_lattice(lattice, num_paths=num_paths, use_double_scores=True, nbest_scale=nbest_scale)
    # word ids of each kept path: [path][word]
    aux = nbest.fsa.aux_labels
    shape = nbest.fsa.arcs.shape().remove_axis(1)
    if isinstance(aux, torch.Tensor):
        words = k2.RaggedTensor(shape, aux.contiguous())
    else:  # ragged [arc][word]: [path][arc][word] -> [path][word]
        words = k2.RaggedTensor(shape.compose(aux.shape), aux.values).remove_axis(1)
    words = words.remove_values_leq(0)
    path_to_fsa = nbest.shape.row_ids(1)
    word_fsas = k2.add_epsilon_self_loops(k2.linear_fsa(words))  # on the device of `words`

    inv = k2.arc_sort(k2.invert(acoustic_only(lattice)))
    am_lat = k2.top_sort(k2.connect(k2.intersect_device(inv, word_fsas, b_to_a_map=path_to_fsa, sorted_match_a=True)))
    am = am_lat.get_tot_scores(use_double_scores=True, log_semiring=False)
    lm_lat = k2.top_sort(k2.connect(k2.intersect_device(G, word_fsas, b_to_a_map=torch.zeros_like(path_to_fsa),
                                                        sorted_match_a=True)))
    lm = lm_lat.get_tot_scores(use_double_scores=True, log_semiring=False)

    seqs = words.tolist()
    splits = nbest.shape.row_splits(1).tolist()
    num_words = torch.tensor([len(x) for x in seqs], dtype=am.dtype, device=am.device)
    out: dict[Setting, list] = {}
    for scale, penalty in settings:
        total = (am + scale * lm - penalty * num_words).cpu()
        best: list = []
        for j in range(len(splits) - 1):
            lo, hi = splits[j], splits[j + 1]
            if hi == lo or not torch.isfinite(total[lo:hi]).any():
                best.append(None)
                continue
            best.append(seqs[lo + int(torch.argmax(total[lo:hi]))])
        out[(scale, penalty)] = best
    return out


def whole_lattice_rescore(lattice, G_loops, settings: list[Setting]) -> dict[Setting, list]:
    """Whole-lattice rescoring: for each setting, the word ids of the best rescored path per FSA (None: none).

    The lattice's first-pass LM scores are taken out, its arcs inverted to words and intersected
    with ``G_loops`` (the rescoring G with epsilon self-loops, so the lattice's word-less arcs pass
    it; `toolkit.lm.k2_graph.load_k2_rescore_grammar`), which brings the new ``lm_scores``.
    """
    k2 = import_k2()
    inv = k2.invert(acoustic_only(lattice))
    b_to_a = torch.zeros(inv.shape[0], dtype=torch.int32, device=inv.device)
    try:
        rescored = k2.intersect_device(G_loops, inv, b_to_a_map=b_to_a, sorted_match_a=True)
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        # icefall's remedy: keep the arcs with a posterior above 1e-5 and try once more
        log.warning("whole-lattice rescoring ran out of memory (%d arcs); pruning the lattice", inv.num_arcs)
        inv = k2.prune_on_arc_post(inv, 1e-5, True)
        rescored = k2.intersect_device(G_loops, inv, b_to_a_map=b_to_a, sorted_match_a=True)
    lat = k2.invert(k2.top_sort(k2.connect(rescored)))
    return best_paths_at(lat, lat.scores - lat.lm_scores, lat.lm_scores, settings)


class K2Search:
    """``search(log_probs (B,T,V), lengths) -> [Hypothesis]`` for the k2 methods (see toolkit.decode.search).

    ``sweep``: further (lm_scale, word_penalty) settings whose words each hypothesis also carries
    (``Hypothesis.sweep``, in this order); not for ``k2-ctc``, which has no words."""

    def __init__(self, method: str, opts: SearchOptions, lang_dir: Path | None, tokenizer, device,
                 sweep: list[Setting] | None = None):
        from toolkit.lm.k2_graph import k2_ctc_topo

        import_k2()
        self.method = method
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.opts = opts
        self.num_paths = opts.num_paths if opts.num_paths is not None else DEFAULT_K2_NBEST
        if method == "k2-nbest-rescore" and self.num_paths < 1:
            raise ToolkitError(f"--num-paths {opts.num_paths}: k2-nbest-rescore rescores the N best paths, N >= 1")
        if method == "k2-ctc" and (sweep or (opts.lm_scale, opts.word_penalty) != (1.0, 0.0)):
            raise ToolkitError("k2-ctc has no LM and no words: decode it without --lm-scale, --word-penalty "
                               "or the sweep options")
        self.sweep = list(sweep or [])
        # the options' own setting first (the result), then the sweep's
        self.settings: list[Setting] = list(dict.fromkeys([(opts.lm_scale, opts.word_penalty), *self.sweep]))
        self.lang = None
        self.G = None
        self.unrescored = 0  # utterances left with their first pass by the rescoring G
        if method == "k2-ctc":
            self.graph = k2_ctc_topo(tokenizer.vocab_size, device=self.device)
            return
        self._load_graphs(lang_dir)

    def _load_graphs(self, lang_dir: Path) -> None:
        from toolkit.lm.graph import Lang, checked_graph
        from toolkit.lm.k2_graph import load_k2_hlg, load_k2_rescore_grammar

        self.lang = Lang.load(lang_dir)
        self.graph = load_k2_hlg(checked_graph(lang_dir, "HLG.pt"), self.device)
        # HLG's scores are G's (H and L carry none): the lattice keeps them apart as lm_scores
        self.graph.lm_scores = self.graph.scores.clone()
        if self.method in RESCORE_METHODS:
            self.G = load_k2_rescore_grammar(lang_dir, self.device,
                                             epsilon_loops=self.method == "k2-whole-lattice-rescore")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.unrescored:
            from toolkit.decode.wfst import warn_unrescored

            warn_unrescored(self.method, self.unrescored)
        return None

    def decode_settings(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> dict[Setting, list[list[int]]]:
        """Token ids (k2-ctc) or word ids per utterance, for each setting of the search (in order)."""
        batch_size = log_probs.shape[0]
        lattice, order = get_lattice(self.graph, log_probs.to(self.device), lengths, self.opts)
        if lattice is None:
            return {s: [[] for _ in range(batch_size)] for s in self.settings}
        if self.method == "k2-ctc" or (self.method == "k2-hlg" and self.settings == [(1.0, 0.0)]):
            return {self.settings[0]: in_batch_order(best_word_paths(lattice), order, batch_size)}
        if self.method == "k2-hlg":
            per = best_paths_at(lattice, lattice.scores - lattice.lm_scores, lattice.lm_scores, self.settings)
            return {s: in_batch_order(per[s], order, batch_size) for s in self.settings}
        first = best_word_paths(lattice)
        lattice = bounded_lattice(lattice, int(lengths.clamp(min=0).sum()), self.method)
        if self.method == "k2-nbest-rescore":
            per = nbest_rescore(lattice, self.G, self.num_paths, self.opts.nbest_scale, self.settings)
        else:
            per = whole_lattice_rescore(lattice, self.G, self.settings)
        # an FSA with no path through G keeps its first pass: counted, and reported once at the end
        self.unrescored += sum(1 for j in range(len(order)) if per[self.settings[0]][j] is None)
        return {s: in_batch_order(per[s], order, batch_size, fallback=first) for s in self.settings}

    def decode_ids(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Token ids (k2-ctc) or word ids per utterance under the options' own setting."""
        return self.decode_settings(log_probs, lengths)[self.settings[0]]

    def _text(self, ids: list[int]) -> str:
        if self.method == "k2-ctc":
            return self.tokenizer.decode(ids)
        return " ".join(self.lang.words_of(ids))

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        t0 = time.perf_counter()
        per = self.decode_settings(log_probs, lengths)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        secs = (time.perf_counter() - t0) / max(log_probs.shape[0], 1)
        hyps = [Hypothesis(self._text(ids), secs) for ids in per[self.settings[0]]]
        if self.sweep:
            for b, hyp in enumerate(hyps):
                hyp.sweep = [self._text(per[s][b]) for s in self.sweep]
        return hyps
