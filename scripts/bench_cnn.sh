#!/usr/bin/env bash
# Training throughput of the Fashion-MNIST CNN: equirun (`equirun cnn bench`) vs the same CNN
# in PyTorch (scripts/bench_cnn_torch.py), same batch, same thread count, same run.
#   scripts/bench_cnn.sh [STEPS]          THREADS=1 BATCH=64 REPEATS=3 by default
# Needs the venv of scripts/setup_python.sh (EQUIRUN_VENV, default /work/venv). The two
# frameworks alternate REPEATS times (vanilla, then equitune over rot90 = 4 passes per image);
# the best of the repeats is reported (the machine is shared), with the ratio
# equirun / PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-100}
THREADS=${THREADS:-1}
BATCH=${BATCH:-64}
REPEATS=${REPEATS:-3}
VENV=${EQUIRUN_VENV:-/work/venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "no venv at $VENV: run scripts/setup_python.sh first" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/equirun
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
OUT=$(mktemp)
for r in $(seq "$REPEATS"); do
  for m in vanilla equitune; do
    $BIN cnn bench --method "$m" --group rot90 --batch-size "$BATCH" --steps "$STEPS" >>"$OUT"
    "$PY" scripts/bench_cnn_torch.py --method "$m" --batch-size "$BATCH" --steps "$STEPS" --threads "$THREADS" >>"$OUT"
  done
done
"$PY" - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
out = {}
for m in ["vanilla", "equitune"]:
    best = lambda fw: max(r["images_per_second"] for r in rows if r["method"] == m and r["framework"].startswith(fw))
    e, t = best("equirun"), best("pytorch")
    out[m] = {"equirun_images_per_s": round(e, 1), "pytorch_images_per_s": round(t, 1),
              "equirun_over_pytorch": round(e / t, 3),
              "all_equirun": [round(r["images_per_second"], 1) for r in rows if r["method"] == m and r["framework"].startswith("equirun")],
              "all_pytorch": [round(r["images_per_second"], 1) for r in rows if r["method"] == m and r["framework"] == "pytorch"]}
meta = next(r for r in rows if r["framework"] == "pytorch")
out["config"] = {"batch_size": meta["batch_size"], "steps": meta["steps"], "threads": meta["threads"],
                 "torch": meta["torch"], "n_params": meta["n_params"]}
print(json.dumps(out, indent=1))
PY
rm -f "$OUT"
