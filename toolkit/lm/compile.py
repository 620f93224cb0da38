"""`toolkit compile-graph`: H.fst, L_disambig.fst, G_<order>.fst and HLG.fst in a lang dir.

Graphs are reused until an input file (tokens.txt, words.txt, lexicon.txt, the ARPA LM) or an
option changes; `--rescore-lm` also prepares the larger G used by `toolkit decode --method hlg-rescore`;
`--k2` adds their k2 forms (HLG.pt, G_<n>gram.pt) for the k2 methods.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from toolkit.utils import ToolkitError

log = logging.getLogger("toolkit.compile-graph")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lang-dir", required=True, help="icefall-style lang dir (tokens.txt, words.txt, lexicon.txt)")
    parser.add_argument("--lm", help="ARPA LM for G and HLG (without it only H and L are built)")
    parser.add_argument("--order", type=int, default=None, help="highest n-gram order of --lm to use (default: all)")
    parser.add_argument("--rescore-lm", help="larger ARPA LM: also build its G_<order>_rescore.fst for lattice rescoring")
    parser.add_argument("--compact-topo", action="store_true", help="O(V) CTC topology (large word-piece vocabularies)")
    parser.add_argument("--k2", action="store_true",
                        help="also save HLG.pt and (with a rescoring LM) G_<n>gram.pt for the k2 methods (needs k2)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs did not change")
    parser.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    from toolkit.lm.graph import compile_graphs, rescore_grammar

    if args.order is not None and args.order < 1:
        raise ToolkitError(f"--order {args.order}: must be at least 1")
    paths = compile_graphs(args.lang_dir, args.lm, order=args.order, compact=args.compact_topo, force=args.force)
    if args.rescore_lm:
        rescore_grammar(args.lang_dir, args.rescore_lm, force=args.force)
    if paths.rebuilt:
        log.info("compile-graph: built %s in %s", ", ".join(paths.rebuilt), args.lang_dir)
    else:
        log.info("compile-graph: graphs in %s are up to date with their inputs; skipping", args.lang_dir)
    if args.k2:
        from toolkit.lm.k2_graph import save_k2_graphs, save_k2_rescore_grammar

        save_k2_graphs(args.lang_dir, args.lm, compact=args.compact_topo, order=args.order)
        save_k2_rescore_grammar(args.lang_dir)  # the recorded rescoring G, if any
    return 0
