"""`toolkit decode`: a CTC checkpoint over a cut manifest, with one or more decoding methods.

The model runs once per batch and every method decodes the same log-probs
(`toolkit.decode.search`). Each method writes recogs.txt, errs.txt, errs-cer.txt,
wer-summary.txt, results.json (`toolkit.score.write_reports`) and timing.txt to --out-dir (or
--out-dir/<method> with --methods), and logs the real-time factor. Graphs are never built here:
`toolkit compile-graph` builds them, and a missing or stale graph is a one-line error naming it.
"""
from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from pathlib import Path

from toolkit.data import read_cuts
from toolkit.decode.options import RESCORE_METHODS, SearchOptions
from toolkit.decode.search import METHODS, decode_cuts, make_searcher
from toolkit.utils import ToolkitError, resolve_device

log = logging.getLogger("toolkit.decode")


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The `SearchOptions` flags (shared by every command that decodes)."""
    d = SearchOptions()
    parser.add_argument("--acoustic-scale", type=float, default=d.acoustic_scale,
                        help="scale of the log-probs against the graph's LM costs")
    parser.add_argument("--beam", type=float, default=d.beam, help="search beam (cost units; k2: search_beam)")
    parser.add_argument("--lattice-beam", type=float, default=d.lattice_beam,
                        help="lattice pruning beam of the lattice methods (k2: output_beam)")
    parser.add_argument("--max-active", type=int, default=d.max_active, help="most active states per frame")
    parser.add_argument("--min-active", type=int, default=d.min_active, help="fewest active states per frame")
    parser.add_argument("--lm-scale", type=float, default=d.lm_scale, help="weight of the rescoring LM")
    parser.add_argument("--lm-scales", default=None,
                        help="k2 rescoring methods: also score these comma-separated LM scales, all from the same "
                             "lattice, into <method>/lm_scale_<s>/ and <method>/lm-scales.json (e.g. 0.3,0.5,0.7,1.0)")
    parser.add_argument("--lm-scale-from", default=None, metavar="DEV_METHOD_DIR",
                        help="use the best LM scale recorded in DEV_METHOD_DIR/lm-scales.json (a --lm-scales "
                             "decoding of the dev set) instead of --lm-scale")
    parser.add_argument("--num-paths", type=int, default=d.num_paths,
                        help="n-best rescoring with the N best word sequences (default: hlg-rescore the whole "
                             "lattice, k2-nbest-rescore 100; 0 = whole lattice, hlg-rescore only)")
    parser.add_argument("--nbest-scale", type=float, default=d.nbest_scale,
                        help="k2-nbest-rescore: lattice scores are scaled by this before sampling the paths")


def search_options(args: argparse.Namespace) -> SearchOptions:
    """The `SearchOptions` of the flags of `add_search_arguments`, checked (one-line errors)."""
    from toolkit.decode.lm_scales import best_lm_scale, parse_scales

    lm_scale = args.lm_scale
    if getattr(args, "lm_scale_from", None):
        if lm_scale != SearchOptions.lm_scale:
            raise ToolkitError("give either --lm-scale or --lm-scale-from, not both")
        lm_scale = best_lm_scale(args.lm_scale_from)
        log.info("LM scale %g: the best in %s", lm_scale, args.lm_scale_from)
    opts = SearchOptions(acoustic_scale=args.acoustic_scale, beam=args.beam, lattice_beam=args.lattice_beam,
                         max_active=args.max_active, min_active=args.min_active, lm_scale=lm_scale,
                         num_paths=args.num_paths, nbest_scale=args.nbest_scale,
                         lm_scales=parse_scales(getattr(args, "lm_scales", None)))
    opts.check()
    return opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="CTC checkpoint (best.pt, averaged model, ...)")
    parser.add_argument("--cuts", required=True, help="lhotse cut manifest (*.jsonl.gz) with reference texts")
    parser.add_argument("--lang-dir", help="lang dir with graphs compiled by `toolkit compile-graph` "
                                           "(needed by every method but greedy)")
    parser.add_argument("--method", default=None, choices=METHODS, help="one decoding method (writes into --out-dir)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods, each written into --out-dir/<method> (e.g. greedy,hlg)")
    parser.add_argument("--out-dir", required=True, help="decode/<test-set> directory")
    add_search_arguments(parser)
    parser.add_argument("--nj", type=int, default=1, help="worker processes for the CPU WFST search")
    parser.add_argument("--device", default="auto", help="model device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--max-duration", type=float, default=200.0, help="seconds of audio per model batch")
    parser.add_argument("--key", default=None, help="name of the setting in wer-summary.txt (default: the method)")
    parser.add_argument("--verbose", action="store_true")


def parse_methods(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The methods asked for, and whether each gets its own subdirectory."""
    if args.method and args.methods:
        raise ToolkitError("give either --method or --methods, not both")
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ToolkitError(f"--methods {args.methods!r}: unknown {bad}; choose from {', '.join(METHODS)}")
        return list(dict.fromkeys(methods)), True
    return [args.method or "greedy"], False


