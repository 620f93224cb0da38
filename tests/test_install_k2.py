"""local/install_k2.sh fails early, on one line naming its step and the fix, and leaves nothing half-built.

(The build itself takes about 15 minutes on 2 cores; bench/RESULTS.md records a full build. These
tests stop before the compiler runs.)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "local" / "install_k2.sh"


def run(args, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(["bash", str(SCRIPT), "--venv", str(Path(sys.executable).parents[1]), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def fake_k2_tree(d: Path) -> Path:
    (d / "k2").mkdir(parents=True)
    (d / "CMakeLists.txt").write_text('set(K2_VERSION "0.0.0")\n')
    (d / "k2" / "CMakeLists.txt").write_text("add_subdirectory(csrc)\n  include(kaldifeat)\n  add_subdirectory(torch)\n")
    return d


def test_not_a_k2_tree_is_named(tmp_path):
    (tmp_path / "src").mkdir()
    p = run(["--source", tmp_path / "src"], tmp_path)
    assert p.returncode != 0
    assert f"--source {tmp_path / 'src'}: not a k2 source tree" in p.stderr
    assert "FAILED at step: identify the k2 source" in p.stderr


def test_missing_venv_says_run_install_first(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    p = subprocess.run(["bash", str(SCRIPT), "--venv", str(tmp_path / "novenv")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode != 0 and "run local/install.sh first" in p.stderr


def test_a_pybind11_sdist_with_another_hash_is_refused_and_nothing_is_left(tmp_path):
    src = fake_k2_tree(tmp_path / "k2src")
    bogus = tmp_path / "pybind11-3.0.1.tar.gz"
    bogus.write_bytes(b"not the sdist")
    p = run(["--source", src, "--pybind11-sdist", bogus], tmp_path)
    assert p.returncode != 0
    assert "does not have the sha256 of pybind11-3.0.1.tar.gz on PyPI" in p.stderr
    assert "FAILED at step: pybind11 3.0.1 source package" in p.stderr
    cache = tmp_path / "cache" / "xlsr-toolkit"
    left = sorted(x.name for x in cache.iterdir())
    # the failed build's work dir is gone; its log stays beside the cache, named in the message
    assert all(name.endswith(".failed.log") for name in left) and len(left) == 1, left
    assert str(cache / left[0]) in p.stderr
    assert bogus.read_bytes() == b"not the sdist" and (src / "k2" / "CMakeLists.txt").read_text().count("#") == 0


@pytest.mark.slow  # three runs, each reading torch's version from the venv
def test_the_source_key_is_the_content_of_the_tree(tmp_path):
    a = fake_k2_tree(tmp_path / "a")
    b = fake_k2_tree(tmp_path / "b")
    bogus = tmp_path / "x.tar.gz"
    bogus.write_bytes(b"x")
    key = [line for line in run(["--source", a, "--pybind11-sdist", bogus], tmp_path).stdout.splitlines()
           if line.startswith("[install_k2] build: ")]
    same = [line for line in run(["--source", b, "--pybind11-sdist", bogus], tmp_path).stdout.splitlines()
            if line.startswith("[install_k2] build: ")]
    assert key and key[0].split()[2] == same[0].split()[2]  # same files, same key wherever they are
    (b / "k2" / "extra.cc").write_text("// changed\n")
    other = [line for line in run(["--source", b, "--pybind11-sdist", bogus], tmp_path).stdout.splitlines()
             if line.startswith("[install_k2] build: ")]
    assert other[0].split()[2] != key[0].split()[2]
    assert "-torch" in key[0] and "-cpu-py3." in key[0]
