"""`toolkit prepare {librispeech,commonvoice,lhotse,fsdd}`: validated, normalised Lhotse cut manifests.

(`lhotse --recipe NAME`: any other corpus lhotse has a recipe for; see toolkit.data.prepare_lhotse.
`fsdd`: the Free Spoken Digit Dataset, isolated and connected digits; see toolkit.data.prepare_fsdd.)

For every split this

1. reads the corpus index itself (LibriSpeech `*.trans.txt`, Common Voice `<split>.tsv`)
   and validates each utterance (`toolkit.data.validate`; duration limits in training splits
   only, dev/test kept whole: `toolkit.data.manifests.SplitLimits`): one warning line per
   dropped file, counted in the summary printed at the end;
2. stages the usable utterances (symlinks + filtered index) in a temporary directory
   and runs lhotse's own recipe on it (`prepare_librispeech` / `prepare_commonvoice`),
   so lhotse never sees a file that would make it crash, and lhotse's (quirky) manifest
   cache is never consulted; recording paths are pointed back at the real corpus;
3. builds cuts (`CutSet.from_manifests`) whose supervision has the text normalised per
   language (`toolkit.text.normalize.normalize_text`, original in `custom["orig_text"]`),
   `language` = ISO code and `speaker`; resamples to 16 kHz (`cut.resample`), decodes
   every cut once to catch corrupt audio;
4. writes `<out>/<prefix>_cuts_<split>.jsonl.gz` atomically (prefix `librispeech` or
   `cv-<lang>`); an existing output is kept unless `--overwrite`. A split that yields no
   utterance fails the command, naming it, and its old manifest is removed.

Finally it reports dev/test sentences that also occur in train (docs/DESIGN.md, "Traps").

LibriSpeech language: LibriSpeech is English; a corpus from `toolkit synth-corpus` has
`LibriSpeech/speaker_languages.txt` (`<spk> <lang>`), which wins over `--language`.
Libri-light subsets (`librispeech_finetuning/` beside `LibriSpeech/`) become the splits
`train-10m` (1h/0), `train-1h` (1h/0..5) and `train-10h` (1h + 9h).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable
from pathlib import Path

from toolkit.data import validate as V
from toolkit.data.librilight import SPLITS as LIBRILIGHT_PARTS
from toolkit.data.manifests import (SplitLimits, check_scripts, fail_on_empty, note_kept_whole, remove_stale,
                                     report_overlap, write_cuts)
from toolkit.model.config import SAMPLE_RATE
from toolkit.utils import ToolkitError, atomic_path, read_utf8_lines

log = logging.getLogger("toolkit.data.prepare")

LIBRISPEECH_PARTS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100",
                     "train-clean-360", "train-other-500", "dev-clean-2", "train-clean-5")
CV_DEFAULT_SPLITS = ("train", "dev", "test")
CV_EVAL_SPLITS = ("dev", "test")


CV_METADATA_COLUMNS = ("gender", "age", "accents", "variant")  # read by lhotse's Common Voice recipe


@dataclass
class Entry:
    """One utterance as the corpus index lists it."""

    utt_id: str
    audio: Path
    text: str            # original transcript
    speaker: str
    language: str
    row: str | dict      # the index line (LibriSpeech) or TSV row (Common Voice), restaged as is
    chapter_dir: tuple[str, str] = ("", "")  # LibriSpeech (speaker, chapter)
    norm_text: str = ""
    duration: float = 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", choices=["librispeech", "commonvoice", "lhotse", "fsdd"],
                        help="lhotse: any corpus lhotse has a recipe for (--recipe NAME, --language CODE); "
                             "fsdd: the Free Spoken Digit Dataset (isolated and connected digits)")
    parser.add_argument("--corpus-dir", type=Path, required=True,
                        help="LibriSpeech: the folder holding LibriSpeech/ (or LibriSpeech/ itself); "
                             "Common Voice: the folder holding <lang>/; lhotse: what prepare_<recipe> reads")
    parser.add_argument("--recipe", default=None, help="lhotse: the recipe name (lhotse.recipes.prepare_<NAME>)")
    parser.add_argument("--prefix", default=None, help="lhotse: manifest name prefix (default: the recipe name)")
    parser.add_argument("--out", type=Path, default=Path("data/manifests"))
    parser.add_argument("--languages", default=None, help="comma-separated codes (default: all found)")
    parser.add_argument("--language", default="en",
                        help="LibriSpeech without speaker_languages.txt, or a lhotse recipe's corpus: its ISO code")
    parser.add_argument("--splits", default=None, help="comma-separated split names (default: all found)")
    parser.add_argument("--min-duration", default="auto",
                        help=f"seconds or auto (= {V.AUTO_MIN_DURATION} s); training splits only")
    parser.add_argument("--max-duration", type=float, default=20.0,
                        help="seconds; training splits only (dev and test are kept whole)")
    parser.add_argument("--check-audio", choices=["decode", "header"], default="decode",
                        help="decode every file (catches corrupt audio) or only read headers")
    parser.add_argument("--overwrite", action="store_true", help="redo splits whose manifest exists")
    parser.add_argument("--max-foreign-share", type=float, default=0.02,
                        help="most utterances of a split that may hold letters of another script than its main one")
    parser.add_argument("--nj", type=int, default=2)
    fsdd = parser.add_argument_group("fsdd (speaker-disjoint splits; default: sorted speakers, 4 train, 1 dev, 1 test)")
    fsdd.add_argument("--train-speakers", default=None, help="comma-separated FSDD speakers for train")
    fsdd.add_argument("--dev-speakers", default=None, help="comma-separated FSDD speakers for dev")
    fsdd.add_argument("--test-speakers", default=None, help="comma-separated FSDD speakers for test")
    fsdd.add_argument("--train-passes", type=int, default=2,
                      help="connected-digit passes over the training recordings (each uses every take once)")
    fsdd.add_argument("--group-size", type=int, nargs=2, default=(3, 7), metavar=("MIN", "MAX"),
                      help="recordings per connected-digit utterance")
    fsdd.add_argument("--pause", type=float, nargs=2, default=(0.1, 0.5), metavar=("MIN", "MAX"),
                      help="seconds of background noise before, between and after the joined recordings")
    fsdd.add_argument("--audio-dir", type=Path, default=None,
                      help="where the joined WAVs go (default: <out>/../audio/<prefix>)")
    fsdd.add_argument("--seed", type=int, default=0)


def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def run(args: argparse.Namespace) -> int:
    if args.corpus == "lhotse":
        from toolkit.data.prepare_lhotse import prepare_lhotse

        if not args.recipe:
            raise ToolkitError("toolkit prepare lhotse needs --recipe NAME (a lhotse recipe, e.g. --recipe yesno)")
        report = prepare_lhotse(args.recipe, args.corpus_dir, args.out, args.language, prefix=args.prefix,
                                splits=_csv_list(args.splits), min_duration=args.min_duration,
                                max_duration=args.max_duration, check_audio=args.check_audio,
                                overwrite=args.overwrite, nj=args.nj, max_foreign_share=args.max_foreign_share)
        print(report.summary())
        return 0
    if args.corpus == "fsdd":
        from toolkit.data.prepare_fsdd import prepare_fsdd

        report = prepare_fsdd(args.corpus_dir, args.out, prefix=args.prefix or "fsdd", audio_dir=args.audio_dir,
                              train_speakers=_csv_list(args.train_speakers), dev_speakers=_csv_list(args.dev_speakers),
                              test_speakers=_csv_list(args.test_speakers), train_passes=args.train_passes,
                              group_size=tuple(args.group_size), pause=tuple(args.pause), seed=args.seed,
                              min_duration=args.min_duration, max_duration=args.max_duration,
                              check_audio=args.check_audio, overwrite=args.overwrite, nj=args.nj)
        print(report.summary())
        return 0
    report = prepare(args.corpus, args.corpus_dir, args.out, languages=_csv_list(args.languages),
                     splits=_csv_list(args.splits), default_language=args.language,
                     min_duration=args.min_duration, max_duration=args.max_duration,
                     check_audio=args.check_audio, overwrite=args.overwrite, nj=args.nj,
                     max_foreign_share=args.max_foreign_share)
    print(report.summary())
    return 0


# ---------------------------------------------------------------------------------------
# Reading corpus indexes

def _librispeech_root(corpus_dir: Path) -> Path:
    if (corpus_dir / "LibriSpeech").is_dir():
        return corpus_dir / "LibriSpeech"
    if any((corpus_dir / p).is_dir() for p in LIBRISPEECH_PARTS):
        return corpus_dir
    raise ToolkitError(f"--corpus-dir {corpus_dir}: no LibriSpeech/ folder and no split folder "
                       f"({', '.join(LIBRISPEECH_PARTS[:5])}) in it; point it at the corpus")


def _speaker_languages(root: Path, default: str) -> dict[str, str]:
    path = root / "speaker_languages.txt"
    if not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(read_utf8_lines(path, "--corpus-dir", "speaker language lines"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ToolkitError(f"{path}:{n}: {len(fields)} fields; each line is 'SPEAKER LANGUAGE': fix the line")
        out[fields[0]] = fields[1]
    return out


def scan_librispeech(part_dirs: list[Path], spk_lang: dict[str, str], default_language: str) -> list[Entry]:
    """Entries of every `*.trans.txt` under the given folders (audio path as lhotse derives it)."""
    entries = []
    seen: dict[str, str] = {}  # utterance id -> the transcript file that lists it
    for part_dir in part_dirs:
        for trans in sorted(part_dir.rglob("*.trans.txt")):
            for line in read_utf8_lines(trans, "--corpus-dir", "LibriSpeech transcripts"):
                if not line.strip():
                    continue
                fields = line.strip().split(maxsplit=1)
                utt_id, text = fields[0], fields[1] if len(fields) > 1 else ""
                if utt_id in seen:
                    raise ToolkitError(f"{trans}: utterance {utt_id} is listed twice (also in {seen[utt_id]}); "
                                       "remove the duplicate line")
                seen[utt_id] = trans.name
                spk, chap = (utt_id.split("-") + ["", ""])[:2]
                audio = part_dir / spk / chap / f"{utt_id}.flac"
                entries.append(Entry(utt_id, audio, text, spk, spk_lang.get(spk, default_language), line.strip(),
                                     (spk, chap)))
    return entries


def scan_commonvoice(lang_dir: Path, split: str, language: str) -> list[Entry]:
    """Entries of `<lang>/<split>.tsv`; one-line errors for a missing, non-UTF-8 or malformed TSV and
    for a clip listed twice."""
    tsv = lang_dir / f"{split}.tsv"
    if not tsv.is_file():
        raise ToolkitError(f"{tsv}: not found; choose splits that exist with --splits")
    lines = read_utf8_lines(tsv, "--corpus-dir", "a Common Voice TSV")
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    missing = {"path", "client_id", "sentence"} - set(reader.fieldnames or [])
    if missing:
        raise ToolkitError(f"{tsv}: missing column(s) {', '.join(sorted(missing))}; a Common Voice TSV has at least "
                           "client_id, path and sentence (is this the right file?)")
    # Speaker metadata that older releases lack (no `variant` before 2023, `accent` for `accents`):
    # staged empty, as lhotse's recipe reads these columns.
    absent = [c for c in CV_METADATA_COLUMNS if c not in reader.fieldnames]
    if absent:
        log.info("%s: no %s column(s); staged empty (an older Common Voice release)", tsv, ", ".join(absent))
    entries: list[Entry] = []
    first_line: dict[str, int] = {}
    for n, r in enumerate(reader, start=2):
        if None in r or None in r.values():  # more fields than the header names (a tab in a sentence?), or fewer
            got = len(reader.fieldnames) + len(r.get(None, [])) - sum(v is None for v in r.values())
            raise ToolkitError(f"{tsv}:{n}: {got} tab-separated fields where the header has "
                               f"{len(reader.fieldnames)} (a tab inside a field?); fix or remove the row")
        if not r.get("path"):
            raise ToolkitError(f"{tsv}:{n}: no clip in the path column; fix or remove the row")
        stem = Path(r["path"]).stem  # the utterance id: x.mp3 and x.wav would be one
        if stem in first_line:
            raise ToolkitError(f"{tsv}:{n}: clip {r['path']} has the utterance id {stem!r} of the clip on line "
                               f"{first_line[stem]}; remove the duplicate row")
        first_line[stem] = n
        r.update({c: "" for c in absent})
        entries.append(Entry(Path(r["path"]).stem, lang_dir / "clips" / r["path"], r["sentence"] or "", r["client_id"],
                             language, r))
    return entries


# ---------------------------------------------------------------------------------------
# Validation, staging and lhotse's recipes

def validate_entries(entries: list[Entry], manifest: str, split: str, report: V.DropReport, limits: SplitLimits,
                     nj: int) -> list[Entry]:
    """The entries of one split that pass `limits` (headers read in `nj` threads, text normalised);
    every other one is dropped with one warning naming its file and counted in `report`."""
    from toolkit.text.normalize import normalize_text

    headers = V.headers_in_parallel([e.audio for e in entries], nj, f"{manifest}: headers")
    good = []
    for e, (duration, why) in zip(entries, headers):
        if duration is None:
            report.drop(manifest, why, e.audio)
            continue
        e.duration = duration
        e.norm_text = normalize_text(e.text, e.language)
        why = limits.check(split, e.norm_text, duration)
        if why:
            report.drop(manifest, why, e.audio)
            continue
        good.append(e)
    note_kept_whole(report, manifest, split, [e.duration for e in good], limits)
    return good


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.abspath(src), dst)


def lhotse_librispeech(entries: list[Entry], split: str, staging: Path, nj: int):
    """Stage entries as `<split>/<spk>/<chap>/` and run lhotse's prepare_librispeech on them."""
    from lhotse.recipes import prepare_librispeech

    chapters: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        chapters.setdefault(e.chapter_dir, []).append(e)
        _link(e.audio, staging / split / e.chapter_dir[0] / e.chapter_dir[1] / e.audio.name)
    for (spk, chap), items in chapters.items():
        (staging / split / spk / chap / f"{spk}-{chap}.trans.txt").write_text(
            "".join(f"{e.row}\n" for e in items), encoding="utf-8")
    manifests = prepare_librispeech(staging, dataset_parts=[split], output_dir=None, num_jobs=nj)
    return manifests[split]["recordings"], manifests[split]["supervisions"]


