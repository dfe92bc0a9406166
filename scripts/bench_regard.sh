#!/usr/bin/env bash
# Regard scorer throughput on this machine: `equirun regard score --scorer minilm-probe` vs the same
# MiniLM encoder in PyTorch (scripts/bench_regard_torch.py), on the first N of Sheng et al.'s real
# GPT-2 samples, back to back. Needs scripts/setup_minilm.sh and the venv of scripts/setup_python.sh.
#   scripts/bench_regard.sh [N=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000}"
PY="${EQUIRUN_VENV:-/work/venv}/bin/python"
SAMPLES="${EQUIRUN_DATA:-../shared/data}/nlg-bias/data/generated_samples/small_gpt2_generated_samples.tsv"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
head -n "$N" "$SAMPLES" > "$TMP/samples.txt"
head -n "$N" "$SAMPLES.XYZ" > "$TMP/masked.txt"
cargo build --release -q
target/release/equirun regard train --out "$TMP" >/dev/null 2>&1
EQUIRUN_NO_PROGRESS=1 target/release/equirun regard score --input "$TMP/samples.txt" \
    --probe "$TMP/regard-train/minilm-probe.safetensors" --out "$TMP/res" --bootstrap 10 >/dev/null 2>"$TMP/err" \
    || { cat "$TMP/err"; exit 1; }
grep "texts/s" "$TMP/err"
"$PY" scripts/bench_regard_torch.py "$TMP/masked.txt" --limit "$N" 2>/dev/null | tail -1
