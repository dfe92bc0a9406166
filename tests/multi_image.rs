//! `equirun multi-image`: k-tuples, per-view invariance of the multi-view models for every
//! rotation of every view, counted CNN passes, and the CLI end to end on a tiny Fashion-MNIST.

use candle_core::Tensor;
use equirun::data::gray::make_tuples;
use equirun::equi::{ImageOutput, ImageSymmetry, Symmetry};
use equirun::experiments::multi_image::{FusionForm, ModelKind, MultiView};
use equirun::groups::image::image_group;
use equirun::models::cnn::CnnConfig;
use equirun::testing::{max_abs_diff, randn};
use serde_json::Value;
use std::process::Output;

#[test]
fn tuples_group_same_class_consecutive_images() {
    let labels = [0u32, 1, 0, 1, 1, 0, 2, 1, 0, 0];
    let idx: Vec<usize> = (0..labels.len()).collect();
    let mut rng = equirun::output::rng_for(0, "t");
    let t = make_tuples(&labels, &idx, 2, &mut rng);
    // class 0: [0,2,5,8,9] → 2 tuples; class 1: [1,3,4,7] → 2; class 2: [6] → none
    assert_eq!(t.labels.len(), 4);
    let mut seen: Vec<usize> = t.idx.concat();
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3, 4, 5, 7, 8]);
    for (tu, &l) in t.idx.iter().zip(&t.labels) {
        assert!(tu.iter().all(|&i| labels[i] == l));
    }
    let mut sorted: Vec<Vec<usize>> = t.idx.clone();
    sorted.sort();
    assert_eq!(sorted, vec![vec![0, 2], vec![1, 3], vec![4, 7], vec![5, 8]]);
}

#[test]
fn multi_view_models_invariant_per_view_with_counted_passes() {
    let cfg = CnnConfig::tiny(8, 10);
    let rot = ImageSymmetry::new(image_group("rot90").unwrap(), ImageOutput::Invariant, 0);
    let (k, b) = (3, 2);
    let views: Vec<Tensor> = (0..k as u64)
        .map(|i| randn(50 + i, &[b, 1, 8, 8]))
        .collect();
    let cases = [
        (ModelKind::MultiGcnn, FusionForm::Official),
        (ModelKind::MultiGcnnFusion, FusionForm::Official),
        (ModelKind::MultiGcnnFusion, FusionForm::Is),
        (ModelKind::ProductGcnn, FusionForm::Official),
        (ModelKind::Cnn, FusionForm::Official),
    ];
    for (kind, form) in cases {
        let m = MultiView::new(kind, k, form, &cfg, 3).unwrap();
        let y = m.logits(&views, None).unwrap();
        assert_eq!(m.passes.get(), b * kind.passes(k), "{kind:?}: CNN passes");
        let mut worst = 0f32;
        for v in 0..k {
            for g in 1..4 {
                let mut moved = views.clone();
                moved[v] = rot.act_input(g, &views[v]).unwrap();
                worst = worst.max(max_abs_diff(&m.logits(&moved, None).unwrap(), &y));
            }
        }
        // all views rotated at once, by different elements
        let moved: Vec<Tensor> = views
            .iter()
            .enumerate()
            .map(|(v, x)| rot.act_input((v + 1) % 4, x).unwrap())
            .collect();
        worst = worst.max(max_abs_diff(&m.logits(&moved, None).unwrap(), &y));
        if kind == ModelKind::Cnn {
            assert!(
                worst > 1e-4,
                "the plain CNN should not be invariant ({worst})"
            );
        } else {
            assert!(worst < 1e-5, "{kind:?} {form:?}: invariance error {worst}");
        }
    }
}

fn equirun(args: &[&str]) -> Output {
    equirun::testing::run_equirun(env!("CARGO_BIN_EXE_equirun"), args)
}

