"""Bad input gives one line naming the file and the fix, never a traceback, and loses nothing.

Each case is what a user really does: a TSV in the wrong encoding or with a row twice, a read-only
or full output disk, an audio or text file given as a checkpoint, a config with a typo, an output
path that is a directory, a malicious pickle.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from graph_fixtures import four_word_lang
from test_decode import make_cuts, tiny_checkpoint

from toolkit.data import synth

ROOT = Path(__file__).resolve().parents[1]


def toolkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The command failed with exactly one `toolkit <command>: error:` line and no traceback."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"toolkit {command}: error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def cv_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv_err")
    synth.synthesize_corpus("commonvoice", ["es"], 0.3, 3, out, seed=2)
    return out


@pytest.fixture(scope="module")
def ls_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("ls_err")
    synth.synthesize_corpus("librispeech", ["en"], 0.3, 3, out, seed=2, subset_scale=0.02)
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_a_tsv_not_in_utf8_names_the_file_and_line(cv_tree, tmp_path):
    corpus = copy_tree(cv_tree, tmp_path / "cv")
    tsv = corpus / "es" / "train.tsv"
    lines = tsv.read_text(encoding="utf-8").splitlines()
    lines[2] += " año"  # surely one non-ASCII letter in line 3
    first = next(n for n, ln in enumerate(lines, start=1) if not ln.isascii())
    tsv.write_bytes("\n".join(lines).encode("latin-1") + b"\n")  # saved by an editor in Latin-1
    line = one_error_line(toolkit("prepare", "commonvoice", "--corpus-dir", corpus, "--out", tmp_path / "m"), "prepare")
    assert f"{tsv}:{first}: not UTF-8" in line and "iconv" in line
    assert not list((tmp_path / "m").glob("*.jsonl.gz"))


@pytest.mark.parametrize("twin", ["same clip", "same id, another format"])
def test_a_clip_listed_twice_names_both_lines(cv_tree, tmp_path, twin):
    corpus = copy_tree(cv_tree, tmp_path / "cv")
    tsv = corpus / "es" / "dev.tsv"
    lines = tsv.read_text(encoding="utf-8").splitlines()
    clip = lines[1].split("\t")[1]
    again = lines[1] if twin == "same clip" else lines[1].replace(clip, clip[:-4] + ".wav", 1)
    tsv.write_text("\n".join(lines + [again]) + "\n", encoding="utf-8")
    line = one_error_line(toolkit("prepare", "commonvoice", "--corpus-dir", corpus, "--out", tmp_path / "m",
                                  "--splits", "dev"), "prepare")
    assert f"{tsv}:{len(lines) + 1}: clip {again.split(chr(9))[1]} has the utterance id {clip[:-4]!r} of the clip on " \
           "line 2; remove the duplicate row" in line
    assert not (tmp_path / "m" / "cv-es_cuts_dev.jsonl.gz").exists()


def test_an_utterance_listed_twice_in_librispeech_names_the_file(ls_tree, tmp_path):
    corpus = copy_tree(ls_tree, tmp_path / "ls")
    trans = sorted((corpus / "LibriSpeech" / "dev-clean").rglob("*.trans.txt"))[0]
    first = trans.read_text(encoding="utf-8").splitlines()[0]
    trans.write_text(trans.read_text(encoding="utf-8") + first + "\n", encoding="utf-8")
    line = one_error_line(toolkit("prepare", "librispeech", "--corpus-dir", corpus, "--out", tmp_path / "m",
                                  "--splits", "dev-clean"), "prepare")
    assert f"{trans}: utterance {first.split()[0]} is listed twice (also in {trans.name}); remove the duplicate line" in line


@contextlib.contextmanager
def unwritable(d: Path):
    """`d` cannot be written: a read-only mount as root (root ignores permission bits), chmod else."""
    d.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a read-only file system here ({r.stderr.decode().strip()})")
        try:
            yield d
        finally:
            subprocess.run(["umount", str(d)], check=True)
    else:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)


@contextlib.contextmanager
def full_disk(d: Path, size: str = "64k"):
    """A tiny file system at `d` that fills up at once (root only: it is a mount)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@pytest.fixture
def decode_inputs(tmp_path):
    from toolkit.lm.graph import compile_graphs

    lang = four_word_lang(tmp_path / "lang")
    compile_graphs(lang, lang / "lm.arpa")
    cuts_path, _ = make_cuts(tmp_path, [("ab cab", "xx"), ("ba", "xx")])
    ckpt, *_ = tiny_checkpoint(tmp_path, lang)
    return lang, cuts_path, ckpt


