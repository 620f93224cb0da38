#!/usr/bin/env bash
# LibriSpeech: wav2vec 2.0 pretraining on the untranscribed training audio, CTC fine-tuning on
# a Libri-light subset (10m, 1h, 10h) or a LibriSpeech training set (100h, 960h), decoding of
# the dev/test sets with greedy CTC and an n-gram HLG graph, and RESULTS.md.
# Read top to bottom: each stage prints one line; a stage whose outputs exist is skipped.
set -euo pipefail

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

stage=0
stop_stage=100
work_dir=$recipe_dir           # download/, data/, exp/ and RESULTS.md go here
corpus_dir=                    # existing copy holding LibriSpeech/ (and librispeech_finetuning/)
synthetic=false                # true: synthesise a LibriSpeech-format tree (toolkit synth-corpus)
synth_minutes=20               # synthetic: minutes of audio
synth_subset_scale=0.1         # synthetic: scale of the Libri-light folds (1.0 = real 10 min / 1 h / 10 h)
download_lm=true               # real data: fetch the official LM files from openslr (SLR11) into download/lm when online
size=base                      # recipes/shared/conf/{pretrain,finetune}_<size>.yaml (+ conf/ of this recipe)
finetune_set=10m               # 10m | 1h | 10h (Libri-light) | 100h | 960h
token_type=char                # char (the paper) | bpe
nbpe=500
lm_dir=                        # openslr-format LM files: 3-gram.pruned.1e-7.arpa[.gz] or 3-gram.arpa[.gz], 4-gram.arpa[.gz],
                               #   librispeech-lexicon.txt, librispeech-lm-norm.txt[.gz] (default: download/lm, synthetic: <corpus>/lm)
lm_source=auto                 # official (the ARPA files) | lm-norm (LMs trained on librispeech-lm-norm.txt) | transcripts
                               #   auto: official when --lm-dir has the 3-gram, else lm-norm when it has the text, else transcripts
lm_order=3                     # order of a trained first-pass LM (lm-norm, transcripts)
rescore_lm_order=4             # order of a trained rescoring LM for hlg-rescore (lm-norm, transcripts; 0: none)
lm_prune="0 1 1"               # lm-norm: count pruning of the trained LMs (lmplz --prune: drop n-grams >= 2 seen once)
lm_tag=                        # graphs in <lang dir>_<tag>, decodings in decode/<set>_<tag>: compare LMs on one model
lm_scales="0.3 0.5 0.7 1.0 1.3 1.6 2.0"   # LM weights tried on dev (hlg, hlg-rescore, the k2 methods with words); empty: no tuning
word_penalties="-1 0 1 2"      # word insertion penalties tried on dev with each LM weight
decode_methods="greedy hlg"
test_sets="dev-clean dev-other test-clean test-other"   # those absent from the corpus are skipped
nj=4                           # decoding jobs per test set (through $decode_cmd)
ngpus=1                        # >1: torchrun --nproc_per_node
nnodes=1                       # >1: multi-node torchrun rendezvous (see docs/recipes.md)
rdzv_endpoint=
init_checkpoint=               # fine-tune this (imported) checkpoint instead of pretraining
pretrain_opts=                 # extra "--set key=value ..." for toolkit pretrain
finetune_opts=                 # extra "--set key=value ..." for toolkit finetune
tag=

