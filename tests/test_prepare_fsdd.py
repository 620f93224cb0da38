"""`toolkit prepare fsdd` on a small tree in FSDD's layout (recordings/<digit>_<speaker>_<index>.wav,
8 kHz): speaker-disjoint splits, connected-digit utterances whose audio is the source recordings at
the recorded offsets with noise-filled pauses, text read from the file names, 16 kHz on the fly,
one-line errors and dropped files named. (The real corpus: the slow test in test_fsdd_recipe.py.)
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from toolkit.data.prepare_fsdd import DIGITS, group_sizes, prepare_fsdd
from toolkit.utils import ToolkitError

SR = 8000
SPEAKERS = ("anna", "bert", "carl", "dora")


def make_tree(root: Path, speakers=SPEAKERS, takes: int = 2) -> dict[str, np.ndarray]:
    """Each recording: a speaker-specific noise floor plus a tone burst (distinct per file)."""
    rng = np.random.default_rng(0)
    audio = {}
    (root / "recordings").mkdir(parents=True)
    for s, spk in enumerate(speakers):
        floor = 0.002 * (s + 1)
        for d in range(10):
            for i in range(takes):
                n = int(SR * (0.3 + 0.02 * d + 0.01 * i))
                t = np.arange(n) / SR
                wav = floor * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * (200 + 50 * d + 7 * s) * t) * (
                    (t > 0.05) & (t < t[-1] - 0.05))
                wav = wav.astype(np.float32)
                sf.write(str(root / "recordings" / f"{d}_{spk}_{i}.wav"), wav, SR, subtype="PCM_16")
                audio[f"{d}_{spk}_{i}"] = sf.read(str(root / "recordings" / f"{d}_{spk}_{i}.wav"), dtype="float32")[0]
    return audio


def read(out: Path, name: str):
    from lhotse import CutSet

    return CutSet.from_file(out / f"fsdd_cuts_{name}.jsonl.gz").to_eager()


def test_group_sizes_cover_every_take_within_bounds():
    import random

    for n in (3, 4, 8, 13, 50, 101):
        for seed in range(20):
            sizes = group_sizes(n, 3, 7, random.Random(seed))
            assert sum(sizes) == n and all(3 <= k <= 7 for k in sizes), (n, sizes)
    assert group_sizes(2, 3, 7, random.Random(0)) == [2]  # fewer takes than a group: one short group
    assert group_sizes(10, 4, 4, random.Random(0)) == [4, 4, 2]  # no split avoids a short remainder


def test_prepare_fsdd_splits_and_connected_audio(tmp_path):
    src = make_tree(tmp_path / "fsdd")
    out = tmp_path / "data" / "manifests"
    report = prepare_fsdd(tmp_path / "fsdd", out, train_passes=2, seed=3)
    splits = {n: read(out, n) for n in ("train", "dev", "dev-isolated", "test", "test-isolated")}
    speakers = {n: {c.supervisions[0].speaker for c in cs} for n, cs in splits.items()}
    # default split: sorted speakers, the last two are dev and test
    assert speakers == {"train": {"anna", "bert"}, "dev": {"carl"}, "dev-isolated": {"carl"},
                        "test": {"dora"}, "test-isolated": {"dora"}}
    assert report.kept["fsdd_train"] == len(splits["train"])
    iso = [c for c in splits["test-isolated"]]
    assert len(iso) == 20 and {c.supervisions[0].text for c in iso} == set(DIGITS)
    for c in iso:
        assert c.supervisions[0].text == DIGITS[int(c.id.split("_")[0])]

    train_connected = [c for c in splits["train"] if "connected" in c.id]
    used = Counter(s for c in train_connected for s in c.supervisions[0].custom["sources"])
    assert set(used.values()) == {2} and len(used) == 40  # every training take once per pass
    for cut in list(splits["test"]) + train_connected:
        sup = cut.supervisions[0]
        sources, spans = sup.custom["sources"], sup.custom["source_spans"]
        assert 3 <= len(sources) <= 7
        assert sup.text == " ".join(DIGITS[int(s.split("_")[0])] for s in sources)
        assert cut.sampling_rate == 16000  # resampled on the fly
        path = cut.recording.sources[0].source
        wav, sr = sf.read(path, dtype="float32")
        assert sr == SR
        prev_end = 0
        for s, (start, dur) in zip(sources, spans):
            a = round(start * SR)
            seg = wav[a:a + len(src[s])]
            np.testing.assert_allclose(seg, src[s], atol=1.5 / 32768)  # the recording itself, 16-bit exact
            gap = wav[prev_end:a]
            assert 0.1 * SR - 1 <= len(gap) <= 0.5 * SR + 1
            floor = 0.002 * (SPEAKERS.index(sup.speaker) + 1)
            assert 0.5 * floor < np.sqrt(np.mean(gap ** 2)) < 2.0 * floor  # background-level noise, not silence
            prev_end = a + len(src[s])
        audio16 = cut.load_audio()
        assert abs(audio16.shape[-1] - 2 * len(wav)) <= 2
    # the same seed gives the same corpus; the files were written once
    assert {c.id: c.supervisions[0].text for c in splits["test"]} == \
        {c.id: c.supervisions[0].text for c in read(out, "test")}


def test_prepare_fsdd_speaker_options_and_errors(tmp_path):
    make_tree(tmp_path / "fsdd", takes=1)
    out = tmp_path / "m"
    prepare_fsdd(tmp_path / "fsdd" / "recordings", out, train_speakers=["dora"], dev_speakers=["anna"],
                 test_speakers=["bert", "carl"], train_passes=0)
    assert {c.supervisions[0].speaker for c in read(out, "test")} == {"bert", "carl"}
    assert not any("connected" in c.id for c in read(out, "train"))  # --train-passes 0: isolated only
    with pytest.raises(ToolkitError, match="both --train-speakers and --test-speakers"):
        prepare_fsdd(tmp_path / "fsdd", tmp_path / "x", train_speakers=["anna"], dev_speakers=["bert"],
                     test_speakers=["anna"])
    with pytest.raises(ToolkitError, match="--dev-speakers: zed not in the corpus"):
        prepare_fsdd(tmp_path / "fsdd", tmp_path / "x", train_speakers=["anna"], dev_speakers=["zed"],
                     test_speakers=["bert"])
    with pytest.raises(ToolkitError, match="git clone https://github.com/Jakobovski/free-spoken-digit-dataset"):
        prepare_fsdd(tmp_path / "nowhere", tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ToolkitError, match="no <digit>_<speaker>_<index>.wav"):
        prepare_fsdd(tmp_path / "empty", tmp_path / "x")
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("*.jsonl.gz"))


def test_prepare_fsdd_drops_a_corrupt_file_naming_it(tmp_path, caplog):
    make_tree(tmp_path / "fsdd", takes=1)
    bad = tmp_path / "fsdd" / "recordings" / "4_anna_0.wav"
    bad.write_bytes(b"RIFF\x00\x00 not a wav")
    with caplog.at_level(logging.WARNING, logger="toolkit.data.prepare"):
        report = prepare_fsdd(tmp_path / "fsdd", tmp_path / "m", train_passes=1)
    assert report.total_dropped("fsdd_train") >= 1
    assert any(str(bad) in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    train = read(tmp_path / "m", "train")
    assert "4_anna_0" not in {c.id for c in train}
    assert not any("4_anna_0" in c.supervisions[0].custom.get("sources", []) for c in train)


def test_prepare_fsdd_through_the_cli(tmp_path):
    from toolkit.cli import main

    make_tree(tmp_path / "fsdd", takes=1)
    rc = main(["prepare", "fsdd", "--corpus-dir", str(tmp_path / "fsdd"), "--out", str(tmp_path / "m"),
               "--train-speakers", "anna,bert", "--dev-speakers", "carl", "--test-speakers", "dora",
               "--group-size", "5", "5", "--pause", "0.2", "0.2", "--train-passes", "1"])
    assert rc == 0
    test = read(tmp_path / "m", "test")
    assert len(test) == 2 and all(len(c.supervisions[0].text.split()) == 5 for c in test)
    assert (tmp_path / "audio" / "fsdd" / "test").is_dir()  # joined WAVs beside the manifests' folder
