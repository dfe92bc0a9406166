#!/usr/bin/env python3
"""PyTorch baseline: SCAN seq2seq training throughput on CPU (batch 1).

Re-implements, in one self-contained file, the computation of the reference
SCAN training setup:

* model  = ``BasicSeq2Seq`` with ``use_attention=True, bidirectional=True``
  (facebookresearch/Permutation-Equivariant-Seq2Seq, ``models.py`` +
  ``modules.py``: ``EncoderRNN`` + ``AttnDecoderRNN``), hidden 64 per encoder
  direction, decoder hidden 64 * 2 = 128;
* step   = ``train()`` of baltaci-r/Multi-Group-Equivariant-Networks
  ``EquiSCAN/train.py``: teacher forcing with probability 0.5 per sequence,
  ``NLLLoss`` summed over target positions up to (and including) the first
  position whose argmax is EOS, ``clip_grad_norm_(.., 5.)`` separately for the
  encoder and decoder parameters, two Adam optimizers (lr 1e-4), batch size 1,
  one uniformly random training pair per iteration.

Computation per example (SOS=0, EOS=1):

  encoder: ids + [EOS] -> Embedding(V_in, 64) -> [T,1,64]
           -> bidirectional GRU/LSTM/RNN(64, 64) -> enc_out [T,1,128]
  decoder state init: concat(final fwd state, final bwd state) -> [1,1,128]
           (for LSTM both h and c)
  decoder step (input token x, state h):
           e   = Dropout(0.1)(Embedding(V_out, 128)(x))
           a   = softmax(h_prev . enc_out^T)     (h of the LSTM state)
           ctx = a @ enc_out
           u   = ReLU(Linear(256 -> 128)([e; ctx]))
           h   = GRU/LSTM/RNN(128, 128) step on u
           out = log_softmax(Linear(128 -> V_out)(h))
  teacher forcing: run exactly len(target) steps feeding the gold tokens;
  otherwise: greedy for up to 50 steps, stopping after emitting EOS.
  Outputs go into a zero [50, V_out] buffer (as in the reference), so loss
  terms past the end of a free-running decode are NLL of an all-zero row (0).

The unused parameters of the reference modules (encoder ``semantic_embedding``
of width 120 and decoder ``attn`` Linear(256 -> 50)) are created too, so the
parameter set, optimizer state and gradient-clipping work match the reference.

All (warmup + iters) training pairs are drawn and converted to tensors before
timing, as the reference does before its loop. Only the ``iters`` training
steps after ``warmup`` untimed steps are timed. Prints one JSON line:

  {"framework":"pytorch","torch":...,"cell":"gru","batch_size":1,
   "iters":2000,"examples_per_s":...,"seconds":...}

Usage:

  /work/venv/bin/python scripts/bench_scan_torch.py \
      --data /work/shared/data/scan/add_prim_split/tasks_train_addprim_jump.txt \
      --cell gru --iters 2000 --warmup 100 --threads 2 --seed 0

``--print-every K`` additionally reports the running mean per-iteration loss
(the reference's ``loss / target_length``) every K iterations on stderr.
Only ``--batch-size 1`` (the reference setting) is implemented.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SOS = 0
EOS = 1
MAX_LENGTH = 50

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


# --------------------------------------------------------------------------
# data


def read_scan(path: str) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if not line.startswith("IN: ") or " OUT: " not in line:
                raise SystemExit(f"{path}:{lineno}: not a SCAN line: {line!r}")
            src, tgt = line[len("IN: "):].split(" OUT: ", 1)
            pairs.append((src.strip(), tgt.strip()))
    if not pairs:
        raise SystemExit(f"{path}: no SCAN pairs")
    return pairs


def build_vocab(sentences) -> dict[str, int]:
    words = sorted({w for s in sentences for w in s.split(" ")})
    return {w: i + 2 for i, w in enumerate(words)}  # 0 = SOS, 1 = EOS


def to_tensor(sentence: str, vocab: dict[str, int]) -> torch.Tensor:
    ids = [vocab[w] for w in sentence.split(" ")] + [EOS]
    return torch.tensor(ids, dtype=torch.long).view(-1, 1)  # [T, 1]


# --------------------------------------------------------------------------
# model


class Encoder(nn.Module):
    def __init__(self, vocab_in: int, hidden: int, cell: str, semantic: int = 120):
        super().__init__()
        self.hidden = hidden
        self.cell = cell
        self.embedding = nn.Embedding(vocab_in, hidden)
        # Unused in the forward computation of the reference; kept so that the
        # parameter set (Adam state, grad-norm clipping) is the same.
        self.semantic_embedding = nn.Embedding(vocab_in, semantic)
        self.rnn = CELLS[cell](hidden, hidden, bidirectional=True, num_layers=1)

    def zero_state(self):
        z = torch.zeros(2, 1, self.hidden)
        if self.cell == "lstm":
            return (z, torch.zeros(2, 1, self.hidden))
        return z

    def forward(self, ids: torch.Tensor):
        x = self.embedding(ids.squeeze())[:, None, :]  # [T, 1, H]
        out, state = self.rnn(x, self.zero_state())  # [T, 1, 2H]
        return out, state


class AttnDecoder(nn.Module):
    def __init__(self, hidden: int, vocab_out: int, cell: str, dropout: float = 0.1):
        super().__init__()
        self.vocab_out = vocab_out
        self.embedding = nn.Embedding(vocab_out, hidden)
        # Unused (the reference replaced this with dot-product attention).
        self.attn = nn.Linear(2 * hidden, MAX_LENGTH)
        self.attn_combine = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.rnn = CELLS[cell](hidden, hidden)
        self.out = nn.Linear(hidden, vocab_out)

    def forward(self, token: torch.Tensor, state, enc_out: torch.Tensor):
        e = self.dropout(self.embedding(token).view(1, 1, -1))  # [1, 1, H]
        h = state[0] if isinstance(state, tuple) else state  # [1, 1, H]
        mem = enc_out.squeeze(1)  # [T, H]
        weights = F.softmax(h[0] @ mem.t(), dim=1)  # [1, T]
        ctx = weights @ mem  # [1, H]
        u = F.relu(self.attn_combine(torch.cat((e[0], ctx), 1))).unsqueeze(0)
        y, state = self.rnn(u, state)
        return F.log_softmax(self.out(y[0]), dim=1), state  # [1, V]


class Seq2Seq(nn.Module):
    def __init__(self, vocab_in: int, vocab_out: int, cell: str, hidden: int = 64):
        super().__init__()
        self.cell = cell
        self.encoder = Encoder(vocab_in, hidden, cell)
        self.decoder = AttnDecoder(2 * hidden, vocab_out, cell)

    @staticmethod
    def _join_directions(s: torch.Tensor) -> torch.Tensor:
        # [2, 1, H] (fwd, bwd) -> [1, 1, 2H]
        return s.view(1, 2, 1, -1)[-1].view(1, 1, -1)

    def forward(self, ids: torch.Tensor, target: torch.Tensor, teacher_forcing: bool):
        enc_out, enc_state = self.encoder(ids)
        if self.cell == "lstm":
            state = tuple(self._join_directions(s) for s in enc_state)
        else:
            state = self._join_directions(enc_state)
        outputs = torch.zeros(MAX_LENGTH, self.decoder.vocab_out)
        token = torch.tensor([[SOS]])
        if teacher_forcing:
            n = target.size(0)
            assert n <= MAX_LENGTH, f"target length {n} > {MAX_LENGTH}"
            for t in range(n):
                logp, state = self.decoder(token, state, enc_out)
                outputs[t] = logp
                token = target[t]
        else:
            for t in range(MAX_LENGTH):
                logp, state = self.decoder(token, state, enc_out)
                _, top = logp.topk(1)
                outputs[t] = logp
                token = top.squeeze().detach()
                if token.item() == EOS:
                    break
        return outputs


# --------------------------------------------------------------------------
# training step


def train_step(model, ids, target, enc_opt, dec_opt, loss_fn, tf_ratio) -> float:
    model.train()
    enc_opt.zero_grad()
    dec_opt.zero_grad()
    teacher_forcing = random.random() < tf_ratio
    outputs = model(ids, target, teacher_forcing)
    n = target.size(0)
    loss = 0
    for t in range(n):
        row = outputs[t]
        loss = loss + loss_fn(row[None, :], target[t])
        _, top = row.topk(1)
        if top.item() == EOS:
            break
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), 5.0)
    torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), 5.0)
    enc_opt.step()
    dec_opt.step()
    return loss.item() / n


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="SCAN-format file ('IN: ... OUT: ...' lines)")
    ap.add_argument("--cell", choices=sorted(CELLS), default="gru")
    ap.add_argument("--iters", type=int, default=2000, help="timed training iterations")
    ap.add_argument("--warmup", type=int, default=100, help="untimed iterations first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--teacher-forcing", type=float, default=0.5)
    ap.add_argument("--validation-size", type=float, default=0.2,
                    help="fraction held out (after a shuffle) as in the reference; pairs are drawn from the rest")
    ap.add_argument("--print-every", type=int, default=0,
                    help="if > 0, print the running mean loss every K iterations (warmup included) to stderr")
    args = ap.parse_args()

    if args.batch_size != 1:
        print("error: only --batch-size 1 is implemented (the reference trains one "
              "pair per iteration; a padded batched variant is not provided)", file=sys.stderr)
        return 2
    if args.iters <= 0 or args.warmup < 0:
        print("error: --iters must be > 0 and --warmup >= 0", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    pairs = read_scan(args.data)
    vocab_in = build_vocab(p[0] for p in pairs)
    vocab_out = build_vocab(p[1] for p in pairs)

    model = Seq2Seq(len(vocab_in) + 2, len(vocab_out) + 2, args.cell)
    enc_opt = torch.optim.Adam(model.encoder.parameters(), lr=args.lr)
    dec_opt = torch.optim.Adam(model.decoder.parameters(), lr=args.lr)
    loss_fn = nn.NLLLoss()

    pairs = list(pairs)
    random.shuffle(pairs)
    n_val = int(len(pairs) * args.validation_size)
    train_pairs = pairs[n_val:]
    total = args.warmup + args.iters
    data = [(to_tensor(s, vocab_in), to_tensor(t, vocab_out))
            for s, t in (random.choice(train_pairs) for _ in range(total))]

    def run(lo: int, hi: int, acc: list[float]) -> None:
        for i in range(lo, hi):
            ids, target = data[i]
            acc.append(train_step(model, ids, target, enc_opt, dec_opt, loss_fn, args.teacher_forcing))
            if args.print_every > 0 and (i + 1) % args.print_every == 0:
                window = acc[-args.print_every:]
                print(f"iter {i + 1}: mean loss {sum(window) / len(window):.4f}", file=sys.stderr, flush=True)

    losses: list[float] = []
    run(0, args.warmup, losses)
    t0 = time.perf_counter()
    run(args.warmup, total, losses)
    seconds = time.perf_counter() - t0

    print(json.dumps({
        "framework": "pytorch",
        "torch": torch.__version__,
        "cell": args.cell,
        "batch_size": 1,
        "iters": args.iters,
        "examples_per_s": args.iters / seconds,
        "seconds": seconds,
        "threads": args.threads,
        "warmup": args.warmup,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