@contextlib.contextmanager
def _threads_instead_of_spawned_processes():
    """Run lhotse's Common Voice recipe with a thread pool instead of spawned processes.

    The recipe reads audio headers in a `ProcessPoolExecutor` with the "spawn" context;
    every spawned worker re-imports lhotse and torch (5-10 s on a small machine) for
    every split of every language, while the work itself is a few ms of header I/O per
    file. The recipe's logic (TSV parsing, Recording/Supervision creation, fixing and
    validation) is unchanged; only its executor is swapped for the duration of the call.
    """
    import lhotse.recipes.commonvoice as cv

    def thread_pool(max_workers=None, mp_context=None, **_):
        return ThreadPoolExecutor(max_workers=max_workers)

    original = cv.ProcessPoolExecutor
    cv.ProcessPoolExecutor = thread_pool
    try:
        yield
    finally:
        cv.ProcessPoolExecutor = original


def lhotse_commonvoice(entries: list[Entry], lang: str, split: str, staging: Path, nj: int):
    """Stage entries as `<lang>/clips/` + `<split>.tsv` and run lhotse's prepare_commonvoice."""
    from lhotse.recipes import prepare_commonvoice

    lang_dir = staging / lang
    for e in entries:
        _link(e.audio, lang_dir / "clips" / e.row["path"])
    lang_dir.mkdir(parents=True, exist_ok=True)
    columns = list(entries[0].row.keys())
    with open(lang_dir / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\",
                           lineterminator="\n")
        w.writeheader()
        w.writerows(e.row for e in entries)
    out = staging / "lhotse-out"  # a fresh dir: lhotse's cache lookup can never hit
    with _threads_instead_of_spawned_processes():
        manifests = prepare_commonvoice(staging, out, languages=[lang], splits=[split], num_jobs=nj)
    return manifests[lang][split]["recordings"], manifests[lang][split]["supervisions"]


