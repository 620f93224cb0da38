"""AdamW with fairseq's settings and the two learning-rate schedules of wav2vec 2.0.

Schedules are pure functions of the update index `n` (the number of updates already done
when the next one is taken), so resuming needs only `n`:
- polynomial (pretraining, fairseq `polynomial_decay`, same values as transformers'
  `get_polynomial_decay_schedule_with_warmup`): lr * n/warmup during warm-up, then
  (lr - end_lr) * (1 - (n - warmup)/(total - warmup))^power + end_lr, end_lr after `total`.
- tri_stage (fine-tuning, fairseq `tri_stage`): linear from init_lr_scale*lr to lr over
  phase_ratio[0]*total updates, flat for phase_ratio[1]*total, exponential decay to
  final_lr_scale*lr over phase_ratio[2]*total, then flat at final_lr_scale*lr.
- constant: linear warm-up, then lr.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from toolkit.train.config import OptimSection, ScheduleSection


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices/convolutions/codebooks, undecayed 1-D parameters.

    fairseq decays everything; we follow the now-common habit of not decaying biases, norm
    gains and the mask embedding (all 1-D), which only matters when weight_decay > 0.
    Frozen parameters (requires_grad False at build time) are still included, so that
    unfreezing later (freeze_finetune_updates) needs no new optimizer.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    """AdamW(lr, betas, eps, weight_decay) over `param_groups(model)`; lr is set by the schedule."""
    betas = tuple(float(b) for b in cfg.betas)
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=betas,
                             eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_at(n: int, peak_lr: float, total: int, cfg: ScheduleSection) -> float:
    """Learning rate for the update taken after `n` completed updates."""
    if cfg.name == "tri_stage":
        return _tri_stage(n, peak_lr, total, cfg)
    warmup = cfg.warmup_updates
    if warmup > 0 and n < warmup:
        return peak_lr * n / warmup
    if cfg.name == "constant":
        return peak_lr
    if n >= total:
        return cfg.end_lr
    remaining = 1.0 - (n - warmup) / max(1, total - warmup)
    return (peak_lr - cfg.end_lr) * remaining ** cfg.power + cfg.end_lr


def _tri_stage(n: int, peak_lr: float, total: int, cfg: ScheduleSection) -> float:
    r_warm, r_hold, r_decay = cfg.phase_ratio
    warm, hold, decay = int(total * r_warm), int(total * r_hold), int(total * r_decay)
    init_lr, final_lr = cfg.init_lr_scale * peak_lr, cfg.final_lr_scale * peak_lr
    if n < warm:
        return init_lr + (peak_lr - init_lr) * n / warm
    n -= warm
    if n < hold:
        return peak_lr
    n -= hold
    if n <= decay and decay > 0:
        # exp(-k * n) with k chosen so that the rate reaches final_lr after `decay` updates
        return peak_lr * math.exp(math.log(cfg.final_lr_scale) * n / decay)
    return final_lr


def schedule_warnings(cfg: ScheduleSection, max_updates: int) -> list[str]:
    """Settings of the schedule that do not do what they say: a warm-up tri_stage ignores (its
    phases come from phase_ratio), and a warm-up as long as the run (the rate never reaches its peak)."""
    warm = cfg.warmup_updates
    if cfg.name == "tri_stage":
        if warm > 0:
            return [f"schedule.warmup_updates={warm} has no effect with schedule.name=tri_stage: its warm-up is "
                    f"schedule.phase_ratio[0] x train.max_updates = {int(max_updates * cfg.phase_ratio[0])} updates"]
        return []
    if warm >= max_updates:
        return [f"schedule.warmup_updates={warm} >= train.max_updates={max_updates}: the learning rate never leaves "
                f"the warm-up and peaks at {100 * max_updates / warm:.1f}% of optim.lr; shorten the warm-up"]
    return []


class Scheduler:
    """Sets every param group's lr from `lr_at(num_updates)`; state is just the update count."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, total: int, cfg: ScheduleSection):
        self.optimizer, self.peak_lr, self.total, self.cfg = optimizer, peak_lr, total, cfg
        self.num_updates = 0
        self.step_update(0)

    def step_update(self, num_updates: int) -> float:
        self.num_updates = num_updates
        lr = lr_at(num_updates, self.peak_lr, self.total, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def get_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.step_update(int(state["num_updates"]))


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all gradients (fp32), non-finite if any gradient is."""
    norms = [p.grad.detach().float().norm(2) for p in params if p.grad is not None]
    if not norms:
        return torch.tensor(0.0)
    return torch.stack(norms).norm(2)
