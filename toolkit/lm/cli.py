"""`toolkit lm <subcommand>`: n-gram language models.

    toolkit lm train --order 3 --text data/lang_char/transcript_words.txt --out data/lm/lm_3.arpa
    toolkit lm train --order 4 --text T --out lm.arpa --prune 0 1 1      # drop n-grams (order >= 2) seen once
    toolkit lm train --order 4 --text librispeech-lm-norm.txt.gz --language en --out 4gram.arpa.gz --prune 0 0 1

The text holds one sentence a line (plain or gzipped). Every line goes through the transcripts'
normalisation (`normalize_text` with `--language`: case, Unicode form, punctuation), so an
UPPER-case external text such as librispeech-lm-norm.txt gives the words of the transcripts.
Two estimators give the same model (within 1e-4 per n-gram, tests/test_lm.py): the toolkit's
interpolated modified Kneser-Ney (`toolkit.lm.kneser_ney`, all counts in memory: right for
transcripts) and KenLM's `lmplz` (on disk, for hundreds of millions of words). `--engine auto`
takes lmplz above `--lmplz-above` words (when it is on PATH; above the threshold without it is a
one-line error, not a machine out of memory), the toolkit's estimator below. The normalised text
is written to a temporary directory beside --out (about the size of the text: 4.5 GB for
librispeech-lm-norm.txt; lmplz's sort files go there too). Either way the ARPA file is written
atomically and validated by reading it back.

    toolkit lm perplexity --lm lm.arpa --text dev.txt   # per-token perplexity, </s> counted

    toolkit lm text --language it --commonvoice-dir cv/it --cuts train.jsonl.gz \
        --exclude-cuts dev.jsonl.gz test.jsonl.gz [--text more.txt] --out lm_text.txt

`lm text` gathers LM training text: a Common Voice language directory's sentence file
(validated_sentences.tsv, else validated.tsv: every sentence of the language, recorded or not),
more text files, and transcripts of cut manifests; normalises every sentence; removes every
sentence of the --exclude-cuts manifests (dev/test must not leak into the LM); and writes each
distinct sentence once.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from toolkit import external
from toolkit.lm.arpa import BOS, EOS, arpa_order, read_arpa, validate_arpa, write_arpa
from toolkit.lm.kneser_ney import DEFAULT_FALLBACK, prune_thresholds, train_kneser_ney
from toolkit.text.normalize import normalize_text
from toolkit.utils import ToolkitError, atomic_path, atomic_write_text, open_text_lines, read_utf8_lines

log = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "und"  # normalisation without language-specific rules
LMPLZ_ABOVE_WORDS = 2_000_000  # --engine auto: lmplz above this many words (bench/lm.py: memory of the toolkit's estimator)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="subcommand", metavar="{train,perplexity,text}", required=True)
    train = sub.add_parser("train", help="estimate a modified Kneser-Ney n-gram model and write ARPA",
                           description="Estimate an interpolated modified Kneser-Ney n-gram LM (ARPA).")
    train.add_argument("--order", type=int, required=True, help="n-gram order (e.g. 3)")
    train.add_argument("--text", type=Path, required=True,
                       help="training text, one sentence a line (plain or gzipped; normalised with --language)")
    train.add_argument("--language", default=DEFAULT_LANGUAGE,
                       help="the text's language: its normalisation, as the transcripts' (default: no language rules)")
    train.add_argument("--out", type=Path, required=True, help="output ARPA file (.arpa, or .arpa.gz for gzip)")
    train.add_argument("--prune", type=int, nargs="+", default=None, metavar="T",
                       help="lmplz-style count thresholds per order, non-decreasing, starting with 0; "
                            "the last repeats (e.g. 0 1 1 drops bigrams and above seen once)")
    train.add_argument("--discount-fallback", type=float, nargs=3, default=list(DEFAULT_FALLBACK),
                       metavar=("D1", "D2", "D3"),
                       help="discounts used when count-of-counts cannot define them (small texts)")
    train.add_argument("--engine", choices=["auto", "toolkit", "lmplz"], default="auto",
                       help="auto: KenLM's lmplz above --lmplz-above words, the toolkit's estimator below")
    train.add_argument("--lmplz-above", type=int, default=LMPLZ_ABOVE_WORDS, metavar="WORDS",
                       help="--engine auto uses lmplz for texts of more words than this")
    train.add_argument("--memory", default="20%",
                       help="lmplz's sorting memory (-S): a share of RAM or a size such as 4G")
    train.add_argument("--verbose", action="store_true", help="debug logging")
    ppl = sub.add_parser("perplexity", help="perplexity of an ARPA model on a text",
                         description="Per-token perplexity (</s> counted) of an ARPA LM on a text.")
    ppl.add_argument("--lm", type=Path, required=True, help="ARPA file (plain or gzipped)")
    ppl.add_argument("--text", type=Path, required=True, help="one sentence a line (normalised with --language)")
    ppl.add_argument("--language", default=DEFAULT_LANGUAGE,
                     help="normalisation of the text and of the LM's words, as the transcripts'")
    ppl.add_argument("--verbose", action="store_true", help="debug logging")
    text = sub.add_parser("text", help="gather normalised LM text (corpus sentence files, texts, transcripts)",
                          description="Gather LM text: normalised, dev/test sentences removed, each sentence once.")
    text.add_argument("--language", required=True, help="language of the text (its normalisation)")
    text.add_argument("--commonvoice-dir", type=Path, default=None,
                      help="a Common Voice language directory: its validated_sentences.tsv (else validated.tsv), "
                           "without the sentences of its dev.tsv and test.tsv")
    text.add_argument("--text", type=Path, nargs="+", default=[], help="more text files, one sentence a line")
    text.add_argument("--cuts", nargs="+", default=[], help="cut manifests whose transcripts join the text (train)")
    text.add_argument("--exclude-cuts", nargs="+", default=[],
                      help="cut manifests whose sentences are removed from the text (dev, test)")
    text.add_argument("--out", type=Path, required=True, help="output text file, one sentence a line")
    text.add_argument("--verbose", action="store_true", help="debug logging")


def read_text(path: Path) -> list[str]:
    """Sentences of a UTF-8 text file; one-line errors for a missing, non-UTF-8 or empty file."""
    lines = read_utf8_lines(path, "--text", "the LM training text (one sentence a line)")
    for n, line in enumerate(lines, start=1):
        if BOS in line.split() or EOS in line.split():
            raise ToolkitError(f"--text {path}:{n}: contains <s> or </s>; remove sentence markers from the LM text")
    if not any(line.strip() for line in lines):
        raise ToolkitError(f"--text {path}: no sentences; the LM training text is empty")
    return lines


MARKERS = (BOS, EOS, "<unk>")


def check_no_markers(line: str, where: str) -> None:
    """One-line error for an LM text line holding <s>, </s> or <unk> (any case): normalisation would
    turn `<unk>` into a word "unk", and the estimator adds the sentence markers itself."""
    if "<" in line:
        found = [t for t in line.split() if t.casefold() in MARKERS]
        if found:
            raise ToolkitError(f"{where}: contains {found[0]}; the LM text holds words only: remove the marker "
                               "(the estimator adds <s>, </s> and the <unk> probability itself)")


def normalize_lm_text(path: Path, language: str, out: Path) -> tuple[int, int]:
    """Write `path`'s sentences, normalised for `language`, one a line into `out` (blank ones left out);
    return (sentences, words). Streams: any size, plain or gzipped. Sentence markers are an error."""
    from tqdm import tqdm

    sentences = words = 0
    with open(out, "w", encoding="utf-8") as f:
        for n, line in enumerate(tqdm(open_text_lines(path, "--text", "the LM training text (one sentence a line)"),
                                      desc="normalise LM text", unit=" lines", mininterval=10,
                                      disable=None), start=1):
            check_no_markers(line, f"--text {path}:{n}")
            norm = normalize_text(line, language)
            if norm:
                f.write(norm + "\n")
                sentences += 1
                words += norm.count(" ") + 1
    if not sentences:
        raise ToolkitError(f"--text {path}: no sentences; the LM training text is empty")
    return sentences, words


def lmplz_arguments(args: argparse.Namespace, text: Path, arpa: Path, tmp_dir: str) -> list[str]:
    """The lmplz options for ours (modest memory by default: the machine may be shared)."""
    cmd = ["-o", str(args.order), "--text", str(text), "--arpa", str(arpa),
           "-S", args.memory, "-T", tmp_dir, "--discount_fallback", *map(str, args.discount_fallback)]
    if args.prune:
        cmd += ["--prune", *map(str, args.prune)]
    return cmd


def train_with_lmplz(args: argparse.Namespace, text: Path, tmp_dir: str) -> None:
    """Run lmplz into `tmp_dir` (beside --out), validate, then move (or gzip) into place."""
    log.info("using KenLM's lmplz to estimate the model")
    arpa = Path(tmp_dir) / "lm.arpa"
    proc = external.run("lmplz", lmplz_arguments(args, text, arpa, tmp_dir), "to estimate the LM with KenLM",
                        capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ToolkitError(f"lmplz failed on --text {args.text} ({last}); retry with --engine toolkit")
    validate_arpa(arpa)
    if str(args.out).endswith(".gz"):
        with atomic_path(args.out) as tmp, arpa.open("rb") as src, gzip.open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        os.replace(arpa, args.out)


def choose_engine(engine: str, words: int, threshold: int) -> str:
    """'lmplz' or 'toolkit' for a text of `words` words (one-line errors when the choice cannot work)."""
    has_lmplz = external.available("lmplz")
    if engine == "lmplz" and not has_lmplz:
        raise ToolkitError(f"--engine lmplz: lmplz is not on PATH ({external.install_hint('lmplz')}); "
                           "or use --engine toolkit")
    if engine != "auto":
        return engine
    if words <= threshold:
        return "toolkit"
    if not has_lmplz:
        raise ToolkitError(f"--text has {words} words, more than --lmplz-above {threshold}: the toolkit's estimator "
                           f"holds every count in memory, so this needs KenLM's lmplz, which is not on PATH "
                           f"({external.install_hint('lmplz')}); or force --engine toolkit")
    return "lmplz"


def run_train(args: argparse.Namespace) -> None:
    prune_thresholds(args.prune, args.order)  # validate before any work
    if args.order < 1:
        raise ToolkitError(f"--order {args.order}: the n-gram order must be at least 1")
    # modified Kneser-Ney discounts: D_k takes from n-grams seen k times, so 0 < D_k < k (outside it a
    # probability is 0 or above 1)
    if not all(0 < d < k for k, d in enumerate(args.discount_fallback, start=1)):
        given = " ".join(f"{d:g}" for d in args.discount_fallback)
        raise ToolkitError(f"--discount-fallback {given}: need 0 < D1 < 1, 0 < D2 < 2 and 0 < D3 < 3 "
                           "(the default is 0.5 1 1.5)")
    if args.order == 1:
        log.warning("--order 1: a unigram ARPA is valid, but KenLM refuses to load models below order 2")
    if args.engine == "lmplz" and not external.available("lmplz"):
        choose_engine("lmplz", 0, 0)  # the one-line error, before reading a large text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=".lm_train.") as tmp_dir:
        text = Path(tmp_dir) / "text.txt"
        n_sent, n_words = normalize_lm_text(args.text, args.language, text)
        engine = choose_engine(args.engine, n_words, args.lmplz_above)
        log.info("%s: %d sentences, %d words after normalisation (language %s); estimator: %s",
                 args.text, n_sent, n_words, args.language, engine)
        if engine == "lmplz":
            train_with_lmplz(args, text, tmp_dir)
        else:
            sentences = text.read_text(encoding="utf-8").splitlines()
            model, info = train_kneser_ney(sentences, args.order, args.prune, args.discount_fallback)
            del sentences
            write_arpa(model, args.out)
            log.info("modified Kneser-Ney: %d sentences, %d words; discounts per order %s",
                     info.num_sentences, info.num_tokens,
                     ", ".join("(" + ", ".join(f"{d:.3f}" for d in ds) + ")" for ds in info.discounts))
    counts = validate_arpa(args.out)
    counts += [0] * (arpa_order(args.out) - len(counts))  # the header's order: sections may be empty
    log.info("wrote %s: order %d, n-grams per order %s (%.1f s, %s)", args.out, len(counts), counts,
             time.perf_counter() - start, "lmplz" if engine == "lmplz" else "toolkit estimator")
    empty = [k for k, c in enumerate(counts, start=1) if c == 0]
    if empty:
        log.warning("%s: no %s-grams left (--prune %s on %d words of text): the LM works as order %d",
                    args.out, "/".join(map(str, empty)), " ".join(map(str, args.prune or [])), n_words, empty[0] - 1)


def read_normalized_arpa(path: Path, language: str):
    """The ARPA model with its words normalised like the transcripts (an UPPER-case openslr LM
    scores lower-case text); read as it is when its words are normal already."""
    from toolkit.lm.vocab import arpa_unigrams, normalize_arpa, word_map

    wmap = word_map(arpa_unigrams(path), language)
    if wmap.identity:
        return read_arpa(path)
    with tempfile.TemporaryDirectory() as tmp:
        normalize_arpa(path, Path(tmp) / "lm.arpa", language, wmap)
        return read_arpa(Path(tmp) / "lm.arpa")


def run_perplexity(args: argparse.Namespace) -> None:
    model = read_normalized_arpa(args.lm, args.language)
    sentences = [n for n in (normalize_text(s, args.language) for s in read_text(args.text)) if n]
    vocab = model.ngrams[0]
    oov = sum(1 for s in sentences for w in s.split() if (w,) not in vocab)
    tokens = sum(len(s.split()) + 1 for s in sentences)
    logprob = sum(model.score(s) for s in sentences)
    ppl = 10.0 ** (-logprob / tokens) if tokens else float("nan")
    print(f"{args.text}: {len(sentences)} sentences, {tokens} tokens (incl. </s>), {oov} OOVs, "
          f"log10 prob {logprob:.2f}, perplexity {ppl:.2f}")


SENTENCE_FILES = ("validated_sentences.tsv", "validated.tsv")  # Common Voice: newest releases first


def commonvoice_sentences(lang_dir: Path) -> tuple[Path | None, list[str]]:
    """The sentences of a Common Voice language directory's sentence file (column `sentence`)."""
    if not lang_dir.is_dir():
        raise ToolkitError(f"--commonvoice-dir {lang_dir}: not a directory; give <release>/<language>")
    for name in SENTENCE_FILES:
        path = lang_dir / name
        if path.is_file():
            return path, tsv_sentences(path)
    return None, []