def build_cuts(recordings, supervisions, entries: list[Entry]):
    """Cuts with real audio paths, normalised text, ISO language, orig_text; resampled to 16 kHz."""
    from lhotse import CutSet, RecordingSet, SupervisionSet
    from lhotse.utils import fastcopy

    by_id = {e.utt_id: e for e in entries}
    recs = []
    for rec in recordings:
        src = [replace(s, source=os.path.abspath(by_id[rec.id].audio)) for s in rec.sources]
        recs.append(replace(rec, sources=src))
    sups = []
    for sup in supervisions:
        e = by_id[sup.recording_id]
        custom = dict(sup.custom or {}, orig_text=e.text)
        sups.append(replace(sup, text=e.norm_text, language=e.language, speaker=e.speaker, custom=custom))
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs),
                                 supervisions=SupervisionSet.from_segments(sups))
    # Cut id = utterance id (lhotse appends a position index), so a cut keeps its id in
    # every manifest that holds it (train-clean-100 and its Libri-light subsets).
    cuts = CutSet.from_cuts(fastcopy(c, id=c.supervisions[0].id) for c in cuts)
    return cuts.resample(SAMPLE_RATE).to_eager()


def prepare_split(job: "SplitJob", out_path: Path, report: V.DropReport, limits: SplitLimits, check_audio: str,
                  nj: int, max_foreign_share: float = 0.02) -> bool:
    """Validate, stage, run lhotse, build and write one manifest; False if nothing usable."""
    manifest = f"{job.prefix}_{job.split}"
    good = validate_entries(job.entries, manifest, job.split, report, limits, nj)
    if not good:
        remove_stale(out_path, manifest)
        return False
    check_scripts({e.utt_id: (e.language, e.norm_text) for e in good}, manifest, report, max_foreign_share)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{manifest}-", dir=out_path.parent))
    try:
        recordings, supervisions = job.stage(good, staging, nj)
        cuts = build_cuts(recordings, supervisions, good)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    by_id = {e.utt_id: e for e in good}
    return write_cuts(cuts, manifest, out_path, report, check_audio, nj, lambda cut: by_id[cut.id].audio)


