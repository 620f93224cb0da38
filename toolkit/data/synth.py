"""`toolkit synth-corpus`: a multilingual speech corpus synthesised with espeak-ng.

The corpus is laid out like the real one it imitates, so the real Lhotse recipes read it:

LibriSpeech (`--format librispeech`), 16 kHz mono FLAC::

    DIR/LibriSpeech/<split>/<spk>/<chap>/<spk>-<chap>-<utt>.flac
    DIR/LibriSpeech/<split>/<spk>/<chap>/<spk>-<chap>.trans.txt     (UPPER CASE text)
    DIR/LibriSpeech/SPEAKERS.TXT                 (LibriSpeech's table: ID | SEX | SUBSET | MINUTES | NAME)
    DIR/LibriSpeech/speaker_languages.txt        (ours: "<spk> <language>", read by `toolkit prepare`)
    DIR/librispeech_finetuning/1h/{0..5}/clean/<spk>/<chap>/...     (Libri-light: six 10-minute folds)
    DIR/librispeech_finetuning/9h/clean/<spk>/<chap>/...            (Libri-light: the other 9 hours)

  Splits: train-clean-100, dev-clean, test-clean. Libri-light subsets are nested as in
  Libri-light: 10m = 1h/0, 1h = 1h/{0..5}, 10h = 1h + 9h, all drawn from train-clean-100
  (files are hard links). `--subset-scale` shrinks every fold (for tests); when train is
  too small for a subset, it gets what is left and a warning says so.

Common Voice (`--format commonvoice`), 48 kHz mono MP3 (64 kb/s)::

    DIR/<lang>/clips/common_voice_<lang>_<n>.mp3
    DIR/<lang>/{train,dev,test,validated,invalidated,other}.tsv

  with the columns of recent Common Voice releases (client_id, path, sentence_id,
  sentence, sentence_domain, up_votes, down_votes, age, gender, accents, variant,
  locale, segment); lhotse's recipe reads path, client_id, sentence, gender, age,
  accents and variant. invalidated.tsv and other.tsv are empty (header only).

Text comes from `toolkit.data.textgen` (hand-written per-language word lists plus
`num2words` number words, part-of-speech templates; see its docstring for why).
`--minutes-per-language` is the total per language; train gets 1 - dev - test of it.
Synthesis runs `--nj` jobs in threads (the work is in espeak-ng/sox/ffmpeg processes);
MP3s are encoded 16 per ffmpeg process because its start-up dominates.

Speakers differ by espeak-ng voice variant (m1..m7, f1..f4), pitch, speaking rate and,
where espeak-ng has several, regional voice. Every speaker belongs to exactly one split,
so train and dev/test speakers are disjoint; dev/test sentences never occur in train.
Everything (texts, speakers, splits, voices, file names) is a function of the seed and
the arguments; audio files are written atomically and an existing one is reused, so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import logging
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from toolkit import external
from toolkit.data.textgen import SentenceGenerator, available_languages, load_lexicon
from toolkit.utils import ToolkitError, atomic_path, atomic_write_text

log = logging.getLogger(__name__)

LIBRISPEECH_SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
CV_COLUMNS = ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
              "age", "gender", "accents", "variant", "locale", "segment")
# espeak-ng voices per language; a speaker takes one of them (regional variety).
ESPEAK_VOICES = {"en": ["en-us", "en-gb"], "es": ["es", "es-419"], "fr": ["fr-fr", "fr-be"],
                 "pt": ["pt", "pt-br"], "vi": ["vi"]}
MALE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
FEMALE_VARIANTS = ["f1", "f2", "f3", "f4"]
# Libri-light folds: six 10-minute folds make "1h"; "9h" completes "10h".
FOLD_MINUTES = 10.0
LIBRILIGHT_SUBSETS = {"10m": ["1h/0"], "1h": [f"1h/{i}" for i in range(6)],
                      "10h": [f"1h/{i}" for i in range(6)] + ["9h"]}
# Seconds of speech per word at 1 word/minute, plus a fixed lead/tail: planning only
# (measured durations are what the manifests and subsets use).
_SEC_PER_WORD_AT_1WPM = 60.0 * 1.17  # fitted on en+ru espeak-ng output
_LEAD_TAIL_SEC = 0.17


@dataclass(frozen=True)
class Speaker:
    language: str
    speaker_id: str   # LibriSpeech: a number; Common Voice: a hex client_id
    split: str        # train | dev | test
    voice: str        # espeak-ng voice with variant, e.g. "de+f2"
    pitch: int        # espeak-ng -p (0..99)
    rate: int         # espeak-ng -s (words per minute)
    gender: str       # male | female


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    speaker: Speaker
    text: str
    path: Path        # output audio file
    chapter: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["librispeech", "commonvoice"], required=True)
    parser.add_argument("--languages", default="en", help="comma-separated codes with a word list, e.g. en,de,ru,el")
    parser.add_argument("--minutes-per-language", type=float, default=10.0, help="target audio per language")
    parser.add_argument("--speakers", type=int, default=10, help="speakers per language (at least 3)")
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--subset-scale", type=float, default=1.0,
                        help="LibriSpeech: scale Libri-light fold durations (1.0 = real 10m/1h/10h)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis jobs")


def run(args: argparse.Namespace) -> int:
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    result = synthesize_corpus(args.format, languages, args.minutes_per_language, args.speakers, args.out,
                               seed=args.seed, nj=args.nj, dev_fraction=args.dev_fraction,
                               test_fraction=args.test_fraction, subset_scale=args.subset_scale)
    print(f"{result['audio_minutes']:.1f} min of audio in {result['wall_minutes']:.2f} min wall: "
          f"{result['rate']:.1f} audio-minutes per wall-minute (nj={args.nj}) -> {args.out}")
    return 0


# ---------------------------------------------------------------------------------------
# Planning: speakers, splits and sentences (pure functions of the arguments)

def check_tools(fmt: str) -> None:
    why = f"to synthesise a {fmt}-format corpus"
    external.require("espeak-ng", why)
    if fmt == "librispeech":
        external.require("sox", why)
    else:
        external.require("ffmpeg", why)


def espeak_voices(language: str) -> list[str]:
    """Regional espeak-ng voices for a language; ToolkitError if espeak-ng has none."""
    candidates = ESPEAK_VOICES.get(language, [language])
    found = []
    for voice in candidates:
        out = external.run("espeak-ng", [f"--voices={voice}"], "to list its voices", capture_output=True,
                           text=True).stdout
        if any(line.split()[1:2] == [voice] for line in out.splitlines()[1:]):
            found.append(voice)
    if not found:
        raise ToolkitError(f"espeak-ng has no voice for language {language!r}; see `espeak-ng --voices`")
    return found


def plan_speakers(language: str, lang_index: int, n: int, fmt: str, voices: list[str], seed: int,
                  dev_fraction: float, test_fraction: float) -> list[Speaker]:
    """n speakers with distinct voices; the first ones go to test, then dev, the rest to train."""
    if n < 3:
        raise ToolkitError(f"--speakers {n}: need at least 3 speakers per language (train, dev and test are speaker-disjoint)")
    rng = random.Random(f"speakers-{language}-{seed}")
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_dev = max(1, round(n * dev_fraction)) if dev_fraction > 0 else 0
    speakers = []
    for i in range(n):
        split = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
        gender = "female" if i % 2 else "male"
        variants = FEMALE_VARIANTS if gender == "female" else MALE_VARIANTS
        variant = variants[(i // 2 + rng.randrange(len(variants))) % len(variants)]
        if fmt == "librispeech":
            sid = str(1000 + 100 * lang_index + i) if n <= 100 else str(10000 * (lang_index + 1) + i)
        else:
            sid = hashlib.sha256(f"{seed}-{language}-{i}".encode()).hexdigest()
        speakers.append(Speaker(language, sid, split, f"{voices[i % len(voices)]}+{variant}",
                                pitch=rng.randint(25, 75), rate=rng.randint(135, 185), gender=gender))
    return speakers


def _estimated_seconds(text: str, rate: int) -> float:
    return _LEAD_TAIL_SEC + len(text.split()) * _SEC_PER_WORD_AT_1WPM / rate


def plan_sentences(language: str, speakers: list[Speaker], minutes: float, seed: int,
                   fractions: dict[str, float]) -> dict[str, list[tuple[Speaker, str]]]:
    """Per split, (speaker, sentence) pairs whose estimated duration reaches the split's share.

    Train is planned first; dev/test reject sentences already used in train, so a test
    sentence is never a training sentence (as in Common Voice's official splits).
    """
    gen = SentenceGenerator(language, seed)
    train_sentences: set[str] = set()
    plan: dict[str, list[tuple[Speaker, str]]] = {}
    for split in ("train", "dev", "test"):
        spk = [s for s in speakers if s.split == split]
        target = minutes * 60.0 * fractions[split]
        items: list[tuple[Speaker, str]] = []
        total = 0.0
        attempts = 0
        while spk and total < target:
            text = gen.sentence()
            attempts += 1
            if split != "train" and text in train_sentences and attempts < 100 * (len(items) + 10):
                continue
            speaker = spk[len(items) % len(spk)]
            items.append((speaker, text))
            total += _estimated_seconds(text, speaker.rate)
            if split == "train":
                train_sentences.add(text)
        plan[split] = items
    return plan


def build_utterances(fmt: str, out: Path, language: str, plan: dict[str, list[tuple[Speaker, str]]],
                     cv_counter_start: int) -> list[Utterance]:
    """Assign ids and paths: LibriSpeech chapters of up to 25 utterances per speaker."""
    utts: list[Utterance] = []
    for split, items in plan.items():
        per_speaker: dict[str, int] = {}
        for k, (spk, text) in enumerate(items):
            if fmt == "librispeech":
                j = per_speaker.get(spk.speaker_id, 0)
                per_speaker[spk.speaker_id] = j + 1
                chapter = f"{spk.speaker_id}{j // 25:02d}"
                utt_id = f"{spk.speaker_id}-{chapter}-{j % 25:04d}"
                path = out / "LibriSpeech" / LIBRISPEECH_SPLITS[split] / spk.speaker_id / chapter / f"{utt_id}.flac"
                utts.append(Utterance(utt_id, spk, text.upper(), path, chapter))
            else:
                n = cv_counter_start + len(utts)
                utt_id = f"common_voice_{language}_{n}"
                utts.append(Utterance(utt_id, spk, text, out / language / "clips" / f"{utt_id}.mp3"))
    return utts


# ---------------------------------------------------------------------------------------
# Synthesis

MP3_BATCH = 16  # utterances per ffmpeg process: its start-up costs more than encoding one sentence


def espeak_wav(utt: Utterance) -> bytes:
    """The utterance as espeak-ng's 22.05 kHz WAV bytes (text on stdin: never taken for an option)."""
    spk = utt.speaker
    return external.run("espeak-ng", ["-v", spk.voice, "-s", str(spk.rate), "-p", str(spk.pitch), "--stdout"],
                        "to synthesise speech", input=utt.text.encode("utf-8"), capture_output=True,
                        check=True).stdout


def _check_encoder(proc, what: Path) -> None:
    if proc.returncode != 0:
        raise ToolkitError(f"{what}: {Path(proc.args[0]).name} failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")


def synthesize_batch(utts: list[Utterance]) -> list[float]:
    """Synthesise the utterances whose file is missing; return every file's duration (s).

    FLAC: espeak-ng | sox (16 kHz, no dither so the bytes are identical for a seed).
    MP3: one ffmpeg process encodes the whole batch (48 kHz mono, 64 kb/s, bit-exact).
    Files are written under temporary names and renamed, so an existing file is complete.
    """
    todo = [u for u in utts if not u.path.is_file()]
    for u in todo:
        u.path.parent.mkdir(parents=True, exist_ok=True)
    flac = [u for u in todo if u.path.suffix == ".flac"]
    mp3 = [u for u in todo if u.path.suffix != ".flac"]
    for u in flac:
        with atomic_path(u.path) as tmp:
            _check_encoder(external.run("sox", ["-D", "-t", "wav", "-", "-r", "16000", "-c", "1", "-b", "16",
                                                "-t", "flac", str(tmp)], "to encode FLAC", input=espeak_wav(u),
                                        capture_output=True), u.path)
    if mp3:
        with tempfile.TemporaryDirectory(prefix=".synth-", dir=mp3[0].path.parent) as tmpdir, \
                contextlib.ExitStack() as stack:
            cmd = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
            for k, u in enumerate(mp3):
                wav = Path(tmpdir) / f"{k}.wav"
                wav.write_bytes(espeak_wav(u))
                cmd += ["-f", "wav", "-i", str(wav)]
            for k, u in enumerate(mp3):
                tmp = stack.enter_context(atomic_path(u.path))
                cmd += ["-map", str(k), "-ar", "48000", "-ac", "1", "-b:a", "64k", "-map_metadata", "-1",
                        "-fflags", "+bitexact", "-f", "mp3", str(tmp)]
            _check_encoder(external.run("ffmpeg", cmd, "to encode MP3", capture_output=True), mp3[0].path.parent)
    return [sf.info(str(u.path)).duration for u in utts]


def synthesize_all(utts: list[Utterance], nj: int) -> dict[str, float]:
    """Run the synthesis jobs; threads suffice because the work happens in subprocesses."""
    size = MP3_BATCH if utts and utts[0].path.suffix == ".mp3" else 1
    batches = [utts[i:i + size] for i in range(0, len(utts), size)]
    durations: dict[str, float] = {}
    with ThreadPoolExecutor(max(1, nj)) as ex, tqdm(total=len(utts), desc="synthesising", unit="utt") as bar:
        futures = {ex.submit(synthesize_batch, b): b for b in batches}
        for fut in as_completed(futures):
            for u, d in zip(futures[fut], fut.result()):
                durations[u.utt_id] = d
            bar.update(len(futures[fut]))
    return durations


# ---------------------------------------------------------------------------------------
# Metadata writers

def write_librispeech_metadata(out: Path, utts: list[Utterance], durations: dict[str, float]) -> None:
    root = out / "LibriSpeech"
    chapters: dict[Path, list[Utterance]] = {}
    for u in utts:
        chapters.setdefault(u.path.parent, []).append(u)
    for chap_dir, items in chapters.items():
        u0 = items[0]
        lines = "".join(f"{u.utt_id} {u.text}\n" for u in items)
        atomic_write_text(chap_dir / f"{u0.speaker.speaker_id}-{u0.chapter}.trans.txt", lines)
    speakers: dict[str, tuple[Speaker, float]] = {}
    for u in utts:
        spk, total = speakers.get(u.speaker.speaker_id, (u.speaker, 0.0))
        speakers[spk.speaker_id] = (spk, total + durations[u.utt_id])
    table = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    for sid, (spk, total) in sorted(speakers.items(), key=lambda kv: int(kv[0])):
        table.append(f"{sid:<5}| {spk.gender[0].upper()} | {LIBRISPEECH_SPLITS[spk.split]:<17}| {total / 60:5.2f} | "
                     f"espeak {spk.voice} p{spk.pitch} s{spk.rate}")
    atomic_write_text(root / "SPEAKERS.TXT", "\n".join(table) + "\n")
    atomic_write_text(root / "speaker_languages.txt",
                      "".join(f"{sid} {spk.language}\n" for sid, (spk, _) in sorted(speakers.items())))


def write_commonvoice_metadata(out: Path, language: str, utts: list[Utterance]) -> None:
    lang_dir = out / language
    rows: dict[str, list[dict[str, str]]] = {"train": [], "dev": [], "test": []}
    ages = ["twenties", "thirties", "fourties", "fifties", "sixties"]
    for u in utts:
        spk = u.speaker
        rows[spk.split].append({
            "client_id": spk.speaker_id, "path": u.path.name,
            "sentence_id": hashlib.sha256(u.text.encode()).hexdigest(), "sentence": u.text,
            "sentence_domain": "", "up_votes": "2", "down_votes": "0",
            "age": ages[int(spk.speaker_id[:4], 16) % len(ages)], "gender": spk.gender,
            "accents": spk.voice.split("+")[0], "variant": "", "locale": language, "segment": "",
        })
    rows["validated"] = rows["train"] + rows["dev"] + rows["test"]
    rows["invalidated"] = []
    rows["other"] = []
    for split, items in rows.items():
        with atomic_path(lang_dir / f"{split}.tsv") as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CV_COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE,
                                    lineterminator="\n", escapechar="\\")
            writer.writeheader()
            writer.writerows(items)


