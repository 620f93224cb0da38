"""`toolkit transcribe --checkpoint CKPT [--method M] [--lang-dir L] [--format F] [--out-dir D] INPUT...`

Text (and word times) for audio files, folders, Kaldi wav.scp files and Lhotse manifests with a
fine-tuned CTC checkpoint. The checkpoint alone is enough for `--method greedy` (it carries its
vocabulary and the language its text was normalised for); `--lang-dir` adds the graphs of
`hlg` / `hlg-rescore` / `k2-*`. Recordings of any length: long ones run in overlapping windows
(`--chunk-s`, `--context-s`) and are searched in segments cut between words (`--max-segment-s`);
short ones are batched by total duration (`--max-duration`). See toolkit/transcribe/*.py for the
contracts, docs/ARCHITECTURE.md for the summary.

Exit status: 0 when every input was transcribed; 1 when some failed (each named on one line in
the log, listed in `--out-dir`/failed.txt; the others are still transcribed) or on a usage error.
When every input failed, the earlier outputs of `--out-dir` stay as they were. Before any work,
`--out-dir` is refused where a file stands in the place of a folder (or a folder in the place of a
file), and where an output would overwrite an input or a file beside an input list or manifest
(a Kaldi data dir's reference `text`).
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import time
from pathlib import Path

from toolkit.utils import ToolkitError, atomic_write_text, resolve_device

log = logging.getLogger("toolkit.transcribe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toolkit.decode.chunking import ChunkOptions
    from toolkit.transcribe.formats import FORMATS
    from toolkit.transcribe.search import add_search_arguments

    parser.add_argument("--checkpoint", required=True, help="fine-tuned CTC checkpoint (best.pt, averaged model, ...)")
    add_search_arguments(parser)
    parser.add_argument("--format", default="text",
                        help=f"comma-separated output formats: {', '.join(FORMATS)} (default: text)")
    parser.add_argument("--out-dir", help="write text, transcripts.jsonl, ctm, srt/ID.srt, vtt/ID.vtt here "
                                          "(default: one format to standard output)")
    parser.add_argument("--device", default="auto", help="model device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="model precision (auto: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--max-duration", type=float, default=200.0,
                        help="seconds of audio per batch of short recordings")
    parser.add_argument("--chunk-s", type=float, default=ChunkOptions.chunk_s,
                        help="model window for long recordings (shorter ones are one window; default %(default)s)")
    parser.add_argument("--context-s", type=float, default=ChunkOptions.context_s,
                        help="audio each window sees beyond the frames it contributes, on each side "
                             "(default %(default)s)")
    parser.add_argument("--batch-windows", type=int, default=None,
                        help="windows of a long recording per forward (default: 1 on CPU, 8 on CUDA)")
    parser.add_argument("--max-segment-s", type=float, default=30.0,
                        help="long recordings are searched and aligned in segments of about this length, "
                             "cut between words")
    parser.add_argument("--channel", type=int, default=None,
                        help="transcribe this channel (0 = first) of multi-channel files (default: their average; "
                             "a manifest's cut keeps its own channel, a mono file its only one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio files, folders (recursive), Kaldi wav.scp files, Lhotse cut/recording manifests")


MIN_SEGMENT_S = 1.0  # --max-segment-s below this: a segment can end up without a frame to cut at
FAILED_TXT = "failed.txt"  # in --out-dir: the inputs that failed (removed by a run without failures)


def check_greedy_options(args: argparse.Namespace) -> None:
    """`--lang-dir` and the graph search options mean nothing to greedy search: one-line error (a
    user who forgot `--method hlg` would believe the LM was used)."""
    from toolkit.decode.options import SearchOptions

    if args.method != "greedy":
        return
    defaults = SearchOptions()
    given = [f"--lang-dir {args.lang_dir}"] if args.lang_dir else []
    given += [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in vars(defaults)
              if getattr(args, k, None) is not None and getattr(args, k) != getattr(defaults, k)]
    if given:
        raise ToolkitError(f"{given[0]}: --method greedy uses no graph and no LM; add --method hlg (or another "
                           "graph method), or drop the graph options")


def check_file_names(items: list, formats: list[str]) -> None:
    """Utterance ids become file names (`srt/ID.srt`): one that names another place is an error."""
    for it in items if formats else []:
        if "/" in it.id or "\\" in it.id or it.id in (".", "..") or it.id.startswith("."):
            raise ToolkitError(f"utterance id {it.id!r} ({it.source}) cannot name a file in --out-dir/"
                               f"{formats[0]}/; rename it (no '/', '\\', leading '.'), or leave out "
                               f"--format {','.join(formats)}")


def check_out_dir(out_dir: Path, formats: list[str]) -> None:
    """Before any work: the out dir (or its nearest existing parent) and its srt/ vtt/ must be
    folders, its text / transcripts.jsonl / ctm files (writing them failed only after the whole
    transcription, with the OS's "File exists")."""
    from toolkit.transcribe.formats import FILE_NAMES, PER_RECORDING

    there = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not there.is_dir():
        what = "" if there == out_dir else f"{there} "
        raise ToolkitError(f"--out-dir {out_dir}: {what}is a file, not a folder; give another --out-dir")
    for f in formats:
        if f in PER_RECORDING and (out_dir / f).exists() and not (out_dir / f).is_dir():
            raise ToolkitError(f"{out_dir / f}: is a file, not a folder; --format {f} writes one file per recording "
                               "into it: move the file away or give another --out-dir")
        if f in FILE_NAMES and (out_dir / FILE_NAMES[f]).is_dir():
            raise ToolkitError(f"{out_dir / FILE_NAMES[f]}: is a folder, not a file; --format {f} writes this file: "
                               "move the folder away or give another --out-dir")


def refuse_outputs_over_inputs(out_dir: Path, formats: list[str], items: list, inputs: list[str]) -> None:
    """Before any work: an output that is an input file itself (a list, a manifest, an audio file), or
    that already exists beside an input list or manifest (`--out-dir data/test` holding the reference
    `text` of data/test/wav.scp), is refused, naming the file. Only that folder itself: an out dir
    below it (data/test/transcribe) and reruns into a run's own out dir are fine.
    (`toolkit.utils.refuse_output_over_inputs` guards one OUT replaced as a whole, down its folders.)"""
    from toolkit.transcribe.audio import _is_manifest, _is_scp
    from toolkit.transcribe.formats import output_paths

    realdir = functools.lru_cache(maxsize=None)(os.path.realpath)  # many files, few folders

    def real(p: Path) -> Path:  # the folder resolved, not the name: an output replaces a link, not its target
        return Path(realdir(p.parent)) / p.name

    files = [Path(a) for a in inputs if Path(a).is_file()]
    listing = {real(p).parent: p for p in files if _is_manifest(p) or _is_scp(p)}
    given = {}
    for p in [*files, *(it.path for it in items if it.path is not None)]:
        given[real(p)] = given[Path(os.path.realpath(p))] = p
    for out in [*output_paths(out_dir, formats, [it.id for it in items]), out_dir / FAILED_TXT]:
        r = real(out)
        if r in given:
            raise ToolkitError(f"{out}: is the input {given[r]} itself; writing it would destroy the input: "
                               "give another --out-dir")
        if r.parent in listing and out.exists():
            lst = listing[r.parent]
            raise ToolkitError(f"{out}: exists beside the input {lst} (its reference?); transcribe would overwrite it: "
                               f"give another --out-dir (e.g. {lst.parent / 'transcribe'})")


def warn_stale_outputs(out_dir: Path, formats: list[str], items: list) -> None:
    """Outputs of an earlier run into the same --out-dir that this run leaves as they are (another
    format, or subtitles of recordings not in this run) would read as this run's: say so."""
    from toolkit.transcribe.formats import FILE_NAMES, PER_RECORDING

    ids = {it.id for it in items}
    stale = [name for f, name in FILE_NAMES.items() if f not in formats and (out_dir / name).exists()]
    for f in PER_RECORDING:
        if (out_dir / f).is_dir():
            old = [p for p in (out_dir / f).glob(f"*.{f}") if f not in formats or p.stem not in ids]
            stale += [f"{len(old)} file(s) in {f}/"] if old else []
    if stale:
        log.warning("--out-dir %s: %s from an earlier run stay as they are (not written by this run); remove them "
                    "or use another --out-dir", out_dir, ", ".join(stale))


def run(args: argparse.Namespace) -> int:
    from toolkit.model.checkpoint import build_model, config_of, load_checkpoint
    from toolkit.text.tokenizer import Tokenizer
    from toolkit.transcribe.audio import collect_inputs, probe_duration
    from toolkit.decode.chunking import ChunkOptions
    from toolkit.transcribe.formats import PER_RECORDING, Outputs, parse_formats
    from toolkit.transcribe.search import open_search
    from toolkit.transcribe.transcriber import TranscribeOptions, Transcriber

    formats = parse_formats(args.format)
    if args.out_dir is None and len(formats) > 1:
        raise ToolkitError(f"--format {args.format}: several formats need --out-dir (standard output takes one)")
    for name in ("max_duration", "chunk_s", "context_s", "max_segment_s"):
        if not math.isfinite(getattr(args, name)):
            raise ToolkitError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a finite number of seconds")
    if args.max_duration <= 0:
        raise ToolkitError("--max-duration must be positive")
    for name in ("batch_windows", "nj"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ToolkitError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    if args.channel is not None and args.channel < 0:
        raise ToolkitError(f"--channel {args.channel}: channels count from 0")
    if args.max_segment_s < MIN_SEGMENT_S:
        raise ToolkitError(f"--max-segment-s {args.max_segment_s}: segments are cut between words and need at "
                           f"least {MIN_SEGMENT_S:g} s")
    check_greedy_options(args)
    out_dir = Path(args.out_dir) if args.out_dir is not None else None
    if out_dir is not None:
        check_out_dir(out_dir, formats)
    items, failed = collect_inputs(args.inputs)
    for it in items:
        it.default_channel = args.channel
    if out_dir is not None:
        check_file_names(items, [f for f in formats if f in PER_RECORDING])
        refuse_outputs_over_inputs(out_dir, formats, items, args.inputs)
        warn_stale_outputs(out_dir, formats, items)
    for source, message in failed:
        log.error("skipped: %s", message)
    if not items and failed:
        raise ToolkitError(f"none of the {len(args.inputs)} input(s) could be used (each named above)")

    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["kind"] != "ctc":
        raise ToolkitError(f"--checkpoint {args.checkpoint}: a {ckpt['kind']} checkpoint has no CTC head; "
                           "fine-tune it first (toolkit finetune)")
    vocab = ckpt.get("vocab")
    tokenizer = Tokenizer.from_dict(vocab)
    language = vocab.get("language") if isinstance(vocab, dict) else None
    device = resolve_device(args.device)
    chunk = ChunkOptions(args.chunk_s, args.context_s,
                         args.batch_windows if args.batch_windows is not None else 8 if device.type == "cuda" else 1)
    opts = TranscribeOptions(chunk=chunk, max_duration=args.max_duration, max_segment_s=args.max_segment_s,
                             dtype=args.dtype)
    chunk.check()

    model = build_model(ckpt).to(device).eval()
    normalize = bool(config_of(ckpt).normalize)
    del ckpt
    known = [d for d in (probe_duration(it) for it in items) if d is not None]
    total_h = sum(known) / 3600
    log.info("transcribe: %d recording(s)%s, method %s, device %s", len(items),
             f", {total_h:.2f} h of audio" + (" known from headers" if len(known) < len(items) else ""),
             args.method, device)

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    t0 = time.perf_counter()
    with open_search(args, tokenizer, device) as search, \
            Outputs(formats, args.out_dir) as out, logging_redirect_tqdm(), \
            tqdm(total=total_h or None, unit="h", disable=args.no_progress, dynamic_ncols=True,
                 bar_format=("{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h audio "
                             "[{elapsed}<{remaining}{postfix}]") if total_h else
                            # no length known before decoding (m4a, opus, ...): a count, no bar
                            "{desc}: {n:.3f} h audio [{elapsed}{postfix}]",
                 desc="transcribe") as bar:

        def progress(seconds: float) -> None:
            if bar.total is not None and bar.n + seconds / 3600 > bar.total:
                bar.total = bar.n + seconds / 3600  # files whose length only decoding told
            bar.update(seconds / 3600)
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"RTF {elapsed / max(bar.n * 3600, 1e-9):.3f}", refresh=False)

        transcriber = Transcriber(model, tokenizer, search, device, normalize, opts, language)
        stats = transcriber.run(items, out, progress)
        if stats.failed and not stats.done and out_dir is not None:
            out.keep_earlier()  # empty files must not replace an earlier run's transcripts
            log.info("transcribe: nothing transcribed; the earlier outputs in %s (if any) stay as they were", out_dir)
    failed += stats.failed
    rtf = stats.compute_seconds / stats.audio_seconds if stats.audio_seconds else float("nan")
    log.info("transcribe: %d recording(s), %.3f h of audio in %.1f s (RTF %.4f)%s", stats.done,
             stats.audio_seconds / 3600, stats.compute_seconds, rtf,
             f" -> {args.out_dir}" if args.out_dir else "")
    failed_txt = out_dir / FAILED_TXT if out_dir is not None else None
    if failed_txt is not None and failed_txt.exists() and not failed:
        failed_txt.unlink()  # from an earlier run of the same out dir
    if failed:
        if failed_txt is not None:
            atomic_write_text(failed_txt, "".join(f"{src}\t{msg}\n" for src, msg in failed))
        raise ToolkitError(f"{len(failed)} input(s) failed (each named above"
                           f"{'; listed in ' + args.out_dir + '/failed.txt' if args.out_dir else ''}); "
                           f"the other {stats.done} were transcribed")
    return 0
