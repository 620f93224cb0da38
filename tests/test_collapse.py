"""Blank-only collapse (toolkit/train/collapse.py): `train.on_collapse: restart` starts again from the
initial weights with a lower peak learning rate and a longer warm-up, moves the collapsed run aside,
records the restart in metrics.jsonl and keeps the lowered rate across a resume; `warn` only warns.
The engine's toy regression task stands in for CTC; its validation reports all-blank output for as
many validations as the test asks."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from test_train_engine import ToyTask, config, make_batches
from toolkit.train.collapse import longer_warmup, restart_rows, warmup_of
from toolkit.train.config import ScheduleSection, load_config
from toolkit.train.engine import Trainer, list_checkpoints
from toolkit.utils import ToolkitError


class BlankTask(ToyTask):
    """Validation says 'all blank' for the first `blank_validations` validations."""

    def __init__(self, batches, blank_validations: int):
        super().__init__(batches, dropout=0.0)
        self.blank_validations = blank_validations
        self.validations = 0
        self.starts: list[dict] = []  # the weights each time training (re)starts at update 0

    def on_update(self, model, num_updates):
        if num_updates == 0:
            self.starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    def validate(self, model, num_updates):
        self.validations += 1
        blank = self.validations <= self.blank_validations
        return {"blank_only": 1.0 if blank else 0.0, "wer": 100.0 if blank else 50.0}

    def best_metric(self):
        return "wer"


def rows(exp, split=None):
    out = [json.loads(l) for l in (exp / "metrics.jsonl").read_text().splitlines()]
    return [r for r in out if split is None or r["split"] == split]


def blank_config(tmp_path, **train):
    cfg = config(tmp_path, valid_interval=10, blank_warn_updates=10, save_interval=5, **train)
    cfg.schedule.name = "constant"
    return cfg


def test_restart_from_initial_weights_with_lower_lr_and_longer_warmup(tmp_path):
    cfg = blank_config(tmp_path, max_updates=20, on_collapse="restart")
    task = BlankTask(make_batches(12), blank_validations=1)
    Trainer(cfg, task, resume=False).run()
    exp = tmp_path / "exp"
    assert len(task.starts) == 2
    for k, v in task.starts[0].items():  # the restart began from the very same weights
        assert torch.equal(v, task.starts[1][k]), k
    restart = restart_rows(exp)
    assert len(restart) == 1 and rows(exp)[0]["split"] == "restart"  # the new metrics start with it
    assert restart[0]["collapsed_at"] == 10 and restart[0]["restart"] == 1
    assert restart[0]["lr"] == pytest.approx(0.01 * 0.3) and restart[0]["warmup"] == 6  # 3 warm-up updates x 2
    train = {r["step"]: r["lr"] for r in rows(exp, "train")}
    assert sorted(train) == list(range(1, 21))  # the restarted run got the whole budget
    assert train[4] == pytest.approx(0.003 * 3 / 6) and train[20] == pytest.approx(0.003)
    # the collapsed run is kept aside, the new one owns the experiment directory
    aside = exp / "collapsed-1"
    assert [s for s, _ in list_checkpoints(aside)] == [5]  # update 10 validated, collapsed, not saved
    assert max(r["step"] for r in rows(aside)) == 10
    assert [s for s, _ in list_checkpoints(exp)][-1] == 20 and (exp / "last.pt").resolve().name == "checkpoint-20.pt"
    from toolkit.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(exp / "checkpoint-20.pt")
    assert ckpt["collapse"]["restarts"] == [{"collapsed_at": 10, "lr": pytest.approx(0.003), "warmup": 6}]
    assert ckpt["counters"]["collapse_restarts"] == 1
    assert ckpt["train_config"]["optim"]["lr"] == 0.01  # the config keeps what the run was started with


def test_resume_after_a_restart_keeps_the_lowered_lr(tmp_path):
    cfg = blank_config(tmp_path, max_updates=20, on_collapse="restart")
    Trainer(cfg, BlankTask(make_batches(12), blank_validations=1), resume=False).run()
    cfg = blank_config(tmp_path, max_updates=30, on_collapse="restart")
    task = BlankTask(make_batches(12), blank_validations=0)
    Trainer(cfg, task, resume=True).run()
    train = {r["step"]: r["lr"] for r in rows(tmp_path / "exp", "train")}
    assert train[30] == pytest.approx(0.003) and len(task.starts) == 0


def test_max_restarts_then_gives_up_with_a_warning(tmp_path, caplog):
    cfg = blank_config(tmp_path, max_updates=20, on_collapse="restart", max_restarts=2)
    task = BlankTask(make_batches(12), blank_validations=10 ** 6)
    with caplog.at_level(logging.WARNING, logger="toolkit.train"):
        Trainer(cfg, task, resume=False).run()
    exp = tmp_path / "exp"
    assert len(task.starts) == 3 and (exp / "collapsed-1").is_dir() and (exp / "collapsed-2").is_dir()
    last = restart_rows(exp)[-1]
    assert last["restart"] == 2 and last["lr"] == pytest.approx(0.01 * 0.3 ** 2) and last["warmup"] == 12
    assert any("still all blank after 2 restart(s)" in r.getMessage() for r in caplog.records)


def test_warn_is_the_default_and_never_restarts(tmp_path):
    cfg = blank_config(tmp_path, max_updates=20)
    assert cfg.train.on_collapse == "warn"
    task = BlankTask(make_batches(12), blank_validations=10 ** 6)
    Trainer(cfg, task, resume=False).run()
    assert len(task.starts) == 1 and not restart_rows(tmp_path / "exp")
    assert not list(tmp_path.glob("exp/collapsed-*"))


def test_longer_warmup_keeps_the_phases_summing_to_one():
    tri = ScheduleSection(name="tri_stage", phase_ratio=(0.1, 0.4, 0.5))
    out = longer_warmup(tri, 1000, 2.0)
    assert out.phase_ratio == pytest.approx((0.2, 0.3, 0.5)) and warmup_of(out, 1000) == 200
    assert tri.phase_ratio == (0.1, 0.4, 0.5)  # a copy
    out = longer_warmup(ScheduleSection(name="tri_stage", phase_ratio=(0.4, 0.1, 0.5)), 1000, 2.0)
    assert out.phase_ratio == pytest.approx((0.8, 0.0, 0.2))  # hold used up, then decay
    poly = longer_warmup(ScheduleSection(name="polynomial", warmup_updates=50), 1000, 3.0)
    assert poly.warmup_updates == 150


def test_bad_on_collapse_is_a_one_line_error():
    with pytest.raises(ToolkitError, match="train.on_collapse: 'retry' is not one of warn, restart"):
        load_config(None, "finetune", ["exp_dir=exp/x", "train.on_collapse=retry"])
    with pytest.raises(ToolkitError, match="restart_lr_scale must be in"):
        load_config(None, "finetune", ["exp_dir=exp/x", "train.restart_lr_scale=2"])


def test_a_fresh_run_sets_the_old_runs_collapsed_attempts_aside_and_never_overwrites_them(tmp_path):
    """A fresh start left collapsed-1/ in place, and the new run's own restart then moved its files
    onto the old run's (best.pt and metrics.jsonl replaced, the old run's lost)."""
    cfg = blank_config(tmp_path, max_updates=20, on_collapse="restart")
    Trainer(cfg, BlankTask(make_batches(12), blank_validations=1), resume=False).run()
    exp = tmp_path / "exp"
    first = {p.name: p.read_bytes() for p in (exp / "collapsed-1").iterdir() if p.is_file()}
    (exp / "plots").mkdir()
    (exp / "plots" / "loss.png").write_bytes(b"old")
    cfg = blank_config(tmp_path, max_updates=20, on_collapse="restart", seed=2)
    Trainer(cfg, BlankTask(make_batches(12), blank_validations=1), resume=False).run()
    previous = [p for p in (exp / "previous").iterdir()]
    assert len(previous) == 1 and {p.name for p in previous[0].iterdir()} >= {"collapsed-1", "plots", "metrics.jsonl"}
    assert {p.name: p.read_bytes() for p in (previous[0] / "collapsed-1").iterdir() if p.is_file()} == first
    assert (exp / "collapsed-1").is_dir() and not (exp / "plots").exists()  # the new run's own restart
    from toolkit.train.expdir import set_aside

    (exp / "x.txt").write_text("new")
    assert set_aside(exp, [exp / "x.txt"], "test", dest=exp / "collapsed-1") == exp / "collapsed-1-1"
    assert (exp / "collapsed-1-1" / "x.txt").read_text() == "new"


class InitTask(BlankTask):
    """BlankTask whose initial weights come from a file, as train.init's do."""

    def __init__(self, batches, blank_validations, init):
        super().__init__(batches, blank_validations)
        self.init = init

    def build_model(self):
        model = super().build_model()
        model.load_state_dict(torch.load(self.init))
        return model


