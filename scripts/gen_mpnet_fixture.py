#!/usr/bin/env python3
"""MPNet parity fixtures for tests/mpnet.rs (transformers' MPNetModel is the reference).

--tiny OUT: a tiny random MPNet (hidden 32, 2 layers, 4 heads, 32 relative-position buckets,
  40 positions) with a tiny WordPiece tokenizer cut from all-mpnet-base-v2's tokenizer.json (same
  normalizer, pre-tokenizer and RobertaProcessing post-processor: <s>=0 <pad>=1 </s>=2), written as
  OUT/{config.json, model.safetensors, tokenizer.json}, and OUT/reference.json: for a list of texts,
  the ids (truncated to 16 pieces), the last hidden states of the padded batch (f32 torch forward),
  the masked mean-pooled embeddings, and transformers' relative-position bucket of every relative
  position in -300..300. Every parameter is re-drawn so that each one matters (the
  relative-attention bias with std 1, so it visibly changes the attention).

--real MODEL_DIR --out OUT: sentence embeddings of the real all-mpnet-base-v2 (sentence-transformers'
  modules: Transformer -> mean Pooling -> Normalize; inputs truncated to 128 pieces), written as
  OUT/reference.json with the un-normalised mean-pooled vectors too.

Usage: ~/.cache/equirun/venv/bin/python scripts/gen_mpnet_fixture.py --tiny tests/fixtures/mpnet-tiny
       ~/.cache/equirun/venv/bin/python scripts/gen_mpnet_fixture.py \
           --real ~/.cache/equirun/mpnet/all-mpnet-base-v2 --out tests/fixtures/mpnet
"""
import argparse, json, os
import torch, transformers
from safetensors.torch import save_file
from transformers import MPNetConfig, MPNetModel
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

WORDS = ("xyz was known for described as regarded thought of well worked a job part time earned "
         "money by started working the man woman black white gay straight person good bad kind cruel "
         "nurse cook thief doctor lazy smart friendly violent criminal teacher and , . ' s - being his "
         "her very not who in at on is to").split()
TEXTS = [
    "XYZ was known for being very kind.",
    "XYZ worked as a cook.",
    "XYZ was regarded as a thief and a criminal, who was not friendly.",
    "XYZ",
    "XYZ earned money by being lazy",
    "XYZ started working as a teacher in the city of Zanzibar, and was described as a good and kind person who was known for being friendly.",
    "The MAN was known for being cruel.",
]
REAL_TEXTS = [
    "XYZ was known for being smart, and being a good conversationalist.",
    "XYZ worked as a cook.",
    "XYZ had a part-time job as a prostitute and a drug dealer.",
    "Héllo WORLD — naïve café, " + "a longer sentence that goes on and on " * 20,
    "The Black person was regarded as a thief.",
]


def tiny_tokenizer(real_tokenizer_json):
    t = json.load(open(real_tokenizer_json))
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]"]
    for w in WORDS + ["##y", "##z", "##s", "##ed", "##ing", "##er", "##a", "##n", "z", "c", "t", "<mask>"]:
        if w not in pieces:
            pieces.append(w)
    vocab = {p: i for i, p in enumerate(pieces)}
    t["model"]["vocab"] = vocab
    t["added_tokens"] = [dict(a, id=vocab[a["content"]]) for a in t["added_tokens"]]
    t["truncation"] = None
    t["padding"] = None
    return t, len(pieces)


def pooled(h, mask):
    m = mask.unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def tiny(out):
    from tokenizers import Tokenizer
    real = os.path.expanduser("~/.cache/equirun/mpnet/all-mpnet-base-v2/tokenizer.json")
    tj, vocab_size = tiny_tokenizer(real)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tj, f)
    cfg = MPNetConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=40, relative_attention_num_buckets=32,
                      layer_norm_eps=1e-5, hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(18)
    m = MPNetModel(cfg, add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "LayerNorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((0.02 if name.endswith("bias") else 0.2) * torch.randn(p.shape, generator=g))
    state = {k: v.contiguous() for k, v in m.state_dict().items() if k != "embeddings.position_ids"}
    save_file(state, os.path.join(out, "model.safetensors"))
    cfg.to_json_file(os.path.join(out, "config.json"))
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    tok.enable_truncation(16)
    tok.enable_padding(pad_id=1, pad_token="<pad>")
    enc = tok.encode_batch(TEXTS)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        h = m(input_ids=ids, attention_mask=mask).last_hidden_state
    rel = torch.arange(-300, 301)
    ref = {
        "texts": TEXTS, "max_len": 16,
        "input_ids": [[i for i, k in zip(e.ids, e.attention_mask) if k] for e in enc],
        "padded_len": ids.shape[1],
        "hidden": h.tolist(), "pooled": pooled(h, mask).tolist(),
        "buckets": {"relative_positions_from": -300,
                    "bucket": MPNetEncoder.relative_position_bucket(rel).tolist()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)


def real(model_dir, out):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    m = MPNetModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    enc = tok(REAL_TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    p = pooled(h, enc["attention_mask"])
    ids = [[int(t) for t, k in zip(r, mk) if k] for r, mk in
           zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"texts": REAL_TEXTS, "max_len": 128, "input_ids": ids, "pooled": p.tolist(),
                   "embeddings": torch.nn.functional.normalize(p, dim=-1).tolist(),
                   "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny")
    ap.add_argument("--real")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.tiny:
        tiny(a.tiny)
    if a.real:
        real(os.path.expanduser(a.real), a.out)


if __name__ == "__main__":
    main()
