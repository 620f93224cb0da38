"""State-dict and config converters: Hugging Face, torchaudio and fairseq -> toolkit (and toolkit -> HF).

Every `from_*` returns `(Wav2Vec2Config, state_dict)` whose keys are exactly those of the toolkit
model of the detected kind (`infer_kind`): "ctc" (has `proj.*`), "pretrain" (has `quantizer.*`) or
"backbone" (only `wav2vec2.*`; load it into `Wav2Vec2ForPretraining(cfg).wav2vec2` after stripping
the prefix, or with `strict=False`). A source with missing, unexpected or mis-shaped tensors raises
a one-line ToolkitError listing them. The weight-norm of the positional convolution is accepted
as `weight_g/weight_v` (old torch) or `parametrizations.weight.original0/1`.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

import torch

from toolkit.model.checkpoint import describe_mismatch
from toolkit.model.config import Wav2Vec2Config
from toolkit.utils import ToolkitError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

_WN = [(r"\.weight_g$", ".parametrizations.weight.original0"), (r"\.weight_v$", ".parametrizations.weight.original1")]

# (toolkit, Hugging Face) key prefixes, one table for both directions; `{i}` is a layer index
# and a name without a trailing "." is a whole key. Keys not listed are the same in both.
_HF_NAMES = [
    ("wav2vec2.feature_extractor.conv_layers.{i}.norm.", "wav2vec2.feature_extractor.conv_layers.{i}.layer_norm."),
    ("wav2vec2.layer_norm.", "wav2vec2.feature_projection.layer_norm."),
    ("wav2vec2.post_extract_proj.", "wav2vec2.feature_projection.projection."),
    ("wav2vec2.mask_emb", "wav2vec2.masked_spec_embed"),
    ("wav2vec2.encoder.pos_conv.conv.", "wav2vec2.encoder.pos_conv_embed.conv."),
    ("wav2vec2.encoder.layers.{i}.self_attn.", "wav2vec2.encoder.layers.{i}.attention."),
    ("wav2vec2.encoder.layers.{i}.self_attn_layer_norm.", "wav2vec2.encoder.layers.{i}.layer_norm."),
    ("wav2vec2.encoder.layers.{i}.fc1.", "wav2vec2.encoder.layers.{i}.feed_forward.intermediate_dense."),
    ("wav2vec2.encoder.layers.{i}.fc2.", "wav2vec2.encoder.layers.{i}.feed_forward.output_dense."),
    ("quantizer.vars", "quantizer.codevectors"),
    ("final_proj.", "project_hid."),
    ("proj.", "lm_head."),
]


def _name_rules(pairs: list[tuple[str, str]], to_toolkit: bool) -> list[tuple[str, str]]:
    """`_rename` rules (regex, replacement) from (toolkit, foreign) name pairs, either direction."""
    rules = []
    for ours, theirs in pairs:
        src, dst = (theirs, ours) if to_toolkit else (ours, theirs)
        pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)") + ("" if src.endswith(".") else "$")
        rules.append((pattern, dst.replace("{i}", r"\1")))
    return rules


_HF_RULES = _name_rules(_HF_NAMES, to_toolkit=True) + _WN

# torchaudio Wav2Vec2Model -> toolkit.
_TA_RULES = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"wav2vec2.feature_extractor.conv_layers.\1.norm."),
    (r"^feature_extractor\.", "wav2vec2.feature_extractor."),
    (r"^encoder\.feature_projection\.layer_norm\.", "wav2vec2.layer_norm."),
    (r"^encoder\.feature_projection\.projection\.", "wav2vec2.post_extract_proj."),
    (r"^encoder\.transformer\.pos_conv_embed\.conv\.", "wav2vec2.encoder.pos_conv.conv."),
    (r"^encoder\.transformer\.layer_norm\.", "wav2vec2.encoder.layer_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.attention\.", r"wav2vec2.encoder.layers.\1.self_attn."),
    (r"^encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"wav2vec2.encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"wav2vec2.encoder.layers.\1.fc1."),
    (r"^encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"wav2vec2.encoder.layers.\1.fc2."),
    (r"^encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"wav2vec2.encoder.layers.\1.final_layer_norm."),
    (r"^aux\.", "proj."),
] + _WN


def _rename(state_dict: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]) -> StateDict:
    out: StateDict = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def infer_kind(state_dict: Mapping[str, Any]) -> str:
    """"ctc" (CTC head present), "pretrain" (quantizer present) or "backbone"."""
    if "proj.weight" in state_dict:
        return "ctc"
    if "quantizer.vars" in state_dict:
        return "pretrain"
    return "backbone"


def expected_shapes(cfg: Wav2Vec2Config, kind: str, vocab_size: int = 0) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the toolkit model of `kind` (built on the meta device: no memory, no init)."""
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2ForPretraining

    with torch.device("meta"):
        model = Wav2Vec2ForCTC(cfg, vocab_size) if kind == "ctc" else Wav2Vec2ForPretraining(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if kind == "backbone":
        shapes = {k: s for k, s in shapes.items() if k.startswith("wav2vec2.")}
    return shapes


def check_state_dict(cfg: Wav2Vec2Config, state_dict: StateDict, source: str) -> str:
    """Validate converted keys/shapes against the toolkit model; returns the kind. Fills a missing
    `wav2vec2.mask_emb` (sources trained without masking omit it; it is unused at inference)."""
    kind = infer_kind(state_dict)
    vocab = state_dict["proj.weight"].shape[0] if kind == "ctc" else 0
    want = expected_shapes(cfg, kind, vocab)
    if "wav2vec2.mask_emb" not in state_dict and "wav2vec2.mask_emb" in want:
        log.warning("%s has no mask embedding; initialising it uniformly (only used when masking)", source)
        state_dict["wav2vec2.mask_emb"] = torch.empty(cfg.encoder_embed_dim).uniform_()
    missing = sorted(set(want) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(want))
    shapes = sorted(k for k in set(want) & set(state_dict) if tuple(state_dict[k].shape) != want[k])
    if missing or unexpected or shapes:
        raise ToolkitError(f"{source}: weights do not fit the model its config describes: "
                           f"{describe_mismatch(missing, unexpected, shapes)}; is the file complete and of a wav2vec 2.0 model?")
    return kind


# ------------------------------------------------------------------------------------------
# Hugging Face

# config.json key under which `to_hf` keeps the toolkit settings HF's Wav2Vec2Config has no field
# for (transformers keeps unknown keys), so export -> import gives the same config back; the
# feature penalty weight is stored as "feature_penalty", the CTC vocabulary's language beside it.
TOOLKIT_KEY = "xlsr_toolkit"
TOOLKIT_ONLY = ("feature_grad_mult", "require_same_masks", "cross_sample_negatives", "latent_temp")


def config_from_hf(hf_config: Mapping[str, Any]) -> Wav2Vec2Config:
    """Toolkit config from a Hugging Face `Wav2Vec2Config` (its `to_dict()` / config.json)."""
    c = dict(hf_config)
    for key in ("hidden_act", "feat_extract_activation"):
        if c.get(key, "gelu") != "gelu":
            raise ToolkitError(f"Hugging Face config: {key}={c[key]!r} is not supported (only 'gelu')")
    if c.get("add_adapter"):
        raise ToolkitError("Hugging Face config: add_adapter=true (adapter layers) is not supported")
    if c.get("feat_extract_norm", "group") not in ("group", "layer"):
        raise ToolkitError(f"Hugging Face config: feat_extract_norm={c['feat_extract_norm']!r} is unknown")
    if abs(float(c.get("layer_norm_eps", 1e-5)) - 1e-5) > 1e-9:
        log.warning("Hugging Face layer_norm_eps=%s differs from fairseq's 1e-5; outputs may differ slightly",
                    c["layer_norm_eps"])
    conv_dim = c.get("conv_dim", [512] * 7)
    conv = list(zip(conv_dim, c.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2]), c.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])))
    fields = dict(
        extractor_mode="layer_norm" if c.get("feat_extract_norm", "group") == "layer" else "default",
        conv_feature_layers=conv, conv_bias=bool(c.get("conv_bias", False)),
        encoder_layers=c.get("num_hidden_layers", 12), encoder_embed_dim=c.get("hidden_size", 768),
        encoder_ffn_embed_dim=c.get("intermediate_size", 3072),
        encoder_attention_heads=c.get("num_attention_heads", 12),
        layer_norm_first=bool(c.get("do_stable_layer_norm", False)),
        conv_pos=c.get("num_conv_pos_embeddings", 128), conv_pos_groups=c.get("num_conv_pos_embedding_groups", 16),
        dropout=c.get("hidden_dropout", 0.1), attention_dropout=c.get("attention_dropout", 0.1),
        activation_dropout=c.get("activation_dropout", 0.0), encoder_layerdrop=c.get("layerdrop", 0.1),
        dropout_input=c.get("feat_proj_dropout", 0.0), dropout_features=c.get("feat_quantizer_dropout", 0.0),
        final_dropout=c.get("final_dropout", 0.0),
        mask_prob=c.get("mask_time_prob", 0.05), mask_length=c.get("mask_time_length", 10),
        mask_min_masks=c.get("mask_time_min_masks", 2), mask_channel_prob=c.get("mask_feature_prob", 0.0),
        mask_channel_length=c.get("mask_feature_length", 10),
        final_dim=c.get("proj_codevector_dim", 256), latent_dim=c.get("codevector_dim", 256),
        latent_vars=c.get("num_codevectors_per_group", 320), latent_groups=c.get("num_codevector_groups", 2),
        num_negatives=c.get("num_negatives", 100), logit_temp=c.get("contrastive_logits_temperature", 0.1),
        # HF has no feature penalty.
        loss_weights=(c.get("diversity_loss_weight", 0.1), 0.0),
    )
    extra = c.get(TOOLKIT_KEY)
    if isinstance(extra, dict):  # written by `toolkit export`: what HF's config has no field for
        fields.update({k: extra[k] for k in TOOLKIT_ONLY if k in extra})
        if "feature_penalty" in extra:
            fields["loss_weights"] = (fields["loss_weights"][0], extra["feature_penalty"])
    return Wav2Vec2Config.from_dict(fields, where="Hugging Face config")


