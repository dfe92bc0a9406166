#!/usr/bin/env python3
"""Generate tiny OpenCLIP parity fixtures (open_clip / OpenAI tensor layout) for equirun's tests.

Builds a tiny ``open_clip.model.CLIP`` with a fixed seed, re-initialises *every* parameter and
batch-norm statistic with seeded noise (fan-in scaled, so activations stay O(1)), and writes:

  <out>/open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...} (hub layout)
  <out>/open_clip_model.safetensors  state_dict, f32, OpenAI/open_clip names
  <out>/reference.safetensors        fixed inputs + reference outputs
  <out>/README.md                    versions used + regeneration command

Families:
  --family resnet  ModifiedResNet (layers [1,2,1,1], width 4, 4 attention-pool heads, 64 px),
                   QuickGELU text tower (OpenAI RN50/RN101 style). The reference also holds the
                   text features of the same weights with exact GELU (`text_embeds_gelu`).
  --family vit     open_clip VisionTransformer (patch 16, 64 px, 2 layers), exact GELU
                   (LAION OpenCLIP style).

open_clip imports torchvision at import time but these models never use it; when torchvision is
not installed (its wheels pin a torch version) a stub module is put in its place.

Usage (repository root):
  /work/venv/bin/python scripts/gen_resnet_clip_fixture.py --family resnet --out tests/fixtures/clip-rn-tiny
  /work/venv/bin/python scripts/gen_resnet_clip_fixture.py --family vit --out tests/fixtures/openclip-vit-tiny
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import types

import torch
import transformers  # noqa: F401  (imported before any torchvision stub: it probes torchvision)

SEED = 0
PIXEL_SEED = 1234
IDS_SEED = 4321
LOGIT_SCALE = math.log(1 / 0.07)
BOS, EOS, PAD = 98, 99, 0  # open_clip pads with 0 to the full context
SEQ_LEN = 16  # open_clip needs the full context length
ROW_LENGTHS = (4, 6, 8)
N_IMAGES = 2
IMAGE_SIZE = 64

TEXT_CFG = dict(context_length=16, vocab_size=100, width=32, heads=2, layers=2)
MODEL_CFGS = {
    "resnet": dict(
        embed_dim=24,
        quick_gelu=True,
        vision_cfg=dict(image_size=IMAGE_SIZE, layers=[1, 2, 1, 1], width=4, head_width=32, patch_size=None),
        text_cfg=TEXT_CFG,
    ),
    "vit": dict(
        embed_dim=24,
        quick_gelu=False,
        vision_cfg=dict(image_size=IMAGE_SIZE, layers=2, width=32, head_width=16, patch_size=16, mlp_ratio=3.0),
        text_cfg=TEXT_CFG,
    ),
}
PREPROCESS_CFG = dict(
    mean=[0.48145466, 0.4578275, 0.40821073],
    std=[0.26862954, 0.26130258, 0.27577711],
    interpolation="bicubic",
    resize_mode="shortest",
)


def stub_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401

        return False
    except ImportError:
        pass

    class _Meta(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return name

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            v = _Meta(name, (), {})
            setattr(self, name, v)
            return v

    names = ["torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
             "torchvision.transforms.functional", "torchvision.transforms.v2"]
    for n in names:
        sys.modules[n] = _Module(n)
        if "." in n:
            parent, child = n.rsplit(".", 1)
            setattr(sys.modules[parent], child, sys.modules[n])
    return True


def reinit(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(SEED)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g) * std + mean

    with torch.no_grad():
        for name, t in sorted(list(model.named_parameters()) + list(model.named_buffers())):
            if t.dtype not in (torch.float32,):
                continue  # num_batches_tracked, attn_mask handled below
            leaf = name.rsplit(".", 1)[-1]
            is_norm = ".bn" in name or "ln_" in name or "downsample.1" in name
            if name == "logit_scale":
                t.fill_(LOGIT_SCALE)
            elif name.endswith("attn_mask"):
                continue
            elif leaf == "running_var":
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif leaf == "running_mean":
                t.copy_(normal(t.shape, 0.1))
            elif is_norm and leaf == "weight":
                t.copy_(normal(t.shape, 0.1, 1.0))
            elif leaf.endswith("bias"):
                t.copy_(normal(t.shape, 0.1 if is_norm else 0.02))
            elif t.dim() >= 2 and leaf != "positional_embedding":
                if leaf in ("text_projection", "proj"):
                    fan_in = t.shape[0]
                elif name.endswith("token_embedding.weight"):
                    fan_in = 1
                else:
                    fan_in = math.prod(t.shape[1:])
                t.copy_(normal(t.shape, min(0.5, fan_in ** -0.5)))
            else:
                t.copy_(normal(t.shape, 0.1))


def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(PIXEL_SEED)
    pixels = torch.randn((N_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g)
    g = torch.Generator().manual_seed(IDS_SEED)
    rows = []
    for n in ROW_LENGTHS:
        body = torch.randint(0, BOS, (n - 2,), generator=g).tolist()
        row = [BOS] + body + [EOS]
        rows.append(row + [PAD] * (SEQ_LEN - len(row)))
    return pixels, torch.tensor(rows, dtype=torch.int64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted(MODEL_CFGS), default="resnet")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or {"resnet": "tests/fixtures/clip-rn-tiny", "vit": "tests/fixtures/openclip-vit-tiny"}[args.family]
    torch.set_num_threads(1)
    stubbed = stub_torchvision()
    import open_clip
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    cfg = MODEL_CFGS[args.family]
    torch.manual_seed(SEED)
    model = CLIP(**cfg).float()
    reinit(model)
    model.eval()
    pixels, ids = make_inputs()
    # the pooling rule: argmax(ids) = the first EOS (the largest id)
    assert torch.equal(ids.argmax(-1), torch.tensor([n - 1 for n in ROW_LENGTHS]))

    with torch.no_grad():
        image_embeds = model.encode_image(pixels)
        text_embeds = model.encode_text(ids)
        logits_per_image = model.logit_scale.exp() * (
            torch.nn.functional.normalize(image_embeds, dim=-1) @ torch.nn.functional.normalize(text_embeds, dim=-1).T
        )
        ref = {
            "pixel_values": pixels,
            "input_ids": ids,
            "image_embeds": image_embeds,
            "text_embeds": text_embeds,
            "logits_per_image": logits_per_image,
        }
        if args.family == "resnet":
            v = model.visual
            trunk = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(pixels)))))
            ref["trunk"] = trunk  # ModifiedResNet output before attention pooling
            other = CLIP(**{**cfg, "quick_gelu": not cfg["quick_gelu"]}).float()
            other.load_state_dict(model.state_dict())
            other.eval()
            ref["text_embeds_gelu"] = other.encode_text(ids)
            # the activation really matters for these weights
            assert (ref["text_embeds_gelu"] - text_embeds).abs().max() > 1e-3

    scale = image_embeds.abs().max().item()
    assert 0.1 < scale < 100, f"image features of implausible size {scale}"

    os.makedirs(out, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out, "open_clip_model.safetensors"))
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": PREPROCESS_CFG}, f, indent=2)
    save_file(
        {k: v.detach().contiguous() for k, v in ref.items()},
        os.path.join(out, "reference.safetensors"),
        metadata={"generated_by": f"torch {torch.__version__}, open_clip {open_clip.__version__}"},
    )

    # reload check through open_clip's own loader path (state dict from the file)
    from safetensors.torch import load_file

    again = CLIP(**cfg).float()
    again.load_state_dict(load_file(os.path.join(out, "open_clip_model.safetensors")))
    again.eval()
    with torch.no_grad():
        assert torch.allclose(again.encode_image(pixels), image_embeds, atol=1e-6)

    readme = f"""# {os.path.basename(out)} parity fixture