@pytest.mark.parametrize("moved", [False, True])
def test_a_restart_after_a_resume_starts_from_the_runs_own_initial_weights(tmp_path, moved):
    """A resume re-reads train.init: with the file re-pointed since the start, a collapse restart
    started from other weights than the run's, exit 0."""
    init = tmp_path / "init.pt"
    torch.save(ToyTask([]).build_model().state_dict(), init)
    cfg = blank_config(tmp_path, max_updates=10, on_collapse="restart")
    Trainer(cfg, InitTask(make_batches(12), 0, init), resume=False).run()
    if moved:
        torch.save({k: v + 1 for k, v in torch.load(init).items()}, init)
    cfg = blank_config(tmp_path, max_updates=30, on_collapse="restart")
    task = InitTask(make_batches(12), 1, init)
    if moved:
        with pytest.raises(ToolkitError, match="holds other weights than when this run started"):
            Trainer(cfg, task, resume=True).run()
    else:
        Trainer(cfg, task, resume=True).run()
        assert len(task.starts) == 1 and len(restart_rows(tmp_path / "exp")) == 1


def test_a_restart_is_refused_when_the_initial_weights_are_gone(tmp_path):
    """A resume whose train.init file was deleted takes its architecture from the checkpoint
    (tasks.load_init); a collapse restart would then start from random weights, so it is refused."""
    cfg = blank_config(tmp_path, max_updates=10, on_collapse="restart")
    Trainer(cfg, BlankTask(make_batches(12), 0), resume=False).run()
    cfg = blank_config(tmp_path, max_updates=30, on_collapse="restart")
    task = BlankTask(make_batches(12), 1)
    task.init_missing = True
    with pytest.raises(ToolkitError, match=r"not found, and greedy dev output is all blank at update 20: a restart "
                                           "starts from the initial weights"):
        Trainer(cfg, task, resume=True).run()
    # with the fingerprint of the run's initial weights kept in the checkpoints written meanwhile
    assert "initial_fingerprint" in torch.load(list_checkpoints(tmp_path / "exp")[-1][1], weights_only=False)["collapse"]


def test_a_resume_given_another_init_names_that_one_not_the_runs_own(tmp_path, caplog):
    """A resume given another train.init keeps the run's recorded one; the refusal of a collapse
    restart named the recorded file as the one that "holds other weights", which was untouched."""
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(ToyTask([]).build_model().state_dict(), a)
    torch.save({k: v + 1 for k, v in torch.load(a).items()}, b)
    cfg = blank_config(tmp_path, max_updates=10, on_collapse="restart")
    cfg.train.init = str(a)
    Trainer(cfg, InitTask(make_batches(12), 0, a), resume=False).run()
    cfg = blank_config(tmp_path, max_updates=30, on_collapse="restart")
    cfg.train.init = str(b)
    with pytest.raises(ToolkitError) as e:
        Trainer(cfg, InitTask(make_batches(12), 1, b), resume=True).run()
    assert str(e.value).startswith(f"train.init {b} (given now; the run started from {a}): holds other weights")
    assert f"train.init {b} (given now) holds other weights than the run started from ({a})" in caplog.text
