"""`Wav2Vec2Config`: every architectural and pretraining-loss option of the model core.

Field names follow fairseq's `Wav2Vec2Config` (facebookresearch/fairseq,
`fairseq/models/wav2vec/wav2vec2.py`) so that fairseq YAML files and checkpoints map one to one.
Defaults are fairseq's defaults (which are the BASE architecture); see `presets.py` for the
named configurations.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from toolkit.utils import ToolkitError

ConvLayers = list[tuple[int, int, int]]

# fairseq's "[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2": 20 ms frames, 25 ms receptive field.
DEFAULT_CONV_LAYERS: ConvLayers = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


EXTRACTOR_MODES = ("default", "layer_norm", "fbank")
SAMPLE_RATE = 16000  # every wav2vec 2.0 / XLSR model reads 16 kHz audio; everything else resamples to it


def _default_conv_layers() -> ConvLayers:
    return list(DEFAULT_CONV_LAYERS)


def num_frames(num_samples: int, conv_layers: ConvLayers | None = None) -> int:
    """Frames the feature encoder outputs for `num_samples` samples (0 when shorter than one frame).

    floor((L - k) / s) + 1 per convolution; with the standard layers this is
    (num_samples - 400) // 320 + 1 from 400 samples (25 ms) on.
    """
    n = int(num_samples)
    for _, kernel, stride in conv_layers or DEFAULT_CONV_LAYERS:
        n = (n - kernel) // stride + 1
        if n <= 0:
            return 0
    return n


def fft_size(window: int) -> int:
    """The `fbank` front-end's FFT length: a `window`-sample frame zero-padded to the next power of two."""
    return 1 << (int(window) - 1).bit_length()


def mel_banks(n_mels: int, window: int):  # noqa: ANN201
    """Kaldi's mel filters (n_mels, n_fft/2) for a `window`-sample frame zero-padded to `fft_size`,
    20 Hz to 400 Hz below Nyquist (the `fbank` front-end's, toolkit/model/wav2vec2.py)."""
    import torch
    from torchaudio.compliance.kaldi import get_mel_banks

    n_fft = fft_size(window)
    with torch.device("cpu"):  # fixed tables, also while a model is built on the meta device
        banks, _ = get_mel_banks(int(n_mels), n_fft, float(SAMPLE_RATE), 20.0, -400.0, 100.0, -500.0, 1.0)
    return banks


def empty_mel_bands(n_mels: int, window: int) -> int:
    """Mel filters of the `fbank` front-end that catch no FFT bin (Kaldi refuses such settings)."""
    return int((mel_banks(n_mels, window).sum(dim=1) == 0).sum())


def receptive_field(conv_layers: ConvLayers | None = None) -> int:
    """Samples one output frame sees (400 with the standard layers)."""
    rf, jump = 1, 1
    for _, k, s in conv_layers or DEFAULT_CONV_LAYERS:
        rf += (k - 1) * jump
        jump *= s
    return rf


# The fields that make two models different networks (parameter shapes and layer structure);
# the others (dropout, masking, loss weights, ...) are training settings of the same network.
ARCHITECTURE_FIELDS = ("extractor_mode", "conv_feature_layers", "conv_bias", "encoder_layers", "encoder_embed_dim",
                       "encoder_ffn_embed_dim", "encoder_attention_heads", "layer_norm_first", "conv_pos",
                       "conv_pos_groups", "final_dim", "latent_vars", "latent_groups", "latent_dim")


