#!/usr/bin/env python3
"""Generate the tiny GPT-2 parity fixture used by equirun's Rust tests (tests/gpt2.rs).

Builds a tiny Hugging Face ``transformers.GPT2LMHeadModel`` (vocab 100, n_embd 32,
2 layers, 4 heads, n_positions 64) with a fixed seed, re-initialises *every*
parameter with N(0, 0.2) noise (layer-norm weights 1 + noise) so that the parity
test exercises every tensor, and writes:

  <out>/config.json            full HF GPT2Config (not a diff against the defaults)
  <out>/model.safetensors      HF weights as save_pretrained writes them (f32)
  <out>/reference.safetensors  input_ids i64 [2,7], logits f32 [2,7,100] (full forward),
                               step_logits f32 [2,4,100] (KV-cache decoding: the first
                               4 tokens in one call, then the remaining 3 one at a time;
                               row j = logits of the last fed position, i.e. positions 3..6)
  <out>/README.md              versions used + regeneration command

It also prints (and records in README.md) the tensor-name layout that this
transformers version writes (``transformer.`` prefix or not, lm_head present or not).

Usage (from the repository root, with the venv from scripts/setup_python.sh):

  /work/venv/bin/python scripts/gen_gpt2_fixture.py --out tests/fixtures/gpt2-tiny
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

SEED = 0
IDS_SEED = 4321
INIT_STD = 0.2
BIAS_STD = 0.2
VOCAB = 100
N_ROWS = 2
SEQ_LEN = 7
PREFIX = 4  # tokens fed in the first cached call; the rest one at a time

CONFIG = dict(
    vocab_size=VOCAB,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    bos_token_id=VOCAB - 1,
    eos_token_id=VOCAB - 1,
)


def build_model() -> GPT2LMHeadModel:
    config = GPT2Config(**CONFIG)
    torch.manual_seed(SEED)
    try:
        # eager attention: the plain softmax(QK^T/sqrt(d))V path, closest to equirun's.
        model = GPT2LMHeadModel._from_config(config, attn_implementation="eager")
    except Exception:  # pragma: no cover - API differences across versions
        model = GPT2LMHeadModel(config)
    model = model.to(torch.float32)

    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            # lm_head.weight is tied to wte: named_parameters() yields it once.
            std = BIAS_STD if name.endswith(".bias") else INIT_STD
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
            if (".ln_" in name or "ln_f" in name) and name.endswith(".weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head not tied"
    model.eval()
    return model


def make_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(IDS_SEED)
    return torch.randint(0, VOCAB, (N_ROWS, SEQ_LEN), generator=g, dtype=torch.int64)


def cached_logits(model: GPT2LMHeadModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the last position after feeding PREFIX tokens, then one token at a time."""
    out = model(input_ids=input_ids[:, :PREFIX], use_cache=True)
    past = out.past_key_values
    rows = [out.logits[:, -1, :]]
    for j in range(PREFIX, SEQ_LEN):
        out = model(input_ids=input_ids[:, j : j + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        assert out.logits.shape[1] == 1
        rows.append(out.logits[:, -1, :])
    return torch.stack(rows, dim=1)  # [N, SEQ_LEN - PREFIX + 1, V]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/gpt2-tiny")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out
    os.makedirs(out, exist_ok=True)

    print(f"torch {torch.__version__}  transformers {transformers.__version__}")
    model = build_model()
    input_ids = make_inputs()

    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits
        step_logits = cached_logits(model, input_ids)
        # independent checks: the cached path agrees with the full forward, and the
        # logits are the tied-embedding projection of the final hidden state
        d_cache = (step_logits - logits[:, PREFIX - 1 :, :]).abs().max().item()
        print(f"torch: KV-cache vs full-forward max abs diff {d_cache:.3e}")
        assert d_cache < 1e-4, d_cache
        hidden = model.transformer(input_ids=input_ids, use_cache=False).last_hidden_state
        manual = hidden @ model.transformer.wte.weight.t()
        assert torch.allclose(manual, logits, atol=1e-5), "logits are not hidden @ wte^T"
    scale = logits.abs().max().item()
    print(f"logits: max |x| {scale:.3f}, std {logits.std().item():.3f}")
    assert scale > 1.0, "logits suspiciously small: the parity test would be vacuous"

    # --- save model ---------------------------------------------------------
    model.save_pretrained(out, safe_serialization=True)
    model.config.to_json_file(os.path.join(out, "config.json"), use_diff=False)
    for extra in sorted(os.listdir(out)):
        if extra not in ("config.json", "model.safetensors", "reference.safetensors", "README.md"):
            print(f"note: save_pretrained also wrote {extra}; removing it")
            os.remove(os.path.join(out, extra))

    with safe_open(os.path.join(out, "model.safetensors"), framework="pt") as f:
        keys = sorted(f.keys())
        shapes = {k: list(f.get_slice(k).get_shape()) for k in keys}
        dtypes = {str(f.get_tensor(k).dtype) for k in keys}
    assert dtypes == {"torch.float32"}, dtypes
    prefixed = all(k.startswith("transformer.") or k.startswith("lm_head.") for k in keys)
    bare = not any(k.startswith("transformer.") for k in keys)
    has_lm_head = "lm_head.weight" in keys
    has_attn_bias = any(k.endswith(".attn.bias") or k.endswith(".attn.masked_bias") for k in keys)
    layout = (
        f"{'`transformer.`-prefixed' if prefixed else ('bare' if bare else 'mixed')} names, "
        f"lm_head.weight {'present' if has_lm_head else 'absent (tied to wte)'}, "
        f"attn.bias/masked_bias buffers {'present' if has_attn_bias else 'absent'}"
    )
    print(f"model.safetensors: {len(keys)} tensors, dtypes {sorted(dtypes)}; layout: {layout}")
    for k in keys:
        print(f"  {k} {shapes[k]}")
    wte = "transformer.wte.weight" if prefixed else "wte.weight"
    c_attn = ("transformer." if prefixed else "") + "h.0.attn.c_attn.weight"
    assert shapes[wte] == [VOCAB, 32], shapes[wte]
    assert shapes[c_attn] == [32, 96], f"Conv1D weight is not [in, out]: {shapes[c_attn]}"

    ref = {"input_ids": input_ids, "logits": logits, "step_logits": step_logits}
    ref = {k: v.detach().contiguous() for k, v in ref.items()}
    save_file(
        ref,
        os.path.join(out, "reference.safetensors"),
        metadata={"generated_by": f"torch {torch.__version__}, transformers {transformers.__version__}"},
    )
    for k, v in ref.items():
        print(f"  reference {k}: {list(v.shape)} {v.dtype}")

    # --- reload check -------------------------------------------------------
    reloaded = GPT2LMHeadModel.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        again = reloaded(input_ids=input_ids, use_cache=False).logits
    assert torch.allclose(again, logits, atol=1e-5), "reload mismatch"
    print("reload via GPT2LMHeadModel.from_pretrained: OK")

    readme = f"""# gpt2-tiny parity fixture

A tiny, randomly initialised Hugging Face `GPT2LMHeadModel` plus reference logits
computed by PyTorch/transformers. Used by `tests/gpt2.rs` to check equirun's
candle-nn GPT-2 (`src/models/lm/gpt2.rs`) against the reference implementation,
including its KV cache.

Generated with torch {torch.__version__}, transformers {transformers.__version__}
(float32, `model.eval()`, `torch.no_grad()`, eager attention).

Regenerate (from the repository root):

    bash scripts/setup_python.sh        # venv at ${{EQUIRUN_VENV:-/work/venv}}
    ${{EQUIRUN_VENV:-/work/venv}}/bin/python scripts/gen_gpt2_fixture.py --out tests/fixtures/gpt2-tiny

## Files

- `config.json` – full HF `GPT2Config`: vocab 100, n_embd 32, n_layer 2, n_head 4,
  n_positions 64, n_inner null (= 4·n_embd), gelu_new, layer_norm_epsilon 1e-5,
  bos/eos 99, tied embeddings.
- `model.safetensors` – f32 weights exactly as `save_pretrained` writes them:
  {layout}. Conv1D weights are stored [in, out]
  (e.g. `h.0.attn.c_attn.weight` {shapes[c_attn]}). Every parameter is re-initialised
  with N(0, {INIT_STD}) noise (layer-norm weights 1 + N(0, {INIT_STD})).
- `reference.safetensors`:
  - `input_ids` i64 [{N_ROWS},{SEQ_LEN}] – uniform random ids in 0..{VOCAB}.
  - `logits` f32 [{N_ROWS},{SEQ_LEN},{VOCAB}] – full forward, no cache.
  - `step_logits` f32 [{N_ROWS},{SEQ_LEN - PREFIX + 1},{VOCAB}] – with `past_key_values`: the first
    {PREFIX} tokens in one call, then the remaining {SEQ_LEN - PREFIX} one at a time; entry j is the
    logits of the last fed position ({PREFIX - 1}+j). Equal to `logits[:, {PREFIX - 1}:]` (max abs diff
    {d_cache:.1e} in torch).
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme)

    total = 0
    for name in sorted(os.listdir(out)):
        size = os.path.getsize(os.path.join(out, name))
        total += size
        print(f"  {name}: {size} bytes")
    print(f"  total: {total} bytes")
    assert total < 400_000, "fixture too large"
    return 0


if __name__ == "__main__":
    sys.exit(main())
