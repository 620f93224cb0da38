# Environment of the recipes (ESPnet/Kaldi path.sh), sourced by each recipe's path.sh: the toolkit's virtual environment first
# on PATH, UTF-8 I/O. Threads: a single job uses PyTorch's default (all cores) unless
# OMP_NUM_THREADS is set; parallel jobs get one thread each from the job runner.
TOOLKIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export TOOLKIT_ROOT
if [ ! -x "$TOOLKIT_ROOT/.venv/bin/toolkit" ] && ! command -v toolkit >/dev/null 2>&1; then
  echo "path.sh: toolkit is not installed; run $TOOLKIT_ROOT/local/install.sh first" >&2
  return 1 2>/dev/null || exit 1
fi
export PATH=$TOOLKIT_ROOT/.venv/bin:$PATH
export PYTHONIOENCODING=UTF-8
export PYTHONUNBUFFERED=1
# Keep tqdm bars out of job logs when not on a terminal.
[ -t 1 ] || export TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}
