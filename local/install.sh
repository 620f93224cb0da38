#!/usr/bin/env bash
# Installs what is missing, and nothing else: the system packages of the programs the toolkit
# runs (toolkit/external.py: espeak-ng, sox, ffmpeg, ...) when root, the virtual environment
# .venv with the pinned stack of requirements.txt, this package in editable mode, and KenLM's
# lmplz (local/build_kenlm.sh, cached outside the work tree). Ends by checking that every
# program of toolkit/external.py is on PATH. Idempotent: a stamp keyed on requirements.txt and
# setup.py makes a second run take seconds. Usage: local/install.sh [--force true]
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

force=false
help_message="Usage: local/install.sh [--force true]
  Creates .venv with the pinned stack (requirements.txt), installs the programs the toolkit
  runs (espeak-ng, sox, ffmpeg, wget with apt when root; KenLM's lmplz built from source) and
  installs the toolkit in editable mode.
  --force true   reinstall even when the stamp says the environment is current"
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
if [ ! -x "$venv/bin/lmplz" ] && command -v dpkg-query >/dev/null 2>&1; then
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

step="KenLM lmplz (local/build_kenlm.sh)"
if [ "$force" = true ] || [ ! -x "$venv/bin/lmplz" ]; then
  local/build_kenlm.sh --bin-dir "$venv/bin"
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