def write_lm_scale_sweep(out_dir: Path, method: str, opts: SearchOptions, result, languages) -> None:
    """Score every LM scale of the sweep into out_dir/lm_scale_<s>/ and record them (lm-scales.json)."""
    from toolkit.decode.lm_scales import write_sweep
    from toolkit.decode.options import lm_scale_key
    from toolkit.score import write_reports

    reports = {}
    for scale in opts.lm_scales:
        key = lm_scale_key(scale)
        reports[scale] = write_reports(out_dir / key, result.refs, result.alternatives[method][key], f"{method} {key}",
                                       languages=languages)
    best = write_sweep(out_dir, reports)
    log.info("decode: %s: best LM scale on this set %g (WER %.2f%%); see %s/lm-scales.json", method, best,
             reports[best].wer.rate, out_dir)


def run(args: argparse.Namespace) -> int:
    from toolkit.model.checkpoint import build_model, config_of, load_checkpoint
    from toolkit.score import write_reports
    from toolkit.text.tokenizer import Tokenizer

    methods, subdirs = parse_methods(args)
    opts = search_options(args)
    if opts.lm_scales and not set(methods) & set(RESCORE_METHODS):
        raise ToolkitError(f"--lm-scales: only the k2 rescoring methods ({', '.join(RESCORE_METHODS)}) sweep LM scales")
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["kind"] != "ctc":
        raise ToolkitError(f"--checkpoint {args.checkpoint}: a {ckpt['kind']} checkpoint has no CTC head; fine-tune it first")
    tokenizer = Tokenizer.from_dict(ckpt.get("vocab"))
    cuts = read_cuts(args.cuts)
    device = resolve_device(args.device)
    lang_dir = Path(args.lang_dir) if args.lang_dir else None
    with ExitStack() as stack:
        # searchers first: a missing graph fails before the model is loaded
        searchers = {m: stack.enter_context(make_searcher(m, opts, lang_dir, tokenizer, device, nj=args.nj))
                     for m in methods}
        model = build_model(ckpt).to(device).eval()
        normalize = bool(config_of(ckpt).normalize)
        del ckpt
        result = decode_cuts(model, cuts, searchers, normalize, device, args.max_duration)

    out_root = Path(args.out_dir)
    languages = result.languages if any(result.languages.values()) else None
    for m in methods:
        out_dir = out_root / m if subdirs else out_root
        summary = result.timings[m].summary()
        write_reports(out_dir, result.refs, result.hyps[m], args.key or m, languages=languages, timing=summary)
        result.timings[m].write(out_dir / "timing.txt")
        if result.alternatives.get(m):
            write_lm_scale_sweep(out_dir, m, opts, result, languages)
        log.info("decode: %s -> %s (RTF %.4f: forward %.1f s + search %.1f s over %.1f s of audio)", m, out_dir,
                 summary["rtf"], summary["forward_seconds"], summary["search_seconds"], summary["audio_seconds"])
    return 0