# ---------------------------------------------------------------------------------------
# Libri-light-style limited-supervision subsets

def _fill_folds(utts: list[Utterance], durations: dict[str, float], fold_sec: float
                ) -> dict[str, list[Utterance]]:
    """Deal utterances into folds 1h/0..5 (fold_sec each) and 9h (54 x fold_sec).

    Each fold takes, in the given order, every utterance that still fits under its
    target, then the one remaining utterance that brings it closest to the target; an
    utterance that does not fit waits for the next fold. With utterances of a few
    seconds this lands within a fraction of a second of the target.
    """
    targets = [(f"1h/{i}", fold_sec) for i in range(6)] + [("9h", 54 * fold_sec)]
    folds: dict[str, list[Utterance]] = {}
    pool = list(utts)
    for name, target in targets:
        chosen, rest, total = [], [], 0.0
        for u in pool:
            if total + durations[u.utt_id] <= target:
                chosen.append(u)
                total += durations[u.utt_id]
            else:
                rest.append(u)
        if rest:
            best = min(rest, key=lambda u: abs(total + durations[u.utt_id] - target))
            if abs(total + durations[best.utt_id] - target) < target - total:
                chosen.append(best)
                rest.remove(best)
        folds[name], pool = chosen, rest
    return folds


def _minutes(sec: float) -> str:
    return f"{sec / 60:.1f} min" if sec >= 60 else f"{sec:.1f} s"


