"""Training configuration: YAML -> dataclasses, shared by pretraining and CTC fine-tuning.

A config file has the sections `model`, `data`, `optim`, `schedule`, `train` and the key
`exp_dir`. Unknown keys anywhere are errors naming the key (`dataclass_from_dict`); every
value can be overridden from the command line with `--set section.key=value`.

Defaults are fairseq's: `pretrain_defaults()` follows `wav2vec2_base_librispeech.yaml`
(Adam 0.9/0.98, eps 1e-6, wd 0.01, polynomial decay), `finetune_defaults()` follows the
`base_10h` fine-tuning config (tri-stage schedule, frozen feature encoder, Transformer frozen
for the first updates, time and channel masking).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from toolkit.utils import ToolkitError, apply_overrides, dataclass_from_dict, load_yaml


@dataclass
class ModelSection:
    """`preset` names a `toolkit.model.presets` entry (None: the architecture of `train.init`, or
    tiny without one); `overrides` sets Wav2Vec2Config fields."""

    preset: Optional[str] = None
    overrides: dict = field(default_factory=dict)


@dataclass
class DataSection:
    """Where the cuts are and how batches are formed.

    `train_cuts`: one or more Lhotse cut manifests. With `languages` non-empty the training cuts
    are split by supervision language and mixed with p_l ∝ (n_l/N)^alpha (XLSR); otherwise
    they are concatenated. `max_duration` is the audio seconds per batch (per rank).
    `normalize`: None takes the model config's `normalize`; true/false sets the model config's, so
    the checkpoint tells decoding to normalise exactly when training did.
    """

    train_cuts: list = field(default_factory=list)
    dev_cuts: list = field(default_factory=list)
    languages: list = field(default_factory=list)
    alpha: float = 0.5
    max_duration: float = 60.0
    max_sample_size: Optional[int] = 250000
    num_workers: int = 0
    num_buckets: int = 10
    normalize: Optional[bool] = None
    speed_perturb: bool = False
    speed_factors: list = field(default_factory=lambda: [0.9, 1.0, 1.1])  # drawn per cut when speed_perturb
    channel_augment: float = 0.0  # probability of a random channel (EQ + noise) per training cut
    lang_dir: Optional[str] = None
    max_unk_share: float = 0.01  # fine-tuning: most training targets that may be <unk> (outside the vocabulary)


@dataclass
class OptimSection:
    """AdamW (fairseq's Adam is decoupled-weight-decay Adam). `clip_norm` 0 = no clipping."""

    lr: float = 5e-4
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 0.0
    grad_accum: int = 1


@dataclass
class ScheduleSection:
    """`name`: polynomial (linear warm-up, then (1-p)^power decay to end_lr), tri_stage
    (linear warm-up from init_lr_scale*lr, hold, exponential decay to final_lr_scale*lr over
    `phase_ratio` of max_updates) or constant (warm-up, then flat)."""

    name: str = "polynomial"
    warmup_updates: int = 0
    power: float = 1.0
    end_lr: float = 0.0
    phase_ratio: tuple = (0.1, 0.4, 0.5)
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05


@dataclass
class TrainSection:
    """The loop. `init`: "none" (random) or a checkpoint path (toolkit or imported) to start from.

    `feature_grad_mult`: None keeps the model config's value; 0 freezes the CNN.
    Non-finite guard: more than `skip_nonfinite_fraction` of the last `skip_nonfinite_window`
    updates skipped -> stop. `collapse_threshold`: code perplexity (as a fraction of G*V) under
    which, after `collapse_after` updates, a codebook-collapse warning is logged.
    `blank_warn_updates`: from this update on, all-blank greedy dev output is warned.
    `ctc_loss`: "torch" (torch.nn.functional.ctc_loss) or "k2" (k2.ctc_loss, needs k2);
    `ctc_topo`: "standard" or "modified" (k2 only: O(V) topology for large word-piece
    vocabularies, a token may follow itself without a blank). See toolkit/train/ctc.py.
    `on_collapse`: "warn", or "restart": all-blank greedy dev output from `blank_warn_updates` on
    restarts the run from its initial weights with the peak lr times `restart_lr_scale` and the
    warm-up times `restart_warmup_scale`, at most `max_restarts` times (toolkit/train/collapse.py).
    """

    max_updates: int = 1000
    log_interval: int = 50
    save_interval: int = 500
    keep_last: int = 5
    valid_interval: int = 500
    amp: str = "none"
    device: str = "auto"
    seed: int = 1
    feature_grad_mult: Optional[float] = None
    freeze_finetune_updates: int = 0
    init: str = "none"
    skip_nonfinite_window: int = 100
    skip_nonfinite_fraction: float = 0.2
    collapse_threshold: float = 0.02
    collapse_after: int = 100
    blank_warn_updates: int = 500
    on_collapse: str = "warn"
    max_restarts: int = 2
    restart_lr_scale: float = 0.3
    restart_warmup_scale: float = 2.0
    max_valid_batches: int = 0
    ctc_loss: str = "torch"
    ctc_topo: str = "standard"


@dataclass
class TrainConfig:
    """A whole run. `task` is "pretrain" or "finetune" (set by the command, not the YAML)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    exp_dir: Optional[str] = None  # required; load_config derives it from the config file's name when unset
    task: str = "pretrain"


AMP_MODES = ("none", "bf16", "fp16")
CTC_LOSSES = ("torch", "k2")  # toolkit.train.ctc
CTC_TOPOS = ("standard", "modified")
SCHEDULES = ("polynomial", "tri_stage", "constant")
ON_COLLAPSE = ("warn", "restart")


def pretrain_defaults() -> dict:
    """fairseq BASE pretraining defaults (as a nested dict, merged under the user's YAML)."""
    return {
        "task": "pretrain",
        "optim": {"lr": 5e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01, "clip_norm": 0.0},
        "schedule": {"name": "polynomial", "warmup_updates": 32000, "power": 1.0, "end_lr": 0.0},
        "train": {"max_updates": 400000},
    }


def finetune_defaults() -> dict:
    """fairseq `base_10h` fine-tuning defaults: no weight decay, eps 1e-8, tri-stage, frozen CNN."""
    return {
        "task": "finetune",
        "model": {"overrides": {"mask_prob": 0.65, "mask_channel_prob": 0.5, "mask_channel_length": 64,
                                "encoder_layerdrop": 0.05, "dropout": 0.0, "attention_dropout": 0.0,
                                "activation_dropout": 0.1, "dropout_input": 0.0}},
        "optim": {"lr": 5e-5, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.0, "clip_norm": 0.0},
        "schedule": {"name": "tri_stage", "phase_ratio": [0.1, 0.4, 0.5],
                     "init_lr_scale": 0.01, "final_lr_scale": 0.05},
        "train": {"max_updates": 20000, "feature_grad_mult": 0.0, "freeze_finetune_updates": 10000},
    }


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path: str | Path | list | tuple | None, task: str, overrides: list[str] | None = None,
                base: dict | None = None) -> TrainConfig:
    """Read the YAML file(s) `path` over the task defaults, apply `--set` overrides, validate.

    Several files are merged in order, each over the previous (a recipe's own conf file holds only
    what differs from the shared one). `base` (a dict) sits between the defaults and the files:
    used on resume to start from the config saved in the experiment directory. Without an
    `exp_dir` the experiment directory is `exp/<name of the last config file>` (never one
    directory shared by every such config).
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    defaults = pretrain_defaults() if task == "pretrain" else finetune_defaults()
    data = _deep_merge(defaults, base or {})
    for p in paths:
        user = load_yaml(p)
        if "task" in user:  # an experiment's saved config.yaml names its task: fine for the same command
            if user.pop("task") != task:
                raise ToolkitError(f"{p}: a config of another task (toolkit pretrain/finetune sets the task); "
                                   f"use it with the other command or remove its 'task' key")
        data = _deep_merge(data, user)
    data = apply_overrides(data, overrides)
    data["task"] = task
    where = " + ".join(str(p) for p in paths) or "config"
    if not data.get("exp_dir"):
        if not paths:
            raise ToolkitError(f"{where}: exp_dir is not set; give one with --set exp_dir=exp/NAME")
        data["exp_dir"] = str(Path("exp") / Path(paths[-1]).stem)
    cfg = dataclass_from_dict(TrainConfig, data, where)
    validate(cfg, where)
    return cfg


def validate(cfg: TrainConfig, where: str = "config") -> None:
    """One-line errors for values that would fail later, deep inside the loop."""
    def bad(key: str, msg: str) -> ToolkitError:
        return ToolkitError(f"{where}: {key}: {msg}")

    for name in ("model", "data", "optim", "schedule", "train"):
        if not dataclasses.is_dataclass(getattr(cfg, name)):
            raise bad(name, "must be a mapping (section), not a scalar")
    for name in ("model", "data", "optim", "schedule", "train"):
        _check_types(getattr(cfg, name), f"{where}: {name}")
    t, o, s, d = cfg.train, cfg.optim, cfg.schedule, cfg.data
    if t.amp not in AMP_MODES:
        raise bad("train.amp", f"{t.amp!r} is not one of {', '.join(AMP_MODES)}")
    if t.on_collapse not in ON_COLLAPSE:
        raise bad("train.on_collapse", f"{t.on_collapse!r} is not one of {', '.join(ON_COLLAPSE)}")
    if not (0 < t.restart_lr_scale < 1) or t.restart_warmup_scale < 1 or t.max_restarts < 0:
        raise bad("train.on_collapse", "restart_lr_scale must be in (0, 1), restart_warmup_scale >= 1, "
                  "max_restarts >= 0")
    if s.name not in SCHEDULES:
        raise bad("schedule.name", f"{s.name!r} is not one of {', '.join(SCHEDULES)}")
    if t.ctc_loss not in CTC_LOSSES:
        raise bad("train.ctc_loss", f"{t.ctc_loss!r} is not one of {', '.join(CTC_LOSSES)}")
    if t.ctc_topo not in CTC_TOPOS:
        raise bad("train.ctc_topo", f"{t.ctc_topo!r} is not one of {', '.join(CTC_TOPOS)}")
    if t.ctc_topo == "modified" and t.ctc_loss != "k2":
        raise bad("train.ctc_topo", "modified needs train.ctc_loss=k2 (torch's CTC has the standard topology)")
    if not isinstance(t.max_updates, int) or t.max_updates <= 0:
        raise bad("train.max_updates", "must be a positive integer")
    for key in ("log_interval", "save_interval", "valid_interval", "keep_last"):
        if not isinstance(getattr(t, key), int) or getattr(t, key) <= 0:
            raise bad(f"train.{key}", "must be a positive integer")
    if not isinstance(o.grad_accum, int) or o.grad_accum < 1:
        raise bad("optim.grad_accum", "must be an integer >= 1")
    if not (isinstance(o.lr, (int, float)) and o.lr > 0):
        raise bad("optim.lr", f"must be a positive number, got {o.lr!r}")
    if len(tuple(o.betas)) != 2:
        raise bad("optim.betas", "must be two numbers, e.g. [0.9, 0.98]")
    if len(tuple(s.phase_ratio)) != 3 or abs(sum(s.phase_ratio) - 1.0) > 1e-6:
        raise bad("schedule.phase_ratio", f"must be three ratios summing to 1, got {list(s.phase_ratio)}")
    if not isinstance(cfg.model.overrides, dict):
        raise bad("model.overrides", "must be a mapping of Wav2Vec2Config fields")
    for key in ("train_cuts", "dev_cuts", "languages"):
        value = getattr(d, key)
        if isinstance(value, str):
            setattr(d, key, [value])
        elif not isinstance(value, list):
            raise bad(f"data.{key}", "must be a list")
    if d.max_duration <= 0:
        raise bad("data.max_duration", "must be positive (audio seconds per batch)")
    for key, value, low in (("train.seed", t.seed, 0), ("data.num_workers", d.num_workers, 0),
                            ("data.num_buckets", d.num_buckets, 1), ("train.freeze_finetune_updates",
                                                                     t.freeze_finetune_updates, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(key, f"must be an integer >= {low}, got {value!r}")
    if not 0 <= d.max_unk_share <= 1:
        raise bad("data.max_unk_share", f"must be a share between 0 and 1, got {d.max_unk_share!r}")
    if not 0 <= d.channel_augment <= 1:
        raise bad("data.channel_augment", f"must be a probability between 0 and 1, got {d.channel_augment!r}")
    if (not isinstance(d.speed_factors, list) or not d.speed_factors
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.5 <= f <= 2.0 for f in d.speed_factors)):
        raise bad("data.speed_factors", f"must be a list of speeds between 0.5 and 2.0, e.g. [0.9, 1.0, 1.1]; "
                  f"got {d.speed_factors!r}")


def _check_types(section: Any, where: str) -> None:
    """Each option against its declared type, one line naming it: YAML 1.1 reads `2e-3` (no dot) as
    a string, which float options accept; any other string, and a bool where a number is meant,
    are refused, and so is anything but true/false for a flag (`speed_perturb: flase` or a quoted
    "false" was taken as true) and anything but an integer for a count (`max_restarts: two`)."""
    import typing

    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        kinds = [a for a in args if a is not type(None)]
        value = getattr(section, f.name)
        if len(kinds) != 1 or (value is None and len(args) > 1):
            continue
        kind, key = kinds[0], f"{where}.{f.name}"
        if kind is float:
            if isinstance(value, str):
                try:
                    setattr(section, f.name, float(value))
                except ValueError:
                    raise ToolkitError(f"{key}: {value!r} is not a number") from None
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ToolkitError(f"{key}: {value!r} is not a number")
        elif kind is bool and not isinstance(value, bool):
            raise ToolkitError(f"{key}: {value!r} is not true or false")
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ToolkitError(f"{key}: {value!r} is not an integer")
        elif kind is str and not isinstance(value, str):
            raise ToolkitError(f"{key}: {value!r} is not a string")


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict (tuples as lists) for YAML and checkpoints."""
    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
