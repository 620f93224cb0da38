"""LM scale x word insertion penalty: the sweep on dev and the choice applied to test.

Kaldi's scoring sweeps the LM weight (LMWT) and the word insertion penalty (WIP) over lattices;
icefall decodes with a list of lm_scale values. Here `toolkit decode --sweep-lm-scales
0.5,1,1.5 --sweep-word-penalties -1,0,1` decodes every utterance's lattice once and finds its best
path under each setting (`toolkit.decode.wfst.LatticeSearch`), scores every setting against the
references, and writes per method:

- ``sweep.txt``: one line per setting: lm_scale, word_penalty, %WER, errors, words;
- ``tuning.json``: the chosen setting (``lm_scale``, ``word_penalty``), its WER, the cuts it was
  chosen on and the whole grid;

and the method's usual outputs (recogs.txt, results.json, ...) with the chosen setting.
`toolkit decode --tuning-from DEV_DIR` then decodes another set (test) with each method's setting
read from DEV_DIR/<method>/tuning.json (or DEV_DIR/tuning.json for a single method).

The choice: the fewest word errors; ties go to fewer character errors, then to the setting
closest to the untuned one (lm_scale 1, penalty 0), then to the first in the grid.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from toolkit.utils import ToolkitError, atomic_write_text

TUNING_FILE = "tuning.json"


def parse_grid(text: str | None, option: str, positive: bool = False) -> list[float]:
    """'0.5,1,1.5' -> [0.5, 1.0, 1.5]; one-line error for anything else (or a non-positive scale)."""
    if not text:
        return []
    try:
        values = [float(x) for x in text.replace(" ", ",").split(",") if x]
    except ValueError:
        raise ToolkitError(f"{option} {text!r}: give comma-separated numbers, e.g. 0.5,1.0,1.5") from None
    if not values or any(not math.isfinite(v) for v in values) or (positive and any(v <= 0 for v in values)):
        raise ToolkitError(f"{option} {text!r}: give comma-separated {'positive ' if positive else ''}numbers")
    return list(dict.fromkeys(values))


def sweep_settings(lm_scales: list[float], penalties: list[float], default_scale: float,
                   default_penalty: float) -> list[tuple[float, float]]:
    """The grid of (lm_scale, word_penalty); a list left empty takes the decoding options' value."""
    return [(s, p) for s in (lm_scales or [default_scale]) for p in (penalties or [default_penalty])]


@dataclass
class SweepPoint:
    lm_scale: float
    word_penalty: float
    wer: float
    word_errors: int
    char_errors: int
    words: int


def choose(points: list[SweepPoint]) -> SweepPoint:
    """The best setting (see the module doc for the order of the criteria)."""
    def key(ip: tuple[int, SweepPoint]):
        i, p = ip
        return (p.word_errors, p.char_errors, abs(math.log(p.lm_scale)) + abs(p.word_penalty), i)

    return min(enumerate(points), key=key)[1]


def score_sweep(refs: dict[str, str], hyps_per_cut: dict[str, list[str]],
                settings: list[tuple[float, float]]) -> list[SweepPoint]:
    """WER/CER of every setting; ``hyps_per_cut`` maps a cut to its hypothesis under each setting."""
    from toolkit.score import score_pairs

    missing = set(refs) - set(hyps_per_cut)
    if missing:
        raise ToolkitError(f"sweep: {len(missing)} of {len(refs)} utterances have no sweep hypotheses; "
                           "decode every utterance with the same --sweep options")
    points = []
    for k, (scale, penalty) in enumerate(settings):
        report = score_pairs(refs, {c: h[k] for c, h in hyps_per_cut.items()}, replications=0)
        points.append(SweepPoint(scale, penalty, report.wer.rate, report.wer.err, report.cer.err,
                                 report.wer.num_ref))
    return points


def checkpoint_key(path: str | Path) -> str:
    """What a tuning records of the checkpoint it was chosen for: its resolved path."""
    return str(Path(path).resolve())


