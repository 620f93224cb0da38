"""The LM text, lexicon and language models a synthetic corpus ships, in the real corpora's formats.

Common Voice (`DIR/<lang>/validated_sentences.tsv`): the sentence file of current releases,
columns `sentence_id, sentence, sentence_domain, source, is_used, clips_count`, one row per
sentence of the language's pool (`toolkit.data.synth_text`), recorded or not; sentences read
together as one long clip are listed as that clip's text. An open-vocabulary recipe takes its
LM text from here after removing the dev/test sentences itself.

LibriSpeech (`DIR/lm/`, the file names of openslr SLR11, where the recipe's `--lm-dir` looks)::

    librispeech-lm-norm.txt.gz      the LM text: every pool sentence except those recorded in
                                    dev/test, normalised and UPPER-case, one a line
    librispeech-vocab.txt           its words, most frequent first
    librispeech-lexicon.txt         WORD<TAB>phones, sorted; phones from espeak-ng (`-x`, its
                                    ASCII phoneme names, stress marks kept), one line per
                                    distinct pronunciation
    3-gram.arpa.gz                  trained with `toolkit lm train` (KenLM's lmplz when
    3-gram.pruned.1e-7.arpa.gz      installed) on the LM text, words UPPER-case as openslr's;
    4-gram.arpa.gz                  <s>, </s> and <unk> as ARPA writes them

openslr's pruned 3-gram is entropy-pruned (SRILM, threshold 1e-7); `toolkit lm train` prunes by
count, so ours drops the bigrams and trigrams seen once: smaller than `3-gram.arpa.gz`, as the
name promises, but not the same pruning. gzip files carry no time stamp, so a seed gives the
same bytes.

`toolkit.data` sits below `toolkit.lm` (docs/ARCHITECTURE.md), so the models are trained by the
`toolkit lm train` command in a child process, as a recipe would, and upper-cased by re-casing
the word fields of the ARPA text (`upper_case_arpa`: a transform, not a second ARPA reader; the
tests read the results back with KenLM and `toolkit.lm.arpa.read_arpa`).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from toolkit import external
from toolkit.data.synth_text import CorpusText, Normalizer
from toolkit.utils import ToolkitError, atomic_path, atomic_write_text

log = logging.getLogger(__name__)

CV_SENTENCE_COLUMNS = ("sentence_id", "sentence", "sentence_domain", "source", "is_used", "clips_count")
LM_DIR = "lm"
LM_TEXT = "librispeech-lm-norm.txt.gz"
VOCAB = "librispeech-vocab.txt"
LEXICON = "librispeech-lexicon.txt"
# openslr name -> (order, lmplz-style count thresholds)
ARPAS = {"3-gram.arpa.gz": (3, None), "3-gram.pruned.1e-7.arpa.gz": (3, [0, 1, 1]), "4-gram.arpa.gz": (4, None)}
ARPA_SPECIALS = ("<s>", "</s>", "<unk>")


def sentence_id(sentence: str) -> str:
    """Common Voice's sentence_id: the SHA-256 of the sentence text."""
    return hashlib.sha256(sentence.encode("utf-8")).hexdigest()


def lm_sentences(text: CorpusText, recorded: dict[str, list[tuple[str, ...]]]) -> list[str]:
    """The pool without every sentence recorded in dev or test (also inside a long utterance)."""
    held = {s for split in ("dev", "test") for parts in recorded.get(split, []) for s in parts}
    return [s for s in text.pool if s not in held]


def write_gzip(src: Path, dst: Path) -> None:
    """gzip the plain file `src` into `dst` atomically, with no name or time stamp in the header,
    so the same content gives the same bytes every run."""
    with atomic_path(dst) as tmp, open(src, "rb") as f, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        shutil.copyfileobj(f, gz)


# ---------------------------------------------------------------------------------------
# Common Voice

def write_cv_sentences(lang_dir: Path, text: CorpusText, clips: list[tuple[str, tuple[str, ...]]]) -> int:
    """`validated_sentences.tsv` of one language; `clips` = (clip sentence, pool sentences read). Returns rows."""
    counts: dict[str, int] = {}
    inside_long: set[str] = set()
    for clip_text, parts in clips:
        counts[clip_text] = counts.get(clip_text, 0) + 1
        if len(parts) > 1:
            inside_long.update(parts)
    rows = [s for s in text.pool if s not in inside_long]
    rows += sorted({c for c, parts in clips if len(parts) > 1})
    with atomic_path(lang_dir / "validated_sentences.tsv") as tmp, \
            open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n", escapechar="\\")
        writer.writerow(CV_SENTENCE_COLUMNS)
        for s in rows:
            n = counts.get(s, 0)
            writer.writerow([sentence_id(s), s, "", "toolkit synth-corpus", "1" if n else "0", str(n)])
    return len(rows)


# ---------------------------------------------------------------------------------------
# LibriSpeech (openslr SLR11)

def phonemes(words: list[str], voice: str) -> dict[str, str]:
    """espeak-ng's phonemes (`-x`, ASCII names, space-separated) of each word, read on its own."""
    if not words:
        return {}
    why = "to write the pronunciations of librispeech-lexicon.txt"

    def call(batch: list[str]) -> list[str]:
        proc = external.run("espeak-ng", ["-q", "-x", "--sep= ", "-v", voice], why,
                            input="".join(f"{w}.\n" for w in batch).encode("utf-8"), capture_output=True)
        if proc.returncode != 0:
            raise ToolkitError(f"espeak-ng -v {voice} failed to phonemise words: "
                               f"{proc.stderr.decode(errors='replace').strip()[-200:]}")
        return [" ".join(line.split()) for line in proc.stdout.decode("utf-8").splitlines() if line.strip()]

    lines = call(words)
    if len(lines) != len(words):  # a word read as two clauses: one call per word instead
        lines = [" ".join(call([w])) for w in words]
    out = {}
    for w, line in zip(words, lines):
        if not line:
            raise ToolkitError(f"espeak-ng -v {voice} gives no phonemes for the word {w!r}")
        out[w] = line
    return out


