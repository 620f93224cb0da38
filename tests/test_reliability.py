"""Interrupted, repeated and concurrent experiments never lose a checkpoint or give a stale result.

Each test reproduces a way a real user breaks a run (an abandoned longer run in the same
directory, two runs at once, a changed vocabulary or config on resume, a kill between the
checkpoint and the metrics) and checks the files on disk before and after.
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
from test_train_engine import ToyTask, config, make_batches  # noqa: E402 (tests/ is on sys.path)

from toolkit.train.engine import Trainer, check_resume
from toolkit.train.expdir import ExperimentLock, list_checkpoints
from toolkit.utils import ToolkitError

ROOT_DIR = Path(__file__).resolve().parents[1]


def steps(exp: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(exp)]


def metric_rows(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_after_an_abandoned_longer_one_keeps_every_new_checkpoint(tmp_path):
    exp = tmp_path / "exp"
    Trainer(config(tmp_path, max_updates=40, save_interval=8, keep_last=3, valid_interval=100),
            ToyTask(make_batches(12)), resume=False).run()
    assert steps(exp) == [24, 32, 40]
    old = {p.name: p.read_bytes() for p in exp.glob("checkpoint-*.pt")}
    # what was made from it: an averaged model and a decode (toolkit results would report them as the new run's)
    (exp / "avg-3.pt").write_bytes(old["checkpoint-40.pt"])
    (exp / "decode" / "test" / "greedy").mkdir(parents=True)
    (exp / "decode" / "test" / "greedy" / "results.json").write_text("{}")
    # a fresh, shorter run in the same directory (--no-resume)
    Trainer(config(tmp_path, max_updates=24, save_interval=8, keep_last=3, valid_interval=100),
            ToyTask(make_batches(12)), resume=False).run()
    assert steps(exp) == [8, 16, 24]  # none of the new run's checkpoints pruned
    assert os.readlink(exp / "last.pt") == "checkpoint-24.pt"
    assert torch.load(exp / "checkpoint-24.pt", weights_only=True)["step"] == 24
    # the abandoned run is set aside, byte for byte, not deleted
    (aside,) = (exp / "previous").iterdir()
    assert {p.name: p.read_bytes() for p in aside.glob("checkpoint-*.pt")} == old
    assert (aside / "metrics.jsonl").is_file()
    assert (aside / "avg-3.pt").is_file() and (aside / "decode" / "test" / "greedy" / "results.json").is_file()
    assert not (exp / "avg-3.pt").exists() and not (exp / "decode").exists()
    assert [r["step"] for r in metric_rows(exp) if r["split"] == "train"] == list(range(1, 25))
    # the next default run resumes the new run, not the abandoned one
    rows = Trainer(config(tmp_path, max_updates=24, save_interval=8, keep_last=3, valid_interval=100),
                   ToyTask(make_batches(12)), resume=True).run()
    assert rows == {} and steps(exp) == [8, 16, 24]


def test_resume_from_the_last_pt_link_keeps_the_link_pointing_at_a_checkpoint(tmp_path):
    """`--resume EXP/last.pt` made last.pt a link to itself (decode then: checkpoint not found)."""
    exp = tmp_path / "exp"
    Trainer(config(tmp_path, max_updates=16, save_interval=8, keep_last=3, valid_interval=100),
            ToyTask(make_batches(12)), resume=False).run()
    Trainer(config(tmp_path, max_updates=16, save_interval=8, keep_last=3, valid_interval=100),
            ToyTask(make_batches(12)), resume=str(exp / "last.pt")).run()
    assert os.readlink(exp / "last.pt") == "checkpoint-16.pt"
    assert torch.load(exp / "last.pt", weights_only=True)["step"] == 16


def test_resuming_from_another_experiments_checkpoint_sets_this_ones_lineage_aside(tmp_path):
    """best.pt and metrics.jsonl of the target directory belong to its own earlier run: they stayed,
    and a recipe decoding best.pt decoded that run's model."""
    a, b = tmp_path / "expA", tmp_path / "expB"
    Trainer(config(tmp_path, "expA", max_updates=16, save_interval=8, keep_last=3, valid_interval=8),
            ToyTask(make_batches(12)), resume=False).run()
    Trainer(config(tmp_path, "expB", max_updates=8, save_interval=8, keep_last=3, valid_interval=8),
            ToyTask(make_batches(12)), resume=False).run()
    if not (a / "best.pt").exists():  # the toy task has no WER: the copy a CTC run's best would be
        (a / "best.pt").write_bytes((a / "checkpoint-16.pt").read_bytes())
    old_best = (a / "best.pt").read_bytes()
    Trainer(config(tmp_path, "expA", max_updates=12, save_interval=4, keep_last=3, valid_interval=4),
            ToyTask(make_batches(12)), resume=str(b / "checkpoint-8.pt"), allow_config_change=True).run()
    (aside,) = (a / "previous").iterdir()
    assert (aside / "best.pt").read_bytes() == old_best and (aside / "metrics.jsonl").is_file()
    # a best.pt here now is this lineage's (its update 12), never the old run's
    assert not (a / "best.pt").exists() or torch.load(a / "best.pt", weights_only=True)["step"] == 12
    assert [r["step"] for r in metric_rows(a) if r["split"] == "train"] == list(range(9, 13))


