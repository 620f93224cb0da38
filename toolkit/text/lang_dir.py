"""`toolkit lang-dir`: an icefall-format lang dir from the training cuts' transcripts.

    toolkit lang-dir --type char --cuts data/manifests/cv-de_cuts_train.jsonl.gz [more ...] --out data/lang_char
    toolkit lang-dir --type bpe --vocab-size 500 [--bpe-type unigram] --cuts ... --out data/lang_bpe_500
    toolkit lang-dir --type char --cuts train.jsonl.gz --lexicon librispeech-lexicon.txt --lm-text lm.txt --out L

Open vocabulary: `--lexicon` (an openslr/Kaldi lexicon or a word list: the first field of each
line is a word) and `--lm-text` (every word of an LM text) add words that the training
transcripts lack. Their words are normalised like the transcripts (`normalize_word` with
`--language`, default the cuts' language), so UPPER-case openslr files give the lower-case words
of the transcripts, and spelled like every word: characters (+ `|`), or the SentencePiece model's
segmentation. The tokens (tokens.txt, bpe.model) come from the training transcripts only, so a
word whose spelling needs a character the model never saw cannot be decoded: it is left out, and
the count is logged.

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
- .lang_dir.json  the input fingerprint and the language (`recorded_language`; compile-graph
               normalises an external LM's words for it)

Rerunning with the same inputs (manifest contents, type, vocab size, bpe type) and all
outputs present does nothing; any change rebuilds everything.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections import Counter
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
    parser.add_argument("--lexicon", nargs="+", default=[], metavar="FILE",
                        help="external lexicon(s) or word list(s) (first field of each line, e.g. openslr's "
                             "librispeech-lexicon.txt): their words join words.txt/lexicon.txt, spelled by --type")
    parser.add_argument("--lm-text", nargs="+", default=[], metavar="FILE",
                        help="LM text(s), one sentence a line: every word joins the lexicon (open vocabulary)")
    parser.add_argument("--language", default=None,
                        help="language whose normalisation the external words get (default: the cuts' language)")
    parser.add_argument("--verbose", action="store_true")


def read_transcripts(cut_paths: list[str | Path], languages: Counter | None = None) -> list[str]:
    """Normalised training sentences of every cut (supervision texts joined), in order.

    `languages`, when given, counts the supervisions' languages (the lang dir's language)."""
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
                if languages is not None:
                    languages.update(s.language for s in cut.supervisions if s.language)
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


def check_normalised(texts: list[str], language: str, where: str) -> None:
    """One-line ToolkitError when transcripts are not in `normalize_text` form: a capitalised
    "Lungo" would become a lexicon word (and its capitals tokens) that the normalised LM text, the
    references and the model's other training sentences never use, silently unreachable in HLG."""
    from toolkit.text.normalize import normalize_text

    odd = [(text, norm) for text in texts if (norm := normalize_text(text, language)) != text]
    if odd:
        raise ToolkitError(f"{where}: {len(odd)} of {len(texts)} transcripts are not normalised for language "
                           f"{language} (e.g. {odd[0][0]!r}, normalised {odd[0][1]!r}); prepare the cuts with "
                           "`toolkit prepare` (it normalises) or normalise their text with toolkit.text.normalize_text")


def read_external_words(lexicons: list[str | Path], lm_texts: list[str | Path], language: str) -> list[str]:
    """Normalised words of external lexicons / word lists (first field) and LM texts (every word).

    Lines are read as UTF-8 (gzip when the file says so); a word that does not normalise to one
    word (punctuation, `<NOISE>`, `A.B`) is skipped. Returns the distinct words, in first-seen order.
    """
    from toolkit.text.normalize import normalize_word
    from toolkit.utils import open_text_lines

    seen: dict[str, None] = {}
    for option, paths, first_only in (("--lexicon", lexicons, True), ("--lm-text", lm_texts, False)):
        for path in paths:
            skipped = 0
            for line in open_text_lines(path, option, "a lexicon or word list" if first_only else "an LM text"):
                fields = line.split()
                for raw in fields[:1] if first_only else fields:
                    word = normalize_word(raw, language)
                    if word is None or word in SPECIAL_WORDS:
                        skipped += 1
                    else:
                        seen.setdefault(word, None)
            if skipped:
                log.info("%s %s: %d entries are no word after normalisation (punctuation, <...>); skipped",
                         option, path, skipped)
    return list(seen)


