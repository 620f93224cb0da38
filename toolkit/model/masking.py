"""Span masking and negative sampling with fairseq's semantics, as torch ops on the model's device.

`compute_mask_indices` reproduces `fairseq.data.data_utils.compute_mask_indices` (static span
lengths, overlaps allowed, spans only inside the valid frames, `min_masks`, and
`require_same_masks` trimming every row to the smallest masked count of the batch) without numpy
or per-row Python loops: span starts are a uniformly random subset drawn by ranking random keys,
spans are expanded with a cumulative sum. No host synchronisation happens here.

`sample_negatives` reproduces `Wav2Vec2Model.sample_negatives`: K distractors per masked frame,
drawn uniformly (with replacement) among the *other* masked frames of the same utterance
(`randint(0, high-1)`, then +1 when >= the frame's own index), plus optional cross-sample ones.
"""
from __future__ import annotations

import torch


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None:
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    return torch.rand(shape, device=device)


def _keep_k_random(candidates: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per row, a uniformly random subset of `k[row]` of the True entries of `candidates` (B, W)."""
    keys = _rand(tuple(candidates.shape), candidates.device, generator)
    keys = keys.masked_fill(~candidates, 2.0)  # non-candidates sort last
    rank = keys.argsort(dim=1).argsort(dim=1)
    return candidates & (rank < k[:, None])


def compute_mask_indices(
    shape: tuple[int, int],
    padding_mask: torch.Tensor | None,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    require_same_masks: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, T) bool span mask, True = masked; padded frames (padding_mask True) are never masked.

    Per row with `sz` valid frames: `num = max(min_masks, int(mask_prob * sz / mask_length + U[0,1)))`
    span starts are drawn without replacement from `[0, sz - mask_length)` (fairseq widens that
    range to `num + 1` starts when it is too small), each span covers `mask_length` frames, spans
    may overlap and are clipped at `sz`. With 0.65/10 about 49% of the frames end up masked.
    """
    bsz, tsz = shape
    if device is None:
        device = padding_mask.device if padding_mask is not None else torch.device("cpu")
    if padding_mask is not None:
        sz = tsz - padding_mask.long().sum(dim=1)
    else:
        sz = torch.full((bsz,), tsz, dtype=torch.long, device=device)
    num = torch.floor(mask_prob * sz.float() / mask_length + _rand((bsz,), device, generator)).long()
    num = num.clamp_min(min_masks)
    n_cand = torch.where(sz - mask_length <= num, num + 1, sz - mask_length)
    # A static width covering every row's candidate range (known on the host, no sync).
    num_bound = max(min_masks, int(mask_prob * tsz / mask_length + 1.0))
    width = max(tsz, num_bound + 1)
    pos = torch.arange(width, device=device)
    starts = _keep_k_random(pos[None, :] < n_cand[:, None], num, generator)
    # Frame t is masked when a span starts in (t - mask_length, t].
    csum = starts.long().cumsum(dim=1)
    shifted = torch.nn.functional.pad(csum, (mask_length, 0))[:, :width]
    mask = ((csum - shifted) > 0)[:, :tsz] & (pos[None, :tsz] < sz[:, None])
    if require_same_masks and bsz > 1:
        counts = mask.long().sum(dim=1)
        mask = _keep_k_random(mask, counts.min().expand(bsz), generator)
    return mask


def sample_negatives(
    mask: torch.Tensor,
    num_negatives: int,
    cross_sample_negatives: int = 0,
    generator: torch.Generator | None = None,
    num_masked: int | None = None,
) -> torch.Tensor:
    """(N, K + K_cross) long indices into the N masked frames (row-major order of `mask` (B, T)).

    Same-utterance negatives never point at the frame itself (an utterance with one masked frame
    can only point at itself; the loss then gives that distractor -inf, like fairseq's
    `neg_is_pos`). Cross-sample negatives draw from all N masked frames of the batch, again
    skipping the frame itself. `num_masked` (= mask.sum(), when the caller knows it) avoids a sync.
    """
    device = mask.device
    counts = mask.long().sum(dim=1)
    n = int(counts.sum()) if num_masked is None else num_masked
    starts = counts.cumsum(0) - counts
    row = torch.repeat_interleave(torch.arange(mask.shape[0], device=device), counts, output_size=n)
    own = torch.arange(n, device=device)
    parts = []
    if num_negatives > 0:
        ordinal = own - starts[row]
        high = counts[row]
        r = torch.floor(_rand((n, num_negatives), device, generator) * (high - 1).clamp_min(0)[:, None]).long()
        r = r + (r >= ordinal[:, None]).long()
        r = torch.minimum(r, (high - 1)[:, None])
        parts.append(starts[row][:, None] + r)
    if cross_sample_negatives > 0:
        r = torch.floor(_rand((n, cross_sample_negatives), device, generator) * max(n - 1, 0)).long()
        r = r + (r >= own[:, None]).long()
        parts.append(torch.minimum(r, torch.tensor(n - 1, device=device)))
    return torch.cat(parts, dim=1)


def negatives_from_flat_indices(mask: torch.Tensor, sampled_negative_indices: torch.Tensor) -> torch.Tensor:
    """Convert Hugging Face's (B, T, K) flat `b*T + t` negative indices to (N, K) masked-frame indices.

    The indices must point at masked frames (Hugging Face's `_sample_negative_indices` guarantees
    it): targets are only quantised at masked frames here.
    """
    flat_mask = mask.reshape(-1)
    lookup = flat_mask.long().cumsum(0) - 1
    return lookup[sampled_negative_indices.reshape(flat_mask.shape[0], -1)[flat_mask].long()]
