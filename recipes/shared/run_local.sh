#!/usr/bin/env bash
# A local job runner with Kaldi run.pl's calling convention:
#
#   run_local.sh [options] [JOB=1:N] LOGFILE COMMAND...
#
# With JOB=1:N the command runs N times (at most --max-jobs-run at once), the string JOB in
# LOGFILE and in the command replaced by the job index. Each job's output goes to its log,
# framed by the command line, start/end time and exit code. Arguments without whitespace are
# passed raw (so a quoted \| or \> acts as a shell operator, as in Kaldi), others are quoted.
# --num-threads N sets OMP_NUM_THREADS of each job; without it, the jobs of an array of more
# than one share the CPUs with one thread each, and a single job keeps the caller's setting.
# Options --gpu, --mem, --time are accepted for compatibility with the Slurm runner and
# ignored here. Exit status: 0 when every job succeeded, 1 otherwise; on failure
# the tail of the first failed log is printed.
set -uo pipefail

max_jobs_run=$(nproc 2>/dev/null || echo 2)
num_threads=
while [ $# -gt 0 ]; do
  case "$1" in
    --max-jobs-run) max_jobs_run=$2; shift 2 ;;
    --num-threads) num_threads=$2; shift 2 ;;
    --gpu|--mem|--time) shift 2 ;;
    --*) echo "$0: unknown option $1" >&2; exit 1 ;;
    *) break ;;
  esac
done

jobvar= first=1 last=1
if [[ ${1:-} =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
  jobvar=${BASH_REMATCH[1]} first=${BASH_REMATCH[2]} last=${BASH_REMATCH[3]}
  shift
  [ "$first" -le "$last" ] || { echo "$0: empty job range $jobvar=$first:$last" >&2; exit 1; }
fi
[ $# -ge 2 ] || { echo "usage: $0 [--max-jobs-run N] [JOB=1:N] LOGFILE COMMAND..." >&2; exit 1; }
logfile=$1; shift
if [ -n "$jobvar" ] && [[ $logfile != *"$jobvar"* ]] && [ "$first" -ne "$last" ]; then
  echo "$0: with $jobvar=$first:$last the log file name must contain $jobvar (got $logfile)" >&2; exit 1
fi

if [ -n "$num_threads" ]; then export OMP_NUM_THREADS=$num_threads
elif [ "$first" -ne "$last" ]; then export OMP_NUM_THREADS=1
fi

cmd=
for a in "$@"; do
  if [[ $a =~ ^[^[:space:]]+$ ]]; then cmd+="$a "; else cmd+="$(printf '%q' "$a") "; fi
done

run_one() {  # run_one INDEX
  local i=$1 log=$logfile c=$cmd t0 rc
  if [ -n "$jobvar" ]; then log=${logfile//$jobvar/$i}; c=${cmd//$jobvar/$i}; fi
  mkdir -p "$(dirname "$log")"
  t0=$(date +%s)
  {
    echo "# $c"
    echo "# Started at $(date)"
  } > "$log"
  bash -c "$c" >> "$log" 2>&1
  rc=$?
  {
    echo "# Accounting: time=$(( $(date +%s) - t0 )) threads=${OMP_NUM_THREADS:-all}"
    echo "# Ended (code $rc) at $(date)"
  } >> "$log"
  return $rc
}

declare -A pids=()
failed=()
for ((i = first; i <= last; i++)); do
  while [ ${#pids[@]} -ge "$max_jobs_run" ]; do
    wait -n -p done_pid; rc=$?
    [ $rc -eq 0 ] || failed+=("${pids[$done_pid]}")
    unset "pids[$done_pid]"
  done
  run_one "$i" &
  pids[$!]=$i
done
for pid in "${!pids[@]}"; do
  wait "$pid" || failed+=("${pids[$pid]}")
done

if [ ${#failed[@]} -gt 0 ]; then
  n=$((last - first + 1))
  first_failed=$(printf '%s\n' "${failed[@]}" | sort -n | head -1)
  log=$logfile; [ -n "$jobvar" ] && log=${logfile//$jobvar/$first_failed}
  echo "$0: ${#failed[@]} / $n failed, log is in $log; its last lines:" >&2
  tail -n 15 "$log" | sed 's/^/    /' >&2
  exit 1
fi
exit 0
