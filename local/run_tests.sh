#!/usr/bin/env bash
# Installs what is missing (local/install.sh), then runs the test suite.
# Default: the fast tests. --all true (or CI=true in the environment): the slow ones too.
# Extra arguments after the options go to pytest, e.g. local/run_tests.sh tests/test_score.py -k bootstrap
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

all=false
[ "${CI:-}" = true ] && all=true
cores=$(nproc 2>/dev/null || echo 1)
jobs=$cores
help_message="Usage: local/run_tests.sh [--all true|false] [--jobs N] [pytest args...]
  --all true   also run tests marked slow (end-to-end recipes, large architectures); default under CI=true
  --jobs N     tests run in N processes (pytest-xdist), each with cores/N threads ($jobs here);
               --jobs 1 runs them in this process, one after the other"
. local/parse_options.sh

case "$jobs" in ''|*[!0-9]*|0) echo "$0: --jobs must be a positive integer, got '$jobs'" >&2; exit 1 ;; esac

local/install.sh
# Threads per test process: the cores shared among the workers (never more threads than cores).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / jobs > 0 ? cores / jobs : 1 ))}
export PATH=$top/.venv/bin:$PATH  # the programs install.sh put there (lmplz), as path.sh does for the recipes
marker=(-m "not slow")
[ "$all" = true ] && marker=()
set +e
# Parallel: tests sharing a module's fixture stay in one worker, slow tests start first (tests/conftest.py).
parallel=()
[ "$jobs" -gt 1 ] && parallel=(-n "$jobs" --dist loadgroup --no-loadscope-reorder)
.venv/bin/python -m pytest -q -ra --durations=15 "${parallel[@]}" "${marker[@]}" "$@"
rc=$?
set -e
# tests/test_k2.py skips itself without k2: say so on one line, so a skipped k2 suite is never silent.
.venv/bin/python - <<'PY' || true
try:
    import k2
    from k2.version import __version__
    print(f"k2 tests (tests/test_k2.py): RUN with k2 {__version__} from {k2.__file__.rsplit('/k2/', 1)[0]}")
except Exception as e:  # ImportError, or k2 built for another torch (RuntimeError/ImportError)
    why = " ".join(str(e).split())[:200] or type(e).__name__
    print(f"k2 tests (tests/test_k2.py): SKIPPED, k2 does not import ({why}); build it with local/install_k2.sh")
PY
# pytest exit 5 means "no tests collected": that is a failure of the suite, not a pass.
exit $rc