def tsv_sentences(path: Path) -> list[str]:
    """The `sentence` column of a Common Voice TSV (sentence file or split)."""
    import csv

    lines = list(open_text_lines(path, "--commonvoice-dir", f"{path.name} of a Common Voice release"))
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    if "sentence" not in (reader.fieldnames or []):
        raise ToolkitError(f"{path}: no 'sentence' column (columns: {', '.join(reader.fieldnames or [])}); "
                           "is this a Common Voice sentence file?")
    return [row["sentence"] or "" for row in reader]


def run_text(args: argparse.Namespace) -> None:
    from toolkit.text.lang_dir import read_transcripts

    sources: list[tuple[str, list[str]]] = []
    if args.commonvoice_dir is not None:
        path, sentences = commonvoice_sentences(args.commonvoice_dir)
        if path is None:
            log.warning("--commonvoice-dir %s: no %s; the LM text holds only the other sources (no open vocabulary "
                        "from the corpus)", args.commonvoice_dir, " or ".join(SENTENCE_FILES))
        else:
            sources.append((str(path), [normalize_text(x, args.language) for x in sentences]))
    for path in args.text:
        lines = list(open_text_lines(path, "--text", "a text file, one sentence a line"))
        for n, x in enumerate(lines, start=1):
            check_no_markers(x, f"--text {path}:{n}")
        sources.append((str(path), [normalize_text(x, args.language) for x in lines]))
    if args.cuts:
        sources.append((" ".join(args.cuts), [normalize_text(x, args.language) for x in read_transcripts(args.cuts)]))
    excluded = {normalize_text(x, args.language) for x in read_transcripts(args.exclude_cuts)} if args.exclude_cuts else set()
    if args.commonvoice_dir is not None:  # the release's own evaluation sets, also without --exclude-cuts
        from toolkit.data.prepare import CV_EVAL_SPLITS

        for tsv in (args.commonvoice_dir / f"{split}.tsv" for split in CV_EVAL_SPLITS):
            if tsv.is_file():
                excluded.update(normalize_text(x, args.language) for x in tsv_sentences(tsv))
    if not sources:
        raise ToolkitError("lm text: no source; give --commonvoice-dir, --text or --cuts")
    out: dict[str, None] = {}
    n_in = n_excl = 0
    for name, sentences in sources:
        kept = 0
        for s in sentences:
            if not s:
                continue
            n_in += 1
            if s in excluded:
                n_excl += 1
                continue
            kept += s not in out
            out.setdefault(s, None)
        log.info("lm text: %s: %d new sentences", name, kept)
    if not out:
        raise ToolkitError(f"lm text: no sentence left for {args.out} (all {n_in} were empty or dev/test sentences)")
    atomic_write_text(args.out, "".join(s + "\n" for s in out))
    words = sum(s.count(" ") + 1 for s in out)
    log.info("lm text: wrote %s: %d distinct sentences, %d words (%d sentences read, %d removed as dev/test "
             "sentences, %d repeats)", args.out, len(out), words, n_in, n_excl, n_in - n_excl - len(out))


def run(args: argparse.Namespace) -> int:
    if args.subcommand == "train":
        run_train(args)
    elif args.subcommand == "perplexity":
        run_perplexity(args)
    elif args.subcommand == "text":
        run_text(args)
    return 0
