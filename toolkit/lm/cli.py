"""`toolkit lm <subcommand>`: n-gram language models.

    toolkit lm train --order 3 --text data/lang_char/transcript_words.txt --out data/lm/lm_3.arpa
    toolkit lm train --order 4 --text T --out lm.arpa --prune 0 1 1      # drop n-grams (order >= 2) seen once

The text holds one normalised sentence a line. When KenLM's `lmplz` is on PATH (and
`--engine` is `auto` or `lmplz`) it estimates the model with the same options; otherwise the
toolkit's own interpolated modified Kneser-Ney (`toolkit.lm.kneser_ney`) does. Either way the
ARPA file is written atomically and validated by reading it back. The toolkit's estimator
holds all n-gram counts in memory (a few seconds for ~100k sentences); for corpora of
millions of sentences install KenLM.

    toolkit lm perplexity --lm lm.arpa --text dev.txt   # per-token perplexity, </s> counted
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
from toolkit.lm.arpa import read_arpa, validate_arpa, write_arpa
from toolkit.lm.kneser_ney import DEFAULT_FALLBACK, prune_thresholds, train_kneser_ney
from toolkit.utils import ToolkitError, atomic_path, read_utf8_lines

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="subcommand", metavar="{train,perplexity}", required=True)
    train = sub.add_parser("train", help="estimate a modified Kneser-Ney n-gram model and write ARPA",
                           description="Estimate an interpolated modified Kneser-Ney n-gram LM (ARPA).")
    train.add_argument("--order", type=int, required=True, help="n-gram order (e.g. 3)")
    train.add_argument("--text", type=Path, required=True, help="training text, one normalised sentence a line")
    train.add_argument("--out", type=Path, required=True, help="output ARPA file (.arpa, or .arpa.gz for gzip)")
    train.add_argument("--prune", type=int, nargs="+", default=None, metavar="T",
                       help="lmplz-style count thresholds per order, non-decreasing, starting with 0; "
                            "the last repeats (e.g. 0 1 1 drops bigrams and above seen once)")
    train.add_argument("--discount-fallback", type=float, nargs=3, default=list(DEFAULT_FALLBACK),
                       metavar=("D1", "D2", "D3"),
                       help="discounts used when count-of-counts cannot define them (small texts)")
    train.add_argument("--engine", choices=["auto", "toolkit", "lmplz"], default="auto",
                       help="auto: KenLM's lmplz when it is on PATH, else the toolkit's estimator")
    train.add_argument("--verbose", action="store_true", help="debug logging")
    ppl = sub.add_parser("perplexity", help="perplexity of an ARPA model on a text",
                         description="Per-token perplexity (</s> counted) of an ARPA LM on a text.")
    ppl.add_argument("--lm", type=Path, required=True, help="ARPA file (plain or gzipped)")
    ppl.add_argument("--text", type=Path, required=True, help="one normalised sentence a line")
    ppl.add_argument("--verbose", action="store_true", help="debug logging")


def read_text(path: Path) -> list[str]:
    """Sentences of a UTF-8 text file; one-line errors for a missing, non-UTF-8 or empty file."""
    lines = read_utf8_lines(path, "--text", "the LM training text (one sentence a line)")
    for n, line in enumerate(lines, start=1):
        if "<s>" in line.split() or "</s>" in line.split():
            raise ToolkitError(f"--text {path}:{n}: contains <s> or </s>; remove sentence markers from the LM text")
    if not any(line.strip() for line in lines):
        raise ToolkitError(f"--text {path}: no sentences; the LM training text is empty")
    return lines


def lmplz_arguments(args: argparse.Namespace, arpa: Path, tmp_dir: str) -> list[str]:
    """The lmplz options for ours (modest memory: the machine is shared)."""
    cmd = ["-o", str(args.order), "--text", str(args.text), "--arpa", str(arpa),
           "-S", "20%", "-T", tmp_dir, "--discount_fallback", *map(str, args.discount_fallback)]
    if args.prune:
        cmd += ["--prune", *map(str, args.prune)]
    return cmd


def train_with_lmplz(args: argparse.Namespace) -> None:
    """Run lmplz into a temporary directory beside --out, validate, then move (or gzip) into place."""
    log.info("using KenLM's lmplz to estimate the model")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=".lmplz.") as tmp_dir:
        arpa = Path(tmp_dir) / "lm.arpa"
        proc = external.run("lmplz", lmplz_arguments(args, arpa, tmp_dir), "to estimate the LM with KenLM",
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


def run_train(args: argparse.Namespace) -> None:
    prune_thresholds(args.prune, args.order)  # validate before any work
    if args.order < 1:
        raise ToolkitError(f"--order {args.order}: the n-gram order must be at least 1")
    if args.order == 1:
        log.warning("--order 1: a unigram ARPA is valid, but KenLM refuses to load models below order 2")
    lmplz = args.engine in ("auto", "lmplz") and external.available("lmplz")
    if args.engine == "lmplz" and not lmplz:
        raise ToolkitError(f"--engine lmplz: lmplz is not on PATH ({external.install_hint('lmplz')}); "
                           "or use --engine toolkit")
    sentences = read_text(args.text)
    start = time.perf_counter()
    if lmplz:
        train_with_lmplz(args)
    else:
        model, info = train_kneser_ney(sentences, args.order, args.prune, args.discount_fallback)
        write_arpa(model, args.out)
        log.info("modified Kneser-Ney: %d sentences, %d words; discounts per order %s",
                 info.num_sentences, info.num_tokens,
                 ", ".join("(" + ", ".join(f"{d:.3f}" for d in ds) + ")" for ds in info.discounts))
    counts = validate_arpa(args.out)
    log.info("wrote %s: order %d, n-grams per order %s (%.1f s, %s)", args.out, len(counts), counts,
             time.perf_counter() - start, "lmplz" if lmplz else "toolkit estimator")


def run_perplexity(args: argparse.Namespace) -> None:
    model = read_arpa(args.lm)
    sentences = [s for s in read_text(args.text) if s.split()]
    vocab = model.ngrams[0]
    oov = sum(1 for s in sentences for w in s.split() if (w,) not in vocab)
    tokens = sum(len(s.split()) + 1 for s in sentences)
    logprob = sum(model.score(s) for s in sentences)
    ppl = 10.0 ** (-logprob / tokens) if tokens else float("nan")
    print(f"{args.text}: {len(sentences)} sentences, {tokens} tokens (incl. </s>), {oov} OOVs, "
          f"log10 prob {logprob:.2f}, perplexity {ppl:.2f}")


def run(args: argparse.Namespace) -> int:
    if args.subcommand == "train":
        run_train(args)
    elif args.subcommand == "perplexity":
        run_perplexity(args)
    return 0