# ---------------------------------------------------------------------------------------
# Driver

@dataclass
class SplitJob:
    """One manifest to write: `<prefix>_cuts_<split>.jsonl.gz` from `entries`, staged for lhotse by
    `stage(good_entries, staging_dir, nj) -> (recordings, supervisions)`."""

    prefix: str
    split: str
    entries: list[Entry]
    stage: Callable[[list[Entry], Path, int], tuple]
    note: str = ""  # a line for the summary (what was left out before validation, and why)


def _librispeech_jobs(corpus_dir: Path, splits: list[str] | None, languages: list[str] | None,
                      default_language: str) -> list[SplitJob]:
    """A job for every LibriSpeech / Libri-light split to prepare."""
    root = _librispeech_root(corpus_dir)
    finetune = root.parent / "librispeech_finetuning"
    available: dict[str, list[Path]] = {p: [root / p] for p in LIBRISPEECH_PARTS if (root / p).is_dir()}
    for name, folds in LIBRILIGHT_PARTS.items():
        if all((finetune / f).is_dir() for f in folds):
            available[name] = [finetune / f / kind for f in folds for kind in ("clean", "other")
                               if (finetune / f / kind).is_dir()]
    wanted = splits or sorted(available)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ToolkitError(f"--splits: {', '.join(unknown)} not found in {root} (available: {', '.join(sorted(available))})")
    spk_lang = _speaker_languages(root, default_language)
    jobs = []
    for split in wanted:
        entries = scan_librispeech(available[split], spk_lang, default_language)
        if languages:
            entries = [e for e in entries if e.language in languages]
        jobs.append(SplitJob("librispeech", split, entries,
                             lambda good, st, nj, split=split: lhotse_librispeech(good, split, st, nj)))
    return jobs


