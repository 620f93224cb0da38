"""`toolkit prepare lhotse --recipe NAME`: any corpus that Lhotse has a recipe for.

LibriSpeech and Common Voice have their own path in `toolkit.data.prepare` (index read and
validated before lhotse sees a file). Every other corpus goes through lhotse's own
`lhotse.recipes.prepare_<NAME>(corpus_dir)`, and the toolkit's rules are applied to what it
returns:

1. cuts per split from its recordings and supervisions, trimmed to the supervisions (one cut
   per utterance, cut id = supervision id), so long recordings with segments work too;
2. text normalised per language (`--language`, or the supervision's own ISO code), the
   original in `custom["orig_text"]`;
3. in training splits, empty text, clips shorter than the model's receptive field (or
   `--min-duration`), longer than `--max-duration`, or whose text needs more CTC frames than the
   audio has, dropped with one warning line each naming the file (dev/test splits are kept
   whole: only what cannot be decoded is dropped; see toolkit.data.manifests); with
   `--check-audio decode` every cut is decoded once and corrupt audio dropped the same way;
4. resampled to 16 kHz and written atomically to `<out>/<prefix>_cuts_<split>.jsonl.gz`
   (existing outputs kept unless `--overwrite`); the summary counts what was dropped and why.
A split named "all" is written for recipes that return a single manifest pair.
"""
from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path

from toolkit.data import validate as V
from toolkit.model.config import SAMPLE_RATE
from toolkit.data.manifests import (SplitLimits, check_scripts, fail_on_empty, note_kept_whole, report_overlap,
                                     write_cuts)
from toolkit.utils import ToolkitError

log = logging.getLogger("toolkit.data.prepare")

ISO_CODE = re.compile(r"^[a-z]{2,3}$")


def lhotse_recipe(name: str):
    """`lhotse.recipes.prepare_<name>`, or a one-line error listing how to find the names."""
    import lhotse.recipes as recipes

    fn = getattr(recipes, f"prepare_{name.replace('-', '_')}", None)
    if fn is None or not callable(fn):
        known = sorted(n[len("prepare_"):] for n in dir(recipes) if n.startswith("prepare_"))
        raise ToolkitError(f"--recipe {name}: lhotse has no prepare_{name}; known recipes include "
                           f"{', '.join(known[:12])}, ... ({len(known)} in all; `lhotse prepare --help`)")
    return fn


def run_lhotse_recipe(name: str, corpus_dir: Path) -> dict[str, dict]:
    """{split: {"recordings": RecordingSet, "supervisions": SupervisionSet}} from lhotse's recipe."""
    if not corpus_dir.exists():
        raise ToolkitError(f"--corpus-dir {corpus_dir}: not found; download the corpus (lhotse download {name} DIR) "
                           "and point --corpus-dir at it")
    fn = lhotse_recipe(name)
    kwargs = {"output_dir": None} if "output_dir" in inspect.signature(fn).parameters else {}
    try:
        manifests = fn(corpus_dir, **kwargs)  # output_dir=None: nothing cached, nothing stale
    except Exception as e:  # noqa: BLE001 - any failure of a third-party recipe is a layout problem to report
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise ToolkitError(f"--corpus-dir {corpus_dir}: lhotse's prepare_{name} failed ({type(e).__name__}: {msg}); "
                           "check that the directory holds the corpus in its distributed layout") from None
    if isinstance(manifests, dict) and "recordings" in manifests:
        manifests = {"all": manifests}
    usable = {s: m for s, m in (manifests or {}).items() if isinstance(m, dict) and m.get("recordings")}
    if not usable:
        raise ToolkitError(f"--corpus-dir {corpus_dir}: lhotse's prepare_{name} found no recordings; "
                           "check the directory")
    return usable


def _source(cut) -> str:
    """The audio file behind a cut, for drop warnings."""
    return cut.recording.sources[0].source if cut.has_recording else cut.id


def split_cuts(manifests: dict, language: str, manifest: str, split: str, report: V.DropReport, limits: SplitLimits):
    """Validated, normalised, 16 kHz cuts of one split (drops recorded in `report`)."""
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    from toolkit.text.normalize import normalize_text

    if not manifests.get("supervisions"):
        raise ToolkitError(f"{manifest}: lhotse returned recordings without supervisions (no transcripts); "
                           "fine-tuning needs text, pretraining can use a corpus with transcripts")
    cuts = CutSet.from_manifests(recordings=manifests["recordings"], supervisions=manifests["supervisions"])
    cuts = cuts.trim_to_supervisions(keep_overlapping=False)
    kept = []
    for cut in cuts:
        sup = cut.supervisions[0]
        lang = sup.language if sup.language and ISO_CODE.match(sup.language) else language
        text = normalize_text(sup.text or "", lang)
        why = limits.check(split, text, cut.duration)
        if why:
            report.drop(manifest, why, _source(cut))
            continue
        sup = fastcopy(sup, text=text, language=lang, custom=dict(sup.custom or {}, orig_text=sup.text))
        kept.append(fastcopy(cut, id=sup.id, supervisions=[sup]))
    note_kept_whole(report, manifest, split, [c.duration for c in kept], limits)
    return CutSet.from_cuts(kept).resample(SAMPLE_RATE).to_eager()


def prepare_lhotse(recipe: str, corpus_dir: Path, out: Path, language: str, prefix: str | None = None,
                   splits: list[str] | None = None, min_duration: str | float = "auto", max_duration: float = 20.0,
                   check_audio: str = "decode", overwrite: bool = False, nj: int = 2,
                   max_foreign_share: float = 0.02) -> V.DropReport:
    """Prepare every (requested) split lhotse's recipe returns; ToolkitError naming the splits that yielded nothing."""
    if not ISO_CODE.match(language):
        raise ToolkitError(f"--language {language!r}: give the corpus's ISO 639 code (e.g. en, de, sw)")
    limits = SplitLimits.from_options(min_duration, max_duration)
    prefix = prefix or recipe
    corpus_dir, out = Path(corpus_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = V.DropReport()
    manifests = run_lhotse_recipe(recipe, corpus_dir)
    unknown = [s for s in splits or [] if s not in manifests]
    if unknown:
        raise ToolkitError(f"--splits: {', '.join(unknown)} not returned by lhotse's prepare_{recipe} "
                           f"(it returned: {', '.join(sorted(manifests))})")
    empty = []
    for split in splits or sorted(manifests):
        out_path = out / f"{prefix}_cuts_{split}.jsonl.gz"
        if out_path.is_file() and not overwrite:
            log.info("%s exists; skipping %s (use --overwrite to redo it)", out_path, split)
            continue
        manifest = f"{prefix}_{split}"
        cuts = split_cuts(manifests[split], language, manifest, split, report, limits)
        check_scripts({c.id: (c.supervisions[0].language, c.supervisions[0].text) for c in cuts}, manifest, report,
                      max_foreign_share)
        if not write_cuts(cuts, manifest, out_path, report, check_audio, nj, _source):
            empty.append(manifest)
    fail_on_empty(corpus_dir, report, empty)
    report_overlap(out, [prefix], report)
    return report
