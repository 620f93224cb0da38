"""Fine-tuning settings by labelled duration: what `toolkit finetune` derives when the config is silent.

fairseq fine-tunes BASE/LARGE with different settings for 10 minutes, 1 hour, 10 hours, 100 hours and
960 hours of transcribed speech (`examples/wav2vec/config/finetuning/base_{10m,1h,10h,100h,960h}.yaml`):
more data, more updates, less masking, no frozen phase. `toolkit finetune` does the same: it sums
the duration of `data.train_cuts` (the languages of `data.languages`, when given), picks the band
whose fairseq setting is nearest on a log scale, and sets every key of `DERIVED_KEYS` that the
config file and `--set` leave unset. A key the user sets always wins; the fairseq-like defaults of
`config.finetune_defaults()` remain for everything else. The chosen values are printed at the start
with where each came from (`config` or `derived: <why>`).

Two scales:
- `fairseq` (encoder width >= 512: base, large, XLS-R): fairseq's table (`FAIRSEQ`), as published.
- `cpu` (the `tiny` preset and other narrow models, the CPU-sized runs of the embedded default and
  the small recipes): `CPU`, measured with the tiny model on this project's CPU (bench/RESULTS.md,
  "Fine-tuning settings by labelled duration").

Independent of the band, the initialisation decides the freezing:
- from scratch (`train.init: none`): the feature encoder trains (`train.feature_grad_mult` 1.0) and
  nothing is frozen (`train.freeze_finetune_updates` 0): a random encoder has nothing to keep, and a
  frozen random CNN caps what the model can learn (measured: bench/RESULTS.md);
- from a checkpoint: the band's values (fairseq: CNN frozen, Transformer frozen for 10k updates
  up to 10 h; cpu: the CNN trains, nothing frozen).

`train.valid_interval` follows the update budget (a tenth of it, 50 to 1000), and
`train.blank_warn_updates` (from when all-blank dev output counts as a collapse,
toolkit/train/collapse.py) lies a quarter of the trainable updates after the frozen phase.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from toolkit.train.config import TrainConfig, validate
from toolkit.utils import ToolkitError, apply_overrides, load_yaml

logger = logging.getLogger("toolkit.train")

# Keys derived when unset; dotted paths into the config.
DERIVED_KEYS = (
    "train.max_updates",
    "optim.lr",
    "model.overrides.mask_prob",
    "model.overrides.mask_channel_prob",
    "model.overrides.encoder_layerdrop",
    "model.overrides.mask_min_masks",
    "data.speed_perturb",
    "data.channel_augment",
    "data.normalize",
    "train.feature_grad_mult",
    "train.freeze_finetune_updates",
    "train.valid_interval",
    "train.blank_warn_updates",
)

# Bands: (name, labelled hours of the fairseq setting). A run gets the band nearest on a log scale.
BANDS = (("10m", 1 / 6), ("1h", 1.0), ("10h", 10.0), ("100h", 100.0), ("960h", 960.0))

# fairseq base_{10m,1h,10h,100h,960h}.yaml (shared/reference: lr, max_update, mask_prob,
# mask_channel_prob, layerdrop, freeze_finetune_updates; the CNN is always frozen).
FAIRSEQ: dict[str, dict[str, Any]] = {
    "10m": {"optim.lr": 5e-5, "train.max_updates": 13000, "model.overrides.mask_prob": 0.65,
            "model.overrides.mask_channel_prob": 0.25, "model.overrides.encoder_layerdrop": 0.1,
            "train.feature_grad_mult": 0.0, "train.freeze_finetune_updates": 10000},
    "1h": {"optim.lr": 5e-5, "train.max_updates": 13000, "model.overrides.mask_prob": 0.65,
           "model.overrides.mask_channel_prob": 0.25, "model.overrides.encoder_layerdrop": 0.1,
           "train.feature_grad_mult": 0.0, "train.freeze_finetune_updates": 10000},
    "10h": {"optim.lr": 5e-5, "train.max_updates": 20000, "model.overrides.mask_prob": 0.65,
            "model.overrides.mask_channel_prob": 0.5, "model.overrides.encoder_layerdrop": 0.05,
            "train.feature_grad_mult": 0.0, "train.freeze_finetune_updates": 10000},
    "100h": {"optim.lr": 3e-5, "train.max_updates": 80000, "model.overrides.mask_prob": 0.65,
             "model.overrides.mask_channel_prob": 0.5, "model.overrides.encoder_layerdrop": 0.1,
             "train.feature_grad_mult": 0.0, "train.freeze_finetune_updates": 0},
    "960h": {"optim.lr": 1e-4, "train.max_updates": 320000, "model.overrides.mask_prob": 0.5,
             "model.overrides.mask_channel_prob": 0.1, "model.overrides.encoder_layerdrop": 0.1,
             "train.feature_grad_mult": 0.0, "train.freeze_finetune_updates": 0},
}

# The tiny model on a CPU (updates of data.max_duration 20 s). Measured: bench/RESULTS.md. Its CNN
# trains from a checkpoint too: a tiny model pretrained for minutes on a CPU has a CNN far from
# converged, and freezing it cost the embedded default 22% -> 2.5% test WER (bench/RESULTS.md).
CPU: dict[str, dict[str, Any]] = {
    "10m": {"optim.lr": 2e-3, "train.max_updates": 1000, "model.overrides.mask_prob": 0.3,
            "model.overrides.mask_channel_prob": 0.1, "model.overrides.encoder_layerdrop": 0.0,
            "train.feature_grad_mult": 1.0, "train.freeze_finetune_updates": 0},
    "1h": {"optim.lr": 2e-3, "train.max_updates": 2000, "model.overrides.mask_prob": 0.3,
           "model.overrides.mask_channel_prob": 0.1, "model.overrides.encoder_layerdrop": 0.0,
           "train.feature_grad_mult": 1.0, "train.freeze_finetune_updates": 0},
    "10h": {"optim.lr": 2e-3, "train.max_updates": 4000, "model.overrides.mask_prob": 0.4,
            "model.overrides.mask_channel_prob": 0.1, "model.overrides.encoder_layerdrop": 0.0,
            "train.feature_grad_mult": 1.0, "train.freeze_finetune_updates": 0},
    "100h": {"optim.lr": 2e-3, "train.max_updates": 8000, "model.overrides.mask_prob": 0.4,
             "model.overrides.mask_channel_prob": 0.1, "model.overrides.encoder_layerdrop": 0.0,
             "train.feature_grad_mult": 1.0, "train.freeze_finetune_updates": 0},
    "960h": {"optim.lr": 2e-3, "train.max_updates": 16000, "model.overrides.mask_prob": 0.4,
             "model.overrides.mask_channel_prob": 0.1, "model.overrides.encoder_layerdrop": 0.0,
             "train.feature_grad_mult": 1.0, "train.freeze_finetune_updates": 0},
}

# Every band of a table shares these: fairseq's span masking keeps at least 2 masks per utterance
# and does not perturb speed; the CPU table masks short utterances in proportion only and perturbs
# speed (0.9/1.0/1.1, as Kaldi and icefall recipes do) -- measured on FSDD, bench/RESULTS.md.
for _band in FAIRSEQ.values():
    _band.update({"model.overrides.mask_min_masks": 2, "data.speed_perturb": False, "data.channel_augment": 0.0})
for _band in CPU.values():
    _band.update({"model.overrides.mask_min_masks": 0, "data.speed_perturb": True, "data.channel_augment": 0.0})

# From scratch, the share of training cuts heard through a random channel (EQ + noise,
# toolkit.data.dataset.random_channel): a random feature encoder trained on a few speakers' recordings
# learns their microphones (FSDD, bench/RESULTS.md); a pretrained one has heard many channels already.
SCRATCH_CHANNEL_AUGMENT = 0.8

CPU_MAX_WIDTH = 256  # encoder_embed_dim up to this: the `cpu` table


@dataclass
class Choice:
    key: str
    value: Any
    source: str  # "config" or "derived: <why>"


def band_for(hours: float) -> str:
    """The band whose fairseq setting is nearest to `hours` on a log scale."""
    if hours <= 0:
        raise ToolkitError("data.train_cuts: the training cuts hold no audio; check the manifests")
    return min(BANDS, key=lambda b: abs(math.log(hours / b[1])))[0]


def derive(hours: float, width: int, pretrained: bool) -> dict[str, tuple[Any, str]]:
    """key -> (value, why) for every DERIVED_KEYS entry, before the user's values are applied."""
    band = band_for(hours)
    scale = "cpu" if width <= CPU_MAX_WIDTH else "fairseq"
    table = (CPU if scale == "cpu" else FAIRSEQ)[band]
    why = f"{hours:.2f} h labelled -> band {band}, {scale} table"
    out: dict[str, tuple[Any, str]] = {k: (v, why) for k, v in table.items()}
    if not pretrained:
        init_why = "from scratch: a random feature encoder must train, nothing to keep frozen"
        out["train.feature_grad_mult"] = (1.0, init_why)
        out["train.freeze_finetune_updates"] = (0, init_why)
        out["data.normalize"] = (True, "from scratch: zero-mean unit-variance waveforms (quiet recordings "
                                       "fall under the first GroupNorm's eps)")
        out["data.channel_augment"] = (SCRATCH_CHANNEL_AUGMENT, "from scratch: a random channel per cut, so that a "
                                       "random feature encoder does not learn the training microphones")
    else:
        out["data.normalize"] = (None, "the pretrained model's own setting")
    return out


