"""AudioDataset: padding, normalisation, crops, speed perturbation, targets, bad audio.

References are independent: audio read back with soundfile, statistics with numpy,
speed perturbation lengths from lhotse's own perturb_speed on the manifest."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, SupervisionSegment

from toolkit.data.dataset import AudioDataset
from toolkit.model.config import num_frames
from toolkit.model.wav2vec2 import ctc_min_frames
from toolkit.text.tokenizer import Tokenizer
from toolkit.utils import ToolkitError


def make_cut(tmp: Path, name: str, seconds: float, text: str = "a b", lang: str = "en", sr: int = 16000,
             offset: float = 0.0, scale: float = 1.0, seed: int = 0):
    """A wav file of offset + scale * noise and its one-supervision cut."""
    rng = np.random.default_rng(seed)
    data = (offset + scale * rng.standard_normal(int(seconds * sr))).clip(-1, 1).astype(np.float32)
    path = tmp / f"{name}.wav"
    sf.write(path, data, sr, subtype="FLOAT")
    rec = Recording.from_file(path, recording_id=name)
    cut = rec.to_cut()
    cut.id = name
    cut.supervisions = [SupervisionSegment(id=name, recording_id=name, start=0.0, duration=rec.duration,
                                           text=text, language=lang)]
    return cut


@pytest.fixture()
def cuts(tmp_path: Path) -> CutSet:
    return CutSet.from_cuts([
        make_cut(tmp_path, "u0", 0.50, "hello world", "en", offset=0.1, scale=0.2, seed=0),
        make_cut(tmp_path, "u1", 0.80, "bonjour", "fr", offset=-0.2, scale=0.05, seed=1),
        make_cut(tmp_path, "u2", 0.30, "привет", "ru", offset=0.0, scale=0.3, seed=2),
    ])


def read(cut) -> np.ndarray:
    return sf.read(cut.recording.sources[0].source, dtype="float32")[0]


def test_padding_lengths_and_mask(cuts: CutSet) -> None:
    batch = AudioDataset()[cuts]
    sizes = [len(read(c)) for c in cuts]
    assert batch["audio"].dtype == torch.float32 and batch["audio"].shape == (3, max(sizes))
    assert batch["lengths"].tolist() == sizes
    for i, c in enumerate(cuts):
        np.testing.assert_allclose(batch["audio"][i, : sizes[i]].numpy(), read(c), atol=1e-6)
        assert torch.all(batch["audio"][i, sizes[i]:] == 0)
        assert batch["padding_mask"][i].tolist() == [j >= sizes[i] for j in range(max(sizes))]
    assert batch["cut_ids"] == ["u0", "u1", "u2"] and batch["languages"] == ["en", "fr", "ru"]
    assert batch["texts"] == ["hello world", "bonjour", "привет"] and batch["num_dropped"] == 0
    assert "targets" not in batch


def test_normalize_uses_valid_samples_only(cuts: CutSet) -> None:
    batch = AudioDataset(normalize=True)[cuts]
    for i, c in enumerate(cuts):
        raw = read(c).astype(np.float64)
        n = len(raw)
        valid = batch["audio"][i, :n].double().numpy()
        np.testing.assert_allclose(valid, (raw - raw.mean()) / np.sqrt(raw.var() + 1e-5), atol=1e-4)
        # unit variance up to layer_norm's eps=1e-5 (fairseq semantics), visible for quiet audio
        assert abs(valid.mean()) < 1e-4 and abs(valid.var() - raw.var() / (raw.var() + 1e-5)) < 1e-4
        assert abs(valid.var() - 1) < 1e-2
        assert torch.all(batch["audio"][i, n:] == 0)


def _is_slice_of(part: np.ndarray, whole: np.ndarray) -> int:
    """Start index of `part` inside `whole` (exact), or -1."""
    for s in range(len(whole) - len(part) + 1):
        if np.array_equal(whole[s: s + len(part)], part):
            return s
    return -1


def test_crop_to_shortest_random_contiguous_crops(cuts: CutSet) -> None:
    shortest = min(len(read(c)) for c in cuts)
    starts = []
    for seed in (0, 1):
        batch = AudioDataset(crop_to_shortest=True, seed=seed)[cuts]
        assert batch["audio"].shape == (3, shortest) and not batch["padding_mask"].any()
        assert batch["lengths"].tolist() == [shortest] * 3
        starts.append([_is_slice_of(batch["audio"][i].numpy(), read(c)) for i, c in enumerate(cuts)])
        assert all(s >= 0 for s in starts[-1])
    assert starts[0] != starts[1]  # the crop offset is random ...
    again = AudioDataset(crop_to_shortest=True, seed=0)[cuts]
    assert [_is_slice_of(again["audio"][i].numpy(), read(c)) for i, c in enumerate(cuts)] == starts[0]  # ... and seeded
    capped = AudioDataset(crop_to_shortest=True, max_sample_size=1000)[cuts]
    assert capped["audio"].shape == (3, 1000)


def test_crop_then_normalise_order_matches_fairseq(cuts: CutSet) -> None:
    # fairseq normalises the whole utterance, then crops: a crop is a slice of the normalised signal
    batch = AudioDataset(crop_to_shortest=True, normalize=True)[cuts]
    full = AudioDataset(normalize=True)[cuts]
    for i in range(3):
        n = int(full["lengths"][i])
        assert _is_slice_of(batch["audio"][i].numpy(), full["audio"][i, :n].numpy()) >= 0


def test_pad_mode_max_sample_size_crops_without_targets(cuts: CutSet) -> None:
    batch = AudioDataset(max_sample_size=6000)[cuts]
    sizes = [min(len(read(c)), 6000) for c in cuts]
    assert batch["lengths"].tolist() == sizes and batch["audio"].shape == (3, 6000)
    with pytest.raises(ToolkitError, match="filter long cuts"):
        AudioDataset(tokenizer=Tokenizer.build_char(["a"]), max_sample_size=6000)


def test_speed_perturbation_lengths_and_determinism(cuts: CutSet) -> None:
    ds = AudioDataset(speed_perturb=True, seed=3)
    batch = ds[cuts]
    for i, c in enumerate(cuts):
        options = {c.perturb_speed(f).num_samples for f in (0.9, 1.1)} | {c.num_samples}
        assert int(batch["lengths"][i]) in options
    assert batch["cut_ids"] == ["u0", "u1", "u2"]
    assert torch.equal(ds[cuts]["audio"], batch["audio"])
    factors_seen = set()
    for seed in range(12):
        b = AudioDataset(speed_perturb=True, seed=seed)[cuts]
        factors_seen.add(int(b["lengths"][0]))
    assert len(factors_seen) == 3  # all three factors occur
    wide = (0.8, 0.9, 1.0, 1.1, 1.2)
    seen = {int(AudioDataset(speed_perturb=True, seed=seed, speed_factors=wide)[cuts]["lengths"][0]) for seed in range(40)}
    assert seen == {cuts[0].perturb_speed(f).num_samples if f != 1.0 else cuts[0].num_samples for f in wide}
    with pytest.raises(ToolkitError, match="speeds between 0.5 and 2.0"):
        AudioDataset(speed_perturb=True, speed_factors=(0.9, 3.0))


def test_channel_augmentation_is_deterministic_level_keeping_and_in_band(tmp_path: Path, cuts: CutSet) -> None:
    # p = 0 draws nothing: the batch is the one without the option, speed perturbation included
    plain = AudioDataset(speed_perturb=True, seed=5)[cuts]
    assert torch.equal(AudioDataset(speed_perturb=True, seed=5, channel_augment=0.0)[cuts]["audio"], plain["audio"])
    ds = AudioDataset(speed_perturb=True, seed=5, channel_augment=1.0)
    batch = ds[cuts]
    assert batch["lengths"].tolist() == plain["lengths"].tolist()  # same speed factors, same lengths
    assert torch.equal(ds[cuts]["audio"], batch["audio"])  # a resumed run sees the same batch
    for i, n in enumerate(batch["lengths"].tolist()):
        a, b = plain["audio"][i, :n].double(), batch["audio"][i, :n].double()
        assert not torch.allclose(a, b, atol=1e-3)
        assert abs(float(b.pow(2).mean().sqrt() / a.pow(2).mean().sqrt()) - 1) < 1e-4  # the level is kept
    # 8 kHz speech resampled to 16 kHz has nothing above 4 kHz; the added channel noise stays below it too
    sr8 = CutSet.from_cuts([make_cut(tmp_path, f"n{i}", 1.0, sr=8000, scale=0.1, seed=10 + i) for i in range(6)])
    aug = AudioDataset(channel_augment=1.0, seed=1)[sr8]["audio"].double()
    ref = AudioDataset(seed=1)[sr8]["audio"].double()
    high = lambda x: float((torch.fft.rfft(x).abs() ** 2)[:, 4300:].sum() / (torch.fft.rfft(x).abs() ** 2).sum())  # noqa: E731
    assert high(ref) < 0.01 and high(aug) < 0.01
    with pytest.raises(ToolkitError, match="probability"):
        AudioDataset(channel_augment=1.5)


def test_targets_padded_with_minus_one_and_oov_counted(cuts: CutSet) -> None:
    tok = Tokenizer.build_char(["hello world", "bonjour"])  # no Cyrillic: 'привет' is OOV
    batch = AudioDataset(tokenizer=tok)[cuts]
    expected = [tok.encode(t) for t in ("hello world", "bonjour", "привет")]
    assert batch["target_lengths"].tolist() == [len(e) for e in expected]
    for i, e in enumerate(expected):
        assert batch["targets"][i, : len(e)].tolist() == e
        assert torch.all(batch["targets"][i, len(e):] == -1)
    assert batch["num_oov"] == 6 and batch["targets"].dtype == torch.long


def test_bad_audio_dropped_with_warning_naming_file(tmp_path: Path, cuts: CutSet, caplog) -> None:
    broken = make_cut(tmp_path, "bad", 0.5)
    Path(broken.recording.sources[0].source).write_bytes(b"not audio at all")
    mixed = CutSet.from_cuts(list(cuts) + [broken])
    with caplog.at_level(logging.WARNING):
        batch = AudioDataset()[mixed]
    assert batch["num_dropped"] == 1 and batch["cut_ids"] == ["u0", "u1", "u2"]
    assert "bad" in caplog.text and "bad.wav" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        empty = AudioDataset(tokenizer=Tokenizer.build_char(["a b"]))[CutSet.from_cuts([broken])]
    assert "every cut of a batch was dropped (first: bad" in caplog.text
    assert empty["audio"].shape[0] == 0 and empty["targets"].shape[0] == 0 and empty["num_dropped"] == 1
    with pytest.raises(ToolkitError, match=r"cut bad \(.*bad\.wav\): audio fails to load"):
        AudioDataset(drop_unfit=False)[mixed]  # decoding: never skip an utterance silently


def test_too_short_and_ctc_unfit_cuts_are_dropped(tmp_path: Path, caplog) -> None:
    tiny = make_cut(tmp_path, "tiny", 0.02)  # 320 samples: no frame
    wordy = make_cut(tmp_path, "wordy", 0.1, text="a " * 20)  # 40 labels, 4 frames
    ok = make_cut(tmp_path, "ok", 0.5, text="a b")
    tok = Tokenizer.build_char(["a b"])
    with caplog.at_level(logging.WARNING):
        batch = AudioDataset(tokenizer=tok)[CutSet.from_cuts([tiny, wordy, ok])]
    assert batch["cut_ids"] == ["ok"] and batch["num_dropped"] == 2
    assert "need" in caplog.text and "shorter than one model frame" in caplog.text
    with pytest.raises(ToolkitError, match="tiny"):
        AudioDataset(drop_unfit=False)[CutSet.from_cuts([tiny, ok])]


def test_resampled_to_16k(tmp_path: Path) -> None:
    cut = make_cut(tmp_path, "narrow", 0.5, sr=8000)
    batch = AudioDataset()[CutSet.from_cuts([cut])]
    assert int(batch["lengths"][0]) == 8000


def test_batches_are_float32_under_cpu_bf16_autocast(tmp_path: Path) -> None:
    """Validation runs under autocast with train.amp=bf16; with num_workers 0 the batch is made there
    too. 8 kHz audio is resampled, speed-perturbed and filtered in fp32 all the same (this once
    dropped every dev cut with 'unsupported ScalarType BFloat16')."""
    cuts = CutSet.from_cuts([make_cut(tmp_path, f"n{i}", 0.7, sr=8000, scale=0.1, seed=i) for i in range(3)])
    ds = AudioDataset(speed_perturb=True, channel_augment=1.0, normalize=True, seed=4, drop_unfit=False)
    ref = ds[cuts]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ds[cuts]
    assert got["audio"].dtype == torch.float32 and got["cut_ids"] == ["n0", "n1", "n2"]
    assert torch.equal(got["audio"], ref["audio"])


def test_frame_formula_matches_torchaudio_and_ctc_need() -> None:
    from torchaudio.models.wav2vec2.components import _get_feature_extractor

    conv = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    fe = _get_feature_extractor("group_norm", conv, bias=False)
    for n in (400, 401, 719, 720, 16000, 23456):
        _, out_len = fe(torch.zeros(1, n), torch.tensor([n]))
        assert num_frames(n) == int(out_len[0])
    assert num_frames(399) == 0
    assert ctc_min_frames(torch.tensor([[1, 1, 2, 2, 2, 3]]), torch.tensor([6])).tolist() == [6 + 3]
