"""`toolkit decode`: a CTC checkpoint over a cut manifest, with one or more decoding methods.

Methods: ``greedy`` (no LM), ``hlg`` (kaldi-decoder one-best over HLG.fst, CPU), ``hlg-rescore``
(lattice rescored with --rescore-lm), ``k2-ctc``, ``k2-hlg``, ``k2-nbest-rescore`` (k2, GPU when
available). The model runs once per batch; every method decodes the same log-probs. Each method
writes recogs.txt, errs.txt, wer-summary.txt (toolkit.score.write_reports) and timing.txt to the
--out-dir (or --out-dir/<method> when several methods are given), and logs the real-time factor.
"""
from __future__ import annotations

import argparse
import logging
import time
from contextlib import ExitStack
from pathlib import Path

from toolkit.data import read_cuts
from toolkit.utils import ToolkitError, resolve_device

log = logging.getLogger("toolkit.decode")

METHODS = ("greedy", "hlg", "hlg-rescore", "k2-ctc", "k2-hlg", "k2-nbest-rescore")
WFST = ("hlg", "hlg-rescore")
K2 = ("k2-ctc", "k2-hlg", "k2-nbest-rescore")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="CTC checkpoint (best.pt, averaged model, ...)")
    parser.add_argument("--cuts", required=True, help="lhotse cut manifest (*.jsonl.gz) with reference texts")
    parser.add_argument("--lang-dir", help="lang dir of the graphs (needed by every method but greedy)")
    parser.add_argument("--method", default=None, choices=METHODS, help="one decoding method (writes into --out-dir)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods, each written into --out-dir/<method> (e.g. greedy,hlg)")
    parser.add_argument("--out-dir", required=True, help="decode/<test-set> directory")
    parser.add_argument("--lm", help="ARPA LM for HLG (compiled into the lang dir, reused while unchanged)")
    parser.add_argument("--order", type=int, default=None, help="n-gram order of --lm to use (default: all)")
    parser.add_argument("--rescore-lm", help="larger ARPA LM for hlg-rescore / k2-nbest-rescore")
    parser.add_argument("--acoustic-scale", type=float, default=1.0, help="scale of the log-probs against the LM")
    parser.add_argument("--lm-scale", type=float, default=1.0, help="weight of the rescoring LM")
    parser.add_argument("--beam", type=float, default=16.0, help="search beam (cost units)")
    parser.add_argument("--lattice-beam", type=float, default=8.0, help="lattice beam of hlg-rescore")
    parser.add_argument("--max-active", type=int, default=3000, help="most active states per frame")
    parser.add_argument("--num-paths", type=int, default=0,
                        help="rescoring: 0 = whole lattice (hlg-rescore), N = the N best word sequences "
                             "(k2-nbest-rescore uses 100 when 0)")
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


def batches(cuts, max_duration: float):
    """Cuts sorted by duration (less padding), grouped into batches of at most max_duration seconds."""
    batch, total = [], 0.0
    for cut in sorted(cuts, key=lambda c: c.duration):
        if batch and total + cut.duration > max_duration:
            yield batch
            batch, total = [], 0.0
        batch.append(cut)
        total += cut.duration
    if batch:
        yield batch


def check_vocab(tokenizer, lang_dir: Path) -> None:
    """The model's output ids must mean the lang dir's tokens, else the graphs decode garbage."""
    from toolkit.lm.graph import read_symbols

    table = read_symbols(lang_dir / "tokens.txt")
    lang_tokens = [t for t, _ in sorted(table.items(), key=lambda kv: kv[1])
                   if not (t.startswith("#") and t[1:].isdigit())]
    if lang_tokens != list(tokenizer.tokens):
        raise ToolkitError(f"{lang_dir}/tokens.txt does not match the checkpoint's vocabulary "
                           f"({len(lang_tokens)} vs {len(tokenizer.tokens)} tokens); use the lang dir the model was trained with")


def run(args: argparse.Namespace) -> int:
    from toolkit.model.checkpoint import build_model, config_of, load_checkpoint
    from toolkit.text.tokenizer import Tokenizer

    methods, subdirs = parse_methods(args)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["kind"] != "ctc":
        raise ToolkitError(f"--checkpoint {args.checkpoint}: a {ckpt['kind']} checkpoint has no CTC head; fine-tune it first")
    tokenizer = Tokenizer.from_dict(ckpt.get("vocab"))
    lang_dir = Path(args.lang_dir) if args.lang_dir else None
    if any(m != "greedy" for m in methods):
        if lang_dir is None:
            raise ToolkitError(f"--method {','.join(methods)} needs --lang-dir (graphs and words.txt)")
        check_vocab(tokenizer, lang_dir)
    cuts = read_cuts(args.cuts)
    device = resolve_device(args.device)
    model = build_model(ckpt).to(device).eval()
    normalize = bool(config_of(ckpt).normalize)
    del ckpt

    out_root = Path(args.out_dir)
    with ExitStack() as stack:
        searchers = {m: stack.enter_context(make_searcher(m, args, lang_dir, tokenizer, device)) for m in methods}
        refs, langs, hyps, timings = decode_all(model, cuts, searchers, normalize, device, args.max_duration)
    from toolkit.score import write_reports

    for m in methods:
        out_dir = out_root / m if subdirs else out_root
        key = args.key or m
        summary = timings[m].summary()
        write_reports(out_dir, refs, hyps[m], key, languages=langs if any(langs.values()) else None, timing=summary)
        timings[m].write(out_dir / "timing.txt")
        log.info("decode: %s -> %s (RTF %.4f: forward %.1f s + search %.1f s over %.1f s of audio)", m, out_dir,
                 summary["rtf"], summary["forward_seconds"], summary["search_seconds"], summary["audio_seconds"])
    return 0