help_message="Usage: $0 [options]
LibriSpeech recipe: pretraining, fine-tuning on a labelled subset, decoding, RESULTS.md.
Options (default):
  --stage N / --stop-stage N         run stages N..M (0..7)
  --work-dir DIR                     where download/, data/, exp/ go ($work_dir)
  --corpus-dir DIR                   existing copy containing LibriSpeech/ (skips the download)
  --synthetic true|false             synthesise a LibriSpeech-format corpus instead ($synthetic)
  --synth-minutes M / --synth-subset-scale S   size of the synthetic corpus ($synth_minutes, $synth_subset_scale)
  --download-lm true|false           official openslr LM files on real data, as icefall ($download_lm)
  --lm-dir DIR                       openslr-format LM files (3-gram(.pruned.1e-7).arpa(.gz), 4-gram.arpa(.gz),
                                     librispeech-lexicon.txt, librispeech-lm-norm.txt(.gz)); any case
  --lm-source auto|official|lm-norm|transcripts   which LM to decode with ($lm_source)
  --lm-order N / --rescore-lm-order N  orders of trained LMs ($lm_order / $rescore_lm_order)
  --lm-prune \"0 1 1\"                 count pruning of LMs trained on librispeech-lm-norm.txt ($lm_prune)
  --lm-tag NAME                      separate graphs and decodings for this LM (compare LMs on one model)
  --lm-scales \"S ...\" / --word-penalties \"P ...\"  LM weight x insertion penalty grid tuned on dev-*, applied to test-*
                                     ($lm_scales / $word_penalties; --lm-scales \"\" turns tuning off)
  --size tiny|base|large             model and training config ($size)
  --finetune-set 10m|1h|10h|100h|960h  labelled data for fine-tuning ($finetune_set)
  --token-type char|bpe / --nbpe N   output units ($token_type, $nbpe)
  --decode-methods \"greedy hlg\"      decoding methods ($decode_methods): greedy hlg hlg-rescore, and with
                                     k2 (local/install_k2.sh) k2-ctc k2-hlg k2-nbest-rescore k2-whole-lattice-rescore
  --test-sets \"...\"                  dev/test sets ($test_sets)
  --nj N                             decoding jobs per test set ($nj)
  --init-checkpoint PATH             fine-tune an imported checkpoint; skips pretraining
  --ngpus N / --nnodes N / --rdzv-endpoint HOST:PORT   distributed training through torchrun
  --pretrain-opts / --finetune-opts  extra '--set key=value' options for the training commands
Stages: 0 corpus (and LMs), 1 manifests, 2 lang dirs, 3 LMs and graphs, 4 pretraining,
        5 fine-tuning, 6 decoding, 7 RESULTS.md"

. "$recipe_dir/../shared/setup.sh"  # options, path.sh, cmd.sh, stage helpers; cd "$work_dir"
dl_dir=download
[ "$synthetic" = true ] && corpus_dir=$dl_dir/synthetic-librispeech
[ -n "$corpus_dir" ] || corpus_dir=$dl_dir
case "$finetune_set" in 10m|1h|10h|100h|960h) ;; *) echo "$0: --finetune-set must be 10m, 1h, 10h, 100h or 960h" >&2; exit 1 ;; esac
case "$token_type" in char) lang_dir=data/lang_char ;; bpe) lang_dir=data/lang_bpe_$nbpe ;;
  *) echo "$0: --token-type must be char or bpe, got '$token_type'" >&2; exit 1 ;; esac
graph_dir=$lang_dir${lm_tag:+_$lm_tag}   # lang dir whose graphs decode (the model's, or a tagged copy)
if [ -z "$lm_dir" ]; then lm_dir=$dl_dir/lm; [ "$synthetic" = true ] && lm_dir=$corpus_dir/lm; fi
case "$lm_source" in auto|official|lm-norm|transcripts) ;;
  *) echo "$0: --lm-source must be auto, official, lm-norm or transcripts, got '$lm_source'" >&2; exit 1 ;; esac
