"""Training configs (YAML -> dataclasses, one-line errors) and learning-rate schedules."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolkit.train.config import ScheduleSection, load_config
from toolkit.train.optim import Scheduler, build_optimizer, lr_at
from toolkit.utils import ToolkitError

CONFIGS = Path(__file__).resolve().parents[1] / "toolkit" / "train" / "configs"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "exp_dir: e\noptim:\n  lr: 0.001\n")
    cfg = load_config(p, "pretrain", ["train.max_updates=7", "optim.betas=[0.9, 0.99]"])
    assert cfg.optim.lr == 0.001 and cfg.train.max_updates == 7
    assert cfg.optim.betas == (0.9, 0.99) and cfg.optim.eps == 1e-6 and cfg.schedule.name == "polynomial"
    ft = load_config(p, "finetune")
    # fairseq fine-tuning: tri-stage, frozen CNN, no weight decay, eps 1e-8
    assert ft.schedule.name == "tri_stage" and ft.train.feature_grad_mult == 0.0
    assert ft.optim.weight_decay == 0.0 and ft.optim.eps == 1e-8 and ft.model.overrides["mask_channel_prob"] == 0.5


@pytest.mark.parametrize("text,needle", [
    ("optim:\n  lrr: 1\n", "lrr"),
    ("bogus: 1\n", "bogus"),
    ("train:\n  amp: fp8\n", "train.amp"),
    ("schedule:\n  name: cosine\n", "schedule.name"),
    ("schedule:\n  phase_ratio: [0.5, 0.5, 0.5]\n", "schedule.phase_ratio"),
    ("optim: 3\n", "optim"),
    ("train:\n  max_updates: 0\n", "train.max_updates"),
    ("optim:\n  lr: [1\n", "invalid YAML"),
    # a second section replaced the first without a word (its train.init lost: from scratch)
    ("train:\n  init: a.pt\nmodel:\n  preset: tiny\ntrain:\n  max_updates: 1\n",
     "(line 5, column 1): key 'train' appears twice (first on line 1)"),
    ("optim:\n  lr: 1e-3\n  lr: 2e-3\n", "key 'lr' appears twice"),
    # anything but true/false was a true flag; counts took strings and bools
    ("data:\n  speed_perturb: flase\n", "data.speed_perturb: 'flase' is not true or false"),
    ("data:\n  normalize: 'false'\n", "data.normalize: 'false' is not true or false"),
    ("train:\n  max_restarts: two\n", "train.max_restarts: 'two' is not an integer"),
    ("train:\n  keep_last: true\n", "train.keep_last: True is not an integer"),
    ("train:\n  skip_nonfinite_window: abc\n", "train.skip_nonfinite_window: 'abc' is not an integer"),
    ("optim:\n  clip_norm: five\n", "optim.clip_norm: 'five' is not a number"),
    ("train:\n  amp: 16\n", "train.amp: 16 is not a string"),
])
def test_bad_config_one_line_error(tmp_path, text, needle):
    with pytest.raises(ToolkitError) as e:
        load_config(write(tmp_path, text), "pretrain")
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_bad_override_key_is_named(tmp_path):
    with pytest.raises(ToolkitError, match="nosuch"):
        load_config(write(tmp_path, "exp_dir: e\n"), "pretrain", ["train.nosuch=1"])


def test_cli_bad_key_prints_one_line(tmp_path):
    p = write(tmp_path, "train:\n  max_update: 5\n")
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "pretrain", "--config", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "max_update" in lines[0] and lines[0].startswith("toolkit pretrain: error:")


@pytest.mark.parametrize("name", ["pretrain_tiny.yaml", "finetune_tiny.yaml"])
def test_example_configs_load(name):
    cfg = load_config(CONFIGS / name, "pretrain" if name.startswith("pre") else "finetune")
    assert cfg.model.preset == "tiny"


def test_polynomial_matches_transformers():
    from transformers import get_polynomial_decay_schedule_with_warmup

    lr, warm, total, end = 5e-4, 10, 100, 1e-5
    sched = ScheduleSection(name="polynomial", warmup_updates=warm, power=2.0, end_lr=end)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ref = get_polynomial_decay_schedule_with_warmup(opt, warm, total, lr_end=end, power=2.0)
    for n in range(0, 120):
        assert lr_at(n, lr, total, sched) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), n
        opt.step()
        ref.step()


def test_tri_stage_key_steps():
    lr, total = 1e-3, 1000
    s = ScheduleSection(name="tri_stage", phase_ratio=(0.1, 0.4, 0.5), init_lr_scale=0.01, final_lr_scale=0.05)
    assert lr_at(0, lr, total, s) == pytest.approx(0.01 * lr)
    assert lr_at(50, lr, total, s) == pytest.approx((0.01 + 0.99 * 0.5) * lr)  # linear warm-up
    assert lr_at(100, lr, total, s) == pytest.approx(lr)  # peak at the end of warm-up
    assert lr_at(499, lr, total, s) == pytest.approx(lr)  # hold
    # exponential decay: half-way the geometric mean of peak and final
    assert lr_at(750, lr, total, s) == pytest.approx(lr * math.sqrt(0.05))
    assert lr_at(1000, lr, total, s) == pytest.approx(0.05 * lr)
    assert lr_at(5000, lr, total, s) == pytest.approx(0.05 * lr)
    vals = [lr_at(n, lr, total, s) for n in range(500, 1001)]
    assert all(a > b for a, b in zip(vals, vals[1:]))


def test_scheduler_state_and_param_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    from toolkit.train.config import OptimSection

    opt = build_optimizer(model, OptimSection(lr=1e-3, weight_decay=0.01))
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.01]  # biases and norm gains are not decayed
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    sched = Scheduler(opt, 1e-3, 100, ScheduleSection(name="polynomial", warmup_updates=10))
    sched.step_update(5)
    state = sched.state_dict()
    other = Scheduler(opt, 1e-3, 100, ScheduleSection(name="polynomial", warmup_updates=10))
    other.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_several_configs_merge_in_order_and_exp_dir_comes_from_the_file_name(tmp_path):
    from toolkit.train.config import load_config

    shared = write(tmp_path, "optim:\n  lr: 1.0e-3\n  clip_norm: 5.0\ntrain:\n  max_updates: 10\n", name="finetune_tiny.yaml")
    own = tmp_path / "own"
    own.mkdir()
    recipe = write(own, "optim:\n  lr: 3.0e-4\n", name="finetune_tiny.yaml")
    cfg = load_config([shared, recipe], "finetune")
    assert cfg.optim.lr == 3.0e-4 and cfg.optim.clip_norm == 5.0 and cfg.train.max_updates == 10
    # no exp_dir anywhere: exp/<name of the last file>, never one directory shared by every config
    assert cfg.exp_dir == "exp/finetune_tiny"
    assert load_config([shared], "finetune", ["exp_dir=exp/x"]).exp_dir == "exp/x"
    with pytest.raises(ToolkitError, match="exp_dir is not set"):
        load_config(None, "finetune")


def test_an_experiments_saved_config_is_a_config_of_the_same_command(tmp_path):
    """exp/X/config.yaml (written with its task) reruns as --config X for the same task only."""
    from toolkit.train.config import config_to_yaml

    cfg = load_config(None, "finetune", ["exp_dir=exp/a", "optim.lr=3e-4", "train.max_updates=7"])
    saved = tmp_path / "config.yaml"
    saved.write_text(config_to_yaml(cfg))
    assert "task: finetune" in saved.read_text()
    again = load_config(saved, "finetune", ["exp_dir=exp/b"])
    assert (again.optim.lr, again.train.max_updates, again.exp_dir) == (3e-4, 7, "exp/b")
    with pytest.raises(ToolkitError, match=r"config.yaml: a config of another task"):
        load_config(saved, "pretrain", ["exp_dir=exp/c"])


def test_schedule_settings_without_effect_are_warned_about(tmp_path, caplog):
    """tri_stage took its warm-up from phase_ratio and ignored schedule.warmup_updates without a word
    (config.yaml still said 100); a pretraining config that set no warm-up got the BASE default of
    32000 updates and, with 400 updates, peaked at 1.2% of optim.lr."""
    import logging

    from test_train_engine import ToyTask, config, make_batches
    from toolkit.train.engine import Trainer
    from toolkit.train.optim import lr_at, schedule_warnings

    tri = load_config(None, "finetune", ["exp_dir=e", "schedule.name=tri_stage", "schedule.warmup_updates=100",
                                         "train.max_updates=1000"])
    assert schedule_warnings(tri.schedule, 1000) == [
        "schedule.warmup_updates=100 has no effect with schedule.name=tri_stage: its warm-up is "
        "schedule.phase_ratio[0] x train.max_updates = 100 updates"]
    pre = load_config(None, "pretrain", ["exp_dir=e", "train.max_updates=400"])
    (msg,) = schedule_warnings(pre.schedule, 400)
    peak = max(lr_at(n, 1.0, 400, pre.schedule) for n in range(400))
    assert "32000 >= train.max_updates=400" in msg and f"peaks at {100 * peak:.1f}% of optim.lr" in msg
    assert schedule_warnings(load_config(None, "pretrain", ["exp_dir=e", "train.max_updates=40000"]).schedule, 40000) == []
    cfg = config(tmp_path, "w", max_updates=2)  # warm-up 3 updates
    with caplog.at_level(logging.WARNING, logger="toolkit.train"):
        Trainer(cfg, ToyTask(make_batches(2)), resume=False).run()
    assert any("schedule.warmup_updates=3 >= train.max_updates=2" in r.getMessage() for r in caplog.records)