def test_resuming_below_a_longer_branch_sets_the_branch_aside(tmp_path):
    exp = tmp_path / "exp"
    Trainer(config(tmp_path, max_updates=40, save_interval=8, keep_last=5, valid_interval=8),
            ToyTask(make_batches(12)), resume=False).run()
    assert steps(exp) == [8, 16, 24, 32, 40]
    Trainer(config(tmp_path, max_updates=30, save_interval=5, keep_last=5, valid_interval=100),
            ToyTask(make_batches(12)), resume=str(exp / "checkpoint-16.pt"), allow_config_change=True).run()
    assert steps(exp) == [8, 16, 20, 25, 30]  # 24, 32, 40 belong to the other branch
    (aside,) = (exp / "previous").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-24.pt", "checkpoint-32.pt",
                                                      "checkpoint-40.pt"]
    train_steps = [r["step"] for r in metric_rows(exp) if r["split"] == "train"]
    assert train_steps == list(range(1, 31))  # the branch's rows after update 16 are gone, none twice


def test_a_second_run_in_the_same_directory_is_refused(tmp_path):
    exp = tmp_path / "exp"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from toolkit.train.expdir import ExperimentLock\n"
                               f"with ExperimentLock({str(exp)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ToolkitError) as e:
            Trainer(config(tmp_path, max_updates=4, valid_interval=100), ToyTask(make_batches(4)), resume=False).run()
        msg = str(e.value)
        assert f"in use by another run (pid {holder.pid} on " in msg and ".lock" in msg and "\n" not in msg
        assert not list(exp.glob("checkpoint-*.pt")) and not (exp / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # a killed holder leaves no stale lock: the OS released it
    Trainer(config(tmp_path, max_updates=4, save_interval=4, valid_interval=100), ToyTask(make_batches(4)),
            resume=False).run()
    assert steps(exp) == [4]


class VocabTask(ToyTask):
    """A toy task with a CTC-style vocabulary (checked on resume)."""

    def __init__(self, batches, tokens):
        super().__init__(batches)
        self.tokens = tokens

    def vocab(self):
        return {"type": "char", "tokens": list(self.tokens), "bpe_model": None}


def test_resume_refuses_a_reordered_vocabulary_and_an_unannounced_config_change(tmp_path):
    exp = tmp_path / "exp"
    tokens = ["<blk>", "|", "a", "b", "c", "<unk>"]
    Trainer(config(tmp_path, max_updates=6, save_interval=6, valid_interval=100),
            VocabTask(make_batches(4), tokens), resume=False).run()
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    reordered = ["<blk>", "|", "b", "a", "c", "<unk>"]  # same size: the head's rows would mean other letters
    with pytest.raises(ToolkitError) as e:
        Trainer(config(tmp_path, max_updates=12, save_interval=6, valid_interval=100),
                VocabTask(make_batches(4), reordered), resume=True).run()
    assert "vocabulary of data.lang_dir differs from the checkpoint's (6 vs 6 tokens, first difference at id 2: " \
           "'b' vs 'a')" in str(e.value)
    assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before  # nothing touched
    # another learning rate: listed and refused ...
    changed = config(tmp_path, max_updates=12, save_interval=6, valid_interval=100)
    changed.optim.lr = 0.5
    with pytest.raises(ToolkitError, match=r"1 change\(s\) listed above, e\.g\. optim\.lr: 0\.01 -> 0\.5\); .*"
                                           "--allow-config-change"):
        Trainer(changed, VocabTask(make_batches(4), tokens), resume=True).run()
    # ... and accepted when asked for; more updates are never a change
    Trainer(changed, VocabTask(make_batches(4), tokens), resume=True, allow_config_change=True).run()
    assert steps(exp) == [6, 12]


def test_config_changes_are_listed_one_per_line(tmp_path, caplog):
    cfg = config(tmp_path, max_updates=6, valid_interval=100)
    from toolkit.train.config import config_to_dict

    saved = {"model_config": ToyTask([]).model_config().to_dict(), "train_config": config_to_dict(cfg),
             "vocab": None}
    cfg2 = config(tmp_path, max_updates=60, valid_interval=5)
    cfg2.optim.lr, cfg2.schedule.warmup_updates = 0.2, 7
    with caplog.at_level("WARNING", logger="toolkit.train"), pytest.raises(ToolkitError):
        check_resume(Path("ck.pt"), saved, ToyTask([]), cfg2, allow_config_change=False)
    lines = [r.getMessage() for r in caplog.records]
    # a resumable change is accepted but says what it does; the others are listed and refused
    assert lines == ["resume from ck.pt: changed train.max_updates: 6 -> 60 (the learning-rate schedule is "
                     "stretched to the new length from here on)",
                     "resume from ck.pt: changed optim.lr: 0.01 -> 0.2",
                     "resume from ck.pt: changed schedule.warmup_updates: 3 -> 7"]
    caplog.clear()
    cfg3 = config(tmp_path, max_updates=6, valid_interval=100)
    cfg3.data.dev_cuts = ["other_dev.jsonl.gz"]
    with caplog.at_level("WARNING", logger="toolkit.train"):
        check_resume(Path("ck.pt"), saved, ToyTask([]), cfg3, allow_config_change=False)
    assert [r.getMessage() for r in caplog.records] == [
        "resume from ck.pt: changed data.dev_cuts: [] -> ['other_dev.jsonl.gz'] (best.pt is still chosen against "
        "the best dev WER so far, measured on the old dev set)"]


def test_resume_cuts_metrics_back_to_the_checkpoint(tmp_path):
    """A kill between the metrics rows of updates 7..9 and checkpoint 9 (plus a torn last line):
    the resumed run logs them again, once."""
    exp = tmp_path / "exp"
    Trainer(config(tmp_path, max_updates=6, save_interval=6, valid_interval=3), ToyTask(make_batches(4)),
            resume=False).run()
    with open(exp / "metrics.jsonl", "a") as f:
        for s in (7, 8, 9):
            f.write(json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n")
        f.write('{"step": 10, "split": "tr')
    Trainer(config(tmp_path, max_updates=9, save_interval=3, valid_interval=3), ToyTask(make_batches(4)),
            resume=True).run()
    rows = metric_rows(exp)  # every line parses: the torn one is gone
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 10))
    assert all(r["loss"] != 1.0 for r in rows)


