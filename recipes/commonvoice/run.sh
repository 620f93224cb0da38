#!/usr/bin/env bash
# Common Voice: multilingual wav2vec 2.0 pretraining (XLSR language sampling), per-language CTC
# fine-tuning, WFST decoding and a per-language WER/CER table in RESULTS.md.
#
# Adding a language is a change of --languages / --finetune-languages, nothing else.
# Read top to bottom: each stage prints one line; a stage whose outputs exist is skipped.
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

stage=0
stop_stage=100
work_dir=$recipe_dir           # download/, data/, exp/ and RESULTS.md go here
synthetic=false                # true: a synthetic Common Voice-format tree (toolkit synth-corpus)
synth_minutes=3                # synthetic: minutes of audio per language
synth_finetune_minutes=10      # synthetic: minutes of transcribed train audio of each fine-tuning language
synth_test_minutes=            # synthetic: test audio per fine-tuning language (default: a tenth of its audio)
synth_speakers=10              # synthetic: speakers per language
synth_finetune_speakers=       # synthetic: speakers of each fine-tuning language (default: --synth-speakers)
synth_nj=2                     # synthetic: parallel synthesis jobs
synth_text=                    # synthetic: "LANG=FILE ..." sentences (one a line) for languages without a word list
synth_rare_words=0             # synthetic: generated rare words in the sentences of the fine-tuning languages (0: none)
corpus_dir=                    # an existing Common Voice release (<dir>/<lang>/{train,dev,test}.tsv, clips/)
release=cv-corpus-13.0-2023-03-09
languages="de fr es it"        # pretraining languages (unlabelled train audio)
finetune_languages="de"        # languages fine-tuned and decoded, each on its own
alpha=0.5                      # XLSR language sampling: p_l ~ (n_l/N)^alpha
size=tiny                      # recipes/shared/conf/{pretrain,finetune}_<size>.yaml (+ conf/ of this recipe)
pretrain=true                  # false: no pretraining stage (fine-tune --init-checkpoint or scratch)
init_checkpoint=               # continue pretraining from (or, with --pretrain false, fine-tune) this checkpoint
finetune_inits="pretrained"    # any of: pretrained scratch (one fine-tuning per entry)
finetune_jobs=1                # fine-tunings run at once; each gets cores/N threads (CPU)
token_type=char                # char | bpe
nbpe=150                       # SentencePiece vocabulary size for --token-type bpe
lm_order=3                     # first-pass LM (HLG)
rescore_lm_order=4             # rescoring LM for --decode-methods hlg-rescore (0: none)
open_vocab=true                # LM text and lexicon from the corpus's sentence file (minus dev/test), not only train
lm_text=                       # more LM text (one sentence a line, any case), added to the corpus's
lm_scales="0.3 0.5 0.7 1.0 1.3 1.6 2.0"   # LM weights tried on dev (hlg, hlg-rescore, the k2 methods with words); empty: no tuning
word_penalties="-1 0 1 2"      # word insertion penalties tried on dev with each LM weight
decode_methods="greedy hlg"
test_sets="dev test"
nj=1                           # decoding jobs per test set (through $decode_cmd)
ngpus=1                        # >1: torchrun --nproc_per_node
nnodes=1                       # >1: multi-node torchrun rendezvous (see docs/recipes.md)
rdzv_endpoint=
pretrain_opts=                 # extra "--set key=value ..." for toolkit pretrain
finetune_opts=                 # extra "--set key=value ..." for toolkit finetune
tag=                           # suffix of experiment names

