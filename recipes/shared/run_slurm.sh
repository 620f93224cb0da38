#!/usr/bin/env bash
# The Slurm runner, same calling convention as run_local.sh (Kaldi's slurm.pl):
#
#   run_slurm.sh [--gpu N] [--num-threads N] [--mem 8G] [--time 2-00:00:00] [JOB=1:N] LOGFILE COMMAND...
#
# Writes a batch script next to the log (LOGDIR/q/NAME.sh) that runs the command in the
# current directory with the current environment, and submits it with `sbatch --wait`
# (a job array for JOB=1:N; JOB becomes $SLURM_ARRAY_TASK_ID), so the recipe blocks until
# the jobs end and fails when one fails. Extra sbatch options (partition, account, ...) come
# from $slurm_opts, e.g. slurm_opts="--partition gpu --account myproj" in cmd.sh.
set -euo pipefail

gpu=0 threads=1 mem= time_limit=
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) gpu=$2; shift 2 ;;
    --num-threads) threads=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --time) time_limit=$2; shift 2 ;;
    --max-jobs-run) shift 2 ;;  # Slurm schedules; kept for run.pl compatibility
    --*) echo "$0: unknown option $1" >&2; exit 1 ;;
    *) break ;;
  esac
done
command -v sbatch >/dev/null || { echo "$0: sbatch not found: set cmd_backend=local in cmd.sh or run on a Slurm login node" >&2; exit 1; }

jobvar= first=1 last=1
if [[ ${1:-} =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
  jobvar=${BASH_REMATCH[1]} first=${BASH_REMATCH[2]} last=${BASH_REMATCH[3]}
  shift
fi
[ $# -ge 2 ] || { echo "usage: $0 [options] [JOB=1:N] LOGFILE COMMAND..." >&2; exit 1; }
logfile=$1; shift
cmd=
for a in "$@"; do
  if [[ $a =~ ^[^[:space:]]+$ ]]; then cmd+="$a "; else cmd+="$(printf '%q' "$a") "; fi
done

logdir=$(dirname "$logfile")
name=$(basename "$logfile" .log); name=${name//$jobvar/}; name=${name//../.}
mkdir -p "$logdir/q"
script=$logdir/q/${name}.sh
slurm_log=$logfile
if [ -n "$jobvar" ]; then
  cmd=${cmd//$jobvar/\$\{SLURM_ARRAY_TASK_ID\}}
  slurm_log=${logfile//$jobvar/%a}
fi
{
  echo "#!/usr/bin/env bash"
  echo "cd $(printf '%q' "$PWD")"
  echo "echo \"# $cmd\"; echo \"# Started at \$(date) on \$(hostname)\""
  echo "$cmd"
  echo "rc=\$?; echo \"# Ended (code \$rc) at \$(date)\"; exit \$rc"
} > "$script"

opts=(--wait --export=ALL --job-name "$name" --output "$slurm_log" --cpus-per-task "$threads")
[ -n "$jobvar" ] && opts+=(--array "$first-$last")
[ "$gpu" -gt 0 ] && opts+=(--gres "gpu:$gpu")
[ -n "$mem" ] && opts+=(--mem "$mem")
[ -n "$time_limit" ] && opts+=(--time "$time_limit")
# shellcheck disable=SC2086  # slurm_opts is a list of options by design
if ! sbatch "${opts[@]}" ${slurm_opts:-} "$script" >/dev/null; then
  echo "$0: Slurm job failed; logs: $slurm_log (script $script)" >&2
  exit 1
fi
