#!/usr/bin/env bash
# Writes a sweep config as Slurm job arrays (one array task per run, stages chained with
# afterok) and submits it when sbatch is available.
#   scripts/sweep_slurm.sh configs/scan-ii.toml [EMIT_DIR]
# Results land in the usual layout under the config's `out` (relative to this folder), so
# `equirun report results` works unchanged once the arrays finish. Override the binary the
# tasks call with EQUIRUN_ON_CLUSTER=equirun (PATH) or an absolute path on the shared file system.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: scripts/sweep_slurm.sh CONFIG [EMIT_DIR]}
name=$(basename "$config" .toml)
dir=${2:-sweeps/$name}
equirun=${EQUIRUN:-target/release/equirun}
[ -x "$equirun" ] || cargo build --release
"$equirun" sweep "$config" --emit slurm --emit-dir "$dir" --binary "${EQUIRUN_ON_CLUSTER:-$(realpath "$equirun")}"
if command -v sbatch >/dev/null; then
  bash "$dir/submit.sh"
else
  echo "sbatch not found: copy $dir to the cluster and run 'bash $dir/submit.sh' from the repository folder"
fi
