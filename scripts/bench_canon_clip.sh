#!/usr/bin/env bash
# images/s of vanilla, canon, equitune and multi-equitune over rot90xflip on a CLIP checkpoint,
# batches alternating between the methods in one run (canon: 1 CLIP pass + 8 tiny scorer passes).
#   scripts/bench_canon_clip.sh [MODEL_DIR]
# MODEL_DIR defaults to the ViT-B/32-shaped random checkpoint of scripts/bench_clip.sh
# ($BENCH_DIR/clip-b32, made by scripts/make_random_clip.py).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${BENCH_DIR:-/tmp/equirun-bench}/clip-b32}
[ -f "$DIR/model.safetensors" ] || { echo "no checkpoint at $DIR: run scripts/bench_clip.sh first" >&2; exit 1; }
cargo build --release --quiet
EQUIRUN_NO_PROGRESS=1 RAYON_NUM_THREADS=${THREADS:-2} target/release/equirun bench-clip --model-dir "$DIR" \
    --method vanilla,canon,equitune,multi-equitune --group rot90xflip \
    --batch-size "${BATCH:-8}" --batches "${BATCHES:-3}" --warmup 1
