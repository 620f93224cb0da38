# Environment of this recipe: the toolkit-wide one (recipes/shared/path.sh: the virtual
# environment on PATH, UTF-8 I/O, thread defaults). Add recipe-specific exports below.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/../shared" && pwd)/path.sh"
