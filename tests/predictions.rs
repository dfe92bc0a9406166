//! Per-example outputs: the predictions file of `equirun clip --save-predictions` (schema, its
//! agreement with the seed JSON, canonical elements), `equirun report`'s per-class and agreement
//! tables from it, and `--multi-mean flat` against a hand-computed flat mean.

use candle_core::{DType, Device, Tensor};
use equirun::equi::{proxy, Evaluator, ImageOutput, ImageSymmetry, Method, ZeroSelect};
use equirun::experiments::clip::{evaluate_batch, MultiMean};
use equirun::experiments::predictions::{
    predictions_path, read_jsonl_gz, summarize, write_jsonl_gz, SCHEMA, TOP_K,
};
use equirun::groups::image::{image_group, D4};
use equirun::groups::GroupElement;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Env {
    root: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let root = tempfile::tempdir().unwrap();
        equirun::testing::write_tiny_clip_for_cifar10(&root.path().join("snap"), 3);
        equirun::testing::write_tiny_cifar10(&root.path().join("data"), 12, 5);
        Env { root }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.root.path().join(s)
    }
    fn clip(&self, out: &str, extra: &[&str]) -> std::process::Output {
        let (snap, data, out) = (self.p("snap"), self.p("data"), self.p(out));
        let mut args = vec![
            "clip",
            "--model-dir",
            snap.to_str().unwrap(),
            "--dataset",
            "cifar10",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "5",
            "--group",
            "rot90xflip",
            "--method",
            "vanilla,equitune,equizero,multi-equitune,multi-equizero",
            "--run-name",
            "r",
        ];
        args.extend_from_slice(extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_equirun"))
            .args(&args)
            .env("EQUIRUN_NO_PROGRESS", "1")
            .env("HF_HUB_OFFLINE", "1")
            .env("EQUIRUN_CACHE", self.p("cache"))
            .env_remove("EQUIRUN_DATA")
            .output()
            .unwrap();
        o
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The seed JSON without its timing fields.
fn without_timing(mut v: Value) -> Value {
    for k in ["cost", "started_at", "finished_at"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

#[test]
fn clip_predictions_file_schema_and_report_tables() {
    let env = Env::new();
    let o = env.clip("plain", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env.clip("with", &["--save-predictions"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plain = env.p("plain/clip/r/seed-0.json");
    let with = env.p("with/clip/r/seed-0.json");
    // the flag changes neither the config nor the numbers, and adds nothing beside a plain run
    assert_eq!(
        without_timing(read_json(&plain)),
        without_timing(read_json(&with))
    );
    assert!(!predictions_path(&plain).exists());
    let pf = predictions_path(&with);
    assert_eq!(
        pf.file_name().unwrap().to_str().unwrap(),
        "seed-0.predictions.jsonl.gz"
    );
    let (h, rows) = read_jsonl_gz(&pf).unwrap();
    assert_eq!(h["schema"], SCHEMA);
    assert_eq!(h["version"], 1);
    assert_eq!(h["kind"], "classification");
    assert_eq!(h["experiment"], "clip");
    assert_eq!(h["seed"], 0);
    assert_eq!(h["classes"].as_array().unwrap().len(), 10);
    assert_eq!(h["multi_mean"], "branches");
    let methods: Vec<String> = h["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert_eq!(methods.len(), 5);
    assert_eq!(rows.len(), 12);
    let rec = read_json(&with);
    let group = image_group("rot90xflip").unwrap();
    let names: Vec<String> = (0..group.order()).map(|g| group.element_name(g)).collect();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["label"], i % 10);
        for m in &methods {
            let e = &r["methods"][m];
            let top = e["top"].as_array().unwrap();
            let scores: Vec<f64> = e["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_f64().unwrap())
                .collect();
            assert_eq!(top.len(), TOP_K);
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
            assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
            assert_eq!(e["pred"], top[0]);
            assert_eq!(e["correct"].as_bool().unwrap(), top[0] == r["label"]);
        }
        // one canonical element per factor (rot90, flip), each of the other factor
        let canon = r["canonical"].as_array().unwrap();
        assert_eq!(canon.len(), 2);
        for c in canon {
            assert!(names.contains(&c.as_str().unwrap().to_string()), "{c}");
        }
    }
    // per method, the file's correct predictions are the JSON's top-1 counts
    for m in &methods {
        let correct = rows
            .iter()
            .filter(|r| r["methods"][m]["correct"] == true)
            .count();
        let top5 = rows
            .iter()
            .filter(|r| {
                r["methods"][m]["top"]
                    .as_array()
                    .unwrap()
                    .contains(&r["label"])
            })
            .count();
        assert_eq!(rec["metrics"][m]["correct_top1"], correct, "{m}");
        assert_eq!(rec["metrics"][m]["correct_top5"], top5, "{m}");
    }

    // the report: per-class accuracy and agreement, recomputed here from the rows
    let rep = env.p("rep");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(["report", env.p("with").to_str().unwrap(), "--out"])
        .arg(&rep)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(md.contains("## Per-example tables"), "{md}");
    assert!(md.contains("Top-1 accuracy (%) per class"), "{md}");
    assert!(md.contains("Agreement (% of examples with the same prediction)"));
    let csv = std::fs::read_to_string(rep.join("per_example.csv")).unwrap();
    let cell = |table: &str, row: &str, col: &str| -> (usize, usize) {
        let l = csv
            .lines()
            .find(|l| {
                let f: Vec<&str> = l.split(',').collect();
                f[2] == table && f[3] == row && f[4] == col
            })
            .unwrap_or_else(|| panic!("no {table} {row} {col} in {csv}"));
        let f: Vec<&str> = l.split(',').collect();
        (f[5].parse().unwrap(), f[6].parse().unwrap())
    };
    let classes: Vec<String> = h["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    for m in &methods {
        for (c, cname) in classes.iter().enumerate() {
            let of_c: Vec<&Value> = rows.iter().filter(|r| r["label"] == c).collect();
            let ok = of_c
                .iter()
                .filter(|r| r["methods"][m]["correct"] == true)
                .count();
            assert_eq!(cell("per_class", cname, m), (ok, of_c.len()), "{cname} {m}");
        }
        for m2 in &methods {
            let same = rows
                .iter()
                .filter(|r| r["methods"][m]["pred"] == r["methods"][m2]["pred"])
                .count();
            assert_eq!(cell("agreement", m, m2), (same, 12));
        }
    }
    // the markdown shows the same numbers: vanilla agrees with itself on every example
    assert!(md.contains("| vanilla | 100.00 |"), "{md}");

    // a plain run's report has no per-example section
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(["report", env.p("plain").to_str().unwrap(), "--out"])
        .arg(env.p("rep-plain"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stdout).contains("Per-example"));
    assert!(!env.p("rep-plain/per_example.csv").exists());
}

#[test]
fn clip_flat_mean_with_pattern_file_cli() {
    let env = Env::new();
    let o = env.clip("b", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let size = read_json(&env.p("b/clip/r/seed-0.json"))["config"]["image_size"]
        .as_u64()
        .unwrap() as usize;
    // one pattern per batch (12 images, batch 5: 3 batches)
    let pat = equirun::testing::randn(11, &[3, 3, size, size]);
    let pf = env.p("pattern.safetensors");
    candle_core::safetensors::save(&HashMap::from([("pattern".to_string(), pat)]), &pf).unwrap();
    let o = env.clip(
        "f",
        &[
            "--multi-mean",
            "flat",
            "--canonicaliser-pattern",
            pf.to_str().unwrap(),
            "--save-predictions",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec = read_json(&env.p("f/clip/r/seed-0.json"));
    assert_eq!(rec["config"]["multi_mean"], "flat");
    assert_eq!(
        rec["config"]["canonicaliser_pattern"]["shape"],
        json!([3, 3, size, size])
    );
    let (h, rows) = read_jsonl_gz(&predictions_path(&env.p("f/clip/r/seed-0.json"))).unwrap();
    assert_eq!(h["multi_mean"], "flat");
    for r in &rows {
        assert_eq!(r["canonical"].as_array().unwrap().len(), 1, "{r}");
    }
    // the same file's first pattern for the per-factor (default) canonicalisers
    let one = env.p("one.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([(
            "w".to_string(),
            equirun::testing::randn(11, &[3, 3, size, size])
                .get(0)
                .unwrap(),
        )]),
        &one,
    )
    .unwrap();
    let o = env.clip(
        "p",
        &[
            "--canonicaliser-pattern",
            one.to_str().unwrap(),
            "--save-predictions",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recp = read_json(&env.p("p/clip/r/seed-0.json"));
    assert!(recp["config"]["canonicaliser"]
        .as_str()
        .unwrap()
        .contains("--canonicaliser-pattern"));
    let (_, prow) = read_jsonl_gz(&predictions_path(&env.p("p/clip/r/seed-0.json"))).unwrap();
    assert!(prow
        .iter()
        .all(|r| r["canonical"].as_array().unwrap().len() == 2));
    // the non-multi methods do not depend on --multi-mean
    let base = read_json(&env.p("b/clip/r/seed-0.json"));
    for m in ["vanilla", "equitune", "equizero"] {
        assert_eq!(rec["metrics"][m], base["metrics"][m], "{m}");
    }
    // too few per-batch patterns, a wrong shape, a missing file: exit 2 naming the flag
    for (name, shape) in [
        ("two.safetensors", vec![2, 3, size, size]),
        ("shape.safetensors", vec![3, size + 1, size + 1]),
    ] {
        let p = env.p(name);
        let t = equirun::testing::randn(1, &shape);
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &p).unwrap();
        let o = env.clip("bad", &["--canonicaliser-pattern", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("--canonicaliser-pattern"), "{err}");
    }
    let o = env.clip(
        "bad",
        &["--canonicaliser-pattern", "/nonexistent.safetensors"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--canonicaliser-pattern"));
    assert!(!env.p("bad").exists());
}

/// A tiny invariant classifier: softmax of a fixed random linear map of the pixels.
fn tiny_model(w: &Tensor) -> impl Fn(&Tensor) -> anyhow::Result<Tensor> + '_ {
    move |x: &Tensor| -> anyhow::Result<Tensor> {
        let logits = x.flatten_from(1)?.matmul(&w.t()?)?;
        Ok(candle_nn::ops::softmax_last_dim(&logits)?)
    }
}

#[test]
fn multi_mean_flat_reproduces_hand_computed_flat_mean() {
    let (b, c, s, k) = (4, 3, 6, 7);
    let x = equirun::testing::randn(1, &[b, c, s, s]);
    let pattern = equirun::testing::randn(2, &[c, s, s]);
    let w = equirun::testing::randn(3, &[k, c * s * s]);
    let model = tiny_model(&w);
    let group = image_group("rot90xflip").unwrap();
    let sym =
        ImageSymmetry::new(group.clone(), ImageOutput::Invariant, 0).with_pattern(pattern.clone());
    let proxy = proxy::neg_max_confidence;
    let ev = Evaluator {
        sym: &sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    let methods = [Method::Vanilla, Method::MultiEquitune, Method::Equitune];
    let (outs, _, canon) =
        evaluate_batch(&ev, &sym, &methods, MultiMean::Flat, &model, &x).unwrap();

    // by hand: the official loop rot^i(flip^j(x)), i outer, j inner, ties to the later one
    let dot = |a: &Tensor| -> f32 {
        a.broadcast_mul(&pattern)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let flip = |t: &Tensor| D4::VFLIP.apply(t).unwrap();
    let rot = |k: usize, t: &Tensor| D4::rot(k).apply(t).unwrap();
    for j in 0..b {
        let xj = x.narrow(0, j, 1).unwrap();
        let mut best: Option<(f32, Tensor, D4)> = None;
        for i in 0..4 {
            for f in 0..2 {
                let cand = if f == 1 {
                    rot(i, &flip(&xj))
                } else {
                    rot(i, &xj)
                };
                let el = if f == 1 {
                    D4::rot(i).compose(&D4::VFLIP)
                } else {
                    D4::rot(i)
                };
                let sc = dot(&cand.squeeze(0).unwrap());
                if best.as_ref().is_none_or(|(b, _, _)| sc >= *b) {
                    best = Some((sc, cand, el));
                }
            }
        }
        let (_, cx, el) = best.unwrap();
        // the recorded canonical element is the hand-chosen one
        assert_eq!(canon[j].len(), 1);
        assert_eq!(*group.element(canon[j][0]), el);
        // six copies: r0 r1 r2 r3 of c, then c and flip(c); flat mean
        let copies: Vec<Tensor> = (0..4)
            .map(|k| rot(k, &cx))
            .chain([cx.clone(), flip(&cx)])
            .map(|t| model(&t).unwrap())
            .collect();
        let mut mean = vec![0f64; k];
        for y in &copies {
            for (m, v) in mean
                .iter_mut()
                .zip(y.squeeze(0).unwrap().to_vec1::<f32>().unwrap())
            {
                *m += v as f64 / 6.0;
            }
        }
        let got = outs[1]
            .narrow(0, j, 1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (g, h) in got.iter().zip(&mean) {
            assert!((*g as f64 - h).abs() < 1e-6, "{got:?} vs {mean:?}");
        }
        // the flat mean weighs the rotation copies 4/6: not the equal-weight branch mean
        let rot_mean: Vec<f64> = (0..k)
            .map(|q| {
                copies[..4]
                    .iter()
                    .map(|y| y.squeeze(0).unwrap().to_vec1::<f32>().unwrap()[q] as f64)
                    .sum::<f64>()
                    / 4.0
            })
            .collect();
        let flip_mean: Vec<f64> = (0..k)
            .map(|q| {
                copies[4..]
                    .iter()
                    .map(|y| y.squeeze(0).unwrap().to_vec1::<f32>().unwrap()[q] as f64)
                    .sum::<f64>()
                    / 2.0
            })
            .collect();
        let branch: Vec<f64> = (0..k).map(|q| (rot_mean[q] + flip_mean[q]) / 2.0).collect();
        let diff = got
            .iter()
            .zip(&branch)
            .map(|(g, h)| (*g as f64 - h).abs())
            .fold(0.0, f64::max);
        assert!(diff > 1e-6, "flat equals the branch mean ({diff})");
    }
    // vanilla and equitune are those of the default path (up to the rounding of another
    // forward batch size)
    let (plain, _, _) =
        evaluate_batch(&ev, &sym, &methods, MultiMean::Branches, &model, &x).unwrap();
    for i in [0, 2] {
        let d = equirun::testing::max_abs_diff(&outs[i], &plain[i]);
        assert!(d < 1e-5, "{}: {d}", methods[i].name());
    }
    // and flat multi-equitune is D4-invariant (no ties with a random pattern)
    for g in 0..group.order() {
        let gx = group.element(g).apply(&x).unwrap();
        let (o2, _, _) = evaluate_batch(
            &ev,
            &sym,
            &[Method::MultiEquitune],
            MultiMean::Flat,
            &model,
            &gx,
        )
        .unwrap();
        let d = (o2[0].to_dtype(DType::F32).unwrap() - &outs[1])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "element {g}: {d}");
    }
}

#[test]
fn predictions_file_roundtrip_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seed-3.predictions.jsonl.gz");
    let h = json!({"schema": SCHEMA, "version": 1, "experiment": "scan-finetune", "seed": 3,
                   "methods": ["vanilla", "equitune"]});
    let rows = vec![
        json!({"index": 0, "label": "JUMP", "methods": {"vanilla": {"pred": "JUMP", "correct": true}, "equitune": {"pred": "WALK", "correct": false}}}),
        json!({"index": 1, "label": "WALK", "methods": {"vanilla": {"pred": "WALK", "correct": true}, "equitune": {"pred": "WALK", "correct": true}}}),
    ];
    write_jsonl_gz(&p, &h, &rows).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    write_jsonl_gz(&p, &h, &rows).unwrap();
    assert_eq!(bytes, std::fs::read(&p).unwrap(), "deterministic bytes");
    let (h2, r2) = read_jsonl_gz(&p).unwrap();
    assert_eq!((h2, r2.clone()), (h, rows));
    let s = summarize(&read_jsonl_gz(&p).unwrap().0, &r2).unwrap();
    assert!(
        s.per_class.is_empty(),
        "sequence labels have no per-class table"
    );
    assert_eq!(s.correct, vec![2, 1]);
    assert_eq!(s.agreement, vec![vec![2, 1], vec![1, 2]]);
    assert!(summarize(&json!({"schema": "other"}), &[]).is_err());
    std::fs::write(&p, b"not gzip").unwrap();
    assert!(read_jsonl_gz(&p).is_err());
    // no temp files left beside
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let _ = Device::Cpu;
}

#[test]
fn scan_finetune_predictions_match_exact_match_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("res");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_equirun"))
            .args(args)
            .arg("--out")
            .arg(&out)
            .env("EQUIRUN_NO_PROGRESS", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let common = ["--eval-limit", "6", "--val-limit", "4", "--run-name", "r"];
    let mut pre = vec![
        "scan",
        "pretrain",
        "--iters",
        "4",
        "--eval-every",
        "2",
        "--batch-size",
        "2",
        "--save-predictions",
    ];
    pre.extend_from_slice(&common);
    run(&pre);
    let pre_dir = out.join("scan-pretrain/r");
    let mut ft = vec![
        "scan",
        "finetune",
        "--pretrained",
        pre_dir.to_str().unwrap(),
        "--method",
        "vanilla,equitune",
        "--iters",
        "0",
        "--save-predictions",
    ];
    ft.extend_from_slice(&common);
    run(&ft);
    for seed_json in [
        pre_dir.join("seed-0.json"),
        out.join("scan-finetune/r-vanilla/seed-0.json"),
        out.join("scan-finetune/r-equitune/seed-0.json"),
    ] {
        let rec = read_json(&seed_json);
        let (h, rows) = read_jsonl_gz(&predictions_path(&seed_json)).unwrap();
        assert_eq!(h["kind"], "sequence");
        let method = h["methods"][0].as_str().unwrap().to_string();
        let tests = rec["metrics"]["test"].as_object().unwrap();
        let n: u64 = tests.values().map(|t| t["n"].as_u64().unwrap()).sum();
        assert_eq!(rows.len() as u64, n);
        for (split, t) in tests {
            let of: Vec<&Value> = rows.iter().filter(|r| r["split"] == *split).collect();
            assert_eq!(of.len() as u64, t["n"].as_u64().unwrap());
            let ok = of
                .iter()
                .filter(|r| r["methods"][&method]["correct"] == true)
                .count();
            assert_eq!(ok as u64, t["correct"].as_u64().unwrap(), "{split}");
            for r in of {
                let e = &r["methods"][&method];
                // exact match ⇔ the decoded sequence is the target and EOS was produced
                assert_eq!(
                    e["correct"].as_bool().unwrap(),
                    e["pred"] == r["label"] && e["eos"] == true,
                    "{r}"
                );
                assert!(!r["command"].as_str().unwrap().is_empty());
            }
        }
    }
}

#[test]
fn multi_image_predictions_match_accuracies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fm");
    equirun::testing::write_tiny_fashion(&data, 120, 40);
    let out = dir.path().join("res");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(["multi-image", "--data-dir"])
        .arg(&data)
        .args([
            "--k",
            "2",
            "--models",
            "cnn,multi-gcnn",
            "--train-images",
            "80",
            "--val-images",
            "20",
            "--test-images",
            "40",
            "--epochs",
            "1",
            "--run-name",
            "t",
            "--save-predictions",
            "--out",
        ])
        .arg(&out)
        .env("EQUIRUN_NO_PROGRESS", "1")
        .env_remove("EQUIRUN_DATA")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seed_json = out.join("multi-image/t-k2/seed-0.json");
    let rec = read_json(&seed_json);
    let (h, rows) = read_jsonl_gz(&predictions_path(&seed_json)).unwrap();
    assert_eq!(
        rows.len() as u64,
        rec["metrics"]["tuples"]["test"].as_u64().unwrap()
    );
    for model in ["cnn", "multi-gcnn"] {
        for test in ["upright", "rotated"] {
            let col = format!("{model}/{test}");
            assert!(h["methods"].as_array().unwrap().contains(&json!(col)));
            let ok = rows
                .iter()
                .filter(|r| r["methods"][&col]["correct"] == true)
                .count();
            let acc = rec["metrics"]["models"][model][format!("test_{test}")]
                .as_f64()
                .unwrap();
            assert!(
                (100.0 * ok as f64 / rows.len() as f64 - acc).abs() < 1e-9,
                "{col}: {ok} vs {acc}"
            );
        }
    }
    for r in &rows {
        assert_eq!(r["images"].as_array().unwrap().len(), 2);
        assert_eq!(r["rotations"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn clip_finetune_predictions_match_accuracies() {
    let env = Env::new();
    // a train batch of other random images beside the test batch
    let train = env.p("train");
    equirun::testing::write_tiny_cifar10(&train, 30, 6);
    std::fs::copy(
        train.join("cifar-10-batches-bin/test_batch.bin"),
        env.p("data/cifar-10-batches-bin/data_batch_1.bin"),
    )
    .unwrap();
    let (snap, data, out) = (env.p("snap"), env.p("data"), env.p("ft"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(["clip", "finetune", "--model-dir"])
        .arg(&snap)
        .args(["--dataset", "cifar10", "--data-dir"])
        .arg(&data)
        .args([
            "--method",
            "vanilla,lambda-equitune",
            "--val-size",
            "6",
            "--batch-size",
            "4",
            "--rounds",
            "1",
            "--iters",
            "1",
            "--lambda-rounds",
            "1",
            "--lambda-iters",
            "1",
            "--no-checkpoints",
            "--run-name",
            "t",
            "--save-predictions",
            "--out",
        ])
        .arg(&out)
        .env("EQUIRUN_NO_PROGRESS", "1")
        .env("EQUIRUN_CACHE", env.p("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("EQUIRUN_DATA")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seed_json = out.join("clip-finetune/t/seed-0.json");
    let rec = read_json(&seed_json);
    let (h, rows) = read_jsonl_gz(&predictions_path(&seed_json)).unwrap();
    assert_eq!(
        h["methods"],
        json!(["vanilla", "vanilla/zero-shot", "lambda-equitune"])
    );
    assert_eq!(rows.len(), 12);
    for (col, m, key) in [
        ("vanilla", "vanilla", "test_top1"),
        ("vanilla/zero-shot", "vanilla", "zero_shot_test_top1"),
        ("lambda-equitune", "lambda-equitune", "test_top1"),
    ] {
        let ok = rows
            .iter()
            .filter(|r| r["methods"][col]["correct"] == true)
            .count();
        let acc = rec["metrics"][m][key].as_f64().unwrap();
        assert!((100.0 * ok as f64 / 12.0 - acc).abs() < 1e-9, "{col}");
    }
}

#[test]
fn cnn_predictions_match_accuracies() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("fm");
    equirun::testing::write_tiny_fashion(&data, 84, 30);
    let out = root.path().join("res");
    let mut args = equirun::testing::tiny_cnn_args(data.to_str().unwrap(), out.to_str().unwrap());
    args.extend([
        "--group",
        "rot90",
        "--method",
        "vanilla,equitune",
        "--run-name",
        "t",
        "--save-predictions",
    ]);
    let o = equirun::testing::run_equirun(env!("CARGO_BIN_EXE_equirun"), &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seed_json = out.join("cnn/t/seed-0.json");
    let rec = read_json(&seed_json);
    let (h, rows) = read_jsonl_gz(&predictions_path(&seed_json)).unwrap();
    assert_eq!(rows.len(), 30);
    let tests: Vec<String> = rec["metrics"]["finetuned"]["vanilla"]["test"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(tests.len(), 2, "upright and the corrupted test");
    for m in ["vanilla", "equitune"] {
        for t in &tests {
            for (col, acc) in [
                (
                    format!("{m}/{t}"),
                    &rec["metrics"]["finetuned"][m]["test"][t],
                ),
                (
                    format!("{m}/zero-shot/{t}"),
                    &rec["metrics"]["zero_shot"][m][t],
                ),
            ] {
                assert!(h["methods"].as_array().unwrap().contains(&json!(col)));
                let ok = rows
                    .iter()
                    .filter(|r| r["methods"][&col]["correct"] == true)
                    .count();
                assert!(
                    (100.0 * ok as f64 / 30.0 - acc.as_f64().unwrap()).abs() < 1e-9,
                    "{col}: {ok} vs {acc}"
                );
            }
        }
    }
}
