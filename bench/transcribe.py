"""Benchmark: `toolkit transcribe` vs the Hugging Face ASR pipeline on a 10-minute recording.

The same fine-tuned model for both, exported with `toolkit export --to hf` for the pipeline:
- `--model default`: the embedded default's (`./run.sh` writes
  exp/default/exp/finetune_tiny_it_char_pretrained/best.pt); the recording is the Italian test
  (then dev) utterances of that run, one after another with 0.3 s of silence between, cycled until
  it lasts `--minutes`; the reference is their texts in that order.
- `--model tone` (what `auto` picks when the embedded default has not been run): a model of the
  tiny preset's architecture trained here, from scratch, on synthetic tone "speech" (tests/
  tone_speech.py: each letter a tone, words separated by silences; `--tone-steps` updates); the
  recording is such sentences until it lasts `--minutes`.
Each system runs in its own process (2 threads each), `--repeats` times (the run with the median
CPU time counts), one after the other on the same machine in the same run:

- ours: `toolkit transcribe --checkpoint CKPT REC.wav` (greedy, its default windows unless
  `--chunk-s` / `--context-s` say otherwise), timed from the call to the written text (checkpoint
  load and audio reading included);
- HF: `pipeline("automatic-speech-recognition", model=EXPORTED)` called on the file with
  `chunk_length_s=30` and its default stride (chunk/6 = 5 s each side), timed from the call on the
  file to the text; again with `chunk_length_s` equal to our window (its default stride), and with
  exactly our windows (`stride_length_s` = our context);
- unchunked: the toolkit model over the whole recording in one forward (no windows), greedy.

Then `toolkit transcribe` again on a 60-minute recording (the 10-minute one six times) for peak
memory (each process's peak RSS). RESULT lines:

    RESULT transcribe_speedup_vs_hf_pipeline=<HF CPU s (chunk 30 s) / ours>   (target >= 1.5 on CPU)
    RESULT transcribe_speedup_vs_hf_pipeline_same_chunk=<...>         (HF with our window length)
    RESULT transcribe_speedup_vs_hf_pipeline_same_windows=<...>       (HF with exactly our windows)
    RESULT transcribe_wer_diff_vs_unchunked=<WER chunked - WER unchunked, points>  (target <= 0.5)
    RESULT transcribe_peak_mem_ratio_60min_vs_10min=<peak RSS 60 min / 10 min>   (target <= 1.2)

Speed is compared on process CPU time (user + system of each child), which other jobs on a shared
machine do not inflate; wall times are printed too.

Usage: .venv/bin/python bench/transcribe.py [--model auto|default|tone] [--default-dir exp/default]
       [--minutes 10] [--work-dir exp/bench_transcribe] [--threads 2] [--tone-steps 300] [--repeats 3]
       [--chunk-s S] [--context-s S]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SR = 16000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="auto", choices=("auto", "default", "tone"))
    p.add_argument("--tone-steps", type=int, default=300, help="training updates of the tone model")
    p.add_argument("--default-dir", default=str(ROOT / "exp" / "default"), help="work dir of ./run.sh")
    p.add_argument("--checkpoint", default=None, help="default: <default-dir>/exp/finetune_tiny_it_char_pretrained/best.pt")
    p.add_argument("--manifests", nargs="*", default=None,
                   help="cut manifests whose audio and texts make the recording (default: the run's Italian test, dev)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--long-factor", type=int, default=6, help="the long recording is this many copies (60 min)")
    p.add_argument("--work-dir", default=str(ROOT / "exp" / "bench_transcribe"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each 10-minute system; the run with the median CPU time is reported")
    p.add_argument("--chunk-s", type=float, default=None, help="ours: --chunk-s (default: toolkit transcribe's)")
    p.add_argument("--context-s", type=float, default=None, help="ours: --context-s (default: toolkit transcribe's)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--args", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


# ------------------------------------------------------------------------------------------ children

def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(kind: str, a: dict) -> dict:
    import torch

    torch.set_num_threads(a["threads"])
    if kind == "ours":
        from toolkit.cli import main

        t0, c0 = time.perf_counter(), cpu_seconds()
        rc = main(["transcribe", "--no-progress", "--checkpoint", a["ckpt"], "--out-dir", a["out"], *a["chunk_args"],
                   a["wav"]])
        secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        if rc != 0:
            raise SystemExit(f"toolkit transcribe failed ({rc})")
        text = Path(a["out"], "text").read_text(encoding="utf-8").split(maxsplit=1)
        return {"seconds": secs, "cpu": cpu, "text": text[1].strip() if len(text) > 1 else "",
                "peak_mib": peak_rss_mib()}
    if kind == "hf":
        import transformers

        pipe = transformers.pipeline("automatic-speech-recognition", model=a["hf"], device="cpu")
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = pipe(a["wav"], chunk_length_s=a["chunk"], stride_length_s=a["stride"])
        secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        return {"seconds": secs, "cpu": cpu, "text": " ".join(out["text"].split()), "peak_mib": peak_rss_mib()}
    if kind == "unchunked":
        import soundfile as sf

        from toolkit.decode.greedy import greedy_decode
        from toolkit.model.checkpoint import build_model, config_of, load_checkpoint
        from toolkit.text.tokenizer import Tokenizer
        from toolkit.decode.chunking import ChunkOptions, chunked_log_probs

        ckpt = load_checkpoint(a["ckpt"])
        model = build_model(ckpt).eval()
        tok = Tokenizer.from_dict(ckpt["vocab"])
        wav = torch.from_numpy(sf.read(a["wav"], dtype="float32")[0])
        t0, c0 = time.perf_counter(), cpu_seconds()
        # one window over everything: the plain forward of the whole recording
        lp = chunked_log_probs(model, wav, ChunkOptions(chunk_s=wav.numel() / SR + 1, context_s=0.0),
                               normalize=bool(config_of(ckpt).normalize))
        text = greedy_decode(lp[None], None, tok)[0]
        return {"seconds": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "text": text,
                "peak_mib": peak_rss_mib()}
    raise SystemExit(f"unknown child {kind}")


def run_child(kind: str, repeats: int = 1, **a) -> dict:
    """Run one system `repeats` times, each in a fresh process; the run with the median CPU time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(a["threads"]), TOKENIZERS_PARALLELISM="false")
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, __file__, "--child", kind, "--args", json.dumps(a)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["cpu"])
    best = runs[len(runs) // 2]
    best["cpu_runs"] = [round(r["cpu"], 2) for r in runs]
    return best


# ------------------------------------------------------------------------------------------ parent

def build_recording(manifests: list[Path], minutes: float, out: Path) -> str:
    """Concatenate the cuts' audio (0.3 s apart) until `minutes`; returns the reference text."""
    import numpy as np
    import soundfile as sf

    from toolkit.data import read_cuts

    cuts = [c for m in manifests for c in read_cuts(m, "--manifests")]
    if not cuts:
        raise SystemExit("no cuts in the manifests")
    gap = np.zeros(int(0.3 * SR), np.float32)
    texts, total, i = [], 0, 0
    with sf.SoundFile(out, "w", samplerate=SR, channels=1, subtype="FLOAT") as f:
        while total < minutes * 60 * SR:
            cut = cuts[i % len(cuts)]
            audio = cut.resample(SR).load_audio().mean(axis=0).astype(np.float32)
            f.write(audio)
            f.write(gap)
            total += audio.size + gap.size
            texts.append(cut.supervisions[0].text)
            i += 1
    return " ".join(" ".join(texts).split())


def build_tone(work: Path, args, ckpt: Path, out: Path) -> str:
    """Train the tone model (tiny preset architecture) unless `ckpt` exists; write the tone recording."""
    import numpy as np
    import soundfile as sf
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from graph_fixtures import FOUR_WORDS, four_word_lang
    from tone_speech import random_sentence, say, train_tone_model

    from toolkit.model.checkpoint import save_checkpoint
    from toolkit.text.tokenizer import Tokenizer

    tok = Tokenizer.from_lang_dir(four_word_lang(work / "lang"))
    if not ckpt.is_file():
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        model, cfg = train_tone_model(tok, FOUR_WORDS, steps=args.tone_steps, narrow=False)
        save_checkpoint(ckpt, model, cfg, "ctc", vocab={**tok.to_dict(), "language": None})
        print(f"trained the tone model ({args.tone_steps} updates) in {time.perf_counter() - t0:.0f} s")
    rng = np.random.default_rng(2026)
    words: list[str] = []
    with sf.SoundFile(out, "w", samplerate=SR, channels=1, subtype="FLOAT") as f:
        total = 0
        while total < args.minutes * 60 * SR:
            sent = random_sentence(rng, FOUR_WORDS)
            wav, _ = say(sent, rng)
            f.write(wav)
            total += wav.size
            words += sent
    return " ".join(words)


def repeat_file(src: Path, times: int, out: Path) -> None:
    import soundfile as sf

    with sf.SoundFile(out, "w", samplerate=SR, channels=1, subtype="FLOAT") as f:
        for _ in range(times):
            with sf.SoundFile(src) as g:
                for block in g.blocks(blocksize=SR * 60, dtype="float32"):
                    f.write(block)


def wer(ref: str, hyp: str) -> float:
    import jiwer

    return 100.0 * jiwer.wer(ref, hyp)


def main() -> int:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.args))))
        return 0
    default = Path(args.default_dir)
    ckpt = Path(args.checkpoint or default / "exp" / "finetune_tiny_it_char_pretrained" / "best.pt")
    manifests = [Path(m) for m in (args.manifests or [default / "data" / "manifests" / f"cv-it_cuts_{s}.jsonl.gz"
                                                      for s in ("test", "dev")])]
    have_default = all(p.is_file() for p in [ckpt, *manifests])
    model = args.model if args.model != "auto" else ("default" if have_default else "tone")
    if model == "default" and not have_default:
        raise SystemExit(f"missing {ckpt} or {manifests}: run ./run.sh first (the embedded default, about 12 "
                         "minutes) or use --model tone")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rec10, rec60 = work / "rec10.wav", work / "rec60.wav"
    if model == "default":
        ref = build_recording(manifests, args.minutes, rec10)
    else:
        ckpt = work / "tone.pt"
        ref = build_tone(work, args, ckpt, rec10)
    print(f"model: {model} ({ckpt})")
    repeat_file(rec10, args.long_factor, rec60)
    import soundfile as sf

    minutes = sf.info(str(rec10)).duration / 60
    print(f"recording: {minutes:.2f} min ({len(ref.split())} words); long: {args.long_factor}x")
    hf_dir = work / "hf"
    from toolkit.cli import main as toolkit

    if toolkit(["export", "--checkpoint", str(ckpt), "--to", "hf", "--force", str(hf_dir)]) != 0:
        raise SystemExit("toolkit export failed")
    from toolkit.decode.chunking import ChunkOptions

    chunk_s = args.chunk_s if args.chunk_s is not None else ChunkOptions.chunk_s
    context_s = args.context_s if args.context_s is not None else ChunkOptions.context_s
    common = {"ckpt": str(ckpt), "threads": args.threads, "hf": str(hf_dir),
              "chunk_args": ["--chunk-s", str(chunk_s), "--context-s", str(context_s)]}
    n = args.repeats
    ours = run_child("ours", n, wav=str(rec10), out=str(work / "out10"), **common)
    hf = run_child("hf", n, wav=str(rec10), chunk=30.0, stride=None, **common)
    hf_same_chunk = run_child("hf", n, wav=str(rec10), chunk=chunk_s, stride=None, **common)
    hf_same = run_child("hf", n, wav=str(rec10), chunk=chunk_s, stride=context_s, **common)
    whole = run_child("unchunked", wav=str(rec10), **common)
    long = run_child("ours", wav=str(rec60), out=str(work / "out60"), **common)
    audio_s = minutes * 60
    rows = [(f"toolkit transcribe ({chunk_s:g} s windows, {context_s:g} s context each side)", ours),
            ("HF pipeline chunk_length_s=30 (its default stride, 5 s each side)", hf),
            (f"HF pipeline chunk_length_s={chunk_s:g} (its default stride, {chunk_s / 6:.2f} s each side)",
             hf_same_chunk),
            (f"HF pipeline chunk_length_s={chunk_s:g}, stride_length_s={context_s:g} (our windows)", hf_same),
            ("unchunked forward (one window)", whole)]
    for name, r in rows:
        print(f"{name}: {r['cpu']:.1f} CPU s (runs: {r['cpu_runs']}), {r['seconds']:.1f} s wall (RTF {r['seconds'] / audio_s:.4f}), "
              f"WER {wer(ref, r['text']):.2f}%, peak RSS {r['peak_mib']:.0f} MiB")
    print(f"wall-time speedup vs HF: {hf['seconds'] / ours['seconds']:.3f} (chunk 30 s), "
          f"{hf_same_chunk['seconds'] / ours['seconds']:.3f} (chunk {chunk_s:g} s), "
          f"{hf_same['seconds'] / ours['seconds']:.3f} (our windows)")
    print(f"toolkit transcribe, {minutes * args.long_factor:.0f} min: {long['seconds']:.1f} s, peak RSS "
          f"{long['peak_mib']:.0f} MiB; transcript equals the 10-minute one x{args.long_factor}: "
          f"{long['text'] == ' '.join([ours['text']] * args.long_factor)}")
    print(f"transcripts: ours == HF (stride 5 s): {ours['text'] == hf['text']}; ours == unchunked: "
          f"{ours['text'] == whole['text']}")
    print(f"RESULT transcribe_speedup_vs_hf_pipeline={hf['cpu'] / ours['cpu']:.3f}")
    print(f"RESULT transcribe_speedup_vs_hf_pipeline_same_chunk={hf_same_chunk['cpu'] / ours['cpu']:.3f}")
    print(f"RESULT transcribe_speedup_vs_hf_pipeline_same_windows={hf_same['cpu'] / ours['cpu']:.3f}")
    print(f"RESULT transcribe_wer_diff_vs_unchunked={wer(ref, ours['text']) - wer(ref, whole['text']):.3f}")
    print(f"RESULT transcribe_peak_mem_ratio_60min_vs_10min={long['peak_mib'] / ours['peak_mib']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
