"""Frame log-probs of a recording of any length: overlapping windows, the overlap resolved per frame.

`chunked_log_probs(model, waveform)` -> (T, V) and its streaming form `iter_chunk_log_probs(model,
read, num_samples)` (yields consecutive blocks of frames, reading the audio window by window, so
memory does not grow with the recording) are independent of any command: `toolkit transcribe`
uses them for long files, and any caller with a waveform too long for one forward can.

The windows (the frame arithmetic; stride s = 320 samples and receptive field r = 400
for every preset): a window of F frames spans (F - 1) s + r samples and starts on a multiple of s,
so its j-th frame *is* global frame start + j: the same samples, the same convolution alignment.
Consecutive windows overlap by 2C frames (C = `context_s`); each window contributes the F - 2C
frames in its middle, the first window also its left C, the last window everything up to the end
(it is moved back so that it is a full window when the recording allows). Every frame therefore
comes from exactly one window, with at least C frames (`context_s` seconds) of audio on both
sides inside that window except at the recording's ends, and T equals what one forward over the
whole recording gives. A recording that fits in one window is one forward over all of it, exactly
the unchunked result. What chunking changes is only the context the Transformer (and, for
group-norm feature encoders and `normalize` models, the per-window statistics) sees;
bench/transcribe.py measures its WER cost.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from toolkit.model.config import SAMPLE_RATE
from toolkit.model.wav2vec2 import normalize_waveform
from toolkit.utils import ToolkitError



@dataclass
class ChunkOptions:
    """`chunk_s`: window length; `context_s`: frames dropped at each inner window edge (the overlap of two
    windows is twice that); `batch_windows`: full windows per forward (more on a GPU).

    The defaults, 20 s windows with 1 s of context on each side (1.11x the recording through the
    model), are measured (bench/transcribe.py, bench/RESULTS.md): against 30 s windows with 2 s they
    cost 20% less CPU (self-attention grows with the square of the window; fine-tuning sees at most
    20 s utterances anyway) and the same WER, within 0.1 point of one forward over the whole recording.
    """

    chunk_s: float = 20.0
    context_s: float = 1.0
    batch_windows: int = 1

    def check(self) -> None:
        if self.chunk_s <= 0 or self.context_s < 0 or self.batch_windows < 1:
            raise ToolkitError("--chunk-s must be positive, --context-s not negative and --batch-windows >= 1")
        if 2 * self.context_s >= self.chunk_s:
            raise ToolkitError(f"--context-s {self.context_s} must be less than half of --chunk-s {self.chunk_s} "
                               "(each window keeps the frames between its two contexts)")


@dataclass(frozen=True)
class Window:
    """Window over global frames [start, start + frames) (samples from start * stride); keeps [keep_lo, keep_hi)."""

    start: int
    frames: int
    keep_lo: int
    keep_hi: int
    last: bool


def frame_geometry(model: torch.nn.Module) -> tuple[int, int]:
    """(stride, receptive field) in samples of a CTC model's (or backbone's) feature encoder."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError("model has no .cfg (a toolkit Wav2Vec2ForCTC is expected)")
    return int(cfg.total_stride), int(cfg.receptive_field)


def num_frames(num_samples: int, stride: int, field: int) -> int:
    """Frames of a feature encoder of this stride and receptive field (`toolkit.model.config.num_frames`
    for the model's own layers gives the same)."""
    return 0 if num_samples < field else (num_samples - field) // stride + 1