def from_hf(state_dict: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any],
            source: str = "Hugging Face checkpoint") -> tuple[Wav2Vec2Config, StateDict]:
    """Convert a `Wav2Vec2ForPreTraining`, `Wav2Vec2ForCTC` or bare `Wav2Vec2Model` state dict."""
    cfg = config_from_hf(hf_config)
    sd = {k: v for k, v in state_dict.items()}
    if not any(k.startswith("wav2vec2.") for k in sd):  # a bare Wav2Vec2Model
        sd = {f"wav2vec2.{k}": v for k, v in sd.items()}
    sd = _rename(sd, _HF_RULES)
    check_state_dict(cfg, sd, source)
    return cfg, sd


def check_hf_exportable(cfg: Wav2Vec2Config) -> None:
    """One line when Hugging Face's Wav2Vec2 cannot hold this network."""
    if cfg.extractor_mode == "fbank":
        raise ToolkitError("extractor_mode=fbank: Hugging Face's Wav2Vec2 has no log-mel front-end; export a "
                           "fine-tuned (CTC) model of it with --to onnx or --to torchscript")


def to_hf(cfg: Wav2Vec2Config, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], StateDict]:
    """Inverse of `from_hf`: a Hugging Face config dict and state dict (parametrized weight norm)."""
    check_hf_exportable(cfg)
    sd = _rename(state_dict, _name_rules(_HF_NAMES, to_toolkit=False))
    conv = cfg.conv_feature_layers
    hf = dict(
        model_type="wav2vec2", feat_extract_norm="layer" if cfg.extractor_mode == "layer_norm" else "group",
        conv_dim=[c[0] for c in conv], conv_kernel=[c[1] for c in conv], conv_stride=[c[2] for c in conv],
        conv_bias=cfg.conv_bias, num_feat_extract_layers=len(conv), num_hidden_layers=cfg.encoder_layers,
        hidden_size=cfg.encoder_embed_dim, intermediate_size=cfg.encoder_ffn_embed_dim,
        num_attention_heads=cfg.encoder_attention_heads, do_stable_layer_norm=cfg.layer_norm_first,
        num_conv_pos_embeddings=cfg.conv_pos, num_conv_pos_embedding_groups=cfg.conv_pos_groups,
        hidden_dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, layerdrop=cfg.encoder_layerdrop,
        feat_proj_dropout=cfg.dropout_input, feat_quantizer_dropout=cfg.dropout_features,
        final_dropout=cfg.final_dropout, mask_time_prob=cfg.mask_prob, mask_time_length=cfg.mask_length,
        mask_time_min_masks=cfg.mask_min_masks, mask_feature_prob=cfg.mask_channel_prob,
        mask_feature_length=cfg.mask_channel_length, proj_codevector_dim=cfg.proj_dim,
        codevector_dim=cfg.vq_dim, num_codevectors_per_group=cfg.latent_vars,
        num_codevector_groups=cfg.latent_groups, num_negatives=cfg.num_negatives,
        contrastive_logits_temperature=cfg.logit_temp, diversity_loss_weight=cfg.loss_weights[0],
        layer_norm_eps=1e-5, hidden_act="gelu", feat_extract_activation="gelu",
    )
    hf[TOOLKIT_KEY] = {**{k: getattr(cfg, k) for k in TOOLKIT_ONLY}, "latent_temp": list(cfg.latent_temp),
                       "feature_penalty": cfg.loss_weights[1]}
    if "lm_head.weight" in sd:
        hf["vocab_size"] = sd["lm_head.weight"].shape[0]
    if cfg.mask_prob == 0 and cfg.mask_channel_prob == 0:
        sd.pop("wav2vec2.masked_spec_embed", None)  # HF only creates it when a mask prob is > 0
    return hf, sd


