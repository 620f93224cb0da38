"""`toolkit synth-corpus`: lhotse's own recipes read what we write, with the right
durations (vs soundfile / ffmpeg), texts, speakers and languages; splits are
speaker-disjoint; Libri-light subsets have their stated durations; a seed fixes everything.
Like real data: the openslr-format LM files read back by KenLM and the toolkit's ARPA reader,
an LM text much larger than (and disjoint from) dev/test, test utterances over 20 s and test
words absent from train; minutes per language within 10% of the target; user sentences
(`--text`) for a language without a word list."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest
import soundfile as sf

from toolkit.data import synth
from toolkit.data.textgen import SentenceGenerator, available_languages, load_lexicon
from toolkit.text.normalize import normalize_text
from toolkit.utils import ToolkitError

LS_LANGS = ["en", "ru", "el"]
CV_LANGS = ["de", "ru", "el"]


@pytest.fixture(scope="module")
def ls_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("ls")
    # fold = 12 s: 10m -> 12 s, 1h -> 72 s fit in ~115 s of English train; 10h (720 s) is capped.
    res = synth.synthesize_corpus("librispeech", LS_LANGS, 1.2, 4, out, seed=3, nj=2, subset_scale=0.02,
                                  lm_sentences=1000)
    return out, res


@pytest.fixture(scope="module")
def ls_long(tmp_path_factory):
    """Enough test audio (a third of 3 minutes) for long utterances; Swahili is espeak-ng's slowest."""
    out = tmp_path_factory.mktemp("ls_long")
    res = synth.synthesize_corpus("librispeech", ["sw", "en"], 3.0, 4, out, seed=7, nj=2, test_fraction=0.34,
                                  subset_scale=0.02, lm_sentences=3000)
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


def test_syllables_split_onset_and_nucleus_in_three_scripts():
    from toolkit.data.textgen import syllables

    assert syllables("tavolo") == ["ta", "vo", "lo"]
    assert syllables("parlare") == ["par", "la", "re"]
    assert syllables("strada") == ["stra", "da"]
    assert syllables("ist") == ["ist"]
    assert syllables("молоко") == ["мо", "ло", "ко"]
    assert syllables("місто") == ["міс", "то"]  # Ukrainian і, ї, є are vowels too
    assert syllables("θάλασσα") == ["θά", "λασ", "σα"]
    assert syllables("brr") == []


def test_rare_words_are_new_pronounceable_words_of_the_language():
    from toolkit.data.textgen import Lexicon, make_rare_words, syllables

    lex = load_lexicon("it")
    rare = make_rare_words(lex, 500, 0)
    vocab = lex.vocabulary()
    assert len(set(rare)) == 500 and not set(rare) & vocab
    assert all(w.isalpha() and w == w.lower() and len(w) >= 4 for w in rare)
    firsts = {syllables(w)[0] for w in vocab if w.isalpha() and len(syllables(w)) >= 2}
    lasts = {syllables(w)[-1] for w in vocab if w.isalpha() and len(syllables(w)) >= 2}
    assert all(any(w.startswith(f) for f in firsts) and any(w.endswith(x) for x in lasts) for w in rare)
    assert make_rare_words(lex, 500, 0) == rare and make_rare_words(lex, 500, 1) != rare
    # two words make 2 x 1 x 2 syllable choices: fewer distinct words than asked is a one-line error
    tiny = Lexicon("xx", {"nouns": ["tavolo", "casa"]})
    with pytest.raises(ToolkitError, match=r"--rare-words 10: the xx word list's syllables make only \d distinct words"):
        make_rare_words(tiny, 10, 0)
    with pytest.raises(ToolkitError, match="--rare-words -1: give 0 to"):
        make_rare_words(lex, -1, 0)
    with pytest.raises(ToolkitError, match="syllables make only 0 distinct words"):  # no word of two syllables
        make_rare_words(Lexicon("xx", {"nouns": ["sí", "brr"]}), 1, 0)
    for lang in ("el", "es"):  # espeak-ng reads stress from the spelling: never two accents in a word
        made = make_rare_words(load_lexicon(lang), 2000, 0)
        assert all(sum(unicodedata.normalize("NFD", c)[1:2] in ("\u0300", "\u0301") for c in w) <= 1 for w in made)
    german = make_rare_words(load_lexicon("de"), 300, 0)  # from capitalised nouns: lower-case words
    assert all(w == w.lower() for w in german) and not set(german) & {w.lower() for w in load_lexicon("de").vocabulary()}


