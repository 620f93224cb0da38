# Job launchers for this recipe: the toolkit-wide Kaldi-style cmd.sh (train_cmd, decode_cmd;
# cmd_backend=local|slurm). Override here for this recipe only, e.g.
#   decode_cmd="$TOOLKIT_ROOT/recipes/shared/run_slurm.sh --num-threads 4 --mem 16G"
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/cmd.sh"
