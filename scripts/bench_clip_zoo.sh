#!/usr/bin/env bash
# Benchmark the CLIP zoo: image-encoder images/s of equirun vs PyTorch on random full-size
# weights (f32, batch 32), for ViT-B/32 and ViT-B/16 (transformers CLIPModel) and RN50 (open_clip
# ModifiedResNet), both sides back to back per model so they see the same machine load.
#   scripts/bench_clip_zoo.sh [BATCHES] [MODELS]      e.g.  scripts/bench_clip_zoo.sh 2 "vit-b-32 rn50"
# Needs the venv of scripts/setup_python.sh (EQUIRUN_VENV, default /work/venv). Snapshots (~0.4-0.6 GB
# each, never committed) go to BENCH_DIR (default /tmp/equirun-bench). Each side runs one untimed
# warm-up batch, then BATCHES timed batches of 32. Prints one JSON object per model and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCHES=${1:-2}
MODELS=${2:-"vit-b-32 vit-b-16 rn50"}
VENV=${EQUIRUN_VENV:-/work/venv}
PY="$VENV/bin/python"
WORK=${BENCH_DIR:-/tmp/equirun-bench}
THREADS=${THREADS:-2}
BATCH=32
[ -x "$PY" ] || { echo "no venv at $VENV: run scripts/setup_python.sh first" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/equirun
export EQUIRUN_NO_PROGRESS=1 RAYON_NUM_THREADS=$THREADS
mkdir -p "$WORK"
load() { cut -d' ' -f1 /proc/loadavg; }
rows=()
for m in $MODELS; do
  dir="$WORK/clip-$m"
  if [ ! -f "$dir/tokenizer.json" ]; then
    "$PY" scripts/make_random_clip.py --out "$dir" --preset "$m" --no-verify >&2
  fi
  l0=$(load)
  eq=$($BIN bench-clip --model-dir "$dir" --batch-size $BATCH --batches "$BATCHES" --warmup 1)
  l1=$(load)
  pt=$("$PY" scripts/bench_clip_torch.py --model-dir "$dir" --batch-size $BATCH \
        --n-images $((BATCH * BATCHES)) --threads "$THREADS" | tail -1)
  [ -n "$pt" ] || { echo "PyTorch baseline failed for $m" >&2; exit 1; }
  l2=$(load)
  row=$("$PY" - "$m" "$eq" "$pt" "$l0" "$l1" "$l2" <<'PY'
import json, sys
m, eq, pt = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps({
    "model": m, "batch_size": eq["batch_size"], "timed_images": eq["batch_size"] * eq["batches"],
    "equirun_images_per_s": round(eq["images_per_s"], 3),
    "pytorch_images_per_s": round(pt["images_per_s"], 3),
    "equirun_over_pytorch": round(eq["images_per_s"] / pt["images_per_s"], 3),
    "equirun_seconds_per_batch": [round(s, 2) for s in eq["seconds_per_batch"]],
    "pytorch_impl": pt.get("implementation"), "torch": pt.get("torch"),
    "loadavg_1min_before_equirun_after_equirun_after_pytorch": [float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])],
    "threads": eq["threads"],
}))
PY
)
  echo "$row"
  rows+=("$row")
done
echo "summary (images/s, f32, batch $BATCH, $THREADS threads, $(nproc) cores):"
"$PY" - "${rows[@]}" <<'PY'
import json, sys
for a in sys.argv[1:]:
    r = json.loads(a)
    print(f"  {r['model']:<9} equirun {r['equirun_images_per_s']:7.2f}  pytorch {r['pytorch_images_per_s']:7.2f}  "
          f"ratio {r['equirun_over_pytorch']:.2f}  load {r['loadavg_1min_before_equirun_after_equirun_after_pytorch']}")
PY
