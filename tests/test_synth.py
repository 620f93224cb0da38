"""`toolkit synth-corpus`: lhotse's own recipes read what we write, with the right
durations (vs soundfile / ffmpeg), texts, speakers and languages; splits are
speaker-disjoint; Libri-light subsets have their stated durations; a seed fixes everything."""
from __future__ import annotations

import csv
import logging
import subprocess
import unicodedata
from pathlib import Path

import pytest
import soundfile as sf

from toolkit.data import synth
from toolkit.data.textgen import SentenceGenerator, available_languages, load_lexicon
from toolkit.utils import ToolkitError

LS_LANGS = ["en", "ru", "el"]
CV_LANGS = ["de", "ru", "el"]


@pytest.fixture(scope="module")
def ls_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("ls")
    # fold = 12 s: 10m -> 12 s, 1h -> 72 s fit in ~115 s of English train; 10h (720 s) is capped.
    res = synth.synthesize_corpus("librispeech", LS_LANGS, 1.2, 4, out, seed=3, nj=2, subset_scale=0.02)
    return out, res


@pytest.fixture(scope="module")
def cv_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    res = synth.synthesize_corpus("commonvoice", CV_LANGS, 0.3, 3, out, seed=5, nj=2)
    return out, res


def _script(word: str) -> str:
    return unicodedata.name(word[0]).split()[0]


def test_word_lists_cover_eight_languages_in_three_scripts():
    langs = available_languages()
    assert len(langs) >= 8
    scripts = {}
    for lang in langs:
        lex = load_lexicon(lang)
        vocab = lex.vocabulary()
        assert 90 <= len(vocab) <= 400, (lang, len(vocab))
        scripts[lang] = {_script(w) for w in lex.words["nouns"]}
    assert scripts["ru"] == {"CYRILLIC"} and scripts["el"] == {"GREEK"} and scripts["en"] == {"LATIN"}


@pytest.mark.parametrize("lang", ["en", "sw", "el", "ru"])
def test_sentences_are_deterministic_and_use_the_word_list(lang):
    a = SentenceGenerator(lang, 7).sentences(50)
    assert a == SentenceGenerator(lang, 7).sentences(50)
    assert a != SentenceGenerator(lang, 8).sentences(50)
    vocab = load_lexicon(lang).vocabulary()
    for s in a:
        assert s[0].isupper() and s.endswith(".")
        for w in s.replace(",", " ").rstrip(".").split():
            assert w.lower() in {v.lower() for v in vocab} or any(w.lower() in v.lower().split() for v in vocab), w
    # Repetitive enough for a tiny model: the 50 sentences reuse words a lot.
    words = [w for s in a for w in s.split()]
    assert len(set(words)) < 0.6 * len(words)


def test_unknown_language_and_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ToolkitError, match="no word list for language 'xx'"):
        synth.synthesize_corpus("commonvoice", ["xx"], 0.1, 3, tmp_path)
    with pytest.raises(ToolkitError, match="at least 3 speakers"):
        synth.synthesize_corpus("commonvoice", ["en"], 0.1, 2, tmp_path)


def test_librispeech_tree_is_one_call_but_commonvoice_adds_languages(tmp_path):
    synth.synthesize_corpus("librispeech", ["en"], 0.1, 3, tmp_path / "ls", subset_scale=0.01)
    with pytest.raises(ToolkitError, match="already holds a LibriSpeech-format corpus of en"):
        synth.synthesize_corpus("librispeech", ["de"], 0.1, 3, tmp_path / "ls", subset_scale=0.01)
    synth.synthesize_corpus("commonvoice", ["en"], 0.1, 3, tmp_path / "cv")
    synth.synthesize_corpus("commonvoice", ["de"], 0.1, 3, tmp_path / "cv")
    assert (tmp_path / "cv" / "en" / "train.tsv").is_file() and (tmp_path / "cv" / "de" / "train.tsv").is_file()


def test_librispeech_layout_read_by_lhotse(ls_corpus):
    from lhotse.recipes import prepare_librispeech

    out, res = ls_corpus
    root = out / "LibriSpeech"
    manifests = prepare_librispeech(root, dataset_parts="auto", output_dir=None, num_jobs=2)
    assert set(manifests) == {"train-clean-100", "dev-clean", "test-clean"}
    spk_lang = dict(line.split() for line in (root / "speaker_languages.txt").read_text().splitlines())
    texts = {u.utt_id: u.text for u in res["utterances"]}
    split_speakers = {}
    for part, m in manifests.items():
        for rec in m["recordings"]:
            path = Path(rec.sources[0].source)
            info = sf.info(str(path))
            assert path.suffix == ".flac" and info.samplerate == 16000 and info.channels == 1
            assert rec.sampling_rate == 16000 and rec.num_samples == info.frames
        for sup in m["supervisions"]:
            assert sup.text == texts[sup.id] and sup.text == sup.text.upper()
            assert sup.speaker == sup.id.split("-")[0]
        split_speakers[part] = {s.speaker for s in m["supervisions"]}
    assert not split_speakers["train-clean-100"] & (split_speakers["dev-clean"] | split_speakers["test-clean"])
    assert not split_speakers["dev-clean"] & split_speakers["test-clean"]
    # Every language has speakers in every split.
    for part, spks in split_speakers.items():
        assert {spk_lang[s] for s in spks} == set(LS_LANGS), part


def test_librispeech_sentences_of_dev_test_are_not_in_train(ls_corpus):
    _, res = ls_corpus
    by_split = {}
    for u in res["utterances"]:
        by_split.setdefault(u.speaker.split, set()).add(u.text)
    assert not by_split["train"] & (by_split["dev"] | by_split["test"])