def test_rare_words_fill_their_share_of_the_content_slots_and_nothing_else():
    from toolkit.data.textgen import RARE_SHARE

    gen = SentenceGenerator("it", 7, rare_words=300)
    rare = set(gen.rare)
    words = gen.lexicon.words
    content = set(words["nouns"]) | set(words["verbs"]) | set(words["adjectives"])
    function = set(words["connectors"]) | set(words["numbers"])
    counts = {"rare": 0, "content": 0, "function": 0}
    for s in gen.sentences(3000):
        for w in s.replace(",", " ").rstrip(".").lower().split():
            counts["rare" if w in rare else "content" if w in content else "function" if w in function else w] += 1
    assert set(counts) == {"rare", "content", "function"}, counts  # every word from one of the three
    assert counts["rare"] / (counts["rare"] + counts["content"]) == pytest.approx(RARE_SHARE, abs=0.02)
    # without rare words the generator draws exactly what it drew before the option existed
    plain = SentenceGenerator("it", 7)
    assert not plain.rare and plain.sentences(200) == SentenceGenerator("it", 7, rare_words=0).sentences(200)
    assert not {w for s in plain.sentences(500) for w in s.replace(",", " ").rstrip(".").lower().split()} & rare


def test_rare_words_give_a_real_size_vocabulary_with_words_the_lm_text_lacks():
    """What `./run.sh --rare-words 4000` gives the held-out language: a vocabulary twenty
    times the word list's, many words seen once, and test words absent from the LM text as well as from train."""
    from toolkit.data.synth_text import corpus_text

    fractions = {"train": 0.8, "dev": 0.1, "test": 0.1}
    plain = corpus_text("it", 0, fractions)
    text = corpus_text("it", 0, fractions, rare_words=4000)
    vocab = lambda sentences: [w for s in sentences for w in _words(s, "it")]  # noqa: E731
    counts = {}
    for w in vocab(text.pool):
        counts[w] = counts.get(w, 0) + 1
    assert len(set(vocab(plain.pool))) < 150 and len(counts) > 3000
    assert sum(1 for c in counts.values() if c == 1) > 500
    test = text.splits["test"][:100]
    lm_words = set(vocab(set(text.pool) - set(text.splits["dev"]) - set(text.splits["test"])))
    train_words = set(vocab(text.splits["train"]))
    test_words = vocab(test)
    assert 0 < sum(w not in lm_words for w in test_words) < sum(w not in train_words for w in test_words)
    assert not text.heldout & train_words


def test_unknown_language_and_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ToolkitError, match="no word list for language 'xx'"):
        synth.synthesize_corpus("commonvoice", ["xx"], 0.1, 3, tmp_path)
    with pytest.raises(ToolkitError, match="at least 3 speakers"):
        synth.synthesize_corpus("commonvoice", ["en"], 0.1, 2, tmp_path)


def test_librispeech_tree_is_one_call_but_commonvoice_adds_languages(tmp_path):
    synth.synthesize_corpus("librispeech", ["en"], 0.1, 3, tmp_path / "ls", subset_scale=0.01, lm_sentences=300)
    with pytest.raises(ToolkitError, match="already holds a LibriSpeech-format corpus of en"):
        synth.synthesize_corpus("librispeech", ["de"], 0.1, 3, tmp_path / "ls", subset_scale=0.01, lm_sentences=300)
    synth.synthesize_corpus("commonvoice", ["en"], 0.1, 3, tmp_path / "cv", lm_sentences=300)
    synth.synthesize_corpus("commonvoice", ["de"], 0.1, 3, tmp_path / "cv", lm_sentences=300)
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
        res = synth.synthesize_corpus("librispeech", ["en"], 1.6, 4, tmp_path, seed=1, subset_scale=0.02,
                                      lm_sentences=300)
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
        synth.synthesize_corpus(fmt, ["sw"], 0.15, 3, d, seed=seed, subset_scale=0.01, lm_sentences=500)
        files = sorted(p for p in d.rglob("*") if p.is_file())
        return {str(p.relative_to(d)): p.read_bytes() for p in files}

    a, b, c = make(tmp_path / "a", 11), make(tmp_path / "b", 11), make(tmp_path / "c", 12)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)  # texts, speakers, audio bytes
    assert a != c


