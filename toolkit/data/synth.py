"""`toolkit synth-corpus`: a multilingual speech corpus synthesised with espeak-ng.

The corpus is laid out like the real one it imitates, so the real Lhotse recipes read it, and
its text behaves like real data where decoding is concerned: an LM text much larger than the
transcripts, dev/test words absent from training, dev/test utterances over 20 s.

LibriSpeech (`--format librispeech`), 16 kHz mono FLAC::

    DIR/LibriSpeech/<split>/<spk>/<chap>/<spk>-<chap>-<utt>.flac
    DIR/LibriSpeech/<split>/<spk>/<chap>/<spk>-<chap>.trans.txt     (UPPER CASE, no punctuation)
    DIR/LibriSpeech/SPEAKERS.TXT                 (LibriSpeech's table: ID | SEX | SUBSET | MINUTES | NAME)
    DIR/LibriSpeech/speaker_languages.txt        (ours: "<spk> <language>", read by `toolkit prepare`)
    DIR/librispeech_finetuning/1h/{0..5}/clean/<spk>/<chap>/...     (Libri-light: six 10-minute folds)
    DIR/librispeech_finetuning/9h/clean/<spk>/<chap>/...            (Libri-light: the other 9 hours)
    DIR/lm/{3-gram,3-gram.pruned.1e-7,4-gram}.arpa.gz, librispeech-lexicon.txt,
           librispeech-vocab.txt, librispeech-lm-norm.txt.gz      (openslr SLR11; toolkit.data.synth_lm)

  Splits: train-clean-100, dev-clean, test-clean. Libri-light subsets are nested as in
  Libri-light (`toolkit.data.librilight`): 10m = 1h/0, 1h = 1h/{0..5}, 10h = 1h + 9h, all drawn
  from train-clean-100 (files are hard links). `--subset-scale` shrinks every fold (for tests);
  when train is too small for a subset, it gets what is left and a warning says so.

Common Voice (`--format commonvoice`), 48 kHz mono MP3 (64 kb/s)::

    DIR/<lang>/clips/common_voice_<lang>_<n>.mp3
    DIR/<lang>/{train,dev,test,validated,invalidated,other}.tsv
    DIR/<lang>/validated_sentences.tsv      (the sentence file: the LM text of open-vocabulary recipes)

  with the columns of recent Common Voice releases (client_id, path, sentence_id,
  sentence, sentence_domain, up_votes, down_votes, age, gender, accents, variant,
  locale, segment); lhotse's recipe reads path, client_id, sentence, gender, age,
  accents and variant. invalidated.tsv and other.tsv are empty (header only).

Both: `DIR/synth_summary.json` holds, per language, the minutes per split, the dev/test
utterances over 20 s and the OOV rate of dev/test against train (and against the LM text);
the command prints the same, one line per language, and writes those lines to
`DIR/synth_summary.txt`. `DIR/synth_plan.json` records, per language, what decides its sentences,
speakers and clip names (minutes, split fractions, speakers, seed, text); a rerun with the same
plan resumes (existing clips are kept), one with another plan is refused, since the old clips
would stay under the new transcripts.

Text: per language a pool of sentences (`toolkit.data.synth_text`): `--lm-sentences` unique
sentences of `toolkit.data.textgen` (word lists plus `num2words`), or the sentences of
`--text LANG=FILE` for any language espeak-ng speaks. Some rare words are held out of
training; a share of dev/test sentences contain one. Train, dev and test never share a
sentence. LibriSpeech transcripts are the sentences normalised (`toolkit.text.normalize`)
and upper-cased; espeak-ng reads the original sentence (punctuation gives it pauses).

Durations: `--minutes-per-language` is the total per language; train gets 1 - dev - test of
it. espeak-ng's speed differs by language and voice, so the plan is measured and corrected:
a first round synthesises half of each split from an estimate (letters per speaking rate),
the measured durations calibrate the estimate per language, later rounds fill each split to
its target, and utterances that overshoot are dropped, so each language lands within about
one utterance of its target. Dev and test splits of at least a minute also get utterances
of 24-33 s (several sentences read in one go; LibriSpeech's dev/test reach ~35 s).

Synthesis runs `--nj` jobs in threads (the work is in espeak-ng/sox/ffmpeg processes);
MP3s are encoded 16 per ffmpeg process because its start-up dominates.

Speakers differ by espeak-ng voice variant (m1..m7, f1..f4), pitch, speaking rate and,
where espeak-ng has several, regional voice. Every speaker belongs to exactly one split,
so train and dev/test speakers are disjoint. Everything (texts, speakers, splits, voices,
file names, LMs) is a function of the seed, the arguments and espeak-ng; audio files are
written atomically and an existing one is reused, so an interrupted run resumes where it
stopped.
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from toolkit import external
from toolkit.data import librilight
from toolkit.data.synth_lm import lm_sentences, sentence_id, write_cv_sentences, write_librispeech_lm
from toolkit.data.synth_text import (DEFAULT_LM_SENTENCES, CorpusText, Normalizer, corpus_text,
                                     parse_text_options)
from toolkit.data.textgen import MAX_RARE_WORDS, available_languages, load_lexicon
from toolkit.utils import ToolkitError, atomic_path, atomic_write_text

log = logging.getLogger(__name__)

LIBRISPEECH_SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
CV_COLUMNS = ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
              "age", "gender", "accents", "variant", "locale", "segment")
CV_SPLIT_OFFSET = {"train": 0, "dev": 600_000, "test": 800_000}  # clip numbers: common_voice_<lang>_<base+offset+k>
# espeak-ng voices per language; a speaker takes one of them (regional variety).
ESPEAK_VOICES = {"en": ["en-us", "en-gb"], "es": ["es", "es-419"], "fr": ["fr-fr", "fr-be"],
                 "pt": ["pt", "pt-br"], "vi": ["vi"]}
MALE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
FEMALE_VARIANTS = ["f1", "f2", "f3", "f4"]
# Duration planning. The estimate is only a start: the first round's measured durations
# correct it per language (espeak-ng's Swahili is ~30% slower per letter than its French).
_SEC_PER_LETTER_AT_1WPM = 60.0 * 0.21  # fitted on the nine word lists' espeak-ng output
_LEAD_TAIL_SEC = 0.17
FIRST_ROUND_SHARE = 0.5    # of each split's target, synthesised before calibrating
MAX_ROUNDS = 6
LONG_OVER_SEC = 20.0       # "long": over the toolkit's default training --max-duration
LONG_MIN_SPLIT_SEC = 60.0  # dev/test splits at least this long get long utterances
LONG_SHARE = 0.15          # of such a split's audio (LibriSpeech test-clean: about a fifth)
LONG_SEC = (24.0, 33.0)    # planned duration range of a long utterance
LONG_MAX_SENTENCES = 30


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
    text: str                  # the transcript as the corpus writes it
    path: Path                 # output audio file
    chapter: str = ""
    speech: str = ""           # what espeak-ng reads: the original sentence(s)
    sentences: tuple[str, ...] = ()  # the pool sentences it reads (several: a long utterance)

    @property
    def is_long(self) -> bool:
        return len(self.sentences) > 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["librispeech", "commonvoice"], required=True)
    parser.add_argument("--languages", default=None,
                        help="comma-separated codes, e.g. en,de,ru,el (default: the --text languages, else en); "
                             "without --text a language needs a word list (toolkit/data/lexicons/<code>.txt)")
    parser.add_argument("--text", action="append", metavar="LANG=FILE",
                        help="sentences of LANG (UTF-8, one a line) instead of its word list; any language "
                             "espeak-ng speaks; repeat for several languages")
    parser.add_argument("--minutes-per-language", type=float, default=10.0, help="target audio per language")
    parser.add_argument("--speakers", type=int, default=10, help="speakers per language (at least 3)")
    parser.add_argument("--dev-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--lm-sentences", type=int, default=DEFAULT_LM_SENTENCES,
                        help="sentences per language in the generated pool (LM text and sentence file)")
    parser.add_argument("--rare-words", type=int, default=0,
                        help="word-list languages: N generated rare words (built from the word list's syllables) "
                             "in half of the noun, verb and adjective slots, Zipf-distributed: a vocabulary of real "
                             "size that an LM cannot predict (default 0: the word list alone)")
    parser.add_argument("--subset-scale", type=float, default=1.0,
                        help="LibriSpeech: scale Libri-light fold durations (1.0 = real 10m/1h/10h)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nj", type=int, default=2, help="parallel synthesis jobs")


def run(args: argparse.Namespace) -> int:
    texts = parse_text_options(args.text)
    if args.languages is not None:
        languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    else:
        languages = list(texts) or ["en"]
    result = synthesize_corpus(args.format, languages, args.minutes_per_language, args.speakers, args.out,
                               seed=args.seed, nj=args.nj, dev_fraction=args.dev_fraction,
                               test_fraction=args.test_fraction, subset_scale=args.subset_scale,
                               text_files=texts, lm_sentences=args.lm_sentences, rare_words=args.rare_words)
    for lang, summary in result["summary"].items():
        print(summary_line(lang, summary))
    print(f"{result['audio_minutes']:.1f} min of audio in {result['wall_minutes']:.2f} min wall: "
          f"{result['rate']:.1f} audio-minutes per wall-minute (nj={args.nj}) -> {args.out}")
    return 0


# ---------------------------------------------------------------------------------------
# Planning: speakers, sentences, durations

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
        raise ToolkitError(f"espeak-ng has no voice for language {language!r}; `espeak-ng --voices` lists the "
                           "languages it speaks")
    return found


def plan_speakers(language: str, lang_index: int, n: int, fmt: str, voices: list[str], seed: int,
                  dev_fraction: float, test_fraction: float) -> list[Speaker]:
    """n speakers with distinct voices; the first ones go to test, then dev, the rest to train."""
    if n < 3:
        raise ToolkitError(f"--speakers {n}: need at least 3 speakers per language (train, dev and test are speaker-disjoint)")
    rng = random.Random(f"speakers-{language}-{seed}")
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_dev = max(1, round(n * dev_fraction)) if dev_fraction > 0 else 0
    if n - n_test - n_dev < 1:
        raise ToolkitError(f"--speakers {n} with --dev-fraction {dev_fraction:g} and --test-fraction {test_fraction:g} "
                           f"leaves no training speaker ({n_test} test, {n_dev} dev); give more --speakers or smaller fractions")
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


def estimated_seconds(speech: str, rate: int) -> float:
    """Uncalibrated duration estimate of espeak-ng reading `speech` at `rate` words per minute."""
    letters = sum(1 for c in speech if c.isalpha())
    return _LEAD_TAIL_SEC + letters * _SEC_PER_LETTER_AT_1WPM / rate


@dataclass
class SplitPlan:
    """The utterances of one language's split, grown round by round towards `target` seconds.

    Utterance ids depend only on the utterances before them, so growing the list never
    renames a file that exists; only the last utterances are ever dropped (`trim`).
    """

    fmt: str
    out: Path
    language: str
    split: str
    speakers: list[Speaker]
    candidates: list[str]
    target: float
    cv_base: int
    normalize: Normalizer
    items: list[Utterance] = field(default_factory=list)
    cursor: int = 0
    per_speaker: dict[str, int] = field(default_factory=dict)

    def _peek(self, k: int = 0) -> str:
        return self.candidates[(self.cursor + k) % len(self.candidates)]

    def _next_speaker(self) -> Speaker:
        return self.speakers[len(self.items) % len(self.speakers)]

    def _add(self, sentences: list[str]) -> Utterance:
        if self.cursor <= len(self.candidates) < self.cursor + len(sentences):
            log.warning("%s %s: all %d sentences of the split are used; further utterances repeat them with other "
                        "speakers (give more sentences for more variety)", self.language, self.split,
                        len(self.candidates))
        self.cursor += len(sentences)
        spk = self._next_speaker()
        speech = " ".join(sentences)
        if self.fmt == "librispeech":
            j = self.per_speaker.get(spk.speaker_id, 0)
            self.per_speaker[spk.speaker_id] = j + 1
            chapter = f"{spk.speaker_id}{j // 25:02d}"
            utt_id = f"{spk.speaker_id}-{chapter}-{j % 25:04d}"
            path = self.out / "LibriSpeech" / LIBRISPEECH_SPLITS[self.split] / spk.speaker_id / chapter / f"{utt_id}.flac"
            utt = Utterance(utt_id, spk, self.normalize(speech).upper(), path, chapter, speech, tuple(sentences))
        else:
            k = len(self.items)
            if k >= 200_000:
                raise ToolkitError(f"{self.language} {self.split}: more than 200000 clips; synthesise less per call")
            utt_id = f"common_voice_{self.language}_{self.cv_base + CV_SPLIT_OFFSET[self.split] + k}"
            utt = Utterance(utt_id, spk, speech, self.out / self.language / "clips" / f"{utt_id}.mp3", "", speech,
                            tuple(sentences))
        self.items.append(utt)
        return utt

    def fill(self, target: float, ratio: float, have: float) -> list[Utterance]:
        """Add utterances while each brings the estimated total closer to `target` (at least one in all)."""
        new = []
        total = have
        while self.speakers:
            e = ratio * estimated_seconds(self._peek(), self._next_speaker().rate)
            if self.items and total + e / 2 >= target:
                break
            new.append(self._add([self._peek()]))
            total += e
        return new

    def add_long(self, seconds: float, ratio: float) -> Utterance:
        """One utterance of consecutive sentences whose estimated duration reaches `seconds`."""
        rate = self._next_speaker().rate
        sentences: list[str] = []
        while len(sentences) < LONG_MAX_SENTENCES and (
                not sentences or ratio * estimated_seconds(" ".join(sentences), rate) < seconds):
            sentences.append(self._peek(len(sentences)))
        return self._add(sentences)

    def trim(self, durations: dict[str, float]) -> list[Utterance]:
        """Drop final (short) utterances while that brings the total closer to the target."""
        dropped = []
        total = sum(durations[u.utt_id] for u in self.items)
        while len(self.items) > 1 and not self.items[-1].is_long:
            d = durations[self.items[-1].utt_id]
            if total - d / 2 <= self.target:
                break
            dropped.append(self.items.pop())
            total -= d
        return dropped


def long_plan(language: str, split: str, target: float, seed: int) -> list[float]:
    """Planned durations of the long utterances of a dev/test split (none below LONG_MIN_SPLIT_SEC)."""
    if split == "train" or target < LONG_MIN_SPLIT_SEC:
        return []
    n = max(1, round(LONG_SHARE * target / (sum(LONG_SEC) / 2)))
    rng = random.Random(f"long-{language}-{split}-{seed}")
    return [rng.uniform(*LONG_SEC) for _ in range(n)]


# ---------------------------------------------------------------------------------------
# Synthesis

MP3_BATCH = 16  # utterances per ffmpeg process: its start-up costs more than encoding one sentence
# LAME's quality/speed trade-off (0 best .. 9 fastest); 7 encodes in about half the time of
# ffmpeg's default at 64 kb/s, and encoding is most of the synthesis time of MP3 corpora.
MP3_COMPRESSION_LEVEL = 7


def espeak_wav(utt: Utterance) -> bytes:
    """The utterance as espeak-ng's 22.05 kHz WAV bytes (text on stdin: never taken for an option)."""
    spk = utt.speaker
    proc = external.run("espeak-ng", ["-v", spk.voice, "-s", str(spk.rate), "-p", str(spk.pitch), "--stdout"],
                        "to synthesise speech", input=(utt.speech or utt.text).encode("utf-8"), capture_output=True)
    _check_encoder(proc, utt.path)
    return proc.stdout


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
                cmd += ["-map", str(k), "-ar", "48000", "-ac", "1", "-b:a", "64k",
                        "-compression_level", str(MP3_COMPRESSION_LEVEL), "-map_metadata", "-1",
                        "-fflags", "+bitexact", "-f", "mp3", str(tmp)]
            _check_encoder(external.run("ffmpeg", cmd, "to encode MP3", capture_output=True), mp3[0].path.parent)
    return [sf.info(str(u.path)).duration for u in utts]


