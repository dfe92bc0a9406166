#!/usr/bin/env python3
"""Run the official EquiSCAN code (baltaci-r/Multi-Group-Equivariant-Networks, `EquiSCAN/`) on an
equirun checkpoint and compare it with equirun (docs/scan-official.md).

The official code is never part of this repository: `setup` copies a checkout of it into a
scratch folder (default ~/.cache/equirun/official-run), applies there the two-line fix its
`multi_equi` config needs (and a stand-in for an unused torchvision import), writes the SCAN-II
files it reads and the converted checkpoint (scripts/scan_to_official.py).

Steps (each prints JSON and writes it under the scratch folder's `results/`):
  setup      --official PATH/TO/EquiSCAN --data DIR (equirun scan generate) --checkpoint best.safetensors
  greedy     the official BasicSeq2Seq's greedy outputs vs equirun's (`equirun scan-dump
             --predictions-only`) on the test splits: the number of lines that differ
  forward    multi-equitune and equitune log-probs, official vs equirun, on the same inputs under
             each of the 8 group elements: max |Δ log-prob| (overall and per decoder position)
  finetune   official equitune.py (`--config equi|multi_equi`, finetune.sh's settings), timed,
             then the official test_accuracy on each test split with the best-validation weights

Examples:
  python scripts/scan_official.py setup --official ~/src/Multi-Group-Equivariant-Networks/EquiSCAN \\
      --data /tmp/scan-ii --checkpoint results/scan-pretrain/real/seed-0/best.safetensors
  python scripts/scan_official.py greedy --equirun target/release/equirun
  python scripts/scan_official.py forward --equirun target/release/equirun --n 64
  python scripts/scan_official.py finetune --config multi_equi

Bad input exits with code 2 and a message.
"""
import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_to_official import convert, equirun_vocab, fail  # noqa: E402

SPLITS = ["jump", "turn_left", "turn_up", "turn_up_jump_turn_left"]
EQUIVARIANCE = ["verb", "direction-ud", "direction-rl"]  # finetune.sh's order
LAYER_DIR = "rnn_{cell}_hidden_64_directions_2"

# The official multi_equi config fails as published: `CyclicGroup.cinv` is a list holding one
# map per generator, and MultiEquiSCANModel passes that list where a map is expected
# (`itemgetter(*ids)(list)`). A single-factor group has exactly one generator, so the fix takes
# its map, `cinv[0]`, on the two lines that read it.
PATCH = [
    (
        "perm_equivariant_seq2seq/multiequitune_models.py",
        "in_G_inv = [self.in_G[j].cinv for j in inds]",
        "in_G_inv = [self.in_G[j].cinv[0] for j in inds]",
    ),
    (
        "perm_equivariant_seq2seq/multiequitune_models.py",
        "out_G_inv = [self.out_G[j].cinv for j in inds]",
        "out_G_inv = [self.out_G[j].cinv[0] for j in inds]",
    ),
]


def run_dir(a):
    return Path(os.path.expanduser(a.workdir))


