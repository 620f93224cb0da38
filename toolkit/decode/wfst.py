"""WFST decoding of CTC log-probs on CPU with kaldi-decoder over an HLG graph (see toolkit.lm.graph).

- ``hlg``: one-best Viterbi beam search (``kaldi_decoder.FasterDecoder``).
- ``hlg-rescore``: a lattice (``LatticeSimpleDecoder``), its first-pass LM scores replaced by a larger
  LM's: whole-lattice rescoring (the determinised word lattice, acoustic costs only, composed with
  the new G) or n-best rescoring (its ``num_paths`` best word sequences, each scored by the new G).
  The word lattice is bounded (`word_lattice`): a barely trained model's lattice is pruned until it
  fits, with a warning, instead of exhausting time and memory.
- ``hlg`` with an LM scale or a word insertion penalty, and sweeps of both (`LatticeSearch`): a
  lattice whose best path is found under each setting by one exact dynamic programme.

Costs are negated, scaled log-probabilities: a path's cost is ``-acoustic_scale * sum log p + G cost``
in the first pass and ``-acoustic_scale * sum log p + lm_scale * G cost + word_penalty * words``
after re-weighting (G: the first-pass LM, in the lattice, or the rescoring G).
Utterances are independent, so ``nj`` worker processes each load the graphs once and take
utterances from a queue.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Sequence

import kaldi_decoder
import kaldifst
import numpy as np

from toolkit.decode.options import SEARCH_BEAM_STEP, SEARCH_MIN_BEAM, SEARCH_PROBE_FRAMES, SearchOptions, lattice_bounds
from toolkit.lm.graph import read_fst, remove_backoff_disambig
from toolkit.utils import ToolkitError

log = logging.getLogger("toolkit.decode")


def to_matrix(log_probs, acoustic_scale: float = 1.0) -> np.ndarray:
    """(T, V) log-probs (tensor or array) to the contiguous float32 matrix DecodableCtc copies."""
    if hasattr(log_probs, "detach"):
        log_probs = log_probs.detach().float().cpu().numpy()
    mat = np.ascontiguousarray(log_probs, dtype=np.float32)
    if acoustic_scale != 1.0:
        mat = mat * np.float32(acoustic_scale)
    return mat


class HlgDecoder:
    """One-best decoding over HLG.fst; ``decode`` returns the word ids of the best path."""

    def __init__(self, hlg: str | os.PathLike, opts: SearchOptions):
        opts.check()
        self.opts = opts
        self.graph = read_fst(hlg)  # the decoder keeps a pointer to it: it must live as long
        self.decoder = kaldi_decoder.FasterDecoder(
            self.graph,
            kaldi_decoder.FasterDecoderOptions(beam=opts.beam, max_active=opts.max_active, min_active=opts.min_active),
        )

    def decode(self, mat: np.ndarray) -> list[int]:
        """Word ids of the best path for (T, V) log-probs (acoustic scale applied here)."""
        if mat.shape[0] == 0:
            return []
        self.decoder.decode(kaldi_decoder.DecodableCtc(to_matrix(mat, self.opts.acoustic_scale)))
        # Without a final state in the beam (truncated audio), the best partial path is still a hypothesis.
        ok, best = self.decoder.get_best_path(use_final_probs=self.decoder.reached_final())
        if not ok:
            return []
        ok, _, words, _ = kaldifst.get_linear_symbol_sequence(best)
        return list(words) if ok else []


def lm_cost(G: kaldifst.StdVectorFst, words: Sequence[int]) -> float:
    """Cost (-ln P) of a word sequence under G (``#0`` removed; tropical: best back-off path)."""
    a = kaldifst.make_linear_acceptor(list(words))
    kaldifst.arcsort(a, sort_type="olabel")
    best = kaldifst.shortest_path(kaldifst.compose(a, G))
    ok, _, _, w = kaldifst.get_linear_symbol_sequence(best)
    return float(w.value) if ok and best.num_states > 0 else float("inf")


def rescore_word_fst(words: kaldifst.StdVectorFst, G: kaldifst.StdVectorFst, num_paths: int = 0) -> list[int] | None:
    """Best word sequence of the word lattice ``words`` (an epsilon-free, determinised acceptor, arcs
    sorted by label; costs: acoustics / lm_scale) plus G's cost; None if none survives.

    ``num_paths`` = 0: whole-lattice rescoring (compose with G, shortest path). > 0: n-best rescoring of
    the ``num_paths`` best word sequences (each once, the lattice being deterministic), each scored by G.
    """
    if num_paths <= 0:
        best = kaldifst.shortest_path(kaldifst.compose(words, G))
        ok, _, out, _ = kaldifst.get_linear_symbol_sequence(best)
        return list(out) if ok and best.num_states > 0 else None
    scored = []
    for path in kaldifst.convert_nbest_to_vector(kaldifst.shortest_path(words, n=num_paths)):
        ok, _, seq, w = kaldifst.get_linear_symbol_sequence(path)
        if ok:
            scored.append((float(w.value) + lm_cost(G, seq), list(seq)))
    scored = [x for x in scored if x[0] != float("inf")]
    return min(scored)[1] if scored else None


def shortest_distances(src: np.ndarray, dst: np.ndarray, cost: np.ndarray, init: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Tropical shortest distances over an acyclic graph, for C cost columns at once.

    ``src``/``dst`` (E,) arcs, ``cost`` (E, C), ``init`` (S, C) the starting distances (inf: not a
    start). Returns ``dist`` (S, C) and ``back`` (S, C): the arc that gives each state its distance
    (-1: none). States are visited in topological order (Kahn's algorithm, one frontier of states at
    a time, vectorised); reversing ``src`` and ``dst`` gives the distances to the end."""
    S = init.shape[0]
    dist = init.copy()
    back = np.full(init.shape, -1, dtype=np.int64)
    order = np.argsort(src, kind="stable")
    offsets = np.searchsorted(src[order], np.arange(S + 1))
    indegree = np.bincount(dst, minlength=S)
    frontier = np.flatnonzero(indegree == 0)
    while frontier.size:
        lo, hi = offsets[frontier], offsets[frontier + 1]
        lens = hi - lo
        if lens.sum() == 0:
            break
        idx = order[np.repeat(lo - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(lens.sum())]
        cand = dist[src[idx]] + cost[idx]
        to = dst[idx]
        np.minimum.at(dist, to, cand)
        rows, cols = np.nonzero(cand <= dist[to])
        back[to[rows], cols] = idx[rows]
        np.subtract.at(indegree, to, 1)
        nxt = np.unique(to)
        frontier = nxt[indegree[nxt] == 0]
    return dist, back


@dataclass
class LatticeArcs:
    """A raw Kaldi lattice as arrays: arcs ``src -> dst`` with output label (word id or 0) and the
    two costs of Kaldi's LatticeWeight, graph (first-pass LM) and acoustic; final states likewise."""

    start: int
    num_states: int
    src: np.ndarray
    dst: np.ndarray
    olabel: np.ndarray
    graph: np.ndarray
    acoustic: np.ndarray
    final_state: np.ndarray
    final_graph: np.ndarray
    final_acoustic: np.ndarray

    @classmethod
    def from_lattice(cls, lat) -> "LatticeArcs":
        arcs: list[tuple[int, int, int, float, float]] = []
        finals: list[tuple[int, float, float]] = []
        start = None
        for line in lat.to_str().splitlines():
            p = line.split()
            if len(p) >= 4:
                g, a = (p[4].split(",") if len(p) > 4 else ("0", "0"))
                arcs.append((int(p[0]), int(p[1]), int(p[3]), float(g), float(a)))
                start = int(p[0]) if start is None else start
            elif p:
                g, a = (p[1].split(",") if len(p) > 1 else ("0", "0"))
                finals.append((int(p[0]), float(g), float(a)))
                start = int(p[0]) if start is None else start
        a_arr = np.array(arcs, dtype=np.float64).reshape(-1, 5)
        f_arr = np.array(finals, dtype=np.float64).reshape(-1, 3)
        n = int(max(a_arr[:, :2].max(initial=-1), f_arr[:, 0].max(initial=-1))) + 1
        return cls(start or 0, n, a_arr[:, 0].astype(np.int64), a_arr[:, 1].astype(np.int64), a_arr[:, 2].astype(np.int64),
                   a_arr[:, 3], a_arr[:, 4], f_arr[:, 0].astype(np.int64), f_arr[:, 1], f_arr[:, 2])

    def best_paths(self, settings: Sequence[tuple[float, float]]) -> list[list[int] | None]:
        """Word ids of the best path under ``acoustic + lm_scale x graph + word_penalty x words``, for
        every (lm_scale, word_penalty) setting at once (None: no final state reachable).

        Exact dynamic programming over the acyclic lattice (`shortest_distances`), vectorised over the
        settings: the lattice is read once whatever the number of settings."""
        scale = np.array([s for s, _ in settings])[None, :]
        penalty = np.array([p for _, p in settings])[None, :]
        cost = self.acoustic[:, None] + scale * self.graph[:, None] + penalty * (self.olabel != 0)[:, None]
        init = np.full((self.num_states, len(settings)), np.inf)
        init[self.start] = 0.0
        dist, back = shortest_distances(self.src, self.dst, cost, init)
        total = dist[self.final_state] + self.final_acoustic[:, None] + scale * self.final_graph[:, None]
        out: list[list[int] | None] = []
        for c in range(len(settings)):
            if total.shape[0] == 0 or not np.isfinite(total[:, c].min()):
                out.append(None)
                continue
            state, words = int(self.final_state[int(np.argmin(total[:, c]))]), []
            while state != self.start:
                arc = back[state, c]
                if self.olabel[arc]:
                    words.append(int(self.olabel[arc]))
                state = int(self.src[arc])
            out.append(words[::-1])
        return out

    @functools.cached_property
    def margins(self) -> tuple[np.ndarray, np.ndarray]:
        """For each arc and each final state: how much worse the best path through it is than the best
        path, by the first-pass cost (acoustic + graph, what the decoder's lattice beam measures); one
        forward and one backward pass."""
        cost = (self.acoustic + self.graph)[:, None]
        init = np.full((self.num_states, 1), np.inf)
        init[self.start] = 0.0
        forward = shortest_distances(self.src, self.dst, cost, init)[0][:, 0]
        final_cost = self.final_acoustic + self.final_graph
        init = np.full((self.num_states, 1), np.inf)
        np.minimum.at(init[:, 0], self.final_state, final_cost)
        backward = shortest_distances(self.dst, self.src, cost, init)[0][:, 0]
        through_final = forward[self.final_state] + final_cost
        best = through_final.min(initial=np.inf)
        if not np.isfinite(best):  # no complete path: nothing is within any beam
            return np.full(len(self.src), np.inf), np.full(len(self.final_state), np.inf)
        return forward[self.src] + cost[:, 0] + backward[self.dst] - best, through_final - best

    def pruned(self, beam: float) -> "LatticeArcs":
        """The lattice without the arcs and final states on no path within ``beam`` of the best one."""
        arc_margin, final_margin = self.margins
        keep, fin = arc_margin <= beam, final_margin <= beam
        return LatticeArcs(self.start, self.num_states, self.src[keep], self.dst[keep], self.olabel[keep],
                           self.graph[keep], self.acoustic[keep], self.final_state[fin], self.final_graph[fin],
                           self.final_acoustic[fin])

    def bounded(self, max_arcs: int, beam: float) -> tuple["LatticeArcs", float | None]:
        """The lattice pruned to the largest beam (at most ``beam``) that leaves at most ``max_arcs``
        arcs, and that beam (None: the lattice was small enough as it is, or has no complete path).
        The arcs of the paths tied with the best one always stay, however many they are."""
        if len(self.src) <= max_arcs or not np.isfinite(self.margins[0]).any():
            return self, None
        first_over = float(np.partition(self.margins[0], max_arcs)[max_arcs])  # the margin of arc max_arcs + 1
        beam = min(beam, max(float(np.nextafter(first_over, -np.inf)), 1e-6))
        return self.pruned(beam), beam

    def word_fst(self, lm_scale: float, word_penalty: float) -> kaldifst.StdVectorFst:
        """Acceptor of the words (token arcs are epsilons) costing ``(acoustic + word_penalty x words) /
        lm_scale``: composed with a new G, a path costs ``(acoustic + lm_scale x G + penalty x words) /
        lm_scale``, the same arg-min. The graph costs (first-pass LM) are dropped."""
        cost = (self.acoustic + word_penalty * (self.olabel != 0)) / lm_scale
        order = np.argsort(self.src != self.start, kind="stable")  # OpenFst text: the start state's lines first
        lines = [f"{s} {d} {o} {o} {c:.6f}" for s, d, o, c in zip(self.src[order].tolist(), self.dst[order].tolist(),
                                                                   self.olabel[order].tolist(), cost[order].tolist())]
        finals = [f"{s} {c / lm_scale:.6f}" for s, c in zip(self.final_state.tolist(), self.final_acoustic.tolist())]
        start_final = [f for f, s in zip(finals, self.final_state.tolist()) if s == self.start]
        lines = (start_final + lines + [f for f in finals if f not in start_final]) if not lines or \
            self.src[order[0]] != self.start else lines + finals
        fst = kaldifst.compile("\n".join(lines) + "\n")
        kaldifst.arcsort(fst, sort_type="olabel")
        return fst


MIN_BEAM = 1e-3  # below this, word_lattice keeps the single best path


def word_lattice(arcs: LatticeArcs, lm_scale: float, word_penalty: float, beam: float,
                 max_states: int) -> tuple[kaldifst.StdVectorFst, float | None]:
    """The word lattice a rescoring G is composed with: `LatticeArcs.word_fst`, epsilons removed,
    determinised (each word sequence once, at its best cost), arcs sorted; under ``max_states`` states.

    Where determinisation would exceed ``max_states`` (it stops there), the lattice is pruned to
    half its beam (``beam``, or the widest margin it has if that is less) and determinised again,
    as Kaldi's lattice-determinize-pruned tightens its beam when over its memory bound; below
    `MIN_BEAM` (paths tied with the best one overflow it) only the first-pass best path is kept.
    Returns the lattice and the beam it was pruned to (None: not pruned here)."""
    pruned_to: float | None = None
    current = arcs
    while True:
        words = current.word_fst(lm_scale, word_penalty)
        kaldifst.rmepsilon(words)
        det = kaldifst.determinize(words, nstate=max_states)
        if det.num_states < max_states:
            kaldifst.arcsort(det, sort_type="olabel")
            return det, pruned_to
        if pruned_to is None:
            finite = arcs.margins[0][np.isfinite(arcs.margins[0])]
            beam = min(beam, float(finite.max(initial=0.0)))
        if beam / 2 < MIN_BEAM:
            best = arcs.best_paths([(1.0, 0.0)])[0]
            one = kaldifst.make_linear_acceptor(best or [])
            kaldifst.arcsort(one, sort_type="olabel")
            return one, 0.0
        beam = pruned_to = beam / 2
        current = arcs.pruned(beam)


class LatticeSearch:
    """Lattice decoding over HLG.fst, then the best word sequence under ``acoustics + lm_scale x LM +
    word_penalty x words`` for one or several (lm_scale, word_penalty) settings.

    ``hlg``: the LM costs are the first-pass (HLG) ones already in the lattice, and every setting is
    solved exactly by one dynamic programme over the lattice (`LatticeArcs.best_paths`).
    ``hlg-rescore``: the LM is ``G`` (the rescoring G, ``#0`` removed), one composition per setting
    (whole lattice, or the ``num_paths`` best word sequences). Either way the lattice is computed
    once per utterance, which is what makes an LM-scale x word-penalty sweep on dev cheap.
    """

    def __init__(self, hlg: str | os.PathLike, G: str | os.PathLike | None, backoff_id: int | None,
                 opts: SearchOptions, settings: Sequence[tuple[float, float]] | None = None):
        opts.check()
        self.opts = opts
        self.settings = list(settings or [(opts.lm_scale, opts.word_penalty)])
        self.graph = read_fst(hlg)
        self.G = remove_backoff_disambig(read_fst(G), backoff_id) if G is not None else None
        self.unrescored = 0  # utterances left with their first pass (no lattice path survives G)
        self._decoders: dict[tuple[float, float], kaldi_decoder.LatticeSimpleDecoder] = {}

    def _decoder(self, beam: float, lattice_beam: float) -> kaldi_decoder.LatticeSimpleDecoder:
        if (beam, lattice_beam) not in self._decoders:
            self._decoders[beam, lattice_beam] = kaldi_decoder.LatticeSimpleDecoder(
                self.graph, kaldi_decoder.LatticeSimpleDecoderConfig(beam=beam, lattice_beam=lattice_beam))
        return self._decoders[beam, lattice_beam]

    def _arcs_per_frame(self, mat: np.ndarray, beam: float, lattice_beam: float) -> float:
        decoder = self._decoder(beam, lattice_beam)
        decoder.decode(kaldi_decoder.DecodableCtc(to_matrix(mat, self.opts.acoustic_scale)))
        ok, lat = decoder.get_raw_lattice(use_final_probs=True)  # no final state reached: every token is final
        return len(LatticeArcs.from_lattice(lat).src) / mat.shape[0] if ok and lat.num_states > 0 else 0.0

    def search_beams(self, mat: np.ndarray) -> tuple[float, float]:
        """(beam, lattice beam) of this utterance's search: the configured ones unless a probe of the
        search on its least certain ``SEARCH_PROBE_FRAMES`` frames (lowest mean best log-prob) keeps
        more than ``opts.probe_arcs`` lattice arcs per frame (0: no probe); then both are scaled down by
        ``SEARCH_BEAM_STEP`` until the probe fits or the beam reaches ``SEARCH_MIN_BEAM``, with a
        warning. kaldi-decoder's lattice search has no max-active, and near-flat posteriors (a barely
        trained model) would otherwise keep thousands of tokens per frame: minutes per utterance."""
        beam, lattice_beam, bound = self.opts.beam, self.opts.lattice_beam, self.opts.probe_arcs
        if not bound:
            return beam, lattice_beam
        n = min(SEARCH_PROBE_FRAMES, mat.shape[0])
        best = np.maximum(mat.max(axis=1), np.finfo(np.float32).min / n)  # a frame of -inf: no window of nan
        certainty = np.convolve(best, np.ones(n), mode="valid")
        window = mat[int(np.argmin(certainty)):][:n]
        first = per_frame = self._arcs_per_frame(window, beam, lattice_beam)
        while per_frame > bound and beam > SEARCH_MIN_BEAM:
            beam, lattice_beam = max(SEARCH_MIN_BEAM, beam * SEARCH_BEAM_STEP), lattice_beam * SEARCH_BEAM_STEP
            per_frame = self._arcs_per_frame(window, beam, lattice_beam)
        if beam != self.opts.beam:
            log.warning("lattice search: a %d-frame probe kept %.0f lattice arcs per frame at beam %g (over %g); "
                        "searched at beam %.3g, lattice beam %.3g instead (%.0f per frame); a barely trained model? "
                        "(--probe-arcs 0: the configured beams)", n, first, self.opts.beam, bound, beam, lattice_beam,
                        per_frame)
        return beam, lattice_beam

    def decode_all(self, mat: np.ndarray) -> list[list[int]]:
        """Word ids of the best path for each setting, for (T, V) log-probs (acoustic scale applied here)."""
        if mat.shape[0] == 0:
            return [[] for _ in self.settings]
        beam, lattice_beam = self.search_beams(mat)
        decoder = self._decoder(beam, lattice_beam)
        decoder.decode(kaldi_decoder.DecodableCtc(to_matrix(mat, self.opts.acoustic_scale)))
        ok, lat = decoder.get_raw_lattice(use_final_probs=True)
        arcs = LatticeArcs.from_lattice(lat) if ok and lat.num_states > 0 else None
        if arcs is None:
            out: list[list[int] | None] = [None] * len(self.settings)
        elif self.G is None:
            out = arcs.best_paths(self.settings)
        else:
            out = self._rescore(arcs, mat.shape[0], lattice_beam)
        if any(o is None for o in out):
            # No path survives with this LM (e.g. its vocabulary misses a word): keep the first pass,
            # counted so that the run says how many utterances were not rescored
            if arcs is not None and self.G is not None:
                self.unrescored += 1
            ok, best = decoder.get_best_path(use_final_probs=True)  # after decode(): no final state, all final
            ok, _, first, _ = kaldifst.get_linear_symbol_sequence(best) if ok else (False, [], [], None)
            out = [o if o is not None else (list(first) if ok else []) for o in out]
        return out  # type: ignore[return-value]

    def _rescore(self, arcs: LatticeArcs, num_frames: int, lattice_beam: float) -> list[list[int] | None]:
        """Each setting's best word sequence under the rescoring G, the lattice bounded first
        (`lattice_bounds`): a barely trained model's lattice is pruned, with a warning, rather than
        left to exhaust time and memory."""
        max_arcs, max_states = lattice_bounds(num_frames)
        size = len(arcs.src)
        arcs, bounded_to = arcs.bounded(max_arcs, lattice_beam)
        start = bounded_to if bounded_to is not None else lattice_beam
        out, beams = [], [bounded_to]
        for s, p in self.settings:  # every setting from the same bounded lattice
            words, det_beam = word_lattice(arcs, s, p, start, max_states)
            out.append(rescore_word_fst(words, self.G, self.opts.num_paths or 0))
            beams.append(det_beam)
        beams = [b for b in beams if b is not None]
        if beams:
            log.warning("hlg-rescore: a %d-frame lattice of %d arcs was pruned to beam %.3g (from %g) to stay under "
                        "%d arcs and a %d-state word lattice; a barely trained model?", num_frames, size, min(beams),
                        lattice_beam, max_arcs, max_states)
        return out

    def decode(self, mat: np.ndarray) -> list[int] | list[list[int]]:
        """Word ids of the best path (one setting), or a list of them (a sweep)."""
        out = self.decode_all(mat)
        return out[0] if len(self.settings) == 1 else out


# ---------------------------------------------------------------------------------------
# Parallel decoding over utterances


def warn_unrescored(method: str, n: int) -> None:
    """The one warning of a run whose rescoring left `n` utterances with their first-pass result."""
    log.warning("%s: %d utterance(s) kept their first-pass result, not rescored: no path of their lattice "
                "survives the rescoring LM (a lexicon word it lacks; compile-graph logs its coverage of the "
                "lexicon): rescore with an LM that covers the lexicon", method, n)

_WORKER = None


def _make_decoder(spec: dict):
    opts, settings = spec["opts"], spec.get("settings")
    if spec["method"] == "hlg" and not settings and (opts.lm_scale, opts.word_penalty) == (1.0, 0.0):
        return HlgDecoder(spec["hlg"], opts)
    if spec["method"] in ("hlg", "hlg-rescore"):
        return LatticeSearch(spec["hlg"], spec["rescore_g"], spec["backoff_id"], opts, settings)
    raise ToolkitError(f"--method {spec['method']!r} is not a WFST method; use hlg or hlg-rescore")


def _init_worker(spec: dict) -> None:
    global _WORKER
    import signal

    # a forked worker inherits the CLI's SIGTERM-as-interrupt handler (toolkit.cli); Pool.terminate()
    # stops workers with SIGTERM, which must simply end them
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER = _make_decoder(spec)


def _decode_one(decoder, mat: np.ndarray) -> tuple[list[int], float, int]:  # noqa: ANN001
    """(word ids, seconds, 1 if the rescoring G left it unrescored else 0) of one matrix."""
    t0 = time.perf_counter()
    before = getattr(decoder, "unrescored", 0)
    out = decoder.decode(mat)
    return out, time.perf_counter() - t0, getattr(decoder, "unrescored", 0) - before


def _work(mat: np.ndarray) -> tuple[list[int], float, int]:
    return _decode_one(_WORKER, mat)


class WfstRunner:
    """Decodes batches of (T, V) log-prob matrices with one decoder per worker process.

    The workers (``nj`` > 1) live as long as the runner, so each loads the graphs once for a whole
    test set; use it as a context manager. ``nj`` = 1 decodes in this process.
    """

    def __init__(self, method: str, hlg: str | os.PathLike, opts: SearchOptions, nj: int = 1,
                 rescore_g: str | os.PathLike | None = None, backoff_id: int | None = None,
                 settings: Sequence[tuple[float, float]] | None = None):
        """``rescore_g``: the rescoring G (hlg-rescore); ``settings``: (lm_scale, word_penalty) pairs
        of a sweep (then each result is a list of word-id lists, one per setting)."""
        if method == "hlg-rescore" and (rescore_g is None or backoff_id is None):
            raise ToolkitError("--method hlg-rescore needs a rescoring LM: run `toolkit compile-graph --rescore-lm LM`")
        self.spec = {"method": method, "hlg": str(hlg), "opts": opts,
                     "rescore_g": str(rescore_g) if method == "hlg-rescore" else None, "backoff_id": backoff_id,
                     "settings": list(settings) if settings else None}
        self.nj = max(1, nj)
        self.unrescored = 0  # utterances whose lattice no path of survived the rescoring G
        self._local = _make_decoder(self.spec) if self.nj == 1 else None
        self._pool = None
        if self.nj > 1:
            _make_decoder(self.spec)  # fail here, with a clear message, rather than inside a worker
            # fork: workers inherit the imported modules and start at once; they use only numpy and kaldi.
            start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(start)
            self._pool = ctx.Pool(processes=self.nj, initializer=_init_worker, initargs=(self.spec,))

    def decode(self, mats: Sequence[np.ndarray]) -> list[tuple[list[int], float]]:
        """(word ids, seconds) per matrix, in input order."""
        if self._pool is None:
            done = [_decode_one(self._local, mat) for mat in mats]
        else:
            done = self._pool.map(_work, mats, chunksize=max(1, len(mats) // (4 * self.nj)))
        self.unrescored += sum(n for _, _, n in done)
        return [(ids, secs) for ids, secs, _ in done]

    def close(self) -> None:
        if self.unrescored:
            warn_unrescored(self.spec["method"], self.unrescored)
            self.unrescored = 0
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "WfstRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_matrices(mats: Sequence[np.ndarray], method: str, hlg: str | os.PathLike, opts: SearchOptions,
                    nj: int = 1, rescore_g: str | os.PathLike | None = None,
                    backoff_id: int | None = None,
                    settings: Sequence[tuple[float, float]] | None = None) -> list[tuple[list, float]]:
    """Decode (T, V) log-prob matrices (float32 numpy); (word ids, seconds) per matrix, in order
    (with ``settings``: a list of word-id lists per matrix, one per setting)."""
    with WfstRunner(method, hlg, opts, min(nj, max(1, len(mats))), rescore_g, backoff_id, settings) as runner:
        return runner.decode(mats)


