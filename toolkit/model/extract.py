"""`toolkit extract-features --checkpoint CKPT [--layer L] IN.wav OUT.npy`: one file's representations.

Layer numbering follows the model's `hidden_states` (docs/ARCHITECTURE.md): 0 is the Transformer
input (projected CNN features plus the convolutional position embedding), L is the output of
layer L as torchaudio's `extract_features` returns it. Without `--layer` the encoder's final
output is written: after the final layer norm in pre-LN (LARGE/XLSR) models, like Hugging Face's
`last_hidden_state` and torchaudio's `forward`; for post-LN (BASE) models this equals the last
layer's output. The result is float32, frames x dim.

Audio is read with soundfile (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1, ...), with ffmpeg as a
fallback for other formats; channels are averaged and other sample rates resampled to 16 kHz
with torchaudio's sinc resampler. Waveforms are normalised (zero mean, unit variance over the
file, fairseq's `normalize`) when the model was trained that way.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from toolkit.model.config import SAMPLE_RATE
from toolkit.model.wav2vec2 import normalize_waveform
from toolkit.utils import ToolkitError, atomic_path, refuse_output_over_inputs, resolve_device

log = logging.getLogger(__name__)



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="toolkit checkpoint (pretraining or CTC)")
    parser.add_argument("--layer", type=int, default=None,
                        help="Transformer layer (1-based; 0 = Transformer input); default: final output")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("audio", help="input audio file (any format soundfile/ffmpeg reads)")
    parser.add_argument("out", help="output .npy (float32, frames x dim)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    from toolkit.model.checkpoint import build_model, config_of, load_checkpoint

    refuse_output_over_inputs(args.out, {"the audio": args.audio, "--checkpoint": args.checkpoint})
    _refuse_replacing_other_files(Path(args.out))
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = config_of(ckpt)
    n_layers = cfg.encoder_layers
    if args.layer is not None and not 0 <= args.layer <= n_layers:
        raise ToolkitError(f"--layer {args.layer}: the model has {n_layers} layers; use 0..{n_layers}")
    wav = load_audio(args.audio, min_samples=cfg.receptive_field)
    encoder = build_model(ckpt).wav2vec2.to(device).eval()
    del ckpt
    feats = extract(encoder, wav, layer=args.layer, normalize=cfg.normalize, device=device)
    write_npy(args.out, feats)
    which = "final output" if args.layer is None else f"layer {args.layer}"
    print(f"{args.audio}: {feats.shape[0]} frames x {feats.shape[1]} ({which}) -> {args.out}")
    return 0


@torch.inference_mode()
def extract(encoder: torch.nn.Module, wav: torch.Tensor, layer: int | None, normalize: bool,
            device: torch.device) -> np.ndarray:
    """Frames x dim float32 output of `layer` (None: final output) for one mono 16 kHz waveform."""
    x = wav.to(device=device, dtype=torch.float32)[None]
    if normalize:
        x = normalize_waveform(x)
    out = encoder(x, output_hidden_states=layer is not None)
    h = out.x if layer is None else out.hidden_states[layer]
    return h[0].float().cpu().numpy()


def load_audio(path: str | Path, min_samples: int = 400) -> torch.Tensor:
    """Mono float32 16 kHz waveform of `path` (1-D tensor); one-line ToolkitError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: audio file not found")
    data, rate = _read_soundfile(path)
    if data is None:
        data, rate = _read_ffmpeg(path)
    wav = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    wav = wav.mean(dim=1) if wav.dim() == 2 else wav  # downmix channels
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        wav = AF.resample(wav, rate, SAMPLE_RATE)
    if wav.numel() < min_samples:
        raise ToolkitError(
            f"{path}: audio too short ({wav.numel()} samples at 16 kHz; the model needs at least "
            f"{min_samples} = one {1000 * min_samples // SAMPLE_RATE} ms frame)")
    if not torch.isfinite(wav).all():
        raise ToolkitError(f"{path}: audio contains NaN/Inf samples; the file is corrupt")
    return wav


def _read_soundfile(path: Path) -> tuple[np.ndarray | None, int]:
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        log.debug("soundfile cannot read %s (%s); trying ffmpeg", path, e)
        return None, 0
    return data, int(rate)


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode with ffmpeg to 16 kHz float32, every channel (formats libsndfile does not know)."""
    import tempfile

    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="toolkit-audio-") as tmp:
        wav = Path(tmp) / "audio.wav"
        ffmpeg_to_wav(path, wav, str(path))
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    return data, int(rate)


def ffmpeg_to_wav(path: Path, wav: Path, source: str) -> None:
    """`path` decoded by ffmpeg into the float WAV `wav` at 16 kHz with every channel kept (the
    caller averages them, or takes one: ffmpeg's `-ac 1` mixes with its own weights); one-line
    ToolkitError naming `source` when ffmpeg is missing or cannot decode the file."""
    from toolkit import external

    if not external.available("ffmpeg"):
        raise ToolkitError(f"{source}: cannot decode the audio (not a format soundfile reads, and ffmpeg "
                           f"is not installed: {external.install_hint('ffmpeg')}); or convert it to WAV/FLAC")
    proc = external.run("ffmpeg", ["-nostdin", "-v", "error", "-i", str(path), "-vn", "-ar", str(SAMPLE_RATE),
                                   "-c:a", "pcm_f32le", "-f", "wav", str(wav)],
                        "to decode this audio format", capture_output=True, check=False)
    if proc.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ToolkitError(f"{source}: cannot decode the audio (corrupt or unsupported file: "
                           f"{reason[-1][:120] if reason else 'no audio stream'})")


def _refuse_replacing_other_files(out: Path) -> None:
    """An existing OUT is replaced only when it is a NumPy file (an earlier extraction): a
    recording, a model or a transcript given as OUT by mistake is never overwritten."""
    if out.is_file():
        with open(out, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ToolkitError(f"{out}: exists and is not a .npy file; extract-features replaces only "
                                   "its own output: remove it or choose another OUT")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save through a temporary file renamed on success (any output name, no .npy appended)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))