def test_preset_and_init_of_another_architecture_is_an_error(tmp_path):
    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForPretraining
    from toolkit.train.config import load_config
    from toolkit.train.tasks import resolve_model_config

    cfg_tiny = get_preset("tiny", encoder_layers=1)
    save_checkpoint(tmp_path / "pt.pt", Wav2Vec2ForPretraining(cfg_tiny), cfg_tiny, "pretrain")
    ckpt = torch.load(tmp_path / "pt.pt", weights_only=True)
    cfg = load_config(None, "finetune", [f"exp_dir={tmp_path}/e", "model.preset=base", f"train.init={tmp_path}/pt.pt"])
    with pytest.raises(ToolkitError, match="model.preset base and train.init .* are different architectures "
                                           r"\(conv_feature_layers"):
        resolve_model_config(cfg, ckpt)
    # without a preset the model is train.init's; tiny has other layers than this init
    cfg.model.preset = None
    assert resolve_model_config(cfg, ckpt).encoder_layers == 1
    cfg.model.preset = "tiny"
    with pytest.raises(ToolkitError, match="encoder_layers: 3 vs 1"):  # tiny has 3 layers
        resolve_model_config(cfg, ckpt)


def test_atomically_written_files_respect_the_umask(tmp_path):
    from toolkit.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o002)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o664


