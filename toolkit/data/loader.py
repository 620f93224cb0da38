"""`make_loader`: duration-bucketed, DDP-aware, exactly resumable training batches.

    loader, sampler = make_loader(cuts, AudioDataset(...), max_duration=200.0, world_size=W, rank=R)
    for batch in loader: ...                       # one epoch; the sampler moves to the next itself
    ckpt["sampler"] = sampler.state_dict()         # plain ints: safe for torch.load(weights_only=True)
    sampler.load_state_dict(ckpt["sampler"])       # on resume, before iterating

Why not lhotse's own sampler state: the DataLoader asks the sampler for batches ahead of
the training loop (prefetching by every worker), so at checkpoint time lhotse's state
counts batches the model has not seen; restoring it would skip them. Here the loader
counts the batches it has *handed to the training loop*; a restored sampler replays the
epoch's batch order (same seed, epoch, world size and rank) and skips exactly those.
The skipped batches only cost sampler time: no audio is loaded for them.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from toolkit.utils import ToolkitError

log = logging.getLogger(__name__)

__all__ = ["make_loader", "ResumableSampler"]

ONE_BUCKET_BIN = 1e9  # seconds: a bin edge no cut reaches


class ResumableSampler(torch.utils.data.Sampler):
    """Wraps lhotse's DynamicBucketingSampler; counts consumed batches for exact resume.

    `epoch` and `batches_consumed` describe the training loop's position. Iterating starts
    at that position (so re-iterating after a `break` continues where the loop stopped);
    a pass that reaches the end of the data moves to the next epoch.
    """

    def __init__(self, inner: Any, config: dict[str, Any]) -> None:
        self.inner = inner
        self.config = config  # what must match on resume (same order of batches)
        self.epoch = 0
        self.batches_consumed = 0

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (no-op if already positioned in it)."""
        if epoch != self.epoch:
            self.epoch, self.batches_consumed = epoch, 0

    def __iter__(self) -> Iterator[Any]:
        self.inner.set_epoch(self.epoch)
        self.inner.allow_iter_to_reset_state()
        it = iter(self.inner)
        for skipped in range(self.batches_consumed):
            try:
                next(it)
            except StopIteration:
                raise ToolkitError(f"sampler state says {self.batches_consumed} batches of epoch {self.epoch} were "
                                   f"consumed but the data has {skipped}; resume with the same cuts and settings") from None
        # not `yield from it`: that would call iter() again, and lhotse's __iter__ restarts the epoch
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            yield batch

    def _consumed_one(self) -> None:
        self.batches_consumed += 1

    def _epoch_done(self) -> None:
        self.epoch, self.batches_consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed, **self.config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in self.config.items():
            if state.get(key) != value:
                raise ToolkitError(f"sampler state was saved with {key}={state.get(key)!r} but this run uses {value!r}; "
                                   f"resume with the same settings (or start a new experiment)")
        self.epoch = int(state["epoch"])
        self.batches_consumed = int(state["batches_consumed"])


class _CountingLoader(DataLoader):
    """A DataLoader that tells its ResumableSampler which batches reached the caller."""

    def __iter__(self) -> Iterator[Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        for batch in super().__iter__():
            sampler._consumed_one()
            yield batch
        sampler._epoch_done()


def make_loader(cuts: Any, dataset: Any, max_duration: float, shuffle: bool = True, seed: int = 0,
                world_size: int = 1, rank: int = 0, num_workers: int = 2, num_buckets: int = 10,
                drop_last: bool = False, persistent_workers: bool = False, buffer_size: int = 20000,
                ) -> tuple[DataLoader, ResumableSampler]:
    """A DataLoader of `dataset[CutSet]` batches of at most `max_duration` seconds of audio each.

    Cuts are bucketed by duration (lhotse DynamicBucketingSampler, `num_buckets`), shuffled
    with `seed` + epoch, and split between `world_size` ranks (this process is `rank`;
    lhotse keeps the number of batches equal on every rank). Returns (loader, sampler).
    """
    from lhotse.dataset import DynamicBucketingSampler

    if max_duration <= 0:
        raise ToolkitError(f"max_duration={max_duration}: must be a positive number of seconds per batch")
    if not 0 <= rank < world_size:
        raise ToolkitError(f"rank={rank} is not within world_size={world_size}")
    # lhotse cannot estimate bins for one bucket (a one-utterance dev set): one open-ended bin then.
    bins = {"duration_bins": [ONE_BUCKET_BIN]} if num_buckets < 2 else {"num_buckets": num_buckets}
    inner = DynamicBucketingSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
                                    world_size=world_size, rank=rank, drop_last=drop_last,
                                    buffer_size=buffer_size, **bins)
    if not inner.duration_bins:
        # lhotse's estimate finds no edge (two cuts, or all of one length): one open bin, as above,
        # instead of an empty list that numpy warns about ("Mean of empty slice") on every epoch.
        inner.duration_bins = [ONE_BUCKET_BIN]
    config = {"max_duration": float(max_duration), "shuffle": shuffle, "seed": seed, "world_size": world_size,
              "rank": rank, "num_buckets": num_buckets, "drop_last": drop_last, "buffer_size": buffer_size}
    sampler = ResumableSampler(inner, config)
    loader = _CountingLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                             persistent_workers=persistent_workers and num_workers > 0,
                             pin_memory=torch.cuda.is_available())
    return loader, sampler