def write_json(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
    print(json.dumps(doc, indent=2))


# ---------------------------------------------------------------------------------------------
def cmd_setup(a):
    src = Path(os.path.expanduser(a.official))
    if not (src / "equitune.py").is_file():
        fail(f"--official {src}: not the EquiSCAN folder (no equitune.py); clone "
             "https://github.com/baltaci-r/Multi-Group-Equivariant-Networks and pass its EquiSCAN/")
    data = Path(a.data)
    for s in ["train.txt"] + [f"test_{s}.txt" for s in SPLITS]:
        if not (data / s).is_file():
            fail(f"--data {data}: missing {s} (write it with `equirun scan generate --dataset scan-ii --out {data}`)")
    if not Path(a.checkpoint).is_file():
        fail(f"--checkpoint {a.checkpoint}: no such file")
    wd = run_dir(a)
    if wd.exists():
        shutil.rmtree(wd)
    shutil.copytree(src, wd)
    for rel, old, new in PATCH:
        p = wd / rel
        text = p.read_text()
        if text.count(old) != 1:
            fail(f"{p}: expected the line `{old}` once (a different revision of the official code?)")
        p.write_text(text.replace(old, new))
    shutil.copy(wd / "equitune.py", wd / "equitune.py.orig")
    # equitune_models.py imports torchvision's hflip/vflip and never calls them
    tv = wd / "torchvision" / "transforms"
    tv.mkdir(parents=True)
    (wd / "torchvision" / "__init__.py").write_text("")
    (tv / "__init__.py").write_text("")
    (tv / "functional.py").write_text(
        "def hflip(*a, **k):\n    raise NotImplementedError('stand-in')\n\nvflip = hflip\n")
    dd = wd / "SCAN" / "expanded_dataset" / "add_prim_split"
    dd.mkdir(parents=True)
    shutil.copy(data / "train.txt", dd / "tasks_train_addprim.txt")
    for s in SPLITS:
        shutil.copy(data / f"test_{s}.txt", dd / f"tasks_test_addprim_{s}.txt")
    import torch

    sd, cmds, acts, cell = convert(a.checkpoint, dd / "tasks_train_addprim.txt")
    out = wd / "saved_models" / "pretrained_models" / LAYER_DIR.format(cell=cell) / f"seed_{a.seed}" / "model0"
    out.mkdir(parents=True)
    torch.save(sd, out / "best_validation.pt")
    meta = {"official": str(src), "checkpoint": str(Path(a.checkpoint).resolve()), "cell": cell,
            "seed": a.seed, "data": str(data.resolve()), "patch": [p[1:] for p in PATCH]}
    (wd / "equirun-setup.json").write_text(json.dumps(meta, indent=2))
    print(f"official code ready in {wd} ({cell}, checkpoint {a.checkpoint})")


# ---------------------------------------------------------------------------------------------
class Official:
    """The official modules, imported from the scratch folder (cwd = that folder)."""

    def __init__(self, a):
        wd = run_dir(a)
        meta_p = wd / "equirun-setup.json"
        if not meta_p.is_file():
            fail(f"{wd}: not set up; run `scan_official.py setup` first")
        self.meta = json.loads(meta_p.read_text())
        os.chdir(wd)
        sys.path.insert(0, str(wd))
        import torch

        torch.set_num_threads(1)
        from perm_equivariant_seq2seq.data_utils import get_scan_split, get_invariant_scan_languages
        from perm_equivariant_seq2seq.models import BasicSeq2Seq
        from perm_equivariant_seq2seq.equitune_models import EquiSCANModel
        from perm_equivariant_seq2seq.multiequitune_models import MultiEquiSCANModel
        from perm_equivariant_seq2seq.language_utils import SCANGroup, SCANMultiGroup
        from perm_equivariant_seq2seq.utils import tensors_from_pair

        self.torch = torch
        self.get_scan_split = get_scan_split
        self.tensors_from_pair = tensors_from_pair
        train, _ = get_scan_split(split="jump", expanded=True)
        self.commands, self.actions = get_invariant_scan_languages(train, invariances=[])
        self.cell = self.meta["cell"]
        self.ckpt = (wd / "saved_models" / "pretrained_models" / LAYER_DIR.format(cell=self.cell)
                     / f"seed_{self.meta['seed']}" / "model0" / "best_validation.pt")
        self.classes = dict(BasicSeq2Seq=BasicSeq2Seq, EquiSCANModel=EquiSCANModel,
                            MultiEquiSCANModel=MultiEquiSCANModel, SCANGroup=SCANGroup,
                            SCANMultiGroup=SCANMultiGroup)

    def base(self, state=None):
        m = self.classes["BasicSeq2Seq"](
            input_language=self.commands, encoder_hidden_size=64, decoder_hidden_size=64,
            output_language=self.actions, layer_type=self.cell, use_attention=True, drop_rate=0.1,
            bidirectional=True, num_layers=1)
        m.load_state_dict(state if state is not None else self.torch.load(self.ckpt))
        return m

    def wrapped(self, config, pre):
        """As equitune.py builds it: `equi` over the product group, `multi_equi` per factor."""
        if config == "multi_equi":
            g = self.classes["SCANMultiGroup"](EQUIVARIANCE, self.commands, self.actions)
            cls = self.classes["MultiEquiSCANModel"]
        else:
            g = self.classes["SCANGroup"](EQUIVARIANCE, self.commands, self.actions)
            cls = self.classes["EquiSCANModel"]
        return cls(pre_model=pre, in_G=g.in_g, out_G=g.out_g, vocab_size=self.actions.n_words,
                   eq_word_indices=g.eq_word_indices, feature_extracting=False,
                   group_type="permutation")

    def official_test_accuracy(self):
        """test.py's own `test_accuracy`, taken from its source at run time (test.py parses its
        arguments at import, so it cannot be imported)."""
        tree = ast.parse(Path("test.py").read_text())
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "test_accuracy")
        ns = {"torch": self.torch, "tqdm": lambda x: x, "EOS_token": 1,
              "device": self.torch.device("cpu")}
        exec(compile(ast.Module(body=[fn], type_ignores=[]), "test.py", "exec"), ns)
        return ns  # test_accuracy reads the global `model` (it calls model.eval()): set ns["model"]


