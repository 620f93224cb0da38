#!/usr/bin/env bash
# @NAME@: a recipe made by local/new_recipe.sh from the shared stages (recipes/shared/recipe.sh):
# corpus and manifests, lang dir, n-gram LM and HLG graph, wav2vec 2.0 pretraining on the training
# audio (or an imported checkpoint), CTC fine-tuning, decoding and RESULTS.md. What the corpus is
# lives in conf/recipe.conf, how it is fetched in local/data.sh; `./run.sh --help` lists the options.
set -euo pipefail
recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$recipe_dir/../shared/recipe.sh"
