#!/usr/bin/env bash
# The paper's central result in miniature: self-supervised pretraining on other languages makes
# CTC fine-tuning on ~10 minutes of labelled audio of a held-out language clearly better than the
# same fine-tuning from scratch.
#
# This is the embedded default (./run.sh) in its own work dir, so the benchmark and the demo
# can never drift apart: a synthetic Common Voice-format corpus (espeak-ng), tiny pretraining on
# en de fr es ru (XLSR language sampling), fine-tuning on Italian (held out, about 10 minutes of
# transcribed audio) from the pretrained model and from scratch with the same config and number
# of updates, greedy and HLG decoding. It reports the DEV set here (./run.sh reports test) with
# the decoding method that is best for the pretrained model, and the pretraining wall time.
#
# Ends with RESULT lines: wer_pretrained, wer_scratch, cer_pretrained, cer_scratch (dev, %) and
# pretrain_seconds (nan when the pretraining stage was already done in that work dir).
#
# Usage: bench/pretrain_vs_scratch.sh [--work-dir DIR] [any other ./run.sh option]
#   e.g. bench/pretrain_vs_scratch.sh --pretrain-updates 1000 --work-dir exp/bench_pt1000
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

work_dir=exp/bench_pretrain_vs_scratch
heldout=it
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --work-dir) work_dir=$2; shift 2 ;;
    --heldout-language) heldout=$2; args+=("$1" "$2"); shift 2 ;;
    --help|-h) sed -n '2,17p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# run.sh's own RESULT lines are the test set's; renamed so that the RESULT lines below are the only ones.
./run.sh --work-dir "$work_dir" "${args[@]}" 2>&1 | tee "$log" | sed -E 's/^RESULT (wer_[a-z]+)=/run.sh test-set \1: /'

exp=$work_dir/exp
summary() {  # summary pretrained|scratch METHOD COLUMN -> column of the dev wer-summary.txt (2 WER, 3 CER)
  awk -F'\t' -v c="$3" 'NR == 2 {print $c}' \
    "$exp/finetune_tiny_${heldout}_char_$1/decode/cv-${heldout}_dev/$2/wer-summary.txt"
}
best=; best_wer=
for f in "$exp/finetune_tiny_${heldout}_char_pretrained/decode/cv-${heldout}_dev"/*/wer-summary.txt; do
  m=$(basename "$(dirname "$f")"); w=$(summary pretrained "$m" 2)
  if [ -z "$best" ] || awk -v a="$w" -v b="$best_wer" 'BEGIN{exit !(a < b)}'; then best=$m; best_wer=$w; fi
done
# The pretraining stage's wall time as the recipe printed it (absent when it was already done).
pt_seconds=$(sed -n 's/^ *stage 4 (pretrain .*): \([0-9.]*\) s$/\1/p' "$log" | tail -n 1)
echo "dev set of '$heldout', best method for the pretrained model: $best"
echo "RESULT wer_pretrained=$(summary pretrained "$best" 2)"
echo "RESULT wer_scratch=$(summary scratch "$best" 2)"
echo "RESULT cer_pretrained=$(summary pretrained "$best" 3)"
echo "RESULT cer_scratch=$(summary scratch "$best" 3)"
echo "RESULT pretrain_seconds=${pt_seconds:-nan}"