def checkpoint_version(path: str | Path) -> list[int]:
    """(size, modification time) of the checkpoint file: a model trained again into the same path
    (exp/.../best.pt) is another model, whose tuning must be chosen again."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def graph_keys(lang_dir: str | Path | None) -> dict[str, str]:
    """The build keys (graphs.json) of the lang dir's decoding graphs, first-pass and rescoring,
    WFST and k2: an LM weight is chosen for these graphs, and one rebuilt from another LM or
    lexicon has another key."""
    if lang_dir is None:
        return {}
    from toolkit.lm.graph import GraphCache, k2_rescore_name

    cache = GraphCache(lang_dir)
    names = ["HLG.fst", "HLG.pt"] + ([cache.rescore_g, k2_rescore_name(cache.rescore_g)] if cache.rescore_g else [])
    return {n: cache.graphs[n]["key"] for n in names if isinstance(cache.graphs.get(n), dict) and "key" in cache.graphs[n]}


def write_sweep(out_dir: Path, method: str, points: list[SweepPoint], best: SweepPoint, cuts: str,
                checkpoint: str | Path, lang_dir: str | Path | None = None) -> None:
    lines = ["# lm_scale\tword_penalty\t%WER\terrors\twords"]
    lines += [f"{p.lm_scale:g}\t{p.word_penalty:g}\t{p.wer:.2f}\t{p.word_errors}\t{p.words}" for p in points]
    lines.append(f"# chosen: lm_scale {best.lm_scale:g}, word_penalty {best.word_penalty:g} (%WER {best.wer:.2f})")
    atomic_write_text(out_dir / "sweep.txt", "\n".join(lines) + "\n")
    data = {"method": method, "lm_scale": best.lm_scale, "word_penalty": best.word_penalty, "wer": best.wer,
            "chosen_on": cuts, "checkpoint": checkpoint_key(checkpoint),
            "checkpoint_version": checkpoint_version(checkpoint), "graphs": graph_keys(lang_dir),
            "grid": [[p.lm_scale, p.word_penalty, p.wer, p.word_errors] for p in points]}
    atomic_write_text(out_dir / TUNING_FILE, json.dumps(data, indent=1) + "\n")


def forget_sweep(out_dir: Path) -> None:
    """A decoding without a sweep into `out_dir`: an earlier decoding's sweep.txt and tuning.json
    there would be read by `--tuning-from` as this one's."""
    for name in ("sweep.txt", TUNING_FILE):
        (out_dir / name).unlink(missing_ok=True)


def read_tuning(tuning_dir: str | Path, method: str, single: bool, checkpoint: str | Path | None = None,
                lang_dir: str | Path | None = None) -> dict:
    """The setting chosen on dev for `method`: DIR/<method>/tuning.json, or DIR/tuning.json when the
    dev decoding wrote one method straight into DIR; a tuning chosen for another checkpoint than
    `checkpoint` (another path, or the same path trained again), or with graphs of `lang_dir` that
    have been rebuilt since (another LM or lexicon), is refused. One-line errors name the file and
    the fix."""
    d = Path(tuning_dir)
    candidates = [d / method / TUNING_FILE] + ([d / TUNING_FILE] if single or not (d / method).is_dir() else [])
    for path in candidates:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            scale, penalty = float(data["lm_scale"]), float(data["word_penalty"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise ToolkitError(f"{path}: not a tuning.json written by `toolkit decode --sweep-...` ({e}); "
                               "decode dev again with the sweep options") from None
        if data.get("method") not in (None, method):
            continue
        if scale <= 0:
            raise ToolkitError(f"{path}: lm_scale {scale} is not positive; decode dev again with the sweep options")
        chosen_for = data.get("checkpoint")
        if checkpoint is not None and chosen_for and chosen_for != checkpoint_key(checkpoint):
            raise ToolkitError(f"{path}: tuned for the checkpoint {chosen_for}, not {checkpoint_key(checkpoint)}; "
                               "decode dev with this checkpoint and the sweep options first")
        if checkpoint is not None and data.get("checkpoint_version") not in (None, checkpoint_version(checkpoint)):
            raise ToolkitError(f"{path}: tuned for an earlier {checkpoint_key(checkpoint)} (the file has changed "
                               "since: trained again?); decode dev with the sweep options again")
        now = graph_keys(lang_dir)
        changed = sorted(n for n, k in (data.get("graphs") or {}).items() if n in now and now[n] != k)
        if changed:
            raise ToolkitError(f"{path}: tuned with another {changed[0]} than {Path(lang_dir) / changed[0]} "
                               "(rebuilt since from another LM or lexicon); decode dev with the sweep options again")
        return {"lm_scale": scale, "word_penalty": penalty, "tuned_on": str(path)}
    raise ToolkitError(f"--tuning-from {d}: no {TUNING_FILE} for method {method} ({candidates[0]}); decode dev "
                       f"with --sweep-lm-scales/--sweep-word-penalties and --methods {method} first")
