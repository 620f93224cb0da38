#!/usr/bin/env bash
# Installs what is missing, and nothing else: the system packages of the programs the toolkit
# runs (toolkit/external.py: espeak-ng, sox, ffmpeg, ...) when root, the virtual environment
# .venv with the pinned stack of requirements.txt, this package in editable mode, and KenLM's
# lmplz (local/build_kenlm.sh, cached outside the work tree), and compiles the environment's
# bytecode once. Ends by checking that every program of toolkit/external.py is on PATH.
# Idempotent: a stamp keyed on requirements.txt and setup.py makes a second run take seconds. --with-k2 true also builds k2 for this torch
# (local/install_k2.sh, cached outside the work tree).
# Usage: local/install.sh [--force true] [--with-k2 true [--k2-opts "--cuda true ..."]]
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

force=false
with_k2=false
k2_opts=
help_message="Usage: local/install.sh [--force true] [--with-k2 true] [--k2-opts \"...\"]
  Creates .venv with the pinned stack (requirements.txt), installs the programs the toolkit
  runs (espeak-ng, sox, ffmpeg, wget with apt when root; KenLM's lmplz built from source) and
  installs the toolkit in editable mode.
  --force true     reinstall even when the stamp says the environment is current
  --with-k2 true   also build and install k2 for this torch (local/install_k2.sh; CPU unless
                   --k2-opts \"--cuda true\"); skipped when the venv's k2 already imports
  --k2-opts \"...\"  options for local/install_k2.sh (--cuda true, --cuda-arch, --source DIR, --ref REF)"
. local/parse_options.sh

venv=$top/.venv
stamp=$venv/.install-stamp
step=""
trap 'rc=$?; [ $rc -ne 0 ] && echo "install.sh: FAILED at step: $step (exit $rc); see the messages above" >&2' EXIT

log() { echo "[install] $*"; }

step="python interpreter"
python=${PYTHON:-}
if [ -z "$python" ]; then
  for p in python3.11 python3; do
    if command -v $p >/dev/null 2>&1 && $p -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
      python=$p; break
    fi
  done
fi
[ -n "$python" ] || { echo "install.sh: Python 3.11 not found; install it or set PYTHON=/path/to/python3.11" >&2; exit 1; }

# Every program the toolkit runs is listed in toolkit/external.py (program, then apt:<package> or
# build:<what>); a test keeps that list equal to what the code invokes.
step="system packages"
export PATH=$venv/bin:$PATH
programs=$($python toolkit/external.py)
apt_missing=()
while read -r prog how; do
  case "$how" in
    apt:*) command -v "$prog" >/dev/null 2>&1 || apt_missing+=("${how#apt:}") ;;
  esac
done <<< "$programs"
# Building KenLM's lmplz needs a compiler, CMake and Boost (only when lmplz is missing).
kenlm_build_deps=(g++ make cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev
                  libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
# Building k2 (--with-k2 true) needs the same compiler and CMake, git, and patchelf (RUNPATH).
[ "$with_k2" = true ] && kenlm_build_deps+=(git patchelf)
if { [ ! -x "$venv/bin/lmplz" ] || [ "$with_k2" = true ]; } && command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${kenlm_build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || apt_missing+=("$pkg")
  done
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${apt_missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  else
    echo "install.sh: ${apt_missing[*]} missing and not root: install them with your package manager (e.g. sudo apt-get install ${apt_missing[*]})" >&2
    exit 1
  fi
fi

want=$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$force" != true ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  log "Python environment is current ($venv)"
else
  step="virtual environment"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $($python --version)"
    $python -m venv "$venv"
  fi

  step="uv (fast installer)"
  if [ ! -x "$venv/bin/uv" ]; then
    log "installing uv into the venv"
    "$venv/bin/pip" install -q uv
  fi

  step="pinned Python stack (requirements.txt)"
  log "installing the pinned stack (torch, torchaudio, lhotse, kaldifst, ...); the first time downloads a few GB"
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" -r requirements.txt

  step="toolkit package (editable)"
  log "installing the toolkit package in editable mode"
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps -e .

  step="import check"
  "$venv/bin/python" -c 'import torch, torchaudio, lhotse, kaldifst, kaldi_decoder, kaldilm, kaldialign, sentencepiece, jiwer, toolkit' \
    || { echo "install.sh: the environment does not import; rerun with --force true" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

step="bytecode of the environment"
# uv installs no .pyc files (pip does), and where PYTHONDONTWRITEBYTECODE is set Python never writes
# them: every command then compiles torch's ~2,200 modules again, 5 s more per start (2.9 s vs
# 8.0 s for `import torch` on 2 cores; tests/test_errors.py 151 s -> 74 s). Compiled once here.
if [ "$force" = true ] || [ "$(cat "$venv/.bytecode-stamp" 2>/dev/null)" != "$want" ]; then
  log "compiling the environment's Python files once (faster start of every command)"
  "$venv/bin/python" -m compileall -q -j 0 "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" toolkit \
    >/dev/null 2>&1 || true  # a few test files of third-party packages do not compile: harmless
  echo "$want" > "$venv/.bytecode-stamp"
fi

step="KenLM lmplz (local/build_kenlm.sh)"
if [ "$force" = true ] || [ ! -x "$venv/bin/lmplz" ]; then
  local/build_kenlm.sh --bin-dir "$venv/bin"
fi

step="k2 (local/install_k2.sh)"
if [ "$with_k2" = true ]; then
  if [ "$force" != true ] && env -u PYTHONPATH "$venv/bin/python" -c 'import k2' >/dev/null 2>&1; then
    log "k2 imports in $venv; not rebuilt (local/install_k2.sh --force true rebuilds it)"
  else
    # shellcheck disable=SC2086  # k2_opts is a list of options
    local/install_k2.sh --venv "$venv" $k2_opts
  fi
fi

step="external programs on PATH"
absent=()
while read -r prog how; do
  command -v "$prog" >/dev/null 2>&1 || absent+=("$prog ($how)")
done <<< "$programs"
if [ ${#absent[@]} -gt 0 ]; then
  echo "install.sh: still missing after installation: ${absent[*]}; install them and rerun" >&2
  exit 1
fi
log "done: activate with 'source .venv/bin/activate' or call .venv/bin/toolkit"
trap - EXIT
