#!/usr/bin/env python3
"""PyTorch/transformers baseline: GPT-2 greedy generation throughput on CPU, f32.

Times ``GPT2LMHeadModel.generate`` (greedy, ``use_cache=True``, no sampling, no early
stop: exactly ``--new-tokens`` tokens per row) on a random prompt of ``--prompt-len``
ids for a batch of ``--batch`` rows. One short warmup generation is run first and
excluded; the timed generation is repeated ``--repeats`` times and the best and median
are reported. Prints one JSON line:

  {"framework":"pytorch","task":"gpt2_generate","tokens_per_s":...,"tokens_per_s_median":...,
   "batch":1,"prompt_len":16,"new_tokens":32,...}

``tokens_per_s`` counts generated tokens over all rows (batch * new_tokens) per second
of the whole ``generate`` call (prompt prefill included).

Usage:

  # a GPT-2-124M-shaped random checkpoint (GPT2Config() defaults), for benchmarks only
  /work/venv/bin/python scripts/bench_gpt2_torch.py --make-random-gpt2 /tmp/gpt2-random
  /work/venv/bin/python scripts/bench_gpt2_torch.py --model-dir /tmp/gpt2-random \
      --prompt-len 16 --new-tokens 32 --batch 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import transformers
from transformers import GPT2Config, GPT2LMHeadModel


def make_random_gpt2(out: str, seed: int) -> None:
    """Writes a randomly initialised GPT2LMHeadModel with GPT2Config() defaults (124M)."""
    torch.manual_seed(seed)
    config = GPT2Config()  # vocab 50257, n_embd 768, 12 layers, 12 heads, n_positions 1024
    model = GPT2LMHeadModel(config).to(torch.float32).eval()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    model.config.to_json_file(os.path.join(out, "config.json"), use_diff=False)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "made_random_gpt2": out,
                "params": n_params,
                "files": sorted(os.listdir(out)),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    )


def load(model_dir: str, attn: str) -> GPT2LMHeadModel:
    try:
        model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation=attn)
    return model.to(torch.float32).eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir")
    ap.add_argument("--make-random-gpt2", metavar="DIR", help="write a GPT-2-124M-shaped random checkpoint and exit")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--attn",
        default="eager",
        choices=["eager", "sdpa"],
        help="attention implementation (eager matches equirun's matmul+softmax path)",
    )
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    if args.make_random_gpt2:
        make_random_gpt2(args.make_random_gpt2, args.seed)
        return 0
    if not args.model_dir:
        ap.error("--model-dir is required (or use --make-random-gpt2 DIR)")

    model = load(args.model_dir, args.attn)
    cfg = model.config
    if args.prompt_len + args.new_tokens > cfg.n_positions:
        ap.error(f"prompt-len + new-tokens exceeds n_positions {cfg.n_positions}")

    g = torch.Generator().manual_seed(args.seed)
    # avoid the EOS id so nothing could end generation early (min_new_tokens also enforces it)
    high = cfg.vocab_size - 1
    input_ids = torch.randint(0, high, (args.batch, args.prompt_len), generator=g, dtype=torch.int64)
    attention_mask = torch.ones_like(input_ids)

    def generate(n_new: int) -> torch.Tensor:
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            pad_token_id=cfg.eos_token_id if cfg.eos_token_id is not None else 0,
        )

    with torch.no_grad():
        generate(min(4, args.new_tokens))  # warmup, excluded
        times = []
        out = None
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            out = generate(args.new_tokens)
            times.append(time.perf_counter() - t0)
    n_new = out.shape[1] - args.prompt_len
    assert n_new == args.new_tokens, (n_new, args.new_tokens)
    tokens = args.batch * n_new
    best, med = min(times), statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "framework": "pytorch",
        "task": "gpt2_generate",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokens_per_s": round(tokens / best, 3),
        "tokens_per_s_median": round(tokens / med, 3),
        "ms_per_token": round(1000 * best / n_new, 3),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": n_new,
        "threads": args.threads,
        "repeats": len(times),
        "seconds": [round(t, 4) for t in times],
        "attn": args.attn,
        "dtype": "float32",
        "decoding": "greedy, use_cache=True",
        "params": n_params,
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "vocab_size": cfg.vocab_size,
        "model_dir": args.model_dir,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
