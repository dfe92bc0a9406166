#!/usr/bin/env python3
"""Generate the tiny CLIP parity fixture used by equirun's Rust tests.

Builds a tiny Hugging Face ``transformers.CLIPModel`` with a fixed seed,
re-initialises *every* parameter with noise (so layer-norm weights/biases,
class embedding, position embeddings, ... are all exercised by the parity
test), keeps ``logit_scale = 2.6592`` and writes:

  <out>/config.json            HF config (full, not a diff against defaults)
  <out>/model.safetensors      HF weights, f32, HF tensor names
  <out>/reference.safetensors  fixed inputs + reference outputs (f32 / i64)
  <out>/README.md              versions used + regeneration command

Usage (from the repository root, with the venv from scripts/setup_python.sh):

  /work/venv/bin/python scripts/gen_clip_fixture.py --out tests/fixtures/clip-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

SEED = 0
PIXEL_SEED = 1234
IDS_SEED = 4321
INIT_STD = 0.2
LOGIT_SCALE = 2.6592

BOS, EOS, PAD = 98, 99, 99
SEQ_LEN = 8
ROW_LENGTHS = (4, 6, 8)  # real lengths incl. BOS and EOS
N_IMAGES = 2
IMAGE_SIZE = 32

TEXT_CONFIG = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    hidden_act="quick_gelu",
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
    layer_norm_eps=1e-5,
    projection_dim=32,
)
VISION_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=8,
    num_channels=3,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=32,
)
PROJECTION_DIM = 32


def build_model() -> CLIPModel:
    config = CLIPConfig(
        text_config=TEXT_CONFIG,
        vision_config=VISION_CONFIG,
        projection_dim=PROJECTION_DIM,
        logit_scale_init_value=LOGIT_SCALE,
    )
    torch.manual_seed(SEED)
    try:
        # eager attention: the plain softmax(QK^T)V path, closest to candle.
        model = CLIPModel._from_config(config, attn_implementation="eager")
    except Exception:  # pragma: no cover - older/newer API differences
        model = CLIPModel(config)
    model = model.to(torch.float32)

    # Re-initialise every parameter with noise; layer norms around 1 (weight)
    # and 0 (bias) so they are clearly not the identity.
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * INIT_STD
            if name == "logit_scale":
                p.fill_(LOGIT_SCALE)
            elif ("layer_norm" in name or "layrnorm" in name or "layernorm" in name) and name.endswith(
                ".weight"
            ):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)
    model.eval()
    return model


def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(PIXEL_SEED)
    pixel_values = torch.randn((N_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g, dtype=torch.float32)

    g = torch.Generator().manual_seed(IDS_SEED)
    rows = []
    for n in ROW_LENGTHS:
        body = torch.randint(0, BOS, (n - 2,), generator=g, dtype=torch.int64).tolist()  # ids in 0..97
        row = [BOS] + body + [EOS]
        row += [PAD] * (SEQ_LEN - len(row))
        rows.append(row)
    input_ids = torch.tensor(rows, dtype=torch.int64)
    return pixel_values, input_ids


def _as_tensor(out, expected: torch.Tensor, what: str) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4.x; newer versions may
    return a ModelOutput. Pick the field that equals the projected embeds."""
    if isinstance(out, torch.Tensor):
        print(f"{what}: returned a torch.Tensor")
        return out
    candidates = []
    for key in ("image_embeds", "text_embeds", "pooler_output", "last_hidden_state"):
        v = getattr(out, key, None)
        if isinstance(v, torch.Tensor):
            candidates.append((key, v))
    for key, v in candidates:
        if v.shape == expected.shape and torch.allclose(v, expected, atol=1e-5, rtol=1e-5):
            print(f"{what}: returned {type(out).__name__}; projected embeds found in .{key}")
            return v
    raise RuntimeError(f"{what}: cannot find projected embeds in {type(out).__name__}: {[k for k, _ in candidates]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/clip-tiny")
    args = ap.parse_args()
    torch.set_num_threads(1)

    out = args.out
    os.makedirs(out, exist_ok=True)

    print(f"torch {torch.__version__}  transformers {transformers.__version__}")
    model = build_model()
    pixel_values, input_ids = make_inputs()

    # --- pooling rule check -------------------------------------------------
    # transformers: first occurrence of eos_token_id (argmax if eos_token_id == 2)
    # candle:       argmax(input_ids) (first max). With EOS = 99 = max id they agree.
    hf_idx = (input_ids == EOS).int().argmax(dim=-1)
    argmax_idx = input_ids.argmax(dim=-1)
    first_max = torch.tensor([row.tolist().index(max(row.tolist())) for row in input_ids])
    expected_idx = torch.tensor([n - 1 for n in ROW_LENGTHS])
    assert torch.equal(hf_idx, expected_idx), (hf_idx, expected_idx)
    assert torch.equal(argmax_idx, expected_idx), (argmax_idx, expected_idx)
    assert torch.equal(first_max, expected_idx), (first_max, expected_idx)
    print(f"text pooling index (HF first-EOS == argmax == first max): {hf_idx.tolist()}")

    with torch.no_grad():
        vision_pooled = model.vision_model(pixel_values=pixel_values).pooler_output
        text_out = model.text_model(input_ids=input_ids)
        text_pooled = text_out.pooler_output
        # independent check of the pooling index against the last hidden state
        manual = text_out.last_hidden_state[torch.arange(len(ROW_LENGTHS)), expected_idx]
        assert torch.allclose(manual, text_pooled, atol=1e-6), "text pooling index mismatch"

        image_embeds = _as_tensor(
            model.get_image_features(pixel_values=pixel_values),
            model.visual_projection(vision_pooled),
            "get_image_features",
        )
        text_embeds = _as_tensor(
            model.get_text_features(input_ids=input_ids),
            model.text_projection(text_pooled),
            "get_text_features",
        )
        full = model(input_ids=input_ids, pixel_values=pixel_values)
        logits_per_image = full.logits_per_image
        logits_per_text = full.logits_per_text

        # independent check of the logits formula
        ie = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        te = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        manual_logits = ie @ te.t() * torch.tensor(LOGIT_SCALE).exp()
        assert torch.allclose(manual_logits, logits_per_image, atol=1e-4), "logits mismatch"

    # --- save model ---------------------------------------------------------
    model.save_pretrained(out, safe_serialization=True)
    # Write the *full* config (save_pretrained may write only a diff against
    # class defaults, which would drop fields such as hidden_act/layer_norm_eps).
    model.config.to_json_file(os.path.join(out, "config.json"), use_diff=False)
    for extra in sorted(os.listdir(out)):
        if extra not in ("config.json", "model.safetensors", "reference.safetensors", "README.md"):
            print(f"note: save_pretrained also wrote {extra}; removing it")
            os.remove(os.path.join(out, extra))

    with safe_open(os.path.join(out, "model.safetensors"), framework="pt") as f:
        keys = sorted(f.keys())
        dtypes = {str(f.get_tensor(k).dtype) for k in keys}
    for k in ("vision_model.embeddings.class_embedding", "logit_scale"):
        assert k in keys, f"missing {k} in model.safetensors"
    assert dtypes == {"torch.float32"}, dtypes
    pos_ids = [k for k in keys if k.endswith("position_ids")]
    print(f"model.safetensors: {len(keys)} tensors, dtypes {sorted(dtypes)}")
    print(f"position_ids tensors in model.safetensors: {pos_ids or 'none'}")

    ref = {
        "pixel_values": pixel_values,
        "input_ids": input_ids,
        "image_embeds": image_embeds,
        "text_embeds": text_embeds,
        "logits_per_image": logits_per_image,
        "logits_per_text": logits_per_text,
        "vision_pooled": vision_pooled,
        "text_pooled": text_pooled,
    }
    ref = {k: v.detach().contiguous() for k, v in ref.items()}
    save_file(
        ref,
        os.path.join(out, "reference.safetensors"),
        # a single metadata key: safetensors writes a multi-key metadata map in
        # random order, which would make regeneration not byte-identical.
        metadata={"generated_by": f"torch {torch.__version__}, transformers {transformers.__version__}"},
    )
    for k, v in ref.items():
        print(f"  reference {k}: {list(v.shape)} {v.dtype}")

    # --- reload check -------------------------------------------------------
    reloaded = CLIPModel.from_pretrained(out)
    reloaded.eval()
    with torch.no_grad():
        again = reloaded(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    assert torch.allclose(again, logits_per_image, atol=1e-5), "reload mismatch"
    print("reload via CLIPModel.from_pretrained: OK")

    readme = f"""# clip-tiny parity fixture

A tiny, randomly initialised Hugging Face `CLIPModel` plus reference outputs
computed by PyTorch/transformers. Used by equirun's Rust tests to check the
candle CLIP implementation against the reference implementation.

Generated with torch {torch.__version__}, transformers {transformers.__version__}
(float32, `model.eval()`, `torch.no_grad()`, eager attention).

Regenerate (from the repository root):

    bash scripts/setup_python.sh        # venv at ${{EQUIRUN_VENV:-/work/venv}}
    ${{EQUIRUN_VENV:-/work/venv}}/bin/python scripts/gen_clip_fixture.py --out tests/fixtures/clip-tiny

## Files

- `config.json` – full HF `CLIPConfig` (text: vocab 100, hidden 64, 2 layers,
  4 heads, intermediate 128, max_pos 16, quick_gelu, bos 98, eos/pad 99;
  vision: hidden 64, 2 layers, 4 heads, intermediate 128, image 32, patch 8;
  projection_dim 32; layer_norm_eps 1e-5).
- `model.safetensors` – f32 weights with HF tensor names. Every parameter is
  re-initialised with N(0, {INIT_STD}) noise (layer-norm weights 1 + N(0, {INIT_STD})),
  except `logit_scale` = {LOGIT_SCALE}. Position-id buffers: {pos_ids or 'not stored'}.
- `reference.safetensors` – inputs and outputs:
  - `pixel_values` f32 [2,3,32,32], `input_ids` i64 [3,8] (rows of real length
    4, 6, 8 incl. BOS=98/EOS=99, padded with 99).
  - `vision_pooled` f32 [2,64] – `vision_model(...).pooler_output` (post_layernorm of CLS).
  - `text_pooled` f32 [3,64] – `text_model(...).pooler_output` (hidden state at first EOS).
  - `image_embeds` f32 [2,32] – `get_image_features` (projected, NOT normalised).
  - `text_embeds` f32 [3,32] – `get_text_features` (projected, NOT normalised).
  - `logits_per_image` f32 [2,3], `logits_per_text` f32 [3,2] – include exp(logit_scale).

Text pooling: transformers pools at the first `eos_token_id`; candle pools at
`argmax(input_ids)`. EOS = 99 is the largest id, so both pick the same position
({hf_idx.tolist()} for the three rows). No attention mask is used (causal mask only).
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme)

    total = 0
    for name in sorted(os.listdir(out)):
        size = os.path.getsize(os.path.join(out, name))
        total += size
        print(f"  {name}: {size} bytes")
    print(f"  total: {total} bytes")
    if total >= 500_000:
        # The brief's tiny config (~160k f32 params) lands around 650 KB.
        print(f"warning: fixture is {total} bytes (>= 500 KB soft limit)")
    assert total < 1_000_000, "fixture too large"
    return 0


if __name__ == "__main__":
    sys.exit(main())