def write_librilight_subsets(out: Path, utts: list[Utterance], durations: dict[str, float],
                             seed: int, scale: float) -> dict[str, float]:
    """Hard-link train utterances into librispeech_finetuning/{1h/0..5,9h}/clean; returns subset seconds."""
    train = sorted((u for u in utts if u.speaker.split == "train"), key=lambda u: u.utt_id)
    random.Random(f"librilight-{seed}").shuffle(train)
    folds = _fill_folds(train, durations, FOLD_MINUTES * 60.0 * scale)
    root = out / "librispeech_finetuning"
    for fold, items in folds.items():
        (root / fold / "clean").mkdir(parents=True, exist_ok=True)  # an empty (capped) fold still exists
        chapters: dict[Path, list[Utterance]] = {}
        for u in items:
            dst = root / fold / "clean" / u.speaker.speaker_id / u.chapter / u.path.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                try:
                    os.link(u.path, dst)
                except OSError:  # another file system: copy instead
                    shutil.copy2(u.path, dst)
            chapters.setdefault(dst.parent, []).append(u)
        for chap_dir, items_ in chapters.items():
            u0 = items_[0]
            atomic_write_text(chap_dir / f"{u0.speaker.speaker_id}-{u0.chapter}.trans.txt",
                              "".join(f"{u.utt_id} {u.text}\n" for u in sorted(items_, key=lambda x: x.utt_id)))
    totals = {}
    for subset, parts in LIBRILIGHT_SUBSETS.items():
        totals[subset] = sum(durations[u.utt_id] for p in parts for u in folds[p])
        wanted = {"10m": 1, "1h": 6, "10h": 60}[subset] * FOLD_MINUTES * 60.0 * scale
        if totals[subset] < 0.95 * wanted:
            log.warning("librispeech_finetuning: train-clean-100 is too small for the %s subset: capped at "
                        "%s instead of %s", subset, _minutes(totals[subset]), _minutes(wanted))
    return totals


