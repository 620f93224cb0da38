"""The installer knows every external program the toolkit runs (toolkit/external.py).

A fresh machine failed the tests because `sox` was used by the code but not installed by
local/install.sh. These tests keep the three in step: the programs the Python code invokes
(only through `toolkit.external`), the programs the recipes' shell scripts run, and the list
`local/install.sh` installs and checks.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit import external

ROOT = Path(__file__).resolve().parents[1]
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
EXTERNAL_API = {"run", "require", "available", "install_hint"}


def _python_files() -> list[Path]:
    return sorted((ROOT / "toolkit").rglob("*.py"))


def _invocations(path: Path) -> tuple[set[str], list[str]]:
    """(program names passed to toolkit.external, places that spawn processes some other way)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    bypass: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else None
        attr = node.func.attr
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if owner_name == "subprocess" and attr in SUBPROCESS_CALLS:
            bypass.append(where)
        elif owner_name == "os" and (attr in ("system", "popen") or attr.startswith(("exec", "spawn"))):
            bypass.append(where)
        elif owner_name == "shutil" and attr == "which":
            bypass.append(where)
        elif owner_name == "external" and attr in EXTERNAL_API:
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                bypass.append(f"{where} (program name must be a string literal)")
            else:
                names.add(arg.value)
    return names, bypass


def test_python_code_runs_programs_only_through_toolkit_external():
    bypass = []
    for path in _python_files():
        if path.name == "external.py" and path.parent.name == "toolkit":
            continue
        bypass += _invocations(path)[1]
    assert not bypass, f"processes spawned outside toolkit.external (use external.run/require): {bypass}"


def _shell_scripts() -> list[Path]:
    # recipes/test_*: made and removed by tests/test_recipes.py, maybe while this runs (parallel workers)
    recipes = [p for p in sorted((ROOT / "recipes").rglob("*.sh"))
               if not p.relative_to(ROOT / "recipes").parts[0].startswith("test_")]
    scripts = [ROOT / "run.sh", *recipes, *sorted((ROOT / "local").glob("*.sh"))]
    # the build scripts' compilers are build dependencies, installed with the build (install.sh)
    return [p for p in scripts if p.name not in ("install.sh", "build_kenlm.sh", "install_k2.sh")]


# Programs a shell script could start that a fresh machine may lack (coreutils, sed, awk, gzip,
# tar are part of every base system). A script running one of them must have it in PROGRAMS.
NOTABLE = ("wget", "curl", "sox", "ffmpeg", "ffprobe", "espeak-ng", "espeak", "lmplz", "build_binary", "flac",
           "lame", "git", "cmake", "make", "unzip", "rsync", "parallel", "kenlm")


def _shell_invocations() -> set[str]:
    found = set()
    for path in _shell_scripts():
        for line in path.read_text(encoding="utf-8").splitlines():
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            for prog in NOTABLE:
                if re.search(rf"(^|[;&|(`$]\s*|\s)(command -v |\$\(which )?{re.escape(prog)}(\s|$)", code):
                    found.add(prog)
    return found


def test_installer_list_equals_the_programs_the_code_invokes():
    python_names = set()
    for path in _python_files():
        if not (path.name == "external.py" and path.parent.name == "toolkit"):
            python_names |= _invocations(path)[0]
    invoked = python_names | _shell_invocations()
    listed = set(external.PROGRAMS)
    assert invoked - listed == set(), f"invoked but not installed by local/install.sh: {sorted(invoked - listed)}"
    assert listed - invoked == set(), f"listed in toolkit/external.py but never invoked: {sorted(listed - invoked)}"


def test_installer_reads_the_list_and_checks_every_program():
    out = subprocess.run([sys.executable, str(ROOT / "toolkit" / "external.py")], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    assert {r[0]: r[1] for r in rows} == external.PROGRAMS
    for how in external.PROGRAMS.values():
        assert re.fullmatch(r"(apt:[a-z0-9.+-]+|build:[a-z0-9_-]+)", how), how
    script = (ROOT / "local" / "install.sh").read_text(encoding="utf-8")
    assert "toolkit/external.py" in script
    # every build: source has its build step in the installer
    for prog, how in external.PROGRAMS.items():
        if how.startswith("build:"):
            assert f"build_{how[len('build:'):]}.sh" in script, f"install.sh does not build {prog} ({how})"
    # and it ends with the PATH check over the same list
    assert "still missing after installation" in script


def test_require_names_the_program_and_the_fix(monkeypatch):
    from toolkit.utils import ToolkitError

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolkitError) as e:
        external.require("sox", "to synthesise a corpus")
    msg = str(e.value)
    assert "sox not found on PATH" in msg and "apt-get install sox" in msg and "\n" not in msg
    with pytest.raises(ValueError):
        external.require("not-a-listed-program", "for nothing")


def test_every_listed_program_is_installed_here():
    """local/install.sh ran before the tests (run_tests.sh calls it): each program is on PATH."""
    import os
    import shutil

    venv_bin = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "") + os.pathsep + venv_bin
    missing = [p for p in external.PROGRAMS if shutil.which(p, path=path) is None]
    assert not missing, f"not on PATH after local/install.sh: {missing}"


def test_the_installed_environment_has_bytecode_so_commands_start_without_compiling():
    """local/install.sh compiles the venv once: uv writes no .pyc, and with PYTHONDONTWRITEBYTECODE
    every `toolkit` command would compile torch again (8.0 s instead of 2.9 s for `import torch`)."""
    import importlib.util

    import lhotse
    import torch

    if not Path(torch.__file__).is_relative_to(ROOT / ".venv"):
        pytest.skip(f"torch comes from {torch.__file__}, not from this checkout's .venv (local/install.sh)")
    for mod in (torch, lhotse):
        pyc = Path(importlib.util.cache_from_source(mod.__file__))
        assert pyc.is_file(), f"{pyc} missing: run local/install.sh --force true"
