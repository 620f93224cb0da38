"""The training engine on a small regression task: NaN skipping, exact resume, gradient
accumulation, checkpoint averaging, plots. (The wav2vec 2.0 objectives: test_train_e2e.py.)"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from toolkit.train.config import TrainConfig, load_config
from toolkit.train.engine import BatchStream, StepOutput, Task, Trainer
from toolkit.train.expdir import list_checkpoints
from toolkit.utils import ToolkitError


def make_batches(n: int, size: int = 8, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    out = []
    for _ in range(n):
        x = torch.randn(size, 4, generator=g)
        out.append({"x": x, "y": x @ w + 0.1 * torch.randn(size, generator=g)})
    return out


class LazyLoader(torch.utils.data.DataLoader):
    def __iter__(self):
        yield from super().__iter__()


class ToyTask(Task):
    """Regression with dropout (so the RNG streams matter for exact resume)."""

    kind = "pretrain"

    def __init__(self, batches: list[dict], nan_batches: set[int] = frozenset(), dropout: float = 0.2):
        self.batches, self.nan_batches, self.dropout = batches, set(nan_batches), dropout

    def model_config(self):
        from toolkit.model.presets import get_preset

        return get_preset("tiny")  # only stored in the checkpoint

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(self.dropout), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 1))

    def train_batches(self, dist, seed) -> BatchStream:
        tagged = [dict(b, index=i) for i, b in enumerate(self.batches)]
        # a real DataLoader whose __iter__ is lazy (a generator, like toolkit.data.loader's): its
        # base-seed draw happens at the first batch, after the resumed RNG state is restored
        return BatchStream(LazyLoader(tagged, batch_size=None, shuffle=False))

    def step(self, model, batch, num_updates) -> StepOutput:
        pred = model(batch["x"]).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).sum()
        if batch["index"] in self.nan_batches:
            loss = loss * float("nan")
        return StepOutput(loss=loss, sample_size=float(len(batch["x"])), audio_seconds=1.0,
                          metrics={"mse": float(loss.detach()) / len(batch["x"])})


def config(tmp_path: Path, name: str = "exp", **train) -> TrainConfig:
    sets = [f"exp_dir={tmp_path / name}", "train.device=cpu", "train.log_interval=1", "schedule.warmup_updates=3",
            "optim.lr=0.01"] + [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, "pretrain", sets)


def losses(exp_dir: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_training_lowers_loss_and_writes_outputs(tmp_path):
    cfg = config(tmp_path, max_updates=30, save_interval=10, keep_last=2, valid_interval=100)
    cfg.optim.clip_norm = 5.0
    Trainer(cfg, ToyTask(make_batches(12)), resume=False).run()
    exp = tmp_path / "exp"
    curve = losses(exp)
    assert curve[30] < 0.5 * curve[1]
    norms = [json.loads(l)["grad_norm"] for l in (exp / "metrics.jsonl").read_text().splitlines()]
    assert max(norms) > 5.0  # the logged norm is the pre-clipping norm; clipping was exercised
    assert [s for s, _ in list_checkpoints(exp)] == [20, 30]  # keep_last=2
    assert (exp / "last.pt").resolve().name == "checkpoint-30.pt"
    assert (exp / "config.yaml").is_file() and (exp / "log" / "train.log").read_text().count("train update") >= 30
    assert any((exp / "tensorboard").iterdir())
    from toolkit.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(exp / "checkpoint-30.pt")  # weights_only=True load
    assert ckpt["step"] == 30 and ckpt["train_config"]["train"]["max_updates"] == 30
    assert {"optimizer", "scheduler", "sampler", "rng"} <= set(ckpt)


def test_nan_batch_is_skipped_weights_untouched(tmp_path):
    batches = make_batches(6)
    cfg = config(tmp_path, max_updates=8)
    trainer = Trainer(cfg, ToyTask(batches, nan_batches={2}), resume=False)
    trainer._setup_output()
    trainer._build()
    assert trainer.train_step() is not None and trainer.train_step() is not None
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt_before = trainer.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    assert trainer.train_step() is None  # batch 2: NaN loss
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(trainer.optimizer.state_dict()["state"][0]["exp_avg"], opt_before)
    assert trainer.counters["skipped_nonfinite"] == 1 and trainer.num_updates == 2
    assert trainer.train_step() is not None and trainer.num_updates == 3
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    trainer._close()


def test_persistent_nans_stop_with_clear_message(tmp_path):
    cfg = config(tmp_path, max_updates=50, skip_nonfinite_window=10, skip_nonfinite_fraction=0.3)
    with pytest.raises(ToolkitError, match="non-finite.*skip_nonfinite_fraction"):
        Trainer(cfg, ToyTask(make_batches(5), nan_batches={0, 1, 2, 3, 4}), resume=False).run()


def test_resume_reproduces_uninterrupted_run(tmp_path):
    batches = make_batches(7)  # 7 batches: resume lands mid-epoch
    full = config(tmp_path, "full", max_updates=24, save_interval=10)
    Trainer(full, ToyTask(batches), resume=False).run()
    part = config(tmp_path, "part", max_updates=24, save_interval=10)
    _run_until(part, ToyTask(batches), stop_at=10)  # a run "killed" after update 10
    Trainer(part, ToyTask(batches), resume=True).run()
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    for step in range(11, 25):
        assert b[step] == a[step], step  # bit-exact on CPU
    from toolkit.model.checkpoint import load_checkpoint

    wa = load_checkpoint(tmp_path / "full" / "checkpoint-24.pt")["model"]
    wb = load_checkpoint(tmp_path / "part" / "checkpoint-24.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _run_until(cfg: TrainConfig, task: Task, stop_at: int) -> None:
    """Train with the full schedule horizon but stop after `stop_at` updates (a 'killed' run)."""
    trainer = Trainer(cfg, task, resume=False)
    trainer._setup_output()
    trainer._build()
    while trainer.num_updates < stop_at:
        if trainer.train_step() is not None:
            trainer._log("train", {"loss": 0.0})  # placeholder rows are overwritten by the resumed run
    trainer.save_step()
    trainer._close()
    path = Path(cfg.exp_dir) / "metrics.jsonl"
    path.unlink()


def test_grad_accumulation_equals_big_batch(tmp_path):
    big = make_batches(1, size=8)
    halves = [{"x": big[0]["x"][:3], "y": big[0]["y"][:3]}, {"x": big[0]["x"][3:], "y": big[0]["y"][3:]}]
    grads = []
    for name, batches, accum in (("one", big, 1), ("two", halves, 2)):
        cfg = config(tmp_path, name, max_updates=1)
        cfg.optim.grad_accum = accum
        trainer = Trainer(cfg, ToyTask(batches, dropout=0.0), resume=False)
        trainer._setup_output()
        trainer._build()
        trainer.train_step()
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
        trainer._close()
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_average_checkpoints_and_plot(tmp_path):
    from toolkit.cli import main
    from toolkit.model.checkpoint import load_checkpoint

    cfg = config(tmp_path, max_updates=6, save_interval=2, keep_last=5)
    Trainer(cfg, ToyTask(make_batches(4)), resume=False).run()
    exp = tmp_path / "exp"
    assert main(["average-checkpoints", "--exp-dir", str(exp), "--last", "2", "--out", str(tmp_path / "avg.pt")]) == 0
    avg = load_checkpoint(tmp_path / "avg.pt")
    c4, c6 = (load_checkpoint(exp / f"checkpoint-{s}.pt")["model"] for s in (4, 6))
    for k in c6:
        torch.testing.assert_close(avg["model"][k], (c4[k] + c6[k]) / 2)
    assert "optimizer" not in avg and avg["kind"] == "pretrain"
    assert main(["plot", str(exp)]) == 0
    import matplotlib.image

    img = matplotlib.image.imread(exp / "plots" / "loss.png")
    assert img.ndim == 3 and img.shape[0] > 100
    assert (exp / "plots" / "overview.png").is_file()
    assert main(["average-checkpoints", "--exp-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")]) == 1


@pytest.mark.parametrize("second_line, problem", [
    (b'{"loss": 1.0}', b'no "step"'),
    (b"[1, 2]", b"a JSON list, not an object"),
    (b'{"step": "abc", "loss": 1.0}', b'"step" is \'abc\''),
    (b'{"step": 2, "split": ["a"], "loss": 1.0}', b'"split" is [\'a\']'),
    (b'{"step": 2, "loss": 1.0, "note": "\xff\xfe"}', b"not UTF-8"),
    (b"garbage", b"not a JSON line"),
])
def test_plot_names_the_damaged_line_of_metrics_jsonl(tmp_path, second_line, problem):
    """A damaged row (not the cut-off last line of a killed run) is one error line naming the
    file and line, exit 1, no traceback; nothing is plotted."""
    import subprocess
    import sys

    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 2.0}\n' + second_line + b'\n{"step": 3, "loss": 0.5}\n')
    p = subprocess.run([sys.executable, "-m", "toolkit.cli", "plot", str(tmp_path)], capture_output=True)
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    line = p.stderr.decode().strip()
    assert len(line.splitlines()) == 1 and f"{tmp_path}/metrics.jsonl:2:" in line and problem.decode() in line
    assert not (tmp_path / "plots").exists()


def test_plot_gives_every_metric_its_own_file(tmp_path):
    """`val/loss` and `val_loss` would share val_loss.png, a metric named `overview` the overview
    figure: each gets its own file, and each file shows its own metric's curve."""
    from toolkit.cli import main
    import matplotlib.image

    rows = [{"step": s, "val/loss": 1.0 * s, "val_loss": 10.0 - s, "overview": 0.0, "loss": 3.0 - s} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path)]) == 0
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["loss.png", "overview-2.png", "overview.png", "val_loss-2.png", "val_loss.png"]
    images = [matplotlib.image.imread(tmp_path / "plots" / n) for n in pngs]
    assert all(img.ndim == 3 and img.shape[0] > 100 for img in images)
    # rising and falling curves, flat line, overview: no two files hold the same picture
    assert len({img.tobytes() for img in images}) == len(images)


