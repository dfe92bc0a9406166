//! End to end: `equirun clip` through the hub code path (HF cache layout, HF_HUB_OFFLINE=1) on
//! a tiny random CLIP checkpoint and a tiny CIFAR-10-format dataset written here.

use equirun::hub::install_into_cache;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MODEL: &str = "equirun-test/tiny-clip";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Env {
    root: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let root = tempfile::tempdir().unwrap();
        let snap = root.path().join("snapshot");
        equirun::testing::write_tiny_clip_for_cifar10(&snap, 3);
        let files: Vec<(&str, PathBuf)> = ["config.json", "model.safetensors", "tokenizer.json"]
            .iter()
            .map(|f| (*f, snap.join(f)))
            .collect();
        let files: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
        install_into_cache(
            &root.path().join("hf").join("hub"),
            MODEL,
            "main",
            COMMIT,
            &files,
        )
        .unwrap();
        equirun::testing::write_tiny_cifar10(&root.path().join("data"), 12, 5);
        Env { root }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.root.path().join(s)
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_equirun"))
            .args(args)
            .env("HF_HOME", self.p("hf"))
            .env_remove("HF_HUB_CACHE")
            .env("HF_HUB_OFFLINE", "1")
            .env("EQUIRUN_CACHE", self.p("cache"))
            .env("EQUIRUN_NO_PROGRESS", "1")
            .output()
            .unwrap()
    }
    fn clip(&self, extra: &[&str]) -> Output {
        let data = self.p("data");
        let out = self.p("results");
        let mut args = vec![
            "clip",
            "--dataset",
            "cifar10",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "5",
        ];
        if !extra.contains(&"--model") {
            args.extend_from_slice(&["--model", MODEL]);
        }
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&refs)
    }
    fn json_files(&self) -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, out)
                    } else if p.extension().map(|e| e == "json").unwrap_or(false) {
                        out.push(p)
                    }
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.p("results"), &mut v);
        v.sort();
        v
    }
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn clip_end_to_end_through_hf_cache() {
    let env = Env::new();
    let all = "vanilla,equitune,equizero,multi-equitune,multi-equizero";
    let o = env.clip(&[
        "--group",
        "rot90",
        "--method",
        all,
        "--seeds",
        "0,1",
        "--run-name",
        "r90",
    ]);
    ok(&o);
    let s0 = env.p("results/clip/r90/seed-0.json");
    let s1 = env.p("results/clip/r90/seed-1.json");
    assert_eq!(env.json_files(), vec![s0.clone(), s1.clone()]);
    let j = read(&s0);
    assert_eq!(j["schema_version"], 1);
    assert_eq!(j["experiment"], "clip");
    assert_eq!(j["seed"], 0);
    assert_eq!(j["equirun_version"], env!("CARGO_PKG_VERSION"));
    assert!(j["started_at"].as_str().unwrap() <= j["finished_at"].as_str().unwrap());
    let c = &j["config"];
    assert_eq!(c["model"]["kind"], "hub");
    assert_eq!(c["model"]["id"], MODEL);
    assert_eq!(c["model"]["revision"], "main");
    assert_eq!(c["model"]["commit"], COMMIT);
    assert_eq!(c["group"]["name"], "rot90");
    assert_eq!(c["group"]["order"], 4);
    assert!(c["group"]["factors"][0]["action"]
        .as_str()
        .unwrap()
        .contains("counter-clockwise"));
    assert_eq!(c["transform"]["name"], "rot90");
    assert_eq!(c["transform_per_batch"], false);
    assert_eq!(c["dataset"]["name"], "cifar10");
    assert_eq!(c["dataset"]["n_images"], 12);
    assert_eq!(c["dataset"]["n_classes"], 10);
    assert_eq!(c["dataset"]["n_templates"], 18);
    assert_eq!(c["image_size"], 32);
    assert_eq!(c["logit_scale"]["mode"], "fixed");
    assert_eq!(c["logit_scale"]["value"], 1.0);
    assert_eq!(c["methods"].as_array().unwrap().len(), 5);
    let passes = &j["cost"]["forward_passes_per_input"];
    for (m, p) in [
        ("vanilla", 1),
        ("equitune", 4),
        ("equizero", 4),
        ("multi-equitune", 4),
        ("multi-equizero", 4),
    ] {
        assert_eq!(passes[m], p, "{m}");
        let mm = &j["metrics"][m];
        assert_eq!(mm["n"], 12);
        let (c1, c5) = (
            mm["correct_top1"].as_u64().unwrap(),
            mm["correct_top5"].as_u64().unwrap(),
        );
        assert!(c1 <= c5 && c5 <= 12, "{m}: {c1} {c5}");
        assert!((mm["top1"].as_f64().unwrap() - 100.0 * c1 as f64 / 12.0).abs() < 1e-9);
    }
    assert_eq!(j["cost"]["forward_passes_per_input_shared"], 4);
    assert_eq!(
        j["cost"]["texts_encoded"], 180,
        "10 classes x 18 templates encoded once"
    );
    assert_eq!(read(&s1)["cost"]["texts_encoded"], 0);
    // invariant methods do not depend on the corruption drawn: seeds 0 and 1 agree exactly
    let j1 = read(&s1);
    for m in ["equitune", "equizero"] {
        assert_eq!(j["metrics"][m], j1["metrics"][m], "{m}");
    }

    // rerun: skipped, files untouched
    let before = std::fs::read(&s0).unwrap();
    let o = env.clip(&[
        "--group",
        "rot90",
        "--method",
        all,
        "--seeds",
        "0,1",
        "--run-name",
        "r90",
    ]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("skip"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read(&s0).unwrap(), before);

    // --force: recomputed with no text encoding (cache) and bit-identical config and metrics
    let o = env.clip(&[
        "--group",
        "rot90",
        "--method",
        all,
        "--seeds",
        "0",
        "--run-name",
        "r90",
        "--force",
    ]);
    ok(&o);
    let k = read(&s0);
    assert_eq!(k["config"], j["config"]);
    assert_eq!(k["metrics"], j["metrics"]);
    assert_eq!(k["cost"]["texts_encoded"], 0);

    // clean images: equitune's predictions equal those under rot90 corruption
    let o = env.clip(&[
        "--group",
        "rot90",
        "--transform",
        "none",
        "--method",
        "equitune,equizero",
        "--run-name",
        "clean",
    ]);
    ok(&o);
    let clean = read(&env.p("results/clip/clean/seed-0.json"));
    assert!(clean["config"]["transform"].is_null());
    for m in ["equitune", "equizero"] {
        assert_eq!(clean["metrics"][m], j["metrics"][m], "{m}");
    }

    // D4 with canonicalisation: shared copies 8 + 6; multi-* invariant across seeds too
    let o = env.clip(&[
        "--group",
        "rot90xflip",
        "--method",
        all,
        "--seeds",
        "0",
        "--run-name",
        "d4",
    ]);
    ok(&o);
    let d4 = read(&env.p("results/clip/d4/seed-0.json"));
    assert_eq!(d4["cost"]["forward_passes_per_input"]["multi-equitune"], 6);
    assert_eq!(d4["cost"]["forward_passes_per_input"]["equitune"], 8);
    assert_eq!(d4["cost"]["forward_passes_per_input_shared"], 14);
    assert_eq!(
        d4["config"]["group"]["factors"][1]["action"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap(),
        "vflip"
    );
    let o = env.clip(&[
        "--group",
        "rot90xflip",
        "--transform",
        "none",
        "--method",
        all,
        "--seeds",
        "0",
        "--run-name",
        "d4clean",
    ]);
    ok(&o);
    let d4c = read(&env.p("results/clip/d4clean/seed-0.json"));
    for m in ["equitune", "equizero", "multi-equitune", "multi-equizero"] {
        assert_eq!(d4c["metrics"][m], d4["metrics"][m], "{m}");
    }

    // the same snapshot through --model-dir
    let snap = env.p("snapshot");
    let o = env.clip(&[
        "--model-dir",
        snap.to_str().unwrap(),
        "--method",
        "vanilla",
        "--run-name",
        "local",
    ]);
    ok(&o);
    let l = read(&env.p("results/clip/local/seed-0.json"));
    assert_eq!(l["config"]["model"]["kind"], "local");
    assert!(env.json_files().iter().all(|p| !p
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(".tmp")));
}

fn fails_cleanly(env: &Env, o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        env.json_files().is_empty(),
        "no result JSON may be written: {:?}",
        env.json_files()
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let env = Env::new();
    fails_cleanly(
        &env,
        &env.clip(&["--group", "rot45"]),
        &["unknown image group 'rot45'", "rot90xflip"],
    );
    fails_cleanly(
        &env,
        &env.clip(&["--method", "equitune,foo"]),
        &["unknown method 'foo'", "multi-equitune"],
    );
    fails_cleanly(
        &env,
        &env.clip(&["--model", "nobody/absent-model"]),
        &[
            "HF_HUB_OFFLINE",
            "--model-dir",
            "config.json",
            "absent-model",
        ],
    );
    // corrupt weights
    let bad = env.p("bad-snapshot");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(env.p("snapshot").join(f), bad.join(f)).unwrap();
    }
    std::fs::write(
        bad.join("model.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    fails_cleanly(
        &env,
        &env.clip(&["--model-dir", bad.to_str().unwrap()]),
        &["model.safetensors", "corrupt"],
    );
    // missing file in --model-dir
    std::fs::remove_file(bad.join("tokenizer.json")).unwrap();
    fails_cleanly(
        &env,
        &env.clip(&["--model-dir", bad.to_str().unwrap()]),
        &["tokenizer.json", "--model-dir"],
    );
    // malformed dataset
    let f = env.p("data/cifar-10-batches-bin/test_batch.bin");
    std::fs::write(&f, vec![0u8; 3000]).unwrap();
    fails_cleanly(&env, &env.clip(&[]), &["malformed CIFAR file", "3073"]);
    std::fs::write(&f, [vec![12u8], vec![0u8; 3072]].concat()).unwrap();
    fails_cleanly(&env, &env.clip(&[]), &["label 12"]);
    // no data dir
    let o = env.run(&["clip", "--model", MODEL, "--dataset", "cifar100"]);
    fails_cleanly(&env, &o, &["--data-dir"]);
}

#[test]
fn check_command_json() {
    let env = Env::new();
    let o = env.run(&["check", "--group", "rot90xflip", "--json"]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["group"], "rot90xflip");
    assert_eq!(v["elements"], 8);
    for (m, p) in [
        ("vanilla", 1),
        ("equitune", 8),
        ("equizero", 8),
        ("multi-equitune", 6),
        ("multi-equizero", 6),
    ] {
        assert_eq!(v["methods"][m]["forward_passes"], p);
        let e = v["methods"][m]["max_error"].as_f64().unwrap();
        if m == "vanilla" {
            assert!(e > 1e-4, "vanilla error {e}");
        } else {
            assert!(e <= 1e-5, "{m} error {e}");
        }
    }
    let o = env.run(&["check", "--group", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    // --compare-cpu on the CPU in f32: the same computation twice, bit for bit
    let o = env.run(&["check", "--group", "rot90", "--compare-cpu", "--json"]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parity"]["device"], "cpu");
    assert_eq!(v["parity"]["max_abs_feature_diff"].as_f64(), Some(0.0));
    assert_eq!(v["parity"]["max_abs_prob_diff"].as_f64(), Some(0.0));
    // the built-in tiny CLIP has no half-precision form: a clear error, not a silent f32 run
    let o = env.run(&["check", "--dtype", "f16"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--dtype f16") && err.contains("--model-dir"),
        "{err}"
    );
}