def test_average_checkpoints_refuses_mixed_runs_and_overwriting_an_input(tmp_path, capsys):
    from toolkit.cli import main
    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForCTC

    cfg = get_preset("tiny", encoder_layers=1)
    vocab = {"type": "char", "tokens": ["<blk>", "|", "a", "b", "<unk>"], "bpe_model": None}
    other_vocab = {"type": "char", "tokens": ["<blk>", "|", "b", "a", "<unk>"], "bpe_model": None}
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    save_checkpoint(a, Wav2Vec2ForCTC(cfg, 5), cfg, "ctc", vocab=vocab)
    save_checkpoint(b, Wav2Vec2ForCTC(cfg, 5), cfg, "ctc", vocab=other_vocab)
    cfg2 = get_preset("tiny", encoder_layers=2)
    save_checkpoint(c, Wav2Vec2ForCTC(cfg2, 5), cfg2, "ctc", vocab=vocab)
    before = a.read_bytes()
    assert main(["average-checkpoints", "--checkpoints", str(a), str(b), "--out", str(tmp_path / "o.pt")]) == 1
    assert "another vocabulary" in capsys.readouterr().err
    assert main(["average-checkpoints", "--checkpoints", str(c), str(a), "--out", str(tmp_path / "o.pt")]) == 1
    err = capsys.readouterr().err
    assert "another architecture than" in err and "encoder_layers: 2 vs 1" in err
    assert main(["average-checkpoints", "--checkpoints", str(a), str(a), "--out", str(a)]) == 1
    assert "is one of the checkpoints to average" in capsys.readouterr().err
    assert a.read_bytes() == before and not (tmp_path / "o.pt").exists()
    # the same file twice, another run (its settings differ), an average: each was averaged silently
    assert main(["average-checkpoints", "--checkpoints", str(a), str(tmp_path / "." / "a.pt"), "--out",
                 str(tmp_path / "o.pt")]) == 1
    assert "a.pt: given twice" in capsys.readouterr().err
    r1, r2 = tmp_path / "r1.pt", tmp_path / "r2.pt"
    save_checkpoint(r1, Wav2Vec2ForCTC(cfg, 5), cfg, "ctc", vocab=vocab,
                    train_config={"exp_dir": "e1", "train": {"seed": 1, "max_updates": 10}})
    save_checkpoint(r2, Wav2Vec2ForCTC(cfg, 5), cfg, "ctc", vocab=vocab,
                    train_config={"exp_dir": "e2", "train": {"seed": 2, "max_updates": 20}})
    assert main(["average-checkpoints", "--checkpoints", str(r1), str(r2), "--out", str(tmp_path / "o.pt")]) == 1
    assert "r1.pt: trained with other settings than" in capsys.readouterr().err  # train.seed, not exp_dir
    save_checkpoint(r2, Wav2Vec2ForCTC(cfg, 5), cfg, "ctc", vocab=vocab,
                    train_config={"exp_dir": "e1", "train": {"seed": 1, "max_updates": 20}})
    assert main(["average-checkpoints", "--checkpoints", str(r1), str(r2), "--out", str(tmp_path / "avg.pt")]) == 0
    assert main(["average-checkpoints", "--checkpoints", str(tmp_path / "avg.pt"), str(r1), "--out",
                 str(tmp_path / "avg2.pt")]) == 1
    assert "avg.pt: an average already (of 2 checkpoints)" in capsys.readouterr().err
    # another init or other model overrides (a resume may change them, an average may not), the same
    # update twice (best.pt is a copy of one), and --out onto a run's checkpoint: all exit 0 before
    tc = {"exp_dir": "e1", "train": {"seed": 1, "max_updates": 20, "init": "none"}, "model": {"overrides": {}}}
    runs = {}
    for name, change, step in (("s10", {}, 10), ("s20", {}, 20), ("init", {"train": {"init": "pt/last.pt"}}, 30),
                               ("mask", {"model": {"overrides": {"mask_prob": 0.6}}}, 30), ("best", {}, 10)):
        conf = {k: {**v, **change.get(k, {})} if isinstance(v, dict) else v for k, v in tc.items()}
        runs[name] = tmp_path / f"{name}.pt"
        save_checkpoint(runs[name], Wav2Vec2ForCTC(cfg, 5), cfg, "ctc", vocab=vocab, train_config=conf, step=step,
                        optimizer={"state": {}})
    for name, want in (("init", "(train.init: 'pt/last.pt' -> 'none')"), ("mask", "(model.overrides: {'mask_prob': 0.6}"),
                       ("best", "the same update (10) as")):
        assert main(["average-checkpoints", "--checkpoints", str(runs[name]), str(runs["s10"]), str(runs["s20"]),
                     "--out", str(tmp_path / "o.pt")]) == 1
        assert want in capsys.readouterr().err, name
    keep = runs["s20"].read_bytes()
    best = tmp_path / "best.pt"
    best.write_bytes(keep)
    for out in (best, runs["s20"]):  # --out onto a run's best.pt or one of its checkpoints
        assert main(["average-checkpoints", "--checkpoints", str(runs["s10"]), "--out", str(out)]) == 1
        assert f"--out {out}: exists and is not an earlier average" in capsys.readouterr().err
        assert out.read_bytes() == keep
    assert not (tmp_path / "o.pt").exists()
    assert main(["average-checkpoints", "--checkpoints", str(runs["s10"]), str(runs["s20"]), "--out",
                 str(tmp_path / "avg.pt")]) == 0  # an earlier average is replaced


