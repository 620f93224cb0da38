"""Character and SentencePiece vocabularies for CTC (ARCHITECTURE.md, "Text").

Both kinds share one contract:
- id 0 is the CTC blank `<blk>` (`blank_id == 0`), as in icefall's lang dirs;
- `encode(text)` never fails on unseen characters: they become `<unk>` and are counted
  in `oov_count` (the number of `<unk>` ids emitted since construction / `reset_oov()`);
- `decode(ids)` does no CTC collapsing (the decoder's job); it drops blanks, detokenises
  and strips, and writes `<unk>` for unknown ids.

Character vocabulary (`type == "char"`): `<blk>` 0, the word boundary `|` 1, the
training characters by descending frequency (ties by code point, so the result is
deterministic), `<unk>` last. `encode` spells every word followed by `|` (fairseq's
`.ltr` convention, and the spelling that `lexicon.txt` gives each word, so the CTC
targets and the decoding graph agree).

Word pieces (`type == "bpe"`): a SentencePiece unigram or BPE model trained on the
training text with `character_coverage=1.0` and the identity normalisation rule (text is
already normalised by `normalize_text`); `<blk>` is a user-defined symbol at id 0 and
`<unk>` is id 1 (icefall's train_bpe_model does the same, with `<sos/eos>` in between).
"""
from __future__ import annotations

import io
import logging
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from toolkit.text.symbols import read_token_list
from toolkit.utils import ToolkitError

__all__ = ["Tokenizer", "BLANK", "UNK", "WORD_BOUNDARY", "check_training_text"]

log = logging.getLogger(__name__)

BLANK = "<blk>"
UNK = "<unk>"
WORD_BOUNDARY = "|"
SPM_SPACE = "\u2581"  # SentencePiece's word-start meta symbol


