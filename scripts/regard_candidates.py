#!/usr/bin/env python3
"""Prints the regard-scorer candidate table (markdown) from the report.json files that
`equirun regard finetune --save-dir DIR` and the .json files that `equirun regard train --save F`
write: encoder x probe/fine-tune(N) x seed x train set -> dev acc, dev macro-F1, test acc,
test macro-F1, test per-class recall. Selection is on dev only; test is reported once.

Usage: python3 scripts/regard_candidates.py DIR_OR_FILE [...]   (folders are searched recursively)
"""
import glob, json, os, sys


def recall(split):
    pc = split.get("per_class", {})
    return " ".join(f"{k[:3]} {v['recall']:.2f}" for k, v in pc.items())


def row(enc, kind, seed, train_set, r):
    d, t = r["dev"], r["test"]
    return (f"| {enc} | {kind} | {seed} | {train_set} | {d['accuracy']:.3f} | {d.get('macro_f1', float('nan')):.3f} | "
            f"{t['accuracy']:.3f} | {t.get('macro_f1', float('nan')):.3f} | {recall(t)} |")


def main():
    files = []
    for a in sys.argv[1:]:
        if os.path.isdir(a):
            files += sorted(glob.glob(os.path.join(a, "**", "report.json"), recursive=True))
            files += sorted(glob.glob(os.path.join(a, "**", "*-probe.json"), recursive=True))
        else:
            files.append(a)
    print("| encoder | candidate | seed | train set | dev acc | dev F1 | test acc | test F1 | test recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in files:
        r = json.load(open(f))
        if "per_seed" in r:
            enc = r["encoder"].get("model", "minilm") if isinstance(r["encoder"], dict) else "minilm"
            enc = "mpnet" if "mpnet" in json.dumps(r["encoder"]) else "minilm"
            kind = f"fine-tune top {r['top_layers']}" if "top_layers" in r else "fine-tune all"
            lr = r["recipe"]["lr"]
            kind += f" lr {lr:g}"
            for s in r["per_seed"]:
                print(row(enc, kind, s["seed"], r["train_set"], s))
            print(row(enc, kind, "vote", r["train_set"], r["ensemble_all_seeds"]))
        elif "l2_grid" in r:
            enc = "mpnet" if "mpnet" in f else "minilm"
            print(row(enc, f"probe (l2 {r['chosen_l2']:g})", "-", r["train_file"].replace(".tsv", ""), r))


if __name__ == "__main__":
    main()
