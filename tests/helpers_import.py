"""Test helpers for checkpoint import: tiny random reference models and fairseq-format files.

The fairseq files are built from a torchaudio `Wav2Vec2Model` (an implementation independent of
ours): every fairseq key written here is checked against torchaudio's own fairseq key map
(`torchaudio.models.wav2vec2.utils.import_fairseq._map_key`), so the names are the ones fairseq
writes, not the ones our importer expects.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

CONV = [(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 2, 2), (32, 2, 2)]
CONV_STR = "[(32,10,5)]+[(32,3,2)]*4+[(32,2,2)]*2"
DIM, HEADS, FFN, LAYERS, POS_K, POS_G = 64, 4, 128, 2, 16, 4
FINAL_DIM, LATENT_VARS, LATENT_GROUPS = 24, 8, 2
LETTERS = ["|", "E", "T", "A", "O", "N", "'"]


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every float parameter with random values (norm scales around 1, others small).

    Default initialisations leave LayerNorm at (1, 0) and biases at 0, which would hide a swapped
    weight/bias or a missing norm.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() >= 2:
                p.copy_(noise / math.sqrt(max(1, p[0].numel())))
            else:
                p.copy_(0.2 * noise)
    return model.eval()


def tiny_torchaudio(mode: str, seed: int = 0, aux: int | None = None) -> torch.nn.Module:
    """Random torchaudio Wav2Vec2Model: mode "default" (BASE-like) or "layer_norm" (XLSR-like)."""
    from torchaudio.models import wav2vec2_model

    torch.manual_seed(seed)
    model = wav2vec2_model(
        extractor_mode="group_norm" if mode == "default" else "layer_norm",
        extractor_conv_layer_config=CONV, extractor_conv_bias=mode == "layer_norm",
        encoder_embed_dim=DIM, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=POS_K,
        encoder_pos_conv_groups=POS_G, encoder_num_layers=LAYERS, encoder_num_heads=HEADS,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=FFN, encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0, encoder_layer_norm_first=mode == "layer_norm", encoder_layer_drop=0.0,
        aux_num_out=aux,
    )
    return randomize_(model, seed)


def _fairseq_name(ta_key: str, mode: str) -> str:
    """fairseq name of a torchaudio key (written independently of toolkit.model.fairseq_io)."""
    k = ta_key
    k = k.replace("encoder.feature_projection.projection.", "post_extract_proj.")
    k = k.replace("encoder.feature_projection.layer_norm.", "layer_norm.")
    k = k.replace("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.0.weight_g")
    k = k.replace("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.0.weight_v")
    k = k.replace("encoder.transformer.pos_conv_embed.conv.", "encoder.pos_conv.0.")
    k = k.replace("encoder.transformer.", "encoder.")
    k = k.replace(".attention.", ".self_attn.").replace(".feed_forward.intermediate_dense.", ".fc1.")
    k = k.replace(".feed_forward.output_dense.", ".fc2.")
    if ".layers." in k and ".layer_norm." in k and k.startswith("encoder.layers."):
        k = k.replace(".layer_norm.", ".self_attn_layer_norm.")
    k = k.replace(".conv.weight", ".0.weight").replace(".conv.bias", ".0.bias") if k.startswith("feature_extractor") else k
    if k.startswith("feature_extractor") and ".layer_norm." in k:
        k = k.replace(".layer_norm.", ".2." if mode == "default" else ".2.1.")
    return k.replace("aux.", "proj.")


def fairseq_state(ta_model: torch.nn.Module, mode: str, kind: str, seed: int = 1) -> "collections.OrderedDict":
    """fairseq state dict of a torchaudio model; pretraining extras (quantizer...) are random."""
    from torchaudio.models.wav2vec2.utils.import_fairseq import _map_key

    out: collections.OrderedDict = collections.OrderedDict()
    g = torch.Generator().manual_seed(seed)
    for ta_key, value in ta_model.state_dict().items():
        fs_key = _fairseq_name(ta_key, mode)
        # torchaudio's own map must send the fairseq name back to its key (g/v in legacy names)
        back = _map_key(fs_key)
        expect = ta_key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        assert back == expect, (fs_key, back, expect)
        out[fs_key] = value.clone()
    out["mask_emb"] = torch.rand(DIM, generator=g)
    if kind == "pretrain":
        vq = FINAL_DIM
        out["quantizer.vars"] = torch.rand(1, LATENT_GROUPS * LATENT_VARS, vq // LATENT_GROUPS, generator=g)
        out["quantizer.weight_proj.weight"] = torch.randn(LATENT_GROUPS * LATENT_VARS, CONV[-1][0], generator=g)
        out["quantizer.weight_proj.bias"] = torch.randn(LATENT_GROUPS * LATENT_VARS, generator=g)
        out["project_q.weight"] = torch.randn(FINAL_DIM, vq, generator=g) / 5
        out["project_q.bias"] = torch.randn(FINAL_DIM, generator=g)
        out["final_proj.weight"] = torch.randn(FINAL_DIM, DIM, generator=g) / 8
        out["final_proj.bias"] = torch.randn(FINAL_DIM, generator=g)
        return out
    ctc = collections.OrderedDict()
    for k, v in out.items():
        ctc[("w2v_encoder." + k) if k.startswith("proj.") else ("w2v_encoder.w2v_model." + k)] = v
    return ctc


def fairseq_model_cfg(mode: str) -> dict:
    """A fairseq `Wav2Vec2Config` model section (the fields real checkpoints carry)."""
    return {
        "_name": "wav2vec2", "extractor_mode": mode, "conv_feature_layers": CONV_STR,
        "conv_bias": mode == "layer_norm", "encoder_layers": LAYERS, "encoder_embed_dim": DIM,
        "encoder_ffn_embed_dim": FFN, "encoder_attention_heads": HEADS, "activation_fn": "gelu",
        "layer_type": "transformer", "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1, "final_dim": FINAL_DIM,
        "layer_norm_first": mode == "layer_norm", "conv_pos": POS_K, "conv_pos_groups": POS_G,
        "feature_grad_mult": 0.1, "mask_prob": 0.65, "mask_length": 10, "mask_selection": "static",
        "mask_channel_prob": 0.0, "mask_channel_length": 10, "num_negatives": 100,
        "cross_sample_negatives": 0, "latent_vars": LATENT_VARS, "latent_groups": LATENT_GROUPS,
        "latent_dim": 0, "latent_temp": [2.0, 0.5, 0.999995], "logit_temp": 0.1, "quantize_targets": True,
        "codebook_negatives": 0, "target_glu": False, "pos_conv_depth": 1,
    }


def fairseq_checkpoint(mode: str, kind: str, style: str, ta_model: torch.nn.Module) -> dict:
    """A fairseq checkpoint dict; style "cfg" (plain dict, new fairseq), "args" (argparse,
    old fairseq) or "omegaconf" (a pickled DictConfig, fairseq 0.10-1.0 era)."""
    model_cfg = fairseq_model_cfg(mode)
    task = {"_name": "audio_pretraining", "normalize": mode == "layer_norm", "sample_rate": 16000}
    crit = {"_name": "wav2vec", "infonce": True, "loss_weights": [0.1, 0.0 if mode == "layer_norm" else 10.0]}
    pre = {"model": model_cfg, "task": task, "criterion": crit, "common": {"fp16": True}}
    if kind == "ctc":
        ft_model = {"_name": "wav2vec_ctc", "w2v_path": "/x/pre.pt", "mask_prob": 0.5, "mask_channel_prob": 0.25,
                    "mask_channel_length": 64, "layerdrop": 0.1, "dropout": 0.0, "final_dropout": 0.0,
                    "feature_grad_mult": 0.0, "w2v_args": pre}
        cfg = {"model": ft_model, "task": {"_name": "audio_finetuning", "normalize": "${model.w2v_args.task.normalize}",
                                           "labels": "ltr"}, "criterion": {"_name": "ctc"}}
    else:
        cfg = pre
    state = fairseq_state(ta_model, mode, kind)
    ckpt: dict = {"model": state, "optimizer_history": [{"num_updates": 10}], "extra_state": {"epoch": 1}}
    if style == "cfg":
        ckpt.update(args=None, cfg=cfg)
    elif style == "omegaconf":
        from omegaconf import OmegaConf

        ckpt.update(args=None, cfg=OmegaConf.create(cfg))
    elif style == "structured":
        ckpt.update(args=None, cfg=structured_cfg(cfg))
    elif style == "args":  # old fairseq: one flat namespace; model + task + criterion options
        flat = {**model_cfg, **task, **crit, "arch": "wav2vec2", "latent_temp": "(2,0.5,0.999995)",
                "loss_weights": str(crit["loss_weights"])}
        if kind == "ctc":
            ft = {k: v for k, v in cfg["model"].items() if k != "w2v_args"}
            ckpt["args"] = argparse.Namespace(**ft, arch="wav2vec_ctc", w2v_args=argparse.Namespace(**flat),
                                              normalize=task["normalize"])
        else:
            ckpt["args"] = argparse.Namespace(**flat)
    else:
        raise ValueError(style)
    return ckpt


def write_fairseq_dict(path: Path) -> list[str]:
    """A fairseq dict.ltr.txt; returns the full fairseq index order (<s> <pad> </s> <unk> + letters)."""
    path.write_text("".join(f"{c} {1000 - i}\n" for i, c in enumerate(LETTERS)), encoding="utf-8")
    return ["<s>", "<pad>", "</s>", "<unk>"] + LETTERS


def waveforms(n: int = 2, samples: int = 8000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    base = torch.sin(2 * math.pi * 220 * t) * 0.3
    return base + 0.1 * torch.randn(n, samples, generator=g)


def write_wav(path: Path, wav: np.ndarray, rate: int = 16000) -> Path:
    sf.write(str(path), wav, rate, subtype="FLOAT")
    return path


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a-b| / max |b|: the parity measure (1e-4 allowed)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def hf_tiny_config(**kw) -> "object":
    from transformers import Wav2Vec2Config

    base = dict(
        hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
        conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV], conv_stride=[s for _, _, s in CONV],
        num_conv_pos_embeddings=POS_K, num_conv_pos_embedding_groups=POS_G,
        num_codevectors_per_group=LATENT_VARS, num_codevector_groups=LATENT_GROUPS,
        codevector_dim=FINAL_DIM, proj_codevector_dim=FINAL_DIM,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.05,
    )
    base.update(kw)
    return Wav2Vec2Config(**base)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def fake_fairseq_modules() -> dict:
    """Empty modules named like fairseq's, to hold dataclasses/enums that pickle by fairseq names.

    Tests install them with monkeypatch.setitem(sys.modules, ...) only while *writing* a
    checkpoint; the importer must read it back without them (it never imports fairseq).
    """
    import types

    names = ["fairseq", "fairseq.dataclass", "fairseq.dataclass.constants", "fairseq.models",
             "fairseq.models.wav2vec", "fairseq.models.wav2vec.wav2vec2"]
    return {n: types.ModuleType(n) for n in names}


def structured_cfg(cfg: dict):
    """An omegaconf structured config like fairseq 0.10-1.0 pickled in checkpoints: a dataclass
    model section (typed fields, an enum for extractor_mode, Optional/List/Tuple annotations)
    whose classes live in the fake fairseq modules, which must be in sys.modules while pickling.
    """
    import dataclasses
    import enum
    import typing

    from omegaconf import OmegaConf

    import sys

    consts, w2v = sys.modules["fairseq.dataclass.constants"], sys.modules["fairseq.models.wav2vec.wav2vec2"]
    choices = enum.Enum("ExtractorMode", {"default": "default", "layer_norm": "layer_norm"},
                        module=consts.__name__)
    consts.ExtractorMode = choices

    def typed_fields(section: dict) -> list:
        out = []
        for k, v in section.items():
            if k == "extractor_mode":
                out.append((k, choices, dataclasses.field(default=choices(v))))
            elif isinstance(v, list):
                out.append((k, typing.Tuple[float, float, float] if k == "latent_temp" else typing.List[float],
                            dataclasses.field(default_factory=lambda v=v: list(v))))
            elif isinstance(v, dict):  # w2v_args: a nested config without schema
                out.append((k, typing.Any, dataclasses.field(default=None)))
            else:
                tp = typing.Optional[type(v)] if v is not None else typing.Any
                out.append((k, tp, dataclasses.field(default=v)))
        return out

    def make(name: str, section: dict, module) -> type:
        cls = dataclasses.make_dataclass(name, typed_fields(section))
        cls.__module__ = module.__name__
        setattr(module, name, cls)
        return cls

    model = cfg["model"]
    if "w2v_args" in model:  # fine-tuning: the pretraining config nested as a plain container
        ft_cls = make("Wav2Vec2CtcConfig", model, w2v)
        node = OmegaConf.structured(ft_cls)
        inner = dict(model["w2v_args"])
        inner["model"] = OmegaConf.structured(make("Wav2Vec2Config", inner["model"], w2v))
        node.w2v_args = OmegaConf.create(inner)
    else:
        node = OmegaConf.structured(make("Wav2Vec2Config", model, w2v))
    top = OmegaConf.create({k: v for k, v in cfg.items() if k != "model"})
    top.model = node
    return top
