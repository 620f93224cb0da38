# Stage helpers shared by the recipes; sourced by a recipe's run.sh after its options are parsed.
#
#   if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
#     if stage_begin 3 "lang dirs: characters and word pieces" data/lang_char/.done; then
#       toolkit lang-dir ...
#       stage_end
#     fi
#   fi
#
# The one marker protocol: a stage names its markers (`*.done` files) in stage_begin; when all
# exist it prints "... already done, skipping" and returns 1. Markers are written only by these
# helpers, each once: stage_end writes the stage's markers, and a stage that loops over items
# (languages, experiments) skips a finished item with `stage_item_done MARKER` and marks it with
# `stage_item_end MARKER` (stage_end then leaves that marker alone). Other paths given to
# stage_begin are outputs the stage writes itself, only checked. Markers live next to the
# outputs they vouch for, and output directories carry the settings in their names
# (exp/finetune_tiny_10m), so a rerun with other settings does not trust another experiment's.
#
# A marker also records the settings its outputs were made with: `stage_settings KEY=VALUE ...`
# before stage_begin (or, for a stage whose items differ, a function `stage_item_settings MARKER`
# that calls stage_settings for that marker). A marker found with another value of a key it
# records stops the recipe with one line naming the marker, the key and both values: a rerun
# with changed options never reports the old outputs as the new ones'. Settings that name the
# outputs of an earlier stage take that stage's marker identity (`file_sig MARKER`), which
# changes whenever the stage is redone, so a rebuilt graph or model makes the later markers stale.

__stage_n=
__stage_desc=
__stage_t0=
__stage_markers=()
__stage_times=()
__stage_sig=()

# stage_resumable: the next stage continues what a killed run of it left (training resumes its
# checkpoints, decoding keeps finished decodes), so its settings are written when it begins
# (MARKER.started) and a rerun with other settings is refused while its outputs are there.
stage_resumable() { __stage_resumable=true; }
__stage_resumable=false