class SpellingModel(torch.nn.Module):
    """Stands in for a CTC model: whatever the audio, it spells `hyps[i]` for the i-th utterance of
    the batch (sorted by length, as the dev loader delivers them), one token per frame."""

    def __init__(self, tokenizer, hyps: dict[int, str]):
        super().__init__()
        self.tok, self.hyps = tokenizer, hyps
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, audio, lengths):
        from toolkit.model.config import num_frames

        frames = [num_frames(int(n)) for n in lengths]
        out = torch.full((len(frames), max(frames), self.tok.vocab_size), -30.0)
        out[:, :, 0] = 0.0  # blank
        for b, n in enumerate(lengths.tolist()):
            ids = self.tok.encode(self.hyps[int(n)])
            for t, i in enumerate(ids):  # label, blank, label, blank, ...
                out[b, 2 * t, 0], out[b, 2 * t, i] = -30.0, 0.0
        return out.log_softmax(-1), torch.tensor(frames)


def test_dev_cer_during_finetuning_is_toolkit_scores_cer(tmp_path):
    """Validation scores greedy hypotheses with toolkit.score: the CER in the training log is the
    CER of `toolkit score` (characters without spaces), not jiwer's (which counts spaces)."""
    import jiwer
    from graph_fixtures import char_lang
    from test_decode import make_cuts

    from toolkit.text.tokenizer import Tokenizer
    from toolkit.train.config import load_config
    from toolkit.train.tasks import CTCTask

    lang = char_lang(tmp_path / "lang", ["ab", "cab", "ba", "cob"])
    cuts_path, cuts = make_cuts(tmp_path, [("ab cab", "xx"), ("ba ab", "xx"), ("cob", "xx")])
    refs = {c.id: c.supervisions[0].text for c in cuts}
    hyps = {"u0": "abc ab", "u1": "ba ab", "u2": "co b"}  # only word boundaries wrong in u0 and u2
    by_len = {c.recording.num_samples: hyps[c.id] for c in cuts}
    cfg = load_config(None, "finetune", [f"exp_dir={tmp_path / 'e'}", f"data.train_cuts=[{cuts_path}]",
                                         f"data.dev_cuts=[{cuts_path}]", f"data.lang_dir={lang}"])
    task = CTCTask(cfg)
    row = task.validate(SpellingModel(Tokenizer.from_lang_dir(lang), by_len), 0)
    ref_file = tmp_path / "ref"
    hyp_file = tmp_path / "hyp"
    ref_file.write_text("".join(f"{u} {t}\n" for u, t in refs.items()))
    hyp_file.write_text("".join(f"{u} {t}\n" for u, t in hyps.items()))
    proc = subprocess.run([sys.executable, "-m", "toolkit.cli", "score", "--ref", str(ref_file), "--hyp",
                           str(hyp_file), "--cer", "--out-dir", str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    scored = json.loads((tmp_path / "s" / "results.json").read_text())
    assert row["cer"] == pytest.approx(scored["cer"]["err_rate"]) and row["cer"] == 0.0
    assert row["wer"] == pytest.approx(scored["wer"]["err_rate"]) and row["wer"] > 0
    jiwer_cer = 100 * jiwer.cer([refs[u] for u in sorted(refs)], [hyps[u] for u in sorted(refs)])
    assert jiwer_cer > 0  # the definition validation used before: spaces counted


@pytest.mark.slow
def test_kill_9_at_random_points_of_a_finetuning_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """20 SIGKILLs at random moments of a tiny CTC fine-tuning (during start-up, updates, validation,
    checkpoint writes, pruning), each followed by a default resume: the run ends with the weights of
    an uninterrupted run, bit for bit, and a metrics.jsonl without duplicate or torn rows."""
    import random

    def cli(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), **kw)

    assert cli("synth-corpus", "--format", "commonvoice", "--languages", "it", "--minutes-per-language", "1.5",
               "--speakers", "4", "--seed", "9", "--out", "corpus").returncode == 0
    assert cli("prepare", "commonvoice", "--corpus-dir", "corpus", "--out", "m").returncode == 0
    assert cli("lang-dir", "--type", "char", "--cuts", "m/cv-it_cuts_train.jsonl.gz", "--out", "lang").returncode == 0
    conf = ROOT_DIR / "recipes" / "shared" / "conf" / "finetune_tiny.yaml"

    def args(exp: str) -> list[str]:
        return [sys.executable, "-m", "toolkit.cli", "finetune", "--config", str(conf), "--set", f"exp_dir={exp}",
                "--set", "data.train_cuts=[m/cv-it_cuts_train.jsonl.gz]", "--set", "data.dev_cuts=[m/cv-it_cuts_dev.jsonl.gz]",
                "--set", "data.lang_dir=lang", "--set", "train.max_updates=24", "--set", "train.save_interval=2",
                "--set", "train.keep_last=3", "--set", "train.log_interval=1", "--set", "train.valid_interval=8",
                "--set", "data.max_duration=6", "--set", "train.device=cpu"]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.time()
    ref = subprocess.run(args("exp_ref"), cwd=tmp_path, capture_output=True, text=True, env=env)
    run_seconds = time.time() - t0
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_rows = [json.loads(line) for line in (tmp_path / "exp_ref" / "metrics.jsonl").read_text().splitlines()]
    ref_weights = torch.load(tmp_path / "exp_ref" / "checkpoint-24.pt", weights_only=True)["model"]

    def check_complete(exp: Path) -> None:
        """A killed and resumed run, finished: the reference's weights and metrics, no duplicate or torn row."""
        b = torch.load(exp / "checkpoint-24.pt", weights_only=True)["model"]
        assert ref_weights.keys() == b.keys() and all(torch.equal(ref_weights[k], b[k]) for k in b)
        rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]  # a torn line would not parse
        keys = [(r["step"], r["split"]) for r in rows]
        assert len(keys) == len(set(keys)), "duplicate metrics rows"
        assert [s for s, split in keys if split == "train"] == list(range(1, 25))
        assert [r["loss"] for r in rows if r["split"] == "train"] == [r["loss"] for r in ref_rows if r["split"] == "train"]

    # The kill windows are fractions of the reference run's time. The machine's speed can change
    # under the test (other jobs start or stop), so a run that finishes before its 20th kill is
    # checked as complete, and the kills go on in a fresh run with windows half as long
    # (a cycle); at most four.
    rng = random.Random(7)
    kills, cycles, scale = 0, 0, 1.0
    while kills < 20:
        cycles += 1
        assert cycles <= 4, f"only {kills} kills landed in 4 runs that each finished before their windows ended"
        exp = tmp_path / f"exp_kill{cycles}"
        while kills < 20:
            proc = subprocess.Popen(args(exp.name), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=rng.uniform(0.1, 0.5) * scale * run_seconds)  # start-up, updates, validation, saves
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            assert proc.returncode == 0, f"the resumed run failed with exit status {proc.returncode}"
            break  # finished before the kill: the run is complete
        final = subprocess.run(args(exp.name), cwd=tmp_path, capture_output=True, text=True, env=env)
        assert final.returncode == 0, final.stderr[-2000:]
        check_complete(exp)
        scale /= 2
    print(f"RELIABILITY faults_injected={kills} resumed_runs={kills + cycles} runs={cycles} weights_equal=1 "
          "duplicate_rows=0")


