"""The GPU paths against the CPU ones, on a CUDA device:
- the model core in float32 on CUDA gives the CPU's numbers and Hugging Face's on the same GPU
  (pretraining logits and losses; CTC log-probs and gradients of a padded batch through the
  padding-aware group norm);
- a pretraining step under bf16 autocast stays finite and close to float32 (same masks, negatives
  and Gumbel noise);
- the training engine on CUDA learns with train.amp none, bf16 and fp16 (loss scaling), and a run
  killed and resumed on CUDA continues exactly where it stopped (CUDA RNG state included);
- `toolkit transcribe` and `toolkit decode` on CUDA give the CPU's transcripts in float32, and in
  bfloat16 (the CUDA default) no more errors than that.

Skipped where no CUDA device is visible (CI has none). `bench/gpu.sh` runs this file with the GPU
benchmarks on a GPU machine; bench/RESULTS.md records the runs.
"""
from __future__ import annotations

import math

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU paths run on a GPU machine (bench/gpu.sh)", allow_module_level=True)

from test_model_parity import (assert_logits_close, eval_pair_with_inputs, hf_reference_logits,  # noqa: E402
                               perturb_, rel_err)
from test_train_engine import ToyTask, _run_until, config, losses, make_batches  # noqa: E402

from toolkit.model import Wav2Vec2ForCTC, Wav2Vec2ForPretraining, get_preset  # noqa: E402
from toolkit.model.wav2vec2 import ctc_loss  # noqa: E402
from toolkit.train.engine import Trainer  # noqa: E402

QUIET = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, dropout_features=0.0,
             encoder_layerdrop=0.0)


@pytest.fixture(autouse=True)
def exact_float32():
    """Compare float32 with float32: TF32 matmuls and convolutions off for the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("stable", [False, True], ids=["group-postLN", "layer-preLN"])
def test_pretraining_forward_on_cuda_matches_cpu_and_hugging_face(stable):
    hf, ours, wav, mask, neg = eval_pair_with_inputs(stable)
    with torch.no_grad():
        cpu = ours(wav, mask_time_indices=mask, sampled_negative_indices=neg)
        ours, hf = ours.cuda(), hf.cuda()
        wav, mask, neg = wav.cuda(), mask.cuda(), neg.cuda()
        gpu = ours(wav, mask_time_indices=mask, sampled_negative_indices=neg)
        ref = hf(wav, mask_time_indices=mask, sampled_negative_indices=neg)
    assert gpu.logits.is_cuda and gpu.sample_size == cpu.sample_size
    assert_logits_close(gpu.logits.cpu(), cpu.logits)
    assert_logits_close(gpu.logits, hf_reference_logits(hf, ref, neg)[mask])
    for name in ("contrastive_loss", "code_perplexity"):
        assert rel_err(gpu.metrics[name].cpu(), cpu.metrics[name]) < 1e-4, name
    assert rel_err(gpu.metrics["contrastive_loss"], ref.contrastive_loss) < 1e-4


def test_ctc_padded_batch_forward_and_gradients_on_cuda_match_cpu():
    """The tiny preset's group-norm CNN normalises over each utterance's own samples (a custom
    autograd function): a padded batch on CUDA gives the CPU's log-probs, lengths and gradients."""
    torch.manual_seed(0)
    cfg = get_preset("tiny", mask_prob=0.0, mask_channel_prob=0.0, **QUIET)
    model = Wav2Vec2ForCTC(cfg, 12)
    perturb_(model)
    model.train()
    wav = torch.randn(3, 24000)
    lengths = torch.tensor([24000, 17000, 9000])
    targets = torch.randint(1, 12, (3, 8), generator=torch.Generator().manual_seed(1))
    target_lengths = torch.tensor([8, 6, 4])

    def run(device):
        model.to(device).zero_grad()
        lp, n = model(wav.to(device), lengths.to(device))
        loss, kept, _ = ctc_loss(lp, n, targets.to(device), target_lengths.to(device))
        (loss / kept).backward()
        return lp.detach().cpu(), n.cpu(), float(loss.detach()), {k: p.grad.detach().cpu().clone() for k, p in model.named_parameters()
                                                          if p.grad is not None}

    lp_cpu, n_cpu, loss_cpu, g_cpu = run("cpu")
    lp_gpu, n_gpu, loss_gpu, g_gpu = run("cuda")
    assert torch.equal(n_gpu, n_cpu)
    for b in range(3):
        assert rel_err(lp_gpu[b, :n_cpu[b]], lp_cpu[b, :n_cpu[b]]) < 1e-4
    assert math.isclose(loss_gpu, loss_cpu, rel_tol=1e-4)
    assert g_gpu.keys() == g_cpu.keys() and any(k.startswith("wav2vec2.feature_extractor") for k in g_cpu)
    scale = max(float(g.abs().max()) for g in g_cpu.values())
    for k in g_cpu:  # parameters whose gradient is zero in exact arithmetic (a bias before a norm) hold only rounding
        assert float((g_gpu[k] - g_cpu[k]).abs().max()) < 1e-3 * max(float(g_cpu[k].abs().max()), 1e-3 * scale), k


