"""`toolkit plot EXP_DIR`: PNG training curves from `EXP_DIR/metrics.jsonl`.

One PNG per metric (training and validation rows on the same axes) under `EXP_DIR/plots/`,
plus `overview.png` with the headline curves. Rendering uses matplotlib's Agg backend, so
it works on headless machines.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections import defaultdict
from pathlib import Path

from toolkit.utils import ToolkitError, read_utf8_lines

logger = logging.getLogger("toolkit.train")

OVERVIEW = ("loss", "accuracy", "code_perplexity", "prob_perplexity", "temperature", "lr", "grad_norm", "wer", "cer")
SKIP = ("step", "split")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp_dir", help="experiment directory with metrics.jsonl")
    parser.add_argument("--out-dir", help="where to write the PNGs (default EXP_DIR/plots)")


def read_metrics(path: Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{split: {metric: (steps, values)}} from a metrics.jsonl (a truncated last line is ignored).

    Any other damage (a line that is not JSON, not an object, without an integer "step", with a
    "split" that is not a name; bytes that are not UTF-8) is a one-line error naming the line.
    """
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
    lines = read_utf8_lines(path, "EXP_DIR", "the metrics.jsonl of toolkit pretrain/finetune")
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                logger.warning("%s:%d: the last line is cut off (a run killed while writing it); plotting the "
                               "rows before it", path, i + 1)
                break
            raise ToolkitError(f"{path}:{i + 1}: not a JSON line; the file is damaged") from None
        problem = _row_problem(row)
        if problem:
            raise ToolkitError(f"{path}:{i + 1}: {problem}; the file is damaged (each line is one JSON object "
                               'with an integer "step", as toolkit pretrain/finetune write it)')
        for k, v in row.items():
            if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool):
                steps, values = series[row.get("split", "train")][k]
                steps.append(int(row["step"]))
                values.append(float(v))
    return series


def _row_problem(row: object) -> str | None:
    """What makes a parsed metrics row unusable, or None."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    step = row.get("step")
    if "step" not in row:
        return 'no "step"'
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step != int(step):
        return f'"step" is {step!r}, not an update number'
    if not isinstance(row.get("split", "train"), str):
        return f'"split" is {row["split"]!r}, not a name'
    return None


def plot_experiment(exp_dir: Path, out_dir: Path) -> list[Path]:
    path = exp_dir / "metrics.jsonl"
    if not path.is_file():
        raise ToolkitError(f"{path}: not found; is {exp_dir} an experiment directory of toolkit pretrain/finetune?")
    series = read_metrics(path)
    names = sorted({k for split in series.values() for k in split})
    if not names:
        raise ToolkitError(f"{path}: no metrics logged yet")
    # Imported once the file has been read: an error stays one line (matplotlib's first import on a
    # machine prints "building the font cache" to stderr) and comes without the import's cost.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, stem in _file_stems(names).items():
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw(ax, series, name)
        written.append(_save(fig, out_dir / f"{stem}.png"))
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


def _file_stems(names: list[str]) -> dict[str, str]:
    """{metric: PNG file stem}, one file per metric: names that differ only in characters a file
    name cannot hold (`val/loss`, `val_loss`), or only in case (case-insensitive file systems),
    or that are `overview`, get a numbered stem instead of overwriting another plot."""
    used, stems = {"overview"}, {}
    for name in names:
        base = stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        n = 2
        while stem.lower() in used:
            stem, n = f"{base}-{n}", n + 1
        if stem != base:
            logger.info("metric %r is plotted as %s.png (%s.png is another plot)", name, stem, base)
        used.add(stem.lower())
        stems[name] = stem
    return stems


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
    for what, path in (("EXP_DIR", exp_dir), ("--out-dir", out_dir)):
        if path.exists() and not path.is_dir():
            raise ToolkitError(f"{what} {path}: a file, not a folder; give a folder")
    written = plot_experiment(exp_dir, out_dir)
    logger.info("wrote %d plots to %s", len(written), out_dir)
    return 0
