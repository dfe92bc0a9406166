//! `equirun clip finetune` end to end on the tiny random CLIP and a tiny CIFAR-10 (train and
//! test batches) written here: a valid result JSON with curves for every method, the image
//! tower actually trained, and clear errors.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn equirun(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(args)
        .env("EQUIRUN_NO_PROGRESS", "1")
        .env("EQUIRUN_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("EQUIRUN_DATA")
        .output()
        .unwrap()
}

fn setup() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    equirun::testing::write_tiny_clip_for_cifar10(&root.path().join("clip"), 3);
    let data = root.path().join("data");
    equirun::testing::write_tiny_cifar10(&data, 10, 5);
    // a train batch: other random images
    let train = root.path().join("train");
    equirun::testing::write_tiny_cifar10(&train, 30, 6);
    std::fs::copy(
        train.join("cifar-10-batches-bin").join("test_batch.bin"),
        data.join("cifar-10-batches-bin").join("data_batch_1.bin"),
    )
    .unwrap();
    root
}

#[test]
fn clip_finetune_runs_on_the_tiny_checkpoint_and_writes_a_valid_json() {
    let root = setup();
    let p = |s: &str| root.path().join(s).to_str().unwrap().to_string();
    let (clip, data, out, cache) = (p("clip"), p("data"), p("results"), p("cache"));
    let args = [
        "clip",
        "finetune",
        "--model-dir",
        &clip,
        "--dataset",
        "cifar10",
        "--data-dir",
        &data,
        "--out",
        &out,
        "--method",
        "vanilla,equitune,equizero,lambda-equitune",
        "--val-size",
        "6",
        "--batch-size",
        "4",
        "--eval-batch-size",
        "8",
        "--rounds",
        "2",
        "--iters",
        "2",
        "--lambda-rounds",
        "1",
        "--lambda-iters",
        "2",
        "--optim",
        "adamw",
        "--lr",
        "1e-3",
        "--select",
        "last",
        "--seeds",
        "0",
        "--run-name",
        "t",
    ];
    let o = equirun(&args, Path::new(&cache));
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let path = Path::new(&out)
        .join("clip-finetune")
        .join("t")
        .join("seed-0.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in [
        "schema_version",
        "experiment",
        "seed",
        "config",
        "metrics",
        "cost",
        "equirun_version",
        "started_at",
        "finished_at",
    ] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    assert_eq!(r["experiment"], "clip-finetune");
    assert_eq!(r["config"]["dataset"]["n_train"], 30);
    for m in ["vanilla", "equitune", "equizero", "lambda-equitune"] {
        let v = &r["metrics"][m];
        let t = v["test_top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&t), "{m}: {v}");
        assert!(v["zero_shot_test_top1"].is_number(), "{m}");
        assert_eq!(v["curve"].as_array().unwrap().len(), 3, "{m}");
        assert_eq!(v["iterations"], 4);
        assert!(
            Path::new(v["checkpoint"].as_str().unwrap()).is_file(),
            "{m}"
        );
    }
    let lp = &r["metrics"]["lambda-equitune"]["lambda_phase"];
    assert_eq!(lp["curve"].as_array().unwrap().len(), 2);
    assert_eq!(r["cost"]["forward_passes_per_input"]["equitune"], 4);
    assert_eq!(r["cost"]["forward_passes_per_input"]["lambda-equitune"], 8);

    // the finetuned image tower differs from the pretrained one; the text tower is not saved
    let ck = r["metrics"]["equitune"]["checkpoint"].as_str().unwrap();
    let tuned = candle_core::safetensors::load(ck, &candle_core::Device::Cpu).unwrap();
    let orig = candle_core::safetensors::load(
        Path::new(&clip).join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(tuned
        .keys()
        .all(|k| k.starts_with("vision_model.") || k.starts_with("visual_projection")));
    let name = "visual_projection.weight";
    let d = (&tuned[name] - &orig[name])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(
        d.to_scalar::<f32>().unwrap() > 0.0,
        "the image tower did not change"
    );

    // rerun: skipped
    let again = equirun(&args, Path::new(&cache));
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("skip:"));

    // `equirun report` tabulates clip-finetune results (zero-shot and finetuned rows per method)
    let rep = Path::new(&out).join("report");
    let o = equirun(
        &["report", &out, "--out", rep.to_str().unwrap()],
        Path::new(&cache),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(
        md.contains("CLIP finetuned through the wrappers") && !md.contains("not covered"),
        "{md}"
    );
    let t = equirun::tools::report::report(Path::new(&out), &rep).unwrap();
    let table = t
        .tables
        .iter()
        .find(|t| t.family == equirun::tools::table::Family::ClipFinetune)
        .expect("a clip-finetune table");
    for m in ["vanilla", "equitune", "equizero", "lambda-equitune"] {
        for stage in ["zero-shot", "finetuned"] {
            let row = table.rows.iter().find(|r| r[1] == stage).expect(stage);
            let row: Vec<&str> = row.iter().map(String::as_str).collect();
            let c = table.cell(&row, m).unwrap_or_else(|| panic!("{m} {stage}"));
            let key = if stage == "zero-shot" {
                "zero_shot_test_top1"
            } else {
                "test_top1"
            };
            assert_eq!(
                c.mean,
                r["metrics"][m][key].as_f64().unwrap(),
                "{m} {stage}"
            );
        }
    }
}

#[test]
fn clip_finetune_errors_are_clear() {
    let root = setup();
    let p = |s: &str| root.path().join(s).to_str().unwrap().to_string();
    let (clip, data, out, cache) = (p("clip"), p("data"), p("results"), p("cache"));
    let base = [
        "clip",
        "finetune",
        "--model-dir",
        &clip,
        "--data-dir",
        &data,
        "--out",
        &out,
    ];
    for (extra, needle) in [
        (vec!["--dataset", "imagenet-v2"], "train split"),
        (vec!["--dataset", "cifar100"], "cifar-100-binary"),
        (
            vec!["--dataset", "cifar10", "--val-size", "30"],
            "--val-size",
        ),
        (
            vec!["--dataset", "cifar10", "--method", "nope"],
            "unknown method",
        ),
    ] {
        let mut a: Vec<&str> = base.to_vec();
        a.extend(extra);
        let o = equirun(&a, Path::new(&cache));
        assert_eq!(o.status.code(), Some(2), "{a:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{a:?}: {err}");
    }
    assert!(!Path::new(&out).join("clip-finetune").exists());
}
