"""`toolkit plot EXP_DIR`: PNG training curves from `EXP_DIR/metrics.jsonl`.

One PNG per metric (training and validation rows on the same axes) under `EXP_DIR/plots/`,
plus `overview.png` with the headline curves. Rendering uses matplotlib's Agg backend, so
it works on headless machines.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

from toolkit.utils import ToolkitError

logger = logging.getLogger("toolkit.train")

OVERVIEW = ("loss", "accuracy", "code_perplexity", "prob_perplexity", "temperature", "lr", "grad_norm", "wer", "cer")
SKIP = ("step", "split")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp_dir", help="experiment directory with metrics.jsonl")
    parser.add_argument("--out-dir", help="where to write the PNGs (default EXP_DIR/plots)")


def read_metrics(path: Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{split: {metric: (steps, values)}} from a metrics.jsonl (a truncated last line is ignored)."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                logger.warning("%s:%d: the last line is cut off (a run killed while writing it); plotting the "
                               "rows before it", path, i + 1)
                break
            raise ToolkitError(f"{path}:{i + 1}: not a JSON line; the file is damaged") from None
        for k, v in row.items():
            if k not in SKIP and isinstance(v, (int, float)):
                steps, values = series[row.get("split", "train")][k]
                steps.append(int(row["step"]))
                values.append(float(v))
    return series


def plot_experiment(exp_dir: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = exp_dir / "metrics.jsonl"
    if not path.is_file():
        raise ToolkitError(f"{path}: not found; is {exp_dir} an experiment directory of toolkit pretrain/finetune?")
    series = read_metrics(path)
    names = sorted({k for split in series.values() for k in split})
    if not names:
        raise ToolkitError(f"{path}: no metrics logged yet")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw(ax, series, name)
        written.append(_save(fig, out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"))
        plt.close(fig)
    shown = [n for n in OVERVIEW if n in names]
    if shown:
        cols = 3
        rows = (len(shown) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
        for ax, name in zip(axes.flat, shown):
            _draw(ax, series, name)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        fig.suptitle(str(exp_dir))
        written.append(_save(fig, out_dir / "overview.png"))
        plt.close(fig)
    return written


def _draw(ax, series, name: str) -> None:  # noqa: ANN001
    for split, style in (("train", "-"), ("valid", "o-")):
        if name in series.get(split, {}):
            steps, values = series[split][name]
            ax.plot(steps, values, style, label=split, markersize=3)
    ax.set_title(name)
    ax.set_xlabel("update")
    ax.grid(alpha=0.3)
    ax.legend()


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    from toolkit.utils import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def run(args: argparse.Namespace) -> int:
    exp_dir = Path(args.exp_dir)
    out_dir = Path(args.out_dir) if args.out_dir else exp_dir / "plots"
    written = plot_experiment(exp_dir, out_dir)
    logger.info("wrote %d plots to %s", len(written), out_dir)
    return 0
