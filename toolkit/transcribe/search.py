"""The one adapter between `toolkit transcribe` and decoding's searchers (`toolkit.decode.search`).

Everything transcribe needs from decoding goes through here: the method names, the search options
(the flags of `toolkit decode`, declared by `toolkit.decode.cli.add_search_arguments`), and a
searcher per method (`make_searcher` checks the lang dir's tokens against the model's first).
Graphs are never built here: `toolkit compile-graph` builds them.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch

from toolkit.decode.cli import add_search_arguments as add_decode_search_arguments
from toolkit.decode.cli import search_options
from toolkit.decode.search import METHODS, make_searcher

__all__ = ["METHODS", "add_search_arguments", "open_search", "Search"]

# (log_probs (B, T, V), lengths (B,)) -> one text per utterance
Search = Callable[[torch.Tensor, torch.Tensor], list[str]]


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """`--method`, `--lang-dir`, `--nj` and the search options, as `toolkit decode` names them."""
    parser.add_argument("--method", default="greedy", choices=METHODS,
                        help="greedy (no LM; the checkpoint alone), hlg / hlg-rescore (kaldi-decoder over the "
                             "lang dir's HLG.fst), k2-* (k2, optional)")
    parser.add_argument("--lang-dir", help="lang dir with graphs compiled by `toolkit compile-graph` (every method "
                                           "but greedy); its tokens.txt must be the checkpoint's vocabulary")
    add_decode_search_arguments(parser)
    parser.add_argument("--nj", type=int, default=1, help="worker processes for the CPU WFST search")


@contextlib.contextmanager
def open_search(args: argparse.Namespace, tokenizer, device: torch.device) -> Iterator[Search]:
    """The searcher of `args.method` (the lang dir checked against the model first), closed on exit."""
    lang_dir = Path(args.lang_dir) if args.lang_dir else None
    with make_searcher(args.method, search_options(args), lang_dir, tokenizer, device, nj=args.nj) as searcher:
        yield lambda log_probs, lengths: [hyp.text for hyp in searcher(log_probs, lengths)]