launcher=$(toolkit_launcher "$ngpus" "$nnodes" "$rdzv_endpoint" "librispeech$tag")
pretrain_dir=exp/pretrain_${size}${tag}
unit=${lang_dir#data/lang_}  # char, bpe_<n>
ft_dir=exp/finetune_${size}_${finetune_set}_${unit}${tag}
[ -n "$init_checkpoint" ] && ft_dir=exp/finetune_$(basename "${init_checkpoint%.*}")_${finetune_set}_${unit}${tag}

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  stage_settings "synthetic=$synthetic" $([ "$synthetic" = true ] && echo "synth_minutes=$synth_minutes synth_subset_scale=$synth_subset_scale")
  if stage_begin 0 "LibriSpeech corpus and Libri-light subsets in $corpus_dir" "$corpus_dir/.corpus.done"; then
    if [ "$synthetic" = true ]; then
      toolkit synth-corpus --format librispeech --languages en --minutes-per-language "$synth_minutes" \
        --subset-scale "$synth_subset_scale" --out "$corpus_dir"
    else
      [ -d "$corpus_dir/LibriSpeech/train-clean-100" ] || lhotse download librispeech --full "$corpus_dir"
      if [ ! -d "$corpus_dir/librispeech_finetuning" ] && [[ $finetune_set =~ ^(10m|1h|10h)$ ]]; then
        wget -q -c -P "$corpus_dir" https://dl.fbaipublicfiles.com/librilight/data/librispeech_finetuning.tgz
        tar -xzf "$corpus_dir/librispeech_finetuning.tgz" -C "$corpus_dir"
      fi
      if [ "$download_lm" = true ] && [ ! -f "$dl_dir/lm/.download.done" ]; then
        # The official LM files (openslr SLR11), as icefall's download_lm.py; the 1.4 GB LM text only
        # for --lm-source lm-norm. Offline runs fall back to LMs on the transcripts.
        mkdir -p "$dl_dir/lm"
        files="3-gram.pruned.1e-7.arpa.gz 4-gram.arpa.gz librispeech-lexicon.txt librispeech-vocab.txt"
        [ "$lm_source" = lm-norm ] && files+=" librispeech-lm-norm.txt.gz"
        ok=true
        for f in $files; do
          wget -q -c -P "$dl_dir/lm" "https://www.openslr.org/resources/11/$f" || { rm -f "$dl_dir/lm/$f"; ok=false; break; }
        done
        $ok && date > "$dl_dir/lm/.download.done"
      fi
    fi
    stage_end
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  stage_settings "corpus_dir=$corpus_dir" "corpus=$(file_sig $corpus_dir/.corpus.done)"
  if stage_begin 1 "Lhotse manifests of every split found in $corpus_dir" data/manifests/.librispeech.done; then
    toolkit prepare librispeech --corpus-dir "$corpus_dir" --out data/manifests
    stage_end
  fi
fi

# Splits present, from the manifests written by stage 1.
split_cuts() { echo data/manifests/librispeech_cuts_$1.jsonl.gz; }
train_splits=(); for s in train-clean-100 train-clean-360 train-other-500; do [ -f "$(split_cuts $s)" ] && train_splits+=("$(split_cuts $s)"); done
case "$finetune_set" in
  100h) ft_list=("$(split_cuts train-clean-100)") ;;
  960h) ft_list=("${train_splits[@]}") ;;
  *) ft_list=("$(split_cuts train-$finetune_set)") ;;  # Libri-light subsets
esac
ft_cuts=$(yaml_list "${ft_list[@]}")
dev_cuts=$(split_cuts dev-clean)

