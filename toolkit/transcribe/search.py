"""The one adapter between `toolkit transcribe` and `toolkit decode`'s searchers.

Everything transcribe needs from decoding goes through here: the method names, the search options
(the same flags and defaults as `toolkit decode`), the check that a lang dir's tokens are the
model's, and a searcher per method (`greedy`: `toolkit.decode.greedy.greedy_ids`; `hlg`,
`hlg-rescore`: kaldi-decoder through `toolkit.decode.wfst.WfstRunner` over the lang dir's HLG.fst,
words from `toolkit.lm.graph.Lang`; `k2-*`: `toolkit.decode.k2_decode.K2Search`). When the
searchers move out of `toolkit/decode/cli.py`, only the imports below change.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch

from toolkit.decode.cli import METHODS, check_vocab, make_searcher
from toolkit.utils import ToolkitError

__all__ = ["METHODS", "add_search_arguments", "open_search", "Search"]

# (log_probs (B, T, V), lengths (B,)) -> one text per utterance
Search = Callable[[torch.Tensor, torch.Tensor], list[str]]


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """`--method`, `--lang-dir` and the search options, as `toolkit decode` names them."""
    parser.add_argument("--method", default="greedy", choices=METHODS,
                        help="greedy (no LM; the checkpoint alone), hlg / hlg-rescore (kaldi-decoder over the "
                             "lang dir's HLG.fst), k2-* (k2, optional)")
    parser.add_argument("--lang-dir", help="lang dir with the graphs (every method but greedy); its tokens.txt "
                                           "must be the checkpoint's vocabulary")
    parser.add_argument("--lm", help="ARPA LM to compile HLG.fst from (reused while unchanged)")
    parser.add_argument("--order", type=int, default=None, help="n-gram order of --lm to use (default: all)")
    parser.add_argument("--rescore-lm", help="larger ARPA LM for hlg-rescore / k2-nbest-rescore")
    parser.add_argument("--acoustic-scale", type=float, default=1.0, help="scale of the log-probs against the LM")
    parser.add_argument("--lm-scale", type=float, default=1.0, help="weight of the rescoring LM")
    parser.add_argument("--beam", type=float, default=16.0, help="search beam (cost units)")
    parser.add_argument("--lattice-beam", type=float, default=8.0, help="lattice beam of hlg-rescore")
    parser.add_argument("--max-active", type=int, default=3000, help="most active states per frame")
    parser.add_argument("--num-paths", type=int, default=0,
                        help="rescoring: 0 = whole lattice (hlg-rescore), N = the N best word sequences")
    parser.add_argument("--nj", type=int, default=1, help="worker processes for the CPU WFST search")


@contextlib.contextmanager
def open_search(args: argparse.Namespace, tokenizer, device: torch.device) -> Iterator[Search]:
    """The searcher of `args.method` (checked against the lang dir first), closed on exit."""
    lang_dir = Path(args.lang_dir) if args.lang_dir else None
    if args.method != "greedy":
        if lang_dir is None:
            raise ToolkitError(f"--method {args.method} needs --lang-dir (the graphs and words.txt of the model's "
                               "lang dir); --method greedy needs only the checkpoint")
        check_vocab(tokenizer, lang_dir)
    with make_searcher(args.method, args, lang_dir, tokenizer, device) as searcher:
        yield lambda log_probs, lengths: [text for text, _ in searcher(log_probs, lengths)]