# stage_settings KEY=VALUE ...: recorded in the next markers; runs of blanks in a value count as one
# (an option list given with an extra space is the same option list).
stage_settings() {
  local kv v
  __stage_sig=()
  for kv in "$@"; do
    v=$(tr -s ' \t' '  ' <<< "${kv#*=}"); v=${v# }; v=${v% }
    __stage_sig+=("${kv%%=*}=$v")
  done
}

# lm_grid_setting "METHODS" "SCALES" "PENALTIES": the LM weight x penalty grid as a stage setting,
# "none" when no method uses an LM weight (greedy alone) or no grid is tried.
lm_grid_setting() {  # the grid counts exactly when lm_tuning_opts would sweep it
  if [ -n "$(lm_tuning_opts sweep "$1" "$2" "$3" 1)" ]; then echo "lm_grid=$2 / $3"; else echo "lm_grid=none"; fi
}

# file_sig PATH: the identity of a file's content (the first 12 hex digits of its MD5; a link is
# followed), or "absent". A marker's changes each time its stage is redone (it holds the time).
file_sig() { if [ -f "$1" ]; then md5sum < "$1" | cut -c1-12; else echo absent; fi; }

_stage_has_outputs() {  # _stage_has_outputs DIR: DIR holds a file besides logs, markers and temporary files
  find "$1" -mindepth 1 \( -path "$1/log" -o -name '.*.started' -o -name '*.tmp.*' \) -prune -o -type f -print 2>/dev/null \
    | grep -q .
}

_stage_settings_for() {  # the settings a marker is checked against / written with
  if declare -F stage_item_settings >/dev/null; then stage_item_settings "$1"; fi
}

_stage_check() {  # _stage_check MARKER: exit 1 when MARKER records another value of a current setting
  local m=$1 line kv k old what=made
  [[ "$m" == *.done ]] || return 0
  # A resumable stage killed before its marker leaves MARKER.started (written when it began): its
  # outputs so far (checkpoints, decodes) are reused by the rerun, so they must match too; when it
  # left nothing but logs (it failed at the start), the rerun starts afresh.
  if [ ! -f "$m" ]; then
    [ -f "$m.started" ] || return 0
    if ! _stage_has_outputs "$(dirname "$m")"; then rm -f "$m.started"; return 0; fi
    m=$m.started what="begun (and not finished)"
  fi
  _stage_settings_for "${m%.started}"
  [ ${#__stage_sig[@]} -gt 0 ] || return 0
  declare -A rec=()
  while IFS= read -r line; do
    [[ "$line" == *=* ]] && rec[${line%%=*}]=${line#*=}
  done < <(tail -n +2 "$m")
  for kv in "${__stage_sig[@]}"; do
    k=${kv%%=*}
    [ -n "${rec[$k]+set}" ] || continue  # a setting this marker's stage did not record (yet)
    old=${rec[$k]}
    if [ "$old" != "${kv#*=}" ]; then
      echo "$0: stage $__stage_n: ${m%.started} was $what with $k='$old', now $k='${kv#*=}': rerun with the" \
           "old setting, or move $(dirname "$m") aside to build it again" >&2
      exit 1
    fi
  done
  return 0
}

stage_begin() {  # stage_begin N "what it does" [marker ...]
  __stage_n=$1
  __stage_desc=$2
  shift 2
  __stage_markers=("$@")
  local m all_done=true
  [ ${#__stage_markers[@]} -gt 0 ] || all_done=false
  for m in "${__stage_markers[@]}"; do
    _stage_check "$m"
    [ -f "$m" ] || all_done=false
  done
  if $all_done; then
    echo "stage $__stage_n: $__stage_desc: already done, skipping"
    __stage_sig=(); __stage_resumable=false; unset -f stage_item_settings
    return 1
  fi
  echo "stage $__stage_n: $__stage_desc"
  if $__stage_resumable; then  # what this run of the stage is made with, until its marker
    for m in "${__stage_markers[@]}"; do
      [[ "$m" == *.done ]] && [ ! -f "$m" ] && [ ! -f "$m.started" ] && _stage_write "$m.started" "$m"
    done
  fi
  __stage_t0=$(date +%s.%N)
  return 0
}

_stage_write() {  # _stage_write FILE MARKER: the time, then MARKER's settings (KEY=VALUE lines), atomically
  local tmp=$1.tmp.$$
  mkdir -p "$(dirname "$1")"
  _stage_settings_for "$2"
  { date '+%Y-%m-%d %H:%M:%S.%N'; [ ${#__stage_sig[@]} -eq 0 ] || printf '%s\n' "${__stage_sig[@]}"; } > "$tmp"
  mv -f "$tmp" "$1"
}

_stage_mark() { _stage_write "$1" "$1"; rm -f "$1.started"; }  # writes one marker: its stage is complete

stage_item_done() { _stage_check "$1"; [ -f "$1" ]; }  # stage_item_done MARKER: this item of the stage is finished
stage_item_end() { _stage_mark "$1"; }      # stage_item_end MARKER: mark one item of the stage finished

stage_end() {  # marks the stage's outputs as complete and reports its time
  local m dt
  for m in "${__stage_markers[@]}"; do
    case "$m" in
      *.done) [ -f "$m" ] || _stage_mark "$m" ;;
      *) [ -e "$m" ] || echo "stage $__stage_n: warning: expected output $m is missing" >&2 ;;
    esac
  done
  __stage_sig=(); __stage_resumable=false; unset -f stage_item_settings  # settings belong to one stage
  dt=$(awk -v a="$__stage_t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  __stage_times+=("stage $__stage_n ($__stage_desc): ${dt} s")
  echo "stage $__stage_n: done in ${dt} s"
}

stage_summary() {  # one line per stage run in this invocation, with its wall time
  local line
  [ ${#__stage_times[@]} -gt 0 ] || return 0
  echo "time per stage:"
  for line in "${__stage_times[@]}"; do echo "  $line"; done
}

# The --config options of a training config: the shared one (recipes/shared/conf) and, when the
# recipe has one of the same name in its conf/, the recipe's own on top (it holds only what differs).
# A recipe file whose first line is "# replaces the shared config" is used alone (e.g. the
# template's finetune_tiny.yaml, which leaves the data-size settings to `toolkit finetune`).
#   train_configs pretrain|finetune SIZE
train_configs() {
  local name=$1_$2.yaml shared_conf
  shared_conf=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/conf
  [ -f "$shared_conf/$name" ] || { echo "$0: no $shared_conf/$name: --size must be tiny, base or large" >&2; return 1; }
  if [ -f "$conf/$name" ] && [ "$(head -n 1 "$conf/$name")" = "# replaces the shared config" ]; then
    echo "--config $conf/$name"
    return 0
  fi
  echo "--config $shared_conf/$name"
  [ -f "$conf/$name" ] && echo "--config $conf/$name"
  return 0
}

# The command that runs `toolkit` for training: plain for one process, torchrun for several
# GPUs on this node (--ngpus N), and a c10d rendezvous across nodes (--nnodes M with
# --rdzv-endpoint HOST:PORT; run the same recipe stage on every node).
#   toolkit_launcher NGPUS [NNODES RDZV_ENDPOINT RDZV_ID]
toolkit_launcher() {
  local ngpus=${1:-1} nnodes=${2:-1} endpoint=${3:-} rdzv_id=${4:-toolkit}
  if [ "$nnodes" -gt 1 ]; then
    [ -n "$endpoint" ] || { echo "$0: --nnodes $nnodes needs --rdzv-endpoint HOST:PORT" >&2; return 1; }
    echo "torchrun --nnodes $nnodes --nproc_per_node $ngpus --rdzv-backend c10d --rdzv-endpoint $endpoint --rdzv-id $rdzv_id -m toolkit.cli"
  elif [ "$ngpus" -gt 1 ]; then
    echo "torchrun --standalone --nproc_per_node $ngpus -m toolkit.cli"
  else
    echo "toolkit"
  fi
}

# Words of a space-separated list, one per line, minus those of a second list.
list_minus() {  # list_minus "a b c" "b" -> "a c"
  local x y keep out=()
  for x in $1; do
    keep=true
    for y in $2; do [ "$x" = "$y" ] && keep=false; done
    $keep && out+=("$x")
  done
  echo "${out[*]}"
}

# A YAML flow list of the words given: yaml_list a b -> [a, b] (for --set key=[...]).
yaml_list() { local IFS=,; echo "[$*]"; }

# `--k2` when k2 imports in this environment (compile-graph then also writes HLG.pt and the
# rescoring G_<n>gram.pt that the k2-* decoding methods read), else nothing.
k2_graph_opt() { python -c "import k2" >/dev/null 2>&1 && echo --k2 || true; }

# The checkpoint a fine-tuning run is decoded with: best.pt (best dev WER), else last.pt.
best_checkpoint() {  # best_checkpoint EXP_DIR
  local f
  for f in "$1/best.pt" "$1/last.pt"; do [ -e "$f" ] && { echo "$f"; return 0; }; done
  echo "$0: no best.pt or last.pt in $1: did fine-tuning finish?" >&2
  return 1
}

# Decode one cut set with every method into OUT_DIR/<method>/ (recogs.txt, errs.txt,
# wer-summary.txt, results.json); methods whose OUT_DIR/<method>/wer-summary.txt exists are
# skipped. With NJ > 1 the cuts are split with `lhotse split`, the parts
# decoded as $decode_cmd jobs (one forward pass per part serves every method), and each
# method's jobs scored once together (`toolkit score --decode-dirs`), so the numbers equal those
# of a single job.
#   decode_cuts CHECKPOINT CUTS LANG_DIR "METHOD ..." OUT_DIR NJ [extra toolkit decode options]
decode_cuts() {
  local ckpt=$1 cuts=$2 lang_dir=$3 methods= out=$5 nj=$6 j m ncuts
  for m in $4; do [ -f "$out/$m/wer-summary.txt" ] || methods+=" $m"; done
  methods=${methods# }
  shift 6
  [ -n "$methods" ] || return 0
  mkdir -p "$out/log"
  ncuts=$(gzip -dc "$cuts" | wc -l)
  [ "$nj" -le "$ncuts" ] || nj=$ncuts  # lhotse cannot split 5 cuts 12 ways
  if [ "$nj" -le 1 ]; then
    $decode_cmd "$out/log/decode.log" toolkit decode --checkpoint "$ckpt" --cuts "$cuts" \
      --lang-dir "$lang_dir" --methods "${methods// /,}" --out-dir "$out" "$@"
    return
  fi
  rm -rf "$out/split"
  lhotse split --no-pad -i 1 "$nj" "$cuts" "$out/split" >/dev/null
  local base; base=$(basename "$cuts" .jsonl.gz)
  $decode_cmd JOB=1:$nj "$out/log/decode.JOB.log" toolkit decode --checkpoint "$ckpt" \
    --cuts "$out/split/$base.JOB.jsonl.gz" --lang-dir "$lang_dir" --methods "${methods// /,}" \
    --out-dir "$out/split/JOB" "$@"
  for m in $methods; do
    toolkit score --decode-dirs $(for j in $(seq 1 "$nj"); do echo "$out/split/$j/$m"; done) \
      --out-dir "$out/$m" --key "$m" --cuts "$cuts" > "$out/log/score.$m.log"
  done
}

# The `toolkit decode` options of the LM weight x word insertion penalty tuning: `sweep` on a dev
# set (one job with NJ WFST workers, as the choice needs every utterance: tuning.json per method),
# `apply` on the other sets (--tuning-from the dev decode dir). Nothing when SCALES is empty or no
# method has an LM (hlg, hlg-rescore, k2-hlg, k2-nbest-rescore, k2-whole-lattice-rescore).
#   lm_tuning_opts sweep "METHODS" "SCALES" "PENALTIES" NJ | lm_tuning_opts apply "METHODS" "SCALES" DEV_DECODE_DIR
lm_tuning_opts() {
  local mode=$1 methods=$2 scales=$3 m tunable=false
  for m in $methods; do case "$m" in hlg|hlg-rescore|k2-hlg|k2-*-rescore) tunable=true ;; esac; done
  { [ -n "$scales" ] && $tunable; } || return 0
  if [ "$mode" = sweep ]; then
    echo "--sweep-lm-scales=${scales// /,} ${4:+--sweep-word-penalties=${4// /,}} --nj $5"  # "=": a list may start with "-"
  else
    echo "--tuning-from $4"
  fi
}