def _commonvoice_jobs(corpus_dir: Path, splits: list[str] | None, languages: list[str] | None) -> list[SplitJob]:
    if not corpus_dir.is_dir():
        raise ToolkitError(f"--corpus-dir {corpus_dir}: not a directory")
    langs = languages or sorted(p.name for p in corpus_dir.iterdir() if (p / "train.tsv").is_file())
    if not langs:
        raise ToolkitError(f"--corpus-dir {corpus_dir}: no <lang>/train.tsv found; point it at the Common Voice "
                           "folder that holds one folder per language")
    jobs = []
    for lang in langs:
        if not (corpus_dir / lang).is_dir():
            raise ToolkitError(f"--languages {lang}: {corpus_dir / lang} does not exist")
        for split in splits or CV_DEFAULT_SPLITS:
            entries, note = scan_commonvoice(corpus_dir / lang, split, lang), ""
            if split not in CV_EVAL_SPLITS:
                entries, note = _without_eval_clips(entries, corpus_dir / lang, f"cv-{lang}_{split}")
            jobs.append(SplitJob(f"cv-{lang}", split, entries,
                                 lambda good, st, nj, split=split, lang=lang: lhotse_commonvoice(good, lang, split, st, nj),
                                 note))
    return jobs


def _without_eval_clips(entries: list[Entry], lang_dir: Path, manifest: str) -> tuple[list[Entry], str]:
    """`entries` without the clips of the release's dev.tsv and test.tsv (validated.tsv lists them all:
    a model trained on it would be tested on its training data), and the summary line saying so."""
    eval_clips = {e.row["path"] for split in CV_EVAL_SPLITS if (lang_dir / f"{split}.tsv").is_file()
                  for e in scan_commonvoice(lang_dir, split, "")}
    kept = [e for e in entries if e.row["path"] not in eval_clips]
    if len(kept) == len(entries):
        return entries, ""
    line = (f"{manifest}: {len(entries) - len(kept)} clips of dev.tsv/test.tsv left out "
            f"(this split lists them too; they stay in dev and test only)")
    log.warning(line)
    return kept, line


