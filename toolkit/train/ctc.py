"""The CTC loss of fine-tuning: torch's (the model core's `ctc_loss`) or k2's, chosen by the config.

``train.ctc_loss: torch | k2`` and ``train.ctc_topo: standard | modified``. Both losses have the
same contract as `toolkit.model.wav2vec2.ctc_loss`: log_probs (B, T, V), out_lengths (B,),
targets (B, L) padded with any value past target_lengths (B,) -> ``CTCLoss(loss, kept, dropped)``,
the loss summed over the utterances whose frames can hold their labels, the others left out and
counted (docs/DESIGN.md, "Traps": silently zeroed ones drive CTC towards blank-only output), infinite
losses zeroed (``zero_infinity``).

k2 (icefall's CTC training graphs): each kept utterance's graph is ``k2.ctc_topo`` composed with
its label sequence (a linear FSA with epsilon self-loops), intersected with its log-probs
(``k2.DenseFsaVec``) without pruning; ``k2.ctc_loss`` gives the negated total log-semiring score.
With the standard topology it equals ``torch.nn.functional.ctc_loss`` (a test checks it to 1e-5).
The modified topology (``k2.ctc_topo(modified=True)``: O(V) arcs instead of O(V^2), for large
word-piece vocabularies) also lets a token follow itself without a blank, so an utterance needs
only one frame per label; decode such a model with ``compile-graph --compact-topo`` graphs.
"""
from __future__ import annotations

from typing import Callable

import torch

from toolkit.model.wav2vec2 import CTCLoss, ctc_loss, ctc_min_frames
from toolkit.train.config import CTC_LOSSES, CTC_TOPOS
# k2.ctc_loss prunes the intersection at this many nats below the best path; CTC graphs are small,
# so it is set far beyond any path's score range: nothing is pruned and the loss is exact.
NO_PRUNING_BEAM = 1.0e10


class K2CtcLoss:
    """``loss(log_probs, out_lengths, targets, target_lengths) -> CTCLoss`` through k2 (blank = 0)."""

    def __init__(self, modified: bool = False):
        from toolkit.lm.k2_graph import import_k2

        self.k2 = import_k2()
        self.modified = modified
        self._topo: dict[tuple[int, str], object] = {}

    def topo(self, vocab_size: int, device: torch.device):
        key = (vocab_size, str(device))
        if key not in self._topo:
            self._topo[key] = self.k2.arc_sort(self.k2.ctc_topo(vocab_size - 1, modified=self.modified, device=device))
        return self._topo[key]

    def graphs(self, labels: list[list[int]], vocab_size: int, device: torch.device):
        """One CTC training graph per label sequence: topology o (labels with epsilon self-loops)."""
        k2 = self.k2
        linear = k2.arc_sort(k2.add_epsilon_self_loops(k2.linear_fsa(labels, device=device)))
        return k2.connect(k2.compose(self.topo(vocab_size, device), linear, treat_epsilons_specially=False))

    def min_frames(self, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        return target_lengths.clone() if self.modified else ctc_min_frames(targets, target_lengths)

    def __call__(self, log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor) -> CTCLoss:
        k2 = self.k2
        fits = out_lengths >= self.min_frames(targets, target_lengths)
        kept = int(fits.sum())
        if kept == 0:
            return CTCLoss(log_probs.sum() * 0.0, 0, int(fits.numel()))
        idx = torch.nonzero(fits).flatten()
        # k2 wants the supervision segments longest first; the graphs follow the same order
        idx = idx[torch.argsort(out_lengths[idx], descending=True, stable=True)]
        lengths = out_lengths[idx].to(torch.int32).cpu()
        segments = torch.stack([torch.arange(len(idx), dtype=torch.int32), torch.zeros_like(lengths), lengths], dim=1)
        labels = [targets[i, : int(target_lengths[i])].tolist() for i in idx.tolist()]
        with torch.autocast(device_type=log_probs.device.type, enabled=False):
            dense = k2.DenseFsaVec(log_probs[idx].float(), segments)
            graphs = self.graphs(labels, log_probs.shape[-1], log_probs.device)
            per_utt = k2.ctc_loss(graphs, dense, output_beam=NO_PRUNING_BEAM, reduction="none", use_double_scores=True)
        # zero_infinity, as torch's: an utterance without any path contributes nothing
        per_utt = torch.where(torch.isfinite(per_utt), per_utt, torch.zeros_like(per_utt))
        return CTCLoss(per_utt.sum().float(), kept, int(fits.numel()) - kept)


def make_ctc_loss(kind: str = "torch", topo: str = "standard") -> Callable[..., CTCLoss]:
    """The loss function of ``train.ctc_loss`` / ``train.ctc_topo`` (values checked by config.validate);
    "k2" without k2 installed is a one-line ToolkitError saying how to install it."""
    if kind not in CTC_LOSSES or topo not in CTC_TOPOS or (kind == "torch" and topo != "standard"):
        raise ValueError(f"ctc_loss={kind!r}, ctc_topo={topo!r}: not a combination config.validate accepts")
    return ctc_loss if kind == "torch" else K2CtcLoss(modified=topo == "modified")
