#!/usr/bin/env python3
"""Driver of scripts/bench_all.sh: every throughput workload of issue 15, equirun vs PyTorch in
the same run, alternating (equirun, PyTorch, equirun, ...) for several rounds; prints the median
and the spread (min-max) of each side and of the per-round ratio, with the CPU model, its SIMD
flags, the load average, the thread count and equirun's GEMM backend. Random weights, f32.

  scripts/bench_all.sh [--quick] [--rounds N] [--threads 1,2] [--only clip-b32,minilm,...]

Environment: EQUIRUN_VENV (the venv of scripts/setup_python.sh), BENCH_DIR (fixtures, default
/tmp/equirun-bench), EQUIRUN_BIN (default target/release/equirun), EQUIRUN_BASE_BIN (optional:
a second equirun binary, e.g. an older build, timed in the same rounds as a third column),
BENCH_PRIORITY=1 (raise this run's scheduler autogroup priority on a shared Linux machine where
other users' jobs would otherwise take an equal share of the cores; needs root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("EQUIRUN_VENV", "/work/venv")
PY = os.path.join(VENV, "bin", "python")
WORK = os.environ.get("BENCH_DIR", "/tmp/equirun-bench")
BIN = os.environ.get("EQUIRUN_BIN", os.path.join(ROOT, "target/release/equirun"))
BASE = os.environ.get("EQUIRUN_BASE_BIN")


def sh(cmd, env=None, check=True):
    e = dict(os.environ)
    e.update(env or {})
    e["EQUIRUN_NO_PROGRESS"] = "1"
    p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    # multi-line JSON (equirun pretty-prints some outputs)
    i = text.find("{")
    return json.loads(text[i:])


def cpu_info():
    model, flags = "?", []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    want = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
            "avx512_fp16", "amx_tile"]
    return model, [f for f in want if f in flags]


# ----------------------------------------------------------------------------------------------
# fixtures


def ensure_fixtures(names):
    os.makedirs(WORK, exist_ok=True)
    presets = {"clip-b32": "vit-b-32", "clip-b16": "vit-b-16", "clip-rn50": "rn50"}
    if "clip-rn50" in names and sh([PY, "-c", "import wcwidth"], check=False).returncode != 0:
        # open_clip's tokenizer imports ftfy -> wcwidth (setup_python.sh installs ftfy --no-deps)
        sh([PY, "-m", "pip", "install", "-q", "wcwidth"])
    for n, preset in presets.items():
        d = os.path.join(WORK, n)
        wanted = n in names or (n == "clip-b32" and "clip-text-b32" in names)
        if wanted and not os.path.isfile(os.path.join(d, "tokenizer.json")):
            print(f"[fixture] random {preset} CLIP -> {d}", file=sys.stderr)
            sh([PY, "scripts/make_random_clip.py", "--out", d, "--preset", preset, "--no-verify"])
    if any(n.startswith("gpt2") for n in names):
        d = os.path.join(WORK, "gpt2-124m")
        if not os.path.isfile(os.path.join(d, "model.safetensors")):
            print(f"[fixture] random GPT-2 124M -> {d}", file=sys.stderr)
            sh([PY, "scripts/bench_gpt2_torch.py", "--make-random-gpt2", d])
    if "minilm" in names:
        sh(["scripts/setup_minilm.sh"])
        data = os.environ.get("EQUIRUN_DATA", os.path.join(ROOT, "..", "shared", "data"))
        samples = os.path.join(data, "nlg-bias/data/generated_samples/small_gpt2_generated_samples.tsv")
        d = os.path.join(WORK, "regard")
        os.makedirs(d, exist_ok=True)
        for src, dst in [(samples, "samples.txt"), (samples + ".XYZ", "masked.txt")]:
            with open(src) as f, open(os.path.join(d, dst), "w") as g:
                for i, line in enumerate(f):
                    if i >= 1000:
                        break
                    g.write(line)
        if not os.path.isfile(os.path.join(d, "regard-train/minilm-probe.safetensors")):
            print("[fixture] regard minilm-probe", file=sys.stderr)
            sh([BIN, "regard", "train", "--out", d])


# ----------------------------------------------------------------------------------------------
# workloads: name -> (unit, equirun(bin, threads, quick) -> rate, torch(threads, quick) -> rate)


def clip_workload(name):
    d = os.path.join(WORK, name)

    def ours(bin, th, quick):
        batches = 1 if quick else 2
        out = sh([bin, "bench-clip", "--model-dir", d, "--batch-size", "32", "--batches", str(batches),
                  "--warmup", "1"], {"RAYON_NUM_THREADS": str(th)}).stdout
        return last_json(out)["images_per_s"]

    def theirs(th, quick):
        n = 32 if quick else 64
        out = sh([PY, "scripts/bench_clip_torch.py", "--model-dir", d, "--batch-size", "32",
                  "--n-images", str(n), "--threads", str(th)], {"OMP_NUM_THREADS": str(th)}).stdout
        return last_json(out)["images_per_s"]

    return "img/s", ours, theirs


def clip_text_workload():
    d = os.path.join(WORK, "clip-b32")

    def ours(bin, th, quick):
        out = sh([bin, "bench-clip", "--model-dir", d, "--text-classifier", "--batches", "1"],
                 {"RAYON_NUM_THREADS": str(th)}).stdout
        return last_json(out)["prompts_per_s"]

    def theirs(th, quick):
        out = sh([PY, "scripts/bench_clip_torch.py", "--model-dir", d, "--text-classifier",
                  "--threads", str(th)], {"OMP_NUM_THREADS": str(th)}).stdout
        return last_json(out)["prompts_per_s"]

    return "prompts/s", ours, theirs


def minilm_workload():
    d = os.path.join(WORK, "regard")

    def ours(bin, th, quick):
        # the probe scorer: one MiniLM pass per batch, as bench_regard_torch.py's default
        p = sh([bin, "regard", "score", "--scorer", "minilm-probe", "--input",
                os.path.join(d, "samples.txt"), "--probe",
                os.path.join(d, "regard-train/minilm-probe.safetensors"), "--out",
                os.path.join(d, "res"), "--bootstrap", "10", "--force"],
               {"RAYON_NUM_THREADS": str(th)})
        m = re.findall(r"([0-9.]+) texts/s", p.stderr)
        return float(m[-1])

    def theirs(th, quick):
        out = sh([PY, "scripts/bench_regard_torch.py", os.path.join(d, "masked.txt"), "--limit",
                  "1000", "--threads", str(th)], {"OMP_NUM_THREADS": str(th)}).stdout
        return last_json(out)["texts_per_second"]

    return "texts/s", ours, theirs


def cnn_workload(method):
    def ours(bin, th, quick):
        steps = "30" if quick else "100"
        out = sh([bin, "cnn", "bench", "--method", method, "--group", "rot90", "--batch-size", "64",
                  "--steps", steps], {"RAYON_NUM_THREADS": str(th)}).stdout
        return last_json(out)["images_per_second"]

    def theirs(th, quick):
        steps = "30" if quick else "100"
        out = sh([PY, "scripts/bench_cnn_torch.py", "--method", method, "--batch-size", "64",
                  "--steps", steps, "--threads", str(th)], {"OMP_NUM_THREADS": str(th)}).stdout
        return last_json(out)["images_per_second"]

    return "img/s", ours, theirs


def gpt2_workload(batch):
    d = os.path.join(WORK, "gpt2-124m")

    def ours(bin, th, quick):
        out = sh([bin, "bench-lm", "--model-dir", d, "--batch", str(batch), "--prompt-len", "16",
                  "--new-tokens", "32"], {"RAYON_NUM_THREADS": str(th)}).stdout
        return last_json(out)["tokens_per_s"]

    def theirs(th, quick):
        out = sh([PY, "scripts/bench_gpt2_torch.py", "--model-dir", d, "--prompt-len", "16",
                  "--new-tokens", "32", "--batch", str(batch), "--threads", str(th)],
                 {"OMP_NUM_THREADS": str(th)}).stdout
        return last_json(out)["tokens_per_s"]

    return "tok/s", ours, theirs


WORKLOADS = {
    "clip-b32": lambda: clip_workload("clip-b32"),
    "clip-b16": lambda: clip_workload("clip-b16"),
    "clip-rn50": lambda: clip_workload("clip-rn50"),
    "clip-text-b32": clip_text_workload,
    "minilm": minilm_workload,
    "cnn-plain": lambda: cnn_workload("vanilla"),
    "cnn-equitune": lambda: cnn_workload("equitune"),
    "gpt2-b1": lambda: gpt2_workload(1),
    "gpt2-b8": lambda: gpt2_workload(8),
}
LABELS = {
    "clip-b32": "CLIP ViT-B/32 image encoder, batch 32",
    "clip-b16": "CLIP ViT-B/16 image encoder, batch 32",
    "clip-rn50": "CLIP RN50 image encoder, batch 32",
    "clip-text-b32": "CLIP ViT-B/32 text classifier, CIFAR-100 × 18 templates (batch 18 per class)",
    "minilm": "MiniLM regard scorer, 1,000 real samples, batch 32",
    "cnn-plain": "Fashion-MNIST CNN training, plain, batch 64",
    "cnn-equitune": "Fashion-MNIST CNN training, equitune rot90, batch 64",
    "gpt2-b1": "GPT-2 124M greedy, batch 1 (16 + 32 tokens)",
    "gpt2-b8": "GPT-2 124M greedy, batch 8 (16 + 32 tokens)",
}


def smollm2_path():
    """The SmolLM2-135M GGUF (EQUIRUN_SMOLLM2, else scripts/setup_smollm2.sh), or None."""
    p = os.environ.get("EQUIRUN_SMOLLM2")
    if p and os.path.isfile(p):
        return p
    out = sh(["scripts/setup_smollm2.sh"], check=False)
    lines = (out.stdout or "").strip().splitlines()
    return lines[-1] if out.returncode == 0 and lines and os.path.isfile(lines[-1]) else None


def fairness_costs(th, quick, rounds):
    """Per-token seconds of gpt2-fairness methods relative to vanilla (equirun only), for the
    random GPT-2 124M and, when installed, SmolLM2-135M; median over `rounds` runs."""
    models = [("GPT-2 124M (random)", ["--model-dir", os.path.join(WORK, "gpt2-124m")])]
    smol = smollm2_path()
    if smol:
        models.append(("SmolLM2-135M", ["--gguf", smol]))
    else:
        print("[fairness] SmolLM2 GGUF not found (scripts/setup_smollm2.sh): GPT-2 only",
              file=sys.stderr)
    groups = [("gender", 2), ("gender,orientation", 4), ("gender,race", 6)] + (
        [] if quick else [("gender,race,orientation", 12)])
    out = os.path.join(WORK, "results")
    table = {}
    for name, model in models:
        for g, d in groups:
            per_round = []
            for _ in range(rounds):
                sh([BIN, "gpt2-fairness", *model, "--group", g, "--method",
                    "vanilla,equitune,multi-equitune", "--samples-per-demographic", "5",
                    "--contexts", "respect", "--out", out, "--run-name", "bench-all", "--force"],
                   {"RAYON_NUM_THREADS": str(th), "EQUIRUN_NO_PROGRESS": "1"})
                res = json.load(open(os.path.join(out, "gpt2-fairness/bench-all/seed-0.json")))
                cost, met = res["cost"]["methods"], res["metrics"]["methods"]
                per = {m: cost[m]["seconds"] / max(met[m]["generated_tokens"], 1) for m in cost}
                per_round.append(per)
            med = {m: statistics.median(r[m] for r in per_round) for m in per_round[0]}
            table[(name, g)] = dict(
                d=d, vanilla_ms=1000 * med["vanilla"],
                equitune=[r["equitune"] / r["vanilla"] for r in per_round],
                multi=[r["multi-equitune"] / r["vanilla"] for r in per_round],
                multi_vs_equitune=[r["multi-equitune"] / r["equitune"] for r in per_round],
                passes={m: cost[m].get("forward_passes_per_token") for m in cost})
    return table


def fmt(xs, nd=1):
    if not xs:
        return "–"
    med = statistics.median(xs)
    return f"{med:.{nd}f} ({min(xs):.{nd}f}–{max(xs):.{nd}f})" if len(xs) > 1 else f"{med:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 round, 2 threads, shorter runs")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", default=None, help="comma list, default 1,2 (quick: 2)")
    ap.add_argument("--only", default=None, help="comma list of workloads: " + ",".join(WORKLOADS))
    ap.add_argument("--fairness", action="store_true",
                    help="also time gpt2-fairness per-token costs relative to vanilla (GPT-2 and, "
                    "when installed, SmolLM2; needs the gpt2-124m fixture)")
    ap.add_argument("--no-fairness", action="store_true", help="(default) skip them")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    rounds = a.rounds or (1 if a.quick else 2)
    threads = [int(t) for t in (a.threads or ("2" if a.quick else "1,2")).split(",")]
    names = a.only.split(",") if a.only else list(WORKLOADS)
    for n in names:
        if n not in WORKLOADS:
            sys.exit(f"unknown workload {n}; known: {', '.join(WORKLOADS)}")
    if not os.path.isfile(PY):
        sys.exit(f"no venv at {VENV}: run scripts/setup_python.sh first (EQUIRUN_VENV)")
    if os.environ.get("BENCH_PRIORITY") == "1":
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write("-19")
        except OSError as e:
            print(f"[priority] not raised: {e}", file=sys.stderr)
    ensure_fixtures(names + (["gpt2-fixture"] if a.fairness else []))
    model, flags = cpu_info()
    import torch  # noqa: F401  (version only; runs happen in subprocesses)
    head = {
        "cpu": model,
        "flags": flags,
        "cores": os.cpu_count(),
        "load_at_start": os.getloadavg()[0],
        "equirun_backend": "gemm 0.19 (x86-v4 AVX-512 kernels, run-time dispatch) + equirun fused CPU encoder",
        "torch": torch.__version__,
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else "?",
        "rounds": rounds,
        "threads": threads,
    }
    print(json.dumps(head), file=sys.stderr)
    results = []
    for n in names:
        unit, ours, theirs = WORKLOADS[n]()
        for th in threads:
            e, t, b, loads = [], [], [], []
            for r in range(rounds):
                loads.append(os.getloadavg()[0])
                e.append(ours(BIN, th, a.quick))
                t.append(theirs(th, a.quick))
                if BASE:
                    b.append(ours(BASE, th, a.quick))
                print(f"[{n} th={th} round {r + 1}] equirun {e[-1]:.2f} pytorch {t[-1]:.2f}"
                      + (f" base {b[-1]:.2f}" if b else "") + f" {unit}", file=sys.stderr)
            ratios = [x / y for x, y in zip(e, t)]
            results.append(dict(workload=n, label=LABELS[n], unit=unit, threads=th, equirun=e,
                                pytorch=t, base=b, ratio=ratios, load=loads))
    fair = None
    if a.fairness:
        th = max(threads)
        fair = (th, fairness_costs(th, a.quick, rounds))
    head["load_at_end"] = os.getloadavg()[0]

    print(f"\nCPU: {model}; flags: {' '.join(flags)}; {os.cpu_count()} cores; "
          f"load {head['load_at_start']:.1f} → {head['load_at_end']:.1f}")
    print(f"equirun backend: {head['equirun_backend']}; PyTorch {head['torch']}; "
          f"{rounds} round(s), alternating; median (min–max)\n")
    cols = "| workload | threads | equirun | PyTorch | equirun / PyTorch |"
    sep = "|---|---|---|---|---|"
    if BASE:
        cols += " equirun before |"
        sep += "---|"
    print(cols)
    print(sep)
    for r in results:
        line = (f"| {r['label']} ({r['unit']}) | {r['threads']} | {fmt(r['equirun'])} | "
                f"{fmt(r['pytorch'])} | {fmt(r['ratio'], 2)} |")
        if BASE:
            line += f" {fmt(r['base'])} |"
        print(line)
    if fair:
        th, rows = fair
        print(f"\ngpt2-fairness, seconds per generated token relative to vanilla ({th} threads, "
              f"5 samples per demographic, respect contexts; {rounds} round(s), median (min–max)):\n")
        print("| model | groups | branches d | vanilla ms/token | equitune | multi-equitune "
              "(passes) | multi / equitune |")
        print("|---|---|---|---|---|---|---|")
        for (name, g), row in rows.items():
            print(f"| {name} | {g.replace(',', ' × ')} | {row['d']} | {row['vanilla_ms']:.1f} | "
                  f"{fmt(row['equitune'], 2)}× | {fmt(row['multi'], 2)}× "
                  f"({row['passes'].get('multi-equitune')}) | {fmt(row['multi_vs_equitune'], 2)} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(head=head, results=results,
                           fairness=fair and {f"{k[0]} / {k[1]}": v for k, v in fair[1].items()}),
                      f, indent=1)


if __name__ == "__main__":
    main()
