# Job launchers, Kaldi/ESPnet convention: sourced by run.sh; every heavy step is called as
#
#   $train_cmd  [--gpu N] LOGFILE COMMAND...         (training)
#   $decode_cmd JOB=1:N   LOGFILE.JOB.log COMMAND... (decoding split into N jobs)
#
# cmd_backend=local (default) runs the jobs on this machine (recipes/shared/run_local.sh,
# a run.pl work-alike); cmd_backend=slurm submits them with `sbatch --wait`
# (recipes/shared/run_slurm.sh) and takes extra sbatch options from $slurm_opts.
# Choose in the environment (cmd_backend=slurm ./run.sh ...) or edit the defaults here.
# Multi-GPU training is not a backend but a launcher: a recipe's --ngpus N runs the training
# command through torchrun (see docs/recipes.md for multi-node rendezvous).

__cmd_root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cmd_backend=${cmd_backend:-local}

case "$cmd_backend" in
  local)
    export train_cmd="$__cmd_root/recipes/shared/run_local.sh"
    export decode_cmd="$__cmd_root/recipes/shared/run_local.sh"
    ;;
  slurm)
    export slurm_opts=${slurm_opts:-}  # e.g. "--partition gpu --account myproject"
    export train_cmd="$__cmd_root/recipes/shared/run_slurm.sh --num-threads 8 --mem 64G --time 3-00:00:00"
    export decode_cmd="$__cmd_root/recipes/shared/run_slurm.sh --num-threads 2 --mem 8G"
    ;;
  *)
    echo "cmd.sh: unknown cmd_backend '$cmd_backend' (use local or slurm)" >&2
    return 1 2>/dev/null || exit 1
    ;;
esac
unset __cmd_root