def interval_values(max_updates: int, freeze: int) -> dict[str, tuple[Any, str]]:
    """The validation interval and the blank-collapse threshold from the (final) update budget."""
    valid = int(min(1000, max(50, _round_nice(max_updates / 10))))
    warn = int(freeze + max(100, (max_updates - freeze) // 4))
    return {"train.valid_interval": (valid, f"a tenth of {max_updates} updates (50..1000)"),
            "train.blank_warn_updates": (warn, f"frozen {freeze} + a quarter of the trainable updates")}


def _round_nice(x: float) -> int:
    """1, 2 or 5 times a power of ten, nearest to x (log scale)."""
    if x <= 1:
        return 1
    e = math.floor(math.log10(x))
    cands = [m * 10 ** k for k in (e, e + 1) for m in (1, 2, 5)]
    return min(cands, key=lambda c: abs(math.log(c / x)))


# ---------------------------------------------------------------------------------------
# What the user set

def _leaves(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= _leaves(v, key + ".")
        else:
            out.add(key)
    return out


def explicit_keys(config_path: str | Path | list | tuple | None, overrides: list[str] | None,
                  base: Optional[dict] = None) -> set[str]:
    """Dotted keys set by the config file(s) (several merge in order, as `--config A --config B`),
    `--set` overrides and `base` (a saved config)."""
    data: dict = {}
    if base:
        data = dict(base)
    paths = [] if config_path is None else [config_path] if isinstance(config_path, (str, Path)) else config_path
    for path in paths:
        data = _merge(data, load_yaml(path))
    data = apply_overrides(data, list(overrides or []))
    return _leaves(data)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------
# Applying

def labelled_hours(cfg: TrainConfig) -> float:
    """Hours of audio in data.train_cuts (only data.languages, when given)."""
    from toolkit.train.tasks import load_cuts

    cuts = load_cuts(cfg.data.train_cuts, "data.train_cuts")
    langs = set(cfg.data.languages or [])
    total = 0.0
    for cut in cuts:
        if langs and not (cut.supervisions and cut.supervisions[0].language in langs):
            continue
        total += cut.duration
    return total / 3600.0


def model_width(cfg: TrainConfig) -> int:
    """encoder_embed_dim of the model that will be trained (the architecture training resolves:
    init checkpoint, else preset, with model.overrides)."""
    if cfg.model.overrides.get("encoder_embed_dim"):
        return int(cfg.model.overrides["encoder_embed_dim"])
    from toolkit.train.tasks import load_init, resolve_model_config

    return resolve_model_config(cfg, load_init(cfg)).encoder_embed_dim


def _get(cfg: TrainConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def _set(cfg: TrainConfig, key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = cfg
    for part in parts[:-1]:
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    if isinstance(node, dict):
        node[parts[-1]] = value
    else:
        setattr(node, parts[-1], value)


def apply_data_size_defaults(cfg: TrainConfig, explicit: set[str], hours: Optional[float] = None,
                             width: Optional[int] = None) -> list[Choice]:
    """Set every DERIVED_KEYS entry the user left unset; returns the table of chosen values."""
    hours = labelled_hours(cfg) if hours is None else hours
    width = model_width(cfg) if width is None else width
    pretrained = cfg.train.init not in (None, "", "none")
    derived = derive(hours, width, pretrained)
    choices: list[Choice] = []

    def choose(key: str, value: Any, why: str) -> None:
        if key in explicit:
            choices.append(Choice(key, _get(cfg, key), "config"))
        else:
            _set(cfg, key, value)
            choices.append(Choice(key, value, f"derived: {why}"))

    for key in DERIVED_KEYS:
        if key in derived:
            choose(key, *derived[key])
    for key, (value, why) in interval_values(cfg.train.max_updates, cfg.train.freeze_finetune_updates).items():
        choose(key, value, why)
    validate(cfg, "derived settings")
    return choices


def format_choices(choices: list[Choice], hours: float) -> str:
    width = max(len(c.key) for c in choices)
    lines = [f"fine-tuning settings for {hours:.2f} h of labelled audio (toolkit/train/auto.py; "
             "set a key in the config or with --set to override it):"]
    lines += [f"  {c.key:<{width}}  {c.value!s:<10}  {c.source}" for c in choices]
    return "\n".join(lines)


def finetune_settings(cfg: TrainConfig, config_path: str | Path | list | tuple | None, overrides: list[str] | None) -> list[Choice]:
    """What `toolkit finetune` calls: derive, then print the table (console and train log)."""
    hours = labelled_hours(cfg)
    choices = apply_data_size_defaults(cfg, explicit_keys(config_path, overrides), hours=hours)
    logger.info("%s", format_choices(choices, hours))
    return choices
