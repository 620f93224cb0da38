"""WFST decoding of CTC log-probs on CPU with kaldi-decoder over an HLG graph (see toolkit.lm.graph).

- ``hlg``: one-best Viterbi beam search (``kaldi_decoder.FasterDecoder``).
- ``hlg-rescore``: a lattice (``LatticeSimpleDecoder``), its first-pass LM scores replaced by a larger
  LM's: whole-lattice rescoring (the word lattice, acoustic costs only, composed with the new G) or
  n-best rescoring (``num_paths`` distinct word sequences, each scored by the new G).

Costs are negated, scaled log-probabilities: a path's cost is ``-acoustic_scale * sum log p + G cost``
in the first pass and ``-acoustic_scale * sum log p + lm_scale * G_big cost`` after rescoring.
Utterances are independent, so ``nj`` worker processes each load the graphs once and take
utterances from a queue.
"""
from __future__ import annotations

import multiprocessing
import os
import time
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


class LatticeRescorer:
    """Lattice decoding over HLG.fst, then rescoring with a larger G (``G_<n>_rescore.fst``): of the
    whole lattice when ``opts.num_paths`` is 0 or None, else of its ``num_paths`` best distinct word
    sequences (`rescore_word_fst`)."""

    def __init__(self, hlg: str | os.PathLike, rescore_g: str | os.PathLike, backoff_id: int, opts: SearchOptions):
        opts.check()
        self.opts = opts
        self.graph = read_fst(hlg)
        self.G = remove_backoff_disambig(read_fst(rescore_g), backoff_id)
        self.decoder = kaldi_decoder.LatticeSimpleDecoder(
            self.graph,
            kaldi_decoder.LatticeSimpleDecoderConfig(beam=opts.beam, lattice_beam=opts.lattice_beam),
        )

    def decode(self, mat: np.ndarray) -> list[int]:
        """Word ids of the best rescored path for (T, V) log-probs (acoustic scale applied here)."""
        if mat.shape[0] == 0:
            return []
        self.decoder.decode(kaldi_decoder.DecodableCtc(to_matrix(mat, self.opts.acoustic_scale)))
        ok, lat = self.decoder.get_raw_lattice(use_final_probs=True)
        if ok and lat.num_states > 0:
            # total = acoustic + lm_scale * LM  ==  acoustic / lm_scale + LM  (same arg-min)
            out = rescore_word_fst(lattice_to_word_fst(lat, 1.0 / self.opts.lm_scale), self.G, self.opts.num_paths or 0)
            if out is not None:
                return out
        # No path survives with the new LM (e.g. its vocabulary misses a word): keep the first pass.
        ok, best = self.decoder.get_best_path(use_final_probs=False)
        ok, _, out, _ = kaldifst.get_linear_symbol_sequence(best) if ok else (False, [], [], None)
        return list(out) if ok else []


# ---------------------------------------------------------------------------------------
# Parallel decoding over utterances

_WORKER = None


def _make_decoder(spec: dict):
    if spec["method"] == "hlg":
        return HlgDecoder(spec["hlg"], spec["opts"])
    if spec["method"] == "hlg-rescore":
        return LatticeRescorer(spec["hlg"], spec["rescore_g"], spec["backoff_id"], spec["opts"])
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
                 rescore_g: str | os.PathLike | None = None, backoff_id: int | None = None):
        if method == "hlg-rescore" and (rescore_g is None or backoff_id is None):
            raise ToolkitError("--method hlg-rescore needs a rescoring LM: run `toolkit compile-graph --rescore-lm LM`")
        self.spec = {"method": method, "hlg": str(hlg), "opts": opts,
                     "rescore_g": rescore_g and str(rescore_g), "backoff_id": backoff_id}
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
                    backoff_id: int | None = None) -> list[tuple[list[int], float]]:
    """Decode (T, V) log-prob matrices (float32 numpy); (word ids, seconds) per matrix, in order."""
    with WfstRunner(method, hlg, opts, min(nj, max(1, len(mats))), rescore_g, backoff_id) as runner:
        return runner.decode(mats)


