"""`AudioDataset`: raw-waveform batches for wav2vec 2.0 pretraining and CTC fine-tuning.

Lhotse-sampler style: the sampler yields a `CutSet` per batch and `dataset[cuts]` turns it
into tensors, so it is used with `DataLoader(dataset, sampler=..., batch_size=None)`
(see `toolkit.data.loader.make_loader`).

Batch contract (ARCHITECTURE.md, "Data"), B cuts, S samples at 16 kHz:
- `audio` (B, S) float32, zero after each utterance's end; `lengths` (B,) long;
  `padding_mask` (B, S) bool, True = padding.
- with a tokenizer: `targets` (B, L) long padded with -1, `target_lengths` (B,) long,
  `num_oov` (int, `<unk>` tokens in this batch's targets).
- `texts`, `cut_ids` (the manifest ids, also under speed perturbation), `languages`.
- `num_dropped` (int): cuts dropped from this batch, each with a warning naming the cut and
  its file: audio that fails to load or is shorter than one model frame (400 samples), and,
  with a tokenizer, utterances whose frame count cannot fit their labels under CTC
  (labels + repeated neighbours; docs/DESIGN.md, "Traps": such cuts drive CTC to blank-only output).
  A batch whose every cut was dropped comes back empty (B = 0) rather than stopping a long
  run. With `drop_unfit=False` (decoding: every utterance must be scored) the first such cut
  raises ToolkitError naming the cut and its file instead.

Semantics follow fairseq's RawAudioDataset:
- `normalize=True` (LARGE / XLSR checkpoints): each utterance is normalised to zero mean and
  unit variance over its own samples (`toolkit.model.wav2vec2.normalize_waveform`), before cropping or
  padding, so padding stays exactly 0 and never enters the statistics.
- `crop_to_shortest=True` (pretraining): every utterance is randomly cropped to
  min(shortest in the batch, max_sample_size); the batch then has no padding.
  Otherwise utterances are padded to the longest; `max_sample_size` then crops longer
  utterances (fairseq's pad mode), which is refused with targets (it would cut transcripts).
- `speed_perturb=True`: each cut is resampled by a factor drawn from `speed_factors` (0.9 / 1.0 / 1.1,
  Kaldi's three).
- `channel_augment=p`: with probability p per cut, a random recording channel (`random_channel`):
  two peaking equalisers (centre 150-3500 Hz, gain -12..+12 dB, Q 0.5-2) and additive noise at
  10-40 dB SNR, band-limited to the recording's own bandwidth (8 kHz audio gets noise below 4 kHz
  only), the level kept. For few speakers recorded on few microphones, where a raw-waveform model
  otherwise learns each speaker's channel (bench/RESULTS.md, FSDD).

Randomness (perturbation factors, crop offsets) is drawn from a generator seeded by
`seed` and the batch's cut ids, so a batch is the same whatever the number of workers,
and a resumed run reproduces it; different epochs batch cuts differently and so differ.
"""
from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import numpy as np
import torch

from toolkit.model.config import SAMPLE_RATE, num_frames, receptive_field
from toolkit.model.wav2vec2 import ctc_min_frames, normalize_waveform
from toolkit.utils import ToolkitError

log = logging.getLogger(__name__)

SPEED_FACTORS = (0.9, 1.0, 1.1)
EQ_CENTRE_HZ = (150.0, 3500.0)   # log-uniform
EQ_GAIN_DB = (-12.0, 12.0)
EQ_Q = (0.5, 2.0)
NOISE_SNR_DB = (10.0, 40.0)
MIN_SAMPLES = receptive_field()  # one frame of the wav2vec 2.0 feature encoder (400 samples)