@dataclass
class Wav2Vec2Config:
    """Architecture, masking and loss options (fairseq names and defaults).

    `conv_feature_layers` is a list of (channels, kernel, stride) per convolution.
    `latent_temp` is (max, min, decay per update) of the Gumbel temperature.
    `loss_weights` is (diversity weight, feature penalty weight); both are multiplied by the
    number of masked frames, as in fairseq's `Wav2vecCriterion`.
    `normalize` is not used by the model: the data loader normalises waveforms when it is set
    (fairseq's `task.normalize`), and it travels with the model so inference does the same.
    """

    # Feature encoder
    # "default": GroupNorm on layer 0 only; "layer_norm": LN everywhere; "fbank": no CNN, a fixed
    # log-mel filterbank whose conv_feature_layers entry is (mel bands, window, hop)
    extractor_mode: str = "default"
    conv_feature_layers: ConvLayers = field(default_factory=_default_conv_layers)
    conv_bias: bool = False
    feature_grad_mult: float = 1.0  # 0 -> the CNN runs under no_grad
    # Context network
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    layer_norm_first: bool = False  # False: post-LN (BASE); True: pre-LN (LARGE LV-60 / XLSR)
    conv_pos: int = 128
    conv_pos_groups: int = 16
    # Regularisation
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    dropout_features: float = 0.0
    final_dropout: float = 0.0  # before the CTC head (fairseq's Wav2Vec2AsrConfig.final_dropout)
    # Masking
    mask_prob: float = 0.65
    mask_length: int = 10
    mask_min_masks: int = 2
    require_same_masks: bool = True
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    # Contrastive task and quantizer
    final_dim: int = 0  # 0 -> encoder_embed_dim
    num_negatives: int = 100
    cross_sample_negatives: int = 0
    latent_vars: int = 320
    latent_groups: int = 2
    latent_dim: int = 0  # 0 -> final_dim (codevector size, split over the groups)
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    logit_temp: float = 0.1
    loss_weights: tuple[float, float] = (0.1, 10.0)
    # Data
    normalize: bool = False

    def __post_init__(self) -> None:
        self.conv_feature_layers = [tuple(int(v) for v in layer) for layer in self.conv_feature_layers]
        self.latent_temp = tuple(float(v) for v in self.latent_temp)
        self.loss_weights = tuple(float(v) for v in self.loss_weights)
        self.validate()

    # -- derived sizes ---------------------------------------------------------------------
    @property
    def conv_dim(self) -> int:
        """Channels of the last CNN layer (the quantizer's and feature layer norm's input)."""
        return self.conv_feature_layers[-1][0]

    @property
    def proj_dim(self) -> int:
        """Size of the contrastive space (`final_dim`, or the model width when 0)."""
        return self.final_dim or self.encoder_embed_dim

    @property
    def vq_dim(self) -> int:
        """Codevector size summed over groups (`latent_dim`, or `proj_dim` when 0)."""
        return self.latent_dim or self.proj_dim

    def architecture(self) -> dict[str, Any]:
        """The `ARCHITECTURE_FIELDS` of this config (equal for the same network)."""
        d = self.to_dict()
        return {k: d[k] for k in ARCHITECTURE_FIELDS}

    @property
    def total_stride(self) -> int:
        s = 1
        for _, _, stride in self.conv_feature_layers:
            s *= stride
        return s

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.conv_feature_layers)

    # -- checks and (de)serialisation --------------------------------------------------------
    def validate(self) -> None:
        """Raise ToolkitError (one line, naming the option) on an inconsistent configuration."""
        def bad(name: str, why: str) -> None:
            raise ToolkitError(f"model config: {name}={getattr(self, name)!r} {why}")

        if self.extractor_mode not in EXTRACTOR_MODES:
            bad("extractor_mode", f"must be one of {', '.join(EXTRACTOR_MODES)}")
        if not self.conv_feature_layers or any(len(l) != 3 or min(l) < 1 for l in self.conv_feature_layers):
            bad("conv_feature_layers", "must be a non-empty list of positive (dim, kernel, stride)")
        if self.extractor_mode == "fbank":
            if len(self.conv_feature_layers) != 1 or self.conv_feature_layers[0][1] < 2:
                bad("conv_feature_layers", "with extractor_mode=fbank must be one (mel bands, window, hop) entry in "
                    "samples, e.g. [[80, 400, 320]]")
            empty = empty_mel_bands(*self.conv_feature_layers[0][:2])
            if empty:
                bad("conv_feature_layers", f"gives {empty} mel band(s) narrower than one FFT bin (always at the log "
                    "floor): use fewer mel bands or a longer window")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            bad("encoder_embed_dim", f"must be divisible by encoder_attention_heads={self.encoder_attention_heads}")
        if self.encoder_embed_dim % self.conv_pos_groups:
            bad("conv_pos_groups", f"must divide encoder_embed_dim={self.encoder_embed_dim}")
        if self.vq_dim % self.latent_groups:
            bad("latent_groups", f"must divide the codevector size {self.vq_dim}")
        for name in ("mask_prob", "mask_channel_prob", "dropout", "attention_dropout", "activation_dropout",
                     "encoder_layerdrop", "dropout_input", "dropout_features", "final_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must be within [0, 1]")
        if self.mask_length < 1 or self.mask_channel_length < 1:
            bad("mask_length", "and mask_channel_length must be >= 1")
        if len(self.latent_temp) != 3 or self.latent_temp[1] <= 0:
            bad("latent_temp", "must be (max, min > 0, decay)")
        if len(self.loss_weights) != 2:
            bad("loss_weights", "must be (diversity weight, feature penalty weight)")
        if self.num_negatives < 0 or self.cross_sample_negatives < 0:
            bad("num_negatives", "and cross_sample_negatives must be >= 0")
        if self.num_negatives + self.cross_sample_negatives < 1:
            bad("num_negatives", "plus cross_sample_negatives must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (lists instead of tuples) for YAML and checkpoints."""
        d = dataclasses.asdict(self)
        d["conv_feature_layers"] = [list(l) for l in self.conv_feature_layers]
        d["latent_temp"] = list(self.latent_temp)
        d["loss_weights"] = list(self.loss_weights)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model config") -> "Wav2Vec2Config":
        """Build from a dict; unknown keys are errors naming the key (as every toolkit config)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ToolkitError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ToolkitError(f"{where}: invalid value ({e})") from None

    def replace(self, **changes: Any) -> "Wav2Vec2Config":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)
