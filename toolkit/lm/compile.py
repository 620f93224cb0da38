"""`toolkit compile-graph`: H.fst, L_disambig.fst, G_<order>.fst and HLG.fst in a lang dir.

    toolkit compile-graph --lang-dir data/lang_char --lm lm_3.arpa [--rescore-lm 4-gram.arpa.gz] \
        [--dev-cuts data/manifests/..._dev.jsonl.gz] [--min-coverage 0.5] [--language en]

Graphs are reused until an input file (tokens.txt, words.txt, lexicon.txt, the ARPA LM) or an
option changes; `--rescore-lm` also prepares the larger G used by `toolkit decode --method hlg-rescore`;
`--k2` adds their k2 forms (HLG.pt, G_<n>gram.pt) for the k2 methods.
External LMs are welcome as they are (plain or gzipped ARPA, any case): their words are
normalised like the transcripts (`--language`, default the lang dir's). An LM that knows fewer
than `--min-coverage` of the lexicon's words is refused with one line naming the share, the OOV
rate of the dev transcripts against the lexicon (`--dev-cuts` / `--dev-text`) and the likely cause.
"""
from __future__ import annotations

import argparse
import logging

from toolkit.utils import ToolkitError

log = logging.getLogger("toolkit.compile-graph")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toolkit.lm.graph import DEFAULT_MIN_COVERAGE

    parser.add_argument("--lang-dir", required=True, help="icefall-style lang dir (tokens.txt, words.txt, lexicon.txt)")
    parser.add_argument("--lm", help="ARPA LM for G and HLG, plain or gzipped (without it only H and L are built)")
    parser.add_argument("--order", type=int, default=None, help="highest n-gram order of --lm to use (default: all)")
    parser.add_argument("--rescore-lm", help="larger ARPA LM: also build its G_<order>_rescore.fst for lattice rescoring")
    parser.add_argument("--language", default=None,
                        help="normalise the LMs' words for this language (default: the lang dir's, from lang-dir)")
    parser.add_argument("--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE,
                        help="refuse an LM that has fewer than this share of the lexicon's words (0..1)")
    parser.add_argument("--dev-cuts", nargs="+", default=None,
                        help="dev manifest(s): report the OOV rate of their transcripts against the lexicon")
    parser.add_argument("--dev-text", default=None, help="dev text (one normalised sentence a line), as --dev-cuts")
    parser.add_argument("--compact-topo", action="store_true", help="O(V) CTC topology (large word-piece vocabularies)")
    parser.add_argument("--k2", action="store_true",
                        help="also save HLG.pt and (with a rescoring LM) G_<n>gram.pt for the k2 methods (needs k2)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs did not change")
    parser.add_argument("--verbose", action="store_true")


def dev_sentences(args: argparse.Namespace) -> list[str] | None:
    if args.dev_cuts:
        from toolkit.text.lang_dir import read_transcripts

        return read_transcripts(args.dev_cuts)
    if args.dev_text:
        from toolkit.utils import read_utf8_lines

        return read_utf8_lines(args.dev_text, "--dev-text", "the dev transcripts, one sentence a line")
    return None


def run(args: argparse.Namespace) -> int:
    from toolkit.lm.graph import compile_graphs, rescore_grammar

    if args.order is not None and args.order < 1:
        raise ToolkitError(f"--order {args.order}: must be at least 1")
    if not 0.0 <= args.min_coverage <= 1.0:
        raise ToolkitError(f"--min-coverage {args.min_coverage}: give a share between 0 and 1")
    if args.dev_cuts and args.dev_text:
        raise ToolkitError("give either --dev-cuts or --dev-text, not both")
    dev = dev_sentences(args)
    paths = compile_graphs(args.lang_dir, args.lm, order=args.order, compact=args.compact_topo, force=args.force,
                           language=args.language, min_coverage=args.min_coverage, dev_sentences=dev)
    rebuilt = list(paths.rebuilt)
    if args.rescore_lm:
        g, built = rescore_grammar(args.lang_dir, args.rescore_lm, force=args.force, language=args.language,
                                   min_coverage=args.min_coverage)
        if built:
            rebuilt.append(g.name)
    if rebuilt:
        log.info("compile-graph: built %s in %s", ", ".join(rebuilt), args.lang_dir)
    else:
        log.info("compile-graph: graphs in %s are up to date with their inputs; skipping", args.lang_dir)
    if dev is not None and paths.coverage is None:
        from toolkit.lm.graph import Lang
        from toolkit.lm.vocab import oov_rate

        rate, oov, tokens = oov_rate(dev, {w for w, _ in Lang.load(args.lang_dir).lexicon})
        log.info("compile-graph: dev OOV rate against the lexicon %.2f%% (%d of %d words)", 100 * rate, oov, tokens)
    if args.k2:
        from toolkit.lm.k2_graph import save_k2_graphs, save_k2_rescore_grammar

        save_k2_graphs(args.lang_dir, args.lm, compact=args.compact_topo, order=args.order)
        save_k2_rescore_grammar(args.lang_dir)  # the recorded rescoring G, if any
    return 0
