"""Blank-only collapse of CTC fine-tuning: recognised at validation, and (optionally) restarted.

A CTC model first emits only blanks; a healthy run leaves that state within its first few hundred
updates. When greedy dev output is still all blank at a validation at or after
`train.blank_warn_updates`, the run has collapsed (learning rate too high for the model, too short a
warm-up, the Transformer frozen too long, a vocabulary that does not match the text). The task's
validation then warns and names those settings; `train.on_collapse` says what else happens:

- `warn` (default): nothing else; the run goes on.
- `restart`: training starts again from the run's initial weights (the `train.init` checkpoint, or the
  same random initialisation), with a new optimizer, the peak learning rate multiplied by
  `train.restart_lr_scale` and the warm-up by `train.restart_warmup_scale` (tri_stage: the warm-up
  share of the updates, taken from the hold phase; polynomial/constant: `warmup_updates`), at most
  `train.max_restarts` times. The restarted run gets the whole `train.max_updates` budget again: the
  update counter starts at 0, the collapsed run's `checkpoint-*.pt`, `last.pt`, `best.pt` and
  `metrics.jsonl` move into `exp_dir/collapsed-<k>/`, and the new `metrics.jsonl` starts with a
  `"split": "restart"` row (`restart` k, `collapsed_at` the update, the new `lr` and `warmup`).

The configuration itself (config.yaml, the checkpoints' `train_config`) keeps the values the run was
started with; what the restarts changed lives in the checkpoints' `collapse` entry
(`CollapseGuard.state_dict`) and is re-applied on resume, so a resumed run continues with the
lowered learning rate. `restart` keeps a copy of the initial weights in memory (the model's size).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from toolkit.train import ddp
from toolkit.train.config import ON_COLLAPSE, ScheduleSection  # noqa: F401 - ON_COLLAPSE re-exported
from toolkit.utils import ToolkitError


logger = logging.getLogger("toolkit.train")


def warmup_of(schedule: ScheduleSection, max_updates: int) -> int:
    """Warm-up updates of a schedule (tri_stage: its first phase)."""
    if schedule.name == "tri_stage":
        return int(max_updates * schedule.phase_ratio[0])
    return int(schedule.warmup_updates)


def longer_warmup(schedule: ScheduleSection, max_updates: int, scale: float) -> ScheduleSection:
    """A copy of `schedule` whose warm-up is `scale` times longer (tri_stage: taken from the hold
    phase, then from the decay phase; at most 90% of the updates)."""
    out = copy.deepcopy(schedule)
    if schedule.name == "tri_stage":
        warm, hold, decay = (float(r) for r in schedule.phase_ratio)
        new_warm = min(0.9, warm * scale) if warm > 0 else min(0.9, 0.1 * scale)
        extra = new_warm - warm
        take = min(hold, extra)
        hold, decay = hold - take, decay - (extra - take)
        out.phase_ratio = (new_warm, hold, decay)
    else:
        base = schedule.warmup_updates or max(1, max_updates // 10)
        out.warmup_updates = int(min(0.9 * max_updates, round(base * scale)))
    return out


def fingerprint(state: dict[str, torch.Tensor]) -> list[float]:
    """Sum and sum of squares (float64) of a model's floating weights: tells two weight sets apart."""
    total = torch.zeros(2, dtype=torch.float64)
    for k in sorted(state):
        v = state[k]
        if v.is_floating_point():
            x = v.detach().to(torch.float64)
            total += torch.stack([x.sum(), x.square().sum()]).cpu()
    return [float(a) for a in total]


def same_fingerprint(a: list[float], b: list[float]) -> bool:
    """Two `fingerprint`s of the same weights (summation order aside)."""
    return all(abs(x - y) <= 1e-9 * max(1.0, abs(y)) for x, y in zip(a, b))