def synthesize_all(utts: list[Utterance], nj: int, desc: str = "synthesising") -> dict[str, float]:
    """Run the synthesis jobs; threads suffice because the work happens in subprocesses."""
    size = MP3_BATCH if utts and utts[0].path.suffix == ".mp3" else 1
    batches = [utts[i:i + size] for i in range(0, len(utts), size)]
    durations: dict[str, float] = {}
    with ThreadPoolExecutor(max(1, nj)) as ex, tqdm(total=len(utts), desc=desc, unit="utt") as bar:
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
            "sentence_id": sentence_id(u.text), "sentence": u.text,
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
    target, then the one remaining utterance that brings it closest to the target, then
    the one exchange of a chosen for a remaining utterance that brings it closer still; an
    utterance that does not fit waits for the next fold. With utterances of a few seconds
    this lands within a fraction of a second of the target, even when few are left.
    """
    dur = durations.__getitem__
    targets = [(fold, units * fold_sec) for fold, units in librilight.FOLDS.items()]
    folds: dict[str, list[Utterance]] = {}
    pool = list(utts)
    for name, target in targets:
        chosen, rest, total = [], [], 0.0
        for u in pool:
            if total + dur(u.utt_id) <= target:
                chosen.append(u)
                total += dur(u.utt_id)
            else:
                rest.append(u)
        if rest:
            best = min(rest, key=lambda u: abs(total + dur(u.utt_id) - target))
            if abs(total + dur(best.utt_id) - target) < target - total:
                chosen.append(best)
                rest.remove(best)
                total += dur(best.utt_id)
        if rest and chosen:
            by_len = sorted(rest, key=lambda u: (dur(u.utt_id), u.utt_id))
            lengths = [dur(u.utt_id) for u in by_len]
            swap, err = None, abs(total - target)
            for c in chosen:
                want = target - total + dur(c.utt_id)  # the length that would land exactly on target
                i = bisect.bisect_left(lengths, want)
                for j in (i - 1, i):
                    if 0 <= j < len(lengths) and abs(want - lengths[j]) < err:
                        swap, err = (c, by_len[j]), abs(want - lengths[j])
            if swap is not None:
                chosen[chosen.index(swap[0])] = swap[1]
                rest[rest.index(swap[1])] = swap[0]
        folds[name], pool = chosen, rest
    return folds


def _minutes(sec: float) -> str:
    return f"{sec / 60:.1f} min" if sec >= 60 else f"{sec:.1f} s"


def write_librilight_subsets(out: Path, utts: list[Utterance], durations: dict[str, float],
                             seed: int, scale: float) -> dict[str, float]:
    """Hard-link train utterances into librispeech_finetuning/{1h/0..5,9h}/clean; returns subset seconds."""
    train = sorted((u for u in utts if u.speaker.split == "train"), key=lambda u: u.utt_id)
    random.Random(f"librilight-{seed}").shuffle(train)
    folds = _fill_folds(train, durations, librilight.FOLD_MINUTES * 60.0 * scale)
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
    for subset, parts in librilight.SUBSETS.items():
        totals[subset] = sum(durations[u.utt_id] for p in parts for u in folds[p])
        wanted = librilight.SUBSET_FOLDS[subset] * librilight.FOLD_MINUTES * 60.0 * scale
        if totals[subset] < 0.95 * wanted:
            log.warning("librispeech_finetuning: train-clean-100 is too small for the %s subset: capped at "
                        "%s instead of %s", subset, _minutes(totals[subset]), _minutes(wanted))
    return totals


# ---------------------------------------------------------------------------------------
# Summary: what the corpus holds that real data would (long utterances, OOV words)

def _oov(tokens: list[str], vocabulary: set[str]) -> tuple[int, int]:
    return sum(1 for w in tokens if w not in vocabulary), len(tokens)


def language_summary(language: str, plans: dict[str, SplitPlan], durations: dict[str, float],
                     text: CorpusText, minutes: float) -> dict:
    """Minutes per split, long dev/test utterances, OOV rates of dev/test against train and the LM text."""
    normalize = Normalizer(language)
    words = {split: [w for u in p.items for w in normalize(u.speech).split()] for split, p in plans.items()}
    train_vocab = set(words.get("train", []))
    recorded = {split: [u.sentences for u in p.items] for split, p in plans.items()}
    lm_text = lm_sentences(text, recorded)
    lm_vocab = {w for s in lm_text for w in normalize(s).split()}
    seconds = {split: sum(durations[u.utt_id] for u in p.items) for split, p in plans.items()}
    out: dict = {
        "text": text.source, "target_minutes": round(minutes, 3),
        "minutes": round(sum(seconds.values()) / 60, 3),
        "split_minutes": {s: round(v / 60, 3) for s, v in seconds.items()},
        "utterances": {s: len(p.items) for s, p in plans.items()},
        "heldout_words": len(text.heldout), "pool_sentences": len(text.pool),
        "lm_sentences": len(lm_text), "lm_words": len(lm_vocab),
    }
    for split in ("dev", "test"):
        if split not in plans:
            continue
        durs = [durations[u.utt_id] for u in plans[split].items]
        n_oov, n = _oov(words[split], train_vocab)
        n_lm, _ = _oov(words[split], lm_vocab)
        out[split] = {
            "over_20s": sum(1 for d in durs if d > LONG_OVER_SEC), "max_seconds": round(max(durs, default=0.0), 2),
            "words": n, "oov_words": n_oov, "oov_rate": round(n_oov / max(n, 1), 4),
            "oov_types": len({w for w in words[split] if w not in train_vocab}),
            "lm_oov_rate": round(n_lm / max(n, 1), 4),
        }
    return out


def summary_line(language: str, s: dict) -> str:
    """One line per language for the command's output."""
    parts = [f"{language}: {s['minutes']:.2f} min (target {s['target_minutes']:.2f}, "
             f"{100 * (s['minutes'] / s['target_minutes'] - 1):+.1f}%)"]
    parts.append(" / ".join(f"{k} {s['split_minutes'][k]:.2f}" for k in ("train", "dev", "test")
                            if k in s["split_minutes"]) + " min")
    if "lm_words" in s:
        parts.append(f"LM text: {s['lm_sentences']} sentences, {s['lm_words']} distinct words")
    for split in ("dev", "test"):
        if split in s:
            d = s[split]
            parts.append(f"{split}: {s['utterances'][split]} utterances, {d['over_20s']} over 20 s (max {d['max_seconds']:.1f} s), "
                         f"OOV rate vs train {100 * d['oov_rate']:.1f}% ({d['oov_words']} of {d['words']} words), "
                         f"vs LM text {100 * d['lm_oov_rate']:.1f}%")
    return "; ".join(parts)


