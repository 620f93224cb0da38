"""The training loop shared by pretraining and CTC fine-tuning.

`Trainer(cfg, task).run()` owns everything that does not depend on the objective: devices,
AMP, gradient accumulation, the data-parallel gradient sum, loss normalisation, clipping,
the non-finite guard, checkpoints and exact resume, logging (text, TensorBoard,
metrics.jsonl) and validation scheduling. A `Task` (toolkit/train/tasks.py) supplies the
model, the batches and the loss.

Loss normalisation (fairseq): a task returns the *summed* loss of a micro-batch and its
`sample_size` (masked frames for pretraining, utterances for CTC). Gradients are summed over
micro-batches and ranks and divided once by the global sample size, so the update does not
depend on how the batch was split across accumulation steps or processes.

Update counting: `num_updates` counts applied updates. A skipped update (non-finite loss or
gradient, empty batch) leaves weights, optimizer and schedule untouched.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from toolkit.train import ddp, expdir
from toolkit.train.collapse import CollapseGuard, same_fingerprint
from toolkit.train.expdir import list_checkpoints
from toolkit.train.config import TrainConfig, config_to_dict, config_to_yaml
from toolkit.train.optim import Scheduler, build_optimizer, grad_norm, schedule_warnings
from toolkit.utils import ToolkitError, atomic_write_text, resolve_device

logger = logging.getLogger("toolkit.train")

MIN_LOSS_SCALE = 1e-4  # fairseq's min_loss_scale: below it fp16 training has diverged


@dataclass
class StepOutput:
    """One micro-batch: summed loss (fp32 scalar), its normaliser and loggable sums.

    `metrics` values are floats averaged over micro-batches when logged, except keys listed
    in `sums` (summed, e.g. counts of dropped utterances).
    """

    loss: torch.Tensor
    sample_size: float
    audio_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    sums: tuple[str, ...] = ()


class Task:
    """The objective-specific half of training. See tasks.py for the two implementations."""

    kind: str = "pretrain"
    init_missing: bool = False  # train.init deleted; the architecture came from the checkpoint to resume
    init_fingerprint: Optional[list[float]] = None  # of the weights train.init holds (set by build_model)

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def vocab(self) -> Optional[dict]:
        return None

    def model_config(self) -> Any:
        raise NotImplementedError

    def train_batches(self, dist: ddp.DistInfo, seed: int) -> "BatchStream":
        raise NotImplementedError

    def step(self, model: torch.nn.Module, batch: dict, num_updates: int) -> StepOutput:
        raise NotImplementedError

    def on_update(self, model: torch.nn.Module, num_updates: int) -> None:
        """Called before every update (temperature annealing, freezing)."""

    def validate(self, model: torch.nn.Module, num_updates: int) -> dict[str, float]:
        return {}

    def best_metric(self) -> Optional[str]:
        """Validation metric (lower is better) that selects best.pt, or None."""
        return None

    def check_health(self, row: dict, num_updates: int) -> None:
        """Called with every logged training row (averaged over the log interval): warn about an
        objective-specific failure (e.g. codebook collapse in pretraining)."""


class BatchStream:
    """Endless batches over epochs of a (DataLoader, sampler) pair, with an exact position.

    The position is (epoch, batches consumed in the epoch). On resume the sampler is
    fast-forwarded with its own `load_state_dict` when it has one (lhotse samplers: no audio is
    read); otherwise the consumed batches are drawn again and discarded.
    """

    def __init__(self, loader: Any, sampler: Any = None, seed: int = 0):
        self.loader, self.sampler = loader, sampler
        # DataLoader.__iter__ draws the workers' base seed from the *global* torch RNG unless the
        # loader has its own generator; that draw would happen at different points in an
        # uninterrupted and a resumed run (e.g. lazily, inside generator-based loaders), so
        # give the loader a private one. (Workers' seeds do not affect our deterministic datasets.)
        if isinstance(loader, torch.utils.data.DataLoader) and loader.generator is None:
            loader.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.consumed = 0, 0
        self._it: Optional[Iterator] = None
        self._sampler_state: Optional[dict] = None

    def _start_epoch(self, skip: int) -> None:
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        fast = skip > 0 and self._sampler_state is not None
        if fast:
            self.sampler.load_state_dict(self._sampler_state)
        self._sampler_state = None
        self._it = iter(self.loader)
        if not fast:
            for _ in range(skip):
                next(self._it)

    def prime(self) -> None:
        """Open the current epoch's iterator now. DataLoader.__iter__ draws from the global torch
        RNG; the trainer primes before restoring the RNG state on resume, so that draw does not
        shift the random stream of the resumed updates."""
        if self._it is None:
            self._start_epoch(self.consumed)

    def __next__(self) -> dict:
        if self._it is None:
            self._start_epoch(self.consumed)
        while True:
            try:
                batch = next(self._it)
                self.consumed += 1
                return batch
            except StopIteration:
                if self.consumed == 0:
                    raise ToolkitError("the training data gave no batch; check data.train_cuts and "
                                       "data.max_duration (longer than every cut?)") from None
                self.epoch, self.consumed = self.epoch + 1, 0
                self._start_epoch(0)

    def __iter__(self) -> "BatchStream":
        return self

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "consumed": self.consumed}
        # The sampler contract (toolkit.data.loader) counts batches handed to the loop, not the
        # ones prefetched by workers, so its state is exact with any num_workers.
        if self.sampler is not None and hasattr(self.sampler, "state_dict"):
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._sampler_state = state.get("sampler")
        self._it = None


# ---------------------------------------------------------------------------------------
# RNG state (stored as tensors/lists so that checkpoints load with weights_only=True)

def get_rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block (validation) with fixed seeds and leave the training RNG streams untouched."""
    saved = get_rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


