#!/usr/bin/env bash
# The MPNet regard-scorer candidates of docs/fairness.md ("Offline regard scorers"): top-N
# fine-tuning of all-mpnet-base-v2 (scripts/setup_mpnet.sh) with 3 seeds each, on train.tsv or
# train_other.tsv, plus the mpnet-probe. Each candidate's folder gets report.json (per-seed and
# vote dev/test accuracy, macro-F1, per-class recall); selection is on dev only.
#
#   scripts/regard_mpnet_sweep.sh OUT_DIR [CONFIG ...]
#
# CONFIG = top-layers:lr:train_set, e.g. 2:1e-4:train (default: a small grid). Then
#   python3 scripts/regard_candidates.py OUT_DIR   prints the candidate table.
set -euo pipefail
OUT="${1:?usage: scripts/regard_mpnet_sweep.sh OUT_DIR [top:lr:train_set ...]}"; shift
BIN="${EQUIRUN_BIN:-$(dirname "$0")/../target/release/equirun}"
CONFIGS=("$@")
[[ ${#CONFIGS[@]} -gt 0 ]] || CONFIGS=(2:1e-4:train 4:1e-4:train 2:1e-4:train_other 1:2e-4:train)
mkdir -p "$OUT"
if [[ ! -f "$OUT/probe/mpnet-probe.json" ]]; then
    "$BIN" regard train --encoder mpnet --save "$OUT/probe/mpnet-probe.safetensors" > "$OUT/probe.log" 2>&1
fi
for c in "${CONFIGS[@]}"; do
    IFS=: read -r top lr set <<< "$c"
    name="top${top}-lr${lr}-${set}"
    [[ -f "$OUT/$name/report.json" ]] && continue
    echo "== $name ($(date -u +%H:%M:%S))" >&2
    /usr/bin/time -f "%e s wall" "$BIN" regard finetune --encoder mpnet --top-layers "$top" --lr "$lr" \
        --train-set "$set" --epochs 12 --patience 4 --seeds 0,1,2 --save-dir "$OUT/$name" \
        > "$OUT/$name.log" 2>&1
    tail -3 "$OUT/$name.log" >&2
done
