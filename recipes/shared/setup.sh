# Sourced by every recipe's run.sh right after its option defaults and help_message (Kaldi
# order): parses the options (they may change work_dir), then loads the recipe's environment
# (path.sh), job commands (cmd.sh) and the stage helpers, and enters the work dir.
# Needs recipe_dir and work_dir; sets conf. Options are the caller's: sourcing without arguments
# shares its positional parameters, so parse_options.sh consumes them.
. "$recipe_dir/../../local/parse_options.sh"
. "$recipe_dir/path.sh"
. "$recipe_dir/cmd.sh"
. "$recipe_dir/../shared/stages.sh"

mkdir -p "$work_dir"
cd "$work_dir"
conf=$recipe_dir/conf
