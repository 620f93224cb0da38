"""Pretraining and fine-tuning through the `toolkit` CLI on a tiny synthetic corpus (slow).

- pretraining lowers the contrastive loss and keeps the codebook alive;
- CTC fine-tuning of that model reaches a dev CER below 30% on the same synthetic language;
- a run SIGKILLed mid-way and resumed ends with the same loss and weights as an uninterrupted one.
Pretrained vs scratch on a held-out language: bench/pretrain_vs_scratch.sh (the embedded default).
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
LANG = "it"
TRAIN, DEV = f"cv-{LANG}_cuts_train.jsonl.gz", f"cv-{LANG}_cuts_dev.jsonl.gz"
PT_UPDATES = 600
PT_LANGS = (LANG, "es", "fr")
PT_CKPT = f"checkpoint-{PT_UPDATES}.pt"


def toolkit(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # threads: local/run_tests.sh shares the cores among the test workers
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, f"toolkit {args[0]} failed:\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~10 minutes each of synthetic Italian, Spanish and French (espeak-ng, 8 speakers), Common Voice
    layout, manifests, and a char lang dir of Italian (the fine-tuning language).

    Dev speakers are unseen in training; with few training speakers a tiny model memorises voices
    instead of letters (measured: English, 3 speakers, 3 minutes: dev CER stays near 70%), and
    pretraining on the 8 minutes of Italian train audio alone left the fine-tuned dev CER at 35%.
    """
    d = tmp_path_factory.mktemp("train_e2e")
    toolkit("synth-corpus", "--format", "commonvoice", "--languages", ",".join(PT_LANGS), "--minutes-per-language", "10",
            "--speakers", "8", "--seed", "3", "--out", str(d / "corpus"), "--nj", "2", cwd=d)
    toolkit("prepare", "commonvoice", "--corpus-dir", str(d / "corpus"), "--out", str(d / "manifests"), cwd=d)
    toolkit("lang-dir", "--type", "char", "--cuts", str(d / "manifests" / f"cv-{LANG}_cuts_train.jsonl.gz"),
            "--out", str(d / "lang_char"), cwd=d)
    return d


def data_sets(d: Path) -> list[str]:
    m = d / "manifests"
    return ["--set", f"data.train_cuts=[{m / TRAIN}]", "--set", f"data.dev_cuts=[{m / DEV}]"]


def rows(exp: Path, split: str = "train") -> list[dict]:
    out = []
    for line in (exp / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == split:
            out.append(r)
    return out


def pretrain_args(d: Path, exp: Path, updates: int, *extra: str, max_duration: float = 8) -> list[str]:
    return ["pretrain", "--config", str(CONFIGS / "pretrain_tiny.yaml"), "--set", f"exp_dir={exp}",
            *data_sets(d), "--set", f"train.max_updates={updates}", "--set", f"data.max_duration={max_duration}",
            "--set", "train.device=cpu", *extra]


@pytest.fixture(scope="module")
def pretrained(corpus) -> Path:
    """600 tiny pretraining updates (20 s of audio each) on the train audio of the three languages
    (XLSR language sampling); the experiment directory."""
    exp = corpus / "exp_pt"
    train = ",".join(str(corpus / "manifests" / f"cv-{lang}_cuts_train.jsonl.gz") for lang in PT_LANGS)
    toolkit(*pretrain_args(corpus, exp, PT_UPDATES, "--set", "train.log_interval=25", "--set", "train.valid_interval=300",
                           "--set", f"data.train_cuts=[{train}]", "--set", f"data.languages=[{','.join(PT_LANGS)}]",
                           "--set", "schedule.warmup_updates=20", max_duration=20), cwd=corpus, timeout=1200)
    return exp


def test_pretraining_learns_and_codebook_stays_alive(corpus, pretrained):
    exp = pretrained
    train = rows(exp)
    first, last = train[0], train[-1]
    # A tiny model leaves chance level (ln 51 = 3.93 nats, accuracy 1/51) slowly: after 600 updates
    # the contrastive loss is below its start and dev accuracy above chance.
    assert last["contrastive_loss"] < first["contrastive_loss"] - 0.1, (first, last)
    assert last["accuracy"] > 2.0 / 51
    codes = 64 * 2  # tiny preset: G=2 groups x V=64 entries
    assert last["code_perplexity"] > 0.2 * codes and last["prob_perplexity"] > 0.2 * codes
    assert last["temperature"] < first["temperature"]  # annealed per update
    valid = rows(exp, "valid")
    assert len(valid) == 2 and valid[-1]["loss"] < valid[0]["loss"]
    assert valid[-1]["accuracy"] > 2.0 / 51
    assert (exp / "best.pt").is_file() and (exp / PT_CKPT).is_file()
    toolkit("plot", str(exp), cwd=corpus)
    assert (exp / "plots" / "overview.png").stat().st_size > 1000


def test_finetuning_reaches_dev_cer_below_30_percent(corpus, pretrained):
    exp = corpus / "exp_ft"
    toolkit("finetune", "--config", str(CONFIGS / "finetune_tiny.yaml"), "--set", f"exp_dir={exp}", *data_sets(corpus),
            "--set", f"data.lang_dir={corpus / 'lang_char'}", "--set", f"train.init={pretrained / PT_CKPT}",
            "--set", "train.max_updates=1000", "--set", "train.valid_interval=250", "--set", "train.save_interval=1000",
            "--set", "data.max_duration=20", "--set", "optim.lr=2.0e-3", "--set", "train.device=cpu",
            cwd=corpus, timeout=1200)
    valid = rows(exp, "valid")
    assert [r["step"] for r in valid] == [250, 500, 750, 1000]
    # Greedy CTC on the held-out dev speakers; the first validation is still mostly wrong.
    # What this depends on (bench/RESULTS.md, "Why the slow test failed"): 600 pretraining updates
    # leave chance between update 125 and 400 from seed to seed, and some checkpoints then fine-tune
    # slowly (85-90% dev CER at update 500). With this seed on the code at the time of writing, the
    # pretraining left chance at ~150 and the fine-tuning reached 3.2%. A failure here after a change
    # to the model's arithmetic means: rerun with `train.seed` 1-3 before blaming the change.
    assert valid[-1]["cer"] < 30.0, valid
    assert valid[0]["cer"] > valid[-1]["cer"]
    best = torch.load(exp / "best.pt", weights_only=True)
    assert best["kind"] == "ctc" and best["vocab"]["type"] == "char"


def test_sigkill_then_resume_matches_uninterrupted(corpus):
    common = ("--set", "train.save_interval=10", "--set", "train.log_interval=5", "--set", "train.valid_interval=100",
              "--set", "schedule.warmup_updates=5")
    full = corpus / "exp_full"
    toolkit(*pretrain_args(corpus, full, 30, *common), cwd=corpus)
    killed = corpus / "exp_killed"
    env = dict(os.environ)  # threads: local/run_tests.sh shares the cores among the test workers
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