def _char_name(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')})"


def check_training_text(texts: Iterable[str], kind: str, where: str = "training text") -> list[str]:
    """Return the texts as a list after checking for delimiter collisions.

    Raises ToolkitError when the text contains the word-boundary token `|` (char), the
    SentencePiece meta symbol `▁` (bpe), or punctuation such as the Devanagari danda
    `।` that normalisation should have removed (it would become a vocabulary entry that
    looks like the word boundary). `where` names the source in the message.
    """
    texts = list(texts)
    bad: Counter[str] = Counter()
    for text in texts:
        for ch in text:
            if ch == WORD_BOUNDARY or ch == SPM_SPACE:
                bad[ch] += 1
            elif ch != "'" and unicodedata.category(ch)[0] == "P":
                bad[ch] += 1
    if bad:
        listed = ", ".join(f"{_char_name(c)} x{n}" for c, n in bad.most_common(5))
        what = "the word boundary '|'" if kind == "char" else "SentencePiece's '▁'"
        raise ToolkitError(
            f"{where}: characters that collide with {what} or are unnormalised punctuation: {listed}; "
            f"normalise the text with toolkit.text.normalize_text (toolkit prepare does) before building the vocabulary"
        )
    if not any(t.strip() for t in texts):
        raise ToolkitError(f"{where}: no non-empty sentence to build a vocabulary from; check the cuts' supervisions")
    return texts


class Tokenizer:
    """Text <-> token ids for a CTC model. Build with `build_char`, `train_bpe`,
    `from_lang_dir` or `from_dict`."""

    def __init__(self, kind: str, tokens: Sequence[str], bpe_model: bytes | None = None) -> None:
        if kind not in ("char", "bpe"):
            raise ToolkitError(f"vocabulary type {kind!r} is not supported; use 'char' or 'bpe'")
        tokens = list(tokens)
        if not tokens or tokens[0] != BLANK or UNK not in tokens:
            raise ToolkitError(f"vocabulary must start with {BLANK} at id 0 and contain {UNK}; got {tokens[:3]}...")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, n in Counter(tokens).items() if n > 1]
            raise ToolkitError(f"vocabulary has duplicate tokens {dup[:5]}; rebuild the lang dir")
        self.type = kind
        self.tokens = tokens
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        self.blank_id = 0
        self.unk_id = self.token_to_id[UNK]
        self.word_boundary = WORD_BOUNDARY if kind == "char" else None
        self.bpe_model = bpe_model
        self.oov_count = 0
        self._sp = None
        if kind == "char":
            if WORD_BOUNDARY not in self.token_to_id:
                raise ToolkitError(f"character vocabulary lacks the word boundary {WORD_BOUNDARY!r}")
            bad = [t for t in tokens if len(t) != 1 and t not in (BLANK, UNK)]
            if bad:
                raise ToolkitError(f"character vocabulary has multi-character tokens {bad[:5]}; is it a bpe lang dir without bpe.model?")
        else:
            if bpe_model is None:
                raise ToolkitError("word-piece vocabulary needs its SentencePiece model (bpe.model)")
            self._check_bpe_tokens()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build_char(cls, texts: Iterable[str], where: str = "training text") -> "Tokenizer":
        """Character vocabulary from normalised training sentences (see module docstring)."""
        texts = check_training_text(texts, "char", where)
        counts: Counter[str] = Counter()
        for text in texts:
            for word in text.split():
                counts.update(word)
        chars = sorted(counts, key=lambda c: (-counts[c], ord(c)))
        return cls("char", [BLANK, WORD_BOUNDARY, *chars, UNK])

    @classmethod
    def train_bpe(
        cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram", where: str = "training text"
    ) -> "Tokenizer":
        """Train a SentencePiece model (unigram or bpe) with `<blk>`=0, `<unk>`=1.

        On a corpus too small for `vocab_size` the model comes out smaller (logged as a
        warning) rather than failing, so tiny recipes still run.
        """
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe"):
            raise ToolkitError(f"--bpe-type {model_type!r} is not supported; use unigram or bpe")
        if vocab_size < 3:
            raise ToolkitError(f"--vocab-size {vocab_size} is too small; it needs <blk>, <unk> and pieces")
        texts = [t for t in check_training_text(texts, "bpe", where) if t.strip()]
        n_chars = len({c for t in texts for c in t if not c.isspace()})
        if vocab_size < n_chars + 3:  # character_coverage=1.0 needs every character as a piece
            raise ToolkitError(f"--vocab-size {vocab_size} is smaller than the {n_chars} distinct characters of the "
                               f"{where} plus <blk>, <unk>, '\u2581'; use --vocab-size {n_chars + 3} or more")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, user_defined_symbols=[BLANK],
                unk_id=1, bos_id=-1, eos_id=-1, pad_id=-1, normalization_rule_name="identity",
                hard_vocab_limit=False, input_sentence_size=10_000_000, shuffle_input_sentence=True,
                num_threads=1, minloglevel=2,
            )
        except RuntimeError as e:  # sentencepiece reports bad settings as RuntimeError
            raise ToolkitError(f"{where}: SentencePiece training failed ({e}); "
                               f"try another --vocab-size (the text has {n_chars} distinct characters)") from None
        tok = cls("bpe", cls._pieces_of(model.getvalue()), bpe_model=model.getvalue())
        if tok.vocab_size != vocab_size:
            log.warning("SentencePiece produced %d pieces instead of --vocab-size %d: the training text is too small",
                        tok.vocab_size, vocab_size)
        return tok

    @staticmethod
    def _pieces_of(model: bytes) -> list[str]:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=model)
        return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]

    def _check_bpe_tokens(self) -> None:
        try:
            pieces = self._pieces_of(self.bpe_model)
        except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt model
            raise ToolkitError(f"bpe.model could not be read ({e}); rebuild the lang dir with toolkit lang-dir") from None
        if pieces != self.tokens:
            raise ToolkitError("tokens.txt does not match bpe.model (different pieces or order); rebuild the lang dir")

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def sp(self):  # noqa: ANN201 - sentencepiece has no stubs
        """The SentencePiece processor (bpe only), created lazily so the object pickles."""
        if self._sp is None and self.type == "bpe":
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=self.bpe_model)
        return self._sp

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sp"] = None  # DataLoader workers rebuild it from the bytes
        return state

    def __repr__(self) -> str:
        return f"Tokenizer(type={self.type!r}, vocab_size={self.vocab_size})"

    def reset_oov(self) -> int:
        """Return the OOV count so far and reset it to 0."""
        n, self.oov_count = self.oov_count, 0
        return n

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> list[int]:
        """Token ids of one normalised sentence; unseen characters -> `<unk>` (counted)."""
        words = text.split()
        if self.type == "char":
            ids = [self.token_to_id.get(c, self.unk_id) for w in words for c in (*w, WORD_BOUNDARY)]
        else:
            ids = self.sp.encode(" ".join(words)) if words else []
        self.oov_count += sum(1 for i in ids if i == self.unk_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a token sequence: blanks dropped, `|`/`▁` -> spaces, stripped. No collapsing."""
        ids = [int(i) for i in ids if int(i) != self.blank_id]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ToolkitError(f"token id {i} is outside the vocabulary (size {self.vocab_size}); "
                                   f"the model and the lang dir do not match")
        if self.type == "char":
            boundary = self.token_to_id[WORD_BOUNDARY]
            text = "".join(" " if i == boundary else self.tokens[i] for i in ids)
        else:
            text = self.sp.decode(ids).replace(" \u2047 ", f" {UNK} ").replace("\u2047", UNK)
        return " ".join(text.split())

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """The checkpoint's "vocab" entry: {"type", "tokens", "bpe_model" (bytes | None)}."""
        return {"type": self.type, "tokens": list(self.tokens), "bpe_model": self.bpe_model}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        if not isinstance(d, dict) or "type" not in d or "tokens" not in d:
            raise ToolkitError("checkpoint vocabulary entry is missing or malformed; was it written by this toolkit?")
        return cls(d["type"], d["tokens"], d.get("bpe_model"))

    def write_tokens(self, path: str | Path) -> None:
        """tokens.txt in icefall's `symbol id` format (atomic)."""
        from toolkit.utils import atomic_write_text

        atomic_write_text(path, "".join(f"{t} {i}\n" for i, t in enumerate(self.tokens)))

    @classmethod
    def from_lang_dir(cls, lang_dir: str | Path) -> "Tokenizer":
        """Read `tokens.txt` (and `bpe.model` when present) of a lang dir.

        Disambiguation symbols `#0`, `#1`, ... that graph builders append to tokens.txt
        are not model outputs and are ignored.
        """
        lang_dir = Path(lang_dir)
        path = lang_dir / "tokens.txt"
        if not path.is_file():
            raise ToolkitError(f"{path}: not found; build the lang dir with `toolkit lang-dir`")
        tokens = read_token_list(path)
        bpe = lang_dir / "bpe.model"
        if bpe.is_file():
            return cls("bpe", tokens, bpe.read_bytes())
        return cls("char", tokens)

