"""Numerical parity of the model core with torchaudio's Wav2Vec2Model and Hugging Face's
Wav2Vec2ForPreTraining / Wav2Vec2ForCTC, on random weights (no downloads).

Reference models are built from configs, their weights converted with toolkit.model.convert,
and outputs compared within 1e-4 relative (max abs error / max abs reference value).
Padding: torchaudio and HF normalise the "default" (group-norm) CNN over the padding too, while
the toolkit is padding-aware on purpose; padded default-mode batches are therefore compared with
the reference run on each utterance alone, and padded layer-norm batches directly.
"""
from __future__ import annotations

import pytest
import torch

torchaudio = pytest.importorskip("torchaudio")
transformers = pytest.importorskip("transformers")
from transformers.models.wav2vec2 import modeling_wav2vec2 as hf_w2v  # noqa: E402

from toolkit.model import Wav2Vec2ForCTC, Wav2Vec2ForPretraining, Wav2Vec2Model, get_preset  # noqa: E402
from toolkit.model.convert import from_hf, from_torchaudio, to_hf  # noqa: E402
from toolkit.utils import ToolkitError  # noqa: E402

CONV = [(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 2, 2), (32, 2, 2)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give norms and biases non-default values, so a swapped weight/bias mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def toolkit_backbone(cfg, sd) -> Wav2Vec2Model:
    model = Wav2Vec2Model(cfg)
    model.load_state_dict({k[len("wav2vec2."):]: v for k, v in sd.items() if k.startswith("wav2vec2.")}, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------
# torchaudio

def make_ta(layer_norm: bool, dim=48, layers=2, heads=4, ffn=96, conv=CONV, pos=16, pos_groups=4):
    model = torchaudio.models.wav2vec2_model(
        extractor_mode="layer_norm" if layer_norm else "group_norm", extractor_conv_layer_config=conv,
        extractor_conv_bias=layer_norm, encoder_embed_dim=dim, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=pos, encoder_pos_conv_groups=pos_groups, encoder_num_layers=layers,
        encoder_num_heads=heads, encoder_attention_dropout=0.0, encoder_ff_interm_features=ffn,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=layer_norm,
        encoder_layer_drop=0.0, aux_num_out=None)
    perturb_(model)
    return model.eval()


def compare_with_ta(ta, ours, wav, lengths=None):
    with torch.no_grad():
        ref_layers, ref_len = ta.extract_features(wav, lengths)
        ref_final, _ = ta(wav, lengths)
        out = ours(wav, lengths, output_hidden_states=True)
    valid = torch.ones(out.x.shape[:2], dtype=torch.bool) if lengths is None else ~out.padding_mask
    if lengths is not None:
        assert torch.equal(out.lengths, ref_len)
    for i, ref in enumerate(ref_layers, start=1):
        assert rel_err(out.hidden_states[i][valid], ref[valid]) < 1e-4, f"layer {i}"
    assert rel_err(out.x[valid], ref_final[valid]) < 1e-4


@pytest.mark.parametrize("layer_norm", [False, True], ids=["default-postLN", "layer_norm-preLN"])
def test_torchaudio_parity_unpadded(layer_norm):
    torch.manual_seed(0)
    ta = make_ta(layer_norm)
    cfg, sd = from_torchaudio(ta.state_dict(), num_heads=4)
    assert cfg.layer_norm_first == layer_norm and cfg.extractor_mode == ("layer_norm" if layer_norm else "default")
    compare_with_ta(ta, toolkit_backbone(cfg, sd), torch.randn(3, 16000))


def test_torchaudio_parity_padded_layer_norm():
    torch.manual_seed(1)
    ta = make_ta(True)
    cfg, sd = from_torchaudio(ta.state_dict(), num_heads=4)
    wav = torch.randn(3, 16000)
    lengths = torch.tensor([16000, 11000, 7000])
    compare_with_ta(ta, toolkit_backbone(cfg, sd), wav, lengths)


def test_torchaudio_parity_padded_group_norm_vs_alone():
    """Default mode with padding equals torchaudio run on each utterance alone (padding-aware GN)."""
    torch.manual_seed(2)
    ta = make_ta(False)
    cfg, sd = from_torchaudio(ta.state_dict(), num_heads=4)
    ours = toolkit_backbone(cfg, sd)
    lengths = torch.tensor([16000, 12345, 6000])
    wav = torch.randn(3, 16000)
    with torch.no_grad():
        out = ours(wav, lengths)
        for b, n in enumerate(lengths.tolist()):
            ref, _ = ta(wav[b:b + 1, :n])
            t = int(out.lengths[b])
            assert t == ref.shape[1]
            assert rel_err(out.x[b, :t], ref[0]) < 1e-4


def test_torchaudio_ctc_head_and_errors():
    ta = torchaudio.models.wav2vec2_model(
        extractor_mode="layer_norm", extractor_conv_layer_config=CONV, extractor_conv_bias=True, encoder_embed_dim=48,
        encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2,
        encoder_num_heads=4, encoder_attention_dropout=0.0, encoder_ff_interm_features=96,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=True, encoder_layer_drop=0.0,
        aux_num_out=7).eval()
    cfg, sd = from_torchaudio(ta.state_dict(), num_heads=4)
    ours = Wav2Vec2ForCTC(cfg, 7).eval()
    ours.load_state_dict(sd)
    wav = torch.randn(2, 8000)
    with torch.no_grad():
        ref, _ = ta(wav)
        log_probs, _ = ours(wav)
    assert rel_err(log_probs, ref.log_softmax(-1)) < 1e-4
    truncated = dict(ta.state_dict())
    truncated.pop("encoder.transformer.layers.1.feed_forward.output_dense.weight")
    with pytest.raises(ToolkitError, match="missing 1: wav2vec2.encoder.layers.1.fc2.weight"):
        from_torchaudio(truncated, num_heads=4)


FACTORIES = {"base": "wav2vec2_base", "large": "wav2vec2_large", "large_lv60": "wav2vec2_large_lv60k",
             "xls_r_300m": "wav2vec2_xlsr_300m", "xls_r_1b": "wav2vec2_xlsr_1b", "xls_r_2b": "wav2vec2_xlsr_2b"}


@pytest.mark.parametrize("preset", list(FACTORIES))
def test_backbone_parameter_counts_match_torchaudio(preset):
    """Same tensors as torchaudio's factories (torchaudio has no mask embedding)."""
    with torch.device("meta"):
        ta = getattr(torchaudio.models, FACTORIES[preset])()
        ours = Wav2Vec2Model(get_preset(preset))
    n_ta = sum(p.numel() for p in ta.parameters())
    n_ours = sum(p.numel() for n, p in ours.named_parameters() if n != "mask_emb")
    assert n_ours == n_ta
    assert {tuple(p.shape) for p in ta.parameters()} == {tuple(p.shape) for n, p in ours.named_parameters() if n != "mask_emb"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["base", "large_lv60"])
def test_torchaudio_parity_full_size(preset):
    torch.manual_seed(3)
    ta = getattr(torchaudio.models, FACTORIES[preset])(encoder_projection_dropout=0.0, encoder_attention_dropout=0.0,
                                                       encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
                                                       encoder_layer_drop=0.0)
    perturb_(ta)
    ta.eval()
    cfg, sd = from_torchaudio(ta.state_dict())
    assert cfg.encoder_attention_heads == get_preset(preset).encoder_attention_heads
    compare_with_ta(ta, toolkit_backbone(cfg, sd), torch.randn(2, 16000))


# ------------------------------------------------------------------------------------------
# Hugging Face

def hf_config(stable: bool, **kw):
    d = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
             conv_dim=[c[0] for c in CONV], conv_kernel=[c[1] for c in CONV], conv_stride=[c[2] for c in CONV],
             conv_bias=stable, feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.0,
             attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, feat_quantizer_dropout=0.0,
             final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.65, mask_time_length=4,
             num_codevectors_per_group=16, num_codevector_groups=2, codevector_dim=32, proj_codevector_dim=24,
             num_negatives=10, vocab_size=12)
    d.update(kw)
    return transformers.Wav2Vec2Config(**d)


def hf_inputs(hf_cfg, batch=3, samples=16000, seed=0):
    import numpy as np

    np.random.seed(seed)
    torch.manual_seed(seed)
    wav = torch.randn(batch, samples)
    t = int(conv_frames(samples))
    mask = hf_w2v._compute_mask_indices((batch, t), hf_cfg.mask_time_prob, hf_cfg.mask_time_length, min_masks=2)
    neg = hf_w2v._sample_negative_indices((batch, t), hf_cfg.num_negatives, mask)
    return wav, torch.from_numpy(mask), torch.from_numpy(neg).long()


def conv_frames(samples: int) -> int:
    for _, k, s in CONV:
        samples = (samples - k) // s + 1
    return samples


def hf_reference_logits(hf, out, neg):
    """HF's own contrastive logits (it does not return them), reshaped to (B, T, 1 + K)."""
    q = out.projected_quantized_states
    b, t, f = q.shape
    negs = q.reshape(-1, f)[neg.reshape(-1)].view(b, t, -1, f).permute(2, 0, 1, 3)
    logits = hf.compute_contrastive_logits(q[None], negs, out.projected_states, hf.config.contrastive_logits_temperature)
    logits[1:][(q == negs).all(-1)] = float("-inf")
    return logits.permute(1, 2, 0)


def assert_logits_close(ours, ref):
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    finite = torch.isfinite(ref)
    assert rel_err(ours[finite], ref[finite]) < 1e-4


def build_hf_pair(stable: bool, **kw):
    torch.manual_seed(0)
    cfg_hf = hf_config(stable, **kw)
    hf = transformers.Wav2Vec2ForPreTraining(cfg_hf)
    perturb_(hf)
    cfg, sd = from_hf(hf.state_dict(), cfg_hf.to_dict())
    ours = Wav2Vec2ForPretraining(cfg)
    ours.load_state_dict(sd, strict=True)
    return cfg_hf, hf, ours


def eval_pair_with_inputs(stable: bool):
    """(HF model, ours, wav, mask, negatives): the pair of `build_hf_pair` in eval mode, HF's inputs."""
    cfg_hf, hf, ours = build_hf_pair(stable)
    return hf.eval(), ours.eval(), *hf_inputs(cfg_hf)


@pytest.mark.parametrize("stable", [False, True], ids=["group-postLN", "layer-preLN"])
def test_hf_pretraining_parity_eval(stable):
    hf, ours, wav, mask, neg = eval_pair_with_inputs(stable)
    with torch.no_grad():
        ref = hf(wav, mask_time_indices=mask, sampled_negative_indices=neg)
        out = ours(wav, mask_time_indices=mask, sampled_negative_indices=neg)
    assert out.sample_size == int(mask.sum())
    assert rel_err(out.targets, ref.projected_quantized_states[mask]) < 1e-4
    assert_logits_close(out.logits, hf_reference_logits(hf, ref, neg)[mask])
    assert rel_err(out.metrics["contrastive_loss"], ref.contrastive_loss) < 1e-4
    # In eval HF's perplexity is the hard one: our code perplexity.
    assert rel_err(out.metrics["code_perplexity"], ref.codevector_perplexity) < 1e-4


@pytest.mark.parametrize("stable", [False, True], ids=["group-postLN", "layer-preLN"])
def test_hf_diversity_loss_parity_train(stable):
    """In training both use the soft (prob) perplexity over masked frames: same diversity term."""
    cfg_hf, hf, ours = build_hf_pair(stable)
    hf.train(), ours.train()
    wav, mask, neg = hf_inputs(cfg_hf, seed=1)
    with torch.no_grad():
        ref = hf(wav, mask_time_indices=mask, sampled_negative_indices=neg)
        out = ours(wav, mask_time_indices=mask, sampled_negative_indices=neg)
    assert rel_err(out.metrics["diversity_loss"], ref.diversity_loss) < 1e-4
    assert rel_err(out.metrics["prob_perplexity"], ref.codevector_perplexity) < 1e-4
    # HF has no feature penalty: ours with weight 0 (from_hf) gives HF's total minus the
    # contrastive term, which differs only through the Gumbel noise.
    assert torch.isclose(out.loss - out.metrics["contrastive_loss"], ref.loss - ref.contrastive_loss, rtol=1e-4)


@pytest.mark.parametrize("stable", [False, True], ids=["group-postLN", "layer-preLN"])
def test_hf_ctc_parity(stable):
    torch.manual_seed(0)
    cfg_hf = hf_config(stable)
    hf = transformers.Wav2Vec2ForCTC(cfg_hf)
    perturb_(hf)
    hf.eval()
    cfg, sd = from_hf(hf.state_dict(), cfg_hf.to_dict())
    assert "proj.weight" in sd
    ours = Wav2Vec2ForCTC(cfg, cfg_hf.vocab_size).eval()
    ours.load_state_dict(sd)
    wav = torch.randn(2, 12000)
    with torch.no_grad():
        ref = hf(wav).logits.log_softmax(-1)
        log_probs, lens = ours(wav)
    assert log_probs.dtype == torch.float32 and lens.tolist() == [ref.shape[1]] * 2
    assert rel_err(log_probs, ref) < 1e-4
    if stable:  # padding-correct in HF too: compare a padded batch directly
        lengths = torch.tensor([12000, 7000])
        attn = (torch.arange(12000)[None] < lengths[:, None]).long()
        with torch.no_grad():
            ref = hf(wav, attention_mask=attn).logits.log_softmax(-1)
            log_probs, lens = ours(wav, lengths)
        for b in range(2):
            t = int(lens[b])
            assert rel_err(log_probs[b, :t], ref[b, :t]) < 1e-4


def test_hf_roundtrip_and_truncated_source():
    cfg_hf, hf, ours = build_hf_pair(False)
    hf_dict, hf_sd = to_hf(ours.cfg, ours.state_dict())
    back = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**hf_dict))
    back.load_state_dict(hf_sd, strict=True)
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    broken = dict(hf.state_dict())
    broken.pop("quantizer.weight_proj.bias")
    broken["wav2vec2.encoder.layers.0.attention.q_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ToolkitError) as e:
        from_hf(broken, cfg_hf.to_dict())
    msg = str(e.value)
    assert "missing 1: quantizer.weight_proj.bias" in msg and "shape mismatch 1" in msg and "\n" not in msg


@pytest.mark.slow
def test_hf_pretraining_parity_base():
    torch.manual_seed(0)
    cfg_hf = transformers.Wav2Vec2Config(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                         feat_proj_dropout=0.0, feat_quantizer_dropout=0.0, layerdrop=0.0,
                                         mask_time_prob=0.65)
    hf = transformers.Wav2Vec2ForPreTraining(cfg_hf).eval()
    cfg, sd = from_hf(hf.state_dict(), cfg_hf.to_dict())
    ours = Wav2Vec2ForPretraining(cfg).eval()
    ours.load_state_dict(sd)
    import numpy as np
    np.random.seed(0)
    wav = torch.randn(2, 32000)
    t = 99
    mask = hf_w2v._compute_mask_indices((2, t), 0.65, 10, min_masks=2)
    neg = torch.from_numpy(hf_w2v._sample_negative_indices((2, t), 100, mask)).long()
    mask = torch.from_numpy(mask)
    with torch.no_grad():
        ref = hf(wav, mask_time_indices=mask, sampled_negative_indices=neg)
        out = ours(wav, mask_time_indices=mask, sampled_negative_indices=neg)
    assert_logits_close(out.logits, hf_reference_logits(hf, ref, neg)[mask])
    assert rel_err(out.metrics["contrastive_loss"], ref.contrastive_loss) < 1e-4