def recorded_language(lang_dir: str | Path) -> str | None:
    """The language `toolkit lang-dir` recorded in the lang dir's .lang_dir.json (None: unknown)."""
    try:
        data = json.loads((Path(lang_dir) / STAMP).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    lang = data.get("language") if isinstance(data, dict) else None
    return lang if isinstance(lang, str) and lang else None


def _digests(paths: list[str]) -> list[list[str]]:
    digests = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests.append([str(Path(p).resolve()), h.hexdigest()])
    return digests


def _fingerprint(args: argparse.Namespace) -> dict:
    stamp = {"type": args.type, "vocab_size": args.vocab_size if args.type == "bpe" else None,
             "bpe_type": args.bpe_type if args.type == "bpe" else None, "cuts": _digests(args.cuts)}
    if args.lexicon or args.lm_text or args.language:
        stamp.update(lexicon=_digests(args.lexicon), lm_text=_digests(args.lm_text), language_option=args.language)
    return stamp


def _outputs(kind: str) -> list[str]:
    files = ["tokens.txt", "words.txt", "lexicon.txt", "transcript_words.txt"]
    return files + (["bpe.model"] if kind == "bpe" else [])


def spell(tokenizer: Tokenizer, word: str) -> list[str]:
    """The lexicon spelling of one word: its tokens as the tokenizer encodes it."""
    if tokenizer.type == "char":
        return [*word, WORD_BOUNDARY]
    return tokenizer.sp.encode(word, out_type=str)


def spellable(tokenizer: Tokenizer, word: str) -> bool:
    """True when every token of the word's spelling is in the vocabulary (no <unk> piece)."""
    if tokenizer.type == "char":
        return all(c in tokenizer.token_to_id for c in word)
    return tokenizer.unk_id not in tokenizer.sp.encode(word)


def build_lang_dir(texts: list[str], out: Path, kind: str, vocab_size: int = 500, bpe_type: str = "unigram",
                   where: str = "training text", extra_words: list[str] | None = None) -> Tokenizer:
    """Write every lang-dir file (not the stamp) for `texts`; return the tokenizer.

    `extra_words` (normalised words from outside the transcripts) join words.txt and lexicon.txt
    when the tokens can spell them; the others are left out with a warning."""
    if kind == "char":
        tok = Tokenizer.build_char(texts, where=where)
    else:
        tok = Tokenizer.train_bpe(texts, vocab_size, bpe_type, where=where)
    train_words = {w for t in texts for w in t.split()}
    clash = sorted(train_words & set(SPECIAL_WORDS))
    if clash:
        raise ToolkitError(f"{where}: words {clash} collide with lang-dir symbols; normalise the text first")
    extra = [w for w in (extra_words or []) if w not in train_words]
    unspellable = [w for w in extra if not spellable(tok, w)]
    if unspellable:
        log.warning("lang-dir: %d of %d words from outside the training transcripts need tokens the model lacks "
                    "and are left out of the lexicon (e.g. %s)", len(unspellable), len(extra),
                    ", ".join(unspellable[:5]))
    added = set(extra) - set(unspellable)
    if extra:
        log.info("lang-dir: %d training words + %d words from outside (open vocabulary)", len(train_words), len(added))
    words = sorted(train_words | added)
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
    for option, paths in (("--cuts", args.cuts), ("--lexicon", args.lexicon), ("--lm-text", args.lm_text)):
        for p in paths:
            if not Path(p).is_file():
                fix = "run `toolkit prepare` first" if option == "--cuts" else "check the path"
                raise ToolkitError(f"{option} {p}: file not found; {fix}")
    stamp = _fingerprint(args)
    stamp_path = out / STAMP
    if stamp_path.is_file() and all((out / f).is_file() for f in _outputs(args.type)):
        try:
            recorded = json.loads(stamp_path.read_text(encoding="utf-8"))
            recorded.pop("language", None)
            if recorded == stamp:
                log.info("lang-dir: %s is up to date with its inputs; skipping", out)
                return 0
        except (json.JSONDecodeError, AttributeError):
            pass  # a damaged stamp just means: rebuild
    stamp_path.unlink(missing_ok=True)  # a rebuild interrupted half-way must not look finished
    languages: Counter = Counter()
    texts = read_transcripts(args.cuts, languages)
    language = args.language or (languages.most_common(1)[0][0] if languages else None)
    if language:
        from toolkit.text.tokenizer import check_training_text

        # the characters that collide with the vocabulary's own symbols first (their error lists them)
        check_training_text(texts, args.type, where=f"--cuts {' '.join(args.cuts)}")
        check_normalised(texts, language, f"--cuts {' '.join(args.cuts)}")
    extra = []
    if args.lexicon or args.lm_text:
        if language is None:
            raise ToolkitError("--lexicon/--lm-text: the cuts carry no language; give --language CODE "
                               "(the external words are normalised for it)")
        extra = read_external_words(args.lexicon, args.lm_text, language)
    tok = build_lang_dir(texts, out, args.type, args.vocab_size, args.bpe_type,
                         where=f"--cuts {' '.join(args.cuts)}", extra_words=extra)
    atomic_write_text(stamp_path, json.dumps({**stamp, "language": language}, indent=1) + "\n")
    n_words = len((out / "words.txt").read_text(encoding="utf-8").splitlines()) - len(SPECIAL_WORDS)
    log.info("lang-dir: wrote %s (%s, %d tokens, %d words, %d sentences)", out, args.type, tok.vocab_size, n_words, len(texts))
    return 0