def _fold_seconds(folder: Path) -> float:
    return sum(sf.info(str(p)).duration for p in folder.rglob("*.flac"))


def test_librilight_subsets_have_stated_durations_and_cap_with_warning(tmp_path, caplog):
    # Big enough for 10m and 1h at scale 0.02 (12 s folds); 10h must be capped and say so.
    with caplog.at_level(logging.WARNING, logger="toolkit.data.synth"):
        res = synth.synthesize_corpus("librispeech", ["en"], 1.6, 4, tmp_path, seed=1, subset_scale=0.02)
    ft = tmp_path / "librispeech_finetuning"
    fold = 600 * 0.02
    ten_min = _fold_seconds(ft / "1h" / "0")
    one_h = _fold_seconds(ft / "1h")
    assert ten_min == pytest.approx(fold, rel=0.05)
    assert one_h == pytest.approx(6 * fold, rel=0.05)
    assert res["subsets"]["10m"] == pytest.approx(ten_min) and res["subsets"]["1h"] == pytest.approx(one_h)
    train_total = sum(d for u, d in zip(res["utterances"], [res["durations"][u.utt_id] for u in res["utterances"]])
                      if u.speaker.split == "train")
    assert res["subsets"]["10h"] == pytest.approx(train_total)  # everything train has
    capped = [r.getMessage() for r in caplog.records if "10h subset" in r.getMessage()]
    assert len(capped) == 1 and "capped" in capped[0]
    # Folds are disjoint subsets of train-clean-100 (same files, hard-linked).
    names = [p.name for p in ft.rglob("*.flac")]
    assert len(names) == len(set(names))
    train_files = {p.name for p in (tmp_path / "LibriSpeech" / "train-clean-100").rglob("*.flac")}
    assert set(names) <= train_files


@pytest.mark.slow
def test_librilight_10_minute_subset_at_real_scale(tmp_path):
    res = synth.synthesize_corpus("librispeech", ["en"], 13.0, 6, tmp_path, seed=2, nj=2)
    ten_min = _fold_seconds(tmp_path / "librispeech_finetuning" / "1h" / "0")
    assert ten_min == pytest.approx(600.0, rel=0.05)
    assert res["subsets"]["10m"] == pytest.approx(ten_min)


def _ffmpeg_samples(path: Path) -> int:
    pcm = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-"],
                         capture_output=True, check=True).stdout
    return len(pcm) // 2


def _ffprobe_rate(path: Path) -> tuple[int, int]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate,channels", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True).stdout.strip()
    rate, channels = out.split(",")
    return int(rate), int(channels)


def test_commonvoice_layout_read_by_lhotse(cv_corpus):
    from lhotse.recipes import prepare_commonvoice

    from toolkit.data.prepare import _threads_instead_of_spawned_processes

    out, res = cv_corpus
    texts = {u.utt_id: u.text for u in res["utterances"]}
    with _threads_instead_of_spawned_processes():
        manifests = prepare_commonvoice(out, out / "lhotse", languages=CV_LANGS, splits=["train", "dev", "test"])
    assert set(manifests) == set(CV_LANGS)
    for lang in CV_LANGS:
        for name in ("validated", "invalidated", "other"):
            assert (out / lang / f"{name}.tsv").is_file()
        speakers = {}
        for split, m in manifests[lang].items():
            assert len(m["recordings"]) > 0
            for rec in list(m["recordings"])[:4]:
                path = Path(rec.sources[0].source)
                assert path.suffix == ".mp3" and _ffprobe_rate(path) == (48000, 1)
                assert rec.sampling_rate == 48000
                assert abs(rec.num_samples - _ffmpeg_samples(path)) <= 1152  # one MP3 frame
                assert rec.load_audio().shape[1] == rec.num_samples  # mp3 decodes in lhotse
            for sup in m["supervisions"]:
                assert sup.text == texts[sup.id] and sup.language == lang
            speakers[split] = {s.speaker for s in m["supervisions"]}
        assert not speakers["train"] & (speakers["dev"] | speakers["test"])
        with open(out / lang / "validated.tsv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        assert len(rows) == sum(len(m["supervisions"]) for m in manifests[lang].values())
        assert list(rows[0]) == list(synth.CV_COLUMNS)


@pytest.mark.parametrize("fmt", ["librispeech", "commonvoice"])
def test_same_seed_same_corpus_other_seed_differs(tmp_path, fmt):
    def make(d, seed):
        synth.synthesize_corpus(fmt, ["sw"], 0.15, 3, d, seed=seed, subset_scale=0.01)
        files = sorted(p for p in d.rglob("*") if p.is_file())
        return {str(p.relative_to(d)): p.read_bytes() for p in files}

    a, b, c = make(tmp_path / "a", 11), make(tmp_path / "b", 11), make(tmp_path / "c", 12)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)  # texts, speakers, audio bytes
    assert a != c


def test_rerun_reuses_existing_audio(tmp_path):
    r1 = synth.synthesize_corpus("commonvoice", ["it"], 0.1, 3, tmp_path, seed=0)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.mp3")}
    r2 = synth.synthesize_corpus("commonvoice", ["it"], 0.1, 3, tmp_path, seed=0)
    assert r1["durations"] == r2["durations"]
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())


def test_cli_prints_synthesis_rate(tmp_path, capsys):
    from toolkit.cli import main

    rc = main(["synth-corpus", "--format", "librispeech", "--languages", "es", "--minutes-per-language", "0.2",
               "--speakers", "3", "--out", str(tmp_path), "--subset-scale", "0.01"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "audio-minutes per wall-minute" in line
    total = sum(sf.info(str(p)).duration for p in (tmp_path / "LibriSpeech").rglob("*.flac")) / 60
    assert line.startswith(f"{total:.1f} min of audio")
