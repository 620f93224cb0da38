"""`toolkit finetune --config C.yaml [--set k=v ...] [--resume [CKPT] | --no-resume]`.

CTC fine-tuning from a pretraining checkpoint (`train.init`), an imported one
(`toolkit import-checkpoint`), or from scratch (`train.init: none`). Keeps `best.pt` by dev WER.
"""
from __future__ import annotations

import argparse

from toolkit.train.cli_common import add_training_arguments, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "finetune")


def run(args: argparse.Namespace) -> int:
    run_training(args, "finetune")
    return 0
