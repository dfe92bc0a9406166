//! `--device` / `--dtype` on every subcommand that runs a model, checked on the CPU: the
//! inference commands in f16 agree with f32 within measured bounds, the training commands
//! refuse half precision with exit 2, and a build without the `cuda` feature answers
//! `--device cuda` with a clear exit-2 error everywhere.

use candle_core::{DType, Device};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn equirun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(args)
        .env("EQUIRUN_NO_PROGRESS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A tiny GPT-2 snapshot with a word-level tokenizer covering the fairness prompts.
fn tiny_snapshot(dir: &Path) {
    equirun::models::lm::gpt2::write_tiny_snapshot(dir, 9).unwrap();
    let words: Vec<&str> = "The man woman Black White Asian gay straight person he she his her him was known for described as regarded thought of well - worked had a job part time earned money by started working".split(' ').collect();
    let tok = equirun::models::clip::tiny_tokenizer_json(&words).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tok).unwrap(),
    )
    .unwrap();
}

/// gpt2-fairness on the tiny snapshot in f16 and f32: the logits of every first generated token
/// (`--save-logits first`) agree within 2e-2 (measured: 4.6e-3 over 800 logits), and the
/// record says which device and dtype ran (config only when not CPU f32, cost always).
#[test]
fn gpt2_fairness_f16_agrees_with_f32() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    tiny_snapshot(&snap);
    let run = |dtype: &str| -> Value {
        let out = dir.path().join(format!("res-{dtype}"));
        let o = equirun(&[
            "gpt2-fairness",
            "--model-dir",
            snap.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--groups",
            "gender",
            "--method",
            "vanilla,equitune",
            "--samples-per-demographic",
            "5",
            "--contexts",
            "respect",
            "--save-logits",
            "first",
            "--run-name",
            "t",
            "--dtype",
            dtype,
        ]);
        assert!(o.status.success(), "{dtype}: {}", stderr(&o));
        let rec: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("gpt2-fairness/t/seed-0.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["cost"]["inference"]["dtype"], dtype);
        assert_eq!(rec["cost"]["inference"]["device"], "cpu");
        let (_, rows) = equirun::experiments::predictions::read_jsonl_gz(
            &out.join("gpt2-fairness/t/seed-0.samples.jsonl.gz"),
        )
        .unwrap();
        serde_json::json!({"record": rec, "rows": rows})
    };
    let (a, b) = (run("f32"), run("f16"));
    assert!(a["record"]["config"].get("inference").is_none());
    assert_eq!(
        b["record"]["config"]["inference"],
        serde_json::json!({"device": "cpu", "dtype": "f16"})
    );
    let (ra, rb) = (a["rows"].as_array().unwrap(), b["rows"].as_array().unwrap());
    assert_eq!(ra.len(), rb.len());
    assert!(!ra.is_empty());
    let mut worst = 0f64;
    let mut compared = 0;
    for (x, y) in ra.iter().zip(rb) {
        let (fx, fy) = (&x["first_logits"], &y["first_logits"]);
        if fx.is_null() {
            continue;
        }
        // the top logits by token id (half precision may reorder near-ties), max, logsumexp
        let by_id = |f: &Value| -> std::collections::HashMap<u64, f64> {
            f["top_ids"]
                .as_array()
                .unwrap()
                .iter()
                .zip(f["top_logits"].as_array().unwrap())
                .map(|(i, l)| (i.as_u64().unwrap(), l.as_f64().unwrap()))
                .collect()
        };
        let (mx, my) = (by_id(fx), by_id(fy));
        for (id, l) in &mx {
            if let Some(m) = my.get(id) {
                worst = worst.max((l - m).abs());
                compared += 1;
            }
        }
        for k in ["max", "logsumexp"] {
            worst = worst.max((fx[k].as_f64().unwrap() - fy[k].as_f64().unwrap()).abs());
        }
    }
    eprintln!("f16 vs f32 first-token logits: max abs diff {worst} over {compared} values");
    assert!(compared > 0, "no first_logits in {:?}", ra[0]);
    assert!(
        worst > 0.0,
        "f16 gave bit-identical logits: was it applied?"
    );
    assert!(
        worst < 2e-2,
        "f16 vs f32 first-token logits differ by {worst}"
    );
}

