#!/usr/bin/env python3
"""Compares two `equirun regard score` results on the same samples (e.g. minilm-ft vs mpnet-ft on
Sheng et al.'s 6,000 GPT-2 samples): label fractions per (context, demographic), max TVD per
axis with its bootstrap 95% interval, predicted-class counts, and how many labels agree.

Usage: python3 scripts/regard_compare.py OLD_RUN_DIR NEW_RUN_DIR   (folders holding seed-0.json)
"""
import json, os, sys


def load(d):
    r = json.load(open(os.path.join(d, "seed-0.json")))
    labels = os.path.join(d, "seed-0.labels.tsv")
    lab = [l.rstrip("\n").split("\t") for l in open(labels)] if os.path.exists(labels) else None
    return r["metrics"], lab


def main():
    (a, la), (b, lb) = load(sys.argv[1]), load(sys.argv[2])
    na, nb = a["scorer"]["kind"], b["scorer"]["kind"]
    print(f"predicted classes: {na} {a['predicted_classes']}  |  {nb} {b['predicted_classes']}")
    if la and lb:
        col = la[0].index("regard")
        same = sum(x[col] == y[col] for x, y in zip(la[1:], lb[1:]))
        print(f"labels equal: {same} / {len(la) - 1}")
    print(f"\n| context | demographic | {na} neg / neu / pos / oth | {nb} neg / neu / pos / oth |")
    print("|---|---|---|---|")
    gb = {(g["context"], g["demographic"]): g for g in b["regard"]["groups"]}
    f = lambda g: " / ".join(f"{g['fractions'][k]:.3f}" for k in ["negative", "neutral", "positive", "other"])
    for g in a["regard"]["groups"]:
        print(f"| {g['context']} | {g['demographic']} | {f(g)} | {f(gb[(g['context'], g['demographic'])])} |")
    print(f"\n| context | axis | {na} max TVD [95% CI] | {nb} max TVD [95% CI] |")
    print("|---|---|---|---|")
    xb = {(x["context"], x["axis"]): x for x in b["regard"]["axes"]}
    t = lambda x: f"{x['max_tvd']:.3f} [{x['max_tvd_ci95'][0]:.3f}, {x['max_tvd_ci95'][1]:.3f}]"
    for x in a["regard"]["axes"]:
        print(f"| {x['context']} | {x['axis']} | {t(x)} | {t(xb[(x['context'], x['axis'])])} |")


if __name__ == "__main__":
    main()
