"""`toolkit <command>`: the only door the recipes use.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args)`;
only the module of the command being run is imported, so `toolkit score` does not pay
for importing torch.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import traceback

from toolkit import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth-corpus": ("toolkit.data.synth", "synthesise a multilingual corpus with espeak-ng (LibriSpeech / Common Voice layout)"),
    "prepare": ("toolkit.data.prepare", "Lhotse manifests for a corpus, text normalised and cuts validated"),
    "lang-dir": ("toolkit.text.lang_dir", "character or SentencePiece lang dir (tokens.txt, words.txt, lexicon.txt)"),
    "pretrain": ("toolkit.train.cli_pretrain", "wav2vec 2.0 / XLSR self-supervised pretraining"),
    "finetune": ("toolkit.train.cli_finetune", "CTC fine-tuning"),
    "average-checkpoints": ("toolkit.train.average", "average the model weights of the last N checkpoints"),
    "plot": ("toolkit.train.plot", "PNG training curves of an experiment directory"),
    "import-checkpoint": ("toolkit.model.import_checkpoint", "convert a fairseq / Hugging Face / torchaudio checkpoint"),
    "extract-features": ("toolkit.model.extract", "Transformer layer outputs of one audio file as .npy"),
    "lm": ("toolkit.lm.cli", "n-gram language models (toolkit lm train ...)"),
    "compile-graph": ("toolkit.lm.compile", "build H, L, G and HLG decoding graphs in a lang dir"),
    "decode": ("toolkit.decode.cli", "decode cuts with a CTC checkpoint (greedy, hlg, hlg-rescore, k2-*)"),
    "transcribe": ("toolkit.transcribe.cli", "text and word times for audio files, folders, wav.scp or manifests"),
    "export": ("toolkit.model.export", "a checkpoint as a Hugging Face folder, ONNX or TorchScript model"),
    "score": ("toolkit.score.cli", "WER/CER, error tables and bootstrap intervals for ref/hyp files"),
    "results": ("toolkit.score.results", "collect decode directories into a RESULTS.md table"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"usage: toolkit <command> [options]   (toolkit {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {helptext}" for name, (_, helptext) in COMMANDS.items()]
    lines += ["", "Run `toolkit <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run `toolkit <command> [options]` (argv: the words after `toolkit`); returns the exit status
    (0 ok, 1 a one-line error, 2 unknown command, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"toolkit: unknown command {name!r}; run `toolkit --help` for the list", file=sys.stderr)
        return 2
    module_name, helptext = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"toolkit {name}", description=helptext)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])

    from toolkit.utils import ToolkitError, setup_logging, tune_cpu_allocator

    verbose = bool(getattr(args, "verbose", False))
    setup_logging(verbose)
    tune_cpu_allocator()
    previous = _interrupt_on_sigterm()
    try:
        rc = module.run(args)
    except ToolkitError as e:
        if verbose:
            traceback.print_exc()
        print(f"toolkit {name}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader of standard output went away (`| head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
        return 141
    except OSError as e:
        # The error boundary: disk full, read-only or missing directories, a directory where a file
        # goes: one line naming the path and what to do (the traceback only with --verbose).
        if verbose:
            traceback.print_exc()
        print(f"toolkit {name}: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"toolkit {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(rc or 0)


def _interrupt_on_sigterm():  # noqa: ANN202 - the previous handler, or None when not installable
    """SIGTERM (`kill`, a job scheduler, `timeout`) interrupts like Ctrl-C: context managers and
    `finally` blocks run, so a temporary file of an atomic write is removed instead of left behind."""
    def interrupt(signum, frame):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        return None


OS_FIXES = {
    errno.ENOSPC: "free disk space there and rerun (completed files are intact: outputs are written atomically)",
    errno.EDQUOT: "free space in your quota and rerun (completed files are intact)",
    errno.EROFS: "the file system is read-only: choose an output location you can write to",
    errno.EACCES: "no permission: make it writable/readable for you or choose another location",
    errno.EPERM: "no permission: make it writable/readable for you or choose another location",
    errno.EISDIR: "it is a directory: give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a directory: fix the path",
    errno.ENOENT: "no such file or directory: check the path",
    errno.EMFILE: "too many open files: raise `ulimit -n` or use fewer jobs",
}


def os_error_line(e: OSError) -> str:
    """`<path>: <reason>; <fix>` for an OSError (the path it names, else the message alone)."""
    where = e.filename if e.filename is not None else ""
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    reason = e.strerror or str(e) or type(e).__name__
    fix = OS_FIXES.get(e.errno or -1, "check the path and the disk, then rerun")
    return f"{where}: {reason}; {fix}" if where else f"{reason}; {fix}"


if __name__ == "__main__":
    sys.exit(main())
