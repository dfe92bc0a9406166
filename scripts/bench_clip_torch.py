#!/usr/bin/env python3
"""PyTorch baseline: CLIP image-encoder throughput on CPU, f32.

Times ``CLIPModel.get_image_features`` (transformers, HF snapshot with config.json) or
``open_clip`` ``CLIP.encode_image`` (snapshot with open_clip_config.json, e.g. RN50) on random
[N,3,H,W] inputs under ``torch.no_grad()``; one warmup batch is run first and excluded. Prints
one JSON line:

  {"framework":"pytorch","torch":...,"transformers":...,"images_per_s":...,
   "batch_size":32,"n_images":64,...}

Usage:

  /work/venv/bin/python scripts/bench_clip_torch.py --model-dir /tmp/clip-b32 \
      --batch-size 32 --n-images 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import transformers
from transformers import CLIPModel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-classifier", action="store_true",
                    help="time the CIFAR-100 zero-shot classifier instead (100 classes x 18 templates, "
                         "one batch per class, tokenisation included; HF snapshots only); reports prompts_per_s")
    ap.add_argument("--passes", type=int, default=1, help="--text-classifier: timed passes over the classes")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    import os

    open_clip_cfg = os.path.join(args.model_dir, "open_clip_config.json")
    framework = "transformers"
    if os.path.isfile(open_clip_cfg) and not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from gen_resnet_clip_fixture import stub_torchvision
        from safetensors.torch import load_file

        stub_torchvision()
        import open_clip
        from open_clip.model import CLIP

        with open(open_clip_cfg) as f:
            cfg = json.load(f)["model_cfg"]
        model = CLIP(**cfg).float()
        model.load_state_dict(load_file(os.path.join(args.model_dir, "open_clip_model.safetensors")))
        model = model.eval()
        size = cfg["vision_cfg"]["image_size"]
        framework = f"open_clip {open_clip.__version__}"
    else:
        try:
            model = CLIPModel.from_pretrained(args.model_dir, dtype=torch.float32)
        except TypeError:  # transformers < 4.56 spells it torch_dtype
            model = CLIPModel.from_pretrained(args.model_dir, torch_dtype=torch.float32)
        model = model.to(torch.float32).eval()
        size = model.config.vision_config.image_size

    if args.text_classifier:
        return text_classifier(args, model, framework)

    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn((args.n_images, 3, size, size), generator=g, dtype=torch.float32)
    batches = list(torch.split(images, args.batch_size))

    def encode(x: torch.Tensor) -> torch.Tensor:
        if framework != "transformers":
            return model.encode_image(x)
        out = model.get_image_features(pixel_values=x)
        if not isinstance(out, torch.Tensor):  # newer transformers: ModelOutput
            out = out.pooler_output
        return out

    with torch.no_grad():
        warm = encode(batches[0])  # warmup, excluded
        t0 = time.perf_counter()
        n = 0
        for b in batches:
            out = encode(b)
            n += out.shape[0]
        elapsed = time.perf_counter() - t0

    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "implementation": framework,
        "images_per_s": round(n / elapsed, 3),
        "batch_size": args.batch_size,
        "n_images": n,
        "threads": args.threads,
        "seconds": round(elapsed, 3),
        "embed_dim": int(warm.shape[-1]),
        "image_size": size,
        "dtype": "f32",
    }
    print(json.dumps(result))
    return 0


def text_classifier(args, model, framework: str) -> int:
    """Per class: fill the 18 CIFAR templates, tokenise (pad to the longest), encode, L2-normalise,
    average, L2-normalise (the CLIP paper's prompt ensembling, as `equirun clip` builds it)."""
    import os

    if framework != "transformers":
        sys.exit("--text-classifier needs a Hugging Face CLIP snapshot (config.json)")
    from transformers import CLIPTokenizerFast

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prompts = os.path.join(root, "src/data/prompts")
    classes = [l.strip() for l in open(os.path.join(prompts, "cifar100_classes.txt")) if l.strip()]
    templates = [l.rstrip("\n") for l in open(os.path.join(prompts, "cifar_templates.txt")) if l.strip()]
    tok = CLIPTokenizerFast.from_pretrained(args.model_dir)

    def build(cs):
        rows = []
        for c in cs:
            enc = tok([t.replace("{}", c, 1) for t in templates], padding=True, return_tensors="pt")
            f = model.get_text_features(**enc)
            if not isinstance(f, torch.Tensor):
                f = f.pooler_output
            f = f / f.norm(dim=-1, keepdim=True)
            f = f.mean(0)
            rows.append(f / f.norm())
        return torch.stack(rows)

    with torch.no_grad():
        build(classes[:5])  # warm-up, excluded
        t0 = time.perf_counter()
        for _ in range(args.passes):
            out = build(classes)
        elapsed = time.perf_counter() - t0
    n = args.passes * len(classes) * len(templates)
    print(json.dumps({
        "framework": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
        "task": "cifar100-zero-shot-classifier", "prompts_per_s": round(n / elapsed, 3),
        "templates": len(templates), "passes": args.passes, "threads": args.threads,
        "seconds": round(elapsed, 3), "embed_dim": int(out.shape[-1]), "dtype": "f32",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