# ------------------------------------------------------------------------------------------
# torchaudio

_TA_HEADS = {768: 12, 1024: 16, 1280: 16, 1920: 16}  # torchaudio's factories


def from_torchaudio(state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None,
                    layer_norm_first: bool | None = None, conv_strides: list[int] | None = None,
                    source: str = "torchaudio checkpoint", **overrides: Any) -> tuple[Wav2Vec2Config, StateDict]:
    """Convert a torchaudio `Wav2Vec2Model` state dict; the config is inferred from the shapes.

    Not recoverable from shapes, so taken from the arguments or torchaudio's factories:
    `num_heads` (768->12, 1024/1280/1920->16, else D/64), `layer_norm_first` (fairseq meaning;
    every torchaudio factory pairs the layer-norm CNN with pre-LN and the group-norm CNN with
    post-LN; torchaudio's own `Transformer.layer_norm_first` flag is the inverse), `conv_strides`
    (default 5,2,2,... for the standard kernels). `overrides` set other config fields (dropouts...).
    """
    sd = dict(state_dict)
    conv_keys = sorted({int(m.group(1)) for k in sd if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k))})
    layer_ids = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.transformer\.layers\.(\d+)\.", k))}
    try:
        kernels = [sd[f"feature_extractor.conv_layers.{i}.conv.weight"].shape for i in conv_keys]
        proj = sd["encoder.feature_projection.projection.weight"].shape
        fc1 = sd["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"].shape
        pos_v = sd.get("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1",
                       sd.get("encoder.transformer.pos_conv_embed.conv.weight_v"))
        if pos_v is None:
            raise KeyError("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1")
    except KeyError as e:
        raise ToolkitError(f"{source}: missing {e.args[0]}; this is not a torchaudio Wav2Vec2Model state dict") from None
    dim = proj[0]
    layer_norm_cnn = "feature_extractor.conv_layers.1.layer_norm.weight" in sd
    if conv_strides is None:
        conv_strides = [5] + [2] * (len(kernels) - 1)
    if len(conv_strides) != len(kernels):
        raise ToolkitError(f"{source}: {len(kernels)} conv layers but {len(conv_strides)} conv_strides given")
    fields: dict[str, Any] = dict(
        extractor_mode="layer_norm" if layer_norm_cnn else "default",
        conv_feature_layers=[(w[0], w[2], s) for w, s in zip(kernels, conv_strides)],
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in sd,
        encoder_layers=len(layer_ids), encoder_embed_dim=dim, encoder_ffn_embed_dim=fc1[0],
        encoder_attention_heads=num_heads or _TA_HEADS.get(dim, max(1, dim // 64)),
        layer_norm_first=layer_norm_cnn if layer_norm_first is None else layer_norm_first,
        conv_pos=pos_v.shape[2], conv_pos_groups=dim // pos_v.shape[1],
    )
    fields.update(overrides)
    cfg = Wav2Vec2Config.from_dict(fields, where="torchaudio config")
    sd = _rename(sd, _TA_RULES)
    # torchaudio never stores the mask embedding (it is a pretraining-only parameter).
    sd.setdefault("wav2vec2.mask_emb", torch.empty(dim).uniform_())
    check_state_dict(cfg, sd, source)
    return cfg, sd


# ------------------------------------------------------------------------------------------
# fairseq (the mapping lives in fairseq_io, next to the safe unpickler)

def from_fairseq(state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any],
                 source: str = "fairseq checkpoint") -> tuple[Wav2Vec2Config, StateDict]:
    """Convert a fairseq wav2vec 2.0 pretraining or CTC fine-tuned model's `model` state dict.

    `model_cfg` is the pretraining model's configuration (`cfg["model"]`, or `w2v_args.model`
    of a fine-tuned checkpoint). The mapping is `fairseq_io`'s, the one `import-checkpoint` uses.
    """
    from toolkit.model import fairseq_io

    parts = fairseq_io.FairseqConfigParts(dict(model_cfg), {}, {}, None)
    cfg, sd, _ = fairseq_io.convert_fairseq(dict(state_dict), source, lambda kind: parts)
    check_state_dict(cfg, sd, source)
    return cfg, sd