def test_rerun_reuses_existing_audio(tmp_path):
    r1 = synth.synthesize_corpus("commonvoice", ["it"], 0.1, 3, tmp_path, seed=0, lm_sentences=300)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.mp3")}
    r2 = synth.synthesize_corpus("commonvoice", ["it"], 0.1, 3, tmp_path, seed=0, lm_sentences=300)
    assert r1["durations"] == r2["durations"]
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())


def test_another_plan_into_the_same_tree_is_refused_and_changes_nothing(tmp_path):
    """Clip names do not depend on the split fractions: synthesising the language again with another
    plan would keep the old clips under new transcripts. It is a one-line error, nothing is touched."""
    synth.synthesize_corpus("commonvoice", ["it"], 0.1, 3, tmp_path, seed=0, lm_sentences=300)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ToolkitError) as e:
        synth.synthesize_corpus("commonvoice", ["it"], 0.12, 3, tmp_path, seed=0, lm_sentences=300, test_fraction=0.3)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / synth.PLAN_FILE) in msg
    assert "minutes_per_language 0.1 -> 0.12" in msg and "test_fraction 0.1 -> 0.3" in msg and f"remove {tmp_path / 'it'}" in msg
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    with pytest.raises(ToolkitError, match=r"another plan \(rare_words 0 -> 50\)"):  # other sentences
        synth.synthesize_corpus("commonvoice", ["it"], 0.1, 3, tmp_path, seed=0, lm_sentences=300, rare_words=50)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    # a tree from before plans were recorded: the same refusal, since its plan cannot be known
    (tmp_path / synth.PLAN_FILE).unlink()
    with pytest.raises(ToolkitError, match="by an earlier toolkit that kept no synth_plan.json"):
        synth.synthesize_corpus("commonvoice", ["it"], 0.1, 3, tmp_path, seed=0, lm_sentences=300)
    # fractions that leave no training speaker are refused before anything is written
    with pytest.raises(ToolkitError, match="leaves no training speaker"):
        synth.synthesize_corpus("commonvoice", ["de"], 0.1, 3, tmp_path / "x", test_fraction=0.5, dev_fraction=0.3)
    assert not (tmp_path / "x").exists()


