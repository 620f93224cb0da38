"""The external programs the toolkit runs, and the one way it runs them.

`PROGRAMS` lists every program outside Python that the toolkit (or a recipe) invokes, with
where it comes from. `local/install.sh` reads this list (`python toolkit/external.py`) and
installs what is missing, then checks that each program is on PATH; a test checks that the
set of programs the code invokes through `run`/`require` equals this list, and that nothing
calls `subprocess` directly. So a new program cannot be forgotten by the installer.

This file imports only the standard library at module level, so the installer can run it
before the virtual environment exists.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any, Sequence

# program -> how local/install.sh provides it: "apt:<Debian package>" or "build:<what builds it>".
PROGRAMS: dict[str, str] = {
    "espeak-ng": "apt:espeak-ng",  # synthetic corpora (toolkit synth-corpus)
    "sox": "apt:sox",  # LibriSpeech-format synthetic corpora (FLAC at 16 kHz)
    "ffmpeg": "apt:ffmpeg",  # Common Voice-format MP3s; decoding of formats libsndfile lacks
    "wget": "apt:wget",  # recipes: official LibriSpeech LMs and Libri-light subsets
    "lmplz": "build:kenlm",  # KenLM's estimator, built from the kenlm sdist by local/install.sh
}


def _error(message: str) -> Exception:
    from toolkit.utils import ToolkitError  # imported late: the installer runs this file bare

    return ToolkitError(message)


def install_hint(program: str) -> str:
    """How to get a PROGRAMS entry: the apt-get line, or the installer step that builds it."""
    how = PROGRAMS[program]
    kind, _, what = how.partition(":")
    if kind == "apt":
        return f"run local/install.sh as root, or: sudo apt-get install {what}"
    return f"run local/install.sh ({what})"


def require(program: str, why: str) -> str:
    """Absolute path of `program`, or a one-line ToolkitError saying how to install it.

    `why` says what needs it ("to synthesise a corpus"). `program` must be listed in PROGRAMS.
    """
    if program not in PROGRAMS:
        raise ValueError(f"{program!r} is not in toolkit.external.PROGRAMS; add it there (and to the installer)")
    path = shutil.which(program)
    if path is None:
        raise _error(f"{program} not found on PATH (needed {why}); {install_hint(program)}")
    return path


def available(program: str) -> bool:
    """True when a PROGRAMS entry is on PATH (for optional paths such as a faster backend)."""
    if program not in PROGRAMS:
        raise ValueError(f"{program!r} is not in toolkit.external.PROGRAMS")
    return shutil.which(program) is not None


def run(program: str, args: Sequence[str], why: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run([program, *args], **kwargs)` after `require(program, why)`."""
    path = require(program, why)
    return subprocess.run([path, *map(str, args)], **kwargs)


def run_python_module(module: str, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """A Python module of this environment in a child process (for libraries that abort on bad input)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], **kwargs)


def main() -> int:
    """Print `program source` lines for local/install.sh."""
    for program, how in PROGRAMS.items():
        print(program, how)
    return 0


if __name__ == "__main__":
    sys.exit(main())
