"""Greedy (best-path) CTC decoding: per-frame arg-max, repeats collapsed, blanks dropped."""
from __future__ import annotations

from typing import Protocol

import torch


class _Detokenizer(Protocol):
    def decode(self, ids: list[int]) -> str: ...


def greedy_ids(log_probs: torch.Tensor, lengths: torch.Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """Token ids of the arg-max path of each utterance, with CTC's collapsing rule.

    log_probs: (B, T, V) scores (any monotone transform of probabilities works); lengths: (B,) valid
    frames (None = all T). A token repeated on adjacent frames counts once; a blank between two
    equal tokens keeps both.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    B, T, _ = log_probs.shape
    best = log_probs.argmax(dim=-1)  # (B, T), on the model's device
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    lengths = lengths.to(best.device)
    valid = torch.arange(T, device=best.device)[None, :] < lengths[:, None]
    changed = torch.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = (valid & changed & (best != blank)).cpu()
    best = best.cpu()
    return [best[b][keep[b]].tolist() for b in range(B)]


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor | None, tokenizer: _Detokenizer,
                  blank: int = 0) -> list[str]:
    """Greedy hypotheses as text (word pieces detokenised by ``tokenizer.decode``)."""
    return [tokenizer.decode(ids) for ids in greedy_ids(log_probs, lengths, blank)]
