# Option parsing with Kaldi's semantics; source it after setting the defaults:
#
#   stage=0; stop_stage=100; use_gpu=false
#   help_message="Usage: $0 [options]"
#   . local/parse_options.sh
#
# --foo-bar VALUE (or --foo_bar VALUE) sets the existing shell variable foo_bar.
# An option whose variable is not already set is an error; a variable holding true/false
# only takes true/false; --name=value is rejected; --config FILE files are sourced first
# (in order), so the command line overrides them; --help/-h prints $help_message and exits 0.
# Parsing stops at the first argument that does not start with --; what is left in "$@"
# is the positional arguments.

__po_fail() { echo "$0: $*" >&2; exit 1; }

# Pass 1: config files, so that explicit options override them.
__po_i=1
while [ $__po_i -le $# ]; do
  __po_arg=${!__po_i}
  case "$__po_arg" in
    --config)
      __po_j=$((__po_i + 1))
      [ $__po_j -le $# ] || __po_fail "option --config needs a file argument"
      __po_cfg=${!__po_j}
      [ -r "$__po_cfg" ] || __po_fail "cannot read config file '$__po_cfg' given with --config"
      . "$__po_cfg" || __po_fail "error sourcing config file '$__po_cfg'"
      __po_i=$((__po_i + 2)) ;;
    --*) __po_i=$((__po_i + 2)) ;;
    *) break ;;
  esac
done

# Pass 2: the options themselves.
while true; do
  [ $# -eq 0 ] && break
  [ -z "$1" ] && break
  case "$1" in
    --help|-h)
      if [ -z "${help_message:-}" ]; then echo "No help found." >&2; else printf "%s\n" "$help_message" >&2; fi
      exit 0 ;;
    --*=*)
      __po_fail "options to scripts must be of the form --name value, got '$1'" ;;
    --config)
      shift 2 ;;
    --*)
      __po_name=$(echo "$1" | sed 's/^--//; s/-/_/g')
      case "$__po_name" in
        ''|[0-9]*|*[!A-Za-z0-9_]*) __po_fail "invalid option $1" ;;
      esac
      if ! declare -p "$__po_name" >/dev/null 2>&1; then
        __po_fail "invalid option $1 (see $0 --help)"
      fi
      [ $# -ge 2 ] || __po_fail "option $1 needs a value"
      __po_old=${!__po_name}
      if [ "$__po_old" = true ] || [ "$__po_old" = false ]; then
        [ "$2" = true ] || [ "$2" = false ] || __po_fail "expected \"true\" or \"false\" for $1, got '$2'"
      fi
      printf -v "$__po_name" '%s' "$2"
      shift 2 ;;
    *) break ;;
  esac
done
unset __po_i __po_j __po_arg __po_cfg __po_name __po_old
true
