#!/usr/bin/env python
"""Training-step throughput (audio-seconds per second) of our pretraining and CTC steps versus
Hugging Face's Wav2Vec2ForPreTraining / Wav2Vec2ForCTC on the same batches, same architecture,
same run, on CPU (or --device cuda).

A step is forward + backward + AdamW update. The HF pretraining step includes its (numpy) mask
and negative sampling, as in its example training script; ours samples them inside forward.
Dropouts and LayerDrop are off in both so the work is the same.

    .venv/bin/python bench/train_throughput.py [--presets tiny,base] [--steps 3] [--device cuda --amp bf16]

Ends with `RESULT <name>=<value>` lines (audio-s/s and our/HF ratios).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def hf_config(cfg, vocab_size: int):  # noqa: ANN001, ANN201
    """The transformers Wav2Vec2Config of our architecture (no dropout, no LayerDrop)."""
    from transformers import Wav2Vec2Config as HFConfig

    return HFConfig(
        vocab_size=vocab_size, hidden_size=cfg.encoder_embed_dim, num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.encoder_attention_heads, intermediate_size=cfg.encoder_ffn_embed_dim,
        conv_dim=[c for c, _, _ in cfg.conv_feature_layers], conv_kernel=[k for _, k, _ in cfg.conv_feature_layers],
        conv_stride=[s for _, _, s in cfg.conv_feature_layers], conv_bias=cfg.conv_bias,
        feat_extract_norm="group" if cfg.extractor_mode == "default" else "layer",
        do_stable_layer_norm=cfg.layer_norm_first, num_conv_pos_embeddings=cfg.conv_pos,
        num_conv_pos_embedding_groups=cfg.conv_pos_groups, num_codevectors_per_group=cfg.latent_vars,
        num_codevector_groups=cfg.latent_groups, codevector_dim=cfg.vq_dim, proj_codevector_dim=cfg.proj_dim,
        num_negatives=cfg.num_negatives, mask_time_prob=cfg.mask_prob, mask_time_length=cfg.mask_length,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_feature_prob=0.0,
        ctc_zero_infinity=True, ctc_loss_reduction="sum", pad_token_id=0, diversity_loss_weight=0.1,
    )


def quiet(cfg):  # noqa: ANN001, ANN201
    return cfg.replace(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                       dropout_features=0.0, encoder_layerdrop=0.0, mask_channel_prob=0.0)


AUTOCAST: dict = {"enabled": False}  # set by main: torch.autocast's arguments for every forward


def timed(step, n: int) -> float:  # noqa: ANN001
    def run() -> None:
        with torch.autocast(**AUTOCAST):
            step()

    run()  # warm-up
    times = []
    for _ in range(n):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_preset(name: str, batch: int, seconds: float, steps: int, device: torch.device) -> dict[str, float]:
    from transformers import Wav2Vec2ForCTC as HFCTC
    from transformers import Wav2Vec2ForPreTraining as HFPre
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC, Wav2Vec2ForPretraining
    from toolkit.model.wav2vec2 import ctc_loss

    cfg = quiet(get_preset(name))
    vocab = 32
    g = torch.Generator().manual_seed(0)
    S = int(seconds * 16000)
    audio = torch.randn(batch, S, generator=g).to(device)
    lengths = torch.full((batch,), S, dtype=torch.long, device=device)
    targets = torch.randint(1, vocab, (batch, int(seconds * 12)), generator=g).to(device)
    target_lengths = torch.full((batch,), targets.shape[1], dtype=torch.long, device=device)
    audio_s = batch * seconds
    out: dict[str, float] = {}

    ours = Wav2Vec2ForPretraining(cfg).to(device).train()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-5)

    def our_pre() -> None:
        opt.zero_grad()
        o = ours(audio, lengths)
        (o.loss / o.sample_size).backward()
        opt.step()

    out["ours_pretrain"] = audio_s / timed(our_pre, steps)
    del ours, opt

    hcfg = hf_config(cfg, vocab)
    hf = HFPre(hcfg).to(device).train()
    hopt = torch.optim.AdamW(hf.parameters(), lr=1e-5)
    T = int(hf._get_feat_extract_output_lengths(S))

    def hf_pre() -> None:
        hopt.zero_grad()
        mask = _compute_mask_indices((batch, T), hcfg.mask_time_prob, hcfg.mask_time_length, min_masks=2)
        neg = _sample_negative_indices((batch, T), hcfg.num_negatives, mask_time_indices=mask)
        o = hf(audio, mask_time_indices=torch.from_numpy(mask).to(device),
               sampled_negative_indices=torch.from_numpy(neg).to(device))
        (o.loss / int(mask.sum())).backward()
        hopt.step()

    out["hf_pretrain"] = audio_s / timed(hf_pre, steps)
    del hf, hopt

    ctc_cfg = cfg.replace(mask_prob=0.5, mask_length=10)
    ours_ctc = Wav2Vec2ForCTC(ctc_cfg, vocab).to(device).train()
    ours_ctc.freeze_feature_encoder()
    copt = torch.optim.AdamW([p for p in ours_ctc.parameters() if p.requires_grad], lr=1e-5)

    def our_ctc() -> None:
        copt.zero_grad()
        lp, ol = ours_ctc(audio, lengths)
        loss, kept, _ = ctc_loss(lp, ol, targets, target_lengths)
        (loss / kept).backward()
        copt.step()

    out["ours_ctc"] = audio_s / timed(our_ctc, steps)
    del ours_ctc, copt

    hcfg_ctc = hf_config(ctc_cfg, vocab)
    hcfg_ctc.mask_time_prob = 0.5
    hf_ctc = HFCTC(hcfg_ctc).to(device).train()
    hf_ctc.freeze_feature_encoder()
    hcopt = torch.optim.AdamW([p for p in hf_ctc.parameters() if p.requires_grad], lr=1e-5)
    labels = targets.clone()

    def hf_ctc_step() -> None:
        hcopt.zero_grad()
        o = hf_ctc(audio, labels=labels)
        (o.loss / batch).backward()
        hcopt.step()

    out["hf_ctc"] = audio_s / timed(hf_ctc_step, steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,base")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="none", choices=("none", "bf16"), help="bf16 autocast of both models' steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = torch.device(args.device)
    AUTOCAST.update(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    shapes = {"tiny": (4, 4.0), "base": (2, 4.0)}
    if device.type == "cuda":  # batches a GPU is used with (16 s and 32 s of audio per step)
        shapes = {"tiny": (8, 4.0), "base": (8, 4.0), "large": (8, 4.0)}
    results = {}
    for name in args.presets.split(","):
        batch, seconds = shapes.get(name, (2, 4.0))
        r = bench_preset(name, batch, seconds, args.steps, device)
        print(f"{name} (batch {batch} x {seconds:.0f} s, {device}{', bf16' if args.amp == 'bf16' else ''}): "
              + ", ".join(f"{k} {v:.1f} audio-s/s" for k, v in r.items()), flush=True)
        for kind in ("pretrain", "ctc"):
            print(f"  {kind}: ours / HF = {r[f'ours_{kind}'] / r[f'hf_{kind}']:.2f}x", flush=True)
        results[name] = r
    tag = ("_cuda" if device.type == "cuda" else "") + ("_bf16" if args.amp == "bf16" else "")
    for name, r in results.items():
        for kind in ("pretrain", "ctc"):
            print(f"RESULT {name}{tag}_{kind}_ours_audio_s_per_s={r[f'ours_{kind}']:.1f}")
            print(f"RESULT {name}{tag}_{kind}_hf_audio_s_per_s={r[f'hf_{kind}']:.1f}")
            print(f"RESULT {name}{tag}_{kind}_ratio_ours_over_hf={r[f'ours_{kind}'] / r[f'hf_{kind}']:.3f}")


if __name__ == "__main__":
    main()
