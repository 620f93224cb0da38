"""WFST decoding of CTC log-probs on CPU with kaldi-decoder over an HLG graph (see toolkit.lm.graph).

- ``hlg``: one-best Viterbi beam search (``kaldi_decoder.FasterDecoder``).
- ``hlg-rescore``: a lattice (``LatticeSimpleDecoder``), its first-pass LM scores replaced by a larger
  LM's: whole-lattice rescoring (the word lattice, acoustic costs only, composed with the new G) or
  n-best rescoring (``num_paths`` distinct word sequences, each scored by the new G).
- ``hlg`` with an LM scale or a word insertion penalty, and sweeps of both (`LatticeSearch`): a
  lattice whose best path is found under each setting by one exact dynamic programme.

Costs are negated, scaled log-probabilities: a path's cost is ``-acoustic_scale * sum log p + G cost``
in the first pass and ``-acoustic_scale * sum log p + lm_scale * G cost + word_penalty * words``
after re-weighting (G: the first-pass LM, in the lattice, or the rescoring G).
Utterances are independent, so ``nj`` worker processes each load the graphs once and take
utterances from a queue.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import kaldi_decoder
import kaldifst
import numpy as np

from toolkit.decode.options import SearchOptions
from toolkit.lm.graph import read_fst, remove_backoff_disambig
from toolkit.utils import ToolkitError


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


def word_acceptor(arcs: list[tuple[str, str, str, float]], finals: list[tuple[str, float]]) -> kaldifst.StdVectorFst:
    """Epsilon-free word acceptor from (src, dst, word, cost) arcs and (state, cost) finals."""
    lines = [f"{s} {d} {w} {w} {c}" for s, d, w, c in arcs] + [f"{s} {c}" for s, c in finals]
    fst = kaldifst.compile("\n".join(lines) + "\n")
    kaldifst.rmepsilon(fst)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def word_fst_from_text(fst_text: str, cost: Callable[[str], float]) -> kaldifst.StdVectorFst:
    """Word acceptor of a lattice in OpenFst text form (``src dst ilabel olabel [weight]`` arcs,
    ``state [weight]`` finals): the output labels (words) become both labels, and ``cost(weight)``
    each arc's cost (a missing weight field costs 0). Kaldi lattices and k2 lattices (converted to
    OpenFst text) differ only in their weight field, which `cost` reads."""
    arcs, finals = [], []
    for line in fst_text.splitlines():
        p = line.split()
        if len(p) >= 4:
            arcs.append((p[0], p[1], p[3], cost(p[4]) if len(p) > 4 else 0.0))
        elif p:
            finals.append((p[0], cost(p[1]) if len(p) > 1 else 0.0))
    return word_acceptor(arcs, finals)


def lattice_to_word_fst(lat, acoustic_weight: float) -> kaldifst.StdVectorFst:
    """Word acceptor of a raw Kaldi lattice with arc costs ``acoustic_weight`` x the acoustic cost only.

    Kaldi lattice weights are ``graph,acoustic``: the graph costs (first-pass LM) are dropped so that
    a new LM can replace them.
    """
    return word_fst_from_text(lat.to_str(), lambda w: float(w.split(",")[1]) * acoustic_weight)


def lm_cost(G: kaldifst.StdVectorFst, words: Sequence[int]) -> float:
    """Cost (-ln P) of a word sequence under G (``#0`` removed; tropical: best back-off path)."""
    a = kaldifst.make_linear_acceptor(list(words))
    kaldifst.arcsort(a, sort_type="olabel")
    best = kaldifst.shortest_path(kaldifst.compose(a, G))
    ok, _, _, w = kaldifst.get_linear_symbol_sequence(best)
    return float(w.value) if ok and best.num_states > 0 else float("inf")


def rescore_word_fst(words: kaldifst.StdVectorFst, G: kaldifst.StdVectorFst, num_paths: int = 0) -> list[int] | None:
    """Best word sequence of ``words`` (costs: acoustics / lm_scale) plus G's cost; None if none survives.

    ``num_paths`` = 0: whole-lattice rescoring (compose with G, shortest path). > 0: n-best rescoring of
    the ``num_paths`` distinct best word sequences (determinized, so each sequence once with its best
    acoustic cost), each scored by G.
    """
    if num_paths <= 0:
        best = kaldifst.shortest_path(kaldifst.compose(words, G))
        ok, _, out, _ = kaldifst.get_linear_symbol_sequence(best)
        return list(out) if ok and best.num_states > 0 else None
    det = kaldifst.determinize(words)
    scored = []
    for path in kaldifst.convert_nbest_to_vector(kaldifst.shortest_path(det, n=num_paths)):
        ok, _, seq, w = kaldifst.get_linear_symbol_sequence(path)
        if ok:
            scored.append((float(w.value) + lm_cost(G, seq), list(seq)))
    scored = [x for x in scored if x[0] != float("inf")]
    return min(scored)[1] if scored else None


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

        Exact dynamic programming over the acyclic lattice in topological order (Kahn's algorithm,
        one frontier of states at a time), vectorised over the settings: the lattice is read once
        whatever the number of settings."""
        S, C = self.num_states, len(settings)
        scale = np.array([s for s, _ in settings])[None, :]
        penalty = np.array([p for _, p in settings])[None, :]
        cost = self.acoustic[:, None] + scale * self.graph[:, None] + penalty * (self.olabel != 0)[:, None]
        dist = np.full((S, C), np.inf)
        dist[self.start] = 0.0
        back = np.full((S, C), -1, dtype=np.int64)
        order = np.argsort(self.src, kind="stable")
        offsets = np.searchsorted(self.src[order], np.arange(S + 1))
        indegree = np.bincount(self.dst, minlength=S)
        frontier = np.flatnonzero(indegree == 0)
        while frontier.size:
            lo, hi = offsets[frontier], offsets[frontier + 1]
            lens = hi - lo
            if lens.sum() == 0:
                break
            idx = order[np.repeat(lo - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(lens.sum())]
            cand = dist[self.src[idx]] + cost[idx]
            dst = self.dst[idx]
            np.minimum.at(dist, dst, cand)
            rows, cols = np.nonzero(cand <= dist[dst])
            back[dst[rows], cols] = idx[rows]
            np.subtract.at(indegree, dst, 1)
            nxt = np.unique(dst)
            frontier = nxt[indegree[nxt] == 0]
        total = dist[self.final_state] + self.final_acoustic[:, None] + scale * self.final_graph[:, None]
        out: list[list[int] | None] = []
        for c in range(C):
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


def rescore_lattice(arcs: LatticeArcs, G: kaldifst.StdVectorFst, lm_scale: float, word_penalty: float,
                    num_paths: int = 0) -> list[int] | None:
    """Best word sequence of the lattice with its first-pass LM costs replaced by G's (whole lattice:
    one composition, epsilons and all; ``num_paths`` > 0: the n best distinct word sequences)."""
    words = arcs.word_fst(lm_scale, word_penalty)
    if num_paths > 0:
        kaldifst.rmepsilon(words)
        kaldifst.arcsort(words, sort_type="olabel")
    return rescore_word_fst(words, G, num_paths)


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
        self.decoder = kaldi_decoder.LatticeSimpleDecoder(
            self.graph,
            kaldi_decoder.LatticeSimpleDecoderConfig(beam=opts.beam, lattice_beam=opts.lattice_beam),
        )

    def decode_all(self, mat: np.ndarray) -> list[list[int]]:
        """Word ids of the best path for each setting, for (T, V) log-probs (acoustic scale applied here)."""
        if mat.shape[0] == 0:
            return [[] for _ in self.settings]
        self.decoder.decode(kaldi_decoder.DecodableCtc(to_matrix(mat, self.opts.acoustic_scale)))
        ok, lat = self.decoder.get_raw_lattice(use_final_probs=True)
        arcs = LatticeArcs.from_lattice(lat) if ok and lat.num_states > 0 else None
        if arcs is None:
            out: list[list[int] | None] = [None] * len(self.settings)
        elif self.G is None:
            out = arcs.best_paths(self.settings)
        else:
            out = [rescore_lattice(arcs, self.G, s, p, self.opts.num_paths or 0) for s, p in self.settings]
        if any(o is None for o in out):
            # No path survives with this LM (e.g. its vocabulary misses a word): keep the first pass.
            ok, best = self.decoder.get_best_path(use_final_probs=False)
            ok, _, first, _ = kaldifst.get_linear_symbol_sequence(best) if ok else (False, [], [], None)
            out = [o if o is not None else (list(first) if ok else []) for o in out]
        return out  # type: ignore[return-value]

    def decode(self, mat: np.ndarray) -> list[int] | list[list[int]]:
        """Word ids of the best path (one setting), or a list of them (a sweep)."""
        out = self.decode_all(mat)
        return out[0] if len(self.settings) == 1 else out


# ---------------------------------------------------------------------------------------
# Parallel decoding over utterances

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
    _WORKER = _make_decoder(spec)


def _work(mat: np.ndarray) -> tuple[list[int], float]:
    t0 = time.perf_counter()
    return _WORKER.decode(mat), time.perf_counter() - t0


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
            out = []
            for mat in mats:
                t0 = time.perf_counter()
                out.append((self._local.decode(mat), time.perf_counter() - t0))
            return out
        return self._pool.map(_work, mats, chunksize=max(1, len(mats) // (4 * self.nj)))

    def close(self) -> None:
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


