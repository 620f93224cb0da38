"""Toolkit checkpoints: plain dicts saved atomically and loaded with `weights_only=True`.

Layout (docs/ARCHITECTURE.md, "Model core"):
`{"format": "xlsr-toolkit", "version": 1, "kind": "pretrain" | "ctc", "model_config": dict,
  "model": state_dict, "vocab": dict | None, ...training state}`.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.model.config import Wav2Vec2Config
from toolkit.utils import ToolkitError, atomic_torch_save

FORMAT = "xlsr-toolkit"
VERSION = 1
KINDS = ("pretrain", "ctc")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: Wav2Vec2Config, kind: str,
                    vocab: dict | None = None, **extra: Any) -> None:
    """Write `model`'s weights, its config and optional vocabulary/training state to `path`.

    `model` may be wrapped (DDP, torch.compile): the inner module's state dict is stored, so
    keys never carry `module.` / `_orig_mod.` prefixes. `extra` entries (optimizer, step, ...)
    must be plain data loadable with `weights_only=True`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "ctc" and vocab is None:
        raise ValueError("a CTC checkpoint needs its vocabulary (vocab=...)")
    inner = unwrap_model(model)
    ckpt = {"format": FORMAT, "version": VERSION, "kind": kind, "model_config": cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in inner.state_dict().items()}, "vocab": vocab}
    clash = set(extra) & set(ckpt)
    if clash:
        raise ValueError(f"extra entries {sorted(clash)} would overwrite checkpoint fields")
    ckpt.update(extra)
    atomic_torch_save(ckpt, path)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ == "DataParallel":
            model = model.module
        else:
            return model


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a toolkit checkpoint; one-line ToolkitError for a missing, foreign or truncated file."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))
        if not inside:
            raise ToolkitError(f"{path}: is a folder, with no .pt file inside; give a checkpoint file (training "
                               "writes exp/<name>/best.pt)")
        example = "best.pt" if "best.pt" in inside else inside[-1]
        raise ToolkitError(f"{path}: is a folder; give the .pt file inside (e.g. {path / example})")
    if not path.is_file():
        raise ToolkitError(f"{path}: checkpoint not found; check the path (training writes exp/<name>/checkpoint-<step>.pt)")
    if path.stat().st_size == 0:
        raise ToolkitError(f"{path}: empty file, not a checkpoint; use another checkpoint (e.g. an earlier "
                           "checkpoint-<step>.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise ToolkitError(
                f"{path}: refused: the file holds Python objects that a checkpoint of weights never holds (it may be "
                "a malicious pickle; nothing in it was executed); use a checkpoint written by toolkit training, or "
                "convert a fairseq/Hugging Face/torchaudio model with `toolkit import-checkpoint`") from None
        raise ToolkitError(f"{path}: not a readable checkpoint ({_first_line(e)}); re-copy it or use an earlier "
                           "checkpoint") from None
    except (EOFError, zipfile.BadZipFile, RuntimeError, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError) as e:
        kind = _sniff(path)
        if kind:
            raise ToolkitError(f"{path}: {kind}, not a checkpoint; give a checkpoint (.pt written by toolkit "
                               "training, e.g. exp/NAME/best.pt)") from None
        raise ToolkitError(
            f"{path}: cannot read this checkpoint (truncated or corrupt: {_first_line(e)}); "
            "re-copy it or use an earlier checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ToolkitError(
            f"{path}: not a toolkit checkpoint (no format={FORMAT!r} entry); convert fairseq / Hugging Face / "
            "torchaudio models with `toolkit import-checkpoint`")
    if ckpt.get("version") != VERSION:
        raise ToolkitError(f"{path}: checkpoint version {ckpt.get('version')!r} is not supported (expected {VERSION})")
    for key in ("kind", "model_config", "model"):
        if key not in ckpt:
            raise ToolkitError(f"{path}: checkpoint lacks its {key!r} entry; the file is damaged, re-create it")
    if ckpt["kind"] not in KINDS:
        raise ToolkitError(f"{path}: unknown checkpoint kind {ckpt['kind']!r} (expected one of {KINDS})")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def _sniff(path: Path) -> str:
    """What a file that is no checkpoint looks like (an audio or text file given by mistake), or ""."""
    with open(path, "rb") as f:
        head = f.read(512)
    for magic, what in ((b"RIFF", "a WAV audio file"), (b"fLaC", "a FLAC audio file"), (b"ID3", "an MP3 audio file"),
                        (b"OggS", "an Ogg audio file"), (b"\x1f\x8b", "a gzip file")):
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return ""


def config_of(ckpt: dict) -> Wav2Vec2Config:
    """The checkpoint's model configuration."""
    return Wav2Vec2Config.from_dict(ckpt["model_config"], where="checkpoint model_config")


def build_model(ckpt: dict) -> nn.Module:
    """A `Wav2Vec2ForPretraining` or `Wav2Vec2ForCTC` (per `kind`) with the checkpoint's weights.

    The CTC vocabulary size is read from the head's weight; when the checkpoint has a vocabulary
    its size must agree.
    """
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2ForPretraining

    cfg = config_of(ckpt)
    state = ckpt["model"]
    if ckpt["kind"] == "ctc":
        if "proj.weight" not in state:
            raise ToolkitError("checkpoint of kind 'ctc' has no CTC head (proj.weight); it is a pretraining model")
        vocab_size = state["proj.weight"].shape[0]
        vocab = ckpt.get("vocab")
        if vocab and vocab.get("tokens") is not None and len(vocab["tokens"]) != vocab_size:
            raise ToolkitError(f"checkpoint vocabulary has {len(vocab['tokens'])} tokens but its CTC head outputs "
                               f"{vocab_size}; the file mixes two models, re-create it")
        model: nn.Module = Wav2Vec2ForCTC(cfg, vocab_size)
    else:
        model = Wav2Vec2ForPretraining(cfg)
    load_state_dict_strict(model, state, where=f"checkpoint ({ckpt['kind']})")
    return model


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """`load_state_dict(strict=True)` with a one-line ToolkitError naming the mismatched keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        raise ToolkitError(f"{where}: weights do not match the model: {describe_mismatch(missing, unexpected, shapes)}; "
                           "the file belongs to another model/config")
    model.load_state_dict(state, strict=True)


def describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str], limit: int = 6) -> str:
    """One line listing (at most `limit` of each) missing, unexpected and wrongly shaped state-dict keys."""
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{name} {len(keys)}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)