# ---------------------------------------------------------------------------------------

def _check_same_librispeech_languages(out: Path, languages: list[str]) -> None:
    """A LibriSpeech-format tree is written by one call (its splits, speaker tables and
    Libri-light folds span all languages); rerunning that call resumes it."""
    existing = out / "LibriSpeech" / "speaker_languages.txt"
    if existing.is_file():
        old = sorted({line.split()[1] for line in existing.read_text(encoding="utf-8").splitlines() if line.strip()})
        if old != sorted(set(languages)):
            raise ToolkitError(f"{existing}: {out} already holds a LibriSpeech-format corpus of {','.join(old)}; "
                               "synthesise all languages in one call (--languages) or use another --out")


def synthesize_corpus(fmt: str, languages: list[str], minutes: float, n_speakers: int, out: Path, seed: int = 0,
                      nj: int = 2, dev_fraction: float = 0.1, test_fraction: float = 0.1,
                      subset_scale: float = 1.0) -> dict:
    """Plan, synthesise and lay out the corpus; returns timing and per-utterance durations."""
    if fmt not in ("librispeech", "commonvoice"):
        raise ToolkitError(f"--format {fmt!r}: use librispeech or commonvoice")
    if not languages:
        raise ToolkitError("--languages is empty; give comma-separated codes, e.g. --languages en,de")
    if minutes <= 0:
        raise ToolkitError(f"--minutes-per-language {minutes}: must be positive")
    if not 0 <= dev_fraction + test_fraction < 1:
        raise ToolkitError("--dev-fraction + --test-fraction must be in [0, 1)")
    check_tools(fmt)
    for lang in languages:  # fail before any synthesis on a language we cannot do
        load_lexicon(lang)
        espeak_voices(lang)
    fractions = {"train": 1 - dev_fraction - test_fraction, "dev": dev_fraction, "test": test_fraction}
    utts: list[Utterance] = []
    if fmt == "librispeech":
        _check_same_librispeech_languages(out, languages)
    slots = {code: k for k, code in enumerate(available_languages())}  # speaker ids by language, not position
    for li, lang in enumerate(languages):
        speakers = plan_speakers(lang, slots[lang], n_speakers, fmt, espeak_voices(lang), seed, dev_fraction,
                                 test_fraction)
        plan = plan_sentences(lang, speakers, minutes, seed, fractions)
        lang_utts = build_utterances(fmt, out, lang, plan, cv_counter_start=20_000_000 + 1_000_000 * li)
        log.info("%s: %d utterances, %d speakers", lang, len(lang_utts), n_speakers)
        utts.extend(lang_utts)
    start = time.perf_counter()
    durations = synthesize_all(utts, nj)
    wall = time.perf_counter() - start
    if fmt == "librispeech":
        write_librispeech_metadata(out, utts, durations)
        subsets = write_librilight_subsets(out, utts, durations, seed, subset_scale)
    else:
        for lang in languages:
            write_commonvoice_metadata(out, lang, [u for u in utts if u.speaker.language == lang])
        subsets = {}
    audio_min = sum(durations.values()) / 60.0
    return {"audio_minutes": audio_min, "wall_minutes": wall / 60.0, "rate": audio_min / max(wall / 60.0, 1e-9),
            "durations": durations, "utterances": utts, "subsets": subsets}