A tiny, randomly initialised OpenCLIP `CLIP` ({args.family}) in the open_clip / OpenAI tensor
layout, plus reference outputs computed by open_clip. Used by `tests/clip_zoo.rs`.

Generated with torch {torch.__version__}, open_clip {open_clip.__version__}
(float32, `model.eval()`, `torch.no_grad()`{', torchvision stubbed: not installed' if stubbed else ''}).

Regenerate (from the repository root):

    ${{EQUIRUN_VENV:-/work/venv}}/bin/python scripts/gen_resnet_clip_fixture.py --family {args.family} --out {out}

## Files

- `open_clip_config.json`: `model_cfg` = `{json.dumps(cfg)}`, and the OpenAI `preprocess_cfg`.
- `open_clip_model.safetensors`: the `state_dict` (f32, including batch-norm running statistics
  and `num_batches_tracked`). Every parameter and statistic is re-initialised with seeded noise.
- `reference.safetensors`: `pixel_values` f32 [2,3,64,64], `input_ids` i64 [3,16] (rows of real
  length 4, 6, 8 with BOS 98 / EOS 99, padded with 0 as open_clip does), `image_embeds` = `encode_image`,
  `text_embeds` = `encode_text` (both unnormalised), `logits_per_image` (with exp(logit_scale)).
  ResNet only: `trunk` (layer4 output before attention pooling) and `text_embeds_gelu` (the same
  weights with `quick_gelu` flipped).
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme)
    total = 0
    for name in sorted(os.listdir(out)):
        size = os.path.getsize(os.path.join(out, name))
        total += size
        print(f"  {name}: {size} bytes")
    print(f"  total: {total} bytes; image_embeds max |x| {scale:.3f}")
    assert total < 1_000_000, "fixture too large"
    return 0


if __name__ == "__main__":
    sys.exit(main())
