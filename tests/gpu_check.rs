//! `scripts/gpu_check.sh`'s dry run on the CPU: the script that checks a CUDA build on a GPU
//! machine runs end to end here with `--device cpu` and writes the JSON it promises.

use serde_json::Value;
use std::process::Command;

fn script() -> Command {
    let mut c = Command::new("bash");
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu_check.sh"))
        .env("EQUIRUN_BIN", env!("CARGO_BIN_EXE_equirun"))
        .env("EQUIRUN_NO_PROGRESS", "1");
    c
}

#[test]
fn gpu_check_dry_run_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpu.json");
    let o = script()
        .args(["--device", "cpu", "--quick", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["failures"], 0);
    let results = v["results"].as_object().unwrap();
    let names: Vec<&str> = results.keys().map(String::as_str).collect();
    for want in [
        "invariance_vit_rot90_f32",
        "invariance_resnet_rot90xflip_f32",
        "parity_gpt2_f32",
        "parity_gpt2_f16",
        "parity_bert_f32",
        "parity_bert_f16",
        "parity_seq2seq_f32",
        "bench_lm_f32_b1",
        "bench_lm_f16_b1",
        "wrappers_rot90xflip",
        "train_clip_finetune",
        "train_scan_pretrain",
        "train_scan_finetune",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for (name, r) in results {
        if name.starts_with("invariance_") {
            // CPU f32 against itself: bit-identical
            assert_eq!(
                r["parity"]["max_abs_feature_diff"].as_f64(),
                Some(0.0),
                "{name}"
            );
            assert_eq!(
                r["parity"]["max_abs_prob_diff"].as_f64(),
                Some(0.0),
                "{name}"
            );
            for (m, c) in r["methods"].as_object().unwrap() {
                let e = c["max_error"].as_f64().unwrap();
                if m == "vanilla" {
                    assert!(e > 1e-4, "{name} {m}: {e}");
                } else {
                    assert!(e <= 1e-5, "{name} {m}: {e}");
                }
            }
        } else if name.starts_with("parity_") {
            let p = &r["parity"];
            assert_eq!(p["ok"], true, "{name}: {r}");
            let d = p["max_abs_prob_diff"].as_f64().unwrap();
            if name.ends_with("_f32") {
                assert_eq!(d, 0.0, "{name}: {r}");
            } else {
                assert!(d > 0.0 && d < 5e-2, "{name}: {r}");
            }
        } else if name.starts_with("bench_lm_") {
            assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{name}: {r}");
            let dt = if name.contains("f16") { "f16" } else { "f32" };
            assert_eq!(r["inference"]["dtype"], dt, "{name}");
        } else if name == "wrappers_rot90xflip" {
            let ratio = r["multi_over_equitune"].as_f64().unwrap();
            assert!(ratio > 0.0 && ratio.is_finite(), "{r}");
            assert_eq!(r["methods"]["equitune"]["model_passes_per_image"], 8);
            assert_eq!(r["methods"]["multi-equitune"]["model_passes_per_image"], 6);
        } else if name.starts_with("train_") {
            assert_eq!(r["loss_decreased"], true, "{name}: {r}");
            assert!(
                r["last_train_loss"].as_f64().unwrap() < r["first_train_loss"].as_f64().unwrap()
            );
        }
    }
    let nc = v["not_covered"].as_array().unwrap();
    assert!(!nc.iter().any(|x| x.as_str().unwrap().contains("bench-lm")));
    // nothing half-written beside the result
    assert!(!dir.path().join("gpu.json.tmp").exists());
}

#[test]
fn gpu_check_bad_options_exit_2() {
    let o = script().arg("--devise").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown option '--devise'"));
    let o = script()
        .args(["--device", "cpu", "--model-dir", "/nonexistent/snapshot"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--model-dir"));
    let o = script()
        .args(["--device", "cpu", "--lm-dir", "/nonexistent/gpt2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lm-dir"));
}
