"""The transcription loop: items in, segments' texts and timed words out, each recording as it finishes.

Items are taken in the order given. A recording no longer than one model window (`chunk.chunk_s`)
is read whole and waits in a pool; the pool is sorted by duration and run in batches of at most
`max_duration` seconds of audio (padding-aware, so batching does not change a transcript) when it
holds that much, before a long recording, and at the end. A longer recording is streamed:
`iter_chunk_log_probs` (overlapping windows, read window by window) -> `iter_segments` (cut
between words, at most ~`max_segment_s` each) -> search -> forced alignment, so memory does not
grow with its length. Outputs come in the input order. A recording that cannot be read or
decoded is reported (one line naming it) and skipped; the others go on.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from toolkit.transcribe.align import align_words
from toolkit.transcribe.audio import SAMPLE_RATE, AudioItem, AudioReader, ConversionNotes
from toolkit.decode.chunking import (ChunkOptions, frame_geometry, inference_context, iter_chunk_log_probs,
                                         iter_segments)
from toolkit.transcribe.formats import Outputs, Recording
from toolkit.utils import ToolkitError

log = logging.getLogger("toolkit.transcribe")


@dataclass
class TranscribeOptions:
    chunk: ChunkOptions = field(default_factory=ChunkOptions)
    max_duration: float = 200.0  # seconds of audio per batch of short recordings
    max_segment_s: float = 30.0  # longest stretch of a long recording searched at once (about)
    dtype: str = "auto"


@dataclass
class Stats:
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


class Transcriber:
    def __init__(self, model: torch.nn.Module, tokenizer, search: Callable, device: torch.device,
                 normalize: bool, opts: TranscribeOptions, language: str | None = None):
        self.model, self.tokenizer, self.search = model, tokenizer, search
        self.device, self.normalize, self.opts, self.language = device, normalize, opts, language
        self.stride, self.field = frame_geometry(model)
        self.frame_s = self.stride / SAMPLE_RATE
        self.notes = ConversionNotes()
        self.stats = Stats()
        self._warned_language = False
        opts.chunk.check()

    # ------------------------------------------------------------------ driver
    def run(self, items: list[AudioItem], out: Outputs, progress: Callable[[float], None] | None = None) -> Stats:
        """Transcribe `items` into `out`; `progress(seconds)` after each stretch of audio."""
        self._progress = progress or (lambda s: None)
        pool: list[tuple[AudioItem, torch.Tensor]] = []
        pooled = 0.0
        t0 = time.perf_counter()
        for item in items:
            try:
                reader = AudioReader(item, self.notes)
            except ToolkitError as e:
                self._fail(item, str(e))
                continue
            try:
                if reader.num_samples < self.field:
                    raise ToolkitError(f"{item.source}: audio too short ({reader.num_samples} samples at 16 kHz; "
                                       f"the model needs at least {self.field})")
                if reader.num_samples <= self._window_samples():
                    pool.append((item, reader.read(0, reader.num_samples)))
                    pooled += reader.duration
                    if pooled >= self.opts.max_duration:
                        self._run_pool(pool, out)
                        pool, pooled = [], 0.0
                    continue
                if pool:
                    self._run_pool(pool, out)
                    pool, pooled = [], 0.0
                self._run_long(item, reader, out)
            except ToolkitError as e:
                self._fail(item, str(e))
            finally:
                reader.close()
        if pool:
            self._run_pool(pool, out)
        self.stats.compute_seconds = time.perf_counter() - t0
        return self.stats

    def _window_samples(self) -> int:
        frames = max(1, int(self.opts.chunk.chunk_s * SAMPLE_RATE) // self.stride)
        return (frames - 1) * self.stride + self.field

    def _fail(self, item: AudioItem, message: str) -> None:
        log.error("skipped: %s", message)
        self.stats.failed.append((item.source, message))

    def _recording(self, item: AudioItem, seconds: float) -> Recording:
        if item.language and self.language and item.language != self.language and not self._warned_language:
            self._warned_language = True
            log.warning("%s: the manifest says language %r but the model was trained on %r; transcripts come out "
                        "in the model's language and normalisation", item.source, item.language, self.language)
        return Recording(item.id, item.source, seconds, self.language)

    # ------------------------------------------------------------------ short recordings, batched
    def _run_pool(self, pool: list[tuple[AudioItem, torch.Tensor]], out: Outputs) -> None:
        order = sorted(range(len(pool)), key=lambda i: pool[i][1].numel())
        results: dict[int, tuple[str, list | None] | ToolkitError] = {}
        batch: list[int] = []
        total = 0.0
        for i in order:
            dur = pool[i][1].numel() / SAMPLE_RATE
            if batch and total + dur > self.opts.max_duration:
                self._run_batch(pool, batch, results, out.needs_times)
                batch, total = [], 0.0
            batch.append(i)
            total += dur
        if batch:
            self._run_batch(pool, batch, results, out.needs_times)
        for i, (item, wav) in enumerate(pool):  # input order
            res = results[i]
            if isinstance(res, ToolkitError):
                self._fail(item, str(res))
                continue
            text, words = res
            out.begin(self._recording(item, wav.numel() / SAMPLE_RATE))
            out.segment(text, words)
            out.end()
            self.stats.done += 1

    def _run_batch(self, pool, batch: list[int], results: dict, timed: bool) -> None:
        waves = [pool[i][1] for i in batch]
        lengths = torch.tensor([w.numel() for w in waves])
        x = torch.zeros(len(waves), int(lengths.max()))
        for b, w in enumerate(waves):
            if self.normalize:  # per utterance, before padding (toolkit.data.dataset.AudioDataset)
                w = torch.nn.functional.layer_norm(w, w.shape)
            x[b, : w.numel()] = w
        with inference_context(self.device, self.opts.dtype):
            log_probs, out_lengths = self.model(x.to(self.device), lengths.to(self.device))
        log_probs, out_lengths = log_probs.float().cpu(), out_lengths.cpu()
        texts = self.search(log_probs, out_lengths)
        for b, i in enumerate(batch):
            item = pool[i][0]
            try:
                lp = log_probs[b, : int(out_lengths[b])]
                words = align_words(lp, texts[b], self.tokenizer, 0.0, self.frame_s, item.source) if timed else None
                results[i] = (texts[b], words)
            except ToolkitError as e:
                results[i] = e
        seconds = float(lengths.sum()) / SAMPLE_RATE
        self.stats.audio_seconds += seconds
        self._progress(seconds)

    # ------------------------------------------------------------------ long recordings, streamed
    def _run_long(self, item: AudioItem, reader: AudioReader, out: Outputs) -> None:
        out.begin(self._recording(item, reader.duration))
        done = 0.0

        def progress(samples: int) -> None:
            nonlocal done
            done += samples / SAMPLE_RATE
            self._progress(samples / SAMPLE_RATE)

        try:
            blocks = iter_chunk_log_probs(self.model, reader.read, reader.num_samples, self.opts.chunk,
                                          self.normalize, self.device, self.opts.dtype, progress)
            max_frames = max(1, int(round(self.opts.max_segment_s / self.frame_s)))
            for first, lp in iter_segments(blocks, self.tokenizer, max_frames):
                text = self.search(lp[None], torch.tensor([lp.shape[0]]))[0]
                words = None
                if out.needs_times:
                    words = align_words(lp, text, self.tokenizer, first * self.frame_s, self.frame_s,
                                        f"{item.source} at {first * self.frame_s:.2f} s")
                out.segment(text, words)
        except BaseException:
            out.discard()
            self.stats.audio_seconds += done
            raise
        out.end()
        self.stats.audio_seconds += done
        self.stats.done += 1
