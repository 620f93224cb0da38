"""Named model configurations: `get_preset(name) -> Wav2Vec2Config`.

Sources: fairseq's pretraining YAMLs (`examples/wav2vec/config/pretraining/*.yaml`) for base and
large_lv60; torchaudio's factories (`wav2vec2_large`, `wav2vec2_xlsr_300m/1b/2b`) for the
architectures of large (LS-960), xls_r_*; XLSR-53 is the LV-60 architecture. The XLSR pretraining
hyperparameters (dropouts, temperature) are not in public fairseq code: ours follow the LV-60 YAML
and the XLS-R paper (arXiv 2111.09296) and are marked as such below.

Parameter counts (pretraining model, asserted by tests): base 95,044,608; large_lv60 / xlsr_53 /
xls_r_300m 317,390,592; large (LS-960, group norm, no conv bias) 317,380,864.
"""
from __future__ import annotations

from typing import Any, Callable

from toolkit.model.config import DEFAULT_CONV_LAYERS, Wav2Vec2Config
from toolkit.utils import ToolkitError


def _tiny() -> dict[str, Any]:
    # Standard kernels/strides (stride 320, receptive field 400: frames line up with every other
    # preset) but narrow channels, so pretraining moves in CPU-minutes (the embedded default).
    conv = [(64, 10, 5), (64, 3, 2), (64, 3, 2), (128, 3, 2), (128, 3, 2), (128, 2, 2), (128, 2, 2)]
    return dict(
        conv_feature_layers=conv, encoder_layers=3, encoder_embed_dim=128, encoder_ffn_embed_dim=512,
        encoder_attention_heads=4, conv_pos=64, conv_pos_groups=16, final_dim=64,
        latent_vars=64, latent_groups=2, num_negatives=50,
        # Temperature reaches its floor after ~1.4k updates: tiny runs are short.
        latent_temp=(2.0, 0.5, 0.999), dropout_input=0.1, dropout_features=0.1,
        # No feature penalty, as XLSR / LV-60 (BASE's weight 10 measured harmful here): while the
        # contrastive loss sits at chance its gradient is ~0, Adam turns the penalty's gradient into
        # full-size steps, and the CNN's activations shrink 100-500x into the GELUs' near-linear
        # range (docs/DESIGN.md, "The feature penalty").
        feature_grad_mult=0.1, loss_weights=(0.1, 0.0),
    )


def _tiny_fbank() -> dict[str, Any]:
    # The tiny Transformer on a fixed 80-band log-mel front-end (25 ms / 20 ms frames, the CNN's
    # frame rate) instead of the waveform CNN: for CTC from scratch on a small corpus, where a CNN
    # learned from random weights fits the training speakers' voices and microphones (FSDD's held-out
    # speaker: 3.2% against 13.6% WER, bench/RESULTS.md). Not importable from or exportable to
    # Hugging Face or fairseq, which have no such front-end.
    return dict(_tiny(), extractor_mode="fbank", conv_feature_layers=[(80, 400, 320)])


def _base() -> dict[str, Any]:
    # wav2vec2_base_librispeech.yaml
    return dict(final_dim=256, encoder_layerdrop=0.05, dropout_input=0.1, dropout_features=0.1,
                feature_grad_mult=0.1, loss_weights=(0.1, 10.0))


def _large_arch(**kw: Any) -> dict[str, Any]:
    d = dict(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
             encoder_attention_heads=16, final_dim=768)
    d.update(kw)
    return d


def _large() -> dict[str, Any]:
    # LS-960 LARGE: BASE's recipe at LARGE width (group-norm CNN, post-LN). Its pretraining YAML is
    # not public; regularisation follows BASE.
    return _large_arch(encoder_layerdrop=0.05, dropout_input=0.1, dropout_features=0.1,
                       feature_grad_mult=0.1, loss_weights=(0.1, 10.0))


def _lv60_like(**kw: Any) -> dict[str, Any]:
    # wav2vec2_large_librivox.yaml: layer-norm CNN with bias, pre-LN, no dropout, no feature penalty.
    d = _large_arch(extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True,
                    latent_temp=(2.0, 0.1, 0.999995), dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0,
                    dropout_features=0.0, feature_grad_mult=1.0, loss_weights=(0.1, 0.0), normalize=True)
    d.update(kw)
    return d


def _xlsr(**kw: Any) -> dict[str, Any]:
    # XLSR / XLS-R: LV-60 architecture; dropout 0.1 / layerdrop 0.1 per the XLS-R paper (not
    # verifiable from public code).
    return _lv60_like(dropout=0.1, attention_dropout=0.1, dropout_input=0.1, dropout_features=0.1,
                      encoder_layerdrop=0.1, **kw)


_PRESETS: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny": _tiny,
    "tiny_fbank": _tiny_fbank,
    "base": _base,
    "large": _large,
    "large_lv60": _lv60_like,
    "xlsr_53": _xlsr,
    "xls_r_300m": _xlsr,
    "xls_r_1b": lambda: _xlsr(encoder_layers=48, encoder_embed_dim=1280, encoder_ffn_embed_dim=5120,
                              encoder_attention_heads=16, final_dim=1024),
    "xls_r_2b": lambda: _xlsr(encoder_layers=48, encoder_embed_dim=1920, encoder_ffn_embed_dim=7680,
                              encoder_attention_heads=16, final_dim=1024),
}

PRESETS: tuple[str, ...] = tuple(_PRESETS)
# Other spellings in use (the XLS-R paper's names, torchaudio factory names).
_ALIASES = {"xlsr_300m": "xls_r_300m", "xlsr_1b": "xls_r_1b", "xlsr_2b": "xls_r_2b", "large_lv60k": "large_lv60"}


def get_preset(name: str, **overrides: Any) -> Wav2Vec2Config:
    """The named configuration, with optional field overrides (validated)."""
    name = _ALIASES.get(name, name)
    if name not in _PRESETS:
        raise ToolkitError(f"model preset {name!r} is unknown; choose one of: {', '.join(PRESETS)}")
    fields = _PRESETS[name]()
    fields.setdefault("conv_feature_layers", list(DEFAULT_CONV_LAYERS))
    fields.update(overrides)
    return Wav2Vec2Config.from_dict(fields, where=f"model preset {name!r}")
