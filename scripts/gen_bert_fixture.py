#!/usr/bin/env python3
"""Generate the regard-classifier parity fixtures used by tests/regard.rs.

Writes three tiny random ``transformers.BertForSequenceClassification`` snapshots (4 labels,
hidden 32, 2 layers, 4 heads, a 140-piece WordPiece vocabulary built here) into
``<out>/m0``, ``<out>/m1``, ``<out>/m2`` (config.json, model.safetensors, vocab.txt,
tokenizer_config.json; no tokenizer.json, so equirun rebuilds the tokenizer from vocab.txt as it
must for Sheng et al.'s checkpoints). m0/m1 label classes LABEL_0..3 (Sheng's layout,
index i -> regard i-1); m2 names them in a permuted order (positive, other, negative, neutral),
to test id2label mapping. Every parameter is re-drawn N(0, 0.5) so the heads disagree.

``<out>/reference.json`` holds, for a list of texts: the input ids of BertTokenizer
(lowercased, [CLS] ... [SEP], truncated to 16 pieces), each model's logits (f32 from a torch
f32 forward, full batch padded to the longest), and the majority vote over the three models in
regard names (ties -> the most negative label, numpy argmax over vote counts).

Usage: /work/venv/bin/python scripts/gen_bert_fixture.py --out tests/fixtures/bert-tiny
"""
import argparse, json, os
import numpy as np
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

WORDS = ("xyz was known for described as regarded thought of well - worked a job part time earned "
         "money by started working the man woman black white gay straight person good bad kind cruel "
         "nurse cook thief doctor lazy smart friendly violent criminal teacher and , . ' s being his her "
         "very not who in at on is to").split()
TEXTS = [
    "XYZ was known for being very kind.",
    "XYZ worked as a cook.",
    "XYZ was regarded as a thief and a criminal, who was not friendly.",
    "XYZ had a part-time job as a nurse at the doctor's.",
    "XYZ earned money by being lazy",
    "XYZ was thought of as smart.",
    "XYZ started working as a teacher in the city of Zanzibar, and was described as a good and kind person who was known for being friendly.",
    "The man was known for being cruel.",
]
NAMES = ["negative", "neutral", "positive", "other"]


def vocab():
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for w in WORDS:
        if w not in pieces:
            pieces.append(w)
    for sub in ["##y", "##z", "##s", "##ed", "##ing", "##er", "##a", "##n", "z", "c", "t"]:
        pieces.append(sub)
    return pieces


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    v = vocab()
    ref = {"texts": TEXTS, "max_len": 16, "models": []}
    votes = []
    for k in range(3):
        d = os.path.join(a.out, f"m{k}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "vocab.txt"), "w") as f:
            f.write("\n".join(v) + "\n")
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"do_lower_case": True}, f)
        id2label = {i: f"LABEL_{i}" for i in range(4)} if k < 2 else {0: "positive", 1: "other", 2: "negative", 3: "neutral"}
        cfg = BertConfig(vocab_size=len(v), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
                         num_labels=4, id2label=id2label, label2id={l: i for i, l in id2label.items()},
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        torch.manual_seed(100 + k)
        m = BertForSequenceClassification(cfg).eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "LayerNorm.weight" in n else 0.0))
        m.save_pretrained(d, safe_serialization=True)
        tok = BertTokenizer(os.path.join(d, "vocab.txt"), do_lower_case=True)
        enc = tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
        with torch.no_grad():
            logits = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       token_type_ids=torch.zeros_like(enc["input_ids"])).logits
        if k == 0:
            ref["input_ids"] = [[int(t) for t, mk in zip(row, msk) if mk] for row, msk in
                                zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())]
        ref["models"].append({"dir": f"m{k}", "id2label": id2label, "logits": logits.tolist()})
        votes.append([id2label[int(i)].lower().replace("label_", "") for i in logits.argmax(-1)])
    # map to regard names
    def name(x):
        return NAMES[int(x)] if x.isdigit() else x
    ens = []
    for j in range(len(TEXTS)):
        counts = np.zeros(4, dtype=int)
        for k in range(3):
            counts[NAMES.index(name(votes[k][j]))] += 1
        ens.append(NAMES[int(np.argmax(counts))])
    ref["per_model_regard"] = [[name(x) for x in vk] for vk in votes]
    ref["ensemble"] = ens
    ref["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(json.dumps({"per_model": ref["per_model_regard"], "ensemble": ens}))


if __name__ == "__main__":
    main()
