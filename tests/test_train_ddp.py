"""2-process data parallelism (gloo on CPU, launched by torchrun) gives the same gradients as
one process on the concatenated batch, with LayerDrop active (seeded identically per rank), and
logs the same loss, metrics and throughput as that one process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolkit.train.config import load_config
from toolkit.train.engine import BatchStream, StepOutput, Task, Trainer

VOCAB = 12


def full_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(4, 8000, generator=g)
    lengths = torch.full((4,), 8000, dtype=torch.long)
    target_lengths = torch.tensor([5, 3, 7, 4])
    targets = torch.randint(1, VOCAB, (4, 7), generator=g)
    targets[torch.arange(7)[None] >= target_lengths[:, None]] = -1
    return {"audio": audio, "lengths": lengths, "targets": targets, "target_lengths": target_lengths}


def model_cfg():
    from toolkit.model.presets import get_preset

    # no dropout/masking (per-rank random streams differ by design); LayerDrop on (shared generator)
    return get_preset("tiny").replace(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                                      mask_prob=0.0, mask_channel_prob=0.0, encoder_layerdrop=0.5,
                                      feature_grad_mult=0.1)


class ShardTask(Task):
    """CTC on a fixed batch, of which this process takes `rows`."""

    kind = "ctc"

    def __init__(self, rows: slice):
        self.rows = rows

    def model_config(self):
        return model_cfg()

    def vocab(self):
        return {"type": "char", "tokens": [str(i) for i in range(VOCAB)], "bpe_model": None}

    def build_model(self):
        from toolkit.model.wav2vec2 import Wav2Vec2ForCTC

        model = Wav2Vec2ForCTC(model_cfg(), VOCAB)
        model.wav2vec2.encoder.seed_layerdrop(LAYERDROP_SEED)
        return model

    def train_batches(self, dist, seed):
        return BatchStream([{k: v[self.rows] for k, v in full_batch().items()}] * 4)

    def step(self, model, batch, num_updates):
        from toolkit.model.wav2vec2 import ctc_loss

        log_probs, out_lengths = model(batch["audio"], batch["lengths"])
        loss, kept, _ = ctc_loss(log_probs, out_lengths, batch["targets"], batch["target_lengths"])
        rows = float(batch["audio"].shape[0])
        # one summed and one averaged metric; the mean differs by rank (0.0 on rank 0's rows, 1.0 on rank 1's)
        return StepOutput(loss=loss, sample_size=float(kept), audio_seconds=rows * 0.5,
                          metrics={"utterances": rows, "second_half": float(self.rows.start >= 2)},
                          sums=("utterances",))


def layerdrop_seed() -> int:
    """A seed whose first LayerDrop draw drops some but not all of the 3 layers."""
    for s in range(100):
        keep = (torch.rand(3, generator=torch.Generator().manual_seed(s)) > 0.5).tolist()
        if 0 < sum(keep) < 3:
            return s
    raise AssertionError


LAYERDROP_SEED = layerdrop_seed()


def grads_after_one_update(rows: slice, exp_dir: Path) -> tuple[dict[str, torch.Tensor | None], dict]:
    """The gradients after one update and what the trainer logs for it (with the throughput
    over a 2-second window)."""
    cfg = load_config(None, "pretrain", [f"exp_dir={exp_dir}", "train.device=cpu", "train.max_updates=1",
                                         "optim.clip_norm=0"])
    trainer = Trainer(cfg, ShardTask(rows), resume=False)
    trainer._setup_output()
    trainer._build()
    row = trainer.train_step()
    assert row is not None
    logged = trainer._average_window([row], elapsed=2.0)
    trainer._close()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in trainer.model.named_parameters()}, logged


def worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    grads, logged = grads_after_one_update(slice(2 * rank, 2 * rank + 2), Path(out_dir) / f"exp{rank}")
    torch.save(grads, Path(out_dir) / f"grads{rank}.pt")
    (Path(out_dir) / f"logged{rank}.json").write_text(json.dumps(logged))
    from toolkit.train import ddp

    ddp.cleanup()


@pytest.mark.slow
def test_two_process_gloo_gradients_equal_single_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           __file__, str(tmp_path)]
    # own process group: a hung run is killed with its workers, none left behind
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).parents[1], start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    single, single_logged = grads_after_one_update(slice(0, 4), tmp_path / "single")
    assert single_logged["audio_seconds"] == 2.0 and single_logged["utterances"] == 4.0
    assert single_logged["audio_s_per_s"] == 1.0
    for rank in (0, 1):
        # the whole update's numbers on every rank, not this rank's share (the loss used to be
        # this rank's sum over the global sample size, about half the true value)
        logged = json.loads((tmp_path / f"logged{rank}.json").read_text())
        assert logged["loss"] == pytest.approx(single_logged["loss"], rel=1e-5), (rank, logged, single_logged)
        for key in ("sample_size", "audio_seconds", "utterances", "audio_s_per_s"):
            assert logged[key] == single_logged[key], (key, logged, single_logged)
        assert logged["second_half"] == 0.5
    dropped = [n for n, g in single.items() if g is None and ".layers." in n]
    assert dropped, "LayerDrop dropped no layer; the test would not cover unused parameters"
    for rank in (0, 1):
        multi = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        assert multi.keys() == single.keys()
        for n, g in single.items():
            if g is None:
                assert multi[n] is None or not multi[n].any(), n
            else:
                # relative to the tensor's scale: sums over many frames reassociate differently
                err = (multi[n] - g).abs().max().item()
                assert err <= 1e-4 * g.abs().max().item() + 1e-8, (n, err, g.abs().max().item())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    worker(sys.argv[1])
