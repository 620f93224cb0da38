"""`toolkit average-checkpoints --exp-dir E --last N --out avg.pt` (icefall's habit).

Averages the model weights of the last N `checkpoint-<step>.pt` of an experiment (or of the
files given with `--checkpoints`). The result is a toolkit checkpoint of the same kind, model
config and vocabulary, without training state: decode with it, or fine-tune from it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from toolkit.utils import ToolkitError, atomic_torch_save

logger = logging.getLogger("toolkit.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", help="experiment directory holding checkpoint-<step>.pt files")
    parser.add_argument("--last", type=int, default=5, help="average the N most recent checkpoints (default 5)")
    parser.add_argument("--checkpoints", nargs="+", help="explicit checkpoint files instead of --exp-dir/--last")
    parser.add_argument("--out", required=True, help="output checkpoint, e.g. exp/ft/avg-5.pt")


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating tensors (accumulated in float64); other tensors from the last."""
    keys = list(states[-1])
    for i, s in enumerate(states):
        if list(s) != keys:
            raise ToolkitError(f"checkpoint {i + 1} of {len(states)} has other weights than the last one; "
                               "average checkpoints of one run only")
    out = {}
    for k in keys:
        last = states[-1][k]
        if last.is_floating_point():
            acc = torch.zeros_like(last, dtype=torch.float64)
            for s in states:
                acc += s[k].to(torch.float64)
            out[k] = (acc / len(states)).to(last.dtype)
        else:
            out[k] = last.clone()
    return out


OTHER_RUN = ("model.preset:", "model.overrides:", "train.init:")


def check_compatible(paths: list[Path], ckpts: list[dict]) -> None:
    """Only checkpoints of one network with one vocabulary can be averaged: else a one-line error
    naming the first checkpoint that differs from the last one, and how."""
    from toolkit.model.checkpoint import config_of

    from toolkit.train.engine import config_changes, resumable_change

    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise ToolkitError(f"{p}: given twice (also as {seen[p.resolve()]}); each checkpoint counts once")
        seen[p.resolve()] = p
    last = ckpts[-1]
    arch = config_of(last).architecture()
    tokens = (last.get("vocab") or {}).get("tokens")
    steps: dict[int, Path] = {}
    for p, c in zip(paths, ckpts):
        if c.get("averaged_from"):
            raise ToolkitError(f"{p}: an average already (of {len(c['averaged_from'])} checkpoints); average the "
                               "training checkpoints themselves")
        # a resume may change these, but weights that started elsewhere (another init, other
        # masking or dropout) are another run
        runs = [d for d in config_changes(c.get("train_config") or {}, last.get("train_config") or {})
                if not resumable_change(d) or d.startswith(OTHER_RUN)]
        step = c.get("step")
        if isinstance(step, int) and step in steps:  # best.pt is a copy of one of them
            raise ToolkitError(f"{p}: the same update ({step}) as {steps[step]}; each checkpoint counts once")
        if isinstance(step, int):
            steps[step] = p
        if runs:
            raise ToolkitError(f"{p}: trained with other settings than {paths[-1]} ({runs[0]}): another run; "
                               "average checkpoints of one run only")
        if c["kind"] != last["kind"]:
            raise ToolkitError(f"{p}: a {c['kind']} checkpoint; {paths[-1]} is {last['kind']}: average checkpoints of "
                               "one run only")
        other = config_of(c).architecture()
        differ = [k for k in arch if arch[k] != other[k]]
        if differ:
            raise ToolkitError(f"{p}: another architecture than {paths[-1]} ({differ[0]}: {other[differ[0]]} vs "
                               f"{arch[differ[0]]}); average checkpoints of one run only")
        if (c.get("vocab") or {}).get("tokens") != tokens:
            raise ToolkitError(f"{p}: another vocabulary than {paths[-1]} (its output ids mean other tokens); "
                               "average checkpoints of one run only")


def average_checkpoints(paths: list[Path], out: Path) -> None:
    """Write the element-wise mean of the weights of `paths` (one network, one vocabulary) to `out`
    (not one of `paths`), as a checkpoint without training state; one-line errors otherwise."""
    from toolkit.model.checkpoint import load_checkpoint

    if any(p.resolve() == out.resolve() for p in paths):
        raise ToolkitError(f"--out {out}: is one of the checkpoints to average; write the average to a new file "
                           "(e.g. avg-N.pt)")
    if out.is_dir():
        raise ToolkitError(f"--out {out}: is a directory; give a file name such as {out / 'avg.pt'}")
    if out.exists() or out.is_symlink():  # only an earlier average is replaced, never a run's own checkpoint
        try:
            earlier = load_checkpoint(out)
        except ToolkitError:
            earlier = {}
        if not earlier.get("averaged_from"):
            raise ToolkitError(f"--out {out}: exists and is not an earlier average (a run's checkpoint, best.pt, or "
                               "another file); write the average to a new file (e.g. avg-N.pt)")
    ckpts = [load_checkpoint(p) for p in paths]
    check_compatible(paths, ckpts)
    last = ckpts[-1]
    avg = {k: last[k] for k in ("format", "version", "kind", "model_config", "vocab") if k in last}
    avg["model"] = average_state_dicts([c["model"] for c in ckpts])
    avg["averaged_from"] = [str(p) for p in paths]
    atomic_torch_save(avg, out)


def run(args: argparse.Namespace) -> int:
    if args.checkpoints:
        paths = [Path(p) for p in args.checkpoints]
    else:
        if not args.exp_dir:
            raise ToolkitError("give --exp-dir (with --last N) or --checkpoints FILE...")
        from toolkit.train.expdir import list_checkpoints

        found = list_checkpoints(args.exp_dir)
        if not found:
            raise ToolkitError(f"--exp-dir {args.exp_dir}: no checkpoint-<step>.pt files; train first")
        if args.last < 1:
            raise ToolkitError("--last must be >= 1")
        if len(found) < args.last:
            logger.warning("only %d checkpoints in %s (asked for %d); averaging those", len(found), args.exp_dir, args.last)
        paths = [p for _, p in found[-args.last:]]
    average_checkpoints(paths, Path(args.out))
    logger.info("averaged %d checkpoints (%s) into %s", len(paths), ", ".join(p.name for p in paths), args.out)
    return 0