def plan_windows(num_samples: int, opts: ChunkOptions, stride: int = 320, field: int = 400) -> list[Window]:
    """The windows that cover the recording's frames, each frame kept by exactly one (module docstring)."""
    opts.check()
    total = num_frames(num_samples, stride, field)
    F = max(1, int(opts.chunk_s * SAMPLE_RATE) // stride)
    C = int(round(opts.context_s * SAMPLE_RATE / stride))
    step = F - 2 * C
    if step < 1:
        raise ToolkitError(f"--chunk-s {opts.chunk_s} leaves no frame between two contexts of {opts.context_s} s")
    if total == 0:
        return []
    wins, lo, k = [], 0, 0
    while True:
        st = k * step
        if st + F >= total:
            st = max(0, total - F)
            wins.append(Window(st, total - st, lo, total, True))
            return wins
        hi = st + C + step
        wins.append(Window(st, F, lo, hi, False))
        lo, k = hi, k + 1


def inference_context(device: torch.device, dtype: str = "auto") -> contextlib.AbstractContextManager:
    """inference_mode + autocast: bf16 on CUDA for "auto", fp32 on CPU for "auto"."""
    if dtype not in ("auto", "float32", "bfloat16"):
        raise ToolkitError(f"--dtype {dtype!r}: use auto, float32 or bfloat16")
    bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))
    return stack


def _forward(model: torch.nn.Module, waves: torch.Tensor, normalize: bool, device: torch.device) -> torch.Tensor:
    x = waves.to(device=device, dtype=torch.float32)
    if normalize:  # fairseq's normalisation, per window (as per utterance in training)
        x = normalize_waveform(x)
    log_probs, _ = model(x)
    return log_probs.float().cpu()


