#!/usr/bin/env bash
# The GPU checks and benchmarks in one run, for a machine with a CUDA device:
#   1. tests/test_gpu.py: the model core on CUDA against CPU and Hugging Face, bf16 steps, the
#      training engine (amp none/bf16/fp16, resume), transcribe and decode on CUDA;
#   2. bench/model_step.py on CUDA, float32 and bf16: step time and peak memory against Hugging
#      Face's Wav2Vec2ForPreTraining, and the toolkit's achieved TFLOP/s;
#   3. bench/train_throughput.py on CUDA with bf16: pretraining and CTC audio-s/s against HF;
#   4. with --fsdd DIR: recipes/fsdd/run.sh from scratch on the GPU (training on CUDA, decoding
#      with the CUDA default, bfloat16), its WER against the CPU figure in bench/RESULTS.md.
# Each part runs under its own time limit and the others go on if one fails; the logs and every
# RESULT line land in --out (default exp/gpu). Record the numbers in bench/RESULTS.md with the GPU
# named (the first lines of gpu.log name it).
#
# --budget SECONDS caps the whole run: each part's limit is cut to what is left of it.
#
#   bench/gpu.sh [--out DIR] [--presets tiny,base,large] [--fsdd DIR] [--fsdd-limit SECONDS] [--budget SECONDS]
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/exp/gpu
presets=tiny,base,large
fsdd=
fsdd_limit=420
budget=
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --presets) presets=$2; shift 2 ;;
    --fsdd) fsdd=$2; shift 2 ;;
    --fsdd-limit) fsdd_limit=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | cut -c3-; exit 0 ;;
    *) echo "$0: unknown option $1 (see --help)" >&2; exit 1 ;;
  esac
done
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
export PYTHONUNBUFFERED=1
log=$out/gpu.log
failed=()

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log it, remember a failure
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  if [ -n "$budget" ]; then
    local left=$((budget - SECONDS - 5))
    [ $left -lt $limit ] && limit=$left
    if [ $limit -lt 30 ]; then
      echo "=== $name: skipped, ${left}s of the --budget left" | tee -a "$log"; failed+=("$name"); return
    fi
  fi
  echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log" >>"$log"
  rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$log"
  [ $rc -eq 0 ] || { failed+=("$name"); tail -n 30 "$out/$name.log"; }
}

: >"$log"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
  "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")'; } | tee -a "$log"
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  { echo "$0: no CUDA device visible to $py; nothing to measure" | tee -a "$log" >&2; exit 1; }

part tests 300 "$py" -m pytest -q -p no:cacheprovider -o addopts= tests/test_gpu.py -rs
for amp in none bf16; do
  part "model_step_$amp" 300 "$py" bench/model_step.py --device cuda --amp "$amp" --presets "$presets" \
    --batch 8 --seconds 4 --steps 5 --rounds 1
done
part train_throughput 300 "$py" bench/train_throughput.py --device cuda --amp bf16 --presets "$presets" --steps 5

if [ -n "$fsdd" ]; then
  command -v toolkit >/dev/null || [ -x "$root/.venv/bin/toolkit" ] ||
    { echo "$0: --fsdd needs the toolkit command (local/install.sh)" >&2; exit 1; }
  part fsdd "$fsdd_limit" recipes/fsdd/run.sh --corpus-dir "$fsdd" --work-dir "$out/fsdd" --nj 8
  [ -f "$out/fsdd/RESULTS.md" ] && cp "$out/fsdd/RESULTS.md" "$out/fsdd_RESULTS.md"
fi

echo "--- RESULT lines" | tee -a "$log"
grep -h '^RESULT ' "$out"/*.log | sort -u >"$out/results.txt"
cat "$out/results.txt" | tee -a "$log"
[ ${#failed[@]} -eq 0 ] || { echo "$0: failed: ${failed[*]} (logs in $out)" | tee -a "$log" >&2; exit 1; }
