#!/usr/bin/env bash
# A scripted seed sweep small enough for a laptop (minutes on 2 cores): SCAN-II, GRU cell, short
# pretraining and finetuning, 3 seeds, 2 parallel runs; then the mean ± std table and plots.
# The same grid at paper scale is configs/scan-ii.toml.
#   scripts/sweep_scan_ii_small.sh [OUT=results-small] [SEEDS=0-2]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results-small}
seeds=${2:-0-2}
equirun=${EQUIRUN:-target/release/equirun}
[ -x "$equirun" ] || cargo build --release
mkdir -p "$out"
config="$out/scan-ii-small.toml"
cat > "$config" <<TOML
name = "scan-ii-small"
out = "$out"
seeds = "$seeds"

[[stage]]
name = "pretrain"
command = "scan pretrain"
run_name = "small-scan-ii-{cell}"
[stage.args]
dataset = "scan-ii"
iters = 600
batch-size = 16
lr = 1e-3
eval-every = 300
eval-limit = 300
val-limit = 300
[stage.grid]
cell = ["gru"]

[[stage]]
name = "finetune"
command = "scan finetune"
run_name = "small-scan-ii-{cell}"
[stage.args]
dataset = "scan-ii"
pretrained = "{out}/scan-pretrain/small-scan-ii-{cell}"
method = ["equitune", "multi-equitune"]
group = "verb,direction-rl,direction-ud"
iters = 60
batch-size = 16
lr = 1e-4
eval-every = 30
eval-limit = 300
val-limit = 300
[stage.grid]
cell = ["gru"]
TOML
"$equirun" sweep "$config" --jobs 2
"$equirun" report "$out"
