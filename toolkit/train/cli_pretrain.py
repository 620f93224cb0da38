"""`toolkit pretrain --config C.yaml [--set k=v ...] [--resume [CKPT] | --no-resume]`.

wav2vec 2.0 / XLSR self-supervised pretraining (contrastive + diversity + feature penalty) on
unlabeled cuts, optionally several languages mixed with p_l ∝ (n_l/N)^alpha. Multi-GPU:
`torchrun --nproc-per-node N $(which toolkit) pretrain ...`.
"""
from __future__ import annotations

import argparse

from toolkit.train.cli_common import add_training_arguments, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "pretrain")


def run(args: argparse.Namespace) -> int:
    run_training(args, "pretrain")
    return 0
