"""Data-parallel training across processes launched by torchrun (or Slurm via torchrun).

We do not wrap the model in `DistributedDataParallel`; instead, after the last backward of an
update, the gradients of every trainable parameter are summed across ranks in a few flat
buckets. Why:
- one all-reduce per *update*, not per micro-batch, under gradient accumulation;
- LayerDrop and `freeze_finetune_updates` leave parameters without gradients; DDP then
  needs `find_unused_parameters=True` (and hangs or errors when ranks disagree, the trap in
  docs/DESIGN.md, "Traps"). Here a parameter that got a gradient on any rank gets a zero gradient on the
  ranks where it did not, so ranks can never disagree on the bucket layout;
- the loss normalisation of fairseq (divide by the global number of masked frames) is then
  a single multiplication.
The price is no overlap of communication with the backward pass; with the large per-update
batches of wav2vec 2.0 that is a small fraction of the step.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, ...).

    NCCL on CUDA, gloo on CPU. A single process (no WORLD_SIZE or WORLD_SIZE=1) runs alone.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a small float64 tensor of statistics over ranks (in place; returned)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj: object, info: DistInfo) -> list:
    """Every rank's `obj` (picklable), in rank order; [obj] for a single process."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_grads(params: list[torch.nn.Parameter], info: DistInfo,
                     bucket_bytes: int = 25 * 2 ** 20) -> None:
    """Replace every gradient by its sum over ranks.

    Parameters without a gradient on this rank but with one elsewhere get zeros first, so the
    buckets line up on every rank.
    """
    if not info.enabled:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    active = []
    for p, used in zip(params, has_grad.tolist()):
        if used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            active.append(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in active:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= bucket_bytes:
            _reduce_bucket(bucket)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