def write_summary(out: Path, summary: dict[str, dict]) -> None:
    """Merge this call's languages into DIR/synth_summary.json (a Common Voice tree grows by
    language) and write the same as DIR/synth_summary.txt, one `summary_line` per language."""
    path = out / "synth_summary.json"
    merged: dict = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: unreadable; rewriting it with this call's languages", path)
    merged.update(summary)
    atomic_write_text(path, json.dumps(merged, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    atomic_write_text(out / "synth_summary.txt",
                      "".join(summary_line(lang, s) + "\n" for lang, s in sorted(merged.items())))


# ---------------------------------------------------------------------------------------

PLAN_FILE = "synth_plan.json"
PLAN_DEFAULTS = {"rare_words": 0}  # plan entries recorded only when set


def _plan_record(fmt: str, minutes: float, n_speakers: int, seed: int, dev_fraction: float, test_fraction: float,
                 subset_scale: float, lm_sentences: int, text_file: Path | None, rare_words: int = 0) -> dict:
    """What decides a language's sentences, speakers and clip names (not how fast it is made)."""
    record = {"format": fmt, "minutes_per_language": round(minutes, 6), "speakers": n_speakers, "seed": seed,
              "dev_fraction": round(dev_fraction, 6), "test_fraction": round(test_fraction, 6),
              "subset_scale": subset_scale, "lm_sentences": lm_sentences,
              "text": str(Path(text_file).resolve()) if text_file else None}
    if rare_words and not text_file:  # absent when 0: plans recorded before --rare-words existed stay equal
        record["rare_words"] = rare_words
    return record


def check_and_record_plan(out: Path, records: dict[str, dict]) -> None:
    """Refuse to synthesise a language into DIR again with another plan, then record this call's.

    Clip names depend only on the language and position, and synthesis reuses a clip that exists
    (so an interrupted run resumes); another plan (minutes, split fractions, speakers, seed, text)
    would deal the sentences differently and leave old clips under new transcripts.
    """
    path = out / PLAN_FILE
    known: dict = {}
    if path.is_file():
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ToolkitError(f"{path}: unreadable; remove {out} and synthesise again") from None
    summary = out / "synth_summary.json"
    done: dict = {}
    if summary.is_file():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            done = json.loads(summary.read_text(encoding="utf-8"))
    fix = "or use another --out (in a recipe: another --work-dir)"
    for lang, record in records.items():
        where = out / lang if record["format"] == "commonvoice" else out
        old = known.get(lang)
        if old is None and lang in done:
            raise ToolkitError(f"{summary}: {lang} was synthesised in {out} by an earlier toolkit that kept no "
                               f"{PLAN_FILE}; remove {where} and everything made from it (a recipe's data/ and "
                               f"exp/), {fix}")
        if old is not None and old != record:
            value = lambda plan, k: plan.get(k, PLAN_DEFAULTS.get(k))  # noqa: E731
            changed = ", ".join(f"{k} {value(old, k)} -> {value(record, k)}" for k in sorted(set(old) | set(record))
                                if value(old, k) != value(record, k))
            raise ToolkitError(f"{path}: {lang} was synthesised here with another plan ({changed}), and its clips "
                               f"would keep the old sentences under the new transcripts; remove {where} and "
                               f"everything made from it (a recipe's data/ and exp/), {fix}")
    known.update(records)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True) + "\n")


