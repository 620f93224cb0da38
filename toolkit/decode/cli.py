"""`toolkit decode`: a CTC checkpoint over a cut manifest, with one or more decoding methods.

The model runs once per batch and every method decodes the same log-probs
(`toolkit.decode.search`). Each method writes recogs.txt, errs.txt, errs-cer.txt,
wer-summary.txt, results.json (`toolkit.score.write_reports`) and timing.txt to --out-dir (or
--out-dir/<method> with --methods), and logs the real-time factor. Graphs are never built here:
`toolkit compile-graph` builds them, and a missing or stale graph is a one-line error naming it.

LM weight and word insertion penalty (`toolkit.decode.tuning`): on dev,
`--sweep-lm-scales 0.3,0.5,0.7,1,1.5 --sweep-word-penalties -1,0,1` decodes each lattice once, scores
every setting, and writes sweep.txt, tuning.json and the usual outputs with the best setting; on
test, `--tuning-from DEV_OUT_DIR` applies each method's chosen setting. results.json records the
LM scale and penalty used and where they were chosen, and the OOV rate of the references against
the lang dir's words.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from contextlib import ExitStack
from pathlib import Path

from toolkit.data import read_cuts
from toolkit.decode.chunking import ChunkOptions
from toolkit.decode.options import SearchOptions
from toolkit.decode.search import METHODS, SWEEP_METHODS, decode_cuts, make_searcher
from toolkit.decode.tuning import (TUNING_FILE, checkpoint_key, choose, forget_sweep, parse_grid, read_tuning, score_sweep,
                                   sweep_settings, write_sweep)
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
    # default None (meaning the SearchOptions default) so that a value given together with --tuning-from
    # can be told from no value
    parser.add_argument("--lm-scale", type=float, default=None,
                        help=f"weight of the LM against the acoustics (rescoring LM; first-pass LM of hlg, k2-hlg; "
                             f"default {d.lm_scale:g})")
    parser.add_argument("--word-penalty", type=float, default=None,
                        help=f"cost per hypothesised word after the LM scale (word insertion penalty; methods with "
                             f"words; default {d.word_penalty:g})")
    parser.add_argument("--num-paths", type=int, default=d.num_paths,
                        help="n-best rescoring with the N best word sequences (default: hlg-rescore the whole "
                             "lattice, k2-nbest-rescore 100; 0 = whole lattice, hlg-rescore only)")
    parser.add_argument("--nbest-scale", type=float, default=d.nbest_scale,
                        help="k2-nbest-rescore: lattice scores are scaled by this before sampling the paths")
    parser.add_argument("--probe-arcs", type=float, default=d.probe_arcs,
                        help="CPU lattice search (hlg sweeps, hlg-rescore): lower the beams, with a warning, for an "
                             "utterance whose least certain frames keep more lattice arcs per frame than this "
                             "(a barely trained model); 0 = search exactly as configured")


def search_options(args: argparse.Namespace) -> SearchOptions:
    """The `SearchOptions` of the flags of `add_search_arguments`, checked (one-line errors)."""
    d = SearchOptions()
    opts = SearchOptions(acoustic_scale=args.acoustic_scale, beam=args.beam, lattice_beam=args.lattice_beam,
                         max_active=args.max_active, min_active=args.min_active,
                         lm_scale=d.lm_scale if args.lm_scale is None else args.lm_scale,
                         word_penalty=d.word_penalty if args.word_penalty is None else args.word_penalty,
                         num_paths=args.num_paths, nbest_scale=args.nbest_scale, probe_arcs=args.probe_arcs)
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
    parser.add_argument("--sweep-lm-scales", default=None, metavar="S1,S2,...",
                        help="tune on this set: LM scales to try (with --sweep-word-penalties; hlg, k2-hlg and the rescoring methods)")
    parser.add_argument("--sweep-word-penalties", default=None, metavar="P1,P2,...",
                        help="tune on this set: word insertion penalties to try")
    parser.add_argument("--tuning-from", default=None, metavar="DEV_OUT_DIR",
                        help="use the LM scale and word penalty chosen by a sweep (DEV_OUT_DIR/<method>/tuning.json)")
    parser.add_argument("--nj", type=int, default=1, help="worker processes for the CPU WFST search")
    parser.add_argument("--device", default="auto", help="model device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="model precision (auto: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--max-duration", type=float, default=200.0, help="seconds of audio per model batch")
    parser.add_argument("--chunk-above", type=float, default=60.0,
                        help="utterances longer than this (seconds) run alone in overlapping windows")
    parser.add_argument("--chunk-s", type=float, default=ChunkOptions.chunk_s,
                        help="window length of a chunked utterance (s; default %(default)s)")
    parser.add_argument("--context-s", type=float, default=ChunkOptions.context_s,
                        help="context kept on each side of a window's frames (s; default %(default)s)")
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


def method_options(methods: list[str], opts: SearchOptions, args: argparse.Namespace, single: bool
                   ) -> tuple[dict[str, SearchOptions], dict[str, dict]]:
    """Per method: the search options (with the tuned LM scale / penalty of --tuning-from) and what
    results.json records about them."""
    per_method, records = {}, {}
    for m in methods:
        o, rec = opts, {}
        if m in SWEEP_METHODS:
            if args.tuning_from:
                rec = read_tuning(args.tuning_from, m, single, args.checkpoint, args.lang_dir)
                o = dataclasses.replace(opts, lm_scale=rec["lm_scale"], word_penalty=rec["word_penalty"])
            else:
                rec = {"lm_scale": opts.lm_scale, "word_penalty": opts.word_penalty, "tuned_on": None}
        per_method[m], records[m] = o, rec
    return per_method, records


def reference_oov(refs: dict[str, str], lang_dir: Path | None) -> dict | None:
    """OOV rate of the references against the lang dir's words (what no graph can recognise)."""
    if lang_dir is None or not (lang_dir / "words.txt").is_file():
        return None
    from toolkit.lm.vocab import oov_rate
    from toolkit.text.symbols import read_symbol_table

    words = set(read_symbol_table(lang_dir / "words.txt"))
    rate, oov, tokens = oov_rate(refs.values(), words)
    return {"oov_rate": 100.0 * rate, "oov_words": oov, "words": tokens, "lexicon": str(lang_dir / "words.txt")}


