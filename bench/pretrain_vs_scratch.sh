#!/usr/bin/env bash
# The paper's central question in miniature: does self-supervised pretraining on other languages
# make CTC fine-tuning on ~2 minutes of labelled audio of a held-out language better than the
# same fine-tuning from scratch? (On the synthetic corpus with a fair scratch baseline: clearly,
# with and without an LM, in the three corpus draws tried; bench/RESULTS.md.)
#
# This is the embedded default (./run.sh) in its own work dir, so the benchmark and the demo
# can never drift apart: a synthetic Common Voice-format corpus (espeak-ng), tiny pretraining on
# en de fr es ru (XLSR language sampling), fine-tuning on Italian (held out, about 2 minutes of
# transcribed audio, 4000 rare words) from the pretrained model and from scratch with the same config and number
# of updates, greedy and HLG decoding. It reports the DEV set here (./run.sh reports test) with
# the decoding method that is best for the pretrained model, and the pretraining wall time.
#
# Ends with RESULT lines: cer_pretrained, cer_scratch, wer_pretrained, wer_scratch (dev, %),
# p_pretrained_better_than_scratch (paired bootstrap, `toolkit results --compare`) and
# pretrain_seconds (nan when the pretraining stage was already done in that work dir).
#
# Usage: bench/pretrain_vs_scratch.sh [--work-dir DIR] [any other ./run.sh option]
#   e.g. bench/pretrain_vs_scratch.sh --pretrain-updates 1000 --work-dir exp/bench_pt1000
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# run.sh reports the dev set here (method chosen on it, as the recipes choose on dev) and ends
# with its RESULT lines; the pretraining stage's wall time is read from its stage summary.
# A later --work-dir given by the caller wins (Kaldi option parsing).
./run.sh --work-dir exp/bench_pretrain_vs_scratch --report-set dev "$@" 2>&1 | tee "$log"
pt_seconds=$(sed -n 's/^ *stage 4 (pretrain .*): \([0-9.]*\) s$/\1/p' "$log" | tail -n 1)
echo "RESULT pretrain_seconds=${pt_seconds:-nan}"
