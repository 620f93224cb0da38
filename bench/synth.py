"""Benchmark: how fast `toolkit synth-corpus` makes audio, in audio-minutes per wall-minute and per CPU-minute.

Runs the whole command (`python -m toolkit.cli synth-corpus`: sentence pool, planning,
espeak-ng, sox/ffmpeg, metadata, LM files) once per format on the same workload, each in a fresh
output folder, and measures

* wall time of the command,
* CPU time of the command and every process it starts (user + sys of the children, from
  `resource.getrusage(RUSAGE_CHILDREN)`): unlike wall time, this barely moves when other jobs
  share the machine,
* audio minutes actually written (every .flac/.mp3 of the tree, read by soundfile).

The reference is real time (a rate of 10 means ten minutes of audio per minute). To compare two
versions of the toolkit on the same machine, run it on each source tree in turn
(`--src DIR` puts DIR first on PYTHONPATH, e.g. a `git archive` of an older commit) and
compare the CPU-minute rates. Usage:

    .venv/bin/python bench/synth.py [--work-dir /tmp/bench_synth] [--languages en,de,fr,es,ru,it]
                                    [--minutes 2] [--nj 2] [--formats commonvoice,librispeech] [--src DIR]

Ends with `RESULT synth_<format>_audio_min_per_wall_min=`, `..._per_cpu_min=`, `..._wall_s=` lines.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def run_once(fmt: str, out: Path, args: argparse.Namespace) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The source tree first on the path; the command runs in the output's parent, so that
    # `python -m` (which puts the working directory first) cannot import another tree.
    src = Path(args.src).resolve() if args.src else ROOT
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "toolkit.cli", "synth-corpus", "--format", fmt, "--languages", args.languages,
           "--minutes-per-language", str(args.minutes), "--nj", str(args.nj), "--out", str(out)]
    if fmt == "librispeech":
        cmd += ["--subset-scale", "0.01"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bench/synth.py: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    suffix = ".flac" if fmt == "librispeech" else ".mp3"
    seen = set()
    audio = 0.0
    for path in out.rglob(f"*{suffix}"):
        inode = path.stat().st_ino  # Libri-light folds are hard links to train files: count once
        if inode not in seen:
            seen.add(inode)
            audio += sf.info(str(path)).duration
    import_check = subprocess.run([sys.executable, "-c", "import toolkit; print(toolkit.__file__)"], env=env,
                                  capture_output=True, text=True, cwd=out.parent).stdout.strip()
    return {"wall": wall, "cpu": cpu, "audio_min": audio / 60.0, "last_line": proc.stdout.strip().splitlines()[-1],
            "toolkit": str(Path(import_check).parent)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_synth"))
    parser.add_argument("--languages", default="en,de,fr,es,ru,it")
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes per language")
    parser.add_argument("--nj", type=int, default=2)
    parser.add_argument("--formats", default="commonvoice,librispeech")
    parser.add_argument("--src", default=None, help="a toolkit source tree to run instead of this one")
    args = parser.parse_args()
    results = {}
    for fmt in args.formats.split(","):
        r = run_once(fmt, args.work_dir / fmt, args)
        results[fmt] = r
        print(f"{fmt} ({r['toolkit']}): {r['audio_min']:.2f} audio-min, wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s "
              f"(command: {r['last_line']})", flush=True)
    for fmt, r in results.items():
        print(f"RESULT synth_{fmt}_audio_min_per_wall_min={r['audio_min'] / (r['wall'] / 60):.1f}")
        print(f"RESULT synth_{fmt}_audio_min_per_cpu_min={r['audio_min'] / (r['cpu'] / 60):.1f}")
        print(f"RESULT synth_{fmt}_wall_s={r['wall']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