# Settings that may change between an interrupted run and its resume: how long and how often,
# not what is trained. Anything else changed is listed and refused without --allow-config-change.
RESUMABLE_CHANGES = ("exp_dir", "train.max_updates", "train.log_interval", "train.save_interval",
                     "train.valid_interval", "train.keep_last", "train.device", "train.max_valid_batches",
                     "data.num_workers", "data.dev_cuts", "train.blank_warn_updates")
# fixed by the sampler's saved state (toolkit.data.loader): --allow-config-change cannot accept them
SAMPLER_BOUND = ("data.max_duration", "data.num_buckets", "train.seed")
# accepted on resume, but what they change is said: the dev WERs that choose best.pt, the schedule
RESUME_NOTES = {
    "data.dev_cuts": "best.pt is still chosen against the best dev WER so far, measured on the old dev set",
    "train.max_valid_batches": "best.pt is still chosen against the best dev WER so far, measured on other batches",
    "train.max_updates": "the learning-rate schedule is stretched to the new length from here on",
    "train.init": "the weights continue from the checkpoint; the run keeps its recorded init (one holding other "
                  "weights is refused)",
}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "overrides":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resumable_change(change: str) -> bool:
    """Whether a `config_changes` line is one a resume of the same run may make."""
    return (change.split(":")[0] in RESUMABLE_CHANGES
            or change.startswith(("model.preset:", "model.overrides:", "train.init:")))