def test_ctc_drops_and_counts_utterances_too_short_for_their_labels():
    from toolkit.model.wav2vec2 import ctc_loss, ctc_min_frames

    targets = torch.tensor([[1, 1, 2, -1], [3, 4, 5, 6], [2, 2, 2, 2]])
    target_lengths = torch.tensor([3, 4, 4])
    # labels + one blank between equal neighbours: [1,1,2] needs 4, [3,4,5,6] 4, [2,2,2,2] 7
    assert ctc_min_frames(targets, target_lengths).tolist() == [4, 4, 7]
    g = torch.Generator().manual_seed(0)
    log_probs = torch.randn(3, 6, 8, generator=g).log_softmax(-1)
    out_lengths = torch.tensor([6, 3, 6])  # utterance 1 has 3 < 4 frames, utterance 2 has 6 < 7
    loss, kept, dropped = ctc_loss(log_probs, out_lengths, targets, target_lengths)
    assert (kept, dropped) == (1, 2)
    ref = torch.nn.functional.ctc_loss(log_probs[:1].transpose(0, 1), targets[:1, :3], out_lengths[:1],
                                       target_lengths[:1], blank=0, reduction="sum")
    torch.testing.assert_close(loss, ref)
    assert torch.isfinite(loss)


class CodebookTask(ToyTask):
    """Reports a code perplexity like the pretraining task: healthy, then collapsed; the health
    check is the pretraining task's own."""

    num_codes = 128

    def __init__(self, batches: list[dict], collapse_at: int, cfg: TrainConfig):
        super().__init__(batches, dropout=0.0)
        self.collapse_at, self.cfg = collapse_at, cfg

    def check_health(self, row: dict, num_updates: int) -> None:
        from toolkit.train.tasks import PretrainTask

        PretrainTask.check_health(self, row, num_updates)

    def step(self, model, batch, num_updates) -> StepOutput:
        out = super().step(model, batch, num_updates)
        out.metrics["code_perplexity"] = 100.0 if num_updates < self.collapse_at else 1.5
        return out