def equirun_dump(a, lines, methods, collapse, predictions_only, out_json):
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    inp = Path(out_json).with_suffix(".in.txt")
    inp.write_text("".join(l + "\n" for l in lines))
    cmd = [a.equirun, "scan-dump", "--checkpoint", a.checkpoint_equirun, "--cell",
           a.cell_equirun, "--method", methods, "--collapse", collapse, "--input", str(inp),
           "--output", str(out_json)]
    if predictions_only:
        cmd.append("--predictions-only")
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"equirun scan-dump failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(Path(out_json).read_text())


def add_equirun_args(p):
    p.add_argument("--equirun", default="target/release/equirun", help="equirun binary")


def resolve_equirun(a, off):
    a.equirun = str(Path(a.equirun_abs))
    a.checkpoint_equirun = off.meta["checkpoint"]
    a.cell_equirun = off.cell.lower()


def read_lines(path):
    return [l for l in Path(path).read_text().strip().split("\n")]


# ---------------------------------------------------------------------------------------------
def cmd_greedy(a):
    a.equirun_abs = str(Path(a.equirun).resolve())
    off = Official(a)
    resolve_equirun(a, off)
    torch = off.torch
    model = off.base()
    model.eval()
    dd = Path("SCAN/expanded_dataset/add_prim_split")
    e_acts = equirun_vocab(off.actions.index2word[i] for i in range(off.actions.n_words))
    res = {}
    for s in ["jump", "turn_left", "turn_up"]:
        lines = read_lines(dd / f"tasks_test_addprim_{s}.txt")
        if a.limit:
            random.Random(0).shuffle(lines)
            lines = lines[: a.limit]
        t0 = time.time()
        dump = equirun_dump(a, lines, "vanilla", "orbit-min", True, Path("results") / f"greedy-{s}.json")
        t_e = time.time() - t0
        eq = dump["predictions"]["vanilla"]
        differ, t0 = 0, time.time()
        with torch.no_grad():
            for k, line in enumerate(lines):
                c, o = line.split("IN: ")[-1].split(" OUT: ")
                o = o.replace("I_", "")
                x, y = off.tensors_from_pair([c, o], off.commands, off.actions)
                out = model(input_tensor=x, target_tensor=y)
                ids = out.argmax(dim=1).tolist()
                end = ids.index(1) + 1 if 1 in ids else len(ids)
                pred = [off.actions.index2word[i] for i in ids[:end]]
                mine = [e_acts[i] for i in eq[k]]
                differ += pred != mine
        res[s] = {"n": len(lines), "differ": differ, "equirun_seconds": t_e,
                  "official_seconds": time.time() - t0}
    write_json(Path("results") / "greedy.json", {"checkpoint": a.checkpoint_equirun, "splits": res})
    if any(v["differ"] for v in res.values()):
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
def cmd_forward(a):
    a.equirun_abs = str(Path(a.equirun).resolve())
    off = Official(a)
    resolve_equirun(a, off)
    torch = off.torch
    pre = off.base()
    dd = Path("SCAN/expanded_dataset/add_prim_split")
    lines = read_lines(dd / "tasks_test_addprim_turn_up_jump_turn_left.txt")
    rng = random.Random(a.seed)
    base = rng.sample(lines, a.n)
    # the 8 elements of the product group, as the official code enumerates them
    g_full = off.classes["SCANGroup"](EQUIVARIANCE, off.commands, off.actions)
    n_words_c = off.commands.n_words

    def act(g_in, g_out, line):
        c, o = line.split("IN: ")[-1].split(" OUT: ")
        cw = [off.commands.index2word[g_in[off.commands.word2index[w]]] for w in c.split(" ")]
        ow = [off.actions.index2word[g_out[off.actions.word2index[w.replace("I_", "")]]]
              for w in o.split(" ")]
        return "IN: " + " ".join(cw) + " OUT: " + " ".join("I_" + w for w in ow)

    names = []
    for g_in in g_full.in_g.g:
        moved = sorted({off.commands.index2word[k] for k in range(n_words_c) if g_in[k] != k})
        names.append("id" if not moved else "swap " + "/".join(moved))
    all_lines = [act(gi, go, l) for gi, go in zip(g_full.in_g.g, g_full.out_g.g) for l in base]
    e_acts = equirun_vocab(off.actions.index2word[i] for i in range(off.actions.n_words))
    perm = torch.tensor([e_acts.index(off.actions.index2word[k]) for k in range(off.actions.n_words)])
    report = {"n_inputs_per_element": a.n, "seed": a.seed, "checkpoint": a.checkpoint_equirun,
              "elements": names, "methods": {}}
    dumps = {c: equirun_dump(a, all_lines, "vanilla,equitune,multi-equitune", c, False,
                             Path("results") / f"forward-{c}.json")
             for c in ["orbit-min", "official"]}
    for method, config in [("vanilla", None), ("equitune", "equi"), ("multi-equitune", "multi_equi")]:
        model = pre if config is None else off.wrapped(config, pre)
        model.eval()
        official_rows = []
        with torch.no_grad():
            for line in all_lines:
                c, o = line.split("IN: ")[-1].split(" OUT: ")
                x, y = off.tensors_from_pair([c, o.replace("I_", "")], off.commands, off.actions)
                out = model(input_tensor=x, target_tensor=y)  # [50, V] official vocabulary order
                mine = torch.zeros_like(out)
                mine[:, perm] = out  # equirun order
                official_rows.append(mine)
        off_t = torch.stack(official_rows)  # [8n, 50, V]
        for collapse, dump in dumps.items():
            if method != "multi-equitune" and collapse == "official":
                continue
            eq_t = torch.tensor(dump["logprobs"][method])
            d = (eq_t - off_t).abs()  # [8n, 50, V]
            per_g = []
            for k, name in enumerate(names):
                dk = d[k * a.n:(k + 1) * a.n]
                pos = dk.amax(dim=(0, 2))
                agree = (eq_t[k * a.n:(k + 1) * a.n].argmax(-1) == off_t[k * a.n:(k + 1) * a.n].argmax(-1))
                per_g.append({"element": name, "max_abs_diff": float(dk.max()),
                              "max_abs_diff_per_position": [round(float(v), 7) for v in pos],
                              "argmax_agreement": float(agree.float().mean())})
            key = method if method != "multi-equitune" else f"multi-equitune (equirun collapse {collapse})"
            report["methods"][key] = per_g
    write_json(Path("results") / "forward.json", report)