# The LM files of --lm-dir (openslr's names; plain or gzipped), and the LM source to use.
lm_file() { local f; for f in "$@"; do [ -f "$lm_dir/$f" ] && { echo "$lm_dir/$f"; return 0; }; done; return 0; }
official_lm=$(lm_file 3-gram.pruned.1e-7.arpa.gz 3-gram.pruned.1e-7.arpa 3-gram.arpa.gz 3-gram.arpa)
official_rescore_lm=$(lm_file 4-gram.arpa.gz 4-gram.arpa)
lm_norm_text=$(lm_file librispeech-lm-norm.txt.gz librispeech-lm-norm.txt)
official_lexicon=$(lm_file librispeech-lexicon.txt)
source_of_lm() {  # the resolved --lm-source (one-line error when its files are missing)
  case "$lm_source" in
    auto) if [ -n "$official_lm" ]; then echo official; elif [ -n "$lm_norm_text" ]; then echo lm-norm; else echo transcripts; fi ;;
    official) [ -n "$official_lm" ] || { echo "$0: --lm-source official: no 3-gram(.pruned.1e-7).arpa(.gz) in $lm_dir; give --lm-dir" >&2; return 1; }
              echo official ;;
    lm-norm) [ -n "$lm_norm_text" ] || { echo "$0: --lm-source lm-norm: no librispeech-lm-norm.txt(.gz) in $lm_dir; give --lm-dir" >&2; return 1; }
             echo lm-norm ;;
    *) echo transcripts ;;
  esac
}

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  src=$(source_of_lm)
  # An external LM brings its lexicon's words (openslr's UPPER-case lexicon, normalised and spelled
  # by the training tokens), so words of the LM that training lacks are decodable.
  lexicon=(); [ "$src" != transcripts ] && [ -n "$official_lexicon" ] && lexicon=(--lexicon "$official_lexicon")
  markers=(data/lang_char/.done data/lang_bpe_$nbpe/.done); [ -n "$lm_tag" ] && markers+=("$graph_dir/.done")
  stage_item_settings() {  # the lexicon is that of the lang dir whose graphs decode (a tagged LM's own)
    if [ -n "$lm_tag" ] && [ "$1" != "$graph_dir/.done" ]; then
      stage_settings "manifests=$(file_sig data/manifests/.librispeech.done)"
    else
      stage_settings "manifests=$(file_sig data/manifests/.librispeech.done)" "lexicon=${lexicon[*]:-}"
    fi
  }
  if stage_begin 2 "lang dirs: characters (data/lang_char) and word pieces (data/lang_bpe_$nbpe)${lm_tag:+, $graph_dir}; $src LM words" \
      "${markers[@]}"; then
    stage_item_done data/lang_char/.done || {
      toolkit lang-dir --type char --cuts "${train_splits[@]}" "${lexicon[@]}" --out data/lang_char; stage_item_end data/lang_char/.done; }
    stage_item_done data/lang_bpe_$nbpe/.done || {
      toolkit lang-dir --type bpe --vocab-size "$nbpe" --cuts "${train_splits[@]}" "${lexicon[@]}" --out data/lang_bpe_$nbpe
      stage_item_end data/lang_bpe_$nbpe/.done; }
    if [ -n "$lm_tag" ] && ! stage_item_done "$graph_dir/.done"; then  # same tokens as the model's lang dir
      toolkit lang-dir --type "$token_type" --vocab-size "$nbpe" --cuts "${train_splits[@]}" "${lexicon[@]}" --out "$graph_dir"
      stage_item_end "$graph_dir/.done"
    fi
    stage_end
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  src=$(source_of_lm)
  k2_opt=$(k2_graph_opt)  # with k2: also HLG.pt and G_<n>gram.pt (an output the stage checks)
  lang_marker=$lang_dir/.done; [ -n "$lm_tag" ] && lang_marker=$graph_dir/.done
  stage_settings "lm_source=$src" "lm_order=$lm_order" "rescore_lm_order=$rescore_lm_order" "lm_dir=$lm_dir" \
    $([ "$src" = lm-norm ] && echo "lm_prune=${lm_prune// /_}") "lang_dir=$(file_sig $lang_marker)"
  if stage_begin 3 "$src n-gram LMs and H/L/G/HLG graphs in $graph_dir${k2_opt:+ (and the k2 graphs)}" "$graph_dir/.graph.done" \
      ${k2_opt:+"$graph_dir/HLG.pt"}; then
    mkdir -p data/lm
    rescore=()
    case "$src" in
      official)
        lm=$official_lm
        [ -n "$official_rescore_lm" ] && rescore=(--rescore-lm "$official_rescore_lm") ;;
      *)
        if [ "$src" = lm-norm ]; then  # hundreds of millions of words: lmplz (--engine auto), pruned
          text=$lm_norm_text prune=(--prune $lm_prune) name=lm-norm_p${lm_prune// /}
        else  # the training transcripts without any dev/test sentence
          text=data/lm/transcripts.txt prune=() name=transcripts held_out=()
          for t in $test_sets; do [ -f "$(split_cuts $t)" ] && held_out+=("$(split_cuts $t)"); done
          toolkit lm text --language en --cuts "${train_splits[@]}" ${held_out[@]:+--exclude-cuts "${held_out[@]}"} --out "$text"
        fi
        name=${name}_$(file_sig "$text")  # a cached LM is reused only for the same text
        for order in $lm_order $([ "$rescore_lm_order" -gt 0 ] && echo "$rescore_lm_order"); do
          [ -f data/lm/${name}_${order}gram.arpa.gz ] || toolkit lm train --order "$order" --language en --text "$text" \
            "${prune[@]}" --out data/lm/${name}_${order}gram.arpa.gz
        done
        lm=data/lm/${name}_${lm_order}gram.arpa.gz
        [ "$rescore_lm_order" -gt 0 ] && rescore=(--rescore-lm data/lm/${name}_${rescore_lm_order}gram.arpa.gz) ;;
    esac
    dev=(); [ -f "$(split_cuts dev-clean)" ] && dev=(--dev-cuts "$(split_cuts dev-clean)")  # OOV rate in the log
    toolkit compile-graph --lang-dir "$graph_dir" --lm "$lm" "${rescore[@]}" "${dev[@]}" $k2_opt
    stage_end
  fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ] && [ -z "$init_checkpoint" ]; then
  stage_settings "manifests=$(file_sig data/manifests/.librispeech.done)" "pretrain_opts=$pretrain_opts"
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 4 "pretrain a $size model on the untranscribed train audio in $pretrain_dir" "$pretrain_dir/.done"; then
    echo "  log: $pretrain_dir/log/pretrain.log"
    $train_cmd --gpu "$ngpus" $pretrain_dir/log/pretrain.log \
      $launcher pretrain $(train_configs pretrain "$size") \
        --set "exp_dir=$pretrain_dir" --set "data.train_cuts=$(yaml_list "${train_splits[@]}")" \
        --set "data.dev_cuts=[$dev_cuts]" $pretrain_opts
    toolkit plot "$pretrain_dir" >/dev/null 2>&1 || true  # curves are a convenience
    stage_end
  fi
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  init=${init_checkpoint:-$pretrain_dir/last.pt}
  init_model=$(file_sig "$init_checkpoint"); [ -n "$init_checkpoint" ] || init_model=$(file_sig $pretrain_dir/.done)
  stage_settings "init_model=$init_model" "tokens=$(file_sig $lang_dir/tokens.txt)" \
    "manifests=$(file_sig data/manifests/.librispeech.done)" "finetune_opts=$finetune_opts"
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 5 "CTC fine-tuning ($token_type) on $finetune_set from $init in $ft_dir" "$ft_dir/.done"; then
    echo "  log: $ft_dir/log/finetune.log"
    $train_cmd --gpu "$ngpus" $ft_dir/log/finetune.log \
      $launcher finetune $(train_configs finetune "$size") \
        --set "exp_dir=$ft_dir" --set "train.init=$init" --set "data.train_cuts=$ft_cuts" \
        --set "data.dev_cuts=[$dev_cuts]" --set "data.lang_dir=$lang_dir" $finetune_opts
    toolkit plot "$ft_dir" >/dev/null 2>&1 || true
    stage_end
  fi
