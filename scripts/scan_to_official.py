#!/usr/bin/env python3
"""Convert an equirun SCAN seq2seq checkpoint (safetensors) into the state dict of the official
EquiSCAN `BasicSeq2Seq` (baltaci-r/Multi-Group-Equivariant-Networks), see docs/scan-official.md.

equirun already names its tensors like the PyTorch state dict; what differs is the vocabulary
order. equirun sorts the tokens (<SOS>, <EOS>, then sorted words); the official code numbers
SOS=0, EOS=1 and then the words in order of first appearance in its training file. So the
embedding rows and the output layer's rows are permuted. The official model also holds two
tensors its forward pass never reads (`encoder.semantic_embedding.weight`,
`decoder.attn.{weight,bias}`); they are written as zeros.

Usage:
  python scripts/scan_to_official.py --checkpoint results/scan-pretrain/real/seed-0/best.safetensors \\
      --train-file data/scan-ii/train.txt --out /tmp/best_validation.pt

`--train-file` is the training file the official code reads (`equirun scan generate --dataset
scan-ii` writes it as train.txt). Exit code 2 with a message on bad input.
"""
import argparse
import sys
from pathlib import Path

MAX_LENGTH = 50  # the official decoder's attention width (its unused `attn` layer)


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def official_vocab(train_file):
    """(command words, actions) in the official numbering: SOS, EOS, then first appearance."""
    cmds, acts = ["SOS", "EOS"], ["SOS", "EOS"]
    seen_c, seen_a = set(cmds), set(acts)
    text = Path(train_file).read_text(encoding="utf-8").strip().split("\n")
    for n, line in enumerate(text, 1):
        if "IN: " not in line or " OUT: " not in line:
            fail(f"--train-file {train_file}:{n}: not an `IN: ... OUT: ...` line")
        c, a = line.split("IN: ")[-1].split(" OUT: ")
        for w in c.split(" "):
            if w not in seen_c:
                seen_c.add(w)
                cmds.append(w)
        for w in a.replace("I_", "").split(" "):
            if w not in seen_a:
                seen_a.add(w)
                acts.append(w)
    return cmds, acts


def equirun_vocab(words):
    """equirun's numbering of the same word set: <SOS>, <EOS>, then sorted."""
    return ["SOS", "EOS"] + sorted(w for w in words if w not in ("SOS", "EOS"))


def convert(checkpoint, train_file):
    """Returns (state dict for the official BasicSeq2Seq, command list, action list, cell)."""
    import torch
    from safetensors.torch import load_file

    st = load_file(str(checkpoint))
    cmds, acts = official_vocab(train_file)
    e_cmds, e_acts = equirun_vocab(cmds), equirun_vocab(acts)
    v_in, v_out = st["encoder.embedding.weight"].shape[0], st["decoder.out.weight"].shape[0]
    if (v_in, v_out) != (len(cmds), len(acts)):
        fail(
            f"--checkpoint has vocabularies of {v_in} commands / {v_out} actions, --train-file "
            f"{len(cmds)} / {len(acts)}: convert with the training file of the dataset the "
            "checkpoint was trained on"
        )
    # official index k holds the word cmds[k], which equirun numbers e_cmds.index(word)
    p_in = torch.tensor([e_cmds.index(w) for w in cmds])
    p_out = torch.tensor([e_acts.index(w) for w in acts])
    gates = st["encoder.rnn.weight_ih_l0"].shape[0] // st["encoder.rnn.weight_ih_l0"].shape[1]
    cell = {1: "RNN", 3: "GRU", 4: "LSTM"}.get(gates)
    if cell is None:
        fail(f"--checkpoint: cannot tell the cell type from {gates} gates")
    sd = {}
    for name, t in st.items():
        t = t.to(torch.float32).clone()
        if name == "encoder.embedding.weight":
            t = t[p_in]
        elif name in ("decoder.embedding.weight", "decoder.out.weight", "decoder.out.bias"):
            t = t[p_out]
        sd[name] = t
    enc_h = st["encoder.embedding.weight"].shape[1]
    dec_h = st["decoder.embedding.weight"].shape[1]
    # tensors the official forward never reads
    sd["encoder.semantic_embedding.weight"] = torch.zeros(v_in, 120)
    sd["decoder.attn.weight"] = torch.zeros(MAX_LENGTH, 2 * dec_h)
    sd["decoder.attn.bias"] = torch.zeros(MAX_LENGTH)
    assert dec_h == 2 * enc_h, "bidirectional encoder expected"
    return sd, cmds, acts, cell


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="equirun best.safetensors")
    ap.add_argument("--train-file", required=True, help="the official-format training file")
    ap.add_argument("--out", required=True, help="output .pt (official best_validation.pt)")
    a = ap.parse_args()
    if not Path(a.checkpoint).is_file():
        fail(f"--checkpoint {a.checkpoint}: no such file")
    if not Path(a.train_file).is_file():
        fail(f"--train-file {a.train_file}: no such file")
    import torch

    sd, cmds, acts, cell = convert(a.checkpoint, a.train_file)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(sd, tmp)
    tmp.replace(out)
    print(f"wrote {out} ({cell}, {len(cmds)} commands, {len(acts)} actions)")


if __name__ == "__main__":
    main()
