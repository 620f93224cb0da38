"""Benchmark: `toolkit lm train` with KenLM's lmplz vs the toolkit's own Kneser-Ney estimator.

Both engines estimate the same model (a 3-gram, modified Kneser-Ney; tests/test_lm.py checks that
every n-gram agrees within 1e-4) from the same generated text of 1M and 10M words: sentences of a
Zipf-distributed 50k-word vocabulary in which each word prefers a few successors, so the n-gram
counts grow like a real text's. Each run is `python -m toolkit.cli lm train --engine E` in its own
process, end to end (normalising the text, estimating, writing and validating the ARPA); the time is
its wall time, the memory the peak resident set of the process and its children (lmplz), from
wait4. lmplz gets `--memory 2G` for its sort buffers (the default is 20% of RAM).

Prints per size and engine `RESULT lm_words_per_s_<engine>_<size>=` and `RESULT lm_peak_mib_<engine>_<size>=`,
the largest size also as `RESULT lm_words_per_s_lmplz=` / `..._builtin=` / `lm_peak_mib_...`, and
for the smallest size the largest difference between the two models' n-grams
(`RESULT lm_max_abs_diff_log10_1m=`). Usage:

    .venv/bin/python bench/lm.py [--sizes 1000000 10000000] [--order 3] [--work-dir /tmp/bench_lm]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def size_name(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


def generate_text(path: Path, n_words: int, vocab: int = 50_000, seed: int = 0) -> None:
    """Sentences of 4-20 words; 70% of the time a word is followed by one of its 8 favourite successors."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(int(vocab * 1.2))})[:vocab]
    words = np.array(words)
    zipf = 1.0 / np.arange(1, vocab + 1)
    zipf /= zipf.sum()
    successors = rng.choice(vocab, size=(vocab, 8), p=zipf)
    free = rng.choice(vocab, size=n_words, p=zipf)
    follow = rng.random(n_words) < 0.7
    pick = rng.integers(0, 8, size=n_words)
    ids = np.empty(n_words, dtype=np.int64)
    ids[0] = free[0]
    for i in range(1, n_words):  # a Markov chain: sequential by nature
        ids[i] = successors[ids[i - 1], pick[i]] if follow[i] else free[i]
    lengths = rng.integers(4, 21, size=n_words // 4 + 1)
    ends = np.cumsum(lengths)
    ends = ends[ends < n_words].tolist() + [n_words]
    with open(path, "w", encoding="utf-8") as f:
        start = 0
        for end in ends:
            f.write(" ".join(words[ids[start:end]]) + "\n")
            start = end


def run_engine_measured(engine: str, text: Path, out: Path, order: int) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the process and its children) of one `toolkit lm train`, reaped
    with wait4, which reports the largest resident set among the process and its waited-for children."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "toolkit.cli", "lm", "train", "--order", str(order), "--text", str(text),
           "--out", str(out), "--engine", engine, "--memory", "2G"]
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as err:
        pid = os.posix_spawn(sys.executable, cmd, env, file_actions=[(os.POSIX_SPAWN_DUP2, err.fileno(), 2),
                                                                      (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
        _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["no message"]
        raise SystemExit(f"bench/lm.py: --engine {engine} failed: {tail[0]} (log {log})")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def max_abs_diff(a_path: Path, b_path: Path) -> float:
    from toolkit.lm.arpa import BOS, read_arpa

    a, b = read_arpa(a_path), read_arpa(b_path)
    if [t.keys() for t in a.ngrams] != [t.keys() for t in b.ngrams]:
        return float("inf")
    worst = 0.0
    for ta, tb in zip(a.ngrams, b.ngrams):
        for g, (p, w) in ta.items():
            q, v = tb[g]
            worst = max(worst, abs(w - v), 0.0 if g == (BOS,) else abs(p - q))
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="words of generated text")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_lm"))
    args = ap.parse_args()
    if shutil.which("lmplz", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}") is None:
        raise SystemExit("bench/lm.py: lmplz not found; run local/install.sh")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for n in args.sizes:
        text = args.work_dir / f"text_{size_name(n)}.txt"
        if not text.is_file():
            t0 = time.perf_counter()
            generate_text(text, n)
            print(f"generated {text} ({n} words) in {time.perf_counter() - t0:.0f} s", flush=True)
        for engine in ("lmplz", "toolkit"):
            wall, peak = run_engine_measured(engine, text, args.work_dir / f"{engine}_{size_name(n)}.arpa", args.order)
            results[(engine, n)] = (wall, peak)
            print(f"{size_name(n)} words, {engine}: {wall:.1f} s, {n / wall:,.0f} words/s, peak {peak:,.0f} MiB", flush=True)
    for n in args.sizes:
        for engine, name in (("lmplz", "lmplz"), ("toolkit", "builtin")):
            wall, peak = results[(engine, n)]
            print(f"RESULT lm_words_per_s_{name}_{size_name(n)}={n / wall:.0f}")
            print(f"RESULT lm_peak_mib_{name}_{size_name(n)}={peak:.0f}")
    big = max(args.sizes)
    for engine, name in (("lmplz", "lmplz"), ("toolkit", "builtin")):
        wall, peak = results[(engine, big)]
        print(f"RESULT lm_words_per_s_{name}={big / wall:.0f}")
        print(f"RESULT lm_peak_mib_{name}={peak:.0f}")
    small = min(args.sizes)
    diff = max_abs_diff(args.work_dir / f"lmplz_{size_name(small)}.arpa", args.work_dir / f"toolkit_{size_name(small)}.arpa")
    print(f"RESULT lm_max_abs_diff_log10_{size_name(small)}={diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
