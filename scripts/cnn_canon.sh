#!/usr/bin/env bash
# Learned canonicalisation on Fashion-MNIST next to every other wrapper, sized for a shared 2-core
# CPU (results/reference/cnn-canon/): 20,000 training images (2,000 held out for validation),
# one pretraining epoch, 2 × 100 finetuning iterations of batch 32, λ-net 1 × 100, canon's
# prior-only scorer 2 × 100, 2,000 test images (upright and corrupted), 500 validation images.
#   scripts/cnn_canon.sh [SEEDS]     (default 0,1,2; data: scripts/setup_fashion_mnist.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-0,1,2}
cargo build --release --quiet
BIN=target/release/equirun
common=(cnn --limit-train 20000 --val-size 2000 --val-eval 500 --limit-test 2000 --pretrain-epochs 1
        --rounds 2 --iters 100 --lambda-rounds 1 --lambda-iters 100 --canon-rounds 2 --canon-iters 100
        --seeds "$SEEDS")
$BIN "${common[@]}" --group rot90xflip --method vanilla,equitune,equizero,lambda-equitune,multi-equitune,canon \
    --run-name fashion-mnist-rot90xflip
$BIN "${common[@]}" --group rot90 --method vanilla,equitune,equizero,lambda-equitune,canon \
    --run-name fashion-mnist-rot90
