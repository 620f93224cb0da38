"""`toolkit prepare`: lhotse cut manifests with normalised text, ISO languages and speakers;
every bad utterance gives one warning naming its file and is counted; nothing usable -> error."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from toolkit.data import synth
from toolkit.data import validate as V
from toolkit.data.prepare import prepare
from toolkit.text.normalize import normalize_text
from toolkit.utils import ToolkitError


@pytest.fixture(scope="module")
def ls_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("ls")
    synth.synthesize_corpus("librispeech", ["en", "ru"], 0.5, 3, out, seed=4, subset_scale=0.02)
    return out


@pytest.fixture(scope="module")
def cv_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    synth.synthesize_corpus("commonvoice", ["fr", "el"], 0.3, 3, out, seed=6)
    return out


@pytest.fixture(scope="module")
def ls_manifests(ls_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ls_man")
    report = prepare("librispeech", ls_corpus, out)
    return out, report


def _load(path: Path):
    from lhotse import CutSet

    return CutSet.from_file(path).to_eager()


def test_librispeech_manifests(ls_corpus, ls_manifests):
    out, report = ls_manifests
    names = sorted(p.name for p in out.glob("*.jsonl.gz"))
    assert names == [f"librispeech_cuts_{s}.jsonl.gz" for s in
                     ["dev-clean", "test-clean", "train-10h", "train-10m", "train-1h", "train-clean-100"]]
    spk_lang = dict(line.split() for line in (ls_corpus / "LibriSpeech" / "speaker_languages.txt").read_text().splitlines())
    trans = {}
    for t in (ls_corpus / "LibriSpeech").rglob("*.trans.txt"):
        trans.update(line.split(" ", 1) for line in t.read_text(encoding="utf-8").splitlines())
    train = _load(out / "librispeech_cuts_train-clean-100.jsonl.gz")
    assert len(train) == sum(1 for k in trans if (ls_corpus / "LibriSpeech" / "train-clean-100" / k.split("-")[0]).is_dir())
    for cut in train:
        sup = cut.supervisions[0]
        assert cut.id == sup.id
        assert sup.custom["orig_text"] == trans[sup.id]
        assert sup.text == normalize_text(trans[sup.id], spk_lang[sup.speaker]) and sup.text == sup.text.lower()
        assert sup.language == spk_lang[sup.speaker] and sup.speaker == sup.id.split("-")[0]
        assert cut.sampling_rate == 16000
        info = sf.info(cut.recording.sources[0].source)
        assert cut.num_samples == info.frames
    assert {c.supervisions[0].language for c in train} == {"en", "ru"}
    audio = train[0].load_audio()
    ref, sr = sf.read(train[0].recording.sources[0].source, dtype="float32")
    assert sr == 16000 and np.allclose(audio[0], ref, atol=1e-6)
    # Libri-light subsets are nested subsets of train with the same cut ids.
    ten_m = _load(out / "librispeech_cuts_train-10m.jsonl.gz")
    one_h = _load(out / "librispeech_cuts_train-1h.jsonl.gz")
    assert set(ten_m.ids) <= set(one_h.ids) <= set(train.ids)
    assert sum(c.duration for c in ten_m) == pytest.approx(12.0, rel=0.05)
    assert report.total_dropped() == 0
    assert any(n.startswith("overlap: librispeech dev-clean: 0 of") for n in report.notes)


def test_rerun_skips_existing_and_overwrite_redoes(ls_corpus, ls_manifests, caplog):
    out, _ = ls_manifests
    target = out / "librispeech_cuts_dev-clean.jsonl.gz"
    before = target.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="toolkit.data.prepare"):
        prepare("librispeech", ls_corpus, out, splits=["dev-clean"])
    assert target.stat().st_mtime_ns == before
    assert any("skipping librispeech dev-clean" in r.getMessage() for r in caplog.records)
    prepare("librispeech", ls_corpus, out, splits=["dev-clean"], overwrite=True)
    assert target.stat().st_mtime_ns != before
    assert not list(out.glob(".*"))  # no staging dirs or temp files left behind


def test_commonvoice_manifests_resampled_with_languages(cv_corpus, tmp_path):
    report = prepare("commonvoice", cv_corpus, tmp_path, nj=2)
    for lang in ("fr", "el"):
        with open(cv_corpus / lang / "train.tsv", newline="", encoding="utf-8") as f:
            rows = {r["path"]: r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
        cuts = _load(tmp_path / f"cv-{lang}_cuts_train.jsonl.gz")
        assert len(cuts) == len(rows)
        for cut in cuts:
            sup = cut.supervisions[0]
            row = rows[Path(cut.recording.sources[0].source).name]
            assert sup.language == lang and sup.speaker == row["client_id"]
            assert sup.custom["orig_text"] == row["sentence"]
            assert sup.text == normalize_text(row["sentence"], lang)
            assert cut.sampling_rate == 16000
        audio = cuts[0].load_audio()
        assert audio.shape == (1, cuts[0].num_samples)
        src = sf.info(cuts[0].recording.sources[0].source)
        assert src.samplerate == 48000 and cuts[0].duration == pytest.approx(src.duration, abs=1e-3)
    greek = _load(tmp_path / "cv-el_cuts_dev.jsonl.gz")
    assert all("\u0370" <= ch <= "\u03ff" or ch == " " for c in greek for ch in c.supervisions[0].text)
    assert len([n for n in report.notes if n.startswith("overlap: ")]) == 4


def test_languages_filter(cv_corpus, tmp_path):
    prepare("commonvoice", cv_corpus, tmp_path, languages=["el"], splits=["dev"])
    assert [p.name for p in tmp_path.glob("*.jsonl.gz")] == ["cv-el_cuts_dev.jsonl.gz"]


def test_dev_sentences_in_train_are_reported(cv_corpus, tmp_path):
    corpus = tmp_path / "cv"
    shutil.copytree(cv_corpus / "fr", corpus / "fr")
    tsv = corpus / "fr" / "dev.tsv"
    lines = tsv.read_text(encoding="utf-8").splitlines()
    train_sentence = (corpus / "fr" / "train.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")[3]
    fields = lines[1].split("\t")
    fields[3] = train_sentence
    tsv.write_text("\n".join([lines[0], "\t".join(fields)] + lines[2:]) + "\n", encoding="utf-8")
    report = prepare("commonvoice", corpus, tmp_path / "man")
    assert f"overlap: cv-fr dev: 1 of {len(lines) - 1} sentences also in train" in "\n".join(report.notes)


def _tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def _write_tsv(path: Path, rows: list[list[str]], prefix: str = "", newline: str = "\n") -> None:
    path.write_text(prefix + "".join("\t".join(r) + newline for r in rows), encoding="utf-8")


def test_commonvoice_tsv_as_real_files_differ(cv_corpus, tmp_path):
    """A byte-order mark, CRLF and a U+2028 inside a sentence keep every row and its text; a row
    with a tab inside a field is a one-line error naming the line (it shifted the metadata and cut
    the transcript); a release without the newer metadata columns is read with them empty."""
    corpus = tmp_path / "cv"
    shutil.copytree(cv_corpus / "fr", corpus / "fr")
    train = corpus / "fr" / "train.tsv"
    rows = _tsv(train)
    col = rows[0].index("sentence")
    rows[1][col] = rows[1][col].rstrip(".") + "\u2028bonjour."
    _write_tsv(train, rows, prefix="\ufeff", newline="\r\n")
    prepare("commonvoice", corpus, tmp_path / "m1", splits=["train"])
    cuts = _load(tmp_path / "m1" / "cv-fr_cuts_train.jsonl.gz")
    assert len(cuts) == len(rows) - 1
    assert cuts[Path(rows[1][rows[0].index("path")]).stem].supervisions[0].text.endswith(" bonjour")
    # a tab inside the sentence of the third row
    bad = [r[:] for r in rows]
    bad[3][col] = bad[3][col].replace(" ", "\t", 1)
    _write_tsv(train, bad)
    with pytest.raises(ToolkitError) as e:
        prepare("commonvoice", corpus, tmp_path / "m2", splits=["train"])
    assert str(e.value) == (f"{train}:4: {len(rows[0]) + 1} tab-separated fields where the header has {len(rows[0])} "
                            "(a tab inside a field?); fix or remove the row")
    assert not (tmp_path / "m2" / "cv-fr_cuts_train.jsonl.gz").exists()
    # an older release: no variant, no accents
    keep = [i for i, c in enumerate(rows[0]) if c not in ("variant", "accents")]
    _write_tsv(train, [[r[i] for i in keep] for r in rows])
    prepare("commonvoice", corpus, tmp_path / "m3", splits=["train"])
    assert len(_load(tmp_path / "m3" / "cv-fr_cuts_train.jsonl.gz")) == len(rows) - 1
    _write_tsv(train, [[c for c in r if c != r[col]] for r in rows[:1]] + [r[:col] + r[col + 1:] for r in rows[1:]])
    with pytest.raises(ToolkitError, match="missing column.s. sentence; a Common Voice TSV has at least"):
        prepare("commonvoice", corpus, tmp_path / "m4", splits=["train"])


def test_validated_split_leaves_out_the_dev_and_test_clips(cv_corpus, tmp_path):
    """validated.tsv lists every dev and test clip too: prepared beside them, it leaves them out
    and the summary says so (a model trained on it was tested on its own training clips)."""
    corpus = tmp_path / "cv"
    shutil.copytree(cv_corpus / "fr", corpus / "fr")
    n_eval = sum(len(_tsv(corpus / "fr" / f"{s}.tsv")) - 1 for s in ("dev", "test"))
    n_validated = len(_tsv(corpus / "fr" / "validated.tsv")) - 1
    assert n_eval > 0 and n_validated > n_eval
    report = prepare("commonvoice", corpus, tmp_path / "man", splits=["validated", "dev", "test"])
    validated = _load(tmp_path / "man" / "cv-fr_cuts_validated.jsonl.gz")
    evaluation = {c.id for s in ("dev", "test") for c in _load(tmp_path / "man" / f"cv-fr_cuts_{s}.jsonl.gz")}
    assert len(validated) == n_validated - n_eval and not {c.id for c in validated} & evaluation
    assert (f"cv-fr_validated: {n_eval} clips of dev.tsv/test.tsv left out (this split lists them too; they stay in "
            "dev and test only)") in report.notes


def test_librispeech_transcripts_with_a_byte_order_mark_or_bad_bytes(ls_corpus, tmp_path):
    """A byte-order mark kept the first utterance of the file out (its id no longer matched its
    flac: dropped as "missing audio"); bytes that are not UTF-8 and a malformed speaker-language
    line are one-line errors naming the file and line."""
    corpus = tmp_path / "corpus"
    shutil.copytree(ls_corpus / "LibriSpeech", corpus / "LibriSpeech")
    part = corpus / "LibriSpeech" / "dev-clean"
    trans = sorted(part.rglob("*.trans.txt"))[0]
    n_listed = sum(len(t.read_text(encoding="utf-8").splitlines()) for t in part.rglob("*.trans.txt"))
    trans.write_bytes(b"\xef\xbb\xbf" + trans.read_bytes().replace(b"\n", b"\r\n"))
    report = prepare("librispeech", corpus, tmp_path / "m1", splits=["dev-clean"])
    assert report.kept["librispeech_dev-clean"] == n_listed and report.total_dropped("librispeech_dev-clean") == 0
    trans.write_bytes(trans.read_bytes().replace(b" ", b" \xff", 1))
    with pytest.raises(ToolkitError, match=f"{trans}:1: not UTF-8 .byte [0-9]+.; convert the file to UTF-8"):
        prepare("librispeech", corpus, tmp_path / "m2", splits=["dev-clean"])
    langs = corpus / "LibriSpeech" / "speaker_languages.txt"
    langs.write_text(langs.read_text(encoding="utf-8") + "1234\n", encoding="utf-8")
    n = len(langs.read_text(encoding="utf-8").splitlines())
    with pytest.raises(ToolkitError, match=f"speaker_languages.txt:{n}: 1 fields; each line is 'SPEAKER LANGUAGE'"):
        prepare("librispeech", corpus, tmp_path / "m3", splits=["dev-clean"])


def _damage_librispeech(corpus: Path) -> dict[str, str]:
    """Break seven train utterances, one per failure mode; returns file name -> expected reason."""
    part = corpus / "LibriSpeech" / "train-clean-100"
    flacs = sorted(part.rglob("*.flac"))
    expected = {}
    missing, garbage, truncated, empty, short, long, dense = flacs[:7]
    missing.unlink()
    expected[missing.name] = "missing audio file"
    garbage.write_bytes(b"this is not audio" * 200)
    expected[garbage.name] = "unreadable audio"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 5])
    expected[truncated.name] = "corrupt audio"
    trans = next(empty.parent.glob("*.trans.txt"))
    trans.write_text("".join(f"{ln.split()[0]} ...\n" if ln.startswith(empty.stem) else ln + "\n"
                             for ln in trans.read_text(encoding="utf-8").splitlines()), encoding="utf-8")
    expected[empty.name] = "empty text after normalisation"
    sf.write(short, np.zeros(800, dtype="float32"), 16000, format="FLAC")  # 0.05 s
    expected[short.name] = "too short"
    sf.write(long, 0.1 * np.random.default_rng(0).standard_normal(16000 * 21).astype("float32"), 16000, format="FLAC")
    expected[long.name] = "too long"
    sf.write(dense, np.zeros(3200, dtype="float32"), 16000, format="FLAC")  # 0.2 s: 10 frames for a sentence
    expected[dense.name] = "text too long for the audio"
    return expected


def test_each_bad_utterance_one_warning_naming_the_file(ls_corpus, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    shutil.copytree(ls_corpus / "LibriSpeech", corpus / "LibriSpeech")
    expected = _damage_librispeech(corpus)
    n_listed = sum(len(t.read_text().splitlines()) for t in (corpus / "LibriSpeech" / "train-clean-100").rglob("*.trans.txt"))
    with caplog.at_level(logging.WARNING, logger="toolkit.data.prepare"):
        report = prepare("librispeech", corpus, tmp_path / "man", splits=["train-clean-100"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "dropped" in r.getMessage()]
    assert len(warnings) == len(expected)
    for name, reason in expected.items():
        lines = [w for w in warnings if name in w]
        assert len(lines) == 1 and reason in lines[0] and "\n" not in lines[0], (name, lines)
    manifest = "librispeech_train-clean-100"
    assert report.total_dropped(manifest) == 7 and report.kept[manifest] == n_listed - 7
    assert sum(n for r, n in report.dropped[manifest].items() if r.startswith("too short")) == 1
    cuts = _load(tmp_path / "man" / "librispeech_cuts_train-clean-100.jsonl.gz")
    assert len(cuts) == n_listed - 7
    assert not {Path(c.recording.sources[0].source).name for c in cuts} & set(expected)
    assert "7 (" in report.summary()


def test_nothing_usable_is_a_one_line_error(cv_corpus, tmp_path, capsys):
    from toolkit.cli import main

    corpus = tmp_path / "cv"
    shutil.copytree(cv_corpus / "el", corpus / "el")
    shutil.rmtree(corpus / "el" / "clips")
    with pytest.raises(ToolkitError, match="no usable utterance"):
        prepare("commonvoice", corpus, tmp_path / "man")
    rc = main(["prepare", "commonvoice", "--corpus-dir", str(corpus), "--out", str(tmp_path / "man2")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("toolkit prepare: error:")]
    assert rc == 1 and len(err) == 1 and str(corpus) in err[0]
    assert not list((tmp_path / "man2").glob("*.jsonl.gz"))


def test_bad_corpus_dir_and_split_errors(ls_corpus, tmp_path):
    with pytest.raises(ToolkitError, match="no LibriSpeech/ folder"):
        prepare("librispeech", tmp_path, tmp_path / "man")
    with pytest.raises(ToolkitError, match="train-other-500 not found"):
        prepare("librispeech", ls_corpus, tmp_path / "man", splits=["train-other-500"])
    with pytest.raises(ToolkitError, match="no <lang>/train.tsv"):
        prepare("commonvoice", tmp_path, tmp_path / "man")


def test_frame_count_matches_the_feature_encoder_convolutions():
    from toolkit.model.config import num_frames

    # Independent reference: walk the 7 convolutions of the wav2vec 2.0 feature encoder.
    for samples in (399, 400, 401, 719, 720, 1600, 16000, 12345):
        length = samples
        for k, s in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
            length = max(0, (length - k) // s + 1) if length >= k else 0
        assert num_frames(samples) == length, samples
    assert V.resolve_min_duration("auto") == V.AUTO_MIN_DURATION
    assert V.resolve_min_duration("0.001") == 400 / 16000  # never below one frame
    assert V.text_min_frames("aa b") == 5  # a a | b + one blank between the repeated a's


@pytest.fixture(scope="module")
def yesno_corpus(tmp_path_factory):
    """The yesno layout spoken by espeak-ng; one file is 20 ms long (too short for the model)."""
    from yesno_tree import make_yesno_tree

    out = tmp_path_factory.mktemp("yesno")
    return out, make_yesno_tree(out, short_index=7)[7]


def test_any_lhotse_recipe_through_prepare_lhotse(yesno_corpus, tmp_path, caplog):
    from toolkit.data.prepare_lhotse import prepare_lhotse

    corpus, short = yesno_corpus
    with caplog.at_level(logging.WARNING):
        report = prepare_lhotse("yesno", corpus, tmp_path, "en", nj=1)
    assert report.total_dropped() == 1
    train, test = _load(tmp_path / "yesno_cuts_train.jsonl.gz"), _load(tmp_path / "yesno_cuts_test.jsonl.gz")
    assert len(train) + len(test) == 59  # lhotse puts 30 files in each; the 20 ms one is dropped
    dropped = [r.getMessage() for r in caplog.records if f"{short}.wav" in r.getMessage()]
    assert len(dropped) == 1 and "too short" in dropped[0]
    for cut in list(train) + list(test):
        sup = cut.supervisions[0]
        assert cut.id == sup.id and cut.sampling_rate == 16000 and sup.language == "en"
        assert sup.text == " ".join("yes" if d == "1" else "no" for d in cut.id.split("_"))
        assert sup.custom["orig_text"] == sup.text.upper()  # lhotse's YES/NO, normalised
        assert abs(cut.load_audio().shape[1] / 16000 - cut.duration) < 0.01


def test_prepare_lhotse_errors(yesno_corpus, tmp_path):
    from toolkit.data.prepare_lhotse import prepare_lhotse

    corpus, _ = yesno_corpus
    with pytest.raises(ToolkitError, match="lhotse has no prepare_nosuch"):
        prepare_lhotse("nosuch", corpus, tmp_path, "en")
    with pytest.raises(ToolkitError, match="--corpus-dir .*not found"):
        prepare_lhotse("yesno", tmp_path / "missing", tmp_path, "en")
    with pytest.raises(ToolkitError, match="prepare_yesno failed"):
        prepare_lhotse("yesno", tmp_path, tmp_path, "en")  # an empty folder: lhotse's own assertion
    with pytest.raises(ToolkitError, match="--splits: dev not returned"):
        prepare_lhotse("yesno", corpus, tmp_path, "en", splits=["dev"])
    with pytest.raises(ToolkitError, match="ISO 639"):
        prepare_lhotse("yesno", corpus, tmp_path, "English")
    from toolkit.cli import main

    assert main(["prepare", "lhotse", "--corpus-dir", str(corpus), "--out", str(tmp_path)]) == 1  # no --recipe
    assert main(["prepare", "lhotse", "--recipe", "yesno", "--language", "en", "--corpus-dir", str(corpus),
                 "--out", str(tmp_path / "cli"), "--nj", "1"]) == 0
    assert (tmp_path / "cli" / "yesno_cuts_train.jsonl.gz").is_file()


def test_test_sets_are_kept_whole_and_training_limits_apply_to_training_only(ls_corpus, tmp_path):
    """LibriSpeech dev/test hold utterances up to ~35 s: scored in full, never cut by --max-duration."""
    corpus = tmp_path / "corpus"
    shutil.copytree(ls_corpus / "LibriSpeech", corpus / "LibriSpeech")
    rng = np.random.default_rng(1)
    long_test = sorted((corpus / "LibriSpeech" / "test-clean").rglob("*.flac"))[0]
    long_train = sorted((corpus / "LibriSpeech" / "train-clean-100").rglob("*.flac"))[0]
    for f in (long_test, long_train):
        sf.write(f, 0.1 * rng.standard_normal(16000 * 30).astype("float32"), 16000, format="FLAC")  # 30 s
    report = prepare("librispeech", corpus, tmp_path / "man", splits=["train-clean-100", "test-clean"])
    test_cuts = _load(tmp_path / "man" / "librispeech_cuts_test-clean.jsonl.gz")
    n_test = sum(len(t.read_text().splitlines()) for t in (corpus / "LibriSpeech" / "test-clean").rglob("*.trans.txt"))
    assert len(test_cuts) == n_test and report.total_dropped("librispeech_test-clean") == 0
    assert max(c.duration for c in test_cuts) == pytest.approx(30.0)
    assert long_train.stem not in {c.id for c in _load(tmp_path / "man" / "librispeech_cuts_train-clean-100.jsonl.gz")}
    assert any("too long" in r for r in report.dropped["librispeech_train-clean-100"])
    note = [n for n in report.notes if n.startswith("librispeech_test-clean: evaluation split kept whole")]
    assert note == [f"librispeech_test-clean: evaluation split kept whole ({n_test} utterances; 1 longer than "
                    "--max-duration 20 s, the longest 30.0 s)"]
    assert note[0] in report.summary()


def test_an_emptied_split_removes_its_old_manifest_and_fails_naming_it(cv_corpus, tmp_path):
    corpus = tmp_path / "cv"
    shutil.copytree(cv_corpus / "fr", corpus / "fr")
    out = tmp_path / "man"
    prepare("commonvoice", corpus, out)
    dev = out / "cv-fr_cuts_dev.jsonl.gz"
    assert dev.is_file()
    for row in (corpus / "fr" / "dev.tsv").read_text().splitlines()[1:]:  # every dev clip disappears
        (corpus / "fr" / "clips" / row.split("\t")[1]).unlink()
    train_before = [c.to_dict() for c in _load(out / "cv-fr_cuts_train.jsonl.gz")]
    with pytest.raises(ToolkitError) as e:
        prepare("commonvoice", corpus, out, overwrite=True)
    assert "no usable utterance in split(s) cv-fr_dev" in str(e.value) and "\n" not in str(e.value)
    assert not dev.exists()  # no stale manifest that a later stage would trust
    assert [c.to_dict() for c in _load(out / "cv-fr_cuts_train.jsonl.gz")] == train_before  # the others: redone, same


def test_audio_with_nan_samples_is_dropped_at_prepare(cv_corpus, tmp_path, caplog):
    corpus = tmp_path / "cv"
    shutil.copytree(cv_corpus / "fr", corpus / "fr")
    tsv = corpus / "fr" / "test.tsv"
    lines = tsv.read_text().splitlines()
    fields = lines[1].split("\t")
    bad = np.full(16000, 0.1, dtype="float32")
    bad[100:200] = np.nan
    sf.write(corpus / "fr" / "clips" / "nan.wav", bad, 16000, subtype="FLOAT")
    fields[1] = "nan.wav"
    tsv.write_text("\n".join(lines + ["\t".join(fields)]) + "\n", encoding="utf-8")  # one more row
    with caplog.at_level(logging.WARNING, logger="toolkit.data.prepare"):
        report = prepare("commonvoice", corpus, tmp_path / "man", splits=["test"])
    cuts = _load(tmp_path / "man" / "cv-fr_cuts_test.jsonl.gz")
    assert "nan" not in {c.id for c in cuts} and len(cuts) == len(lines) - 1
    msgs = [r.getMessage() for r in caplog.records if "nan.wav" in r.getMessage()]
    assert len(msgs) == 1 and "corrupt audio (NaN or infinite samples)" in msgs[0]
    assert report.dropped["cv-fr_test"]["corrupt audio (NaN or infinite samples)"] == 1


def test_foreign_script_text_is_counted_and_refused_above_the_share(cv_corpus, tmp_path):
    corpus = tmp_path / "cv"
    shutil.copytree(cv_corpus / "fr", corpus / "fr")
    tsv = corpus / "fr" / "train.tsv"
    lines = tsv.read_text(encoding="utf-8").splitlines()
    fields = lines[1].split("\t")
    fields[3] = "Привет мир"  # a Russian sentence in the French corpus
    lines[1] = "\t".join(fields)
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    n = len(lines) - 1
    with pytest.raises(ToolkitError) as e:
        prepare("commonvoice", corpus, tmp_path / "man", splits=["train"])
    msg = str(e.value)
    assert f"cv-fr_train: 1 of {n} utterances of language fr ({100 / n:.1f}%) hold letters of another script than " \
           "LATIN (e.g. CYRILLIC in " in msg and "--max-foreign-share 0.02" in msg and "\n" not in msg
    assert not (tmp_path / "man" / "cv-fr_cuts_train.jsonl.gz").exists()
    report = prepare("commonvoice", corpus, tmp_path / "man", splits=["train"], max_foreign_share=0.5)
    assert any("hold letters of another script than LATIN" in note for note in report.notes)
    assert len(_load(tmp_path / "man" / "cv-fr_cuts_train.jsonl.gz")) == n  # kept, and counted
