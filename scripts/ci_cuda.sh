#!/usr/bin/env bash
# The CUDA build check, for a scheduled CI job (it does not fit the per-push budget: a cold
# `--features cuda` build is ~23 CPU-minutes on top of the normal ~8-minute run; measured on the
# 2-core CI machine). Needs no GPU:
#   1. installs the CUDA 13.0 toolchain from PyPI wheels (scripts/setup_cuda.sh),
#   2. builds `cargo build --release --features cuda`,
#   3. checks that the cuda binary without an NVIDIA driver runs `--device cpu` and answers
#      `--device cuda` with a clear error and exit code 2 (also with a driver but no GPU:
#      the libcuda stub returns CUDA_ERROR_NO_DEVICE),
#   4. runs the normal test suite on the cuda build (`--device cpu` everywhere; test binaries
#      that link candle's CUDA layer load the libcuda stub).
# Usage: scripts/ci_cuda.sh [--no-tests]    (CARGO_TARGET_DIR defaults to target-cuda/)
set -euo pipefail
cd "$(dirname "$0")/.."
run_tests=1
[ "${1:-}" = "--no-tests" ] && run_tests=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}"
start=$(date +%s)
cargo fetch --locked >/dev/null
eval "$(scripts/setup_cuda.sh)"
echo "== cuda: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
b0=$(date +%s)
cargo build --release --locked --features cuda
echo "== cuda: build in $(( $(date +%s) - b0 ))s"
bin="$CARGO_TARGET_DIR/release/equirun"

if ldd "$bin" | grep -q 'libcuda\.so'; then
  echo "== cuda: FAIL: the binary links libcuda.so directly (the lazy driver binding is not active)" >&2
  exit 1
fi
expect_exit2() {
  local what=$1; shift
  set +e
  out=$("$@" 2>&1)
  rc=$?
  set -e
  if [ "$rc" != 2 ] || ! grep -q "$what" <<<"$out"; then
    echo "== cuda: FAIL: expected exit 2 and '$what', got exit $rc: $out" >&2
    exit 1
  fi
  echo "== cuda: ok (exit 2): $(tail -1 <<<"$out")"
}
# No driver at all (this machine): a clear error, exit 2.
expect_exit2 "no NVIDIA driver found" "$bin" check --device cuda --group rot90
expect_exit2 "no NVIDIA driver found" "$bin" bench-lm --model-dir tests/fixtures/gpt2-tiny --device cuda
expect_exit2 "no NVIDIA driver found" "$bin" scan pretrain --device cuda --iters 1
expect_exit2 "no NVIDIA driver found" "$bin" regard eval --device cuda --dtype f16
# A driver but no GPU (the stub): the driver's error, exit 2.
LD_LIBRARY_PATH="$EQUIRUN_CUDA_STUBS:$LD_LIBRARY_PATH" \
  expect_exit2 "CUDA_ERROR_NO_DEVICE" "$bin" check --device cuda --group rot90
"$bin" check --device cpu --group rot90xflip >/dev/null
echo "== cuda: --device cpu check ok"

if [ "$run_tests" = 1 ]; then
  eval "$(EQUIRUN_CUDA_STUB=1 scripts/setup_cuda.sh 2>/dev/null)"
  EQUIRUN_NO_PROGRESS=1 cargo test --release --locked --features cuda
fi
echo "== cuda: finished in $(( $(date +%s) - start ))s"
