#!/usr/bin/env python3
"""Build the real OpenAI CLIP BPE tokenizer in Hugging Face layout, offline.

The Hugging Face hub is not reachable here, but the original OpenAI merges file
(`bpe_simple_vocab_16e6.txt.gz`) ships inside the PyPI wheel `open-clip-torch`
(`open_clip/bpe_simple_vocab_16e6.txt.gz`). From it we rebuild the vocabulary
exactly as OpenAI's `simple_tokenizer.py` does:

  256 byte symbols (bytes_to_unicode order), the same 256 with '</w>',
  the first 49152-256-2 merges joined, then <|startoftext|>, <|endoftext|>
  -> 49408 tokens, ids 49406 / 49407 for the two special tokens.

and write, into --out DIR:

  vocab.json, merges.txt          (the raw BPE files)
  tokenizer.json, tokenizer_config.json, ...   (transformers CLIPTokenizer.save_pretrained)

`tokenizer.json` is what the Rust `tokenizers` crate loads. Its pre-tokenizer
is Split(CLIP regex, invert) + ByteLevel(use_regex=false); apart from
use_regex (true on the hub, same ids) this is the layout of the hub's
openai/clip-vit-base-patch32 tokenizer.json. Every regex in it (`\s+` and the
CLIP word regex with \p{L}/\p{N}) compiles with the crate's `fancy-regex` backend.

Usage:

  /work/venv/bin/python scripts/make_clip_tokenizer.py --out DIR [--bpe PATH]

Without --bpe the merges file is looked for in an installed `open_clip`
package, then in /tmp/oc (an unpacked open-clip-torch wheel; get one with
`pip download --no-deps open-clip-torch -d /tmp/oc && cd /tmp/oc && unzip *.whl`).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import importlib.util
import json
import os
import sys
import zipfile

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2
CONTEXT_LENGTH = 77
# OpenAI simple_tokenizer.py word regex (applied after lower-casing, so IGNORECASE is moot)
CLIP_PAT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable unicode char map (same order as simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_bpe(explicit: str | None = None) -> str:
    """Locate bpe_simple_vocab_16e6.txt.gz (explicit path, installed open_clip, /tmp/oc, a wheel in /tmp/oc)."""
    if explicit:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(explicit)
        return explicit
    cands = []
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cands.append(os.path.join(loc, BPE_NAME))
    cands.append(os.path.join("/tmp/oc/open_clip", BPE_NAME))
    for c in cands:
        if os.path.isfile(c):
            return c
    # last resort: extract from a downloaded wheel
    for whl in sorted(glob.glob("/tmp/oc/open_clip_torch-*.whl")):
        with zipfile.ZipFile(whl) as z:
            member = f"open_clip/{BPE_NAME}"
            if member in z.namelist():
                z.extract(member, "/tmp/oc")
                return os.path.join("/tmp/oc", member)
    raise FileNotFoundError(
        f"{BPE_NAME} not found; pass --bpe, or run "
        "`pip download --no-deps open-clip-torch -d /tmp/oc` and unzip the wheel in /tmp/oc"
    )


def build_vocab_and_merges(bpe_path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    # line 0 is a '#version' header
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges), "unexpected merges file format"
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [BOS, EOS]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    assert len(encoder) == len(vocab) == VOCAB_SIZE, (len(encoder), len(vocab))
    assert encoder[BOS] == 49406 and encoder[EOS] == 49407
    return encoder, merges


def write_clip_tokenizer(out_dir: str, bpe_path: str | None = None, quiet: bool = False) -> str:
    """Write vocab.json, merges.txt and the HF tokenizer files (incl. tokenizer.json) into out_dir.

    Returns the path of tokenizer.json.
    """
    from tokenizers import Regex, pre_tokenizers
    from transformers import CLIPTokenizer  # transformers >= 5: tokenizers-backed ("fast") class

    bpe_path = find_bpe(bpe_path)
    encoder, merges = build_vocab_and_merges(bpe_path)
    os.makedirs(out_dir, exist_ok=True)

    vocab_file = os.path.join(out_dir, "vocab.json")
    merges_file = os.path.join(out_dir, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")

    tok = CLIPTokenizer(
        vocab=encoder,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=CONTEXT_LENGTH,
    )
    backend = tok.backend_tokenizer
    # The CLIP Split regex already does the word splitting, so ByteLevel only has to map
    # bytes (use_regex=false). The hub's openai/clip-* files leave use_regex at its
    # default (true); re-splitting CLIP's pieces with the GPT-2 regex is a no-op (checked
    # on 20k random strings), and false keeps the (?!\S) look-ahead out of the file.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PAT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    assert tok.convert_tokens_to_ids(BOS) == 49406 and tok.convert_tokens_to_ids(EOS) == 49407
    assert len(tok) == VOCAB_SIZE, len(tok)
    tok.save_pretrained(out_dir)

    tj = os.path.join(out_dir, "tokenizer.json")
    check_tokenizer_json(tj)
    if not quiet:
        print(f"wrote CLIP tokenizer ({VOCAB_SIZE} tokens, merges from {bpe_path}) to {out_dir}")
    return tj


def check_tokenizer_json(path: str) -> None:
    """Sanity-check a written tokenizer.json (loads with `tokenizers`, ids of a known prompt)."""
    from tokenizers import Tokenizer

    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    assert j["model"]["type"] == "BPE" and len(j["model"]["vocab"]) == VOCAB_SIZE
    t = Tokenizer.from_file(path)
    ids = t.encode("a photo of a cat.").ids
    # reference: OpenAI clip.tokenize("a photo of a cat.")
    assert ids == [49406, 320, 1125, 539, 320, 2368, 269, 49407], ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--bpe", default=None, help=f"path to {BPE_NAME}")
    args = ap.parse_args()
    write_clip_tokenizer(args.out, args.bpe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