def test_training_text_outside_the_vocabulary_is_counted_and_refused_above_the_share(tmp_path, caplog):
    from graph_fixtures import char_lang
    from test_decode import make_cuts

    from toolkit.text.tokenizer import Tokenizer
    from toolkit.train.tasks import check_unk_share

    lang = char_lang(tmp_path / "lang", ["ab", "ba"])
    tok = Tokenizer.from_lang_dir(lang)
    _, cuts = make_cuts(tmp_path, [("ab ba", "xx"), ("ab éé", "xx")])  # é is not in the vocabulary
    # 12 targets (a b | b a | and a b | é é |), 2 of them <unk>
    with pytest.raises(ToolkitError) as e:
        check_unk_share(cuts, tok, 0.01, "data.train_cuts x")
    assert str(e.value).startswith("data.train_cuts x: 2 of 12 training targets (16.67%) are <unk> (outside the "
                                   "vocabulary: 'é' x2); above data.max_unk_share=0.01")
    with caplog.at_level("WARNING", logger="toolkit.train"):
        assert check_unk_share(cuts, tok, 0.5, "data.train_cuts x") == pytest.approx(2 / 12)
    assert "2 of 12 training targets" in caplog.text
    assert tok.oov_count == 0  # the count does not leak into training's own


def tone_corpus(d: Path, n: int = 6) -> tuple[str, Path]:
    """A few tone-speech utterances (tests/tone_speech.py) as WAV files and a cut manifest, and a lang dir."""
    import numpy as np
    import soundfile as sf
    from graph_fixtures import char_lang
    from lhotse import CutSet, Recording, SupervisionSegment
    from tone_speech import SR, random_sentence, say

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocab = ["ab", "ba", "cab", "cob"]
    cuts = []
    for i in range(n):
        words = random_sentence(rng, vocab)
        wav, _ = say(words, rng)
        sf.write(d / f"u{i}.wav", wav, SR)
        rec = Recording.from_file(d / f"u{i}.wav", recording_id=f"u{i}")
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(id=f"u{i}", recording_id=f"u{i}", start=0, duration=rec.duration,
                                               text=" ".join(words), language="xx")]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(d / "cuts.jsonl.gz")
    return str(d / "cuts.jsonl.gz"), char_lang(d / "lang", vocab)