def test_cli_prints_synthesis_rate(tmp_path, capsys):
    from toolkit.cli import main

    rc = main(["synth-corpus", "--format", "librispeech", "--languages", "es", "--minutes-per-language", "0.2",
               "--speakers", "3", "--out", str(tmp_path), "--subset-scale", "0.01", "--lm-sentences", "300"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    line = lines[-1]
    assert lines[-2].startswith("es: ") and "OOV rate vs train" in lines[-2]  # the summary, one line per language
    assert "audio-minutes per wall-minute" in line
    total = sum(sf.info(str(p)).duration for p in (tmp_path / "LibriSpeech").rglob("*.flac")) / 60
    assert line.startswith(f"{total:.1f} min of audio")



# ----------------------------------------------------------------------------------------
# Like real data: durations on target, long test utterances, OOV words, openslr LM files


def _ls_transcripts(root: Path, part: str) -> dict[str, str]:
    out = {}
    for t in (root / "LibriSpeech" / part).rglob("*.trans.txt"):
        out.update(line.split(" ", 1) for line in t.read_text(encoding="utf-8").splitlines())
    return out


def _speaker_languages(root: Path) -> dict[str, str]:
    return dict(line.split() for line in (root / "LibriSpeech" / "speaker_languages.txt").read_text().splitlines())


def _words(text: str, lang: str) -> list[str]:
    return normalize_text(text, lang).split()


def test_minutes_per_language_within_ten_percent(ls_long):
    """--minutes-per-language 2 gave 2.88 minutes of Swahili before durations were measured and corrected."""
    out, res = ls_long
    spk_lang = _speaker_languages(out)
    seconds: dict[str, float] = {}
    for path in (out / "LibriSpeech").rglob("*.flac"):
        lang = spk_lang[path.name.split("-")[0]]
        seconds[lang] = seconds.get(lang, 0.0) + sf.info(str(path)).duration
    assert set(seconds) == {"sw", "en"}
    for lang, sec in seconds.items():
        assert sec / 60 == pytest.approx(3.0, rel=0.10), (lang, sec / 60)
        assert res["summary"][lang]["minutes"] == pytest.approx(sec / 60, abs=1e-3)


def test_test_set_has_long_utterances_and_words_absent_from_train(ls_long):
    out, res = ls_long
    spk_lang = _speaker_languages(out)
    train = _ls_transcripts(out, "train-clean-100")
    test = _ls_transcripts(out, "test-clean")
    summary = json.loads((out / "synth_summary.json").read_text(encoding="utf-8"))
    assert not set(train.values()) & set(test.values())  # sentence-disjoint
    for lang in ("sw", "en"):
        train_vocab = {w for k, t in train.items() if spk_lang[k.split("-")[0]] == lang for w in _words(t, lang)}
        tokens = [w for k, t in test.items() if spk_lang[k.split("-")[0]] == lang for w in _words(t, lang)]
        oov = [w for w in tokens if w not in train_vocab]
        assert 0 < len(oov) < 0.25 * len(tokens), (lang, len(oov), len(tokens))
        durations = [sf.info(str(p)).duration for p in (out / "LibriSpeech" / "test-clean").rglob("*.flac")
                     if spk_lang[p.name.split("-")[0]] == lang]
        long = [d for d in durations if d > 20.0]
        assert long and max(durations) < 40.0, (lang, sorted(durations)[-3:])
        # The summary says what the files say.
        s = summary[lang]["test"]
        assert (s["over_20s"], s["words"], s["oov_words"]) == (len(long), len(tokens), len(oov))
        assert s["max_seconds"] == pytest.approx(max(durations), abs=0.01)
        line = [x for x in (out / "synth_summary.txt").read_text(encoding="utf-8").splitlines() if x.startswith(f"{lang}: ")]
        assert len(line) == 1 and f"test: {len(durations)} utterances, {len(long)} over 20 s" in line[0]


LM_FILES = ["3-gram.arpa.gz", "3-gram.pruned.1e-7.arpa.gz", "4-gram.arpa.gz", "librispeech-lexicon.txt",
            "librispeech-lm-norm.txt.gz", "librispeech-vocab.txt"]


def test_openslr_lm_files_read_back_by_kenlm_and_read_arpa(ls_long):
    import kenlm

    from toolkit.lm.arpa import is_gzip, read_arpa

    out, res = ls_long
    lm_dir = out / "lm"
    assert sorted(p.name for p in lm_dir.iterdir()) == LM_FILES
    lines = gzip.decompress((lm_dir / "librispeech-lm-norm.txt.gz").read_bytes()).decode("utf-8").splitlines()
    # Normalised book-like text, UPPER-case, much larger than the transcripts, without dev/test sentences.
    assert all(line and line == normalize_text(line, "en").upper() for line in lines)
    assert len(lines) > 10 * len(res["utterances"])
    dev_test = set(_ls_transcripts(out, "dev-clean").values()) | set(_ls_transcripts(out, "test-clean").values())
    read_in_dev_test = {normalize_text(s, u.speaker.language).upper() for u in res["utterances"]
                        if u.speaker.split != "train" for s in u.sentences}
    assert dev_test and not (dev_test | read_in_dev_test) & set(lines)
    words = {w for line in lines for w in line.split()}
    vocab = (lm_dir / "librispeech-vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert set(vocab) == words and len(vocab) == len(words)
    counts = {}
    for name, order in [("3-gram.arpa.gz", 3), ("3-gram.pruned.1e-7.arpa.gz", 3), ("4-gram.arpa.gz", 4)]:
        path = lm_dir / name
        assert is_gzip(path)
        ken = kenlm.Model(str(path))
        ours = read_arpa(path)
        assert ken.order == ours.order == order
        unigrams = {ng[0] for ng in ours.ngrams[0]}
        assert unigrams - {"<s>", "</s>", "<unk>"} == words  # UPPER-case words, as openslr's
        for line in lines[:: max(1, len(lines) // 25)]:
            assert all(w in ken for w in line.split())
            assert ken.score(line) == pytest.approx(ours.score(line), abs=1e-4)
        counts[name] = [len(t) for t in ours.ngrams]
    assert counts["3-gram.pruned.1e-7.arpa.gz"][1] < counts["3-gram.arpa.gz"][1]
    assert counts["4-gram.arpa.gz"][:3] == counts["3-gram.arpa.gz"]
    # The LM knows test words that training lacks (an external LM text does; the transcripts do not).
    ken = kenlm.Model(str(lm_dir / "3-gram.arpa.gz"))
    train_words = {w for t in _ls_transcripts(out, "train-clean-100").values() for w in t.split()}
    test_oov = {w for t in _ls_transcripts(out, "test-clean").values() for w in t.split()} - train_words
    assert test_oov and any(w in ken for w in test_oov)


def test_openslr_lexicon_format(ls_long):
    out, _ = ls_long
    lm_dir = out / "lm"
    text = (lm_dir / "librispeech-lexicon.txt").read_text(encoding="utf-8")
    entries = [line.split("\t") for line in text.splitlines()]
    assert all(len(e) == 2 and re.fullmatch(r"\S+", e[0]) and re.fullmatch(r"\S+( \S+)*", e[1]) for e in entries)
    assert [e[0] for e in entries] == sorted(e[0] for e in entries)
    assert all(w == w.upper() for w, _ in entries)
    vocab = set((lm_dir / "librispeech-vocab.txt").read_text(encoding="utf-8").split())
    assert {w for w, _ in entries} == vocab
    # Pronunciations are espeak-ng's phonemes of the word, in the word's language.
    lexicon: dict[str, set[str]] = {}
    for w, phones in entries:
        lexicon.setdefault(w, set()).add(phones)
    english_only = sorted(w for w in load_lexicon("en").vocabulary() if " " not in w and w.upper() in lexicon
                          and w not in {v for vs in load_lexicon("sw").vocabulary() for v in vs.split()})[:3]
    assert english_only
    for w in english_only:
        ph = subprocess.run(["espeak-ng", "-q", "-x", "--sep= ", "-v", "en-us"], input=f"{w}.\n".encode(),
                            capture_output=True, check=True).stdout.decode().split()
        assert " ".join(ph) in lexicon[w.upper()], w


def test_commonvoice_sentence_file(cv_corpus):
    from toolkit.data.synth_lm import CV_SENTENCE_COLUMNS

    out, _ = cv_corpus
    for lang in CV_LANGS:
        clips: dict[str, int] = {}
        for split in ("train", "dev", "test"):
            with open(out / lang / f"{split}.tsv", newline="", encoding="utf-8") as f:
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                    clips[r["sentence"]] = clips.get(r["sentence"], 0) + 1
        with open(out / lang / "validated_sentences.tsv", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            rows = list(reader)
        assert tuple(reader.fieldnames) == CV_SENTENCE_COLUMNS
        by_sentence = {r["sentence"]: r for r in rows}
        assert len(by_sentence) == len(rows) > 10 * sum(clips.values())  # many more sentences than were recorded
        for sentence, n in clips.items():
            r = by_sentence[sentence]
            assert (r["is_used"], r["clips_count"]) == ("1", str(n))
        assert all(r["sentence_id"] == hashlib.sha256(r["sentence"].encode()).hexdigest() for r in rows)
        assert sum(r["is_used"] == "0" for r in rows) == len(rows) - len(clips)


PT_NOUNS = ("casa árvore rio jardim janela mesa cidade montanha estrada professor criança amigo mãe pai médico "
            "carta história manhã noite inverno verão água pão maçã cavalo pássaro cão gato barco comboio escola "
            "mercado aldeia floresta porta livro canção música papel pedra flor ilha ponte praia chuva vento").split()
PT_VERBS = "vê tem leva pinta procura compra vende lava abre fecha encontra segura".split()


def _portuguese_sentences(n: int) -> list[str]:
    rows = []
    for k in range(n):
        a, b = PT_NOUNS[k % len(PT_NOUNS)], PT_NOUNS[(7 * k + 3) % len(PT_NOUNS)]
        rows.append(f"A {a} {PT_VERBS[k % len(PT_VERBS)]} a {b}, disse o {PT_NOUNS[(3 * k + 11) % len(PT_NOUNS)]}.")
    return rows


def test_text_option_for_a_language_without_word_list(tmp_path):
    sentences = _portuguese_sentences(90)
    text = tmp_path / "pt.txt"
    text.write_text("\n".join(sentences + ["", "   ", sentences[0]]) + "\n", encoding="utf-8")  # blanks, a repeat
    assert "pt" not in available_languages()
    out = tmp_path / "cv"
    res = synth.synthesize_corpus("commonvoice", ["pt"], 0.6, 3, out, seed=1, test_fraction=0.34,
                                  text_files={"pt": text})
    assert res["summary"]["pt"]["text"] == str(text)
    by_split: dict[str, list[dict]] = {}
    for split in ("train", "dev", "test"):
        with open(out / "pt" / f"{split}.tsv", newline="", encoding="utf-8") as f:
            by_split[split] = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        assert by_split[split] and all(r["locale"] == "pt" and r["sentence"] in sentences for r in by_split[split])
    said = {split: {r["sentence"] for r in rows} for split, rows in by_split.items()}
    assert not said["train"] & said["dev"] and not said["train"] & said["test"] and not said["dev"] & said["test"]
    train_vocab = {w for s in said["train"] for w in _words(s, "pt")}
    assert {w for s in said["test"] for w in _words(s, "pt")} - train_vocab  # test words absent from train
    with open(out / "pt" / "validated_sentences.tsv", newline="", encoding="utf-8") as f:
        listed = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    assert sorted(listed) == sorted(set(sentences))  # every sentence of the file, once
    for clip in list((out / "pt" / "clips").glob("*.mp3"))[:2]:
        assert sf.info(str(clip)).samplerate == 48000
    # A seed fixes the split of a file's sentences; another seed changes it.
    from toolkit.data.synth_text import corpus_text

    fractions = {"train": 0.6, "dev": 0.2, "test": 0.2}
    assert corpus_text("pt", 4, fractions, text).splits == corpus_text("pt", 4, fractions, text).splits
    assert corpus_text("pt", 4, fractions, text).splits != corpus_text("pt", 5, fractions, text).splits


def test_text_option_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from toolkit.cli import main

    good = tmp_path / "pt.txt"
    good.write_text("\n".join(_portuguese_sentences(20)) + "\n", encoding="utf-8")
    few = tmp_path / "few.txt"
    few.write_text("Uma frase.\n\nOutra frase.\n", encoding="utf-8")
    # a paragraph on one line became one utterance of 21 minutes (+4252% of the language's target)
    paragraph = tmp_path / "paragraph.txt"
    paragraph.write_text("\n".join(_portuguese_sentences(5)) + "\n" + " ".join(["palavra"] * 101) + "\n",
                         encoding="utf-8")
    cases = [
        (["--text", f"pt={paragraph}"], f"{paragraph}:6: a line of 101 words"),
        (["--text", f"qq={good}"], "espeak-ng has no voice for language 'qq'"),
        (["--text", f"pt={tmp_path / 'missing.txt'}"], "file not found"),
        (["--text", f"pt={few}"], "2 distinct sentence(s)"),
        (["--languages", "en", "--text", f"pt={good}"], "pt is not in --languages en"),
        (["--text", str(good)], "use --text LANG=FILE"),
        (["--text", f"pt={good}", "--rare-words", "-1"], "--rare-words -1: give 0 to"),  # no word list to check it
    ]
    for k, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{k}"
        rc = main(["synth-corpus", "--format", "commonvoice", "--minutes-per-language", "0.1", "--speakers", "3",
                   "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and message in err and "\n" not in err, (extra, err)
        assert not out.exists() or not any(out.rglob("*")), extra


@pytest.mark.parametrize("lang", ["en", "el"])
def test_heldout_words_never_in_train_but_in_dev_test_and_lm_text(lang):
    from toolkit.data.synth_text import OOV_SENTENCE_SHARE, corpus_text

    fractions = {"train": 0.8, "dev": 0.1, "test": 0.1}
    text = corpus_text(lang, 3, fractions, lm_sentences=4000)
    assert len(text.pool) == 4000 and len(set(text.pool)) == 4000 and text.heldout
    has_heldout = {s: bool(text.heldout & set(_words(s, lang))) for s in text.pool}
    lists = text.splits
    assert not any(has_heldout[s] for s in lists["train"])
    assert not set(lists["train"]) & set(lists["dev"]) and not set(lists["dev"]) & set(lists["test"])
    for split in ("dev", "test"):
        first = lists[split][:50]  # what a small test set records: its share from the start
        assert sum(has_heldout[s] for s in first) / 50 == pytest.approx(OOV_SENTENCE_SHARE, abs=0.03)
    lm_only = set(text.pool) - set(lists["dev"]) - set(lists["test"])
    lm_words = {w for s in lm_only for w in _words(s, lang)}
    assert text.heldout <= lm_words  # an external LM text knows them


def test_upper_case_arpa_keeps_every_probability(tmp_path):
    """An ARPA trained on lower-case text becomes openslr's UPPER-case; KenLM scores agree word for word;
    words that only differ in case cannot be merged silently."""
    import kenlm

    from toolkit.data.synth_lm import train_arpa, upper_case_arpa

    sentences = [" ".join(s) for s in (["die", "straße", "ist", "lang"], ["the", "dog", "is", "long"],
                                       ["ο", "σκύλος", "τρέχει"], ["the", "dog", "runs"], ["die", "katze", "ist", "da"])]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(sentences * 3) + "\n", encoding="utf-8")
    lower, upper = tmp_path / "lower.arpa", tmp_path / "upper.arpa.gz"
    train_arpa(text, 3, lower, None)
    upper_case_arpa(lower, upper)
    ken_lower, ken_upper = kenlm.Model(str(lower)), kenlm.Model(str(upper))
    for s in sentences + ["the cat is long", "ο σκύλος ist"]:
        assert ken_upper.score(s.upper()) == pytest.approx(ken_lower.score(s), abs=1e-5), s
    assert "STRASSE" in ken_upper and "ΣΚΎΛΟΣ" in ken_upper and "dog" not in ken_upper
    plain = tmp_path / "upper.arpa"  # already UPPER-case: the same bytes again
    plain.write_bytes(gzip.decompress(upper.read_bytes()))
    again = tmp_path / "again.arpa.gz"
    upper_case_arpa(plain, again)
    assert again.read_bytes() == upper.read_bytes()
    lower_lines = lower.read_text(encoding="utf-8").splitlines()  # only the words changed
    upper_lines = plain.read_text(encoding="utf-8").splitlines()
    assert len(lower_lines) == len(upper_lines)
    assert all(a.split("\t")[0::2] == b.split("\t")[0::2] for a, b in zip(lower_lines, upper_lines) if "\t" in a)

    clash = tmp_path / "clash.arpa"
    clash.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\t<s>\n-1.0\tdog\n-1.0\tDog\n\n\\end\\\n",
                     encoding="utf-8")
    with pytest.raises(ToolkitError, match="merges two 1-grams into 'DOG'"):
        upper_case_arpa(clash, tmp_path / "clash.arpa.gz")
