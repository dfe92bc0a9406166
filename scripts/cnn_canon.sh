#!/usr/bin/env bash
# Fashion-MNIST canon experiment (modest budget for a shared 2-core machine)
set -euo pipefail
cd /work/wt-canon
BIN=target/release/equirun
export EQUIRUN_NO_PROGRESS=1 RAYON_NUM_THREADS=2
common=(cnn --limit-train 20000 --val-size 2000 --val-eval 500 --limit-test 2000 --pretrain-epochs 1
        --rounds 2 --iters 100 --lambda-rounds 1 --lambda-iters 100 --canon-rounds 2 --canon-iters 100)
for seed in 0 1 2; do
  t0=$(date +%s)
  $BIN "${common[@]}" --group rot90xflip --method vanilla,equitune,equizero,lambda-equitune,multi-equitune,canon \
      --seeds $seed --run-name fashion-mnist-rot90xflip
  t1=$(date +%s); echo "TIMING seed $seed rot90xflip $((t1-t0)) s"
  $BIN "${common[@]}" --group rot90 --method vanilla,equitune,equizero,lambda-equitune,canon \
      --seeds $seed --run-name fashion-mnist-rot90
  t2=$(date +%s); echo "TIMING seed $seed rot90 $((t2-t1)) s"
done
echo ALL-DONE