def iter_chunk_log_probs(model: torch.nn.Module, read: Callable[[int, int], torch.Tensor], num_samples: int,
                         opts: ChunkOptions | None = None, normalize: bool = False,
                         device: torch.device | None = None, dtype: str = "auto",
                         progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first frame, (t, V) float32 CPU log-probs) blocks that tile the recording's frames in order.

    `read(a, b)` returns samples [a, b) (1-D, 16 kHz, clipped at the end); the model is an eval-mode
    `Wav2Vec2ForCTC` (or anything with `.cfg` returning `(log_probs, lengths)` for (B, S) audio).
    `progress(samples)` is called after each forward with the samples it covered (for progress bars).
    """
    opts = opts or ChunkOptions()
    device = device or next(model.parameters()).device
    stride, field = frame_geometry(model)
    wins = plan_windows(num_samples, opts, stride, field)
    full_len = (max(1, int(opts.chunk_s * SAMPLE_RATE) // stride) - 1) * stride + field
    done = 0
    i = 0
    with inference_context(device, dtype):
        while i < len(wins):
            group = [wins[i]]
            while (not group[-1].last and len(group) < opts.batch_windows and i + len(group) < len(wins)
                   and not wins[i + len(group)].last):
                group.append(wins[i + len(group)])
            i += len(group)
            if group[0].last:
                w = group[0]
                waves = read(w.start * stride, num_samples)[None]
            else:
                waves = torch.stack([read(w.start * stride, w.start * stride + full_len) for w in group])
            lp = _forward(model, waves, normalize, device)
            for b, w in enumerate(group):
                if lp.shape[1] != w.frames:
                    raise RuntimeError(f"window at frame {w.start}: the model gave {lp.shape[1]} frames, "
                                       f"expected {w.frames}")
                yield w.keep_lo, lp[b, w.keep_lo - w.start: w.keep_hi - w.start]
            covered = num_samples if group[-1].last else min(num_samples, group[-1].keep_hi * stride)
            if progress is not None:
                progress(covered - done)
            done = covered


def chunked_log_probs(model: torch.nn.Module, waveform: torch.Tensor, opts: ChunkOptions | None = None,
                      normalize: bool = False, device: torch.device | None = None,
                      dtype: str = "auto") -> torch.Tensor:
    """(T, V) float32 log-probs of a 1-D 16 kHz waveform of any length, in overlapping windows.

    T is the frame count of one forward over the whole waveform, and a waveform that fits in one
    window gives exactly that forward's output. `normalize`: the model's `cfg.normalize` (per window).
    """
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be 1-D (samples), got shape {tuple(waveform.shape)}")
    blocks = [lp for _, lp in iter_chunk_log_probs(model, lambda a, b: waveform[a:b], waveform.numel(), opts,
                                                   normalize, device, dtype)]
    if not blocks:
        vocab = model.proj.out_features if hasattr(model, "proj") else 0
        return torch.zeros(0, vocab)
    return torch.cat(blocks)


# -------------------------------------------------------------------------------------------------
# Segments for the search: a long recording's frames, cut between words

def word_cuts(best: torch.Tensor, tokenizer, lo: int = 0) -> list[tuple[int, int]]:
    """(cut frame, pause frames) for the places in a greedy path `best` (T,) where cutting changes nothing.

    A cut at frame c is safe when the greedy output of the two parts, joined, is the greedy output of
    the whole (frame c is blank, or starts a new token) and no word straddles it: after the word
    boundary `|` (character vocabularies) or before a word-initial piece (`▁...`, word pieces).
    The cut goes in the middle of the blanks between the two tokens; `pause` is their number.
    Only cuts at frames >= `lo` are returned.
    """
    blank = tokenizer.blank_id
    b = best.tolist()
    emits = [f for f in range(len(b)) if b[f] != blank and (f == 0 or b[f] != b[f - 1])]
    if tokenizer.type == "char":
        boundary = tokenizer.token_to_id[tokenizer.word_boundary]
        ends_word = lambda prev, nxt: b[prev] == boundary  # noqa: E731
    else:
        ends_word = lambda prev, nxt: tokenizer.tokens[b[nxt]].startswith("\u2581")  # noqa: E731
    out = []
    pairs = list(zip([None] + emits, emits + [None]))
    for prev, nxt in pairs:
        if prev is None:  # before the first token: the buffer starts at a safe cut
            run_start = 0
        else:
            run_start = prev
            while run_start < len(b) and b[run_start] == b[prev]:
                run_start += 1
        if nxt is None:  # after the last token: safe only when it ends a word (not knowable for word pieces)
            if prev is None or tokenizer.type != "char" or b[prev] != tokenizer.token_to_id[tokenizer.word_boundary]:
                continue
            end = len(b)
        else:
            if prev is not None and not ends_word(prev, nxt):
                continue
            end = nxt
        pause = end - run_start
        cut = (run_start + end) // 2 if pause > 0 else end
        if cut >= lo and 0 < cut < len(b):
            out.append((cut, pause))
    return out


def blank_cut(best: torch.Tensor, blank: int, lo: int, default: int) -> int:
    """Middle of the longest run of blank frames at or after `lo` (greedy output unchanged, though a
    word may be split); `default` when there is none."""
    b = best.tolist()
    run, start, found = 0, 0, (0, default)
    for f in range(lo, len(b)):
        if b[f] == blank:
            start, run = (f, 1) if run == 0 else (start, run + 1)
            if run > found[0]:
                found = (run, start + run // 2)
        else:
            run = 0
    return found[1]


def iter_segments(blocks, tokenizer, max_frames: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Regroup (first frame, (t, V)) blocks into (first frame, (T_seg, V)) segments cut between words.

    A segment is cut once it holds `max_frames` frames, at the longest pause among the safe cuts
    (`word_cuts`) in its second half; without one it grows to twice that and is cut at its longest
    safe pause anywhere, or, with none at all (no word boundary in 2 x max_frames frames), in the
    longest run of blanks (`blank_cut`: the greedy text is kept, a word may be split in two). Memory holds at most about 2 x max_frames frames.
    """
    buf: list[torch.Tensor] = []
    start = total = 0
    for first, lp in blocks:
        if not buf:
            start = first
        buf.append(lp)
        total += lp.shape[0]
        while total >= max_frames:
            whole = torch.cat(buf) if len(buf) > 1 else buf[0]
            cuts = word_cuts(whole.argmax(-1), tokenizer, lo=max_frames // 2)
            cuts = [c for c in cuts if c[0] <= max_frames] or (cuts if total >= 2 * max_frames else [])
            if not cuts and total < 2 * max_frames:
                buf = [whole]
                break
            cut = max(cuts, key=lambda c: (c[1], c[0]))[0] if cuts else blank_cut(whole.argmax(-1), tokenizer.blank_id,
                                                                                    max_frames // 2, max_frames)
            yield start, whole[:cut]
            rest = whole[cut:]
            buf, start, total = [rest], start + cut, rest.shape[0]
    if total:
        yield start, torch.cat(buf) if len(buf) > 1 else buf[0]
