"""Recipes end to end on tiny synthetic corpora, and the shell machinery they stand on.

Slow tests run every stage of recipes/commonvoice, recipes/librispeech and a recipe made by
local/new_recipe.sh (in Ukrainian, a language no other test uses) with the tiny configs and
a few updates, then check that RESULTS.md has a finite WER for every test set and method and
that a rerun skips every finished stage. Fast tests cover the job runners, the torchrun
launcher line, the recogs.txt -> Kaldi text conversion (against the scorer's own writer), the
recipes' option handling and new_recipe.sh's errors.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "recipes" / "shared" / "stages.sh"
RUN_LOCAL = ROOT / "recipes" / "shared" / "run_local.sh"
RUN_SLURM = ROOT / "recipes" / "shared" / "run_slurm.sh"

# A few updates of the tiny model: enough for every stage to produce its files.
def k2_methods() -> list[str]:
    """The k2 decoding methods when k2 imports here (the recipes then compile its graphs too), else none."""
    try:
        import k2  # noqa: F401
    except ImportError:
        return []
    return ["k2-ctc", "k2-hlg", "k2-nbest-rescore", "k2-whole-lattice-rescore"]


FEW_UPDATES = ("--set train.max_updates=8 --set train.save_interval=8 --set train.valid_interval=8 "
               "--set train.log_interval=4")


def bash(cmd: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout)


def wer_rows(results_md: Path) -> dict[str, float]:
    """dataset -> WER (the Err column) of the first table (the WER section) of RESULTS.md."""
    text = results_md.read_text()
    wer_section = text.split("## WER", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = {}
    for line in wer_section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 9 and cells[0] not in ("dataset", "---"):
            rows[cells[0]] = float(cells[7])
    return rows


def assert_all_skipped(stdout: str, stages: range) -> None:
    for n in stages:
        assert re.search(rf"^stage {n}: .*already done, skipping$", stdout, re.M), f"stage {n} was not skipped:\n{stdout}"
    assert "done in" not in stdout


# ----------------------------------------------------------------------------------------
# Fast: shell machinery


def test_run_local_job_array_substitutes_job_and_logs(tmp_path: Path) -> None:
    r = bash(f"{RUN_LOCAL} JOB=1:3 log/x.JOB.log echo job JOB 'two words' \\> out.JOB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for j in (1, 2, 3):
        assert (tmp_path / f"out.{j}").read_text() == f"job {j} two words\n"
        log = (tmp_path / "log" / f"x.{j}.log").read_text()
        assert log.startswith(f"# echo job {j} ") and "# Ended (code 0)" in log


def test_run_local_reports_failed_jobs(tmp_path: Path) -> None:
    r = bash(f"{RUN_LOCAL} JOB=1:4 log/y.JOB.log bash -c '[ JOB -ne 3 ] || {{ echo boom; exit 7; }}'", cwd=tmp_path)
    assert r.returncode == 1
    assert "1 / 4 failed, log is in log/y.3.log" in r.stderr and "boom" in r.stderr
    assert "# Ended (code 7)" in (tmp_path / "log" / "y.3.log").read_text()
    assert "# Ended (code 0)" in (tmp_path / "log" / "y.4.log").read_text()


def test_run_local_runs_at_most_max_jobs_at_once(tmp_path: Path) -> None:
    # Each job records the number of jobs running when it starts (a file per running job).
    cmd = ("bash -c 'touch run.JOB; ls run.* | wc -l > n.JOB; sleep 0.3; rm run.JOB'")
    r = bash(f"{RUN_LOCAL} --max-jobs-run 2 JOB=1:6 log/z.JOB.log {cmd}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    counts = [int((tmp_path / f"n.{j}").read_text()) for j in range(1, 7)]
    assert max(counts) <= 2


def test_run_local_needs_job_in_log_name(tmp_path: Path) -> None:
    r = bash(f"{RUN_LOCAL} JOB=1:2 log/same.log echo hi", cwd=tmp_path)
    assert r.returncode == 1 and "must contain JOB" in r.stderr


def test_run_slurm_submits_an_array_with_sbatch_wait(tmp_path: Path) -> None:
    # A stand-in sbatch records its arguments and runs the script for each array index,
    # as Slurm would, writing the %a-expanded log.
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text("""#!/usr/bin/env bash
echo "$@" > "$PWD/sbatch.args"
out= array= script=
while [ $# -gt 0 ]; do
  case "$1" in --output) out=$2; shift 2 ;; --array) array=$2; shift 2 ;; --wait|--export=ALL) shift ;;
    --*) shift 2 ;; *) script=$1; shift ;; esac