def check_references(cuts, path: str) -> None:
    """`toolkit decode` scores: cuts without a reference text would be scored as empty references
    (a WER of "inf", or every word of theirs an insertion, which also steers an LM-weight sweep).
    Any such cut is an error."""
    empty = [c.id for c in cuts if not " ".join((s.text or "") for s in c.supervisions).strip()]
    if len(empty) == len(cuts):
        raise ToolkitError(f"--cuts {path}: no cut has a reference text; decode scores against references: "
                           "to transcribe audio without them use `toolkit transcribe`")
    if empty:
        raise ToolkitError(f"--cuts {path}: {len(empty)} of {len(cuts)} cuts have no reference text (e.g. "
                           f"{empty[0]}), and would be scored as insertions only: drop them from the manifest "
                           "(lhotse's CutSet.filter) or transcribe them with `toolkit transcribe`")


def normalized_references(refs: dict[str, str], languages: dict[str, str | None], model_language: str | None,
                          path: str) -> dict[str, str]:
    """The references in the form the model writes (`normalize_text` of each cut's language, else
    the model's): a manifest kept as a corpus gives it (lhotse's recipes keep case and
    punctuation) would otherwise count "Lungo" against "lungo", and "strada." against "strada",
    as errors. A warning says how many references were normalised."""
    from toolkit.text.normalize import normalize_text

    out, changed = {}, []
    for cid, text in refs.items():
        language = languages.get(cid) or model_language
        out[cid] = normalize_text(text, language) if language else text
        if out[cid] != text:
            changed.append(cid)
    if changed:
        log.warning("--cuts %s: %d of %d reference texts were not normalised (e.g. %r -> %r); they are scored "
                    "normalised, as the model writes its output", path, len(changed), len(refs),
                    refs[changed[0]], out[changed[0]])
    return out