def test_read_only_output_directories(cv_tree, tmp_path, decode_inputs):
    lang, cuts_path, ckpt = decode_inputs
    (tmp_path / "text.txt").write_text("ab cab\nba ab\n")
    ro = tmp_path / "ro"
    with unwritable(ro):
        cases = [
            ("prepare", ["commonvoice", "--corpus-dir", cv_tree, "--out", ro / "m"]),
            ("lang-dir", ["--type", "char", "--cuts", cuts_path, "--out", ro / "lang"]),
            ("lm", ["train", "--order", "2", "--text", tmp_path / "text.txt", "--out", ro / "lm.arpa",
                    "--engine", "toolkit"]),
            ("decode", ["--checkpoint", ckpt, "--cuts", cuts_path, "--out-dir", ro / "dec"]),
            ("average-checkpoints", ["--checkpoints", ckpt, "--out", ro / "avg.pt"]),
        ]
        for command, args in cases:
            line = one_error_line(toolkit(command, *args), command)
            assert str(ro) in line and ("Read-only file system" in line or "Permission denied" in line), line
            assert ("read-only" in line or "permission" in line), line
        assert not list(ro.iterdir())


def test_a_full_disk_names_the_file_and_keeps_what_was_there(tmp_path, decode_inputs):
    lang, cuts_path, ckpt = decode_inputs
    full = tmp_path / "full"
    with full_disk(full):
        (full / "avg.pt").write_bytes(b"earlier")
        line = one_error_line(toolkit("average-checkpoints", "--checkpoints", ckpt, "--out", full / "big.pt"),
                              "average-checkpoints")
        assert f"{full / 'big.pt'}: No space left on device; free disk space" in line
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)  # the disk fills up completely
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 1024)
        os.close(fd)
        line = one_error_line(toolkit("decode", "--checkpoint", ckpt, "--cuts", cuts_path, "--lang-dir", lang,
                                      "--methods", "greedy,hlg", "--out-dir", full / "dec"), "decode")
        assert "No space left on device" in line and str(full) in line
        assert (full / "avg.pt").read_bytes() == b"earlier"  # nothing else touched
        assert not [p for p in full.rglob("*") if p.name.startswith(".") and p.is_file()]  # no temporary left
        assert not (full / "dec" / "greedy" / "results.json").exists()


def test_files_that_are_not_checkpoints(tmp_path, decode_inputs):
    lang, cuts_path, _ = decode_inputs
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, dtype="float32"), 16000)
    txt = tmp_path / "notes.txt"
    txt.write_text("ab cab\n")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "xlsr-toolkit", "model": Evil()}, evil)
    legacy = tmp_path / "legacy.pt"
    with open(legacy, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    expected = {wav: "a WAV audio file, not a checkpoint", txt: "a text file, not a checkpoint",
                evil: "refused: the file holds Python objects", legacy: "refused: the file holds Python objects"}
    for path, want in expected.items():
        line = one_error_line(toolkit("decode", "--checkpoint", path, "--cuts", cuts_path, "--out-dir",
                                      tmp_path / "o"), "decode")
        assert f"{path}: {want}" in line, line
        if path in (evil, legacy):
            assert "nothing in it was executed" in line and line.rstrip().endswith("import-checkpoint`")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("setting,message", [
    ("train.seed=abc", "train.seed: 'abc' is not an integer"),
    ("data.num_workers=-3", "data.num_workers: must be an integer >= 0, got -3"),
    ("data.channel_augment=1.5", "data.channel_augment: must be a probability between 0 and 1, got 1.5"),
    ("data.speed_factors=[0.9,3]", "data.speed_factors: must be a list of speeds between 0.5 and 2.0, "
                                   "e.g. [0.9, 1.0, 1.1]; got [0.9, 3]"),
])
def test_config_values_of_the_wrong_kind(tmp_path, setting, message):
    proc = toolkit("pretrain", "--config", ROOT / "toolkit" / "train" / "configs" / "pretrain_tiny.yaml",
                   "--set", f"exp_dir={tmp_path / 'e'}", "--set", setting)
    line = one_error_line(proc, "pretrain")
    assert line.endswith(message), line
    assert not (tmp_path / "e").exists()


def test_an_output_path_that_is_a_directory(tmp_path, decode_inputs):
    _, _, ckpt = decode_inputs
    (tmp_path / "text.txt").write_text("ab cab\nba ab\n")
    (tmp_path / "lm.arpa").mkdir()
    line = one_error_line(toolkit("lm", "train", "--order", "2", "--text", tmp_path / "text.txt", "--out",
                                  tmp_path / "lm.arpa", "--engine", "toolkit"), "lm")
    assert f"{tmp_path / 'lm.arpa'}: is a directory; give a file name" in line
    (tmp_path / "avg.pt").mkdir()
    line = one_error_line(toolkit("average-checkpoints", "--checkpoints", ckpt, "--out", tmp_path / "avg.pt"),
                          "average-checkpoints")
    assert "is a directory" in line
