"""`toolkit lang-dir`: an icefall-format lang dir from the training cuts' transcripts.

    toolkit lang-dir --type char --cuts data/manifests/cv-de_cuts_train.jsonl.gz [more ...] --out data/lang_char
    toolkit lang-dir --type bpe --vocab-size 500 [--bpe-type unigram] --cuts ... --out data/lang_bpe_500

Files written (each atomically; `.lang_dir.json`, the input fingerprint, last):
- tokens.txt   `symbol id`, `<blk> 0` first (see toolkit.text.tokenizer for the order)
- words.txt    `<eps> 0`, `<unk> 1`, the training words sorted by code point, then `#0`, `<s>`, `</s>`
- lexicon.txt  one line per word of words.txt (except `<eps>`/`#0`/`<s>`/`</s>`):
               characters `word w o r d |`; word pieces `word ▁wo rd` (the SentencePiece
               segmentation the tokenizer gives that word alone).
               OOV entry for decoding graphs: `<unk> <unk> |` (char) / `<unk> <unk>` (bpe),
               so an LM that predicts `<unk>` has a spelling in L.
- bpe.model    the SentencePiece model (bpe only)
- transcript_words.txt  the normalised training sentences, one a line (LM training text)

Rerunning with the same inputs (manifest contents, type, vocab size, bpe type) and all
outputs present does nothing; any change rebuilds everything.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

from toolkit.text.tokenizer import UNK, WORD_BOUNDARY, Tokenizer
from toolkit.utils import ToolkitError, atomic_write_text

log = logging.getLogger(__name__)

STAMP = ".lang_dir.json"
SPECIAL_WORDS = ("<eps>", UNK, "#0", "<s>", "</s>")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--type", choices=["char", "bpe"], required=True, help="characters or SentencePiece word pieces")
    parser.add_argument("--cuts", nargs="+", required=True, help="training CutSet manifests (*.jsonl.gz); text must be normalised")
    parser.add_argument("--out", required=True, help="lang dir to write, e.g. data/lang_char or data/lang_bpe_500")
    parser.add_argument("--vocab-size", type=int, default=500, help="SentencePiece vocabulary size (bpe only)")
    parser.add_argument("--bpe-type", choices=["unigram", "bpe"], default="unigram", help="SentencePiece model type")
    parser.add_argument("--verbose", action="store_true")


def read_transcripts(cut_paths: list[str | Path]) -> list[str]:
    """Normalised training sentences of every cut (supervision texts joined), in order."""
    from lhotse import load_manifest_lazy

    texts: list[str] = []
    for path in map(Path, cut_paths):
        if not path.is_file():
            raise ToolkitError(f"--cuts {path}: file not found; run `toolkit prepare` first")
        try:
            cuts = load_manifest_lazy(path)
            n_empty = 0
            for cut in cuts:
                text = " ".join((s.text or "") for s in cut.supervisions).strip()
                if text:
                    texts.append(" ".join(text.split()))
                else:
                    n_empty += 1
        except ToolkitError:
            raise
        except Exception as e:  # noqa: BLE001 - lhotse raises many types on a bad manifest
            raise ToolkitError(f"--cuts {path}: not a readable lhotse CutSet manifest ({e})") from None
        if n_empty:
            log.warning("%s: %d cuts without transcript were skipped", path, n_empty)
    if not texts:
        raise ToolkitError(f"--cuts {' '.join(map(str, cut_paths))}: no transcripts found; is this an unlabelled set?")
    return texts


def _fingerprint(args: argparse.Namespace) -> dict:
    digests = []
    for p in args.cuts:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests.append([str(Path(p).resolve()), h.hexdigest()])
    return {"type": args.type, "vocab_size": args.vocab_size if args.type == "bpe" else None,
            "bpe_type": args.bpe_type if args.type == "bpe" else None, "cuts": digests}


def _outputs(kind: str) -> list[str]:
    files = ["tokens.txt", "words.txt", "lexicon.txt", "transcript_words.txt"]
    return files + (["bpe.model"] if kind == "bpe" else [])


def spell(tokenizer: Tokenizer, word: str) -> list[str]:
    """The lexicon spelling of one word: its tokens as the tokenizer encodes it."""
    if tokenizer.type == "char":
        return [*word, WORD_BOUNDARY]
    return tokenizer.sp.encode(word, out_type=str)


def build_lang_dir(texts: list[str], out: Path, kind: str, vocab_size: int = 500, bpe_type: str = "unigram",
                   where: str = "training text") -> Tokenizer:
    """Write every lang-dir file (not the stamp) for `texts`; return the tokenizer."""
    if kind == "char":
        tok = Tokenizer.build_char(texts, where=where)
    else:
        tok = Tokenizer.train_bpe(texts, vocab_size, bpe_type, where=where)
    words = sorted({w for t in texts for w in t.split()})
    clash = sorted(set(words) & set(SPECIAL_WORDS))
    if clash:
        raise ToolkitError(f"{where}: words {clash} collide with lang-dir symbols; normalise the text first")
    out.mkdir(parents=True, exist_ok=True)
    if kind == "bpe":
        from toolkit.utils import atomic_path

        with atomic_path(out / "bpe.model") as tmp:
            tmp.write_bytes(tok.bpe_model)
    tok.write_tokens(out / "tokens.txt")
    table = ["<eps>", UNK, *words, "#0", "<s>", "</s>"]
    atomic_write_text(out / "words.txt", "".join(f"{w} {i}\n" for i, w in enumerate(table)))
    unk_spelling = [UNK, WORD_BOUNDARY] if kind == "char" else [UNK]
    lines = [f"{UNK} {' '.join(unk_spelling)}\n"] + [f"{w} {' '.join(spell(tok, w))}\n" for w in words]
    atomic_write_text(out / "lexicon.txt", "".join(lines))
    atomic_write_text(out / "transcript_words.txt", "".join(t + "\n" for t in texts))
    return tok


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    for p in args.cuts:
        if not Path(p).is_file():
            raise ToolkitError(f"--cuts {p}: file not found; run `toolkit prepare` first")
    stamp = _fingerprint(args)
    stamp_path = out / STAMP
    if stamp_path.is_file() and all((out / f).is_file() for f in _outputs(args.type)):
        try:
            if json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
                log.info("lang-dir: %s is up to date with its inputs; skipping", out)
                return 0
        except json.JSONDecodeError:
            pass  # a damaged stamp just means: rebuild
    stamp_path.unlink(missing_ok=True)  # a rebuild interrupted half-way must not look finished
    texts = read_transcripts(args.cuts)
    tok = build_lang_dir(texts, out, args.type, args.vocab_size, args.bpe_type, where=f"--cuts {' '.join(args.cuts)}")
    atomic_write_text(stamp_path, json.dumps(stamp, indent=1) + "\n")
    n_words = len((out / "words.txt").read_text(encoding="utf-8").splitlines()) - len(SPECIAL_WORDS)
    log.info("lang-dir: wrote %s (%s, %d tokens, %d words, %d sentences)", out, args.type, tok.vocab_size, n_words, len(texts))
    return 0