def test_codebook_collapse_is_warned_about_after_warmup_only(tmp_path, caplog):
    cfg = config(tmp_path, max_updates=12, collapse_after=4, collapse_threshold=0.02, valid_interval=100)
    with caplog.at_level("WARNING", logger="toolkit.train"):
        Trainer(cfg, CodebookTask(make_batches(12), collapse_at=8, cfg=cfg), resume=False).run()
    warned = [r.getMessage() for r in caplog.records if "codebook collapse" in r.getMessage()]
    # perplexity 100 of 128 codes is healthy; 1.5 < 0.02 x 128 from update 9 on
    assert warned and all("1.5 < 0.020 x 128" in m for m in warned)
    assert len(warned) == 4, warned


def test_no_collapse_warning_before_collapse_after(tmp_path, caplog):
    cfg = config(tmp_path, max_updates=6, collapse_after=100, valid_interval=100)
    with caplog.at_level("WARNING", logger="toolkit.train"):
        Trainer(cfg, CodebookTask(make_batches(6), collapse_at=0, cfg=cfg), resume=False).run()
    assert not [r for r in caplog.records if "codebook collapse" in r.getMessage()]


def test_bf16_autocast_training_on_cpu_and_fp16_fallback(tmp_path, caplog):
    """train.amp=bf16 runs under CPU autocast (bf16 matmuls) and still learns; fp16 needs a GPU:
    on CPU it warns and trains in fp32."""
    cfg = config(tmp_path, "bf16", max_updates=30, valid_interval=100, amp="bf16")
    trainer = Trainer(cfg, ToyTask(make_batches(12), dropout=0.0), resume=False)
    assert trainer.amp_dtype == torch.bfloat16
    with trainer._autocast():
        assert trainer.task.build_model()(torch.randn(2, 4)).dtype == torch.bfloat16
    trainer.run()
    curve = losses(tmp_path / "bf16")
    assert all(math.isfinite(v) for v in curve.values()) and curve[30] < 0.5 * curve[1]
    with caplog.at_level("WARNING", logger="toolkit.train"):
        fp16 = Trainer(config(tmp_path, "fp16", max_updates=2, amp="fp16"), ToyTask(make_batches(2)), resume=False)
    assert fp16.amp_dtype is None and any("fp16 needs a GPU" in r.getMessage() for r in caplog.records)


