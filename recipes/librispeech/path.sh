# Environment of the recipe (ESPnet/Kaldi path.sh): the toolkit's virtual environment first
# on PATH, UTF-8 I/O, one intra-op thread per process unless the caller chose otherwise.
TOOLKIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export TOOLKIT_ROOT
if [ ! -x "$TOOLKIT_ROOT/.venv/bin/toolkit" ] && ! command -v toolkit >/dev/null 2>&1; then
  echo "path.sh: toolkit is not installed; run $TOOLKIT_ROOT/local/install.sh first" >&2
  return 1 2>/dev/null || exit 1
fi
export PATH=$TOOLKIT_ROOT/.venv/bin:$PATH
export PYTHONIOENCODING=UTF-8
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Keep tqdm bars out of job logs when not on a terminal.
[ -t 1 ] || export TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}