done
rc=0
for i in $(seq ${array%-*} ${array#*-}); do SLURM_ARRAY_TASK_ID=$i bash "$script" > "${out//%a/$i}" 2>&1 || rc=1; done
exit $rc
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", "slurm_opts": "--partition gpu"}
    r = bash(f"{RUN_SLURM} --gpu 2 --mem 4G JOB=1:3 exp/log/dec.JOB.log echo decoded JOB", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "sbatch.args").read_text()
    assert "--wait" in args and "--array 1-3" in args and "--gres gpu:2" in args and "--partition gpu" in args
    for j in (1, 2, 3):
        assert f"decoded {j}" in (tmp_path / "exp" / "log" / f"dec.{j}.log").read_text()


def test_run_slurm_without_sbatch_says_so(tmp_path: Path) -> None:
    r = bash(f"PATH=/usr/bin:/bin {RUN_SLURM} log/a.log echo hi", cwd=tmp_path)
    assert r.returncode == 1 and "sbatch not found" in r.stderr


@pytest.mark.parametrize("args, expected", [
    ("1", "toolkit"),
    ("4", "torchrun --standalone --nproc_per_node 4 -m toolkit.cli"),
    ("8 2 node0:29500 myjob",
     "torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id myjob -m toolkit.cli"),
])
def test_toolkit_launcher(args: str, expected: str) -> None:
    r = bash(f". {STAGES}; toolkit_launcher {args}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


def test_toolkit_launcher_multinode_needs_endpoint() -> None:
    r = bash(f". {STAGES}; toolkit_launcher 8 2")
    assert r.returncode != 0 and "--rdzv-endpoint" in r.stderr


def test_read_recogs_inverts_the_scorers_recogs(tmp_path: Path) -> None:
    from toolkit.score.report import format_recogs, read_recogs

    refs = {"u1": "l'homme a dit", "u2": "x", "u3": "it's \"quoted\" fine"}
    hyps = {"u1": "l'homme", "u2": "", "u3": "it's fine"}
    (tmp_path / "recogs.txt").write_text(format_recogs(list(refs), refs, hyps))
    assert read_recogs(tmp_path / "recogs.txt") == (refs, hyps)
    (tmp_path / "bad.txt").write_text("u1:\tref=['a']\nu1 hyp a\n")
    from toolkit.utils import ToolkitError

    with pytest.raises(ToolkitError, match=r"bad.txt:2: not a recogs.txt line"):
        read_recogs(tmp_path / "bad.txt")


def test_stage_items_are_marked_once_by_the_helpers(tmp_path: Path) -> None:
    script = f"""set -euo pipefail; . {STAGES}
if stage_begin 5 "per item" a/.done b/.done; then
  for x in a b; do
    stage_item_done $x/.done && {{ echo "skip $x"; continue; }}
    echo "run $x"; stage_item_end $x/.done
  done
  stage_end
fi"""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".done").write_text("earlier\n")
    first = bash(script, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "skip a" in first.stdout and "run b" in first.stdout
    assert (tmp_path / "a" / ".done").read_text() == "earlier\n"  # never rewritten
    assert (tmp_path / "b" / ".done").is_file()
    assert "already done, skipping" in bash(script, cwd=tmp_path).stdout


def test_stage_markers_skip_and_never_overwrite_outputs(tmp_path: Path) -> None:
    script = f"""set -euo pipefail; . {STAGES}
if stage_begin 3 "make things" out/.done out/result.txt; then
  mkdir -p out; echo payload > out/result.txt; stage_end
fi"""
    first = bash(script, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("stage 3: make things\nstage 3: done in ")
    assert (tmp_path / "out" / "result.txt").read_text() == "payload\n"  # an output, not a marker
    second = bash(script, cwd=tmp_path)
    assert second.stdout == "stage 3: make things: already done, skipping\n"


def test_stage_markers_record_settings_and_a_changed_one_is_a_one_line_error(tmp_path: Path) -> None:
    """A rerun with another option skipped the stage ("already done") and reported the old outputs
    as the new ones'. A marker now records its stage's settings; another value stops the recipe
    with one line naming the marker, the key and both values, and leaves the outputs alone.
    A later stage's settings hold the earlier marker's identity, so rebuilding the earlier
    stage makes the later one's outputs stale too."""
    script = f"""set -euo pipefail; . {STAGES}
stage_settings "order=$ORDER"
if stage_begin 2 "graph" g/.done; then mkdir -p g; echo "order $ORDER" > g/graph; stage_end; fi
stage_settings "graph=$(file_sig g/.done)" "scales=$SCALES"
if stage_begin 5 "decode" d/.done; then mkdir -p d; cat g/graph > d/wer; stage_end; fi"""

    def run(order: str, scales: str = "1 2") -> subprocess.CompletedProcess:
        return bash(script, cwd=tmp_path, env={"ORDER": order, "SCALES": scales})

    first = run("3")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "g" / ".done").read_text().splitlines()[1:] == ["order=3"]
    assert "already done, skipping" in run("3").stdout and run("3").returncode == 0
    bad = run("4")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert "stage 2: g/.done was made with order='3', now order='4': rerun with the old setting, or move g aside" in bad.stderr
    assert (tmp_path / "g" / "graph").read_text() == "order 3\n"
    bad = run("3", "0.5")
    assert bad.returncode == 1 and "stage 5: d/.done was made with scales='1 2', now scales='0.5'" in bad.stderr
    # the graph rebuilt with order 4 (its marker removed): the decodes of the order-3 graph are stale
    (tmp_path / "g" / ".done").unlink()
    bad = run("4")
    assert bad.returncode == 1 and "stage 5: d/.done was made with graph='" in bad.stderr, bad.stderr
    assert (tmp_path / "g" / "graph").read_text() == "order 4\n" and (tmp_path / "d" / "wer").read_text() == "order 3\n"
    # a marker written before settings were recorded is trusted as it is
    (tmp_path / "d" / ".done").write_text("2026-01-01 00:00:00\n")
    assert run("4").returncode == 0
    # the same options spelt with other blanks are the same options
    assert run("4", " 1   2 ").returncode == 0


def test_a_stage_killed_before_its_marker_is_not_finished_with_other_settings(tmp_path: Path) -> None:
    """A killed stage left its outputs so far (a resumable checkpoint, decodes) and no marker; the
    rerun with other settings reused them and then recorded the new settings as the outputs'.
    The settings are written when the stage begins (MARKER.started) and checked on the rerun."""
    script = f"""set -euo pipefail; . {STAGES}
stage_settings "init=$INIT"; stage_resumable
if stage_begin 4 "train" e/.done; then mkdir -p e; echo "from $INIT" >> e/out; [ -z "${{KILL:-}}" ] || exit 9; stage_end; fi"""
    killed = bash(script, cwd=tmp_path, env={"INIT": "a.pt", "KILL": "1"})
    assert killed.returncode == 9 and (tmp_path / "e" / ".done.started").read_text().splitlines()[1:] == ["init=a.pt"]
    bad = bash(script, cwd=tmp_path, env={"INIT": "b.pt"})
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "stage 4: e/.done was begun (and not finished) with init='a.pt', now init='b.pt'" in bad.stderr
    ok = bash(script, cwd=tmp_path, env={"INIT": "a.pt"})  # the same settings: the stage goes on
    assert ok.returncode == 0 and (tmp_path / "e" / "out").read_text() == "from a.pt\nfrom a.pt\n"
    assert not (tmp_path / "e" / ".done.started").exists() and "init=a.pt" in (tmp_path / "e" / ".done").read_text()
    assert oct((tmp_path / "e" / ".done").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # a stage that failed before writing anything but logs is started afresh with the new settings
    (tmp_path / "e" / ".done").unlink()
    (tmp_path / "e" / "out").unlink()
    (tmp_path / "e" / "log").mkdir()
    (tmp_path / "e" / "log" / "train.log").write_text("error\n")
    assert bash(script, cwd=tmp_path, env={"INIT": "a.pt", "KILL": "1"}).returncode == 9
    ok = bash(script, cwd=tmp_path, env={"INIT": "b.pt"})
    assert ok.returncode == 1 and "begun (and not finished) with init='a.pt'" in ok.stderr  # out was written
    (tmp_path / "e" / "out").unlink()
    ok = bash(script, cwd=tmp_path, env={"INIT": "b.pt"})
    assert ok.returncode == 0 and "init=b.pt" in (tmp_path / "e" / ".done").read_text()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stage_item_settings_check_each_item_against_its_own(tmp_path: Path) -> None:
    """Per-item stages (one lang dir per language) record each item's own inputs: a rebuilt input
    of one language stops the recipe at that language's marker, not at the others'."""
    script = f"""set -euo pipefail; . {STAGES}
stage_item_settings() {{ local x=${{1%%/*}}; stage_settings "input=$(cat in_$x)"; }}
if stage_begin 2 "per item" a/.done b/.done; then
  for x in a b; do stage_item_done $x/.done && continue; echo "run $x"; stage_item_end $x/.done; done
  stage_end
fi
declare -F stage_item_settings || echo "hook cleared" """
    (tmp_path / "in_a").write_text("1\n")
    (tmp_path / "in_b").write_text("1\n")
    first = bash(script, cwd=tmp_path)
    assert first.returncode == 0 and "run a" in first.stdout and "run b" in first.stdout and "hook cleared" in first.stdout
    assert bash(script, cwd=tmp_path).returncode == 0
    (tmp_path / "in_b").write_text("2\n")
    bad = bash(script, cwd=tmp_path)
    assert bad.returncode == 1 and "stage 2: b/.done was made with input='1', now input='2'" in bad.stderr, bad.stderr


def test_a_second_recipe_run_in_the_same_work_dir_is_refused(tmp_path: Path) -> None:
    """Two runs in one work dir raced in decoding: both exited 0, each printing the RESULT of the
    other's LM weights. A run holds the work dir's lock; a second one is one line, exit 1."""
    import fcntl

    run = ROOT / "recipes" / "fsdd" / "run.sh"
    with open(tmp_path / ".recipe.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = bash(f"{run} --work-dir {tmp_path} --corpus-dir {tmp_path}/none --stop-stage 0")
        assert r.returncode == 1 and r.stderr.strip() == (f"{run}: another recipe run is using {tmp_path} (it holds "
                                                          f"{tmp_path}/.recipe.lock); wait for it to end or use another --work-dir")
    r = bash(f"{run} --work-dir {tmp_path} --corpus-dir {tmp_path}/none --stop-stage 0")  # released: the run goes on
    assert r.returncode == 1 and "FSDD not found" in r.stderr


@pytest.mark.parametrize("recipe", ["librispeech", "commonvoice"])
def test_recipe_help_and_bad_options(recipe: str, tmp_path: Path) -> None:
    run = ROOT / "recipes" / recipe / "run.sh"
    r = bash(f"{run} --help")
    assert r.returncode == 0 and "Usage:" in r.stderr and "--stage" in r.stderr
    r = bash(f"{run} --no-such-option 1")
    assert r.returncode == 1 and "invalid option --no-such-option" in r.stderr
    r = bash(f"{run} --work-dir {tmp_path} --token-type phones --stop-stage -1")
    assert r.returncode == 1 and "--token-type must be char or bpe" in r.stderr
    if recipe == "commonvoice":
        for bad in ("0", "-1", "abc"):
            r = bash(f"{run} --work-dir {tmp_path} --synth-test-minutes {bad} --stop-stage -1")
            assert r.returncode == 1 and f"--synth-test-minutes must be a positive number of minutes, got '{bad}'" in r.stderr


def test_a_recipe_conf_changes_shared_defaults_and_the_command_line_wins(tmp_path: Path) -> None:
    """recipes/fsdd/conf/recipe.conf sets pretrain=false (pretraining on its 4 speakers was measured
    to hurt); the shared default (true) must not undo it, and --pretrain true must override it."""
    run = ROOT / "recipes" / "fsdd" / "run.sh"
    r = bash(f"{run} --help")
    assert r.returncode == 0 and "pretraining stage (false)" in r.stderr, r.stderr
    assert "model preset from scratch (no pretraining, no init): tiny_fbank" in r.stderr  # measured better there
    r = bash(f"{run} --work-dir {tmp_path} --stage 3 --stop-stage 3")  # skipped: nothing to pretrain on
    assert r.returncode == 0 and "stage 3" not in r.stdout + r.stderr, r.stdout + r.stderr
    r = bash(f"{run} --work-dir {tmp_path} --pretrain true --stage 3 --stop-stage 3")
    assert r.returncode != 0 and "stage 3: pretrain a tiny model" in r.stdout + r.stderr
    assert "fsdd_cuts_train.jsonl.gz not found" in r.stdout + r.stderr


def test_commonvoice_synth_test_minutes_sizes_the_test_split(tmp_path: Path) -> None:
    """Stage 0 only: --synth-test-minutes gives the fine-tuning language's test split that much audio,
    train keeps --synth-finetune-minutes, dev a tenth of the whole; another size into the same work
    dir is refused by the synthesiser (its clips would keep their old sentences)."""
    run = ROOT / "recipes" / "commonvoice" / "run.sh"
    opts = f"--work-dir {tmp_path} --synthetic true --languages es --finetune-languages es --synth-speakers 4 --stop-stage 0"
    r = bash(f"{run} {opts} --synth-finetune-minutes 0.4 --synth-test-minutes 0.3")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = (tmp_path / "download" / "synthetic-cv" / "synth_summary.txt").read_text()
    split = re.search(r"^es: ([0-9.]+) min .*train ([0-9.]+) / dev ([0-9.]+) / test ([0-9.]+) min", summary, re.M)
    assert split, summary
    total, train, dev, test = (float(x) for x in split.groups())
    assert train == pytest.approx(0.4, rel=0.15) and test == pytest.approx(0.3, rel=0.15)
    assert dev == pytest.approx(0.1 * total, rel=0.25)
    r = bash(f"{run} {opts} --synth-finetune-minutes 0.4 --synth-test-minutes 0.2")
    assert r.returncode != 0 and "synth_plan.json: es was synthesised here with another plan" in r.stderr


def test_commonvoice_synth_rare_words_and_speakers_go_to_the_finetuning_languages_only(tmp_path: Path) -> None:
    """Stage 0 only: --synth-rare-words gives the fine-tuning language a real-size vocabulary and
    --synth-finetune-speakers its own speaker count, and both leave the pretraining language alone;
    another value into the same work dir is refused."""
    run = ROOT / "recipes" / "commonvoice" / "run.sh"
    opts = (f"--work-dir {tmp_path} --synthetic true --languages de --finetune-languages es --synth-speakers 3 "
            "--synth-finetune-speakers 6 --synth-minutes 0.3 --synth-finetune-minutes 0.3 --stop-stage 0")
    r = bash(f"{run} {opts} --synth-rare-words 300")
    assert r.returncode == 0, r.stderr[-2000:]
    corpus = tmp_path / "download" / "synthetic-cv"
    summary = (corpus / "synth_summary.txt").read_text()
    words = dict(re.findall(r"^(\w+): .*LM text: \d+ sentences, (\d+) distinct words", summary, re.M))
    assert int(words["de"]) < 200 < 300 < int(words["es"]), summary
    for lang, n in (("de", 3), ("es", 6)):
        clients = {line.split("\t")[0] for split in ("train", "dev", "test")
                   for line in (corpus / lang / f"{split}.tsv").read_text().splitlines()[1:]}
        assert len(clients) == n, (lang, clients)
    r = bash(f"{run} {opts} --synth-rare-words 0")
    assert r.returncode != 0 and "es was synthesised here with another plan (rare_words 300 -> 0)" in r.stderr, r.stderr


def test_new_recipe_errors(tmp_path: Path) -> None:
    r = bash(f"{ROOT}/local/new_recipe.sh --corpus commonvoice x_{uuid.uuid4().hex[:6]}")
    assert r.returncode == 1 and "--language CODE is required" in r.stderr
    r = bash(f"{ROOT}/local/new_recipe.sh --language uk commonvoice")
    assert r.returncode == 1 and "one of the toolkit's own" in r.stderr
    r = bash(f"{ROOT}/local/new_recipe.sh --corpus timit --language en x")
    assert r.returncode == 1 and "--corpus must be" in r.stderr


# ----------------------------------------------------------------------------------------
# Slow: every stage of each recipe on a tiny synthetic corpus


def check_results(results_md: Path, expected: list[str]) -> None:
    rows = wer_rows(results_md)
    for name in expected:
        assert name in rows, f"{name} missing from {results_md}: {sorted(rows)}"
        assert math.isfinite(rows[name]) and rows[name] >= 0


@pytest.mark.slow
def test_commonvoice_recipe_end_to_end(tmp_path: Path) -> None:
    run = ROOT / "recipes" / "commonvoice" / "run.sh"
    opts = (f"--work-dir {tmp_path} --synthetic true --languages 'de fr' --finetune-languages es "
            f"--synth-minutes 1.5 --synth-finetune-minutes 1.5 --synth-test-minutes 0.75 --synth-speakers 4 --size tiny "
            f"--finetune-inits 'pretrained scratch' --finetune-jobs 2 "
            f"--decode-methods '{' '.join(['greedy', 'hlg', 'hlg-rescore', *k2_methods()])}' "
            f"--lm-scales '0.5 1.0 1.5' --word-penalties '-1 0 1' "
            f"--pretrain-opts '{FEW_UPDATES}' --finetune-opts '{FEW_UPDATES}'")
    r = bash(f"{run} {opts}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    methods = ("greedy", "hlg", "hlg-rescore", *k2_methods())
    expected = [f"finetune_tiny_es_char_{init}/cv-es_{t}/{m}"
                for init in ("pretrained", "scratch") for t in ("dev", "test") for m in methods]
    check_results(tmp_path / "RESULTS.md", expected)
    # the LM weight x penalty grid was tuned on dev and applied to test; RESULTS.md names the choice
    decode = tmp_path / "exp" / "finetune_tiny_es_char_pretrained" / "decode"
    for m in ("hlg", "hlg-rescore", *(m for m in k2_methods() if m != "k2-ctc")):
        tuning = json.loads((decode / "cv-es_dev" / m / "tuning.json").read_text())
        assert len(tuning["grid"]) == 9
        lm = json.loads((decode / "cv-es_test" / m / "results.json").read_text())["lm"]
        assert (lm["lm_scale"], lm["word_penalty"]) == (tuning["lm_scale"], tuning["word_penalty"])
    assert "## Vocabulary and LM weights" in (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "data" / "es" / "lm" / "4gram.arpa").is_file()
    assert "time per stage:" in r.stdout
    again = bash(f"{run} {opts} --stop-stage 6")
    assert again.returncode == 0, again.stderr
    assert_all_skipped(again.stdout, range(0, 7))
    # --finetune-jobs 2 ran both fine-tunings at once; when they fail, the stage names both and marks neither
    bad = bash(f"{run} {opts} --stage 5 --stop-stage 5 --tag _bad --finetune-opts '--set train.no_such_key=1'")
    assert bad.returncode != 0
    dirs = [f"exp/finetune_tiny_es_char_{init}_bad" for init in ("pretrained", "scratch")]
    assert "stage 5: fine-tuning failed in" in bad.stderr and all(d in bad.stderr for d in dirs), bad.stderr[-2000:]
    assert not any((tmp_path / d / ".done").exists() for d in dirs)


@pytest.mark.slow
def test_librispeech_recipe_end_to_end(tmp_path: Path) -> None:
    run = ROOT / "recipes" / "librispeech" / "run.sh"
    # with k2, stage 3 writes its graphs and k2-hlg decodes (the k2 rescoring methods run in the Common
    # Voice test)
    methods = ["greedy", "hlg", *k2_methods()[1:2]]
    opts = (f"--work-dir {tmp_path} --synthetic true --synth-minutes 4 --synth-subset-scale 0.1 --size tiny "
            f"--finetune-set 10m --nbpe 40 --nj 2 --decode-methods '{' '.join(methods)}' "
            f"--pretrain-opts '{FEW_UPDATES}' --finetune-opts '{FEW_UPDATES}'")
    r = bash(f"{run} {opts}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_results(tmp_path / "RESULTS.md", [f"finetune_tiny_10m_char/{t}/{m}"
                                            for t in ("dev-clean", "test-clean") for m in methods])
    assert (tmp_path / "data" / "lang_bpe_40" / "bpe.model").is_file()  # both lang dirs, as in the stage
    # --nj 2: two decoding jobs scored once, with the merged timing (RTF) and the cuts' language
    hlg = tmp_path / "exp" / "finetune_tiny_10m_char" / "decode" / "test-clean" / "hlg"
    res = json.loads((hlg / "results.json").read_text())
    timed = [l for l in (hlg / "timing.txt").read_text().splitlines() if not l.startswith("#")]
    assert res["rtf"] > 0 and len(timed) == res["wer"]["num_sentences"]
    assert list(res["by_language"]) == ["en"]
    again = bash(f"{run} {opts} --stop-stage 6")
    assert again.returncode == 0, again.stderr
    assert_all_skipped(again.stdout, range(0, 7))
    # --lm-source auto took the synthetic corpus's openslr-format LM files (UPPER-case, download/
    # synthetic-librispeech/lm): the lexicon's words joined the lang dir (test words training lacks)
    # and the HLG recognises words (no empty graph).
    lm_dir = tmp_path / "download" / "synthetic-librispeech" / "lm"
    assert (lm_dir / "3-gram.arpa.gz").is_file() or (lm_dir / "3-gram.pruned.1e-7.arpa.gz").is_file()
    train_words = {w for s in (tmp_path / "data" / "lang_char" / "transcript_words.txt").read_text().split("\n")
                   for w in s.split()}
    lexicon_words = {ln.split()[0] for ln in (tmp_path / "data" / "lang_char" / "words.txt").read_text().splitlines()}
    assert len(lexicon_words - train_words) > 10
    hyps = (hlg / "recogs.txt").read_text()
    assert "hyp=['" in hyps  # some hypothesis has words
    vocab_section = (tmp_path / "RESULTS.md").read_text().split("## Vocabulary and LM weights")[1]
    assert "finetune_tiny_10m_char/test-clean/hlg|" in vocab_section
    # The in-domain LM on the same model (--lm-tag indomain: its own graphs and decode dirs), then the
    # same LMs rewritten in openslr's format (UPPER-case, gzipped, an UPPER-case lexicon) through
    # --lm-dir: graphs and WERs equal to the in-domain ones.
    # (greedy and hlg only: the k2 methods were checked on this model above, and CI time is finite)
    r = bash(f"{run} {opts} --stage 2 --lm-source transcripts --lm-tag indomain --decode-methods 'greedy hlg'")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for n in (4, 5):  # the same model
        assert re.search(rf"^stage {n}: .*already done, skipping$", r.stdout, re.M), r.stdout
    twin_dir = tmp_path / "openslr_twin"
    twin_dir.mkdir()
    for order, name in ((3, "3-gram.arpa.gz"), (4, "4-gram.arpa.gz")):
        lm_file, = (tmp_path / "data" / "lm").glob(f"transcripts_*_{order}gram.arpa.gz")  # named by the text's content
        with gzip.open(lm_file, "rt", encoding="utf-8") as f:
            text = f.read()
        upper = "\n".join("\t".join([p[0], " ".join(w if w in ("<s>", "</s>") else w.upper() for w in p[1].split()),
                                       *p[2:]]) if len(p := line.split("\t")) >= 2 else line
                          for line in text.splitlines())
        with gzip.open(twin_dir / name, "wt", encoding="utf-8") as f:
            f.write(upper + "\n")
    words = [ln.split()[0] for ln in (tmp_path / "data" / "lang_char_indomain" / "words.txt").read_text().splitlines()]
    (twin_dir / "librispeech-lexicon.txt").write_text(
        "".join(f"{w.upper()}\tAH\n" for w in words if not w.startswith(("<", "#"))), encoding="utf-8")
    r = bash(f"{run} {opts} --stage 2 --lm-source official --lm-dir {twin_dir} --lm-tag twin --decode-methods 'greedy hlg'")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = wer_rows(tmp_path / "RESULTS.md")
    for t in ("dev-clean", "test-clean"):
        for m in ("greedy", "hlg"):
            assert rows[f"finetune_tiny_10m_char/{t}_twin/{m}"] == rows[f"finetune_tiny_10m_char/{t}_indomain/{m}"], (t, m)
    assert "twin/hlg|" in (tmp_path / "RESULTS.md").read_text().split("## Vocabulary and LM weights")[1]


@pytest.mark.slow
def test_new_recipe_in_an_unused_language(tmp_path: Path) -> None:
    name = f"test_uk_{uuid.uuid4().hex[:8]}"
    dest = ROOT / "recipes" / name
    try:
        r = bash(f"{ROOT}/local/new_recipe.sh --corpus commonvoice --language uk {name}")
        assert r.returncode == 0, r.stderr
        assert "conf/recipe.conf" in (dest / "README.md").read_text()
        assert "language=uk" in (dest / "conf" / "recipe.conf").read_text()
        opts = (f"--work-dir {tmp_path} --synthetic true --synth-minutes 2.5 "
                f"--pretrain-opts '{FEW_UPDATES}' --finetune-opts '{FEW_UPDATES}'")
        r = bash(f"{dest}/run.sh {opts}")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        for n in range(0, 7):
            assert re.search(rf"^stage {n}: ", r.stdout, re.M)
        check_results(tmp_path / "RESULTS.md", [f"finetune_tiny_char_pretrained/cv-uk_{t}/{m}"
                                                for t in ("dev", "test") for m in ("greedy", "hlg")])
        texts = (tmp_path / "exp" / "finetune_tiny_char_pretrained" / "decode" / "cv-uk_test" / "greedy" / "recogs.txt").read_text()
        assert re.search(r"[а-яіїєґ]", texts)  # Cyrillic references: the Ukrainian data went through
        again = bash(f"{dest}/run.sh {opts} --stop-stage 5")
        assert_all_skipped(again.stdout, range(0, 6))
        # a rerun with other options stops at the first stage whose outputs they change (it reported
        # the old LM's, or the old LM weights', WERs as the new ones', exit 0)
        for change, marker, what in (("--lm-order 2", "data/lang_char/.graph.done", "lm_order='3', now lm_order='2'"),
                                     ("--lm-scales 0.3", "exp/finetune_tiny_char_pretrained/decode/.done",
                                      "lm_grid='0.3 0.5 0.7 1.0 1.3 1.6 2.0 / -1 0 1 2', now lm_grid='0.3 / -1 0 1 2'")):
            bad = bash(f"{dest}/run.sh {opts} {change}")
            assert bad.returncode == 1 and f"{marker} was made with {what}" in bad.stderr, bad.stderr[-2000:]
        # the graph rebuilt with a 2-gram LM as the message says: the decodes of the 3-gram graph are stale
        shutil.move(tmp_path / "data" / "lang_char", tmp_path / "lang_char.old")
        bad = bash(f"{dest}/run.sh {opts} --lm-order 2")
        assert bad.returncode == 1 and "stage 5: exp/finetune_tiny_char_pretrained/decode/.done was made with graph='" \
            in bad.stderr, bad.stderr[-2000:]  # the model stays: the rebuilt lang dir has its tokens
        assert (tmp_path / "data" / "lang_char" / "HLG.fst").is_file()
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@pytest.mark.slow
def test_new_recipe_for_a_corpus_lhotse_prepares(tmp_path: Path) -> None:
    """local/new_recipe.sh --corpus lhotse: lhotse's own yesno recipe feeds every stage."""
    from yesno_tree import make_yesno_tree

    make_yesno_tree(tmp_path / "yesno")
    name = f"test_yesno_{uuid.uuid4().hex[:8]}"
    dest = ROOT / "recipes" / name
    try:
        r = bash(f"{ROOT}/local/new_recipe.sh --corpus lhotse --lhotse-recipe yesno --language en "
                 f"--train-split train --dev-split test --test-splits test {name}")
        assert r.returncode == 0, r.stderr
        assert "lhotse_recipe=yesno" in (dest / "conf" / "recipe.conf").read_text()
        opts = (f"--work-dir {tmp_path / 'work'} --corpus-dir {tmp_path / 'yesno'} "
                f"--pretrain-opts '{FEW_UPDATES}' --finetune-opts '{FEW_UPDATES}'")
        r = bash(f"{dest}/run.sh {opts}")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert (tmp_path / "work" / "data" / "manifests" / "yesno_cuts_train.jsonl.gz").is_file()
        check_results(tmp_path / "work" / "RESULTS.md", [f"finetune_tiny_char_pretrained/yesno_test/{m}"
                                                          for m in ("greedy", "hlg")])
        bad = bash(f"{dest}/run.sh --work-dir {tmp_path / 'w2'} --synthetic true --stop-stage 0")
        assert bad.returncode != 0 and "real corpus (--corpus-dir)" in bad.stderr
    finally:
        shutil.rmtree(dest, ignore_errors=True)
