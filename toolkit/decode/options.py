"""What every decoding backend (kaldi-decoder, k2) shares: the search options and the result type."""
from __future__ import annotations

import math
from dataclasses import dataclass

from toolkit.utils import ToolkitError

DEFAULT_K2_NBEST = 100  # paths of k2-nbest-rescore when num_paths is not given
RESCORE_METHODS = ("k2-nbest-rescore", "k2-whole-lattice-rescore")  # k2's searches with a rescoring G

# What a rescoring LM meets is bounded, per frame of audio (at least MIN_LATTICE_BOUND each): the
# token-level lattice's arcs (kaldi-decoder's raw lattice, k2's lattice) and the determinised word
# lattice's states (CPU). Trained models stay far below both (a few lattice arcs and about 0.05 word
# states per frame); a barely trained model's lattice holds thousands of arcs per frame and more word
# sequences than any composition with a 4-gram can hold, so it is pruned to fit, with a warning
# (`toolkit.decode.wfst.LatticeArcs.bounded`, `toolkit.decode.k2_decode.bounded_lattice`).
LATTICE_ARCS_PER_FRAME = 200
WORD_LATTICE_STATES_PER_FRAME = 50
MIN_LATTICE_BOUND = 5000
# The CPU lattice search (kaldi-decoder's LatticeSimpleDecoder) has no max-active: with near-flat
# posteriors it keeps thousands of tokens per frame within the beam and takes minutes per utterance.
# Before each search, the utterance's least certain SEARCH_PROBE_FRAMES frames are searched alone;
# while that probe keeps more than ``SearchOptions.probe_arcs`` lattice arcs per frame (default 50;
# 0 turns the probe off), both beams are scaled by SEARCH_BEAM_STEP (down to SEARCH_MIN_BEAM), with a warning
# (`toolkit.decode.wfst.LatticeSearch.search_beams`). Measured on the embedded default's Italian dev
# set: trained models' probes keep 1-11 arcs per frame (left as configured); a model after one
# update keeps 250-650, and its whole-utterance lattices grow to thousands per frame, which is why
# the probe's bound is lower than LATTICE_ARCS_PER_FRAME (search RTF 4.57 -> 0.16 there).
SEARCH_PROBE_FRAMES = 25
SEARCH_BEAM_STEP = 0.75
SEARCH_MIN_BEAM = 1.0


def lattice_bounds(num_frames: int) -> tuple[int, int]:
    """(most lattice arcs, most word lattice states) for ``num_frames`` frames of audio."""
    return (max(MIN_LATTICE_BOUND, LATTICE_ARCS_PER_FRAME * num_frames),
            max(MIN_LATTICE_BOUND, WORD_LATTICE_STATES_PER_FRAME * num_frames))


@dataclass
class SearchOptions:
    """One option set for both backends; each name means the same thing in kaldi-decoder and k2.

    - ``acoustic_scale``: multiplies the log-probs before the search (against the graph's LM costs).
    - ``beam``: search beam in cost units (Kaldi ``beam``; k2 ``search_beam``).
    - ``lattice_beam``: lattice pruning beam of the lattice methods (Kaldi ``lattice-beam``; k2's
      ``intersect_dense_pruned(output_beam=...)`` is the same thing under another name).
    - ``max_active`` / ``min_active``: bounds on active states per frame (Kaldi ``max-active`` /
      ``min-active``; k2 ``max_active_states`` / ``min_active_states``).
    - ``lm_scale``: weight of the LM against the scaled acoustics: of the rescoring LM (rescoring
      methods) and of the first-pass LM (``hlg``, ``k2-hlg``: then decoded through a lattice, as
      a sweep is). A best path maximises ``acoustic + lm_scale * LM - word_penalty * words``.
    - ``word_penalty``: cost added per hypothesised word (the word insertion penalty, in the LM's
      units: -ln p), after the LM scale; positive values favour fewer words. Every method with
      words (``hlg``, ``hlg-rescore``, ``k2-hlg``, ``k2-nbest-rescore``, ``k2-whole-lattice-rescore``).
    - ``num_paths``: n-best rescoring with the N best distinct word sequences; None = the method's
      default (``hlg-rescore``: the whole lattice; ``k2-nbest-rescore``: 100). 0 = whole lattice
      (``hlg-rescore`` only). ``k2-nbest-rescore`` samples ``num_paths`` paths of the lattice
      (``k2.Nbest.from_lattice``, deterministic) and keeps their distinct word sequences.
    - ``nbest_scale``: k2-nbest-rescore: the lattice scores are multiplied by it before sampling
      (smaller: more distinct sequences; icefall's ``nbest_scale``).
    - ``probe_arcs``: the CPU lattice search (kaldi-decoder, no max-active) lowers both beams for an
      utterance whose least certain frames, searched alone, keep more lattice arcs per frame than
      this (a barely trained model); 0 = never (the search exactly as configured).
    """

    acoustic_scale: float = 1.0
    beam: float = 16.0
    lattice_beam: float = 8.0
    max_active: int = 3000
    min_active: int = 20
    lm_scale: float = 1.0
    word_penalty: float = 0.0
    num_paths: int | None = None
    nbest_scale: float = 0.5
    probe_arcs: float = 50.0

    def check(self) -> None:
        """One-line ToolkitError for values no search can use."""
        if not all(0 < v < math.inf for v in (self.acoustic_scale, self.beam, self.lattice_beam, self.lm_scale)):
            raise ToolkitError("--acoustic-scale, --beam, --lattice-beam and --lm-scale must be positive finite numbers")
        if not 0 <= self.probe_arcs < math.inf:
            raise ToolkitError(f"--probe-arcs {self.probe_arcs}: must be >= 0 (0: no probe)")
        if self.min_active < 1 or self.max_active < self.min_active:
            raise ToolkitError(f"--max-active {self.max_active} must be at least min-active {self.min_active} (>= 1)")
        if not math.isfinite(self.word_penalty):
            raise ToolkitError(f"--word-penalty {self.word_penalty}: must be a finite number")
        if self.num_paths is not None and self.num_paths < 0:
            raise ToolkitError(f"--num-paths {self.num_paths}: must be >= 0")
        if self.nbest_scale <= 0:
            raise ToolkitError(f"--nbest-scale {self.nbest_scale}: must be positive")


@dataclass
class Hypothesis:
    """One utterance's result: its words and the search time spent on it (seconds); in a sweep,
    ``sweep`` holds the words under each (lm_scale, word_penalty) setting, in the sweep's order."""

    text: str
    seconds: float
    sweep: list[str] | None = None
