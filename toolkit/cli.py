"""`toolkit <command>`: the only door the recipes use.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args)`;
only the module of the command being run is imported, so `toolkit score` does not pay
for importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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

    from toolkit.utils import ToolkitError, setup_logging

    setup_logging(getattr(args, "verbose", False))
    try:
        rc = module.run(args)
    except ToolkitError as e:
        print(f"toolkit {name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"toolkit {name}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
