#!/usr/bin/env python
"""One wav2vec 2.0 pretraining step: toolkit vs Hugging Face `Wav2Vec2ForPreTraining`.

Both models get the same configuration (the toolkit preset converted with `convert.to_hf`), the
same batch (B utterances x S seconds of noise, no padding, as fairseq crops pretraining batches)
and a complete step: span masking, negative sampling, forward, backward, AdamW. HF uses its own
numpy mask/negative samplers and SDPA attention, as its example pretraining script does.

Measurements (each implementation runs in its own subprocess, alternating, so one's allocator
state or cache cannot help the other):
- step time: median over the timed steps of the process CPU time (`time.process_time`, all
  threads). On a shared machine CPU time measures the work done, unlike wall time which depends
  on the other tenants; wall-clock medians are printed as well.
- peak memory: the process's peak resident set size during the steps (`ru_maxrss`) minus its
  resident size just before the first step (model and optimizer built). glibc returns large
  blocks to the OS when freed, so this tracks the live activation + gradient + optimizer-state
  high-water mark. Ratios are toolkit / HF (< 1: toolkit uses less).

On a GPU (`--device cuda`, optionally `--amp bf16`: both models under the same autocast) the step
time is the wall time between CUDA synchronisations, and peak memory is the CUDA allocator's peak
during the steps minus what it held before the first step. The toolkit's step is also counted in
FLOPs (torch.utils.flop_counter, forward + backward) to give its achieved TFLOP/s.

Prints one line per preset, then `RESULT step_speedup_vs_hf_<preset>=<HF time / toolkit time>`
and `RESULT peak_mem_ratio_vs_hf_<preset>=<toolkit / HF>` (with a `_cuda` / `_cuda_bf16` suffix on
a GPU), and on a GPU `RESULT tflops_<preset>_cuda[_bf16]=<toolkit's achieved TFLOP/s>`.

    .venv/bin/python bench/model_step.py [--presets tiny,base] [--device cuda --amp bf16 --batch 8]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def worker(impl: str, preset: str, steps: int, batch: int, seconds: float, threads: int,
           device: str = "cpu", amp: str = "none") -> dict:
    import contextlib

    import torch

    from toolkit.model import Wav2Vec2ForPretraining, get_preset
    from toolkit.model.convert import to_hf

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = get_preset(preset)
    cuda = device.startswith("cuda")
    wav = torch.randn(batch, int(seconds * 16000), generator=torch.Generator().manual_seed(1)).to(device)
    if impl == "toolkit":
        model = Wav2Vec2ForPretraining(cfg).to(device).train()

        def loss_fn(step: int):
            model.set_num_updates(step)
            out = model(wav)
            return out.loss / out.sample_size
    else:
        import numpy as np
        import transformers
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        hf_dict, _ = to_hf(cfg, {})
        hf_cfg = transformers.Wav2Vec2Config(**hf_dict, attn_implementation="sdpa")
        model = transformers.Wav2Vec2ForPreTraining(hf_cfg).to(device).train()
        np.random.seed(0)
        max_temp, min_temp, decay = cfg.latent_temp

        def loss_fn(step: int):
            model.set_gumbel_temperature(max(max_temp * decay ** step, min_temp))
            frames = int(model._get_feat_extract_output_lengths(wav.shape[1]))
            mask = _compute_mask_indices((batch, frames), cfg.mask_prob, cfg.mask_length, min_masks=cfg.mask_min_masks)
            neg = _sample_negative_indices((batch, frames), cfg.num_negatives, mask)
            mask_t = torch.from_numpy(mask).to(device)
            out = model(wav, mask_time_indices=mask_t, sampled_negative_indices=torch.from_numpy(neg).to(device))
            return out.loss / mask_t.sum()

    autocast = (torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if amp == "bf16"
                else contextlib.nullcontext())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step_once(step: int) -> torch.Tensor:
        with autocast:
            loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    rss0 = rss_kib()
    if cuda:
        torch.cuda.synchronize()
        mem0 = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    cpu_times, wall_times = [], []
    for step in range(steps + 1):  # the first step warms up (allocations, Adam state)
        c0, w0 = time.process_time(), time.perf_counter()
        loss = step_once(step)
        if cuda:
            torch.cuda.synchronize()
        if step:
            cpu_times.append(time.process_time() - c0)
            wall_times.append(time.perf_counter() - w0)
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated() - mem0) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024.0
    flops = 0
    if cuda and impl == "toolkit":  # one more step, counted (not timed)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step_once(steps + 1)
        flops = counter.get_total_flops()
    return {"cpu": cpu_times, "wall": wall_times, "peak_mib": peak_mib, "flops": flops,
            "params": sum(p.numel() for p in model.parameters()), "loss": float(loss)}


def run_worker(impl: str, args: argparse.Namespace, preset: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--presets", preset, "--steps", str(args.steps),
           "--batch", str(args.batch), "--seconds", str(args.seconds), "--threads", str(args.threads),
           "--device", args.device, "--amp", args.amp]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{impl} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,base")
    p.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=2, help="alternating toolkit/HF runs per preset")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", default="none", choices=("none", "bf16"), help="autocast both models' steps (GPU)")
    p.add_argument("--worker", choices=["toolkit", "hf"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.presets, args.steps, args.batch, args.seconds, args.threads,
                                args.device, args.amp)))
        return
    cuda = args.device.startswith("cuda")
    suffix = ("_cuda" if cuda else "") + ("_bf16" if args.amp == "bf16" else "")
    results = {}
    for preset in args.presets.split(","):
        runs: dict[str, list[dict]] = {"toolkit": [], "hf": []}
        for r in range(args.rounds):
            for impl in (("toolkit", "hf") if r % 2 == 0 else ("hf", "toolkit")):
                runs[impl].append(run_worker(impl, args, preset))
        # CPU time measures the work on a shared CPU; on a GPU the wall time between synchronisations is the step
        med = {i: statistics.median([t for run in runs[i] for t in run["wall" if cuda else "cpu"]]) for i in runs}
        wall = {i: statistics.median([t for run in runs[i] for t in run["wall"]]) for i in runs}
        mem = {i: statistics.median([run["peak_mib"] for run in runs[i]]) for i in runs}
        audio = args.batch * args.seconds
        tflops = runs["toolkit"][0]["flops"] / med["toolkit"] / 1e12
        clock = "wall" if cuda else "cpu"
        print(f"{preset} ({args.device}{', bf16' if args.amp == 'bf16' else ''}, batch {args.batch} x {args.seconds:g} s): "
              f"params toolkit {runs['toolkit'][0]['params']:,} hf {runs['hf'][0]['params']:,} | "
              f"{clock} s/step toolkit {med['toolkit']:.4f} hf {med['hf']:.4f} "
              f"(toolkit {audio / med['toolkit']:.1f} audio-s per {clock}-s) | wall s/step toolkit {wall['toolkit']:.4f} "
              f"hf {wall['hf']:.4f} | peak MiB toolkit {mem['toolkit']:.0f} hf {mem['hf']:.0f}"
              + (f" | toolkit {tflops:.1f} TFLOP/s" if cuda else ""), flush=True)
        results[preset] = (med["hf"] / med["toolkit"], mem["toolkit"] / mem["hf"], tflops)
    for preset, (speed, mem_ratio, tflops) in results.items():
        print(f"RESULT step_speedup_vs_hf_{preset}{suffix}={speed:.3f}")
        print(f"RESULT peak_mem_ratio_vs_hf_{preset}{suffix}={mem_ratio:.3f}")
        if cuda:
            print(f"RESULT tflops_{preset}{suffix}={tflops:.2f}")


if __name__ == "__main__":
    main()
