#!/usr/bin/env bash
# Regard scorer throughput on this machine: `equirun regard score` vs the same MiniLM encoder in
# PyTorch (scripts/bench_regard_torch.py), on the first N of Sheng et al.'s real GPT-2 samples,
# back to back, for the fine-tuned scorer (minilm-ft, the folder of SCORER_DIR, default
# ~/.cache/equirun/regard/minilm-ft) and the probe (minilm-probe). Also reports how many labels
# PyTorch and equirun agree on for minilm-ft. Needs scripts/setup_minilm.sh, the venv of
# scripts/setup_python.sh and a trained minilm-ft folder (`equirun regard finetune`).
# With ENCODERS=mpnet (or "minilm mpnet") it benchmarks mpnet-ft (MPNET_SCORER_DIR, default
# ~/.cache/equirun/regard/mpnet-ft; scripts/setup_mpnet.sh) instead/as well: equirun and PyTorch
# alternate, REPEATS times (default 2), and the labels of both are compared.
#   scripts/bench_regard.sh [N=1000] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000}"; THREADS="${2:-2}"
PY="${EQUIRUN_VENV:-$HOME/.cache/equirun/venv}/bin/python"
SAMPLES="${EQUIRUN_DATA:-../shared/data}/nlg-bias/data/generated_samples/small_gpt2_generated_samples.tsv"
SCORER_DIR="${SCORER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/equirun/regard/minilm-ft}"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
head -n "$N" "$SAMPLES" > "$TMP/samples.txt"
head -n "$N" "$SAMPLES.XYZ" > "$TMP/masked.txt"
cargo build --release -q
export EQUIRUN_NO_PROGRESS=1 RAYON_NUM_THREADS="$THREADS"
ENCODERS="${ENCODERS:-minilm}"
if [[ " $ENCODERS " == *" mpnet "* ]]; then
    MDIR="${MPNET_SCORER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/equirun/regard/mpnet-ft}"
    MM="$("$PY" -c "import json,sys; print(','.join('$MDIR/'+m for m in json.load(open('$MDIR/scorer.json'))['members']))")"
    for rep in $(seq "${REPEATS:-2}"); do
        echo "== mpnet-ft ($MM), round $rep"
        target/release/equirun regard score --input "$TMP/samples.txt" --scorer mpnet-ft --scorer-dir "$MDIR" \
            --out "$TMP/res" --run-name "mp$rep" --bootstrap 10 >/dev/null 2>"$TMP/err" || { cat "$TMP/err"; exit 1; }
        grep "texts/s" "$TMP/err"
        "$PY" scripts/bench_regard_torch.py "$TMP/masked.txt" --encoder mpnet --limit "$N" --threads "$THREADS" \
            --finetuned "$MM" --labels-out "$TMP/torch-mp.txt" 2>/dev/null | tail -1
    done
    cut -f5 "$TMP/res/regard-score/mp1/seed-0.labels.tsv" | tail -n +2 > "$TMP/equirun-mp.txt"
    echo "labels equal to PyTorch's: $(paste "$TMP/equirun-mp.txt" "$TMP/torch-mp.txt" | awk '$1==$2' | wc -l) / $N"
fi
[[ " $ENCODERS " == *" minilm "* ]] || exit 0
MEMBERS="$("$PY" -c "import json,sys; print(','.join('$SCORER_DIR/'+m for m in json.load(open('$SCORER_DIR/scorer.json'))['members']))")"
echo "== minilm-ft ($MEMBERS)"
target/release/equirun regard score --input "$TMP/samples.txt" --scorer minilm-ft --scorer-dir "$SCORER_DIR" \
    --out "$TMP/res" --run-name ft --bootstrap 10 >/dev/null 2>"$TMP/err" || { cat "$TMP/err"; exit 1; }
grep "texts/s" "$TMP/err"
"$PY" scripts/bench_regard_torch.py "$TMP/masked.txt" --limit "$N" --threads "$THREADS" --finetuned "$MEMBERS" \
    --labels-out "$TMP/torch-labels.txt" 2>/dev/null | tail -1
cut -f5 "$TMP/res/regard-score/ft/seed-0.labels.tsv" | tail -n +2 > "$TMP/equirun-labels.txt"
echo "labels equal to PyTorch's: $(paste "$TMP/equirun-labels.txt" "$TMP/torch-labels.txt" | awk '$1==$2' | wc -l) / $N"
echo "== minilm-probe"
target/release/equirun regard train --out "$TMP" >/dev/null 2>&1
target/release/equirun regard score --input "$TMP/samples.txt" --scorer minilm-probe \
    --probe "$TMP/regard-train/minilm-probe.safetensors" --out "$TMP/res" --run-name probe --bootstrap 10 >/dev/null 2>"$TMP/err" \
    || { cat "$TMP/err"; exit 1; }
grep "texts/s" "$TMP/err"
"$PY" scripts/bench_regard_torch.py "$TMP/masked.txt" --limit "$N" --threads "$THREADS" 2>/dev/null | tail -1
