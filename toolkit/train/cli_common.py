"""What `toolkit pretrain` and `toolkit finetune` share: options, config loading, launching."""
from __future__ import annotations

import argparse
import logging

from toolkit.utils import ToolkitError

logger = logging.getLogger("toolkit.train")


def add_training_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    example = "toolkit/train/configs/pretrain_tiny.yaml" if task == "pretrain" else "toolkit/train/configs/finetune_tiny.yaml"
    parser.add_argument("--config", required=True, action="append",
                        help=f"YAML config (example: {example}); repeat it to merge several, each over the previous")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", nargs="?", const="auto", default="auto", metavar="CHECKPOINT",
                       help="resume from CHECKPOINT, or (default) from the latest checkpoint-<step>.pt in exp_dir")
    group.add_argument("--no-resume", dest="resume", action="store_const", const=None,
                       help="start from scratch even if exp_dir holds checkpoints")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even though the config differs from the checkpoint's (each change is listed)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run_training(args: argparse.Namespace, task_name: str) -> dict:
    """Load the config, build the task and train; torchrun sets the distributed environment."""
    from toolkit.train import ddp
    from toolkit.train.config import load_config
    from toolkit.train.engine import Trainer
    from toolkit.train.tasks import CTCTask, PretrainTask

    cfg = load_config(args.config, task_name, args.overrides)
    if task_name == "finetune":  # what the config leaves unset, by labelled duration (toolkit/train/auto.py)
        from toolkit.train.auto import finetune_settings

        finetune_settings(cfg, args.config, args.overrides)
    resume = args.resume
    if resume not in (None, "auto"):
        from pathlib import Path

        if not Path(resume).is_file():
            raise ToolkitError(f"--resume {resume}: checkpoint not found")
    resume = False if resume is None else (True if resume == "auto" else resume)
    task = PretrainTask(cfg, resume) if task_name == "pretrain" else CTCTask(cfg, resume)
    try:
        return Trainer(cfg, task, resume=resume, allow_config_change=args.allow_config_change).run()
    finally:
        ddp.cleanup()