def test_pretraining_step_under_bf16_autocast_on_cuda():
    """Same masks and negatives (seeded CPU generators), same Gumbel noise and dropout (the CUDA RNG
    reseeded): bf16 autocast changes the loss by under 2% and keeps the gradients' direction."""
    torch.manual_seed(0)
    model = Wav2Vec2ForPretraining(get_preset("tiny")).cuda().train()
    wav = torch.randn(4, 32000, device="cuda")
    lengths = torch.tensor([32000, 30000, 25000, 20000], device="cuda")

    def step(bf16: bool):
        model.zero_grad()
        model.wav2vec2.mask_generator = torch.Generator().manual_seed(1)
        model.negatives_generator = torch.Generator().manual_seed(2)
        torch.cuda.manual_seed(3)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(wav, lengths)
        (out.loss / out.sample_size).backward()
        grad = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        return out, grad

    fp32, g32 = step(False)
    bf16, g16 = step(True)
    assert bf16.sample_size == fp32.sample_size > 0
    assert torch.isfinite(bf16.loss) and torch.isfinite(g16).all()
    assert abs(float(bf16.loss.detach()) - float(fp32.loss.detach())) < 0.02 * abs(float(fp32.loss.detach()))
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.9


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_training_engine_learns_on_cuda(tmp_path, amp):
    cfg = config(tmp_path, amp, device="cuda", max_updates=30, valid_interval=100, amp=amp)
    trainer = Trainer(cfg, ToyTask(make_batches(12), dropout=0.0), resume=False)
    assert trainer.device.type == "cuda"
    assert trainer.amp_dtype == {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    trainer.run()
    assert (trainer.scaler is not None) == (amp == "fp16")
    curve = losses(tmp_path / amp)
    assert all(math.isfinite(v) for v in curve.values()) and curve[30] < 0.5 * curve[1]


def test_resume_on_cuda_continues_the_killed_run(tmp_path):
    """Dropout draws from the CUDA RNG: a run killed after update 10 and resumed must restore it (and
    the data position) to repeat the uninterrupted run's losses and weights."""
    batches = make_batches(7)
    Trainer(config(tmp_path, "full", device="cuda", max_updates=24, save_interval=10), ToyTask(batches),
            resume=False).run()
    part = config(tmp_path, "part", device="cuda", max_updates=24, save_interval=10)
    _run_until(part, ToyTask(batches), stop_at=10)
    Trainer(part, ToyTask(batches), resume=True).run()
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    for step in range(11, 25):
        assert math.isclose(b[step], a[step], rel_tol=1e-6), step
    from toolkit.model.checkpoint import load_checkpoint

    wa = load_checkpoint(tmp_path / "full" / "checkpoint-24.pt")["model"]
    wb = load_checkpoint(tmp_path / "part" / "checkpoint-24.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def tone(tmp_path_factory):
    """A tiny CTC model trained on tone sentences (tests/tone_speech.py), its checkpoint, and 16
    test sentences as WAV files with their words."""
    import soundfile as sf

    from graph_fixtures import FOUR_WORDS, four_word_lang
    from tone_speech import random_sentence, say, train_tone_model
    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.text.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("tone")
    lang = four_word_lang(root / "lang")
    tok = Tokenizer.from_lang_dir(lang)
    model, cfg = train_tone_model(tok, FOUR_WORDS, steps=300)
    ckpt = root / "tone.pt"
    save_checkpoint(ckpt, model, cfg, "ctc", vocab={**tok.to_dict(), "language": "xx"})
    import numpy as np

    rng = np.random.default_rng(5)
    refs = {}
    (root / "wav").mkdir()
    for i in range(16):
        words = random_sentence(rng, FOUR_WORDS)
        wav, _ = say(words, rng)
        sf.write(root / "wav" / f"s{i:02d}.wav", wav, 16000)
        refs[f"s{i:02d}"] = " ".join(words)
    return ckpt, root / "wav", refs, lang


def _transcribe(tone, tmp_path, device, dtype):
    from test_transcribe import read_text, run_cli

    ckpt, wavs, _, _ = tone
    out = tmp_path / f"{device}-{dtype}"
    assert run_cli(["--checkpoint", ckpt, "--device", device, "--dtype", dtype, "--out-dir", out, wavs]) == 0
    return read_text(out / "text")


def _errors(hyps: dict[str, str], refs: dict[str, str]) -> int:
    import kaldialign

    assert hyps.keys() == refs.keys()
    return sum(sum(a != b for a, b in kaldialign.align(refs[k].split(), hyps[k].split(), "*")) for k in refs)


def test_transcribe_on_cuda_matches_cpu(tone, tmp_path):
    _, _, refs, _ = tone
    cpu = _transcribe(tone, tmp_path, "cpu", "float32")
    assert _errors(cpu, refs) <= 0.1 * sum(len(r.split()) for r in refs.values())  # the model learnt
    assert _transcribe(tone, tmp_path, "cuda", "float32") == cpu
    assert _errors(_transcribe(tone, tmp_path, "cuda", "bfloat16"), refs) <= _errors(cpu, refs) + 2


def test_decode_on_cuda_matches_cpu(tone, tmp_path):
    """`toolkit decode` (greedy and HLG) on lhotse cuts: CUDA float32 gives the CPU's hypotheses;
    bfloat16 (also what auto picks on CUDA) no more than two more word errors."""
    from lhotse import CutSet, Recording, SupervisionSegment

    from toolkit.cli import main
    from toolkit.lm.graph import compile_graphs
    from toolkit.score.report import read_recogs

    ckpt, wavs, refs, lang = tone
    cuts = []
    for k in sorted(refs):
        rec = Recording.from_file(wavs / f"{k}.wav", recording_id=k)
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(k, k, 0.0, rec.duration, text=refs[k], language="xx")]
        cuts.append(cut)
    manifest = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(manifest)
    compile_graphs(lang, lang / "lm.arpa")
    hyps = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16"), ("cuda", "auto")):
        out = tmp_path / f"decode-{device}-{dtype}"
        assert main(["decode", "--checkpoint", str(ckpt), "--cuts", str(manifest), "--lang-dir", str(lang),
                     "--methods", "greedy,hlg", "--device", device, "--dtype", dtype, "--out-dir", str(out)]) == 0
        hyps[device, dtype] = {m: read_recogs(out / m / "recogs.txt")[1] for m in ("greedy", "hlg")}
    for m in ("greedy", "hlg"):
        assert hyps["cuda", "float32"][m] == hyps["cpu", "float32"][m], m
        for dtype in ("bfloat16", "auto"):
            assert _errors(hyps["cuda", dtype][m], refs) <= _errors(hyps["cpu", "float32"][m], refs) + 2, (m, dtype)
