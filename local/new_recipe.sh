#!/usr/bin/env bash
# Creates recipes/NAME, a recipe built from the shared stages (recipes/shared/template) for a
# corpus that `toolkit prepare` reads through Lhotse, in one language. Two files describe the
# corpus and are the only ones to edit: conf/recipe.conf (what it is) and local/data.sh (how it
# gets onto disk); see the README.md written into the new recipe.
#   local/new_recipe.sh [--corpus commonvoice|librispeech] [--language CODE] NAME
#   local/new_recipe.sh --corpus lhotse --lhotse-recipe RECIPE --language CODE [--train-split S ...] NAME
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

corpus=commonvoice
language=
lhotse_recipe=
train_split=train
dev_split=dev
test_splits=test
force=false
help_message="Usage: local/new_recipe.sh [options] NAME
Creates recipes/NAME from the shared stages (data, lang dir, LM+graph, pretraining,
fine-tuning, decoding, RESULTS.md).
  --corpus commonvoice|librispeech|lhotse   corpus read by toolkit prepare ($corpus); lhotse: any
                                     corpus lhotse has a recipe for (toolkit prepare lhotse)
  --language CODE                    language (required for commonvoice and lhotse; librispeech: en)
  --lhotse-recipe NAME               --corpus lhotse: lhotse's recipe (lhotse.recipes.prepare_NAME)
  --train-split S / --dev-split S / --test-splits \"S ...\"   --corpus lhotse: the split names
                                     its recipe returns ($train_split / $dev_split / $test_splits)
  --force true                       overwrite an existing recipes/NAME ($force)
Then: cd recipes/NAME && ./run.sh --synthetic true   (or point --corpus-dir at the real corpus)"
. "$top/local/parse_options.sh"

[ $# -eq 1 ] || { printf '%s\n' "$help_message" >&2; exit 1; }
name=$1
[[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "$0: recipe name '$name' must be letters, digits, _ . -" >&2; exit 1; }
case "$name" in shared|librispeech|commonvoice|fsdd) echo "$0: recipes/$name is one of the toolkit's own; choose another name" >&2; exit 1 ;; esac
dest=$top/recipes/$name
if [ -e "$dest" ] && [ "$force" != true ]; then
  echo "$0: $dest exists; remove it or pass --force true" >&2; exit 1
fi

case "$corpus" in
  commonvoice)
    [ -n "$language" ] || { echo "$0: --language CODE is required for --corpus commonvoice (e.g. --language sw)" >&2; exit 1; }
    prefix=cv-$language train=train dev=dev tests="dev test" ;;
  librispeech)
    language=${language:-en}
    prefix=librispeech train=train-clean-100 dev=dev-clean tests="dev-clean test-clean" ;;
  lhotse)
    [ -n "$lhotse_recipe" ] && [ -n "$language" ] || {
      echo "$0: --corpus lhotse needs --lhotse-recipe NAME and --language CODE" >&2; exit 1; }
    prefix=$lhotse_recipe train=$train_split dev=$dev_split tests=$test_splits ;;
  *) echo "$0: --corpus must be commonvoice, librispeech or lhotse (what toolkit prepare reads), got '$corpus'" >&2; exit 1 ;;
esac

template=$top/recipes/shared/template
rm -rf "$dest"
mkdir -p "$dest/conf" "$dest/local"
subst() {
  sed -e "s|@NAME@|$name|g" -e "s|@CORPUS@|$corpus|g" -e "s|@LANGUAGE@|$language|g" -e "s|@PREFIX@|$prefix|g" -e "s|@LHOTSE_RECIPE@|$lhotse_recipe|g" \
      -e "s|@TRAIN@|$train|g" -e "s|@DEV@|$dev|g" -e "s|@TESTS@|$tests|g" "$1" > "$2"
}
subst "$template/run.sh" "$dest/run.sh"
subst "$template/conf/recipe.conf" "$dest/conf/recipe.conf"
subst "$template/local/data.sh" "$dest/local/data.sh"
subst "$template/README.md" "$dest/README.md"
chmod +x "$dest/run.sh" "$dest/local/data.sh"
cp "$top/recipes/commonvoice/path.sh" "$top/recipes/commonvoice/cmd.sh" "$dest/"
# training configs: recipes/shared/conf/ (a file of the same name in $dest/conf/ overrides what differs)
# tiny fine-tuning with the data-size settings left to `toolkit finetune` (toolkit/train/auto.py)
cp "$template/conf/finetune_tiny.yaml" "$dest/conf/"
echo "created $dest ($corpus, $language): edit conf/recipe.conf and local/data.sh, then cd recipes/$name && ./run.sh --help"
