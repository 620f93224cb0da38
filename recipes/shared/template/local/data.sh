#!/usr/bin/env bash
# FILE TO EDIT 2 of 2: how the corpus gets onto disk and into manifests.
# Contract: leave data/manifests/<prefix>_cuts_{<train_split>,<dev_split>,<test_splits>}.jsonl.gz
# (Lhotse cuts with normalised text, written by `toolkit prepare`). Run from the work dir.
#   local/data.sh CORPUS LANGUAGE CORPUS_DIR SYNTHETIC SYNTH_MINUTES PREFIX LHOTSE_RECIPE
set -euo pipefail
corpus=$1 language=$2 corpus_dir=$3 synthetic=$4 synth_minutes=$5 prefix=$6 lhotse_recipe=${7:-}

if [ "$corpus" = lhotse ]; then
  # Any corpus lhotse has a recipe for: its downloader (where it has one), its prepare_<recipe>,
  # then the toolkit's normalisation and validation (toolkit prepare lhotse).
  [ "$synthetic" = true ] && { echo "local/data.sh: --synthetic true makes LibriSpeech or Common Voice layouts only;" \
    "for '$lhotse_recipe' use the real corpus (--corpus-dir)" >&2; exit 1; }
  [ -e "$corpus_dir" ] || lhotse download "$lhotse_recipe" "$corpus_dir" || {
    echo "local/data.sh: could not download '$lhotse_recipe'; fetch it by hand and pass --corpus-dir DIR" >&2; exit 1; }
  toolkit prepare lhotse --recipe "$lhotse_recipe" --language "$language" --prefix "$prefix" \
    --corpus-dir "$corpus_dir" --out data/manifests
  exit 0
fi

if [ "$synthetic" = true ]; then
  # espeak-ng speech in the corpus' own layout, so the real preparation path is exercised
  # (synth-corpus resumes: files already synthesised are reused).
  toolkit synth-corpus --format "$corpus" --languages "$language" --minutes-per-language "$synth_minutes" \
    --speakers 6 --out "$corpus_dir"
elif [ ! -e "$corpus_dir" ]; then
  case "$corpus" in
    librispeech) lhotse download librispeech --full "$corpus_dir" ;;
    commonvoice) lhotse download commonvoice --languages "$language" "$corpus_dir" ;;
    *) echo "local/data.sh: no download rule for corpus '$corpus': fetch it by hand into $corpus_dir" >&2; exit 1 ;;
  esac
fi
toolkit prepare "$corpus" --corpus-dir "$corpus_dir" --languages "$language" --language "$language" --out data/manifests