def test_a_resume_with_another_init_keeps_the_runs_init_and_a_refused_one_leaves_config_yaml(tmp_path, caplog):
    """A resume given another train.init continued from the checkpoint but wrote the new init into
    config.yaml and every later checkpoint: the record named weights the run never started from."""
    from toolkit.model.checkpoint import load_checkpoint

    batches = make_batches(7)
    Trainer(config(tmp_path, "r", max_updates=6, save_interval=3, init="a.pt"), ToyTask(batches), resume=False).run()
    exp = tmp_path / "r"
    with caplog.at_level("WARNING", logger="toolkit.train"):
        Trainer(config(tmp_path, "r", max_updates=9, save_interval=3, init="b.pt"), ToyTask(batches), resume=True).run()
    assert any("changed train.init: 'a.pt' -> 'b.pt'" in r.getMessage() and "one holding other weights is refused" in r.getMessage()
               for r in caplog.records)
    assert "init: a.pt" in (exp / "config.yaml").read_text()
    assert load_checkpoint(exp / "checkpoint-9.pt")["train_config"]["train"]["init"] == "a.pt"
    before = (exp / "config.yaml").read_bytes()
    bad = config(tmp_path, "r", max_updates=12, save_interval=3, init="a.pt")
    bad.optim.lr = 0.5
    with pytest.raises(ToolkitError, match="the config differs"):
        Trainer(bad, ToyTask(batches), resume=True).run()
    assert (exp / "config.yaml").read_bytes() == before


def test_plot_into_a_file_names_it(tmp_path, capsys):
    """`--out-dir` (or the experiment) naming a file said only "File exists; check the path and the disk"."""
    from toolkit.cli import main

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 2.0}\n')
    for args, what in ((["--out-dir", str(tmp_path / "metrics.jsonl")], "--out-dir"), ([], "EXP_DIR")):
        target = str(tmp_path / "metrics.jsonl") if what == "EXP_DIR" else str(tmp_path)
        capsys.readouterr()
        assert main(["plot", target, *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{what} {tmp_path / 'metrics.jsonl'}: a file, not a folder; give a folder"), err
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_a_resume_with_another_batch_size_is_refused_without_suggesting_a_flag(tmp_path):
    """The refusal suggested --allow-config-change, which then failed on the sampler's saved state
    (after config.yaml had been rewritten)."""
    batches = make_batches(7)
    Trainer(config(tmp_path, "r", max_updates=3, save_interval=3), ToyTask(batches), resume=False).run()
    for key, value in (("max_duration", 4.0), ("num_buckets", 3)):
        cfg = config(tmp_path, "r", max_updates=6, save_interval=3)
        setattr(cfg.data, key, value)
        for allow in (False, True):
            with pytest.raises(ToolkitError) as e:
                Trainer(cfg, ToyTask(batches), resume=True, allow_config_change=allow).run()
            msg = str(e.value)
            assert f"data.{key}:" in msg and "a resume continues them" in msg and "--allow-config-change" not in msg
