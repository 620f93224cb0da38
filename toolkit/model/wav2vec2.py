"""wav2vec 2.0 / XLSR with fairseq's semantics: feature encoder, context network, quantizer, heads.

Shapes: B batch, S samples, T frames, C CNN channels, D model width, F contrastive dim (final_dim),
N masked frames in the batch, K distractors per masked frame.

Deliberate differences from fairseq / torchaudio / Hugging Face (all behave identically on
unpadded input; parity tests prove it):
- The group norm of the "default" feature encoder and the feature penalty use only the valid
  (non-padded) samples, so an utterance gives the same output alone or padded in a batch. The
  references normalise over the padding too.
- `post_extract_proj` always exists (fairseq omits it when C == D).
- The quantizer runs on the masked frames only (fairseq; HF quantizes every frame) and a
  distractor is "equal to the positive" when its codes are equal (fairseq compares the vectors,
  which is the same thing except for straight-through rounding noise in training).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from toolkit.model.config import Wav2Vec2Config, fft_size, mel_banks
from toolkit.model.masking import compute_mask_indices, negatives_from_flat_indices, sample_negatives


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def conv_output_lengths(lengths: torch.Tensor, layers: list[tuple[int, int, int]]) -> torch.Tensor:
    """Frames produced from `lengths` samples: floor((L - k) / s) + 1 per layer (0 if too short)."""
    for _, k, s in layers:
        lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        lengths = lengths.clamp_min(0)
    return lengths


# ------------------------------------------------------------------------------------------
# Feature encoder

class ConvBlock(nn.Module):
    """Conv1d -> [norm] -> GELU. `norm`: "group" (GroupNorm(C, C), padding-aware), "layer" or None."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm_type = norm
        if norm == "group":
            self.norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_dim, elementwise_affine=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """x (B, C_in, T_in) -> (B, C_out, T_out); `lengths` are the valid output frames or None."""
        x = self.conv(x)
        if self.norm_type == "group":
            x = self._group_norm(x, lengths)
        elif self.norm_type == "layer":
            # fp32 statistics (fairseq's Fp32LayerNorm), channels last.
            x = F.layer_norm(x.float().transpose(1, 2), self.norm.normalized_shape, self.norm.weight.float(),
                             self.norm.bias.float(), self.norm.eps).transpose(1, 2).type_as(x)
        return F.gelu(x)

    def _group_norm(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        gn = self.norm
        if lengths is None or (not _tracing() and bool((lengths >= x.shape[-1]).all())):
            # no row padded (pretraining crops every row to one length): the fused native kernel
            return F.group_norm(x.float(), gn.num_groups, gn.weight.float(), gn.bias.float(), gn.eps).type_as(x)
        # One group per channel: statistics over the valid frames only.
        xf = x.float()
        if torch.is_grad_enabled() and (xf.requires_grad or gn.weight.requires_grad) and not _tracing():
            # training: the written-out backward (MaskedChannelNorm), several times faster
            return MaskedChannelNorm.apply(xf, lengths, gn.weight.float(), gn.bias.float(), gn.eps).type_as(x)
        # inference, tracing and export (a graph of tensor operations, any lengths)
        valid = (torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]).to(xf.dtype)[:, None, :]
        count = valid.sum(dim=-1, keepdim=True).clamp_min(1.0)
        mean = (xf * valid).sum(dim=-1, keepdim=True) / count
        var = ((xf - mean).square() * valid).sum(dim=-1, keepdim=True) / count
        y = (xf - mean) * torch.rsqrt(var + gn.eps)
        return (y * gn.weight.float()[:, None] + gn.bias.float()[:, None]).type_as(x)