def prepare(corpus: str, corpus_dir: Path, out: Path, languages: list[str] | None = None,
            splits: list[str] | None = None, default_language: str = "en", min_duration: str | float = "auto",
            max_duration: float = 20.0, check_audio: str = "decode", overwrite: bool = False,
            nj: int = 2, max_foreign_share: float = 0.02) -> V.DropReport:
    """Prepare every requested split; ToolkitError naming the splits that yielded nothing."""
    limits = SplitLimits.from_options(min_duration, max_duration)
    corpus_dir = Path(corpus_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = V.DropReport()
    if corpus == "librispeech":
        jobs = _librispeech_jobs(corpus_dir, splits, languages, default_language)
    elif corpus == "commonvoice":
        jobs = _commonvoice_jobs(corpus_dir, splits, languages)
    else:
        raise ToolkitError(f"corpus {corpus!r}: use librispeech or commonvoice")
    empty = []
    for job in jobs:
        out_path = out / f"{job.prefix}_cuts_{job.split}.jsonl.gz"
        if out_path.is_file() and not overwrite:
            log.info("%s exists; skipping %s %s (use --overwrite to redo it)", out_path, job.prefix, job.split)
            continue
        if job.note:
            report.notes.append(job.note)
        if not prepare_split(job, out_path, report, limits, check_audio, nj, max_foreign_share):
            empty.append(f"{job.prefix}_{job.split}")
    fail_on_empty(corpus_dir, report, empty)
    report_overlap(out, [j.prefix for j in jobs], report)
    return report
