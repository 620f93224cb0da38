#!/usr/bin/env bash
# The embedded default: the whole toolkit on one CPU box in about 20 minutes (2 cores).
#
# It installs what is missing (local/install.sh), synthesises a Common Voice-format corpus in
# six languages with espeak-ng, pretrains a `tiny` wav2vec 2.0 model on five of them (XLSR
# language sampling), fine-tunes it with CTC on the held-out language from about 2 minutes of
# transcribed audio, fine-tunes the same model from scratch on the same data, decodes both with
# greedy CTC and an HLG graph (3-gram LM on Italian sentences outside dev and test), and writes RESULTS.md
# comparing pretrained and scratch per decoding method. Every stage is the Common Voice recipe's
# (recipes/commonvoice/run.sh); this script only chooses its settings. The held-out language is
# made like a small Common Voice language: 50 speakers, a 12-minute test set, and 4000 generated
# rare words beside its word list (a vocabulary of real size: about 40% of the test words are
# absent from train, 2% from the LM text).
# It ends with `RESULT wer_pretrained=<x>` and `RESULT wer_scratch=<y>` (test WER, %, with the
# decoding method that is best for the pretrained model, after the same method's CER lines), then
# `RESULT p_pretrained_better_than_scratch=<p>`: the share of paired bootstrap resamples of the test
# utterances in which pretrained makes fewer errors (Bisani & Ney; 0.975 or more: clearly better).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$top"

stage=0
stop_stage=100
work_dir=exp/default                 # data/, exp/, RESULTS.md of the run (gitignored)
pretrain_languages="en de fr es ru"
heldout_language=it
pretrain_minutes=8                   # synthetic audio per pretraining language
finetune_minutes=2                   # transcribed train audio of the held-out language (little: where pretraining pays)
test_minutes=12                      # test audio of the held-out language (its dev set: a tenth of all its audio)
heldout_speakers=50                  # speakers of the held-out language (test, dev, then train take them)
rare_words=4000                      # generated rare words in its sentences (docs/synthetic.md; 0: the word list alone)
decode_methods="greedy hlg"
report_set=test                      # the set of the comparison table and the RESULT lines (dev or test)
pretrain_updates=1600                # tiny pretraining updates (20 s of audio each)
finetune_updates=1000                # tiny fine-tuning updates (20 s of audio each), for each of the two
finetune_jobs=2                      # the two fine-tunings at once, one thread each on 2 cores (1: one after the other)
pretrain_opts=                       # extra "--set key=value" for toolkit pretrain
finetune_opts=                       # extra "--set key=value" for toolkit finetune
help_message="Usage: ./run.sh [options]
The embedded default: synthetic multilingual corpus, tiny pretraining, fine-tuning of a held-out
language with and without pretraining, greedy and HLG decoding, RESULTS.md.
Options (default):
  --stage N / --stop-stage N        stages of recipes/commonvoice/run.sh to run (0..7)
  --work-dir DIR                    where the corpus, manifests and experiments go ($work_dir)
  --pretrain-languages \"L ...\"      pretraining languages ($pretrain_languages)
  --heldout-language L              fine-tuning language, unseen in pretraining ($heldout_language)
  --pretrain-minutes M              synthetic audio per pretraining language ($pretrain_minutes)
  --finetune-minutes M              transcribed audio for fine-tuning ($finetune_minutes)
  --test-minutes M                  test audio of the held-out language ($test_minutes)
  --heldout-speakers N              speakers of the held-out language ($heldout_speakers)
  --rare-words N                    generated rare words in its sentences, a vocabulary of real size ($rare_words)
  --decode-methods \"greedy hlg\"     decoding methods ($decode_methods); with k2 (local/install_k2.sh)
                                    also k2-ctc k2-hlg k2-nbest-rescore k2-whole-lattice-rescore
  --report-set dev|test             set of the comparison table and RESULT lines ($report_set)
  --pretrain-updates N              pretraining updates ($pretrain_updates)
  --finetune-updates N              updates of each fine-tuning ($finetune_updates)
  --finetune-jobs N                 fine-tunings at once, each with cores/N threads ($finetune_jobs)
  --pretrain-opts / --finetune-opts extra '--set key=value' options for the training commands"
. local/parse_options.sh

t0=$(date +%s)
echo "install: check the environment (local/install.sh)"
local/install.sh

recipes/commonvoice/run.sh --work-dir "$work_dir" --stage "$stage" --stop-stage "$stop_stage" \
  --synthetic true --synth-minutes "$pretrain_minutes" --synth-finetune-minutes "$finetune_minutes" \
  --synth-test-minutes "$test_minutes" --synth-rare-words "$rare_words" \
  --synth-finetune-speakers "$heldout_speakers" \
  --languages "$pretrain_languages" --finetune-languages "$heldout_language" \
  --size tiny --token-type char --finetune-inits "pretrained scratch" --finetune-jobs "$finetune_jobs" \
  --decode-methods "$decode_methods" --test-sets "dev test" --nj 1 \
  --pretrain-opts "--set train.max_updates=$pretrain_updates $pretrain_opts" \
  --finetune-opts "--set train.max_updates=$finetune_updates $finetune_opts"

# The comparison: one row per method, WER/CER of both fine-tunings on $report_set, the best
# method for the pretrained model and its RESULT lines (toolkit results --compare).
[ "$stop_stage" -ge 7 ] || exit 0
case "$report_set" in dev|test) ;; *) echo "$0: --report-set must be dev or test, got '$report_set'" >&2; exit 1 ;; esac
exp=$work_dir/exp
results=$work_dir/RESULTS.md; [[ $results = /* ]] || results=$top/$results
echo "RESULTS.md: $results"
echo "total time: $(( $(date +%s) - t0 )) s"
.venv/bin/toolkit results --out "$results" --append --test-set "cv-${heldout_language}_${report_set}" \
  --methods $decode_methods \
  --title "Pretrained vs scratch: $heldout_language (held out of pretraining; pretraining on $pretrain_languages), $report_set set" \
  --compare "pretrained=$exp/finetune_tiny_${heldout_language}_char_pretrained" \
            "scratch=$exp/finetune_tiny_${heldout_language}_char_scratch"
# What the synthetic dev/test sets hold that real ones do: utterances over 20 s, words absent from train.
summary=$work_dir/download/synthetic-cv/synth_summary.txt
if [ -f "$summary" ]; then
  printf '\nSynthetic corpus (toolkit synth-corpus, docs/synthetic.md): %s\n' \
    "$(grep "^$heldout_language: " "$summary")" >> "$results"
fi
