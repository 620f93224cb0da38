#!/usr/bin/env bash
# FILE TO EDIT 2 of 2: how the corpus gets onto disk and into manifests.
# Contract: leave data/manifests/<prefix>_cuts_{<train_split>,<dev_split>,<test_splits>}.jsonl.gz
# (Lhotse cuts with normalised text, written by `toolkit prepare`). Run from the work dir.
#   local/data.sh CORPUS LANGUAGE CORPUS_DIR SYNTHETIC SYNTH_MINUTES PREFIX LHOTSE_RECIPE
#
# FSDD: real recordings of spoken digits (8 kHz, 6 speakers, CC BY-SA 4.0). `toolkit prepare fsdd`
# writes speaker-disjoint splits (4 speakers train, 1 dev, 1 test) of isolated digits and of
# connected-digit utterances (3-7 recordings of one speaker joined with noise-filled pauses),
# words zero ... nine, resampled to 16 kHz on the fly.
set -euo pipefail
corpus=$1 language=$2 corpus_dir=$3 synthetic=$4 synth_minutes=$5 prefix=$6

if [ "$synthetic" = true ]; then
  echo "local/data.sh: FSDD is a corpus of real recordings; --synthetic true has no FSDD layout" >&2; exit 1
fi
if [ ! -d "$corpus_dir" ]; then
  echo "local/data.sh: FSDD not found in $corpus_dir; get it with" \
    "'git clone https://github.com/Jakobovski/free-spoken-digit-dataset' and pass --corpus-dir DIR" >&2
  exit 1
fi
toolkit prepare fsdd --corpus-dir "$corpus_dir" --prefix "$prefix" --out data/manifests
