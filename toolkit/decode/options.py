"""What every decoding backend (kaldi-decoder, k2) shares: the search options and the result type."""
from __future__ import annotations

from dataclasses import dataclass, field

from toolkit.utils import ToolkitError

DEFAULT_K2_NBEST = 100  # paths of k2-nbest-rescore when num_paths is not given
RESCORE_METHODS = ("k2-nbest-rescore", "k2-whole-lattice-rescore")  # the searches that sweep `lm_scales`


def lm_scale_key(scale: float) -> str:
    """The name of one LM scale's result (``lm_scale_0.7``): a Hypothesis alternative and a directory."""
    return f"lm_scale_{scale:g}"


@dataclass
class SearchOptions:
    """One option set for both backends; each name means the same thing in kaldi-decoder and k2.

    - ``acoustic_scale``: multiplies the log-probs before the search (against the graph's LM costs).
    - ``beam``: search beam in cost units (Kaldi ``beam``; k2 ``search_beam``).
    - ``lattice_beam``: lattice pruning beam of the lattice methods (Kaldi ``lattice-beam``; k2's
      ``intersect_dense_pruned(output_beam=...)`` is the same thing under another name).
    - ``max_active`` / ``min_active``: bounds on active states per frame (Kaldi ``max-active`` /
      ``min-active``; k2 ``max_active_states`` / ``min_active_states``).
    - ``lm_scale``: weight of the rescoring LM against the scaled acoustics (rescoring methods).
    - ``num_paths``: n-best rescoring with the N best distinct word sequences; None = the method's
      default (``hlg-rescore``: the whole lattice; ``k2-nbest-rescore``: 100). 0 = whole lattice
      (``hlg-rescore`` only). ``k2-nbest-rescore`` samples ``num_paths`` paths of the lattice
      (``k2.Nbest.from_lattice``, deterministic) and keeps their distinct word sequences.
    - ``nbest_scale``: k2-nbest-rescore: the lattice scores are multiplied by it before sampling
      (smaller: more distinct sequences; icefall's ``nbest_scale``).
    - ``lm_scales``: rescoring methods of k2: also the best path at each of these LM scales, all
      from the same lattice (icefall's ``lm_scale_list``); returned as `Hypothesis.alternatives`
      under `lm_scale_key(scale)`, so a dev set can choose the scale for the test set.
    """

    acoustic_scale: float = 1.0
    beam: float = 16.0
    lattice_beam: float = 8.0
    max_active: int = 3000
    min_active: int = 20
    lm_scale: float = 1.0
    num_paths: int | None = None
    nbest_scale: float = 0.5
    lm_scales: tuple[float, ...] = ()

    def check(self) -> None:
        """One-line ToolkitError for values no search can use."""
        if self.acoustic_scale <= 0 or self.beam <= 0 or self.lattice_beam <= 0 or self.lm_scale <= 0:
            raise ToolkitError("--acoustic-scale, --beam, --lattice-beam and --lm-scale must be positive")
        if self.min_active < 1 or self.max_active < self.min_active:
            raise ToolkitError(f"--max-active {self.max_active} must be at least min-active {self.min_active} (>= 1)")
        if self.num_paths is not None and self.num_paths < 0:
            raise ToolkitError(f"--num-paths {self.num_paths}: must be >= 0")
        if self.nbest_scale <= 0:
            raise ToolkitError(f"--nbest-scale {self.nbest_scale}: must be positive")
        if any(s <= 0 for s in self.lm_scales):
            raise ToolkitError(f"--lm-scales {','.join(f'{s:g}' for s in self.lm_scales)}: every scale must be positive")


@dataclass
class Hypothesis:
    """One utterance's result: its words and the search time spent on it (seconds).

    ``alternatives``: the words under other settings of the same search (e.g. ``lm_scale_0.5`` ->
    text, see `SearchOptions.lm_scales`), computed from the same lattice.
    """

    text: str
    seconds: float
    alternatives: dict[str, str] = field(default_factory=dict)
