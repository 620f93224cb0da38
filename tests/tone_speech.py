"""Synthetic "speech" with known word boundaries, and a tiny CTC model trained on it in seconds.

Each letter of the four-word lang dir (graph_fixtures.FOUR_WORDS: a, b, c, o) is a 40 ms tone of
its own pitch (with a harmonic and 5 ms ramps); a word is its letters back to back; a sentence
is words separated by silences of random length, with a little noise. Word boundaries are
therefore known to the sample: `say` returns them with the waveform. A tiny wav2vec 2.0 model
trained with CTC on such sentences (`train_tone_model`, plain PyTorch loop over the toolkit's
model and loss) learns to read them, which gives the transcription tests a model whose
transcripts, word times and confidences mean something.

CTC alone does not tie emissions to the audio: a model with global context may emit its tokens
anywhere in the right order (one trained here with CTC only emitted words 3 to 10 frames early,
every transcript right). So the training adds a frame-level cross-entropy towards the known
alignment (each letter on the frames whose centre lies in its tone, the word boundary `|` on the
first frame after the word, blank elsewhere), as a model trained on force-aligned targets would
be: its posteriors peak where the letters sound, and forced-alignment times can be checked
against the known boundaries.
"""
from __future__ import annotations

import numpy as np
import torch

SR = 16000
LETTER_HZ = {"a": 440.0, "b": 880.0, "c": 1480.0, "o": 2400.0}
LETTER_S = 0.04  # two 20 ms frames
CE_WEIGHT = 5.0  # frame cross-entropy against CTC (per utterance)


def letter(ch: str, rng: np.random.Generator) -> np.ndarray:
    n = int(LETTER_S * SR)
    t = np.arange(n) / SR
    f = LETTER_HZ[ch] * (1.0 + rng.uniform(-0.02, 0.02))
    x = np.sin(2 * np.pi * f * t) + 0.4 * np.sin(4 * np.pi * f * t + rng.uniform(0, np.pi))
    ramp = int(0.005 * SR)
    env = np.ones(n)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[-ramp:] = np.linspace(1, 0, ramp)
    return (x * env).astype(np.float32)


def say(words: list[str], rng: np.random.Generator, gap: tuple[float, float] = (0.12, 0.40),
        edge: float = 0.2, noise: float = 0.01) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """(waveform at 16 kHz, [(word, start s, end s)]) of the words spoken with silences between."""
    parts = [np.zeros(int(edge * SR), np.float32)]
    bounds = []
    pos = parts[0].size
    for i, w in enumerate(words):
        if i:
            sil = np.zeros(int(rng.uniform(*gap) * SR), np.float32)
            parts.append(sil)
            pos += sil.size
        amp = rng.uniform(0.3, 0.8)
        sound = np.concatenate([letter(c, rng) for c in w]) * amp
        bounds.append((w, pos / SR, (pos + sound.size) / SR))
        parts.append(sound)
        pos += sound.size
    parts.append(np.zeros(int(edge * SR), np.float32))
    wav = np.concatenate(parts)
    wav = wav + noise * rng.standard_normal(wav.size).astype(np.float32)
    return wav.astype(np.float32), bounds


def random_sentence(rng: np.random.Generator, vocab: list[str], n: tuple[int, int] = (2, 6)) -> list[str]:
    return [vocab[i] for i in rng.integers(0, len(vocab), rng.integers(n[0], n[1] + 1))]


NARROW = dict(conv_feature_layers=[(32, 10, 5), (32, 3, 2), (32, 3, 2), (64, 3, 2), (64, 3, 2), (64, 2, 2), (64, 2, 2)],
              encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2,
              conv_pos=32, conv_pos_groups=8)


def frame_labels(tokenizer, bounds: list[tuple[str, float, float]], frames: int) -> torch.Tensor:
    """(frames,) token ids of the known alignment: letters where they sound, `|` right after each word."""
    centre = (np.arange(frames) * 320 + 200) / SR
    labels = np.zeros(frames, np.int64)
    boundary = tokenizer.token_to_id["|"]
    for word, start, end in bounds:
        for k, ch in enumerate(word):
            inside = (centre >= start + k * LETTER_S) & (centre < start + (k + 1) * LETTER_S)
            labels[inside] = tokenizer.token_to_id[ch]
        after = np.nonzero(centre >= end)[0]
        if after.size:
            labels[after[0]] = boundary
    return torch.from_numpy(labels)


