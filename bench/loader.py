"""Benchmark: can the training loader feed the model? Audio-seconds per second, loader vs model.

Loader: `make_loader` + `AudioDataset` exactly as pretraining uses them (FLAC decoding, speed
perturbation, per-utterance normalisation, crop to the shortest utterance), `--workers`
DataLoader workers, over a small espeak-ng corpus (16 kHz FLAC, like LibriSpeech) written to a
temporary folder. Model (the peer, on the same batches): one pretraining step of
`Wav2Vec2ForPretraining(get_preset(--preset))` (forward, backward, Adam step) on `--device`.

Both rates count the audio the model actually receives (after cropping). A ratio above 1 means
the loader is faster than the model consumes. Usage:

    .venv/bin/python bench/loader.py [--utts 80] [--workers 2] [--max-duration 30] [--preset tiny]
                                      [--device cpu|cuda] [--threads 1] [--epochs 2] [--loader-epochs 10]
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.data.dataset import AudioDataset  # noqa: E402
from toolkit.data.loader import make_loader  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ten", "sar", "vu", "ri", "ne", "do", "pa", "shi", "gor", "el", "tum", "bra", "fi"]


def synth_corpus(out: Path, n_utts: int, seed: int = 0):
    """`n_utts` espeak-ng utterances of 4-12 random words, 16 kHz mono FLAC, as a CutSet."""
    from lhotse import CutSet, Recording, SupervisionSegment

    rng = random.Random(seed)
    cuts = []
    for i in range(n_utts):
        words = [''.join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(rng.randint(4, 12))]
        text = " ".join(words)
        wav, flac = out / f"u{i:04d}.wav", out / f"u{i:04d}.flac"
        subprocess.run(["espeak-ng", "-v", "en", "-s", str(rng.randint(130, 190)), "-w", str(wav), text],
                       check=True, capture_output=True)
        subprocess.run(["sox", str(wav), "-r", "16000", "-c", "1", "-b", "16", str(flac)], check=True,
                       capture_output=True)
        wav.unlink()
        rec = Recording.from_file(flac, recording_id=f"u{i:04d}")
        cut = rec.to_cut()
        cut.id = rec.id
        cut.supervisions = [SupervisionSegment(id=rec.id, recording_id=rec.id, start=0, duration=rec.duration,
                                               text=text, language="en")]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def time_loader(loader, epochs: int) -> tuple[float, float, list[dict]]:
    """(audio seconds delivered, wall seconds) over `epochs` passes after one warm-up pass,
    and the warm-up pass's batches (the model's input)."""
    batches = [b for b in loader]  # warm-up: workers start, files enter the page cache
    start, audio = time.perf_counter(), 0.0
    for _ in range(epochs):
        for batch in loader:
            audio += float(batch["lengths"].sum()) / 16000
    return audio, time.perf_counter() - start, batches


def time_model(batches: list[dict], preset: str, device: str, epochs: int) -> tuple[float, float]:
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForPretraining

    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(get_preset(preset)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        out = model(batch["audio"].to(device), batch["lengths"].to(device))
        opt.zero_grad(set_to_none=True)
        (out.loss / max(out.sample_size, 1)).backward()
        opt.step()

    step(batches[0])  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
    start, audio = time.perf_counter(), 0.0
    for _ in range(epochs):
        for batch in batches:
            step(batch)
            audio += float(batch["lengths"].sum()) / 16000
    if device == "cuda":
        torch.cuda.synchronize()
    return audio, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utts", type=int, default=80)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-duration", type=float, default=30.0, help="seconds of audio per batch")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model (CPU)")
    p.add_argument("--epochs", type=int, default=2, help="passes of the model over the batches")
    p.add_argument("--loader-epochs", type=int, default=10, help="timed passes of the loader")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cuts = synth_corpus(Path(tmp), args.utts)
        total = sum(c.duration for c in cuts)
        print(f"corpus: {len(cuts)} utterances, {total / 60:.1f} min of audio (espeak-ng, 16 kHz FLAC), "
              f"made in {time.perf_counter() - t0:.1f} s")
        dataset = AudioDataset(normalize=True, crop_to_shortest=True, max_sample_size=250_000, speed_perturb=True)
        loader, _ = make_loader(cuts, dataset, max_duration=args.max_duration, num_workers=args.workers,
                                persistent_workers=args.workers > 0, seed=0)
        l_audio, l_wall, batches = time_loader(loader, args.loader_epochs)
        print(f"loader: {l_audio:.1f} audio-s in {l_wall:.2f} s with {args.workers} workers, "
              f"{len(batches)} batches/epoch")
        m_audio, m_wall = time_model(batches, args.preset, args.device, args.epochs)
        print(f"model ({args.preset}, {args.device}, {args.threads} thread(s)): {m_audio:.1f} audio-s "
              f"in {m_wall:.2f} s (forward + backward + Adam)")
    x, y = l_audio / l_wall, m_audio / m_wall
    print(f"RESULT loader_audio_sec_per_sec={x:.1f}")
    print(f"RESULT model_audio_sec_per_sec={y:.1f}")
    print(f"RESULT loader_to_model_ratio={x / y:.2f}")


if __name__ == "__main__":
    main()