def random_channel(wav: torch.Tensor, rng: random.Random, source_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """`wav` (S,) 16 kHz through a random channel drawn from `rng`: two peaking equalisers, then
    white noise at a random SNR, resampled from `source_rate` so that it stays inside the band the
    recording had; the output has the input's RMS level."""
    import torchaudio.functional as AF

    if wav.numel() == 0:
        return wav
    rms = wav.pow(2).mean().sqrt()
    y = wav
    for _ in range(2):
        centre = float(np.exp(rng.uniform(np.log(EQ_CENTRE_HZ[0]), np.log(EQ_CENTRE_HZ[1]))))
        y = AF.equalizer_biquad(y, SAMPLE_RATE, centre, rng.uniform(*EQ_GAIN_DB), rng.uniform(*EQ_Q))
    out_rms = y.pow(2).mean().sqrt()
    if out_rms > 0:
        y = y * (rms / out_rms)
    gen = torch.Generator().manual_seed(rng.getrandbits(62))
    rate = min(int(source_rate), SAMPLE_RATE)
    noise = torch.randn(int(np.ceil(wav.numel() * rate / SAMPLE_RATE)) + 1, generator=gen)
    if rate != SAMPLE_RATE:
        noise = AF.resample(noise, rate, SAMPLE_RATE)
    noise = noise[: wav.numel()]
    if noise.numel() < wav.numel():
        noise = torch.nn.functional.pad(noise, (0, wav.numel() - noise.numel()))
    snr = rng.uniform(*NOISE_SNR_DB)
    noise_rms = noise.pow(2).mean().sqrt().clamp_min(1e-12)
    y = y + noise * (rms / noise_rms) * 10 ** (-snr / 20)
    return y * (rms / y.pow(2).mean().sqrt().clamp_min(1e-12))


def audio_source(cut: Any) -> str:
    """The file (or URL / command) a cut's audio comes from, for error messages."""
    rec = getattr(cut, "recording", None)
    if rec is None or not rec.sources:
        return "<no recording>"
    return str(rec.sources[0].source)


class AudioDataset(torch.utils.data.Dataset):
    """Turns a `CutSet` (one batch from a lhotse sampler) into a padded waveform batch.

    Args:
        tokenizer: a `toolkit.text.Tokenizer`; when given, the batch carries CTC targets.
        normalize: per-utterance zero-mean unit-variance waveform (cfg.normalize).
        crop_to_shortest: pretraining crop (see module docstring).
        max_sample_size: longest utterance in samples after cropping; None = no limit.
        speed_perturb: a random speed per cut from `speed_factors` (training only).
        channel_augment: probability of a random channel per cut (training only; `random_channel`).
        seed: base of the per-batch random generator.
        drop_unfit: drop (with a warning) cuts whose audio fails to load, is shorter than a
            frame, or cannot fit its labels under CTC; False raises ToolkitError on them.
        conv_layers: the model's `conv_feature_layers` (frame geometry of the feature encoder,
            a log-mel front-end's window and hop included); None: the standard CNN's.
    """

    def __init__(self, tokenizer: Any = None, normalize: bool = False, crop_to_shortest: bool = False,
                 max_sample_size: int | None = None, speed_perturb: bool = False, seed: int = 0,
                 drop_unfit: bool = True, channel_augment: float = 0.0,
                 speed_factors: tuple[float, ...] = SPEED_FACTORS, conv_layers: Any = None) -> None:
        super().__init__()
        self.conv_layers = conv_layers
        self.min_samples = receptive_field(conv_layers)  # MIN_SAMPLES for the standard CNN
        if max_sample_size is not None and max_sample_size < self.min_samples:
            raise ToolkitError(f"max_sample_size={max_sample_size} is below one model frame ({self.min_samples} samples)")
        if tokenizer is not None and max_sample_size is not None and not crop_to_shortest:
            raise ToolkitError("max_sample_size with transcripts would crop audio but not its text; "
                               "filter long cuts (e.g. cuts.filter(lambda c: c.duration <= X)) instead")
        if tokenizer is not None and crop_to_shortest:
            raise ToolkitError("crop_to_shortest is for pretraining; it would cut audio away from its transcript")
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.crop_to_shortest = crop_to_shortest
        self.max_sample_size = max_sample_size
        if not 0.0 <= channel_augment <= 1.0:
            raise ToolkitError(f"channel_augment={channel_augment}: a probability between 0 and 1 is expected")
        self.speed_perturb = speed_perturb
        if not speed_factors or any(not 0.5 <= f <= 2.0 for f in speed_factors):
            raise ToolkitError(f"speed_factors={speed_factors}: speeds between 0.5 and 2.0 are expected")
        self.speed_factors = tuple(float(f) for f in speed_factors)
        self.channel_augment = float(channel_augment)
        self.seed = seed
        self.drop_unfit = drop_unfit

    # ------------------------------------------------------------------ helpers
    def _rng(self, cut_ids: list[str], stream: str = "") -> random.Random:
        key = f"{self.seed}{stream}\n" + "\n".join(cut_ids)
        return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))

    def _load(self, cut: Any, factor: float, channel: random.Random | None = None) -> torch.Tensor:
        """Mono float32 16 kHz waveform of one cut, speed-perturbed by `factor`."""
        source_rate = cut.sampling_rate
        if cut.sampling_rate != SAMPLE_RATE:
            cut = cut.resample(SAMPLE_RATE)
        if factor != 1.0:
            cut = cut.perturb_speed(factor)
        audio = cut.load_audio()
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:  # (channels, samples): downmix
            audio = audio.mean(axis=0)
        wav = torch.from_numpy(np.ascontiguousarray(audio))
        if not torch.isfinite(wav).all():
            raise ValueError("audio contains NaN or infinite samples")
        if channel is not None:
            wav = random_channel(wav, channel, source_rate)
        return wav

    def _drop(self, cut: Any, why: str) -> None:
        if not self.drop_unfit:
            raise ToolkitError(f"cut {cut.id} ({audio_source(cut)}): {why}; fix the file or remove the cut from the manifest")
        log.warning("dropping cut %s (%s): %s", cut.id, audio_source(cut), why)

    # ------------------------------------------------------------------ the batch
    def __getitem__(self, cuts: Any) -> dict[str, Any]:
        # With num_workers 0 the batch is made in the training process, where validation runs under
        # CPU autocast for train.amp=bf16: resampling, speed perturbation and the channel filters would
        # then compute in bf16 and fail (or lose precision). Audio is always prepared in fp32.
        with torch.autocast("cpu", enabled=False):
            return self._batch(cuts)

    def _batch(self, cuts: Any) -> dict[str, Any]:
        cut_list = list(cuts)
        if not cut_list:
            raise ToolkitError("the sampler produced an empty batch; check max_duration and the cut durations")
        rng = self._rng([c.id for c in cut_list])
        # channels from a stream of their own: speed factors and crops are the same with or without them
        channels = self._rng([c.id for c in cut_list], "channel") if self.channel_augment > 0 else None
        kept: list[tuple[Any, torch.Tensor, list[int] | None]] = []
        for cut in cut_list:
            factor = rng.choice(self.speed_factors) if self.speed_perturb else 1.0
            channel = (random.Random(channels.getrandbits(62))
                       if channels is not None and channels.random() < self.channel_augment else None)
            try:
                wav = self._load(cut, factor, channel)
            except Exception as e:  # noqa: BLE001 - any backend error means this file is unusable
                self._drop(cut, f"audio fails to load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
                continue
            if wav.numel() < self.min_samples:
                self._drop(cut, f"{wav.numel()} samples is shorter than one model frame ({self.min_samples})")
                continue
            ids = None
            if self.tokenizer is not None:
                ids = self.tokenizer.encode(_text(cut))
                need = int(ctc_min_frames(torch.tensor([ids]), torch.tensor([len(ids)]))[0]) if ids else 0
                have = num_frames(wav.numel(), self.conv_layers)
                if need > have:
                    self._drop(cut, f"{len(ids)} labels need {need} CTC frames but the audio gives {have}")
                    continue
            if self.normalize:
                wav = normalize_waveform(wav)
            kept.append((cut, wav, ids))
        if not kept:
            log.error("every cut of a batch was dropped (first: %s, %s); check the audio files and transcripts",
                      cut_list[0].id, audio_source(cut_list[0]))
        batch = self._collate([w for _, w, _ in kept], rng)
        batch["texts"] = [_text(c) for c, _, _ in kept]
        batch["cut_ids"] = [c.id for c, _, _ in kept]
        batch["languages"] = [_language(c) for c, _, _ in kept]
        batch["num_dropped"] = len(cut_list) - len(kept)
        if self.tokenizer is not None:
            batch.update(_pad_targets([ids for _, _, ids in kept]))
            batch["num_oov"] = sum(ids.count(self.tokenizer.unk_id) for _, _, ids in kept)
        return batch

    def _collate(self, wavs: list[torch.Tensor], rng: random.Random) -> dict[str, torch.Tensor]:
        sizes = [w.numel() for w in wavs] or [0]
        limit = self.max_sample_size or max(sizes)
        target = min(min(sizes) if self.crop_to_shortest else max(sizes), limit)
        audio = torch.zeros(len(wavs), target, dtype=torch.float32)
        lengths = torch.zeros(len(wavs), dtype=torch.long)
        for i, wav in enumerate(wavs):
            if wav.numel() > target:  # random crop, as fairseq's crop_to_max_size
                start = rng.randint(0, wav.numel() - target)
                wav = wav[start:start + target]
            audio[i, : wav.numel()] = wav
            lengths[i] = wav.numel()
        padding_mask = torch.arange(target)[None, :] >= lengths[:, None]
        return {"audio": audio, "lengths": lengths, "padding_mask": padding_mask}


def _text(cut: Any) -> str:
    return " ".join((s.text or "") for s in cut.supervisions).strip()


def _language(cut: Any) -> str | None:
    return next((s.language for s in cut.supervisions if s.language), None)


def _pad_targets(seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    targets = torch.full((len(seqs), max([1, *map(len, seqs)])), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        targets[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return {"targets": targets, "target_lengths": lengths}