def _check_same_librispeech_languages(out: Path, languages: list[str]) -> None:
    """A LibriSpeech-format tree is written by one call (its splits, speaker tables and
    Libri-light folds span all languages); rerunning that call resumes it."""
    existing = out / "LibriSpeech" / "speaker_languages.txt"
    if existing.is_file():
        old = sorted({line.split()[1] for line in existing.read_text(encoding="utf-8").splitlines() if line.strip()})
        if old != sorted(set(languages)):
            raise ToolkitError(f"{existing}: {out} already holds a LibriSpeech-format corpus of {','.join(old)}; "
                               "synthesise all languages in one call (--languages) or use another --out")


def _speaker_slots(languages: list[str]) -> dict[str, int]:
    """LibriSpeech speaker-id block per language: word-list languages by their fixed rank, others after them."""
    bundled = available_languages()
    slots = {code: k for k, code in enumerate(bundled)}
    for k, code in enumerate(sorted(set(languages) - set(bundled))):
        slots[code] = len(bundled) + k
    return slots


def _calibrate(plans: dict[str, SplitPlan], durations: dict[str, float]) -> float:
    """Measured / estimated duration over a language's synthesised utterances."""
    est = meas = 0.0
    for p in plans.values():
        for u in p.items:
            if u.utt_id in durations:
                est += estimated_seconds(u.speech, u.speaker.rate)
                meas += durations[u.utt_id]
    return meas / est if est > 0 else 1.0