# ---------------------------------------------------------------------------------------------
def test_subset(off, split, limit):
    """The test lines of a split (all, or a seeded sample of `limit`), kept in results/ so that
    `score` evaluates equirun on the same lines."""
    path = Path("results") / f"test-{split}-{limit or 'all'}.txt"
    if not path.is_file():
        lines = read_lines(Path("SCAN/expanded_dataset/add_prim_split") / f"tasks_test_addprim_{split}.txt")
        if limit and limit < len(lines):
            lines = random.Random(0).sample(lines, limit)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(l + "\n" for l in lines))
    return read_lines(path)


def combined(tests):
    """The combined split is the concatenation turn_up, jump, turn_left (the same lines)."""
    n = sum(v["n"] for v in tests.values())
    c = sum(v["correct"] for v in tests.values())
    return {"accuracy": 100 * c / n, "n": n, "correct": c}


def cmd_score(a):
    """equirun's accuracy on the lines `finetune` tested the official code on."""
    a.equirun_abs = str(Path(a.equirun).resolve())
    ckpt = str(Path(a.checkpoint).resolve())
    off = Official(a)
    resolve_equirun(a, off)
    a.checkpoint_equirun = ckpt
    tests = {}
    for s in ["jump", "turn_left", "turn_up"]:
        lines = test_subset(off, s, a.test_limit)
        t0 = time.time()
        d = equirun_dump(a, lines, a.method, a.collapse, True, Path("results") / f"score-{s}.json")
        preds = d["predictions"][a.method]
        vocab = d["out_vocab"]
        correct = 0
        for line, p in zip(lines, preds):
            tgt = line.split(" OUT: ")[1].replace("I_", "").split(" ")
            correct += [vocab[i] for i in p] == tgt + [vocab[1]]
        tests[s] = {"accuracy": 100 * correct / len(lines), "n": len(lines), "correct": correct,
                    "seconds": time.time() - t0}
    tests["turn_up_jump_turn_left"] = combined(tests)
    write_json(Path("results") / f"score-{a.method}-{a.collapse}.json",
               {"checkpoint": ckpt, "method": a.method, "collapse": a.collapse,
                "test_limit": a.test_limit, "test": tests})


