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
# pytest exit 5 means "no tests collected": that is a failure of the suite, not a pass.
exit $rc
