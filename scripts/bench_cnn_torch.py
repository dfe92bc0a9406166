#!/usr/bin/env python3
"""PyTorch baseline for `equirun cnn bench`: the same CNN (equirun/src/models/cnn.rs), the same
training step (forward, cross-entropy, backward, AdamW lr 1e-3, weight decay 0), the same
batch of seeded random 28x28 images, the same thread count. Prints one JSON line.

  python scripts/bench_cnn_torch.py --batch-size 64 --steps 100 --threads 1 [--method equitune]

--method equitune averages the logits over the rot90 orbit (4 passes per image), as
`equirun cnn bench --method equitune --group rot90` does.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Cnn(nn.Module):
    """conv3x3(1->16) ReLU maxpool2, conv3x3(16->32) ReLU maxpool2, linear 1568->64 ReLU,
    dropout 0.3, linear 64->10 (105,866 parameters)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(self.drop(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--method", choices=["vanilla", "equitune"], default="vanilla")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Cnn()
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch_size, 1, 28, 28, generator=g)
    y = torch.arange(a.batch_size) % 10

    def step():
        opt.zero_grad(set_to_none=True)
        if a.method == "equitune":
            orbit = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], 0)
            logits = model(orbit).view(4, a.batch_size, -1).mean(0)
        else:
            logits = model(x)
        F.cross_entropy(logits, y).backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = time.perf_counter() - t0
    print(json.dumps({
        "framework": "pytorch", "torch": torch.__version__, "method": a.method,
        "passes_per_image": 4 if a.method == "equitune" else 1,
        "batch_size": a.batch_size, "steps": a.steps, "threads": torch.get_num_threads(),
        "seconds": secs, "images_per_second": a.batch_size * a.steps / secs,
        "n_params": n_params,
    }))


if __name__ == "__main__":
    main()