def decode_all(model, cuts, searchers: dict, normalize: bool, device, max_duration: float):
    """Model forward per batch, every searcher on the same log-probs; refs, languages, hyps and timings."""
    import torch
    from lhotse import CutSet
    from tqdm import tqdm

    from toolkit.data.dataset import AudioDataset
    from toolkit.decode.timing import Timing

    dataset = AudioDataset(normalize=normalize, drop_unfit=False)
    refs: dict[str, str] = {}
    langs: dict[str, str | None] = {}
    hyps: dict[str, dict[str, str]] = {m: {} for m in searchers}
    timings = {m: Timing(m) for m in searchers}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with tqdm(total=len(cuts), desc="decode", unit="utt") as bar:
        for batch in batches(cuts, max_duration):
            data = dataset[CutSet.from_cuts(batch)]
            t0 = time.perf_counter()
            with torch.inference_mode(), autocast:
                log_probs, out_lengths = model(data["audio"].to(device), data["lengths"].to(device))
            log_probs = log_probs.float()
            if device.type == "cuda":
                torch.cuda.synchronize()
            forward = time.perf_counter() - t0
            durations = [c.duration for c in batch]
            share = [forward * d / max(sum(durations), 1e-9) for d in durations]
            for i, cid in enumerate(data["cut_ids"]):
                refs[cid] = data["texts"][i]
                langs[cid] = data["languages"][i] if "languages" in data else None
            for m, searcher in searchers.items():
                for i, (cid, (text, secs)) in enumerate(zip(data["cut_ids"], searcher(log_probs, out_lengths))):
                    hyps[m][cid] = text
                    timings[m].add(cid, durations[i], share[i], secs)
            bar.update(len(batch))
    return refs, langs, hyps, timings


def make_searcher(method: str, args, lang_dir: Path | None, tokenizer, device):
    """A context manager yielding ``search(log_probs (B,T,V), lengths) -> [(text, seconds)]``."""
    if method == "greedy":
        return _GreedySearch(tokenizer)
    if method in WFST:
        return _WfstSearch(method, args, lang_dir)
    from toolkit.decode.k2_decode import K2Search

    return K2Search(method, args, lang_dir, tokenizer, device)


class _GreedySearch:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __call__(self, log_probs, lengths):
        from toolkit.decode.greedy import greedy_ids

        t0 = time.perf_counter()
        ids = greedy_ids(log_probs, lengths, blank=0)
        per = (time.perf_counter() - t0) / max(len(ids), 1)
        return [(self.tokenizer.decode(x), per) for x in ids]


class _WfstSearch:
    """kaldi-decoder over HLG.fst (compiled from --lm when given, else taken from the lang dir)."""

    def __init__(self, method: str, args, lang_dir: Path):
        from toolkit.decode.wfst import WfstOptions, WfstRunner, check_graph
        from toolkit.lm.graph import Lang, compile_graphs

        self.lang = Lang.load(lang_dir)
        if args.lm:
            compile_graphs(lang_dir, args.lm, order=args.order)
        hlg = check_graph(lang_dir / "HLG.fst", "HLG.fst")
        rescore_g = None
        if method == "hlg-rescore":
            from toolkit.lm.compile import find_rescore_grammar

            rescore_g = find_rescore_grammar(lang_dir, args.rescore_lm)
        opts = WfstOptions(acoustic_scale=args.acoustic_scale, beam=args.beam, max_active=args.max_active,
                           lattice_beam=args.lattice_beam, lm_scale=args.lm_scale, num_paths=args.num_paths)
        self.runner = WfstRunner(method, hlg, opts, nj=args.nj, rescore_g=rescore_g,
                                 backoff_id=self.lang.words["#0"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.runner.close()

    def __call__(self, log_probs, lengths):
        from toolkit.decode.wfst import to_matrix

        mats = [to_matrix(log_probs[i, : int(lengths[i])]) for i in range(log_probs.shape[0])]
        return [(" ".join(self.lang.words_of(ids)), secs) for ids, secs in self.runner.decode(mats)]
