#!/usr/bin/env python3
"""Write a full-size, randomly initialised CLIP model in Hugging Face or open_clip layout.

Only used by benchmarks (no real weights can be downloaded here). Presets:
vit-b-32 / vit-b-16 (HF layout, shapes of openai/clip-vit-base-patch32 / -patch16) and
rn50 / rn101 (open_clip layout, shapes of timm/resnet50_clip.openai / resnet101_clip.openai:
open_clip_config.json + open_clip_model.safetensors instead of config.json + model.safetensors).
For the HF presets the output is:

  <out>/config.json        full CLIPConfig
  <out>/model.safetensors  f32 weights (~600 MB) -- do NOT commit
  <out>/tokenizer.json     the real OpenAI CLIP BPE tokenizer (+ vocab.json, merges.txt,
                           tokenizer_config.json), built offline by make_clip_tokenizer.py

so <out> is a complete snapshot for `equirun clip --model-dir <out>`.

Usage:

  /work/venv/bin/python scripts/make_random_clip.py --out /tmp/clip-b32 [--preset vit-b-32] [--seed 0]
      [--bpe PATH/bpe_simple_vocab_16e6.txt.gz] [--no-tokenizer] [--no-verify]
  /work/venv/bin/python scripts/make_random_clip.py --out /tmp/clip-rn50 --preset rn50
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import transformers
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_clip_tokenizer import write_clip_tokenizer  # noqa: E402

PRESETS = {
    # openai/clip-vit-base-patch32
    "vit-b-32": dict(
        text_config=dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            projection_dim=512,
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
            num_channels=3,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=512,
        ),
        projection_dim=512,
        logit_scale_init_value=2.6592,
    ),
}
# openai/clip-vit-base-patch16: B/32 with 16-pixel patches
PRESETS["vit-b-16"] = dict(
    PRESETS["vit-b-32"], vision_config=dict(PRESETS["vit-b-32"]["vision_config"], patch_size=16)
)
# open_clip model configs (open_clip/model_configs/RN50.json, RN101.json) with OpenAI's QuickGELU
OPEN_CLIP_PRESETS = {
    "rn50": dict(embed_dim=1024, quick_gelu=True,
                 vision_cfg=dict(image_size=224, layers=[3, 4, 6, 3], width=64, patch_size=None),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)),
    "rn101": dict(embed_dim=512, quick_gelu=True,
                  vision_cfg=dict(image_size=224, layers=[3, 4, 23, 3], width=64, patch_size=None),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)),
}


def write_open_clip(args) -> None:
    import json

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gen_resnet_clip_fixture import PREPROCESS_CFG, stub_torchvision
    from safetensors.torch import save_file

    stub_torchvision()
    from open_clip.model import CLIP

    t0 = time.time()
    cfg = OPEN_CLIP_PRESETS[args.preset]
    torch.manual_seed(args.seed)
    model = CLIP(**cfg).float().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics (open_clip initialises bn3 to 0)
        g = torch.Generator().manual_seed(args.seed)
        for name, t in model.named_buffers():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("bn3.weight"):
                p.copy_(torch.rand(p.shape, generator=g))
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(args.out, "open_clip_model.safetensors"))
    with open(os.path.join(args.out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": PREPROCESS_CFG}, f, indent=2)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.preset} ({n_params / 1e6:.1f}M params, f32, open_clip layout) to {args.out} "
          f"in {time.time() - t0:.1f}s [torch {torch.__version__}]")
    if not args.no_tokenizer:
        write_clip_tokenizer(args.out, args.bpe)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="vit-b-32", choices=sorted(PRESETS) + sorted(OPEN_CLIP_PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-verify", action="store_true", help="skip the reload check")
    ap.add_argument("--bpe", default=None, help="path to bpe_simple_vocab_16e6.txt.gz (default: see make_clip_tokenizer.py)")
    ap.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer.json")
    args = ap.parse_args()

    if args.preset in OPEN_CLIP_PRESETS:
        write_open_clip(args)
        return 0
    t0 = time.time()
    config = CLIPConfig(**PRESETS[args.preset])
    torch.manual_seed(args.seed)
    model = CLIPModel(config).to(torch.float32).eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    # full config, not a diff against class defaults
    model.config.to_json_file(os.path.join(args.out, "config.json"), use_diff=False)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.preset} ({n_params / 1e6:.1f}M params, f32) to {args.out} "
        f"in {time.time() - t0:.1f}s [torch {torch.__version__}, transformers {transformers.__version__}]"
    )

    if not args.no_verify:
        reloaded = CLIPModel.from_pretrained(args.out).eval()
        sd0, sd1 = model.state_dict(), reloaded.state_dict()
        assert sd0.keys() == sd1.keys(), set(sd0) ^ set(sd1)
        for k in sd0:
            assert torch.equal(sd0[k], sd1[k]), k
        print("reload via CLIPModel.from_pretrained: OK (all tensors identical)")

    if not args.no_tokenizer:
        # vocab size / special ids must agree with the text config
        tc = model.config.text_config
        assert tc.vocab_size == 49408 and tc.eos_token_id == 49407, (tc.vocab_size, tc.eos_token_id)
        write_clip_tokenizer(args.out, args.bpe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