def test_a_resume_does_not_need_a_deleted_init_checkpoint(tmp_path, capsys):
    """The weights of a resumed run come from its checkpoint, yet a deleted train.init file stopped the
    resume ("checkpoint not found"). Now the run resumes and ends with an uninterrupted run's weights;
    without a checkpoint to resume, and for a collapse restart (which needs the initial weights), the
    missing file is a one-line error."""
    from toolkit.cli import main
    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForPretraining

    cuts, lang = tone_corpus(tmp_path / "c")
    cfg = get_preset("tiny", encoder_layers=1)
    init = tmp_path / "init.pt"
    save_checkpoint(init, Wav2Vec2ForPretraining(cfg), cfg, "pretrain")

    conf = tmp_path / "ft.yaml"
    conf.write_text("model:\n  overrides: {encoder_layers: 1}\n")

    def finetune(exp: str, updates: int, *extra: str) -> int:
        return main(["finetune", "--config", str(conf), "--set", f"exp_dir={tmp_path / exp}", "--set", f"train.init={init}",
                     "--set", f"data.train_cuts=[{cuts}]", "--set", f"data.dev_cuts=[{cuts}]",
                     "--set", f"data.lang_dir={lang}", "--set", f"train.max_updates={updates}",
                     "--set", "train.save_interval=2", "--set", "train.valid_interval=2", "--set", "train.device=cpu",
                     "--set", "data.max_duration=4", "--set", "train.on_collapse=warn", *extra])

    assert finetune("e", 4) == 0
    want = torch.load(tmp_path / "e" / "checkpoint-4.pt", weights_only=True)
    (tmp_path / "e" / "checkpoint-4.pt").unlink()  # as if killed before it was written
    init.unlink()
    assert finetune("fresh", 4, "--no-resume") == 1  # nothing to resume: the missing file is the error
    assert "init.pt: checkpoint not found" in capsys.readouterr().err
    assert finetune("e", 4) == 0
    assert "init.pt: not found; the run resumes from" in capsys.readouterr().err
    got = torch.load(tmp_path / "e" / "checkpoint-4.pt", weights_only=True)
    for k, v in want["model"].items():
        assert torch.equal(got["model"][k], v), k
    assert got["train_config"]["train"]["init"] == str(init)  # the run still names where it started
    assert not (tmp_path / "fresh" / "checkpoint-2.pt").exists()