def config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every setting that differs (nested dicts flattened with dots)."""
    a, b = _flatten(saved, prefix), _flatten(current, prefix)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume(path: Path, ckpt: dict, task: Task, cfg: TrainConfig, allow_config_change: bool) -> None:
    """A resume must continue the same experiment: the same vocabulary (a reordered tokens.txt of the
    same size would silently scramble the output layer), and the same model and training settings
    unless `allow_config_change` (each change is listed on its own line first)."""
    vocab = task.vocab()
    if vocab is not None:
        saved = (ckpt.get("vocab") or {}).get("tokens")
        tokens = vocab["tokens"]
        if saved != tokens:
            saved = saved or []
            i = next((i for i, (a, b) in enumerate(zip(saved, tokens)) if a != b), min(len(saved), len(tokens)))
            a = saved[i] if i < len(saved) else "(none)"
            b = tokens[i] if i < len(tokens) else "(none)"
            raise ToolkitError(f"{path}: the vocabulary of data.lang_dir differs from the checkpoint's ({len(tokens)} vs "
                               f"{len(saved)} tokens, first difference at id {i}: {b!r} vs {a!r}); resume with the lang "
                               "dir the run started with, or start a new exp_dir")
    model_cfg = task.model_config()
    changes = config_changes(ckpt.get("model_config") or {}, model_cfg.to_dict() if model_cfg is not None else {},
                             "model.")
    train_changes = config_changes(ckpt.get("train_config") or {}, config_to_dict(cfg))
    for c in train_changes:
        note = RESUME_NOTES.get(c.split(":")[0])
        if note:
            logger.warning("resume from %s: changed %s (%s)", path, c, note)
    changes += [c for c in train_changes if not resumable_change(c)]
    if not changes:
        return
    bound = [c for c in changes if c.split(":")[0] in SAMPLER_BOUND]
    if bound:  # no flag can change these: the resumed batches continue the saved batch order
        raise ToolkitError(f"{path}: {bound[0]}: the run's batches were drawn with the old value and a resume "
                           "continues them; resume with the old value, or start a new exp_dir")
    for c in changes:
        logger.warning("resume from %s: changed %s", path, c)
    if not allow_config_change:
        raise ToolkitError(f"{path}: the config differs from the one this run was started with ({len(changes)} "
                           f"change(s) listed above, e.g. {changes[0]}); resume with the same config, pass "
                           "--allow-config-change to accept them, or start a new exp_dir")


def check_init_weights(path: Path, ckpt: dict, now: Optional[list[float]], given: Any, saved_init: Any,
                       allow_config_change: bool) -> Optional[list[float]]:
    """The fingerprint a resumed run carries on: its own. A train.init that holds other weights than
    the run started from (another file, or the same path re-pointed) would leave a run that started
    from the old weights looking like one started from the new: refused unless `allow_config_change`.
    Another spelling or a copy of the same weights is the same run."""
    saved = ckpt.get("init_fingerprint")
    if saved is None or now is None:  # an older checkpoint, or train.init deleted: nothing to compare
        return saved if saved is not None else now
    if same_fingerprint(now, saved):
        return saved
    where = f"{given} (the run started from {saved_init})" if given != saved_init else f"{given}"
    if not allow_config_change:
        raise ToolkitError(f"{path}: train.init {where} holds other weights than this run started from; resume "
                           "with the run's own init, start a new exp_dir to fine-tune from the new weights, or pass "
                           "--allow-config-change to continue the old run")
    logger.warning("resume from %s: train.init %s holds other weights than this run started from; the run continues "
                   "from its checkpoint (--allow-config-change)", path, where)
    return saved


class Trainer:
    """Runs `cfg.train.max_updates` updates of `task`, resuming from exp_dir when asked."""

    def __init__(self, cfg: TrainConfig, task: Task, resume: bool | str = True, allow_config_change: bool = False):
        self.cfg, self.task, self.resume = cfg, task, resume
        self.allow_config_change = allow_config_change
        self.exp_dir = Path(cfg.exp_dir)
        base = resolve_device(cfg.train.device, option="train.device")
        self.dist = ddp.init_distributed(base.type)
        self.device = torch.device("cuda", self.dist.local_rank) if base.type == "cuda" else base
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp_dtype = self._amp_dtype()
        self.num_updates = 0
        self.skip_window: collections.deque = collections.deque(maxlen=cfg.train.skip_nonfinite_window)
        self.counters = {"skipped_nonfinite": 0, "skipped_empty": 0, "fp16_overflows": 0}
        self.best: Optional[float] = None
        self.writer = None
        self._sum_keys: set[str] = set()  # metrics summed (not averaged) over a log window

    # -- setup ---------------------------------------------------------------------------
    def _amp_dtype(self) -> Optional[torch.dtype]:
        amp = self.cfg.train.amp
        if amp == "none":
            return None
        if self.device.type != "cuda":
            if amp == "fp16":
                logger.warning("train.amp=fp16 needs a GPU; training in fp32 on %s", self.device)
                return None
            return torch.bfloat16
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            logger.warning("this GPU has no bf16; falling back to fp16 with loss scaling")
            return torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _setup_output(self) -> None:
        """Log file and TensorBoard writer (config.yaml is written once the resume checks pass); on a
        resume TensorBoard events logged after the resumed update (by the interrupted run) are purged."""
        if not self.dist.is_main:
            return
        (self.exp_dir / "log").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.exp_dir / "log" / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S"))
        root = logging.getLogger("toolkit")
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:  # the file log is INFO even when the console is quieter
            root.setLevel(logging.INFO)
        self._log_handler = handler
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.exp_dir / "tensorboard"),
                                        purge_step=self.num_updates + 1 if self.num_updates else None)
        except ImportError:  # tensorboard is optional at run time
            logger.warning("tensorboard is not installed; no TensorBoard scalars")

    def _build(self) -> None:
        seed = self.cfg.train.seed
        seed_everything(seed)
        self.model = self.task.build_model().to(self.device)
        self.params = [p for p in self.model.parameters()]
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        self.scheduler = Scheduler(self.optimizer, self.cfg.optim.lr, self.cfg.train.max_updates, self.cfg.schedule)
        if self.dist.is_main:
            for msg in schedule_warnings(self.cfg.schedule, self.cfg.train.max_updates):
                logger.warning("%s", msg)
        self.scaler = None
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler("cuda", init_scale=128.0)
        self.batches = self.task.train_batches(self.dist, seed)
        self.collapse = CollapseGuard(self)  # train.on_collapse (toolkit/train/collapse.py)
        # The weights train.init holds now (set by build_model): a resume compares them with the run's.
        self.init_fingerprint = self.task.init_fingerprint
        # Per-rank streams for dropout/masking; LayerDrop is seeded identically by the task.
        seed_everything(seed + 1000 * self.dist.rank)

    # -- checkpoints ---------------------------------------------------------------------
    def _model_generators(self) -> dict[str, torch.Generator]:
        """Private generators of the model (LayerDrop, masks, negatives): saved for exact resume."""
        gens = {}
        for name, module in self.model.named_modules():
            for attr, value in vars(module).items():
                if isinstance(value, torch.Generator):
                    gens[f"{name}.{attr}"] = value
        return gens

    def _checkpoint_state(self) -> dict:
        rng = get_rng_state()
        rng["generators"] = {k: g.get_state() for k, g in self._model_generators().items()}
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": self.batches.state_dict(),
            "rng": rng,
            "step": self.num_updates,
            "train_config": config_to_dict(self.cfg),
            "counters": dict(self.counters),
            "skip_window": [bool(x) for x in self.skip_window],
            "best": self.best,
            "collapse": self.collapse.state_dict(),
            "init_fingerprint": self.init_fingerprint,
        }

    def save(self, path: Path) -> None:
        from toolkit.model.checkpoint import save_checkpoint

        save_checkpoint(path, self.model, self.task.model_config(), self.task.kind,
                        vocab=self.task.vocab(), **self._checkpoint_state())

    def save_step(self) -> None:
        """checkpoint-<step>.pt, last.pt (symlink) and pruning to the last `keep_last`."""
        if not self.dist.is_main:
            return
        path = self.exp_dir / f"checkpoint-{self.num_updates}.pt"
        self.save(path)
        self._point_last(path.name)
        # Everything in exp_dir is this run's lineage (expdir.set_aside_*), so the oldest go.
        for _, old in list_checkpoints(self.exp_dir)[: -self.cfg.train.keep_last]:
            old.unlink()
        logger.info("saved %s", path)

    def _maybe_resume(self) -> Optional[Path]:
        """Restore the training state from `self.resume`; returns the checkpoint resumed from."""
        if self.resume is False:
            return None
        if isinstance(self.resume, str):
            path = Path(self.resume)
        else:
            found = list_checkpoints(self.exp_dir)
            if not found:
                return None
            path = found[-1][1]
        from toolkit.model.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt or "step" not in ckpt:
            raise ToolkitError(f"{path}: not a training checkpoint (no optimizer state); use train.init to start from it")
        if ckpt.get("kind") != self.task.kind:
            raise ToolkitError(f"{path}: a {ckpt.get('kind')!r} checkpoint cannot resume {self.task.kind!r} training; "
                               "use another exp_dir or train.init")
        check_resume(path, ckpt, self.task, self.cfg, self.allow_config_change)
        saved_init = ((ckpt.get("train_config") or {}).get("train") or {}).get("init")
        self.given_init = self.cfg.train.init  # what the initial weights were built from on this resume
        self.init_fingerprint = check_init_weights(path, ckpt, self.init_fingerprint, self.given_init, saved_init,
                                                   self.allow_config_change)
        if isinstance(saved_init, str) and saved_init != self.cfg.train.init:
            self.cfg.train.init = saved_init  # the run's weights came from there: config.yaml keeps saying so
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise ToolkitError(f"{path}: model weights do not fit this config ({str(e).splitlines()[0]}); "
                               "resume with the config the run was started with") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.batches.load_state_dict(ckpt["sampler"])
        self.num_updates = int(ckpt["step"])
        self.counters.update(ckpt.get("counters", {}))
        self.skip_window.extend(ckpt.get("skip_window", []))
        self.best = ckpt.get("best")
        self._resume_rng = ckpt["rng"]
        self.collapse.load_state_dict(ckpt.get("collapse"))
        logger.info("resumed from %s at update %d", path, self.num_updates)
        return path

    def _own_exp_dir(self, resumed_from: Optional[Path]) -> None:
        """Keep exp_dir to one lineage: set aside another run's files (fresh start) or another
        branch's checkpoints (resume), and cut metrics.jsonl back to the resumed update."""
        if not self.dist.is_main:
            return
        if resumed_from is None:
            expdir.set_aside_for_fresh_start(self.exp_dir)
            return
        expdir.set_aside_other_branch(self.exp_dir, self.num_updates, resumed_from)
        expdir.truncate_metrics(self.exp_dir, self.num_updates)
        last = self.exp_dir / "last.pt"
        target = resumed_from.resolve()  # `--resume EXP/last.pt` names the link: point at what it points at
        if target.parent == self.exp_dir.resolve() and (last.is_symlink() or last.exists()):
            self._point_last(target.name)

    def _point_last(self, name: str) -> None:
        link_tmp = self.exp_dir / ".last.pt.tmp"
        with contextlib.suppress(FileNotFoundError):
            link_tmp.unlink()
        os.symlink(name, link_tmp)
        os.replace(link_tmp, self.exp_dir / "last.pt")

    # -- one update ----------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def train_step(self) -> Optional[dict]:
        """Accumulate `grad_accum` micro-batches and apply one update; None if it was skipped."""
        cfg = self.cfg
        self.model.train()
        self.task.on_update(self.model, self.num_updates)
        self.optimizer.zero_grad(set_to_none=True)
        stats = torch.zeros(3, dtype=torch.float64)  # sample_size, nonfinite flag, audio seconds
        outs: list[StepOutput] = []
        for _ in range(cfg.optim.grad_accum):
            batch = self._to_device(next(self.batches))
            with self._autocast():
                out = self.task.step(self.model, batch, self.num_updates)
            loss = out.loss.float()
            finite = bool(torch.isfinite(loss))
            if loss.requires_grad:
                # Backward even on a non-finite loss: the other ranks wait for our gradients.
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            stats += torch.tensor([out.sample_size, 0.0 if finite else 1.0, out.audio_seconds], dtype=torch.float64)
            outs.append(out)
        return self._apply_update(stats, outs)

    def _apply_update(self, stats: torch.Tensor, outs: list[StepOutput]) -> Optional[dict]:
        trainable = [p for p in self.params if p.requires_grad]
        ddp.all_reduce_grads(trainable, self.dist)
        if self.dist.enabled:
            stats = ddp.all_reduce_sum(stats.to(self.device), self.dist).cpu()
        sample_size, nonfinite, audio_seconds = stats.tolist()
        if sample_size <= 0:
            self.counters["skipped_empty"] += 1
            logger.warning("update %d: empty batch (sample size 0), skipped", self.num_updates + 1)
            return None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p for p in trainable if p.grad is not None]
        for p in grads:
            p.grad.div_(sample_size)
        norm = grad_norm(grads)
        if nonfinite or not torch.isfinite(norm):
            return self._skip(bool(nonfinite))
        clip = self.cfg.optim.clip_norm
        if clip > 0 and norm > clip:
            torch._foreach_mul_([p.grad for p in grads], clip / (float(norm) + 1e-6))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.skip_window.append(False)
        self.num_updates += 1
        lr = self.scheduler.get_lr()
        self.scheduler.step_update(self.num_updates)
        return self._summarise(outs, sample_size, audio_seconds, float(norm), lr)

    def _skip(self, loss_nonfinite: bool) -> None:
        """Non-finite loss or gradient: weights untouched; stop when it keeps happening."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None and not loss_nonfinite:
            # fp16 overflow: the scaler lowers its scale; that is routine, not a data problem.
            self.scaler.update()
            self.counters["fp16_overflows"] += 1
            if self.scaler.get_scale() < MIN_LOSS_SCALE:
                raise ToolkitError(f"fp16 loss scale fell below {MIN_LOSS_SCALE} at update {self.num_updates}: "
                                   "training diverged; use train.amp=bf16 (or none), lower optim.lr or set optim.clip_norm")
            return None
        self.counters["skipped_nonfinite"] += 1
        self.skip_window.append(True)
        what = "loss" if loss_nonfinite else "gradient"
        logger.warning("update %d: non-finite %s, update skipped (%d skipped so far)",
                       self.num_updates + 1, what, self.counters["skipped_nonfinite"])
        t = self.cfg.train
        if sum(self.skip_window) > t.skip_nonfinite_fraction * t.skip_nonfinite_window:
            raise ToolkitError(
                f"{sum(self.skip_window)} of the last {len(self.skip_window)} updates had a non-finite loss or "
                f"gradient (limit train.skip_nonfinite_fraction={t.skip_nonfinite_fraction}): training diverged; "
                "lower optim.lr, set optim.clip_norm, or check the data")
        return None

    def _summarise(self, outs: list[StepOutput], sample_size: float, audio_seconds: float, norm: float,
                   lr: float) -> dict:
        # This rank's part: the loss summed over its micro-batches, and per metric (sum, count,
        # summed?). Under data parallelism every rank's part is gathered, so the logged loss and
        # metrics describe the whole update, as sample_size and audio_seconds (all-reduced) do.
        part: dict[str, tuple[float, int, bool]] = {}
        for o in outs:
            for k, v in o.metrics.items():
                total, count, _ = part.get(k, (0.0, 0, False))
                part[k] = (total + float(v), count + 1, k in o.sums)
        loss = sum(float(o.loss.detach()) for o in outs)
        if self.dist.enabled:
            parts = ddp.all_gather_objects((loss, part), self.dist)
            loss = sum(p[0] for p in parts)
            merged: dict[str, tuple[float, int, bool]] = {}
            for _, p in parts:
                for k, (total, count, summed) in p.items():
                    t0, c0, s0 = merged.get(k, (0.0, 0, False))
                    merged[k] = (t0 + total, c0 + count, s0 or summed)
            part = merged
        row: dict[str, float] = {"loss": loss / max(sample_size, 1e-9), "sample_size": sample_size,
                                 "grad_norm": norm, "lr": lr, "audio_seconds": audio_seconds}
        for k in sorted(part):
            total, count, summed = part[k]
            if summed:
                self._sum_keys.add(k)
            row[k] = total if summed else total / count
        return row

    # -- logging -------------------------------------------------------------------------
    def _log(self, split: str, row: dict) -> None:
        if not self.dist.is_main:
            return
        row = {"step": self.num_updates, "split": split, **{k: float(v) for k, v in row.items()}}
        with open(self.exp_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("step", "split") and math.isfinite(v):
                    self.writer.add_scalar(f"{split}/{k}", v, self.num_updates)
            self.writer.flush()
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k not in ("step", "split"))
        logger.info("%s update %d/%d: %s", split, self.num_updates, self.cfg.train.max_updates, shown)

    def _average_window(self, rows: list[dict], elapsed: float) -> dict:
        out: dict[str, float] = {}
        total_ss = sum(r["sample_size"] for r in rows)
        for k in rows[-1]:
            if k == "loss":
                out[k] = sum(r["loss"] * r["sample_size"] for r in rows) / max(total_ss, 1e-9)
            elif k == "audio_seconds" or k in self._sum_keys:
                out[k] = sum(r.get(k, 0.0) for r in rows)
            elif k == "lr":
                out[k] = rows[-1][k]
            else:
                out[k] = sum(r.get(k, 0.0) for r in rows) / len(rows)
        out["audio_s_per_s"] = out.get("audio_seconds", 0.0) / max(elapsed, 1e-9)  # all ranks' audio already
        out["skipped"] = float(self.counters["skipped_nonfinite"])
        return out

    def validate(self) -> dict:
        """Rank 0 validates (fixed seeds, training RNG untouched); others wait at the barrier."""
        row: dict = {}
        if self.dist.is_main:
            self.model.eval()
            with isolated_rng(self.cfg.train.seed), torch.no_grad(), self._autocast():
                row = self.task.validate(self.model, self.num_updates)
            if row:
                self._log("valid", row)
                key = self.task.best_metric()
                if key and key in row and (self.best is None or row[key] < self.best):
                    self.best = row[key]
                    self.save(self.exp_dir / "best.pt")
                    logger.info("new best %s %.4f: saved best.pt", key, row[key])
        ddp.barrier(self.dist)
        return row

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> dict:
        """Train to max_updates; returns the last logged training row (for tests and benches).

        The run owns exp_dir meanwhile (expdir.ExperimentLock): a second run there is refused."""
        with expdir.owned(self.exp_dir, self.dist.is_main):
            return self._run()

    def _run(self) -> dict:
        from tqdm import tqdm

        t = self.cfg.train
        self._build()
        self._resume_rng = None
        resumed_from = self._maybe_resume()
        if resumed_from is None and self.task.init_missing:
            raise ToolkitError(f"train.init {self.cfg.train.init}: not found, and there is no checkpoint to resume in "
                               f"{self.exp_dir}; restore the file or set train.init to an existing checkpoint")
        self._own_exp_dir(resumed_from)
        self._setup_output()
        self.batches.prime()
        if self.dist.is_main:  # after every resume check: a refused resume leaves the run's config as it was
            atomic_write_text(self.exp_dir / "config.yaml", config_to_yaml(self.cfg))
        if self._resume_rng is not None:
            # Restored last: building the model and the batch stream consumed random numbers.
            set_rng_state(self._resume_rng)
            gens = self._model_generators()
            for k, state in self._resume_rng.get("generators", {}).items():
                if k in gens:
                    gens[k].set_state(state)
        last: dict = {}
        if self.num_updates >= t.max_updates:
            logger.info("already at update %d >= train.max_updates; nothing to do", self.num_updates)
            self._close()
            return last
        window: list[dict] = []
        t0 = time.time()
        bar = tqdm(total=t.max_updates, initial=self.num_updates, disable=not self.dist.is_main,
                   desc=self.task.kind, unit="upd", dynamic_ncols=True, mininterval=2.0)
        try:
            while self.num_updates < t.max_updates:
                row = self.train_step()
                if row is None:
                    continue
                bar.update(1)
                window.append(row)
                if self.num_updates % t.log_interval == 0 or self.num_updates == t.max_updates:
                    last = self._average_window(window, time.time() - t0)
                    self._log("train", last)
                    self.task.check_health(last, self.num_updates)
                    window, t0 = [], time.time()
                if self.num_updates % t.valid_interval == 0 or self.num_updates == t.max_updates:
                    if self.collapse.after_validation(self.validate()):  # restarted at update 0
                        window, t0 = [], time.time()
                        bar.reset(total=t.max_updates)
                        continue
                if self.num_updates % t.save_interval == 0 or self.num_updates == t.max_updates:
                    self.save_step()
        finally:
            bar.close()
            self._close()
        return last

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        handler = getattr(self, "_log_handler", None)
        if handler is not None:
            logging.getLogger("toolkit").removeHandler(handler)
            handler.close()


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    if abs(v) >= 1000 or abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4f}"