help_message="Usage: $0 [options]
Common Voice recipe: multilingual pretraining, per-language fine-tuning, decoding, RESULTS.md.
Options (default):
  --stage N / --stop-stage N         run stages N..M (0..7)
  --work-dir DIR                     where download/, data/, exp/ go ($work_dir)
  --synthetic true|false             synthesise a Common Voice-format corpus ($synthetic)
  --synth-minutes M                  synthetic audio per language ($synth_minutes)
  --synth-finetune-minutes M         synthetic transcribed train audio per fine-tuning language ($synth_finetune_minutes)
  --synth-test-minutes M             synthetic test audio per fine-tuning language (default: a tenth of its audio)
  --synth-text \"LANG=FILE ...\"       synthetic: sentences of languages without a word list (any espeak-ng language)
  --synth-speakers N                 synthetic: speakers per language ($synth_speakers)
  --synth-finetune-speakers N        synthetic: speakers of each fine-tuning language (default: --synth-speakers)
  --synth-rare-words N               synthetic: N generated rare words in the sentences of the fine-tuning
                                     languages, a vocabulary of real size ($synth_rare_words)
  --corpus-dir DIR                   existing Common Voice release directory
  --release NAME                     release for lhotse download ($release)
  --languages \"L1 L2 ...\"            pretraining languages ($languages)
  --finetune-languages \"L ...\"       fine-tuning / decoding languages ($finetune_languages)
  --alpha A                          language sampling exponent ($alpha)
  --size tiny|base|large             model and training config ($size)
  --pretrain true|false              run the pretraining stage ($pretrain)
  --init-checkpoint PATH             imported XLSR checkpoint (toolkit import-checkpoint) to start from
  --finetune-inits \"pretrained scratch\" fine-tune from the pretrained model and/or from scratch ($finetune_inits)
  --finetune-jobs N                  fine-tunings run at once, each with cores/N threads ($finetune_jobs)
  --token-type char|bpe              output units ($token_type); --nbpe N word pieces ($nbpe)
  --lm-order N                       n-gram order of the first-pass LM ($lm_order)
  --rescore-lm-order N               order of the rescoring LM for hlg-rescore, 0 for none ($rescore_lm_order)
  --open-vocab true|false            LM text and lexicon from the corpus's sentence file minus dev/test ($open_vocab)
  --lm-text FILE                     more LM text, normalised like the transcripts
  --lm-scales \"S ...\" / --word-penalties \"P ...\"  LM weight x insertion penalty grid tuned on dev, applied to test
                                     ($lm_scales / $word_penalties; --lm-scales \"\" turns tuning off)
  --decode-methods \"greedy hlg\"      decoding methods ($decode_methods): greedy hlg hlg-rescore, and with
                                     k2 (local/install_k2.sh) k2-ctc k2-hlg k2-nbest-rescore k2-whole-lattice-rescore
  --nj N                             decoding jobs per test set ($nj)
  --ngpus N / --nnodes N / --rdzv-endpoint HOST:PORT   distributed training through torchrun
  --pretrain-opts / --finetune-opts  extra '--set key=value' options for the training commands
Stages: 0 corpus, 1 manifests, 2 lang dirs, 3 LMs and graphs, 4 pretraining,
        5 fine-tuning, 6 decoding, 7 RESULTS.md"

. "$recipe_dir/../shared/setup.sh"  # options, path.sh, cmd.sh, stage helpers; cd "$work_dir"
dl_dir=download
[ -n "$corpus_dir" ] || corpus_dir=$dl_dir/$release
[ "$synthetic" = true ] && corpus_dir=$dl_dir/synthetic-cv
all_languages=$(echo $(echo $languages $finetune_languages | tr " " "\n" | awk 'NF && !seen[$0]++'))
lang_unit=lang_$token_type; [ "$token_type" = bpe ] && lang_unit=lang_bpe_$nbpe
launcher=$(toolkit_launcher "$ngpus" "$nnodes" "$rdzv_endpoint" "cv$tag")
pretrain_dir=exp/pretrain_${size}${tag}
case "$token_type" in char|bpe) ;; *) echo "$0: --token-type must be char or bpe, got '$token_type'" >&2; exit 1 ;; esac
if [ -n "$synth_test_minutes" ] && ! awk -v t="$synth_test_minutes" 'BEGIN { exit !(t ~ /^[0-9]*[.]?[0-9]+$/ && t + 0 > 0) }'; then
  echo "$0: --synth-test-minutes must be a positive number of minutes, got '$synth_test_minutes'" >&2; exit 1
