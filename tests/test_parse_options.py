"""Kaldi semantics of local/parse_options.sh, checked through real bash subprocesses.

Each test writes a small script that sets defaults, sources the parser and prints the
variables it cares about; the expectations are those of Kaldi's utils/parse_options.sh
(see shared/reference/recipes.md §1).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

PARSER = Path(__file__).resolve().parents[1] / "local" / "parse_options.sh"

SCRIPT = """#!/usr/bin/env bash
set -euo pipefail
stage=0
stop_stage=100
foo_bar=default
use_gpu=false
cmd="run.pl"
empty=
help_message="Usage: demo.sh [options] <in> <out>
  --stage N   first stage"
. "{parser}"
echo "stage=$stage"
echo "stop_stage=$stop_stage"
echo "foo_bar=$foo_bar"
echo "use_gpu=$use_gpu"
echo "cmd=$cmd"
echo "empty=$empty"
echo "nargs=$#"
for a in "$@"; do echo "arg=$a"; done
"""


def run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "demo.sh"
    script.write_text(SCRIPT.format(parser=PARSER))
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=tmp_path)


def parse_vars(stdout: str) -> dict[str, object]:
    out: dict[str, object] = {"args": []}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "arg":
            out["args"].append(value)  # type: ignore[union-attr]
        else:
            out[key] = value
    return out


def test_defaults_untouched_without_options(tmp_path: Path) -> None:
    r = run_script(tmp_path)
    assert r.returncode == 0, r.stderr
    v = parse_vars(r.stdout)
    assert (v["stage"], v["stop_stage"], v["foo_bar"], v["nargs"]) == ("0", "100", "default", "0")


def test_dash_and_underscore_names(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--stop-stage", "3", "--foo_bar", "x", "--stage", "2")
    assert r.returncode == 0, r.stderr
    v = parse_vars(r.stdout)
    assert (v["stage"], v["stop_stage"], v["foo_bar"]) == ("2", "3", "x")


def test_dashes_inside_name_map_to_underscores(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--foo-bar", "y")
    assert r.returncode == 0, r.stderr
    assert parse_vars(r.stdout)["foo_bar"] == "y"


def test_value_with_spaces_kept_whole(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--cmd", "queue.pl -sync y --mem 4G")
    assert r.returncode == 0, r.stderr
    assert parse_vars(r.stdout)["cmd"] == "queue.pl -sync y --mem 4G"


def test_empty_variable_is_a_valid_option(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--empty", "now-set")
    assert r.returncode == 0, r.stderr
    assert parse_vars(r.stdout)["empty"] == "now-set"


def test_unknown_option_is_an_error(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--no-such-option", "1")
    assert r.returncode != 0
    assert "invalid option --no-such-option" in r.stderr
    assert "stage=" not in r.stdout


@pytest.mark.parametrize("value, ok", [("true", True), ("false", True), ("yes", False), ("1", False)])
def test_boolean_options_take_only_true_or_false(tmp_path: Path, value: str, ok: bool) -> None:
    r = run_script(tmp_path, "--use-gpu", value)
    assert (r.returncode == 0) == ok, r.stderr
    if ok:
        assert parse_vars(r.stdout)["use_gpu"] == value
    else:
        assert 'expected "true" or "false"' in r.stderr


def test_name_equals_value_rejected(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--stage=3")
    assert r.returncode != 0
    assert "--name value" in r.stderr


def test_option_without_value_is_an_error(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--stage")
    assert r.returncode != 0
    assert "needs a value" in r.stderr


def test_config_sourced_first_and_overridden_by_explicit_options(tmp_path: Path) -> None:
    conf = tmp_path / "my.conf"
    conf.write_text("stage=7\nfoo_bar=from-config\ncmd='slurm.pl --gpu 1'\n")
    # --stage comes BEFORE --config on the command line and still wins: configs are read first.
    r = run_script(tmp_path, "--stage", "4", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    v = parse_vars(r.stdout)
    assert (v["stage"], v["foo_bar"], v["cmd"]) == ("4", "from-config", "slurm.pl --gpu 1")


def test_later_config_overrides_earlier(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("foo_bar=a\nstop_stage=1\n")
    (tmp_path / "b.conf").write_text("foo_bar=b\n")
    r = run_script(tmp_path, "--config", "a.conf", "--config", "b.conf")
    assert r.returncode == 0, r.stderr
    v = parse_vars(r.stdout)
    assert (v["foo_bar"], v["stop_stage"]) == ("b", "1")


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--config", "nope.conf")
    assert r.returncode != 0
    assert "nope.conf" in r.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_help_message_and_exits_zero(tmp_path: Path, flag: str) -> None:
    r = run_script(tmp_path, "--stage", "1", flag)
    assert r.returncode == 0
    assert "Usage: demo.sh [options] <in> <out>" in r.stderr
    assert "--stage N   first stage" in r.stderr
    assert "stage=" not in r.stdout  # the script body did not run


def test_help_without_help_message(tmp_path: Path) -> None:
    script = tmp_path / "bare.sh"
    script.write_text(f'set -euo pipefail\nstage=0\n. "{PARSER}"\necho ran\n')
    r = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "No help found." in r.stderr
    assert "ran" not in r.stdout


def test_positionals_left_in_args(tmp_path: Path) -> None:
    r = run_script(tmp_path, "--stage", "5", "data/in dir", "exp/out", "--not-an-option-after-positional")
    assert r.returncode == 0, r.stderr
    v = parse_vars(r.stdout)
    assert v["stage"] == "5"
    assert v["nargs"] == "3"
    assert v["args"] == ["data/in dir", "exp/out", "--not-an-option-after-positional"]