#[test]
fn multi_image_cli_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fm");
    equirun::testing::write_tiny_fashion(&data, 200, 100);
    let out = dir.path().join("res");
    let args_with = |out: &std::path::Path, k: &str, models: &str, train: &str| {
        vec![
            "multi-image".to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--k".into(),
            k.into(),
            "--models".into(),
            models.into(),
            "--train-images".into(),
            train.into(),
            "--val-images".into(),
            "40".into(),
            "--test-images".into(),
            "60".into(),
            "--epochs".into(),
            "2".into(),
            "--out".into(),
            out.display().to_string(),
            "--run-name".into(),
            "t".into(),
            "--seeds".into(),
            "0,1".into(),
        ]
    };
    let args = |out: &std::path::Path| args_with(out, "2", "cnn,multi-gcnn-fusion", "100");
    let run = |v: Vec<String>| equirun(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(args(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: std::path::PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let j = read(out.join("multi-image/t-k2/seed-0.json"));
    assert_eq!(
        j["metrics"]["tuples"],
        serde_json::json!({"train": 50, "val": 20, "test": 30})
    );
    let f = &j["metrics"]["models"]["multi-gcnn-fusion"];
    assert_eq!(f["passes_per_tuple"], 16);
    assert_eq!(f["measured_train_passes_per_tuple"], 16.0);
    assert_eq!(
        j["metrics"]["models"]["cnn"]["measured_train_passes_per_tuple"],
        2.0
    );
    // invariant model: the same accuracy on upright and per-view-rotated test tuples when the
    // same epoch is selected
    if f["selected_epoch"]["upright"] == f["selected_epoch"]["rotated"] {
        assert_eq!(f["test_upright"], f["test_rotated"]);
    }
    assert!(out.join("multi-image/t-k2/seed-1.json").is_file());
    // deterministic: a second run elsewhere gives the same accuracies and curves (timings aside)
    let out2 = dir.path().join("res2");
    assert!(run(args(&out2)).status.success());
    let j2 = read(out2.join("multi-image/t-k2/seed-0.json"));
    for m in ["cnn", "multi-gcnn-fusion"] {
        let (a, b) = (&j["metrics"]["models"][m], &j2["metrics"]["models"][m]);
        for key in ["test_upright", "test_rotated", "selected_epoch", "val_best"] {
            assert_eq!(a[key], b[key], "{m} {key}");
        }
        for (ca, cb) in a["curve"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["curve"].as_array().unwrap())
        {
            assert_eq!(ca["train_loss"], cb["train_loss"]);
            assert_eq!(ca["val_rotated"], cb["val_rotated"]);
        }
    }
    // bad inputs
    let bad = dir.path().join("bad");
    for (v, needle) in [
        (
            args_with(&bad, "0", "cnn", "100"),
            "views per sample must be between 1 and 6",
        ),
        (
            args_with(&bad, "2", "resnet", "100"),
            "unknown model 'resnet'",
        ),
        (args_with(&bad, "5", "product-gcnn", "100"), "k ≤ 4"),
        (args_with(&bad, "2", "cnn", "5000"), "training images"),
    ] {
        let o = run(v);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    }
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn folder_dataset_excludes_background_and_runs() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("101_ObjectCategories");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for class in ["BACKGROUND_Google", "airplanes", "faces", "watch"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..20 {
            let (w, h) = (rng.random_range(12..30u32), rng.random_range(12..30u32));
            let img = image::RgbImage::from_fn(w, h, |_, _| {
                image::Rgb([rng.random(), rng.random(), rng.random()])
            });
            img.save(data.join(class).join(format!("image_{i:04}.png")))
                .unwrap();
        }
    }
    let (tr, te, classes) = equirun::data::gray::folder_gray(&data, 16).unwrap();
    assert_eq!(classes, vec!["airplanes", "faces", "watch"]);
    assert_eq!(
        (tr.len(), te.len()),
        (48, 12),
        "60 class images, 20% test; background excluded"
    );
    assert_eq!(tr.pixels.len(), 48 * 256);
    assert!(tr.labels.iter().chain(&te.labels).all(|&l| l < 3));
    let out = dir.path().join("res");
    let o = equirun(&[
        "multi-image",
        "--dataset",
        "folder",
        "--data-dir",
        data.to_str().unwrap(),
        "--image-size",
        "16",
        "--k",
        "2",
        "--models",
        "multi-gcnn",
        "--train-images",
        "30",
        "--val-images",
        "12",
        "--test-images",
        "12",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--run-name",
        "f",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("multi-image/f-k2/seed-0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(j["config"]["classes"], 3);
    assert_eq!(j["config"]["image_size"], 16);
    let o = equirun(&[
        "multi-image",
        "--dataset",
        "folder",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--dataset folder needs --data-dir"));
}