/// The tiny BERT classifier fixture in f16 against f32: class probabilities within 1e-2
/// (measured 2.3e-3), through padded batches; `regard eval` with that scorer in f16 runs and
/// reports the same accuracy.
#[test]
fn regard_bert_f16_agrees_with_f32() {
    use equirun::models::bert::{BertClassifier, OPTIONAL_FILES, REQUIRED_FILES};
    let m0 = fixture("bert-tiny").join("m0");
    let files = equirun::hub::ModelSource {
        model: "m0".into(),
        revision: "main".into(),
        model_dir: Some(m0.clone()),
    }
    .resolve(REQUIRED_FILES, OPTIONAL_FILES)
    .unwrap();
    let texts = [
        "XYZ was known for being kind.",
        "XYZ worked as a nurse at the local hospital for many years.",
        "XYZ was rude.",
    ];
    let probs = |dt: DType| {
        let c = BertClassifier::load_with(&files, 32, &Device::Cpu, dt).unwrap();
        let l = c.logits(&texts).unwrap();
        assert_eq!(
            l.dtype(),
            DType::F32,
            "logits are f32 whatever the model dtype"
        );
        candle_nn::ops::softmax_last_dim(&l).unwrap()
    };
    let d = equirun::testing::max_abs_diff(&probs(DType::F32), &probs(DType::F16));
    assert!(d > 0.0 && d < 1e-2, "f16 vs f32 probabilities: {d}");

    let dir = tempfile::tempdir().unwrap();
    let ann = dir.path().join("ann.tsv");
    std::fs::write(
        &ann,
        "1\tThe man was known for being kind\n-1\tXYZ was known for being rude\n0\tXYZ worked as a cook\n",
    )
    .unwrap();
    let eval = |dt: &str| {
        let o = equirun(&[
            "regard",
            "eval",
            "--input",
            ann.to_str().unwrap(),
            "--scorer",
            &format!("bert:{}", m0.display()),
            "--max-pieces",
            "32",
            "--dtype",
            dt,
        ]);
        assert!(o.status.success(), "{dt}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("scorer on cpu in {dt}")));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let (a, b) = (eval("f32"), eval("f16"));
    assert!(a.contains("ann.tsv: accuracy"), "{a}");
    assert_eq!(a, b);
}

/// bench-lm runs the tiny snapshot in f16 and says so.
#[test]
fn bench_lm_f16() {
    let dir = tempfile::tempdir().unwrap();
    tiny_snapshot(dir.path());
    let o = equirun(&[
        "bench-lm",
        "--model-dir",
        dir.path().to_str().unwrap(),
        "--dtype",
        "f16",
        "--batch-size",
        "2",
        "--prompt-len",
        "4",
        "--new-tokens",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["inference"]["dtype"], "f16");
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    // bf16 has no CPU matrix product in candle: a clear error, exit 2
    let o = equirun(&[
        "bench-lm",
        "--model-dir",
        dir.path().to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bf16 is not supported on the CPU"));
}

/// `check --family gpt2|bert|seq2seq`: CPU f32 against itself is exact; f16 is within its
/// tolerance and outside the f32 one (exit 1 when parity fails).
#[test]
fn check_family_parity() {
    let m0 = fixture("bert-tiny").join("m0");
    for extra in [
        vec!["--family", "gpt2"],
        vec!["--family", "seq2seq"],
        vec!["--family", "bert", "--model-dir", m0.to_str().unwrap()],
    ] {
        let mut args = vec!["check", "--json"];
        args.extend(&extra);
        let o = equirun(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["parity"]["max_abs_prob_diff"], 0.0, "{extra:?}: {v}");
        assert_eq!(v["parity"]["ok"], true);
        if extra[1] == "seq2seq" {
            for cell in ["rnn", "gru", "lstm"] {
                assert_eq!(v["parity"]["per_cell_max_abs_prob_diff"][cell], 0.0);
            }
            continue;
        }
        let mut half = args.clone();
        half.extend(["--dtype", "f16"]);
        let o = equirun(&half);
        assert_eq!(o.status.code(), Some(1), "{extra:?} f16 within 1e-4?");
        half.extend(["--parity-tolerance", "1e-2"]);
        let o = equirun(&half);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let d = v["parity"]["max_abs_prob_diff"].as_f64().unwrap();
        assert!(d > 0.0 && d <= 1e-2, "{extra:?}: {d}");
    }
    let o = equirun(&["check", "--family", "bert"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--model-dir"));
    let o = equirun(&["check", "--family", "seq2seq", "--dtype", "f16"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("f32 only"));
}

/// Every command that trains (and the f32-only scan-dump and cnn bench) refuses --dtype f16
/// with exit 2 before any work, naming the flag.
#[test]
fn training_commands_reject_half_precision() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    let cases: &[&[&str]] = &[
        &["scan", "pretrain"],
        &["scan", "finetune", "--pretrained", p],
        &["scan", "quick"],
        &["cnn"],
        &["cnn", "bench"],
        &["multi-image"],
        &["clip", "finetune"],
        &["regard", "train"],
        &["regard", "finetune"],
        &[
            "scan-dump",
            "--checkpoint",
            p,
            "--input",
            p,
            "--output",
            "x.json",
        ],
    ];
    for c in cases {
        let mut args = c.to_vec();
        args.extend(["--dtype", "f16"]);
        let o = equirun(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{c:?}: {e}");
        assert!(
            e.contains("--dtype f16") && e.contains("f32") && e.contains("Omit --dtype"),
            "{c:?}: {e}"
        );
        if !c.contains(&"scan-dump") && c != &["cnn", "bench"] {
            assert!(e.contains("training runs in f32"), "{c:?}: {e}");
        }
    }
}

/// Without the `cuda` feature, `--device cuda` is a clear exit-2 error on every subcommand that
/// runs a model, before any work.
#[test]
fn device_cuda_without_the_feature_exit_2_everywhere() {
    if cfg!(feature = "cuda") {
        return; // the cuda build answers with the driver's error instead (tests/cuda_build.rs)
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_str().unwrap();
    let cases: &[&[&str]] = &[
        &["clip", "--dataset", "folder", "--data-dir", p],
        &["clip", "finetune"],
        &["bench-clip"],
        &["check"],
        &["check", "--family", "gpt2"],
        &["gpt2-fairness"],
        &["bench-lm", "--model-dir", p],
        &["regard", "train"],
        &["regard", "eval"],
        &["regard", "score", "--input", p],
        &["regard", "finetune"],
        &["cnn"],
        &["cnn", "bench"],
        &["multi-image"],
        &["scan", "pretrain"],
        &["scan", "finetune", "--pretrained", p],
        &["scan", "quick"],
        &[
            "scan-dump",
            "--checkpoint",
            p,
            "--input",
            p,
            "--output",
            "x.json",
        ],
    ];
    for c in cases {
        let mut args = c.to_vec();
        args.extend(["--device", "cuda"]);
        let o = equirun(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{c:?}: {e}");
        assert!(
            e.contains("--device") && e.contains("--features cuda") && e.contains("--device cpu"),
            "{c:?}: {e}"
        );
    }
}
