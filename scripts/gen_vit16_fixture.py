#!/usr/bin/env python3
"""Generate the tiny ViT-B/16-style HF CLIP parity fixture (tests/fixtures/clip-b16-tiny).

Same recipe as scripts/gen_clip_fixture.py (whose model builder and inputs it reuses), with a
config that differs from candle's ViT-B/32 preset and from the clip-tiny fixture in every field
the loader reads from config.json: patch 16 on 64 px (4x4 patches), different text and vision
widths, head counts, MLP sizes and depths, projection 24. The config.json is written as a
*sparse* diff (what `save_pretrained` writes for many hub checkpoints), so the loader's
defaults for absent keys are exercised too.

Usage (repository root):
  /work/venv/bin/python scripts/gen_vit16_fixture.py --out tests/fixtures/clip-b16-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_clip_fixture as base  # noqa: E402

base.IMAGE_SIZE = 64
base.PROJECTION_DIM = 24
base.TEXT_CONFIG = dict(
    vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
    max_position_embeddings=16, hidden_act="quick_gelu", bos_token_id=98, eos_token_id=99, pad_token_id=99,
    layer_norm_eps=1e-5, projection_dim=24,
)
base.VISION_CONFIG = dict(
    hidden_size=48, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4, image_size=64,
    patch_size=16, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=24,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/clip-b16-tiny")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out
    os.makedirs(out, exist_ok=True)
    model = base.build_model()
    pixels, ids = base.make_inputs()
    with torch.no_grad():
        full = model(input_ids=ids, pixel_values=pixels)
        vision_pooled = model.vision_model(pixel_values=pixels).pooler_output
        text_pooled = model.text_model(input_ids=ids).pooler_output
        image_embeds = model.visual_projection(vision_pooled)
        text_embeds = model.text_projection(text_pooled)
        assert torch.allclose(full.image_embeds, torch.nn.functional.normalize(image_embeds, dim=-1), atol=1e-5)
    model.save_pretrained(out, safe_serialization=True)
    for extra in sorted(os.listdir(out)):
        if extra not in ("config.json", "model.safetensors", "reference.safetensors", "README.md"):
            os.remove(os.path.join(out, extra))
    # sparse config: only what differs from the class defaults (plus the ids the loader needs)
    cfg = model.config.to_dict()
    sparse = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 24,
        "logit_scale_init_value": cfg["logit_scale_init_value"],
        "text_config": {k: base.TEXT_CONFIG[k] for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")},
        "vision_config": {k: base.VISION_CONFIG[k] for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
            "patch_size")},
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(sparse, f, indent=2)
    # the sparse config reproduces the model
    again = transformers.CLIPModel.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids, pixel_values=pixels).logits_per_image, full.logits_per_image,
                              atol=1e-5)
        assert again.config.vision_config.hidden_act == "quick_gelu"
    ref = {
        "pixel_values": pixels, "input_ids": ids, "image_embeds": image_embeds, "text_embeds": text_embeds,
        "logits_per_image": full.logits_per_image, "logits_per_text": full.logits_per_text,
    }
    save_file({k: v.detach().contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"),
              metadata={"generated_by": f"torch {torch.__version__}, transformers {transformers.__version__}"})
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(f"""# clip-b16-tiny parity fixture

A tiny, randomly initialised Hugging Face `CLIPModel` shaped like ViT-B/16 (patch 16; 64 px, so
4x4 patches) plus reference outputs from transformers. Used by `tests/clip_zoo.rs` to check that
equirun builds candle's ViT CLIP from config.json (not from a preset).

Generated with torch {torch.__version__}, transformers {transformers.__version__} (float32,
eager attention) by `scripts/gen_vit16_fixture.py`, which reuses the model builder and inputs of
`scripts/gen_clip_fixture.py` (every parameter N(0, 0.2²), layer norms 1 + noise).

- `config.json`: sparse (defaults omitted, as many hub configs are): text hidden 48, 2 layers,
  3 heads, MLP 96, 16 positions, vocab 100 (BOS 98, EOS/PAD 99); vision hidden 48, 2 layers,
  4 heads, MLP 112, image 64, patch 16; projection 24; quick_gelu (the default).
- `reference.safetensors`: `pixel_values` [2,3,64,64], `input_ids` [3,8], `image_embeds`,
  `text_embeds` (projected, unnormalised), `logits_per_image`, `logits_per_text`.
""")
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"wrote {out}: {total} bytes")
    assert total < 1_000_000
    return 0


if __name__ == "__main__":
    sys.exit(main())
