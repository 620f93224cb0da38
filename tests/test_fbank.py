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
    """Kaldi's compute-fbank-feats (through torchaudio) of float samples read as 16-bit ones."""
    return kaldi.fbank(wave[None] * 32768, frame_length=window / 16, frame_shift=hop / 16, dither=0.0,
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
        # float32 both: bands more than 50 dB (12 in natural log of power) below the frame's peak hold
        # the FFT's rounding noise of the peak (the pure sine's), different in each implementation
        near = want > want.max(dim=0, keepdim=True).values - 12
        torch.testing.assert_close(got[near], want[near], rtol=1e-4, atol=2e-3, msg=str((n_mels, window, hop, row)))
        assert bool((got[~near] < want.max(dim=0, keepdim=True).values.expand_as(got)[~near] - 10).all())
        assert bool(near.all()) if row == 0 else bool(near.any())  # noise fills every band


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
    for layers, empty in (([(128, 400, 320)], 1), ([(80, 64, 32)], 31), ([(80, 2, 1)], 80)):
        with pytest.raises(ToolkitError, match=rf"gives {empty} mel band\(s\) narrower than one FFT bin \(always at the "
                                               r"log floor\): use fewer mel bands or a longer window$"):
            get_preset("tiny_fbank", conv_feature_layers=layers)
    get_preset("tiny_fbank", conv_feature_layers=[(120, 400, 320)])  # every band catches a bin


def test_quiet_audio_stays_off_the_log_floor():
    """Float samples were read as they are, so audio 40 dB down had a third of its bands at the floor
    (Kaldi reads 16-bit samples): a level change must shift the features, not clip them."""
    g = torch.Generator().manual_seed(1)
    wave = torch.randn(1, 16000, generator=g) * 0.1
    fe = FbankFeatureEncoder(get_preset("tiny_fbank"))
    loud, quiet = fe(wave), fe(wave * 1e-3)
    assert float((loud - quiet - 2 * np.log(1e3)).abs().max()) < 1e-3


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
    assert err.endswith("extractor_mode=fbank: Hugging Face's Wav2Vec2 has no log-mel front-end; export a fine-tuned "
                        "(CTC) model of it with --to onnx or --to torchscript"), err
    assert not (tmp_path / "hf").exists()


def test_the_data_loader_uses_the_models_frame_geometry(tmp_path):
    """A 1024-sample fbank window: the loader's fixed 400-sample minimum let a 700-sample cut through
    to a traceback in the front-end (or an empty hypothesis inside a batch), and its CTC-fit check
    counted the standard CNN's frames."""
    import soundfile as sf
    from lhotse import CutSet, Recording

    from toolkit.data.dataset import AudioDataset

    sf.write(tmp_path / "short.wav", np.zeros(700, np.float32), 16000)
    cuts = CutSet.from_cuts([Recording.from_file(tmp_path / "short.wav").to_cut()])
    AudioDataset(drop_unfit=False)[cuts]  # one frame of the standard CNN
    with pytest.raises(ToolkitError, match=r"short\.wav\): 700 samples is shorter than one model frame \(1024\); fix "):
        AudioDataset(drop_unfit=False, conv_layers=[(80, 1024, 320)])[cuts]


def test_an_init_is_not_given_another_architecture_by_overrides():
    """A fixed front-end has no weights, so train.init plus an override of its window trained the
    encoder on other features than it was trained on, exit 0."""
    from toolkit.train.config import load_config
    from toolkit.train.tasks import resolve_model_config

    cfg = load_config(None, "finetune", ["exp_dir=x", "train.init=a.pt"])
    init = {"model_config": get_preset("tiny_fbank").to_dict()}
    assert resolve_model_config(cfg, init).conv_feature_layers == [(80, 400, 320)]
    cfg.model.overrides = {"conv_feature_layers": [[80, 1024, 320]], "dropout": 0.2}
    with pytest.raises(ToolkitError, match=r"^model.overrides: conv_feature_layers=\[\[80, 1024, 320\]\] but train.init "
                                           r"a.pt was trained with conv_feature_layers=\[\[80, 400, 320\]\]; its weights "
                                           "need its own architecture: remove that override$"):
        resolve_model_config(cfg, init)
    cfg.model.overrides = {"dropout": 0.2}  # a training setting of the same network
    assert resolve_model_config(cfg, init).dropout == 0.2