def train_tone_model(tokenizer, vocab: list[str], steps: int = 300, batch: int = 8, seed: int = 0, lr: float = 2e-3,
                     log_every: int = 0, narrow: bool = True):
    """A Wav2Vec2ForCTC (eval mode) and its config, trained from scratch on `say` sentences.

    Loss: CTC plus the frame cross-entropy of the module docstring. `narrow`: narrower than the tiny
    preset (the same strides, so the same 20 ms frames; tones need little); False: the tiny preset's
    architecture (the embedded default's), for benchmarks.
    """
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC, ctc_loss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = get_preset("tiny", **(NARROW if narrow else {}),
                     mask_prob=0.0, mask_channel_prob=0.0, encoder_layerdrop=0.0, dropout=0.0,
                     attention_dropout=0.0, dropout_input=0.0, dropout_features=0.0, feature_grad_mult=1.0)
    model = Wav2Vec2ForCTC(cfg, tokenizer.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for step in range(steps):
        waves, targets, aligned = [], [], []
        for _ in range(batch):
            words = random_sentence(rng, vocab)
            wav, bounds = say(words, rng)
            waves.append(torch.from_numpy(wav))
            targets.append(tokenizer.encode(" ".join(words)))
            aligned.append(bounds)
        lengths = torch.tensor([w.numel() for w in waves])
        x = torch.zeros(batch, int(lengths.max()))
        for i, w in enumerate(waves):
            x[i, : w.numel()] = w
        t_len = torch.tensor([len(t) for t in targets])
        y = torch.full((batch, int(t_len.max())), -1)
        for i, t in enumerate(targets):
            y[i, : len(t)] = torch.tensor(t)
        log_probs, out_lengths = model(x, lengths)
        loss = ctc_loss(log_probs, out_lengths, y, t_len).loss / batch
        for i, bounds in enumerate(aligned):
            n = int(out_lengths[i])
            loss = loss + CE_WEIGHT * torch.nn.functional.nll_loss(log_probs[i, :n], frame_labels(tokenizer, bounds, n)) / batch
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        if log_every and step % log_every == 0:
            print(step, float(loss.detach()), flush=True)
    return model.eval(), cfg


class ToneDetector(torch.nn.Module):
    """A deterministic "acoustic model" for tone speech: no training, exact frame timing.

    Frame t (samples [320 t, 320 t + 400), the wav2vec 2.0 frame) gets the letter whose pitch has the
    largest amplitude in its central 200 samples (above `floor`), the word boundary `|` on the first quiet frame after a
    letter, blank otherwise, as log-probs peaked by `peak`. It has the interface the transcriber
    uses (`.cfg` with the frame geometry, `forward(audio, lengths) -> (log_probs, out_lengths)`), so
    word times through chunking, segments and alignment can be checked to the frame.
    """

    def __init__(self, tokenizer, peak: float = 8.0, floor: float = 0.03):
        super().__init__()
        from toolkit.model.presets import get_preset

        self.cfg = get_preset("tiny")
        self.tokenizer, self.peak, self.floor = tokenizer, peak, floor
        t = torch.arange(200) / SR  # the frame's central 200 samples: a 40 ms letter always fills one
        freqs = torch.tensor(list(LETTER_HZ.values()))
        self.register_buffer("cos", torch.cos(2 * np.pi * freqs[:, None] * t[None]))
        self.register_buffer("sin", torch.sin(2 * np.pi * freqs[:, None] * t[None]))
        self.ids = [tokenizer.token_to_id[c] for c in LETTER_HZ]
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # a device to be on

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None):
        frames = audio.float().unfold(1, 400, 320)[..., 100:300]  # (B, T, 200)
        amp = 2 / 200 * torch.sqrt((frames @ self.cos.T) ** 2 + (frames @ self.sin.T) ** 2)  # (B, T, 4)
        best = amp.argmax(-1)
        loud = amp.max(-1).values > self.floor
        labels = torch.zeros_like(best)
        ids = torch.tensor(self.ids)
        labels[loud] = ids[best[loud]]
        after = torch.zeros_like(loud)
        after[:, 1:] = ~loud[:, 1:] & loud[:, :-1]
        labels[after] = self.tokenizer.token_to_id["|"]
        log_probs = torch.nn.functional.one_hot(labels, self.tokenizer.vocab_size).float() * self.peak
        out_len = torch.full((audio.shape[0],), labels.shape[1]) if lengths is None else \
            torch.div(lengths - 400, 320, rounding_mode="floor") + 1
        return log_probs.log_softmax(-1), out_len