fi

present_tests=(); for t in $test_sets; do [ -f "$(split_cuts $t)" ] && present_tests+=("$t"); done
decode_dir_of() { echo "$ft_dir/decode/$1${lm_tag:+_$lm_tag}"; }  # one decode dir per test set and LM
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  markers=("$ft_dir/decode/.${lm_tag:-model}-graph.done")  # what every decode with this graph depends on
  for t in "${present_tests[@]}"; do for m in $decode_methods; do markers+=("$(decode_dir_of $t)/$m/wer-summary.txt"); done; done
  stage_settings "model=$(file_sig $ft_dir/.done)" "graph=$(file_sig $graph_dir/.graph.done)" \
    "$(lm_grid_setting "$decode_methods" "$lm_scales" "$word_penalties")" \
    "tuned_on=$(for t in "${present_tests[@]}"; do [[ $t == dev* ]] && printf '%s ' $t; done)"
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 6 "decode ${present_tests[*]} with: $decode_methods ($nj jobs each; graphs of $graph_dir)" "${markers[@]}"; then
    ckpt=$(best_checkpoint "$ft_dir")
    devs=(); for t in "${present_tests[@]}"; do [[ $t == dev* ]] && devs+=("$t"); done
    for t in "${devs[@]}" $(list_minus "${present_tests[*]}" "${devs[*]}"); do
      # dev-X sweeps the LM weight x insertion penalty; test-X uses dev-X's choice (else the first dev set's)
      if [[ $t == dev* ]]; then jobs=1 lm_opts=$(lm_tuning_opts sweep "$decode_methods" "$lm_scales" "$word_penalties" "$nj")
      else
        dev=dev-${t#test-}; [[ " ${devs[*]} " == *" $dev "* ]] || dev=${devs[0]:-}
        jobs=$nj lm_opts=; [ -n "$dev" ] && lm_opts=$(lm_tuning_opts apply "$decode_methods" "$lm_scales" "$(decode_dir_of $dev)")
      fi
      [ -n "$lm_opts" ] || jobs=$nj
      decode_cuts "$ckpt" "$(split_cuts $t)" "$graph_dir" "$decode_methods" "$(decode_dir_of $t)" "$jobs" $lm_opts
    done
    stage_end
  fi
fi

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  if stage_begin 7 "collect WER/CER per test set and method into $work_dir/RESULTS.md"; then
    toolkit results --exp-dir "$ft_dir" --out RESULTS.md --title "LibriSpeech: $size model, fine-tuned on $finetune_set, $token_type units"
    stage_end
  fi
fi
stage_summary