def test_a_resume_given_an_init_with_other_weights_is_refused(tmp_path, capsys):
    """`toolkit finetune` resumed with a train.init holding other weights continued the old run with a
    warning only: its results then looked like a fine-tuning of the new weights. Now that is a one-line
    error (the exp dir untouched); a copy of the same weights elsewhere resumes; --allow-config-change
    continues the old run."""
    from toolkit.cli import main
    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.model.presets import get_preset
    from toolkit.model.wav2vec2 import Wav2Vec2ForPretraining

    cuts, lang = tone_corpus(tmp_path / "c")
    cfg = get_preset("tiny", encoder_layers=1)
    a, b, copy = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "elsewhere" / "a.pt"
    torch.manual_seed(0)
    save_checkpoint(a, Wav2Vec2ForPretraining(cfg), cfg, "pretrain")
    torch.manual_seed(1)
    save_checkpoint(b, Wav2Vec2ForPretraining(cfg), cfg, "pretrain")
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    conf = tmp_path / "ft.yaml"
    conf.write_text("model:\n  overrides: {encoder_layers: 1}\n")

    def finetune(init, updates: int, *extra: str) -> int:
        return main(["finetune", "--config", str(conf), "--set", f"exp_dir={tmp_path / 'e'}", "--set", f"train.init={init}",
                     "--set", f"data.train_cuts=[{cuts}]", "--set", f"data.dev_cuts=[{cuts}]",
                     "--set", f"data.lang_dir={lang}", "--set", f"train.max_updates={updates}",
                     "--set", "train.save_interval=2", "--set", "train.valid_interval=2", "--set", "train.device=cpu",
                     "--set", "data.max_duration=4", *extra])

    assert finetune(a, 2) == 0
    exp = tmp_path / "e"
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    capsys.readouterr()
    assert finetune(b, 4) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"train.init {b} (the run started from {a}) holds other weights than this run started from; "
                        "resume with the run's own init, start a new exp_dir to fine-tune from the new weights, or "
                        "pass --allow-config-change to continue the old run"), err
    assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before  # nothing written
    assert finetune(copy, 4) == 0  # the same weights at another path: the same run
    assert "holds other weights" not in capsys.readouterr().err
    assert finetune(b, 6, "--allow-config-change") == 0
    assert "holds other weights than this run started from; the run continues" in capsys.readouterr().err
    from toolkit.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(exp / "checkpoint-6.pt")
    assert ckpt["train_config"]["train"]["init"] == str(a)  # the record still names the run's own init
    assert ckpt["init_fingerprint"] == load_checkpoint(exp / "checkpoint-2.pt")["init_fingerprint"]
