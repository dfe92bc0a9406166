#!/usr/bin/env python3
"""Convert a BERT classifier checkpoint folder with pytorch_model.bin (e.g. Sheng et al.'s
regard2 models) into the layout `equirun regard --scorer bert:<folder>` reads: model.safetensors
(f32; LayerNorm `gamma`/`beta` renamed to `weight`/`bias`), with config.json, vocab.txt and
tokenizer_config.json copied when present.

Usage: python scripts/convert_bert_bin.py SRC_DIR DST_DIR
"""
import os, shutil, sys
import torch
from safetensors.torch import save_file

def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    bin_path = os.path.join(src, "pytorch_model.bin")
    if not os.path.isfile(bin_path):
        sys.exit(f"{bin_path} not found")
    sd = torch.load(bin_path, map_location="cpu", weights_only=True)
    out = {}
    for k, v in sd.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if v.is_floating_point():
            v = v.float()
        out[k] = v.contiguous()
    os.makedirs(dst, exist_ok=True)
    save_file(out, os.path.join(dst, "model.safetensors"))
    for f in ["config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json"]:
        if os.path.isfile(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    print(f"{len(out)} tensors -> {os.path.join(dst, 'model.safetensors')}")

if __name__ == "__main__":
    main()