def cmd_finetune(a):
    off = Official(a)
    torch = off.torch
    if a.final_test_limit:
        # equitune.py ends by testing its final model on the whole combined split (31,527 lines,
        # 8 or 6 passes each); cap it for time: the reported test is the official test_accuracy
        # with the best-validation weights below
        p = Path("equitune.py")
        text = Path("equitune.py.orig").read_text()
        old = "for pair in test_pairs]"
        if text.count(old) != 1:
            fail("equitune.py: cannot find the final test's line to cap (another revision?)")
        p.write_text(text.replace(old, f"for pair in test_pairs[:{a.final_test_limit}]]"))
    else:
        Path("equitune.py").write_text(Path("equitune.py.orig").read_text())
    save_dir = f"./saved_models/{a.config}tuned_models/"
    cmd = [sys.executable, "equitune.py", "--config", a.config, "--split", "turn_up_jump_turn_left",
           "--expanded"]
    for e in EQUIVARIANCE:
        cmd += ["--equivariance", e]
    cmd += ["--layer_type", off.cell, "--use_attention", "--bidirectional", "--seed", str(off.meta["seed"]),
            "--n_iters", str(a.iters), "--learning_rate", "0.00002", "--validation_size", "0.01",
            "--save_dir", save_dir, "--load_model_path", str(off.ckpt.parent)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    t0 = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        fail(f"official equitune.py failed ({r.returncode}):\n{r.stderr[-3000:]}")
    exp = Path(save_dir) / LAYER_DIR.format(cell=off.cell) / f"seed_{off.meta['seed']}"
    model_dir = sorted(exp.glob("model*"), key=lambda p: p.stat().st_mtime)[-1]
    log = (model_dir / f"{a.config}tune.log").read_text().split("\n")
    train_s = training_seconds(log)
    final_acc = next((float(l.rsplit(":", 1)[1]) for l in log if "Model test accuracy" in l), None)
    # the official test (test.py's test_accuracy) with the best-validation weights
    pre = off.base(state=None)
    model = off.wrapped(a.config, pre)
    model.load_state_dict(torch.load(model_dir / "best_validation.pt"))
    ns = off.official_test_accuracy()
    ns["model"] = model
    tests, t_test = {}, time.time()
    for s in ["jump", "turn_left", "turn_up"]:
        test_pairs = [l.split("IN: ")[-1].split(" OUT: ") for l in test_subset(off, s, a.test_limit)]
        pairs = [off.tensors_from_pair([c, o.replace("I_", "")], off.commands, off.actions)
                 for c, o in test_pairs]
        acc = float(ns["test_accuracy"](model, pairs)) * 100
        tests[s] = {"accuracy": acc, "n": len(pairs), "correct": round(acc * len(pairs) / 100)}
    tests["turn_up_jump_turn_left"] = combined(tests)
    write_json(Path("results") / f"finetune-{a.config}.json", {
        "config": a.config, "cell": off.cell, "seed": off.meta["seed"], "iters": a.iters,
        "test_limit": a.test_limit, "final_test_limit": a.final_test_limit,
        "checkpoint": off.meta["checkpoint"], "test_best_validation": tests,
        "equitune_py_final_model_test_accuracy_combined": None if final_acc is None else 100 * final_acc,
        "wall_seconds_equitune_py": wall, "train_seconds_estimate": train_s,
        "test_seconds": time.time() - t_test, "model_dir": str(model_dir)})


def training_seconds(log):
    """Training time from equitune.py's log: the 100-iteration windows without a validation
    pass are timed directly; each of the windows holding one (iterations k·1000) is counted at
    the median window time."""
    import datetime

    marks = []
    for l in log:
        if " iteration: " in l:
            ts = datetime.datetime.strptime(l[:23], "%Y-%m-%d %H:%M:%S,%f")
            marks.append((int(l.rsplit(":", 1)[1]), ts.timestamp()))
    if len(marks) < 3:
        return None
    wins = [(i0, t1 - t0) for (i0, t0), (_, t1) in zip(marks, marks[1:])]
    clean = sorted(dt for i0, dt in wins if i0 % 1000 != 0)
    med = clean[len(clean) // 2]
    return sum(dt if i0 % 1000 != 0 else med for i0, dt in wins) + med  # + the last window


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="~/.cache/equirun/official-run",
                    help="scratch folder for the official code (outside the repository)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--official", required=True, help="the EquiSCAN folder of a checkout of the official repository")
    p.add_argument("--data", required=True, help="folder written by `equirun scan generate --dataset scan-ii`")
    p.add_argument("--checkpoint", required=True, help="equirun best.safetensors")
    p.add_argument("--seed", type=int, default=0, help="the seed folder name the official scripts use")
    p = sub.add_parser("greedy")
    add_equirun_args(p)
    p.add_argument("--limit", type=int, default=0, help="at most N lines per split (0 = all)")
    p = sub.add_parser("forward")
    add_equirun_args(p)
    p.add_argument("--n", type=int, default=64, help="inputs per group element")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("finetune")
    p.add_argument("--config", choices=["equi", "multi_equi"], required=True)
    p.add_argument("--iters", type=int, default=10000)
    p.add_argument("--test-limit", type=int, default=0, help="test on a seeded sample of N lines per split (0 = all)")
    p.add_argument("--final-test-limit", type=int, default=0,
                   help="cap equitune.py's own final test of its last model to N lines (0 = as published)")
    p = sub.add_parser("score")
    add_equirun_args(p)
    p.add_argument("--checkpoint", required=True, help="equirun finetuned best.safetensors")
    p.add_argument("--method", required=True, choices=["vanilla", "equitune", "multi-equitune"])
    p.add_argument("--collapse", default="official", choices=["official", "orbit-min"])
    p.add_argument("--test-limit", type=int, default=0, help="as given to finetune")
    a = ap.parse_args()
    {"setup": cmd_setup, "greedy": cmd_greedy, "forward": cmd_forward, "finetune": cmd_finetune,
     "score": cmd_score}[a.cmd](a)


if __name__ == "__main__":
    main()
