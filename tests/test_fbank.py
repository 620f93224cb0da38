"""The log-mel front-end (`extractor_mode: fbank`, preset `tiny_fbank`): Kaldi's fbank numbers, the
CNN's frame geometry, training through it, and the exports that can and cannot carry it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from graph_fixtures import four_word_lang
from toolkit.cli import main
from toolkit.model.checkpoint import save_checkpoint
from toolkit.model.config import Wav2Vec2Config
from toolkit.model.presets import get_preset
from toolkit.model.wav2vec2 import FbankFeatureEncoder, Wav2Vec2ForCTC, Wav2Vec2ForPretraining
from toolkit.utils import ToolkitError


def kaldi_fbank(wave: torch.Tensor, n_mels: int, window: int, hop: int) -> torch.Tensor:
    return kaldi.fbank(wave[None], frame_length=window / 16, frame_shift=hop / 16, dither=0.0,
                       preemphasis_coefficient=0.0, window_type="hanning", num_mel_bins=n_mels, low_freq=20.0,
                       high_freq=-400.0, snip_edges=True, sample_frequency=16000.0, remove_dc_offset=True)


@pytest.mark.parametrize("n_mels,window,hop", [(80, 400, 320), (40, 400, 160), (64, 512, 320)])
def test_features_are_kaldis_fbank_for_every_row_of_a_padded_batch(n_mels, window, hop):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16000, generator=g) * 0.1 + 0.05  # a DC offset, removed per frame as Kaldi does
    b = torch.sin(torch.arange(9000) * 0.3) * 0.5
    batch = torch.zeros(2, 16000)
    batch[0], batch[1, :9000] = a, b
    cfg = get_preset("tiny", extractor_mode="fbank", conv_feature_layers=[(n_mels, window, hop)])
    fe = FbankFeatureEncoder(cfg)
    feats = fe(batch)
    assert feats.shape == (2, n_mels, (16000 - window) // hop + 1)
    for row, wave in enumerate((a, b)):
        want = kaldi_fbank(wave, n_mels, window, hop).t()
        got = feats[row, :, : want.shape[1]]
        # float32 both: bands 50 dB below the frame's peak (the sine's) differ in the 4th digit
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3, msg=str((n_mels, window, hop, row)))


def test_tiny_fbank_has_the_cnns_frames_and_no_feature_encoder_weights():
    fb, cnn = get_preset("tiny_fbank"), get_preset("tiny")
    assert (fb.total_stride, fb.receptive_field) == (cnn.total_stride, cnn.receptive_field) == (320, 400)
    model = Wav2Vec2ForCTC(fb, 10)
    assert not [k for k in model.state_dict() if "feature_extractor" in k]
    lengths = torch.tensor([16000, 12345, 400, 399])
    assert torch.equal(model.wav2vec2.output_lengths(lengths), Wav2Vec2ForCTC(cnn, 10).wav2vec2.output_lengths(lengths))
    log_probs, out_lengths = model.eval()(torch.randn(4, 16000), lengths)
    assert log_probs.shape[1] == 49 and out_lengths.tolist() == [49, 38, 1, 0]
    with torch.device("meta"):  # the converters build models on the meta device
        Wav2Vec2ForPretraining(fb)


def test_fbank_config_errors_are_one_line():
    with pytest.raises(ToolkitError, match=r"conv_feature_layers=.* with extractor_mode=fbank must be one \(mel bands, "
                                           r"window, hop\) entry in samples, e.g. \[\[80, 400, 320\]\]$"):
        get_preset("tiny", extractor_mode="fbank")  # the CNN's seven layers
    with pytest.raises(ToolkitError, match=r"extractor_mode='mfcc' must be one of default, layer_norm, fbank$"):
        Wav2Vec2Config(extractor_mode="mfcc")


def test_a_tiny_fbank_model_learns_through_ctc():
    """Gradients reach the Transformer through the fixed front-end: a fixed batch's CTC loss falls."""
    torch.manual_seed(0)
    cfg = get_preset("tiny_fbank", encoder_layers=1, mask_prob=0.0, dropout=0.0, dropout_input=0.0)
    model = Wav2Vec2ForCTC(cfg, 6).train()
    t = torch.arange(24000) / 16000
    waves = torch.stack([torch.sin(2 * np.pi * 300 * t) * (t < 0.7) + torch.sin(2 * np.pi * 1200 * t) * (t >= 0.7),
                         torch.sin(2 * np.pi * 1200 * t) * (t < 0.7) + torch.sin(2 * np.pi * 300 * t) * (t >= 0.7)])
    targets, target_lengths = torch.tensor([[1, 2], [2, 1]]), torch.tensor([2, 2])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(60):
        log_probs, lengths = model(waves)
        loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    assert model.eval()(waves)[0].argmax(-1).unique_consecutive(dim=-1).tolist() != [[0], [0]]


@pytest.fixture(scope="module")
def fbank_ckpt(tmp_path_factory):
    from toolkit.text.tokenizer import Tokenizer

    d = tmp_path_factory.mktemp("fb")
    tok = Tokenizer.from_lang_dir(four_word_lang(d / "lang"))
    torch.manual_seed(0)
    cfg = get_preset("tiny_fbank")
    ckpt = d / "fbank.pt"
    save_checkpoint(ckpt, Wav2Vec2ForCTC(cfg, tok.vocab_size).eval(), cfg, "ctc", vocab={**tok.to_dict(), "language": "xx"})
    return ckpt


@pytest.mark.parametrize("target", ["onnx", "torchscript"])
def test_fbank_models_export_and_match_pytorch(tmp_path, fbank_ckpt, target, capsys):
    """The export's own check runs the exported model on a padded batch against PyTorch."""
    import json

    assert main(["export", "--checkpoint", str(fbank_ckpt), "--to", target, str(tmp_path / target)]) == 0
    meta = json.loads((tmp_path / target / "export.json").read_text())
    assert meta["check_max_abs_diff"] <= 1e-3


def test_fbank_models_are_refused_by_the_hugging_face_export(tmp_path, fbank_ckpt, capsys):
    assert main(["export", "--checkpoint", str(fbank_ckpt), "--to", "hf", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("extractor_mode=fbank: Hugging Face's Wav2Vec2 has no log-mel front-end; export this model "
                        "with --to onnx or --to torchscript"), err
    assert not (tmp_path / "hf").exists()