def _tracing() -> bool:
    """torch.jit.trace, torch.compile or torch.export is building a graph (no Python loops over lengths)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


class MaskedChannelNorm(torch.autograd.Function):
    """GroupNorm with one group per channel whose statistics cover each row's valid frames only.

    x (B, C, T) float, lengths (B,) valid frames (a row's valid frames come first). Every frame,
    padded ones included, is normalised with its row's valid-frame mean and variance (padded
    outputs are masked later). Used when gradients are needed; inference keeps the tensor formula
    of `ConvBlock._group_norm`. Built from autograd primitives, this norm took about ten passes
    over the first CNN layer's output (the model's largest activation) and a quarter of a tiny CTC
    update on the CPU (bench/RESULTS.md); written out it takes a few fused passes each way.
    With r = 1/std, mu the mean, n the row's valid frames and sums over every frame t (padded
    outputs depend on the valid frames through mu and r):
        S1 = w * sum_t dy,  S2 = w * r * (sum_t dy * x - mu * sum_t dy)
        dx = r * w * dy + valid * (r / n) * (-S1 - r * S2 * (x - mu))
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, lengths: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,  # noqa: ANN001
                eps: float) -> torch.Tensor:
        bsz, chans, tsz = x.shape
        lens = [max(1, min(int(n), tsz)) for n in lengths.tolist()]
        var = x.new_empty(bsz, chans, 1)
        mean = x.new_empty(bsz, chans, 1)
        for b, n in enumerate(lens):  # two passes (torch.var_mean is several times slower on the CPU)
            xs = x[b, :, :n]
            mean[b] = xs.sum(dim=-1, keepdim=True) / n
            xc = xs - mean[b]
            var[b] = torch.linalg.vecdot(xc, xc, dim=-1).unsqueeze(-1) / n
        rstd = torch.rsqrt(var + eps)
        scale = rstd * weight[:, None]
        y = torch.addcmul(bias[:, None] - mean * scale, x, scale)
        ctx.lens = lens
        ctx.save_for_backward(x, mean, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # noqa: ANN001, ANN205
        x, mean, rstd, weight = ctx.saved_tensors
        dy = dy.contiguous()
        dy_sum = dy.sum(dim=-1, keepdim=True)  # (B, C, 1)
        dy_x = torch.linalg.vecdot(dy, x, dim=-1).unsqueeze(-1)
        dy_xhat = rstd * (dy_x - mean * dy_sum)  # sum_t dy * xhat
        dx = None
        if ctx.needs_input_grad[0]:
            w = weight[:, None]
            n = x.new_tensor(ctx.lens)[:, None, None]
            d = -(rstd * rstd / n) * w * dy_xhat  # coefficient of x on valid frames
            c = -(rstd / n) * w * dy_sum - d * mean
            dx = torch.addcmul(c, x, d)
            for b, nb in enumerate(ctx.lens):  # padded frames get no share of the statistics' gradient
                if nb < x.shape[-1]:
                    dx[b, :, nb:] = 0
            dx.addcmul_(dy, rstd * w)
        dw = dy_xhat.sum(dim=(0, 2)) if ctx.needs_input_grad[2] else None
        db = dy_sum.sum(dim=(0, 2)) if ctx.needs_input_grad[3] else None
        return dx, None, dw, db, None


class ConvFeatureEncoder(nn.Module):
    """Waveform (B, S) -> features (B, C, T): the 7 temporal convolutions of the paper."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.layers_cfg = list(cfg.conv_feature_layers)
        blocks, in_dim = [], 1
        for i, (dim, k, s) in enumerate(self.layers_cfg):
            norm = "layer" if cfg.extractor_mode == "layer_norm" else ("group" if i == 0 else None)
            blocks.append(ConvBlock(in_dim, dim, k, s, cfg.conv_bias, norm))
            in_dim = dim
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = waveforms.unsqueeze(1)
        for (_, k, s), block in zip(self.layers_cfg, self.conv_layers):
            if lengths is not None:
                lengths = conv_output_lengths(lengths, [(0, k, s)])
            x = block(x, lengths if block.norm_type == "group" else None)
        return x


LOG_FLOOR = float(torch.finfo(torch.float32).eps)  # Kaldi's floor on mel energies before the log
INT16_SCALE = 32768.0  # float samples in [-1, 1] to Kaldi's 16-bit scale


class FbankFeatureEncoder(nn.Module):
    """Waveform (B, S) -> log-mel filterbank (B, n_mels, T), no parameters (`extractor_mode: fbank`).

    `conv_feature_layers` is one (n_mels, window, hop) entry in samples, so frame counts follow the
    same formula as the CNN's: (80, 400, 320) gives 25 ms windows every 20 ms, the standard CNN's
    frames. Each frame is Kaldi's `compute-fbank-feats` of the 16-bit samples (x 32768) with
    snip_edges, no dither and no pre-emphasis: the frame's mean removed, a Hann window, the power spectrum of a zero-padded FFT
    (the next power of two), Kaldi's triangular mel filters from 20 Hz to 400 Hz below Nyquist, and
    the log with a float epsilon floor (tests compare it with `torchaudio.compliance.kaldi.fbank`).
    A fixed front-end generalises to a new speaker and microphone from a few training speakers far
    better than a waveform CNN learned from random weights (bench/RESULTS.md, FSDD).
    """

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.layers_cfg = list(cfg.conv_feature_layers)
        n_mels, self.window_size, self.hop = self.layers_cfg[0]
        self.n_fft = fft_size(self.window_size)
        banks = mel_banks(n_mels, self.window_size)
        with torch.device("cpu"):  # fixed tables, also when the model is built on the meta device
            window = torch.hann_window(self.window_size, periodic=False, dtype=torch.float64).float()
        self.register_buffer("mel", F.pad(banks, (0, 1)).t().contiguous(), persistent=False)  # (n_fft/2+1, n_mels)
        self.register_buffer("window", window, persistent=False)
        self.conv_layers = nn.ModuleList()  # nothing to freeze or scale

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # Kaldi reads 16-bit samples: its log floor sits 90 dB below a full-scale int16 sine, not
        # below a float one; the same scale keeps quiet audio off the floor.
        frames = (waveforms.float() * INT16_SCALE).unfold(-1, self.window_size, self.hop)  # (B, T, window)
        frames = (frames - frames.mean(dim=-1, keepdim=True)) * self.window
        spec = torch.view_as_real(torch.fft.rfft(frames, n=self.n_fft)).square().sum(dim=-1)  # power
        feats = torch.matmul(spec, self.mel).clamp_min(LOG_FLOOR).log()
        return feats.transpose(1, 2).to(waveforms.dtype)


# ------------------------------------------------------------------------------------------
# Context network

class PositionalConvEmbedding(nn.Module):
    """Grouped Conv1d over time with weight norm (dim=2), SamePad and GELU; (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0  # an even kernel yields one extra frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Always in float32, autocast or not: cuDNN has no fast bf16 kernel for this grouped
        # convolution (kernel 128, 16 groups) and ran it as one slow kernel per group, 32 ms of a
        # 47 ms BASE step on an H200, against 4 ms in float32 (TF32 tensor cores); bench/RESULTS.md.
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self.conv(x.float().transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (fairseq key names)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, D); attn_mask (B, 1, 1, T) bool, True = may attend, or None."""
        b, t, d = x.shape
        # One (D -> 3D) product instead of three: the same parameters (fairseq's q/k/v_proj keys),
        # one larger GEMM forward and one input-gradient GEMM backward.
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        q, k, v = F.linear(x, w, bias).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    """Post-LN (BASE) or pre-LN (`layer_norm_first`, LARGE/XLSR) Transformer block."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn = SelfAttention(d, cfg.encoder_attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, attn_mask)))
        return self.final_layer_norm(x + self._ffn(x))


def _init_bert_params(module: nn.Module) -> None:
    # fairseq's init_bert_params for the encoder's Linear layers (q/k/v/out, fc1, fc2).
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class TransformerEncoder(nn.Module):
    """Positional convolution + Transformer layers + LayerDrop; (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.layerdrop = cfg.encoder_layerdrop
        self.pos_conv = PositionalConvEmbedding(d, cfg.conv_pos, cfg.conv_pos_groups)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layers.apply(_init_bert_params)
        self.layer_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layerdrop_generator: torch.Generator | None = None

    def seed_layerdrop(self, seed: int) -> None:
        """Draw LayerDrop patterns from a CPU generator seeded with `seed`.

        Seed it identically on every DDP rank so all ranks skip the same layers (docs/DESIGN.md, "Traps").
        """
        self.layerdrop_generator = torch.Generator().manual_seed(seed)

    def _kept_layers(self) -> list[bool]:
        n = len(self.layers)
        if not self.training or self.layerdrop <= 0:
            return [True] * n
        # CPU draw: no device sync; the same generator state gives the same pattern everywhere.
        u = torch.rand(n, generator=self.layerdrop_generator)
        return (u > self.layerdrop).tolist()

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the final output and, if asked, [input to layer 1, output of layer i..., final LN (pre-LN)]."""
        attn_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)  # the positional conv sees zeros there
            attn_mask = (~padding_mask)[:, None, None, :]
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        hidden = [x] if output_hidden_states else []
        for keep, layer in zip(self._kept_layers(), self.layers):
            if keep:
                x = layer(x, attn_mask)
            if output_hidden_states:
                hidden.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
            if output_hidden_states:
                hidden.append(x)
        return x, hidden


# ------------------------------------------------------------------------------------------
# Backbone

@dataclass
class Wav2Vec2Output:
    """Backbone outputs. `padding_mask`: True = padded frame; `lengths`: valid frames per row."""

    x: torch.Tensor
    padding_mask: torch.Tensor | None
    features: torch.Tensor
    features_pen: torch.Tensor
    mask_indices: torch.Tensor | None
    lengths: torch.Tensor | None = None
    hidden_states: list[torch.Tensor] = field(default_factory=list)


class Wav2Vec2Model(nn.Module):
    """Feature encoder + feature layer norm + projection + masking + context network."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = FbankFeatureEncoder(cfg) if cfg.extractor_mode == "fbank" else ConvFeatureEncoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.conv_dim)
        self.post_extract_proj = nn.Linear(cfg.conv_dim, cfg.encoder_embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = TransformerEncoder(cfg)
        self.feature_grad_mult = cfg.feature_grad_mult
        self.mask_generator: torch.Generator | None = None  # None: the device's default RNG

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames for `lengths` samples (stride 320, receptive field 400 with the standard CNN)."""
        return conv_output_lengths(lengths, self.cfg.conv_feature_layers)

    def freeze_feature_encoder(self) -> None:
        """Freeze the CNN: no gradients (its parameters' .grad stay None) and no autograd graph."""
        self.feature_grad_mult = 0.0
        for p in self.feature_extractor.parameters():
            p.requires_grad_(False)

    def _extract(self, waveforms: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if self.feature_grad_mult > 0:
            feats = self.feature_extractor(waveforms, lengths)
            if self.feature_grad_mult != 1.0:
                feats = GradMultiply.apply(feats, self.feature_grad_mult)
            return feats
        with torch.no_grad():
            return self.feature_extractor(waveforms, lengths)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                mask_time_indices: torch.Tensor | None = None, apply_mask: bool = False,
                output_hidden_states: bool = False) -> Wav2Vec2Output:
        """waveforms (B, S) float, lengths (B,) samples or None (= all S).

        Masking: `mask_time_indices` (B, T) bool is used as given; otherwise `apply_mask` draws
        fairseq span masks (cfg.mask_prob > 0) from `self.mask_generator`. Channel masking
        (cfg.mask_channel_prob > 0) happens only with `apply_mask`.
        """
        feats = self._extract(waveforms, lengths).transpose(1, 2)  # (B, T, C)
        bsz, tsz, _ = feats.shape
        padding_mask = frame_lengths = None
        if lengths is not None:
            frame_lengths = self.output_lengths(lengths).clamp_max(tsz)
            padding_mask = torch.arange(tsz, device=feats.device)[None, :] >= frame_lengths[:, None]
        features_pen = _masked_mean_square(feats, padding_mask)
        feats = self.layer_norm(feats)
        x = self.dropout_input(self.post_extract_proj(feats))

        mask = mask_time_indices
        if mask is None and apply_mask and self.cfg.mask_prob > 0:
            mask = compute_mask_indices((bsz, tsz), padding_mask, self.cfg.mask_prob, self.cfg.mask_length,
                                        self.cfg.mask_min_masks, self.cfg.require_same_masks,
                                        self.mask_generator, x.device)
        if mask is not None:
            mask = mask.to(x.device, torch.bool)
            if padding_mask is not None:
                mask = mask & ~padding_mask
            x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        if apply_mask and self.cfg.mask_channel_prob > 0:
            channel = compute_mask_indices((bsz, x.shape[-1]), None, self.cfg.mask_channel_prob,
                                           self.cfg.mask_channel_length, 0, True, self.mask_generator, x.device)
            x = x.masked_fill(channel[:, None, :], 0.0)

        x, hidden = self.encoder(x, padding_mask, output_hidden_states)
        return Wav2Vec2Output(x=x, padding_mask=padding_mask, features=feats, features_pen=features_pen,
                              mask_indices=mask, lengths=frame_lengths, hidden_states=hidden)


def _masked_mean_square(feats: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """fairseq's features_pen (mean square of the CNN output), over valid frames only."""
    sq = feats.float().square()
    if padding_mask is None:
        return sq.mean()
    valid = (~padding_mask).to(sq.dtype)[..., None]
    return (sq * valid).sum() / (valid.sum() * feats.shape[-1]).clamp_min(1.0)


# ------------------------------------------------------------------------------------------
# Quantizer and pretraining head

def _perplexity(probs: torch.Tensor) -> torch.Tensor:
    """sum over groups of exp(entropy) of the (G, V) average distributions (fairseq, +1e-7)."""
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(dim=-1)).sum()


@dataclass
class QuantizerOutput:
    """What `GumbelVectorQuantizer.forward` returns for N masked frames."""

    x: torch.Tensor  # (N, vq_dim) the chosen codevectors, one per group concatenated
    codes: torch.Tensor  # (N, G) long, the code of each group
    code_perplexity: torch.Tensor  # perplexity of the hard code distribution over the batch
    prob_perplexity: torch.Tensor  # perplexity of the averaged softmax (drives the diversity loss)


class GumbelVectorQuantizer(nn.Module):
    """Product quantizer: G groups x V codevectors, straight-through Gumbel-softmax in training."""

    def __init__(self, in_dim: int, num_vars: int, groups: int, vq_dim: int, temp: tuple[float, float, float]):
        super().__init__()
        self.groups, self.num_vars = groups, num_vars
        self.vars = nn.Parameter(torch.empty(1, groups * num_vars, vq_dim // groups).uniform_())
        self.weight_proj = nn.Linear(in_dim, groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.max_temp, self.min_temp, self.temp_decay = temp
        self.curr_temp = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        self.curr_temp = max(self.max_temp * self.temp_decay ** num_updates, self.min_temp)

    def forward(self, x: torch.Tensor) -> "QuantizerOutput":
        """x (N, C) masked-frame features -> QuantizerOutput (codevectors, codes, perplexities)."""
        n = x.shape[0]
        logits = self.weight_proj(x).float().view(n, self.groups, self.num_vars)
        with torch.autocast(device_type=x.device.type, enabled=False):
            codes = logits.argmax(dim=-1)
            hard = F.one_hot(codes, self.num_vars).float()
            code_ppl = _perplexity(hard.mean(dim=0))
            prob_ppl = _perplexity(logits.softmax(dim=-1).mean(dim=0))
            if self.training:
                onehot = F.gumbel_softmax(logits, tau=self.curr_temp, hard=True, dim=-1)
                codes = onehot.detach().argmax(dim=-1)
            else:
                onehot = hard
        codebook = self.vars.view(self.groups, self.num_vars, -1)
        q = torch.einsum("ngv,gvd->ngd", onehot.to(codebook.dtype), codebook).reshape(n, -1)
        return QuantizerOutput(q, codes, code_ppl, prob_ppl)


@dataclass
class PretrainingOutput:
    """`loss` is the summed fairseq loss; divide gradients by `sample_size` (masked frames)."""

    loss: torch.Tensor
    sample_size: int
    logits: torch.Tensor  # (N, 1 + K): column 0 is the positive
    targets: torch.Tensor  # (N, F) projected quantized targets
    metrics: dict[str, torch.Tensor]


class Wav2Vec2ForPretraining(nn.Module):
    """Backbone + quantizer + contrastive head (fairseq's Wav2Vec2Model with its criterion)."""

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.quantizer = GumbelVectorQuantizer(cfg.conv_dim, cfg.latent_vars, cfg.latent_groups, cfg.vq_dim,
                                               cfg.latent_temp)
        self.project_q = nn.Linear(cfg.vq_dim, cfg.proj_dim)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, cfg.proj_dim)
        self.negatives_generator: torch.Generator | None = None

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the Gumbel temperature: max(max_temp * decay^n, min_temp)."""
        self.quantizer.set_num_updates(num_updates)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                mask_time_indices: torch.Tensor | None = None,
                sampled_negative_indices: torch.Tensor | None = None) -> PretrainingOutput:
        """Masks (fairseq spans unless `mask_time_indices` is given), contrasts, returns summed losses.

        `sampled_negative_indices`: optional (B, T, K) Hugging Face-style flat `b*T + t` indices of
        distractors (must point at masked frames); otherwise K + K_cross are sampled here.
        """
        cfg = self.cfg
        out = self.wav2vec2(waveforms, lengths, mask_time_indices=mask_time_indices, apply_mask=True)
        mask = out.mask_indices
        if mask is None:
            raise ValueError("pretraining needs masked frames: set mask_prob > 0 or pass mask_time_indices")
        # The one host sync of the step: N (masked frames) is data dependent.
        idx = mask.reshape(-1).nonzero().squeeze(1)
        n = idx.shape[0]
        feats = self.dropout_features(out.features.flatten(0, 1).index_select(0, idx))  # (N, C)
        q = self.quantizer(feats)
        y = self.project_q(q.x)
        x = self.final_proj(out.x.flatten(0, 1).index_select(0, idx))
        if sampled_negative_indices is not None:
            neg = negatives_from_flat_indices(mask, sampled_negative_indices.to(mask.device))
        else:
            neg = sample_negatives(mask, cfg.num_negatives, cfg.cross_sample_negatives,
                                   self.negatives_generator, num_masked=n)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = contrastive_logits(x.float(), y.float(), q.codes, neg, cfg.logit_temp)
            contrastive = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=x.device), reduction="sum")
            num_vars = cfg.latent_vars * cfg.latent_groups
            diversity = (num_vars - q.prob_perplexity) / num_vars * n
            pen = out.features_pen.float()
            loss = contrastive + cfg.loss_weights[0] * diversity + cfg.loss_weights[1] * pen * n
        dev = loss.device
        valid = torch.tensor(float(mask.numel()), device=dev) if out.padding_mask is None else (~out.padding_mask).sum()
        metrics = {
            "contrastive_loss": contrastive.detach(), "diversity_loss": diversity.detach(),
            "features_pen": pen.detach(), "accuracy": _accuracy(logits.detach()),
            "code_perplexity": q.code_perplexity.detach(), "prob_perplexity": q.prob_perplexity.detach(),
            "temperature": torch.tensor(self.quantizer.curr_temp, device=dev), "mask_fraction": n / valid,
            "sample_size": torch.tensor(float(n), device=dev),
        }
        return PretrainingOutput(loss=loss, sample_size=n, logits=logits, targets=y, metrics=metrics)


def contrastive_logits(x: torch.Tensor, y: torch.Tensor, codes: torch.Tensor, neg: torch.Tensor,
                       logit_temp: float) -> torch.Tensor:
    """(N, 1 + K) cosine similarities / logit_temp; distractors equal to the positive get -inf.

    x (N, F) predictions, y (N, F) targets, codes (N, G) target codes, neg (N, K) indices into y.
    Small batches use one N x N similarity matrix and gathers (no (N, K, F) copy of targets).
    """
    xn = F.normalize(x, dim=-1, eps=1e-8)
    yn = F.normalize(y, dim=-1, eps=1e-8)
    n = x.shape[0]
    if n * n <= 1 << 24:
        sim = xn @ yn.t()
        pos = sim.diagonal()
        negs = sim.gather(1, neg)
    else:
        pos = (xn * yn).sum(-1)
        negs = torch.einsum("nf,nkf->nk", xn, yn[neg])
    logits = torch.cat([pos[:, None], negs], dim=1) / logit_temp
    neg_is_pos = (codes[neg] == codes[:, None, :]).all(dim=-1)
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(neg_is_pos, float("-inf"))], dim=1)


def _accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Share of masked frames whose positive scores highest (all-equal rows count as wrong)."""
    if logits.numel() == 0:
        return torch.zeros((), device=logits.device)
    top = logits.argmax(-1) == 0
    degenerate = logits.argmin(-1) == 0
    return (top & ~degenerate).float().mean()


# ------------------------------------------------------------------------------------------
# CTC fine-tuning

class Wav2Vec2ForCTC(nn.Module):
    """Backbone + dropout + linear head to the vocabulary (fairseq's Wav2VecEncoder + proj)."""

    def __init__(self, cfg: Wav2Vec2Config, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.proj = nn.Linear(cfg.encoder_embed_dim, vocab_size)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def freeze_feature_encoder(self) -> None:
        self.wav2vec2.freeze_feature_encoder()

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> log_probs (B, T, V) float32, out_lengths (B,) frames. Masks only in training."""
        apply = self.training and (self.cfg.mask_prob > 0 or self.cfg.mask_channel_prob > 0)
        out = self.wav2vec2(waveforms, lengths, apply_mask=apply)
        logits = self.proj(self.final_dropout(out.x))
        log_probs = logits.float().log_softmax(dim=-1)
        if out.lengths is None:
            out_lengths = torch.full((log_probs.shape[0],), log_probs.shape[1], dtype=torch.long,
                                     device=log_probs.device)
        else:
            out_lengths = out.lengths
        return log_probs, out_lengths


def normalize_waveform(wav: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the last axis (one utterance's samples), no affine: fairseq's
    `task.normalize`, for models trained on normalised audio (LARGE / XLSR). Apply before padding."""
    return F.layer_norm(wav, wav.shape[-1:])


def ctc_min_frames(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Frames a CTC path needs per utterance: one per label plus a blank between each equal pair.

    targets (B, L) padded with any value past `target_lengths` (B,); returns (B,) long.
    """
    t = targets.clamp(min=0)
    positions = torch.arange(1, t.shape[1], device=t.device)[None]
    repeats = (t[:, 1:] == t[:, :-1]) & (positions < target_lengths[:, None])
    return target_lengths + repeats.sum(1)


class CTCLoss(NamedTuple):
    """What `ctc_loss` returns."""

    loss: torch.Tensor  # summed over the kept utterances (fp32 scalar)
    kept: int  # utterances whose frames can hold their labels
    dropped: int  # utterances that cannot be aligned (left out of the loss)


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, blank: int = 0) -> CTCLoss:
    """Summed CTC loss over the utterances whose frames can hold their labels (labels + repeats).

    log_probs (B, T, V) log-softmax output, out_lengths (B,) valid frames, targets (B, L) padded with
    any value (e.g. -1) past `target_lengths` (B,). An utterance with fewer frames than
    `ctc_min_frames` has no CTC alignment: it would give an infinite loss, so it is left out and
    counted in `dropped` (such utterances drive CTC to blank-only output when they are zeroed
    silently instead). `zero_infinity` guards the rest. Computed in fp32 outside autocast.
    """
    fits = out_lengths >= ctc_min_frames(targets, target_lengths)
    kept = int(fits.sum())
    if kept == 0:
        return CTCLoss(log_probs.sum() * 0.0, 0, int(fits.numel()))
    lp = log_probs[fits].float().transpose(0, 1)
    with torch.autocast(device_type=log_probs.device.type, enabled=False):
        loss = F.ctc_loss(lp, targets[fits].clamp(min=0), out_lengths[fits], target_lengths[fits],
                          blank=blank, reduction="sum", zero_infinity=True)
    return CTCLoss(loss, kept, int(fits.numel()) - kept)
