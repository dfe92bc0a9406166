#!/usr/bin/env python3
"""PyTorch counterpart of `cargo run --release --example gemm_shapes -- THREADS`: GFLOP/s of
F.linear (MKL on x86) on the same encoder shapes, one JSON line per shape.
  gemm_shapes_torch.py [THREADS=1]"""
import json, sys, time
import torch

SHAPES = [(1600, 768, 2304), (1600, 768, 3072), (1600, 3072, 768), (800, 768, 2304),
          (800, 3072, 768), (750, 384, 1152), (750, 384, 1536), (750, 1536, 384), (216, 512, 1536)]
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
with torch.inference_mode():
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k), torch.randn(n, k)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        flop = 2.0 * m * n * k
        reps = max(3, int(20e9 / flop))
        t = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        s = (time.perf_counter() - t) / reps
        print(json.dumps({"m": m, "k": k, "n": n, "threads": threads, "gflops": round(flop / s / 1e9, 1),
                          "blas": "MKL" if torch.backends.mkl.is_available() else "other"}))