fi

ft_speakers=${synth_finetune_speakers:-$synth_speakers}
if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  stage_settings "synth_text=$synth_text"
  if [ "$synthetic" = true ]; then
    # The marker names the languages and sizes, so another language list synthesises what is missing.
    if stage_begin 0 "synthesise a Common Voice-format corpus ($all_languages) in $corpus_dir" \
        "$corpus_dir/.synth-${all_languages// /_}-${synth_minutes}-${synth_finetune_minutes}${synth_test_minutes:+-test$synth_test_minutes}-${synth_speakers}$([ "$ft_speakers" = "$synth_speakers" ] || echo "-ft$ft_speakers")$([ "$synth_rare_words" = 0 ] || echo "-rare$synth_rare_words").done"; then
      # Pretraining languages get --synth-minutes each; a fine-tuning language gets enough that
      # its train split (80 %, the rest dev and test) holds --synth-finetune-minutes of transcribed
      # audio; with --synth-test-minutes its test split holds that much and dev a tenth of the whole.
      pt_only=$(list_minus "$all_languages" "$finetune_languages")
      text_of() { local e; for e in $synth_text; do case " $* " in *" ${e%%=*} "*) printf ' --text %s' "$e" ;; esac; done; }
      if [ -n "$pt_only" ]; then
        toolkit synth-corpus --format commonvoice --languages "${pt_only// /,}" --out "$corpus_dir" \
          --minutes-per-language "$synth_minutes" --speakers "$synth_speakers" --nj "$synth_nj" $(text_of $pt_only)
      fi
      if [ -n "$synth_test_minutes" ]; then
        split_opts=$(awk -v m="$synth_finetune_minutes" -v t="$synth_test_minutes" \
          'BEGIN{total = (m + t) / 0.9; printf "--minutes-per-language %g --dev-fraction 0.1 --test-fraction %g", total, t / total}')
      else
        split_opts="--minutes-per-language $(awk -v m="$synth_finetune_minutes" 'BEGIN{print m / 0.8}')"
      fi
      toolkit synth-corpus --format commonvoice --languages "$(echo $finetune_languages | tr ' ' ,)" --out "$corpus_dir" \
        $split_opts --speakers "$ft_speakers" --nj "$synth_nj" --rare-words "$synth_rare_words" $(text_of $finetune_languages)
      stage_end
    fi
  elif stage_begin 0 "Common Voice $release for $all_languages in $corpus_dir" "$corpus_dir/.corpus-${all_languages// /_}.done"; then
    missing=
    for lang in $all_languages; do [ -f "$corpus_dir/$lang/train.tsv" ] || missing+=" $lang"; done
    if [ -n "$missing" ]; then
      # Mozilla's download needs an accepted licence; lhotse fetches it where the release allows.
      lhotse download commonvoice --languages "${missing# }" --release "$release" "$dl_dir" || {
        echo "$0: Common Voice$missing not found in $corpus_dir and could not be downloaded;" \
             "download the release by hand and pass --corpus-dir DIR" >&2; exit 1; }
    fi
    stage_end
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  markers=(); for lang in $all_languages; do markers+=(data/manifests/.cv-$lang.done); done
  stage_settings "corpus_dir=$corpus_dir"
  if stage_begin 1 "Lhotse manifests for $all_languages (text normalised, cuts validated)" "${markers[@]}"; then
    todo=; for lang in $all_languages; do stage_item_done data/manifests/.cv-$lang.done || todo+=",$lang"; done
    toolkit prepare commonvoice --corpus-dir "$corpus_dir" --languages "${todo#,}" --out data/manifests
    stage_end
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  markers=(); for lang in $finetune_languages; do markers+=(data/$lang/$lang_unit/.done); done
  stage_item_settings() {  # data/<lang>/<unit>/.done: that language's manifests and LM text
    local lang=${1#data/}; lang=${lang%%/*}
    stage_settings "manifests=$(file_sig data/manifests/.cv-$lang.done)" "open_vocab=$open_vocab" \
      "lm_text=$lm_text" "lm_text_content=$(file_sig "$lm_text")"
  }
  if stage_begin 2 "LM text and lang dirs ($token_type) for $finetune_languages" "${markers[@]}"; then
    for lang in $finetune_languages; do
      stage_item_done data/$lang/$lang_unit/.done && continue
      # LM text: the training transcripts, the corpus's sentence file (open vocabulary) and --lm-text,
      # without any dev/test sentence; its words join the lexicon, spelled by the training tokens.
      m=data/manifests/cv-${lang}_cuts
      toolkit lm text --language "$lang" --cuts ${m}_train.jsonl.gz --exclude-cuts ${m}_dev.jsonl.gz ${m}_test.jsonl.gz \
        $([ "$open_vocab" = true ] && echo "--commonvoice-dir $corpus_dir/$lang") ${lm_text:+--text "$lm_text"} \
        --out data/$lang/lm/text.txt
      toolkit lang-dir --type "$token_type" --vocab-size "$nbpe" --cuts ${m}_train.jsonl.gz --out data/$lang/$lang_unit \
        $([ "$open_vocab" = true ] || [ -n "$lm_text" ] && echo "--lm-text data/$lang/lm/text.txt")
      stage_item_end data/$lang/$lang_unit/.done
    done
    stage_end
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  k2_opt=$(k2_graph_opt)  # with k2: also HLG.pt and G_<n>gram.pt (an output the stage checks)
  markers=(); for lang in $finetune_languages; do markers+=(data/$lang/$lang_unit/.graph.done ${k2_opt:+data/$lang/$lang_unit/HLG.pt}); done
  stage_item_settings() {  # data/<lang>/<unit>/.graph.done: the LM orders and that language's lang dir
    local lang=${1#data/}; lang=${lang%%/*}
    stage_settings "lm_order=$lm_order" "rescore_lm_order=$rescore_lm_order" "lang_dir=$(file_sig data/$lang/$lang_unit/.done)"
  }
  if stage_begin 3 "${lm_order}-gram (and ${rescore_lm_order}-gram rescoring) LMs and HLG graphs for $finetune_languages${k2_opt:+ (and the k2 graphs)}" "${markers[@]}"; then
    for lang in $finetune_languages; do
      stage_item_done data/$lang/$lang_unit/.graph.done && { [ -z "$k2_opt" ] || [ -f data/$lang/$lang_unit/HLG.pt ]; } \
        && continue
      rescore=()
      for order in $lm_order $([ "$rescore_lm_order" -gt 0 ] && echo "$rescore_lm_order"); do
        toolkit lm train --order "$order" --language "$lang" --text data/$lang/lm/text.txt --out data/$lang/lm/${order}gram.arpa
      done
      [ "$rescore_lm_order" -gt 0 ] && rescore=(--rescore-lm data/$lang/lm/${rescore_lm_order}gram.arpa)
      toolkit compile-graph --lang-dir data/$lang/$lang_unit --lm data/$lang/lm/${lm_order}gram.arpa "${rescore[@]}" \
        --dev-cuts data/manifests/cv-${lang}_cuts_dev.jsonl.gz $k2_opt
      stage_item_end data/$lang/$lang_unit/.graph.done
    done
    stage_end
  fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ] && [ "$pretrain" = true ]; then
  stage_settings "languages=$languages" "alpha=$alpha" "init_checkpoint=$init_checkpoint" "init=$(file_sig "$init_checkpoint")" \
    "manifests=$(for lang in $languages; do printf '%s:%s,' $lang $(file_sig data/manifests/.cv-$lang.done); done)" \
    "pretrain_opts=$pretrain_opts"
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 4 "pretrain a $size model on $languages (alpha $alpha${init_checkpoint:+, from $init_checkpoint}) in $pretrain_dir" \
      "$pretrain_dir/.done"; then
    train_cuts=(); for lang in $languages; do train_cuts+=(data/manifests/cv-${lang}_cuts_train.jsonl.gz); done
    dev_cuts=(); for lang in $languages; do dev_cuts+=(data/manifests/cv-${lang}_cuts_dev.jsonl.gz); done
    init_opt=(); [ -n "$init_checkpoint" ] && init_opt=(--set "train.init=$init_checkpoint")
    $train_cmd --gpu "$ngpus" $pretrain_dir/log/pretrain.log \
      $launcher pretrain $(train_configs pretrain "$size") \
        --set "exp_dir=$pretrain_dir" \
        --set "data.train_cuts=$(yaml_list "${train_cuts[@]}")" \
        --set "data.dev_cuts=$(yaml_list "${dev_cuts[@]}")" \
        --set "data.languages=$(yaml_list $languages)" --set "data.alpha=$alpha" \
        "${init_opt[@]}" $pretrain_opts
    toolkit plot "$pretrain_dir" >/dev/null 2>&1 || true  # curves are a convenience
    stage_end
  fi
fi

# Which model each fine-tuning starts from.
init_for() {  # init_for pretrained|scratch
  case "$1" in
    pretrained)
      if [ "$pretrain" = true ]; then echo "$pretrain_dir/last.pt"
      elif [ -n "$init_checkpoint" ]; then echo "$init_checkpoint"
      else echo "$0: --finetune-inits pretrained needs --pretrain true or --init-checkpoint" >&2; return 1; fi ;;
    scratch) echo none ;;
    *) echo "$0: --finetune-inits takes pretrained and/or scratch, got '$1'" >&2; return 1 ;;
  esac
}
ft_dir_for() { echo "exp/finetune_${size}_${1}_${lang_unit#lang_}_${2}${tag}"; }  # LANG INIT
# What a fine-tuning or its decodes depend on (stage markers' settings), by marker: exp/<ft dir>/.done
# and exp/<ft dir>/decode/.done of each language and init.
declare -A ft_of=()
for lang in $finetune_languages; do for init in $finetune_inits; do ft_of[$(ft_dir_for $lang $init)]="$lang $init"; done; done
ft_settings() {
  local dir=${1%/.done} lang init init_model
  dir=${dir%/decode}
  read -r lang init <<< "${ft_of[$dir]}"
  if [[ $1 == */decode/.done ]]; then
    stage_settings "model=$(file_sig $dir/.done)" "graph=$(file_sig data/$lang/$lang_unit/.graph.done)" \
      "$(lm_grid_setting "$decode_methods" "$lm_scales" "$word_penalties")" \
      "tuned_on=$([[ " $test_sets " == *" dev "* ]] && echo dev || echo none)"
    return
  fi
  case $init in
    scratch) init_model=none ;;
    *) if [ "$pretrain" = true ]; then init_model=$(file_sig $pretrain_dir/.done); else init_model=$(file_sig "$init_checkpoint"); fi ;;
  esac
  stage_settings "init_model=$init_model" "tokens=$(file_sig data/$lang/$lang_unit/tokens.txt)" \
    "manifests=$(file_sig data/manifests/.cv-$lang.done)" "finetune_opts=$finetune_opts"
}

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  markers=()
  for lang in $finetune_languages; do for init in $finetune_inits; do markers+=("$(ft_dir_for $lang $init)/.done"); done; done
  stage_item_settings() { ft_settings "$1"; }
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 5 "CTC fine-tuning ($token_type) of $finetune_languages from: $finetune_inits" "${markers[@]}"; then
    case "$finetune_jobs" in ''|*[!0-9]*|0) echo "$0: --finetune-jobs must be a positive integer, got '$finetune_jobs'" >&2; exit 1 ;; esac
    threads=(); [ "$finetune_jobs" -gt 1 ] && threads=(--num-threads $(( $(nproc) / finetune_jobs > 0 ? $(nproc) / finetune_jobs : 1 )))
    finetune_one() {  # finetune_one LANG INIT DIR
      local init_path
      init_path=$(init_for $2) || return 1
      echo "  fine-tuning $1 from $init_path -> $3 (log: $3/log/finetune.log)"
      $train_cmd --gpu "$ngpus" "${threads[@]}" $3/log/finetune.log \
        $launcher finetune $(train_configs finetune "$size") \
          --set "exp_dir=$3" --set "train.init=$init_path" \
          --set "data.train_cuts=[data/manifests/cv-${1}_cuts_train.jsonl.gz]" \
          --set "data.dev_cuts=[data/manifests/cv-${1}_cuts_dev.jsonl.gz]" \
          --set "data.lang_dir=data/$1/$lang_unit" $finetune_opts || return 1
      toolkit plot "$3" >/dev/null 2>&1 || true
      stage_item_end $3/.done
    }
    declare -A running=(); failed=()
    for lang in $finetune_languages; do
      for init in $finetune_inits; do
        dir=$(ft_dir_for $lang $init)
        stage_item_done $dir/.done && continue
        if [ "$finetune_jobs" -eq 1 ]; then finetune_one $lang $init $dir; continue; fi
        while [ ${#running[@]} -ge "$finetune_jobs" ]; do  # at most --finetune-jobs at once
          wait -n -p pid || failed+=("${running[$pid]}"); unset "running[$pid]"
        done
        finetune_one $lang $init $dir & running[$!]=$dir
      done
    done
    for pid in "${!running[@]}"; do wait "$pid" || failed+=("${running[$pid]}"); done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "$0: stage 5: fine-tuning failed in ${failed[*]} (see log/finetune.log there)" >&2; exit 1
    fi
    stage_end
  fi
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  markers=(); for lang in $finetune_languages; do for init in $finetune_inits; do markers+=("$(ft_dir_for $lang $init)/decode/.done"); done; done
  stage_item_settings() { ft_settings "$1"; }
  for lang in $finetune_languages; do for init in $finetune_inits; do for t in $test_sets; do for m in $decode_methods; do
    markers+=("$(ft_dir_for $lang $init)/decode/cv-${lang}_$t/$m/wer-summary.txt")
  done; done; done; done
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 6 "decode $test_sets of $finetune_languages with: $decode_methods" "${markers[@]}"; then
    for lang in $finetune_languages; do
      for init in $finetune_inits; do
        dir=$(ft_dir_for $lang $init)
        # dev first: its LM weight x insertion penalty sweep chooses what the other sets use
        for t in $([[ " $test_sets " == *" dev "* ]] && echo dev) $(list_minus "$test_sets" dev); do
          if [ "$t" = dev ]; then jobs=1 lm_opts=$(lm_tuning_opts sweep "$decode_methods" "$lm_scales" "$word_penalties" "$nj")
          elif [[ " $test_sets " == *" dev "* ]]; then jobs=$nj lm_opts=$(lm_tuning_opts apply "$decode_methods" "$lm_scales" "$dir/decode/cv-${lang}_dev")
          else jobs=$nj lm_opts=; fi  # no dev set decoded: untuned
          [ -n "$lm_opts" ] || jobs=$nj
          decode_cuts "$(best_checkpoint $dir)" data/manifests/cv-${lang}_cuts_$t.jsonl.gz \
            data/$lang/$lang_unit "$decode_methods" "$dir/decode/cv-${lang}_$t" "$jobs" $lm_opts
        done
      done
    done
    stage_end
  fi
fi

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  if stage_begin 7 "collect WER/CER per language, test set and method into $work_dir/RESULTS.md"; then
    dirs=()
    for lang in $finetune_languages; do for init in $finetune_inits; do dirs+=(--exp-dir "$(ft_dir_for $lang $init)"); done; done
    toolkit results "${dirs[@]}" --out RESULTS.md --title "Common Voice: $size model, $token_type units"
    stage_end
  fi
fi
stage_summary
