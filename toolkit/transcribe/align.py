"""Word times and confidences of a hypothesis: CTC forced alignment on the frame posteriors.

`align_words(log_probs, text, tokenizer)` spells each word of the hypothesis in the model's
tokens (`word_token_ids`: characters then the word boundary `|` for character vocabularies, the
SentencePiece pieces of the word for word pieces; `<unk>` is the unknown token), aligns that token
sequence to the (T, V) log-probs with `torchaudio.functional.forced_align` (the best CTC path that
emits exactly these tokens) and reads off, per word:

- `start`: the first frame of its first token, `end`: the end of the last frame of its last
  spelling token (the boundary `|` is not part of the word's sound), both as seconds
  (frame t covers [t, t + 1) x 20 ms; `offset` is added);
- `confidence`: the product over its spelling tokens of each token's highest posterior on the
  frames the alignment gives it, i.e. the model's probability that every token of the word is
  right, taken as independent. A word whose tokens the model is sure of has ~1.0; one letter at
  50/50 with another gives ~0.5.

Any search's output can be aligned this way (greedy, hlg, k2 ...): the greedy / HLG path itself
emits this spelling, so an alignment exists; when the frames cannot hold the spelling (a
hypothesis too long for its audio) the boundary tokens are dropped, and if that does not fit
either the utterance fails with a ToolkitError rather than getting invented times.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from toolkit.text.tokenizer import UNK
from toolkit.utils import ToolkitError

FRAME_S = 0.02  # 320 samples at 16 kHz


@dataclass
class WordTiming:
    word: str
    start: float  # seconds
    end: float
    confidence: float


def word_token_ids(tokenizer, word: str) -> list[int]:
    """The token ids that spell `word` (see module docstring); `<unk>` inside a word is the unknown token."""
    if tokenizer.type == "char":
        ids: list[int] = []
        for i, part in enumerate(word.split(UNK)):
            if i:
                ids.append(tokenizer.unk_id)
            ids += [tokenizer.token_to_id.get(c, tokenizer.unk_id) for c in part]
        return ids + [tokenizer.token_to_id[tokenizer.word_boundary]]
    # SentencePiece: an unknown character becomes its unk piece (id 1), as "<unk>" was decoded from it.
    return list(tokenizer.sp.encode(word.replace(UNK, "\u2047")))


def ctc_frames_needed(ids: list[int]) -> int:
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


def align_words(log_probs: torch.Tensor, text: str, tokenizer, offset: float = 0.0,
                frame_s: float = FRAME_S, where: str = "utterance") -> list[WordTiming]:
    """Timed, scored words of `text` over (T, V) log-probs (module docstring)."""
    import torchaudio.functional as AF

    words = text.split()
    if not words:
        return []
    spelled = [word_token_ids(tokenizer, w) for w in words]
    boundary = tokenizer.token_to_id.get(tokenizer.word_boundary) if tokenizer.type == "char" else None
    T = int(log_probs.shape[0])
    if ctc_frames_needed([i for s in spelled for i in s]) > T and boundary is not None:
        spelled = [[i for i in s if i != boundary] or s for s in spelled]
    targets = [i for s in spelled for i in s]
    if ctc_frames_needed(targets) > T:
        raise ToolkitError(f"{where}: the hypothesis ({len(targets)} tokens) does not fit its {T} frames; "
                           "cannot time its words")
    lp = log_probs.detach().float().cpu()[None]
    ali, scores = AF.forced_align(lp, torch.tensor([targets], dtype=torch.int32), blank=tokenizer.blank_id)
    spans = AF.merge_tokens(ali[0], scores[0].exp(), blank=tokenizer.blank_id)
    if len(spans) != len(targets):  # forced_align emits every target once; anything else is a bug
        raise RuntimeError(f"{where}: alignment has {len(spans)} token spans for {len(targets)} tokens")
    out, k = [], 0
    for word, ids in zip(words, spelled):
        mine = spans[k: k + len(ids)]
        k += len(ids)
        sound = [s for s, i in zip(mine, ids) if i != boundary] or mine
        conf = 1.0
        for s in sound:
            conf *= float(scores[0, s.start: s.end].exp().max())
        out.append(WordTiming(word, round(offset + sound[0].start * frame_s, 3), round(offset + sound[-1].end * frame_s, 3),
                              round(conf, 4)))
    return out
