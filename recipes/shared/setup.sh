# Sourced by every recipe's run.sh right after its option defaults and help_message (Kaldi
# order): parses the options (they may change work_dir), then loads the recipe's environment
# (path.sh), job commands (cmd.sh) and the stage helpers, and enters the work dir.
# Needs recipe_dir and work_dir; sets conf. Options are the caller's: sourcing without arguments
# shares its positional parameters, so parse_options.sh consumes them.
. "$recipe_dir/../../local/parse_options.sh"
. "$recipe_dir/path.sh"
. "$recipe_dir/cmd.sh"
. "$recipe_dir/../shared/stages.sh"

# Paths given on the command line are relative to where the recipe was started, not to the work
# dir entered below: make them absolute first (synth_text holds LANG=FILE pairs).
# One spelling per folder or file (no ./, //, trailing /): stage markers record these paths.
for _v in corpus_dir init_checkpoint lm_dir lm_text; do
  [ -z "${!_v:-}" ] || printf -v "$_v" '%s' "$(realpath -ms -- "${!_v}")"
done
if [ -n "${synth_text:-}" ]; then
  _abs=; for _e in $synth_text; do
    _f=${_e#*=}; case $_f in /*) ;; *) _f=$PWD/$_f ;; esac; _abs+=" ${_e%%=*}=$_f"
  done; synth_text=${_abs# }
fi
mkdir -p "$work_dir"
cd "$work_dir"
# One recipe run per work dir at a time: two at once raced in decoding (each reported the other's
# LM weights, exit 0). The lock is held by every process the run starts, so a training job left
# running by a killed run still holds it. Multi-node training runs the recipe on every node of a
# shared work dir: no lock there.
if [ "${nnodes:-1}" -le 1 ] && command -v flock >/dev/null 2>&1; then
  exec 9>>.recipe.lock
  flock -n 9 || { echo "$0: another recipe run is using $PWD (it holds $PWD/.recipe.lock); wait for it to end or use another --work-dir" >&2; exit 1; }
fi
conf=$recipe_dir/conf