def upper_case_arpa(src: Path, dst: Path) -> None:
    """Write the plain ARPA file `src` to `dst` (gzipped, deterministic) with every word but <s>,
    </s> and <unk> UPPER-case.

    Only the word fields change: in a `\\k-grams:` section an entry is `log10p<TAB>w1 .. wk`
    with an optional `<TAB>backoff`; the header, the counts and every number are copied as they
    are. Two n-grams that differ only in case would become one: that is an error (the LM text
    is UPPER-case already, so it cannot happen unless the trainer changed the words).
    """
    order = 0
    seen: set[tuple[str, ...]] = set()
    with tempfile.TemporaryDirectory(prefix=".upper-", dir=dst.parent) as tmp_dir:
        plain = Path(tmp_dir) / "upper.arpa"
        with open(src, encoding="utf-8") as f, open(plain, "w", encoding="utf-8") as out:
            for lineno, line in enumerate(f, start=1):
                text = line.strip()
                if text.startswith("\\") and text.endswith("-grams:") and text[1:-7].isdigit():
                    order, seen = int(text[1:-7]), set()
                elif text == "\\end\\":
                    order = 0
                elif order and text:
                    fields = text.split()
                    words = tuple(w if w in ARPA_SPECIALS else w.upper() for w in fields[1:1 + order])
                    if len(words) != order:
                        raise ToolkitError(f"{src}:{lineno}: a {order}-gram entry with {len(words)} words; "
                                           "the ARPA file from `toolkit lm train` is corrupt")
                    if words in seen:
                        raise ToolkitError(f"{src}:{lineno}: upper-casing merges two {order}-grams into "
                                           f"{' '.join(words)!r}; the LM text must be UPPER-case")
                    seen.add(words)
                    line = "\t".join([fields[0], " ".join(words), *fields[1 + order:]]) + "\n"
                out.write(line)
        write_gzip(plain, dst)


def train_arpa(text: Path, order: int, out: Path, prune: list[int] | None) -> None:
    """`toolkit lm train --order N --text T --out O [--prune ...]` in a child process."""
    args = ["lm", "train", "--order", str(order), "--text", str(text), "--out", str(out)]
    if prune:
        args += ["--prune", *map(str, prune)]
    proc = external.run_python_module("toolkit.cli", args, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ToolkitError(f"toolkit lm {' '.join(args[1:])} failed: {last}")
    done = [line for line in proc.stderr.splitlines() if "wrote" in line]
    log.info("toolkit lm train: %s", done[-1].split("] ", 1)[-1] if done else out)


def write_librispeech_lm(out: Path, texts: dict[str, CorpusText], recorded: dict[str, dict[str, list[tuple[str, ...]]]],
                         voices: dict[str, str]) -> dict:
    """Write `out/lm/` (see the module docstring); returns {sentences, words, vocabulary, lexicon}."""
    lm_dir = out / LM_DIR
    lines: list[str] = []
    counts: dict[str, int] = {}
    words_by_language: dict[str, set[str]] = {}
    for lang, text in texts.items():
        normalize = Normalizer(lang)
        words = words_by_language.setdefault(lang, set())
        for s in lm_sentences(text, recorded[lang]):
            norm = normalize(s)
            upper = norm.upper()
            lines.append(upper)
            words.update(norm.split())
            for w in upper.split():
                counts[w] = counts.get(w, 0) + 1
    if not lines:
        raise ToolkitError(f"{out}: no sentence left for the LM text; raise --lm-sentences")
    vocab = sorted(counts, key=lambda w: (-counts[w], w))
    lexicon: set[tuple[str, str]] = set()
    for lang, words in words_by_language.items():
        ordered = sorted(words)
        for w, phones in phonemes(ordered, voices[lang]).items():
            lexicon.add((w.upper(), phones))
    unknown = {w for w, _ in lexicon} - set(counts)
    if unknown:  # str.upper() of a normalised word is what the LM text holds, always
        raise ToolkitError(f"{lm_dir}: lexicon words absent from the LM text: {sorted(unknown)[:5]}")
    lm_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(lm_dir / VOCAB, "".join(f"{w}\n" for w in vocab))
    atomic_write_text(lm_dir / LEXICON, "".join(f"{w}\t{p}\n" for w, p in sorted(lexicon)))
    with tempfile.TemporaryDirectory(prefix=".lm-", dir=lm_dir) as tmp_dir:
        plain = Path(tmp_dir) / "librispeech-lm-norm.txt"
        plain.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        write_gzip(plain, lm_dir / LM_TEXT)
        for name, (order, prune) in ARPAS.items():
            arpa = Path(tmp_dir) / f"{order}-gram.arpa"
            train_arpa(plain, order, arpa, prune)
            upper_case_arpa(arpa, lm_dir / name)
    log.info("%s: LM text of %d sentences (%d words, %d distinct), %d lexicon entries, %s",
             lm_dir, len(lines), sum(counts.values()), len(vocab), len(lexicon), ", ".join(ARPAS))
    return {"sentences": len(lines), "words": sum(counts.values()), "vocabulary": len(vocab), "lexicon": len(lexicon)}