class CollapseGuard:
    """Watches validation rows; with `train.on_collapse: restart`, restarts a collapsed run."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        t = trainer.cfg.train
        self.restarts: list[dict[str, Any]] = []  # {"collapsed_at", "lr", "warmup"} per restart
        self.initial_state: Optional[dict[str, torch.Tensor]] = None
        self.initial_moved = False  # a resume found other initial weights than the run started from
        self.initial_missing = bool(getattr(trainer.task, "init_missing", False))  # train.init deleted
        self.saved_fingerprint: Optional[list[float]] = None  # the run's, carried on when it cannot be rebuilt
        if t.on_collapse == "restart" and not self.initial_missing:
            self.initial_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    # -- decision -------------------------------------------------------------------------
    def collapsed(self, row: dict) -> bool:
        t = self.trainer.cfg.train
        return (bool(row) and row.get("blank_only", 0.0) >= 1.0
                and self.trainer.num_updates >= t.blank_warn_updates)

    def after_validation(self, row: dict) -> bool:
        """True when the run was restarted (the caller starts its loop afresh)."""
        t = self.trainer.cfg.train
        if t.on_collapse != "restart":
            return False
        flag = torch.tensor([1.0 if (self.trainer.dist.is_main and self.collapsed(row)) else 0.0],
                            dtype=torch.float64)
        if self.trainer.dist.enabled:  # rank 0 validated; every rank must take the same decision
            flag = ddp.all_reduce_sum(flag.to(self.trainer.device), self.trainer.dist).cpu()
        if float(flag[0]) == 0.0:
            return False
        if len(self.restarts) >= t.max_restarts:
            if not getattr(self, "_gave_up", False):
                logger.warning("greedy dev output is still all blank after %d restart(s) (train.max_restarts=%d); "
                               "going on without restarting: lower optim.lr further or check the vocabulary",
                               len(self.restarts), t.max_restarts)
                self._gave_up = True
            return False
        self.restart()
        return True

    # -- the restart ----------------------------------------------------------------------
    def current(self) -> tuple[float, ScheduleSection]:
        """(peak lr, schedule) in force after the restarts so far."""
        cfg = self.trainer.cfg
        lr, schedule = cfg.optim.lr, cfg.schedule
        for _ in self.restarts:
            lr = lr * cfg.train.restart_lr_scale
            schedule = longer_warmup(schedule, cfg.train.max_updates, cfg.train.restart_warmup_scale)
        return lr, schedule

    def restart(self) -> None:
        from toolkit.train.optim import Scheduler, build_optimizer

        tr = self.trainer
        cfg = tr.cfg
        if self.initial_missing:
            raise ToolkitError(f"train.init {cfg.train.init}: not found, and greedy dev output is all blank at update "
                               f"{tr.num_updates}: a restart starts from the initial weights; restore the file and "
                               "resume, or set train.on_collapse=warn")
        if self.initial_moved:
            given = getattr(tr, "given_init", None) or cfg.train.init
            where = f"{given} (given now; the run started from {cfg.train.init})" if given != cfg.train.init else given
            raise ToolkitError(f"train.init {where}: holds other weights than when this run started, and "
                               f"greedy dev output is all blank at update {tr.num_updates}: a restart would start "
                               "from other weights; restore the file and resume, or set train.on_collapse=warn")
        collapsed_at = tr.num_updates
        k = len(self.restarts) + 1
        self.restarts.append({"collapsed_at": collapsed_at})
        lr, schedule = self.current()
        warmup = warmup_of(schedule, cfg.train.max_updates)
        self.restarts[-1].update(lr=lr, warmup=warmup)
        logger.warning("restart %d/%d: greedy dev output all blank at update %d; starting again from the initial "
                       "weights with peak lr %.3g (was %.3g) and %d warm-up updates (train.on_collapse=restart)",
                       k, cfg.train.max_restarts, collapsed_at, lr, lr / cfg.train.restart_lr_scale, warmup)
        tr.model.load_state_dict(self.initial_state)
        tr.optimizer = build_optimizer(tr.model, cfg.optim)
        tr.scheduler = Scheduler(tr.optimizer, lr, cfg.train.max_updates, schedule)
        if tr.scaler is not None:
            tr.scaler = torch.amp.GradScaler("cuda", init_scale=128.0)
        tr.num_updates = 0
        tr.best = None
        tr.skip_window.clear()
        tr.counters["collapse_restarts"] = k
        if tr.dist.is_main:
            self._move_aside(k)
            tr._log("restart", {"restart": float(k), "collapsed_at": float(collapsed_at), "lr": lr,
                                "warmup": float(warmup)})
        ddp.barrier(tr.dist)

    def _move_aside(self, k: int) -> None:
        """The collapsed run's checkpoints, best.pt, last.pt and metrics into exp_dir/collapsed-<k>/."""
        from toolkit.train import expdir

        exp = self.trainer.exp_dir
        paths = [p for _, p in expdir.list_checkpoints(exp)] + [exp / n for n in ("best.pt", "metrics.jsonl", "last.pt")]
        expdir.set_aside(exp, paths, f"restart {k}: the collapsed run is kept aside", dest=exp / f"collapsed-{k}")

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state: dict[str, Any] = {"restarts": [dict(r) for r in self.restarts]}
        if self.initial_state is not None:
            state["initial_fingerprint"] = fingerprint(self.initial_state)
        elif self.saved_fingerprint is not None:  # not rebuilt on this resume: keep the run's own
            state["initial_fingerprint"] = self.saved_fingerprint
        return state

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Re-apply the restarts recorded in a checkpoint (call after the scheduler's state is loaded).

        A resume builds the initial weights again from train.init: when that file now holds other
        weights (a re-pointed last.pt link), a restart would start from them, so it is refused."""
        saved = (state or {}).get("initial_fingerprint")
        self.saved_fingerprint = saved
        if saved is not None and self.initial_state is not None:
            now = fingerprint(self.initial_state)
            if not same_fingerprint(now, saved):
                self.initial_moved = True
                given = getattr(self.trainer, "given_init", None) or self.trainer.cfg.train.init
                if given != self.trainer.cfg.train.init:
                    logger.warning("train.init %s (given now) holds other weights than the run started from (%s); a "
                                   "collapse restart would start from them and is refused: resume with the run's own "
                                   "train.init, or set train.on_collapse=warn", given, self.trainer.cfg.train.init)
                else:
                    logger.warning("train.init %s holds other weights than when this run started; a collapse restart "
                                   "would start from them and is refused: restore the file, or set "
                                   "train.on_collapse=warn", given)
        self.restarts = [dict(r) for r in (state or {}).get("restarts", [])]
        if not self.restarts:
            return
        tr = self.trainer
        lr, schedule = self.current()
        from toolkit.train.optim import Scheduler

        n = tr.scheduler.num_updates
        tr.scheduler = Scheduler(tr.optimizer, lr, tr.cfg.train.max_updates, schedule)
        tr.scheduler.step_update(n)
        tr.counters["collapse_restarts"] = len(self.restarts)
        logger.info("resumed after %d collapse restart(s): peak lr %.3g, %d warm-up updates", len(self.restarts), lr,
                    warmup_of(schedule, tr.cfg.train.max_updates))


def restart_rows(exp_dir: str | Path) -> list[dict]:
    """The `restart` rows of an experiment's metrics.jsonl (for reports and tests)."""
    path = Path(exp_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == "restart"]