def synthesize_corpus(fmt: str, languages: list[str], minutes: float, n_speakers: int, out: Path, seed: int = 0,
                      nj: int = 2, dev_fraction: float = 0.1, test_fraction: float = 0.1,
                      subset_scale: float = 1.0, text_files: dict[str, Path] | None = None,
                      lm_sentences: int = DEFAULT_LM_SENTENCES, rare_words: int = 0) -> dict:
    """Plan, synthesise (in calibrated rounds) and lay out the corpus; returns timing, durations and a summary."""
    text_files = dict(text_files or {})
    if fmt not in ("librispeech", "commonvoice"):
        raise ToolkitError(f"--format {fmt!r}: use librispeech or commonvoice")
    if not languages:
        raise ToolkitError("--languages is empty; give comma-separated codes, e.g. --languages en,de")
    if len(set(languages)) != len(languages):
        raise ToolkitError(f"--languages {','.join(languages)}: a language is listed twice")
    extra = [lang for lang in text_files if lang not in languages]
    if extra:
        raise ToolkitError(f"--text {extra[0]}=...: {extra[0]} is not in --languages {','.join(languages)}; add it there")
    if minutes <= 0:
        raise ToolkitError(f"--minutes-per-language {minutes}: must be positive")
    if not 0 <= rare_words <= MAX_RARE_WORDS:
        raise ToolkitError(f"--rare-words {rare_words}: give 0 to {MAX_RARE_WORDS}")
    if not 0 <= dev_fraction + test_fraction < 1:
        raise ToolkitError("--dev-fraction + --test-fraction must be in [0, 1)")
    check_tools(fmt)
    voices: dict[str, list[str]] = {}
    for lang in languages:  # fail before any synthesis on a language we cannot do
        if lang not in text_files:
            load_lexicon(lang)
        voices[lang] = espeak_voices(lang)
    fractions = {"train": 1 - dev_fraction - test_fraction, "dev": dev_fraction, "test": test_fraction}
    if fmt == "librispeech":
        _check_same_librispeech_languages(out, languages)
    slots = _speaker_slots(languages)  # speaker ids by language, not position
    texts: dict[str, CorpusText] = {}
    plans: dict[str, dict[str, SplitPlan]] = {}
    for li, lang in enumerate(languages):
        speakers = plan_speakers(lang, slots[lang], n_speakers, fmt, voices[lang], seed, dev_fraction, test_fraction)
        texts[lang] = corpus_text(lang, seed, fractions, text_files.get(lang), lm_sentences, rare_words)
        normalize = Normalizer(lang)
        plans[lang] = {
            split: SplitPlan(fmt, out, lang, split, [s for s in speakers if s.split == split], texts[lang].splits[split],
                             minutes * 60.0 * fractions[split], 20_000_000 + 1_000_000 * li, normalize)
            for split in ("train", "dev", "test") if fractions[split] > 0}
    # every option checked: from here on clips are written
    check_and_record_plan(out, {lang: _plan_record(fmt, minutes, n_speakers, seed, dev_fraction, test_fraction,
                                                   subset_scale, lm_sentences, text_files.get(lang), rare_words)
                                for lang in languages})

    durations: dict[str, float] = {}
    ratio = {lang: 1.0 for lang in languages}
    start = time.perf_counter()
    for round_no in range(1, MAX_ROUNDS + 1):
        new: list[Utterance] = []
        for lang, splits in plans.items():
            if round_no > 1:
                ratio[lang] = _calibrate(splits, durations)
            for split, p in splits.items():
                have = sum(durations[u.utt_id] for u in p.items)
                if round_no == 1:
                    new += p.fill(FIRST_ROUND_SHARE * p.target, ratio[lang], have)
                    continue
                if round_no == 2:
                    for seconds in long_plan(lang, split, p.target, seed):
                        new.append(p.add_long(seconds, ratio[lang]))
                        have += ratio[lang] * estimated_seconds(new[-1].speech, new[-1].speaker.rate)
                new += p.fill(p.target, ratio[lang], have)
        if not new:
            break
        log.info("round %d: %d utterances to synthesise (duration estimate x %s)", round_no, len(new),
                 ", ".join(f"{lang} {r:.2f}" for lang, r in ratio.items()))
        durations.update(synthesize_all(new, nj, desc=f"synthesising (round {round_no})"))
    for splits in plans.values():
        for p in splits.values():
            for u in p.trim(durations):
                u.path.unlink(missing_ok=True)
                del durations[u.utt_id]
    wall = time.perf_counter() - start

    utts = [u for splits in plans.values() for p in splits.values() for u in p.items]
    for lang, splits in plans.items():
        log.info("%s: %d utterances, %d speakers", lang, sum(len(p.items) for p in splits.values()), n_speakers)
    recorded = {lang: {split: [u.sentences for u in p.items] for split, p in splits.items()}
                for lang, splits in plans.items()}
    if fmt == "librispeech":
        write_librispeech_metadata(out, utts, durations)
        subsets = write_librilight_subsets(out, utts, durations, seed, subset_scale)
        lm = write_librispeech_lm(out, texts, recorded, {lang: v[0] for lang, v in voices.items()})
    else:
        for lang in languages:
            lang_utts = [u for u in utts if u.speaker.language == lang]
            write_commonvoice_metadata(out, lang, lang_utts)
            write_cv_sentences(out / lang, texts[lang], [(u.text, u.sentences) for u in lang_utts])
        subsets, lm = {}, {}
    summary = {lang: language_summary(lang, plans[lang], durations, texts[lang], minutes) for lang in languages}
    write_summary(out, summary)
    audio_min = sum(durations.values()) / 60.0
    return {"audio_minutes": audio_min, "wall_minutes": wall / 60.0, "rate": audio_min / max(wall / 60.0, 1e-9),
            "durations": durations, "utterances": utts, "subsets": subsets, "summary": summary, "texts": texts,
            "lm": lm}
