"""Pretraining and fine-tuning through the `toolkit` CLI on a tiny synthetic corpus (slow).

- pretraining lowers the contrastive loss and keeps the codebook alive;
- a run SIGKILLed mid-way and resumed ends with the same loss and weights as an uninterrupted one.
CTC fine-tuning end to end: bench/pretrain_vs_scratch.sh and the recipes' end-to-end tests.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "toolkit" / "train" / "configs"
pytestmark = pytest.mark.slow


def toolkit(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, f"toolkit {args[0]} failed:\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~4 minutes of synthetic English (espeak-ng), Common Voice layout, manifests and a char lang dir."""
    d = tmp_path_factory.mktemp("train_e2e")
    toolkit("synth-corpus", "--format", "commonvoice", "--languages", "en", "--minutes-per-language", "4",
            "--speakers", "3", "--seed", "3", "--out", str(d / "corpus"), "--nj", "2", cwd=d)
    toolkit("prepare", "commonvoice", "--corpus-dir", str(d / "corpus"), "--out", str(d / "manifests"), cwd=d)
    toolkit("lang-dir", "--type", "char", "--cuts", str(d / "manifests" / "cv-en_cuts_train.jsonl.gz"),
            "--out", str(d / "lang_char"), cwd=d)
    return d


def data_sets(d: Path) -> list[str]:
    return ["--set", f"data.train_cuts=[{d / 'manifests' / 'cv-en_cuts_train.jsonl.gz'}]",
            "--set", f"data.dev_cuts=[{d / 'manifests' / 'cv-en_cuts_dev.jsonl.gz'}]"]


def rows(exp: Path, split: str = "train") -> list[dict]:
    out = []
    for line in (exp / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == split:
            out.append(r)
    return out


def pretrain_args(d: Path, exp: Path, updates: int, *extra: str) -> list[str]:
    return ["pretrain", "--config", str(CONFIGS / "pretrain_tiny.yaml"), "--set", f"exp_dir={exp}",
            *data_sets(d), "--set", f"train.max_updates={updates}", "--set", "data.max_duration=8",
            "--set", "train.device=cpu", *extra]


def test_pretraining_learns_and_codebook_stays_alive(corpus):
    exp = corpus / "exp_pt"
    toolkit(*pretrain_args(corpus, exp, 400, "--set", "train.log_interval=25", "--set", "train.valid_interval=200",
                           "--set", "schedule.warmup_updates=20"), cwd=corpus, timeout=900)
    train = rows(exp)
    first, last = train[0], train[-1]
    # A tiny model leaves chance level (ln 51 = 3.93 nats, accuracy 1/51) slowly: after 400 updates
    # the contrastive loss is below its start and dev accuracy above chance.
    assert last["contrastive_loss"] < first["contrastive_loss"] - 0.1, (first, last)
    assert last["accuracy"] > 2.0 / 51
    codes = 64 * 2  # tiny preset: G=2 groups x V=64 entries
    assert last["code_perplexity"] > 0.2 * codes and last["prob_perplexity"] > 0.2 * codes
    assert last["temperature"] < first["temperature"]  # annealed per update
    valid = rows(exp, "valid")
    assert len(valid) == 2 and valid[-1]["loss"] < valid[0]["loss"]
    assert valid[-1]["accuracy"] > 2.0 / 51
    assert (exp / "best.pt").is_file() and (exp / "checkpoint-400.pt").is_file()
    toolkit("plot", str(exp), cwd=corpus)
    assert (exp / "plots" / "overview.png").stat().st_size > 1000


def test_sigkill_then_resume_matches_uninterrupted(corpus):
    common = ("--set", "train.save_interval=10", "--set", "train.log_interval=5", "--set", "train.valid_interval=100",
              "--set", "schedule.warmup_updates=5")
    full = corpus / "exp_full"
    toolkit(*pretrain_args(corpus, full, 30, *common), cwd=corpus)
    killed = corpus / "exp_killed"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", *pretrain_args(corpus, killed, 30, *common)],
                            cwd=corpus, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-20.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint-20.pt").exists() and not (killed / "checkpoint-30.pt").exists()
    toolkit(*pretrain_args(corpus, killed, 30, *common), cwd=corpus)  # resumes automatically
    a, b = rows(full)[-1], rows(killed)[-1]
    assert a["step"] == b["step"] == 30
    assert b["loss"] == a["loss"] and b["accuracy"] == a["accuracy"]
    wa = torch.load(full / "checkpoint-30.pt", weights_only=True)["model"]
    wb = torch.load(killed / "checkpoint-30.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
