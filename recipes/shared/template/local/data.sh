#!/usr/bin/env bash
# FILE TO EDIT 2 of 2: how the corpus gets onto disk and into manifests.
# Contract: leave data/manifests/<prefix>_cuts_{<train_split>,<dev_split>,<test_splits>}.jsonl.gz
# (Lhotse cuts with normalised text, written by `toolkit prepare`). Run from the work dir.
#   local/data.sh CORPUS LANGUAGE CORPUS_DIR SYNTHETIC SYNTH_MINUTES
set -euo pipefail
corpus=$1 language=$2 corpus_dir=$3 synthetic=$4 synth_minutes=$5

if [ "$synthetic" = true ]; then
  # espeak-ng speech in the corpus' own layout, so the real preparation path is exercised.
  [ -f "$corpus_dir/.done" ] || {
    toolkit synth-corpus --format "$corpus" --languages "$language" --minutes-per-language "$synth_minutes" \
      --speakers 6 --out "$corpus_dir"
    date > "$corpus_dir/.done"; }
elif [ ! -e "$corpus_dir" ]; then
  case "$corpus" in
    librispeech) lhotse download librispeech --full "$corpus_dir" ;;
    commonvoice) lhotse download commonvoice --languages "$language" "$corpus_dir" ;;
    *) echo "local/data.sh: no download rule for corpus '$corpus': fetch it by hand into $corpus_dir" >&2; exit 1 ;;
  esac
fi
toolkit prepare "$corpus" --corpus-dir "$corpus_dir" --languages "$language" --language "$language" --out data/manifests
