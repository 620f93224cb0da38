#!/usr/bin/env bash
# Installs what is missing, and nothing else: system packages (espeak-ng, ffmpeg) when root,
# the virtual environment .venv with the pinned stack of requirements.txt, and this package
# in editable mode. Idempotent: a stamp keyed on requirements.txt and setup.py makes a second
# run take seconds. Usage: local/install.sh [--force true]
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

force=false
help_message="Usage: local/install.sh [--force true]
  Creates .venv with the pinned stack (requirements.txt), installs espeak-ng and ffmpeg
  with apt when running as root and missing, and installs the toolkit in editable mode.
  --force true   reinstall even when the stamp says the environment is current"
. local/parse_options.sh

venv=$top/.venv
stamp=$venv/.install-stamp
step=""
trap 'rc=$?; [ $rc -ne 0 ] && echo "install.sh: FAILED at step: $step (exit $rc); see the messages above" >&2' EXIT

log() { echo "[install] $*"; }

step="system packages (espeak-ng, ffmpeg)"
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install.sh: ${missing[*]} missing and not root: install them with your package manager (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

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

want=$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$force" != true ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  log "environment is current ($venv); nothing to do"
  trap - EXIT
  exit 0
fi

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
log "installing the pinned stack (torch, torchaudio, lhotse, k2-fsa CPU packages, ...); the first time downloads a few GB"
"$venv/bin/uv" pip install -q --python "$venv/bin/python" -r requirements.txt

step="toolkit package (editable)"
log "installing the toolkit package in editable mode"
"$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps -e .

step="import check"
"$venv/bin/python" -c 'import torch, torchaudio, lhotse, kaldifst, kaldi_decoder, kaldilm, kaldialign, sentencepiece, jiwer, toolkit' \
  || { echo "install.sh: the environment does not import; rerun with --force true" >&2; exit 1; }

echo "$want" > "$stamp"
log "done: activate with 'source .venv/bin/activate' or call .venv/bin/toolkit"
trap - EXIT
