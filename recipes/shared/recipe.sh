# The stages of a recipe made by local/new_recipe.sh (sourced by its run.sh with recipe_dir set):
# corpus and manifests (local/data.sh), lang dir, n-gram LM and HLG graph, wav2vec 2.0 pretraining
# on the training audio (or an imported checkpoint), CTC fine-tuning, decoding and RESULTS.md.
# What the corpus is lives in the recipe's conf/recipe.conf, how it is fetched in its local/data.sh.
set -euo pipefail
: "${recipe_dir:?recipes/shared/recipe.sh is sourced by a recipe run.sh that sets recipe_dir}"
recipe_name=$(basename "$recipe_dir")

stage=0
stop_stage=100
work_dir=$recipe_dir
corpus_dir=                    # default: download/<corpus>
synthetic=false                # true: synthesise the corpus with espeak-ng (toolkit synth-corpus)
synth_minutes=5
size=tiny                      # training configs: recipes/shared/conf/{pretrain,finetune}_<size>.yaml (+ conf/ of this recipe)
pretrain=true                  # false: fine-tune --init-checkpoint (or from scratch without one)
scratch_model=                 # model preset when fine-tuning from scratch (e.g. tiny_fbank); empty: the one in the config
init_checkpoint=               # imported checkpoint (toolkit import-checkpoint)
token_type=char                # char | bpe
nbpe=150
lm_order=3
decode_methods="greedy hlg"
lm_scales="0.3 0.5 0.7 1.0 1.3 1.6 2.0"   # LM weights tried on the dev split (hlg and the rescoring methods); empty: no tuning
word_penalties="-1 0 1 2"      # word insertion penalties tried on dev with each LM weight
nj=1
ngpus=1
nnodes=1
rdzv_endpoint=
pretrain_opts=
finetune_opts=
# the recipe's corpus, and any default above it changes (pretrain=false where pretraining on the
# corpus was measured not to help); the command line overrides both
. "$recipe_dir/conf/recipe.conf"
help_message="Usage: $0 [options]
$recipe_name ($corpus, $language): stages 0 corpus+manifests, 1 lang dir, 2 LM+graph, 3 pretraining,
4 fine-tuning, 5 decoding, 6 RESULTS.md. Options (default):
  --stage N / --stop-stage N     run stages N..M
  --work-dir DIR                 where download/, data/, exp/ go ($work_dir)
  --corpus-dir DIR               existing corpus copy
  --synthetic true|false         synthetic corpus ($synthetic); --synth-minutes M ($synth_minutes)
  --language / --corpus / --prefix / --train-split / --dev-split / --test-splits  (conf/recipe.conf)
  --size tiny|base|large         configs in conf/ ($size)
  --pretrain true|false          pretraining stage ($pretrain); --init-checkpoint PATH
  --scratch-model PRESET         model preset from scratch (no pretraining, no init): ${scratch_model:-from the config}
  --token-type char|bpe          output units ($token_type); --nbpe N ($nbpe)
  --lm-order N                   LM order ($lm_order)
  --decode-methods \"greedy hlg\"  ($decode_methods); --nj N decoding jobs ($nj)
  --lm-scales \"S ...\" / --word-penalties \"P ...\"  LM weight x insertion penalty grid tuned on
                                 the dev split, applied to the test splits (--lm-scales \"\": no tuning)
  --ngpus N / --nnodes N / --rdzv-endpoint HOST:PORT   torchrun
  --pretrain-opts / --finetune-opts  extra '--set key=value' for the training commands"

. "$recipe_dir/../shared/setup.sh"  # options, path.sh, cmd.sh, stage helpers; cd "$work_dir"
[ -n "$corpus_dir" ] || corpus_dir=download/${lhotse_recipe:-$corpus}
[ "$synthetic" = true ] && corpus_dir=download/synthetic-$corpus
lang_dir=data/lang_$token_type; [ "$token_type" = bpe ] && lang_dir=data/lang_bpe_$nbpe
cuts() { echo data/manifests/${prefix}_cuts_$1.jsonl.gz; }
launcher=$(toolkit_launcher "$ngpus" "$nnodes" "$rdzv_endpoint" "$prefix")
pretrain_dir=exp/pretrain_${size}
init=none
[ "$pretrain" = true ] && init=$pretrain_dir/last.pt
[ -n "$init_checkpoint" ] && [ "$pretrain" != true ] && init=$init_checkpoint
scratch_opts=(); ft_model=$size
if [ "$init" = none ] && [ -n "$scratch_model" ]; then scratch_opts=(--set "model.preset=$scratch_model"); ft_model=$scratch_model; fi
init_name=$(basename "${init%.pt}" | sed 's/^last$/pretrained/; s/^none$/scratch/')
ft_dir=exp/finetune_${ft_model}_${lang_dir#data/lang_}_$init_name  # model, units (char, bpe_<n>) and init in the name
# What a model's start is (a stage marker's settings): the pretraining stage's marker, or the
# checkpoint file's content, so that another model under the same path is not taken for it.
init_sig() { case $init in none) echo none ;; $pretrain_dir/last.pt) file_sig $pretrain_dir/.done ;; *) file_sig "$init" ;; esac; }

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  stage_settings "corpus=$corpus" "language=$language" "corpus_dir=$corpus_dir" "synthetic=$synthetic" \
    ${lhotse_recipe:+"lhotse_recipe=$lhotse_recipe"} $([ "$synthetic" = true ] && echo "synth_minutes=$synth_minutes")
  if stage_begin 0 "$corpus ($language) corpus and manifests (local/data.sh)" data/manifests/.$prefix.done; then
    "$recipe_dir/local/data.sh" "$corpus" "$language" "$corpus_dir" "$synthetic" "$synth_minutes" "$prefix" "$lhotse_recipe"
    stage_end
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  stage_settings "train_split=$train_split" "manifests=$(file_sig data/manifests/.$prefix.done)"
  if stage_begin 1 "lang dir ($token_type) from the $train_split transcripts" "$lang_dir/.done"; then
    toolkit lang-dir --type "$token_type" --vocab-size "$nbpe" --cuts "$(cuts $train_split)" --out "$lang_dir"
    stage_end
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  stage_settings "lm_order=$lm_order" "lang_dir=$(file_sig $lang_dir/.done)"
  if stage_begin 2 "${lm_order}-gram LM and HLG graph" "$lang_dir/.graph.done"; then
    mkdir -p data/lm
    toolkit lm train --order "$lm_order" --text "$lang_dir/transcript_words.txt" --out data/lm/${lm_order}gram.arpa
    toolkit compile-graph --lang-dir "$lang_dir" --lm data/lm/${lm_order}gram.arpa
    stage_end
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ] && [ "$pretrain" = true ]; then
  stage_settings "train_split=$train_split" "dev_split=$dev_split" "manifests=$(file_sig data/manifests/.$prefix.done)" \
    "init_checkpoint=$init_checkpoint" "init=$(file_sig "$init_checkpoint")" "pretrain_opts=$pretrain_opts"
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 3 "pretrain a $size model on the $train_split audio in $pretrain_dir" "$pretrain_dir/.done"; then
    init_opt=(); [ -n "$init_checkpoint" ] && init_opt=(--set "train.init=$init_checkpoint")
    $train_cmd --gpu "$ngpus" $pretrain_dir/log/pretrain.log \
      $launcher pretrain $(train_configs pretrain "$size") --set "exp_dir=$pretrain_dir" \
        --set "data.train_cuts=[$(cuts $train_split)]" --set "data.dev_cuts=[$(cuts $dev_split)]" \
        "${init_opt[@]}" $pretrain_opts
    stage_end
  fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  stage_settings "init_model=$(init_sig)" "tokens=$(file_sig $lang_dir/tokens.txt)" "train_split=$train_split" \
    "dev_split=$dev_split" "manifests=$(file_sig data/manifests/.$prefix.done)" "finetune_opts=$finetune_opts" \
    ${scratch_opts[@]:+"scratch_model=$scratch_model"}
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 4 "CTC fine-tuning from $init in $ft_dir" "$ft_dir/.done"; then
    $train_cmd --gpu "$ngpus" $ft_dir/log/finetune.log \
      $launcher finetune $(train_configs finetune "$size") --set "exp_dir=$ft_dir" --set "train.init=$init" \
        --set "data.train_cuts=[$(cuts $train_split)]" --set "data.dev_cuts=[$(cuts $dev_split)]" \
        --set "data.lang_dir=$lang_dir" "${scratch_opts[@]}" $finetune_opts
    stage_end
  fi
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  # the dev split first: its LM weight x insertion penalty sweep chooses what the test splits use
  dev_out=$ft_dir/decode/${prefix}_$dev_split
  sweep_opts=$(lm_tuning_opts sweep "$decode_methods" "$lm_scales" "$word_penalties" "$nj")
  tune_splits=; [ -n "$sweep_opts" ] && tune_splits=$dev_split
  markers=("$ft_dir/decode/.done"); for t in $tune_splits $test_splits; do for m in $decode_methods; do markers+=("$ft_dir/decode/${prefix}_$t/$m/wer-summary.txt"); done; done
  # What every decode depends on; new test splits or methods are decoded beside the old ones.
  stage_settings "model=$(file_sig $ft_dir/.done)" "graph=$(file_sig $lang_dir/.graph.done)" \
    "$(lm_grid_setting "$decode_methods" "$lm_scales" "$word_penalties")" "dev_split=$dev_split"
  stage_resumable  # a killed run leaves checkpoints / decodes that the rerun continues
  if stage_begin 5 "decode ${tune_splits:+$tune_splits (tuning the LM weight) and }$test_splits with: $decode_methods" "${markers[@]}"; then
    apply_opts=
    if [ -n "$tune_splits" ]; then
      decode_cuts "$(best_checkpoint "$ft_dir")" "$(cuts $dev_split)" "$lang_dir" "$decode_methods" "$dev_out" 1 $sweep_opts
      apply_opts=$(lm_tuning_opts apply "$decode_methods" "$lm_scales" "$dev_out")
    fi
    for t in $test_splits; do
      [ "$t" = "$tune_splits" ] && continue
      decode_cuts "$(best_checkpoint "$ft_dir")" "$(cuts $t)" "$lang_dir" "$decode_methods" "$ft_dir/decode/${prefix}_$t" "$nj" $apply_opts
    done
    stage_end
  fi
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  if stage_begin 6 "WER/CER per test set and method into $work_dir/RESULTS.md"; then
    toolkit results --exp-dir "$ft_dir" --out RESULTS.md --title "$recipe_name: $corpus $language, $size model, $token_type units"
    stage_end
  fi
fi
stage_summary
# The headline: CER and WER (%) of the first test split with the last decoding method (hlg by
# default), named after the initialisation: RESULT <prefix>_wer_<scratch|pretrained|checkpoint name>=
report_split=$(echo $test_splits | awk '{print $1}'); report_method=$(echo $decode_methods | awk '{print $NF}')
summary=$ft_dir/decode/${prefix}_$report_split/$report_method/wer-summary.txt
if [ "$stop_stage" -ge 6 ] && [ -f "$summary" ]; then
  echo "RESULT ${prefix}_cer_$init_name=$(awk -F'\t' 'NR == 2 {print $3}' "$summary")"
  echo "RESULT ${prefix}_wer_$init_name=$(awk -F'\t' 'NR == 2 {print $2}' "$summary")"
fi
