"""LM-scale sweeps of the k2 rescoring methods: one lattice, every scale; the dev set chooses.

``toolkit decode --methods k2-whole-lattice-rescore --lm-scales 0.3,0.5,0.7,1.0`` rescores each
batch's lattice once per scale (`SearchOptions.lm_scales`), scores every scale's hypotheses into
``<method dir>/lm_scale_<s>/`` (the usual score files) and writes ``<method dir>/lm-scales.json``::

    {"metric": "wer", "best": 0.7,
     "scales": {"0.3": {"wer": 5.1, "cer": 2.0, "dir": "lm_scale_0.3"}, ...}}

The method directory itself holds the result at ``--lm-scale``. To pick the scale on dev and
apply it to test: decode dev with ``--lm-scales``, then test with ``--lm-scale-from
<dev method dir>`` (`best_lm_scale`). The same file layout can carry any other sweep of one
setting over one set (e.g. a word-insertion penalty): ``best`` is the setting with the lowest WER
(then CER, then the smaller value).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from toolkit.decode.options import lm_scale_key
from toolkit.utils import ToolkitError, atomic_write_text

SWEEP_FILE = "lm-scales.json"


def write_sweep(method_dir: str | os.PathLike, reports: Mapping[float, Any]) -> float:
    """Write ``lm-scales.json`` for ``reports`` (scale -> toolkit.score Report); return the best scale."""
    if not reports:
        raise ValueError("no LM scale to record")
    # err_rate: the rate, or None where the set has no reference words (JSON has no infinity)
    rows = {f"{s:g}": {"wer": r.wer.to_dict()["err_rate"], "cer": r.cer.to_dict()["err_rate"], "dir": lm_scale_key(s)}
            for s, r in reports.items()}
    best = min(reports, key=lambda s: (reports[s].wer.rate, reports[s].cer.rate, s))
    data = {"metric": "wer", "best": best, "scales": rows}
    atomic_write_text(Path(method_dir) / SWEEP_FILE, json.dumps(data, indent=1) + "\n")
    return best


def best_lm_scale(method_dir: str | os.PathLike) -> float:
    """The best scale recorded by `write_sweep` in ``method_dir``, or a one-line ToolkitError."""
    path = Path(method_dir) / SWEEP_FILE
    if not path.is_file():
        raise ToolkitError(f"{path}: not found; decode the dev set with --lm-scales S1,S2,... first "
                           "(k2-nbest-rescore, k2-whole-lattice-rescore)")
    try:
        best = float(json.loads(path.read_text(encoding="utf-8"))["best"])
    except (ValueError, KeyError, TypeError) as e:
        raise ToolkitError(f"{path}: not an LM-scale sweep written by toolkit decode ({e}); decode again") from None
    if best <= 0:
        raise ToolkitError(f"{path}: best LM scale {best} is not positive; decode again")
    return best


def parse_scales(text: str | None) -> tuple[float, ...]:
    """``"0.3,0.5,1"`` -> (0.3, 0.5, 1.0); one-line error for anything else."""
    if not text:
        return ()
    try:
        scales = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ToolkitError(f"--lm-scales {text!r}: give comma-separated positive numbers, e.g. 0.3,0.5,0.7") from None
    if not scales or any(s <= 0 for s in scales):
        raise ToolkitError(f"--lm-scales {text!r}: give comma-separated positive numbers, e.g. 0.3,0.5,0.7")
    return tuple(dict.fromkeys(scales))
