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
    assert_eq!(results.len(), 4, "{results:?}");
    for (name, r) in results {
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
    }
    assert!(v["not_covered"].as_array().is_some_and(|a| !a.is_empty()));
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
}