def run(args: argparse.Namespace) -> int:
    from toolkit.model.checkpoint import build_model, config_of, load_checkpoint
    from toolkit.score import write_reports
    from toolkit.text.tokenizer import Tokenizer

    methods, subdirs = parse_methods(args)
    opts = search_options(args)
    lm_scales = parse_grid(args.sweep_lm_scales, "--sweep-lm-scales", positive=True)
    penalties = parse_grid(args.sweep_word_penalties, "--sweep-word-penalties")
    sweep = sweep_settings(lm_scales, penalties, opts.lm_scale, opts.word_penalty) if lm_scales or penalties else None
    if sweep and args.tuning_from:
        raise ToolkitError("give either the --sweep-* options (tune on this set) or --tuning-from (use a tuning), not both")
    if args.tuning_from and (args.lm_scale is not None or args.word_penalty is not None):
        raise ToolkitError("give either --lm-scale/--word-penalty or --tuning-from (which sets both from the dev "
                           "tuning), not both")
    swept = [m for m in methods if m in SWEEP_METHODS] if sweep else []
    if sweep and not swept:
        raise ToolkitError(f"--sweep-*: none of the methods {','.join(methods)} can be swept; use {', '.join(SWEEP_METHODS)}")
    per_method, tuning = method_options(methods, opts, args, single=not subdirs)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["kind"] != "ctc":
        raise ToolkitError(f"--checkpoint {args.checkpoint}: a {ckpt['kind']} checkpoint has no CTC head; fine-tune it first")
    tokenizer = Tokenizer.from_dict(ckpt.get("vocab"))
    cuts = read_cuts(args.cuts)
    check_references(cuts, args.cuts)
    device = resolve_device(args.device)
    lang_dir = Path(args.lang_dir) if args.lang_dir else None
    with ExitStack() as stack:
        # searchers first: a missing graph fails before the model is loaded
        searchers = {m: stack.enter_context(make_searcher(m, per_method[m], lang_dir, tokenizer, device, nj=args.nj,
                                                          sweep=sweep if m in swept else None))
                     for m in methods}
        model = build_model(ckpt).to(device).eval()
        normalize = bool(config_of(ckpt).normalize)
        model_language = (ckpt.get("vocab") or {}).get("language")
        del ckpt
        chunk = ChunkOptions(chunk_s=args.chunk_s, context_s=args.context_s)
        chunk.check()
        result = decode_cuts(model, cuts, searchers, normalize, device, args.max_duration, args.chunk_above, chunk,
                             args.dtype)

    result.refs = normalized_references(result.refs, result.languages, model_language, args.cuts)
    out_root = Path(args.out_dir)
    languages = result.languages if any(result.languages.values()) else None
    oov = reference_oov(result.refs, lang_dir)
    for m in methods:
        out_dir = out_root / m if subdirs else out_root
        hyps = result.hyps[m]
        if m in swept:
            points = score_sweep(result.refs, result.sweeps[m], sweep)
            best = choose(points)
            k = points.index(best)
            hyps = {c: h[k] for c, h in result.sweeps[m].items()}
            write_sweep(out_dir, m, points, best, str(args.cuts), args.checkpoint, lang_dir)
            tuning[m] = {"lm_scale": best.lm_scale, "word_penalty": best.word_penalty,
                         "tuned_on": str(out_dir / TUNING_FILE)}
            log.info("decode: %s sweep over %d settings: best lm_scale %g, word_penalty %g (%%WER %.2f); see %s",
                     m, len(points), best.lm_scale, best.word_penalty, best.wer, out_dir / "sweep.txt")
        else:
            forget_sweep(out_dir)
        summary = result.timings[m].summary()
        extra = {"checkpoint": checkpoint_key(args.checkpoint),
                 **({"lm": tuning[m]} if m in tuning and tuning[m] else {}),
                 **({"oov": oov} if oov and m != "greedy" else {})}
        write_reports(out_dir, result.refs, hyps, args.key or m, languages=languages, timing=summary, extra=extra)
        result.timings[m].write(out_dir / "timing.txt")
        log.info("decode: %s -> %s (RTF %.4f: forward %.1f s + search %.1f s over %.1f s of audio)", m, out_dir,
                 summary["rtf"], summary["forward_seconds"], summary["search_seconds"], summary["audio_seconds"])
    if oov:
        log.info("decode: %.2f%% of the reference words (%d of %d) are not in %s", oov["oov_rate"], oov["oov_words"],
                 oov["words"], oov["lexicon"])
    return 0
