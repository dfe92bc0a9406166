#!/usr/bin/env bash
# Benchmark: GPT-2-124M-shaped random checkpoint (f32, CPU).
#   scripts/bench_gpt2.sh
# Reports greedy tokens/s with the KV cache for equirun (`equirun bench-lm`) and transformers
# `generate` in the same run (batch 1, prompt 16, 32 new tokens), and the per-token wall time of
# multi-equitune (7 passes) vs equitune over the full product (12 passes) for
# gender × race(3) × orientation generation (`equirun gpt2-fairness`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EQUIRUN_VENV:-/work/venv}
PY="$VENV/bin/python"
WORK=${BENCH_DIR:-/tmp/equirun-bench}
THREADS=${THREADS:-2}
[ -x "$PY" ] || { echo "no venv at $VENV: run scripts/setup_python.sh first" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/equirun
mkdir -p "$WORK"
[ -f "$WORK/gpt2-124m/model.safetensors" ] || "$PY" scripts/bench_gpt2_torch.py --make-random-gpt2 "$WORK/gpt2-124m" >/dev/null
export EQUIRUN_NO_PROGRESS=1
ours=$(RAYON_NUM_THREADS=$THREADS $BIN bench-lm --model-dir "$WORK/gpt2-124m" --batch 1 --prompt-len 16 --new-tokens 32)
theirs=$("$PY" scripts/bench_gpt2_torch.py --model-dir "$WORK/gpt2-124m" --prompt-len 16 --new-tokens 32 --batch 1 --threads "$THREADS" 2>/dev/null | tail -1)
RAYON_NUM_THREADS=$THREADS $BIN gpt2-fairness --model-dir "$WORK/gpt2-124m" --groups gender,race,orientation \
  --method equitune,multi-equitune --samples-per-demographic 5 --contexts respect \
  --out "$WORK/results" --run-name bench --force >/dev/null 2>&1
"$PY" - "$ours" "$theirs" "$WORK/results/gpt2-fairness/bench/seed-0.json" <<'PY'
import json, sys
ours, theirs, res = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.load(open(sys.argv[3]))
cost, met = res["cost"]["methods"], res["metrics"]["methods"]
per_tok = {m: cost[m]["seconds"] / max(met[m]["generated_tokens"], 1) for m in ("equitune", "multi-equitune")}
print(json.dumps({
    "equirun_tokens_per_s": round(ours["tokens_per_s"], 2),
    "transformers_tokens_per_s": round(theirs["tokens_per_s"], 2),
    "equirun_over_transformers": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3),
    "equitune_s_per_token": round(per_tok["equitune"], 4),
    "multi_equitune_s_per_token": round(per_tok["multi-equitune"], 4),
    "multi_over_equitune": round(per_tok["multi-equitune"] / per_tok["equitune"], 3),
    "passes": {m: cost[m]["forward_passes_per_token"] for m in cost},
}, indent=1))
PY
