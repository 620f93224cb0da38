#!/usr/bin/env bash
# Installs what is missing (local/install.sh), then runs the test suite.
# Default: the fast tests. --all true (or CI=true in the environment): the slow ones too.
# Extra arguments after the options go to pytest, e.g. local/run_tests.sh tests/test_score.py -k bootstrap
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

all=false
[ "${CI:-}" = true ] && all=true
help_message="Usage: local/run_tests.sh [--all true|false] [pytest args...]
  --all true   also run tests marked slow (end-to-end recipes, large architectures); default under CI=true"
. local/parse_options.sh

local/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export PATH=$top/.venv/bin:$PATH  # the programs install.sh put there (lmplz), as path.sh does for the recipes
marker=(-m "not slow")
[ "$all" = true ] && marker=()
set +e
.venv/bin/python -m pytest -q -ra --durations=15 "${marker[@]}" "$@"
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
