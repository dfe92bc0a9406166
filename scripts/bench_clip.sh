#!/usr/bin/env bash
# Benchmark: equirun vs PyTorch/transformers on a ViT-B/32-shaped CLIP with random weights (f32).
#   scripts/bench_clip.sh [N_IMAGES]
# Needs the Python venv of scripts/setup_python.sh (EQUIRUN_VENV, default /work/venv).
# Reports: images/s of equirun vanilla (CLIP image encoder + scoring, batch 32) and of the
# PyTorch image encoder in the same run, and equirun's wall time of equitune (8 passes) vs
# multi-equitune (6 passes + canonicalisation) on rot90xflip.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-64}
VENV=${EQUIRUN_VENV:-/work/venv}
PY="$VENV/bin/python"
WORK=${BENCH_DIR:-/tmp/equirun-bench}
THREADS=${THREADS:-2}
mkdir -p "$WORK"
[ -x "$PY" ] || { echo "no venv at $VENV: run scripts/setup_python.sh first" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/equirun

if [ ! -f "$WORK/clip-b32/model.safetensors" ] || [ ! -f "$WORK/clip-b32/tokenizer.json" ]; then
  "$PY" scripts/make_random_clip.py --out "$WORK/clip-b32"
fi
# a CIFAR-10-format file of N random images
"$PY" - "$WORK/data/cifar-10-batches-bin" "$N" <<'PY'
import os, sys, numpy as np
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
rng = np.random.default_rng(0)
rec = np.zeros((n, 3073), dtype=np.uint8)
rec[:, 0] = np.arange(n) % 10
rec[:, 1:] = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
rec.tofile(os.path.join(d, "test_batch.bin"))
PY

export EQUIRUN_CACHE="$WORK/cache" EQUIRUN_NO_PROGRESS=1 RAYON_NUM_THREADS=$THREADS
common=(clip --model-dir "$WORK/clip-b32" --dataset cifar10 --data-dir "$WORK/data" --limit "$N"
        --batch-size 32 --out "$WORK/results" --force)
# warm the text-classifier cache (not timed)
$BIN "${common[@]}" --method vanilla --transform none --run-name warm >/dev/null 2>&1
$BIN "${common[@]}" --method vanilla --transform none --run-name vanilla
$BIN "${common[@]}" --group rot90xflip --method equitune --run-name equitune
$BIN "${common[@]}" --group rot90xflip --method multi-equitune --run-name multi-equitune
torch_json=$("$PY" scripts/bench_clip_torch.py --model-dir "$WORK/clip-b32" --batch-size 32 --n-images "$N" --threads "$THREADS" 2>/dev/null | tail -1)

"$PY" - "$WORK/results/clip" "$torch_json" <<'PY'
import json, sys
root, torch = sys.argv[1], json.loads(sys.argv[2])
get = lambda name: json.load(open(f"{root}/{name}/seed-0.json"))["cost"]
v, e, m = get("vanilla"), get("equitune"), get("multi-equitune")
out = {
    "equirun_vanilla_images_per_s": round(v["images_per_second"], 2),
    "pytorch_image_encoder_images_per_s": round(torch["images_per_s"], 2),
    "equirun_over_pytorch": round(v["images_per_second"] / torch["images_per_s"], 3),
    "equitune_rot90xflip_wall_s": round(e["wall_seconds"], 2),
    "multi_equitune_rot90xflip_wall_s": round(m["wall_seconds"], 2),
    "multi_over_equitune_wall": round(m["wall_seconds"] / e["wall_seconds"], 3),
    "torch": torch.get("torch"), "transformers": torch.get("transformers"),
}
print(json.dumps(out, indent=1))
PY
