//! Learned canonicalisation (`canon`): exact invariance / equivariance for every group element
//! (ties included), a non-equivariant scorer that fails the same check, the straight-through
//! training output, and `equirun cnn --method canon` end to end (seeded determinism, exit codes).

use candle_core::{DType, Device, Tensor};
use equirun::equi::canon::{prior_loss, tie_sets, Canon, CanonConfig, CanonNet};
use equirun::equi::{mean_of, ImageOutput, ImageSymmetry, Symmetry};
use equirun::groups::image::image_group;
use equirun::models::cnn::{Cnn, CnnConfig};
use equirun::testing::{max_abs_diff, randn, write_tiny_fashion};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const SIDE: usize = 12;

fn sym(group: &str, output: ImageOutput) -> ImageSymmetry {
    ImageSymmetry::new(image_group(group).unwrap(), output, 0)
}

fn scorer(seed: u64) -> CanonNet {
    // resolution 6: the scorer block-averages 12 → 6 (the pooled path is exercised)
    let cfg = CanonConfig::new(1, SIDE, 4, 6).unwrap();
    assert_eq!(cfg.pool, 2);
    CanonNet::new(cfg, seed, &Device::Cpu).unwrap()
}

/// Random images, then two made symmetric: image 1 fixed by rot90, image 2 by rot180 (their
/// canonicaliser scores tie exactly over the stabiliser).
fn inputs(seed: u64) -> Tensor {
    let x = randn(seed, &[4, 1, SIDE, SIDE]);
    let r4 = sym("rot90", ImageOutput::Invariant);
    let r2 = sym("rot180", ImageOutput::Invariant);
    let avg = |s: &ImageSymmetry, t: &Tensor| {
        let copies: Vec<Tensor> = (0..s.order()).map(|g| s.act_input(g, t).unwrap()).collect();
        mean_of(&copies).unwrap()
    };
    Tensor::cat(
        &[
            x.narrow(0, 0, 1).unwrap(),
            avg(&r4, &x.narrow(0, 1, 1).unwrap()),
            avg(&r2, &x.narrow(0, 2, 1).unwrap()),
            x.narrow(0, 3, 1).unwrap(),
        ],
        0,
    )
    .unwrap()
}

/// max over g of |F(g·x) − ρ(g) F(x)|.
fn error(s: &dyn Symmetry, f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor) -> f32 {
    let base = f(x);
    (0..s.order())
        .map(|g| {
            let o = f(&s.act_input(g, x).unwrap());
            max_abs_diff(&o, &s.act_output(g, &base).unwrap())
        })
        .fold(0f32, f32::max)
}

#[test]
fn canon_is_exactly_invariant_for_every_element_ties_included() {
    let cfg = CnnConfig::tiny(SIDE, 5);
    let (_, cnn) = Cnn::init(&cfg, 3, &Device::Cpu).unwrap();
    let model = |x: &Tensor| cnn.logits(x, None);
    for group in ["rot90", "rot90xflip", "hflip"] {
        let s = sym(group, ImageOutput::Invariant);
        let net = scorer(7);
        let canon = Canon {
            sym: &s,
            scorer: &net,
        };
        let x = inputs(11);
        // the symmetric images give tied scores: the tie sets are the stabiliser's cosets
        let ties = tie_sets(&canon.scores(&x).unwrap()).unwrap();
        if group != "hflip" {
            assert!(
                ties[1].len() >= 4,
                "{group}: rot90-fixed image ties {ties:?}"
            );
            assert!(
                ties[2].len() >= 2,
                "{group}: rot180-fixed image ties {ties:?}"
            );
        }
        assert_eq!(
            ties[0].len(),
            1,
            "{group}: a generic image has a unique choice"
        );
        let (_, stats) = canon.forward(&model, &x).unwrap();
        assert_eq!(stats.inputs, 4);
        let f = |x: &Tensor| canon.forward(&model, x).unwrap().0;
        let e = error(&s, &f, &x);
        assert!(e <= 1e-5, "{group}: canon invariance error {e}");
        // and the model itself is not invariant (the check can fail)
        let v = error(&s, &|x: &Tensor| model(x).unwrap(), &x);
        assert!(
            v > 1e-3,
            "{group}: vanilla error {v}: the check would be vacuous"
        );
    }
}

/// A dense (image-to-image) model: ρ_Y acts on outputs; canon must be equivariant.
#[test]
fn canon_is_exactly_equivariant_for_image_outputs() {
    let pattern = randn(5, &[1, 1, SIDE, SIDE]);
    let model =
        |x: &Tensor| -> anyhow::Result<Tensor> { Ok((x.broadcast_mul(&pattern)? + x.sqr()?)?) };
    for group in ["rot90", "rot90xflip"] {
        let s = sym(group, ImageOutput::Image);
        let net = scorer(9);
        let canon = Canon {
            sym: &s,
            scorer: &net,
        };
        let x = inputs(13);
        let f = |x: &Tensor| canon.forward(&model, x).unwrap().0;
        let e = error(&s, &f, &x);
        assert!(e <= 1e-5, "{group}: canon equivariance error {e}");
        let (_, stats) = canon.forward(&model, &x).unwrap();
        assert!(
            stats.big_rows > stats.inputs,
            "{group}: tied inputs average their tied copies ({stats:?})"
        );
        let v = error(&s, &|x: &Tensor| model(x).unwrap(), &x);
        assert!(
            v > 1e-3,
            "{group}: the model alone is not equivariant ({v})"
        );
    }
}

/// The naive design: a network that reads x and emits one score per element directly. Its
/// choice does not move with the input, so the wrapper is not invariant.
#[test]
fn a_non_equivariant_scorer_fails_the_check() {
    let cfg = CnnConfig::tiny(SIDE, 5);
    let (_, cnn) = Cnn::init(&cfg, 3, &Device::Cpu).unwrap();
    let model = |x: &Tensor| cnn.logits(x, None);
    for group in ["rot90", "rot90xflip"] {
        let s = sym(group, ImageOutput::Invariant);
        let net = scorer(7);
        let canon = Canon {
            sym: &s,
            scorer: &net,
        };
        let head = randn(17, &[SIDE * SIDE, s.order()]);
        let direct = |x: &Tensor| x.flatten_from(1).unwrap().matmul(&head).unwrap();
        let x = randn(19, &[6, 1, SIDE, SIDE]);
        let f = |x: &Tensor| canon.forward_with_scores(&model, x, &direct(x)).unwrap().0;
        let e = error(&s, &f, &x);
        assert!(e > 1e-3, "{group}: a direct scorer passed ({e})");
        // the same wrapper with the orbit scores passes
        let g = |x: &Tensor| {
            canon
                .forward_with_scores(&model, x, &canon.scores(x).unwrap())
                .unwrap()
                .0
        };
        assert!(error(&s, &g, &x) <= 1e-5);
    }
}

#[test]
fn scores_permute_with_the_group() {
    let s = sym("rot90xflip", ImageOutput::Invariant);
    let net = scorer(21);
    let canon = Canon {
        sym: &s,
        scorer: &net,
    };
    let x = randn(23, &[3, 1, SIDE, SIDE]);
    let base = canon.scores(&x).unwrap().to_vec2::<f32>().unwrap();
    for h in 0..s.order() {
        let sh = canon
            .scores(&s.act_input(h, &x).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // σ_g(h·x) = σ_{h⁻¹g}(x)
        for g in 0..s.order() {
            let k = s.group.mul(s.inv(h), g);
            for j in 0..3 {
                assert_eq!(sh[j][g], base[j][k], "h {h} g {g} row {j}");
            }
        }
    }
}

#[test]
fn straight_through_output_equals_the_hard_output_and_trains_the_scorer() {
    let cfg = CnnConfig::tiny(SIDE, 5);
    let (_, cnn) = Cnn::init(&cfg, 3, &Device::Cpu).unwrap();
    let model = |x: &Tensor| cnn.logits(x, None);
    let s = sym("rot90xflip", ImageOutput::Invariant);
    let net = scorer(25);
    let canon = Canon {
        sym: &s,
        scorer: &net,
    };
    let x = randn(27, &[5, 1, SIDE, SIDE]);
    let (hard, _) = canon.forward(&model, &x).unwrap();
    let (soft, scores) = canon.train_forward(&model, &x, 1.0).unwrap();
    assert_eq!(max_abs_diff(&hard, &soft), 0.0);
    let y = Tensor::new(&[0u32, 1, 2, 3, 4], &Device::Cpu).unwrap();
    let task = candle_nn::loss::cross_entropy(&soft, &y).unwrap();
    let grads = task.backward().unwrap();
    for v in net.vars() {
        let g = grads
            .get(v.as_tensor())
            .expect("task gradient reaches the scorer");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }
    // the prior pulls the identity's score up
    let prior = prior_loss(&scores, &[0; 5]).unwrap();
    assert!(
        prior
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    let grads = prior.backward().unwrap();
    assert!(grads.get(net.vars()[5].as_tensor()).is_some());
}

#[test]
fn scorer_sizes_and_bad_input() {
    let c = CanonConfig::new(3, 224, 8, 16).unwrap();
    assert_eq!((c.pool, c.side()), (14, 16));
    let c = CanonConfig::new(1, 28, 8, 16).unwrap();
    assert_eq!((c.pool, c.side()), (2, 14));
    assert!(CanonConfig::new(1, 28, 0, 16).is_err());
    let net = scorer(1);
    let err = net
        .score(&randn(1, &[2, 3, SIDE, SIDE]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("canonicaliser expects inputs"), "{err}");
}

// ---------- CLI ----------

fn equirun(args: &[&str]) -> Output {
    equirun::testing::run_equirun(env!("CARGO_BIN_EXE_equirun"), args)
}

fn ok(o: &Output) {
    equirun::testing::assert_success(o)
}

fn tiny_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut a = equirun::testing::tiny_cnn_args(data, out);
    a.extend([
        "--canon-rounds",
        "1",
        "--canon-iters",
        "3",
        "--canon-batch-size",
        "8",
        "--group",
        "rot90xflip",
        "--method",
        "vanilla,canon",
        "--run-name",
        "t",
    ]);
    a
}

fn only_json(dir: &Path) -> Value {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().map(|e| e == "json").unwrap_or(false))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap()
}

fn strip(v: &Value) -> Value {
    let mut v = v.clone();
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| {
                    !k.contains("seconds") && !k.contains("checkpoint") && !k.contains("per_second")
                });
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

#[test]
fn cnn_canon_end_to_end_is_invariant_and_deterministic() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("fm");
    write_tiny_fashion(&data, 84, 30);
    let d = data.to_str().unwrap().to_string();
    let mut recs = Vec::new();
    for out in ["r1", "r2"] {
        let o = root.path().join(out).to_str().unwrap().to_string();
        let mut a = tiny_args(&d, &o);
        a.extend(["--seeds", "1"]);
        let res = equirun(&a);
        ok(&res);
        let stdout = String::from_utf8_lossy(&res.stdout).to_string();
        assert!(stdout.contains("| canon | rot90xflip |"), "{stdout}");
        assert!(stdout.contains("1 (+8 scorer)"), "{stdout}");
        recs.push(only_json(&Path::new(&o).join("cnn").join("t")));
    }
    let m = &recs[0]["metrics"];
    let (zs, ft) = (&m["zero_shot"]["canon"], &m["finetuned"]["canon"]);
    assert_eq!(
        zs["upright"], zs["rot90xflip"],
        "zero-shot canon is invariant"
    );
    assert_eq!(ft["test"]["upright"], ft["test"]["rot90xflip"]);
    assert_eq!(ft["forward_passes_per_input"], 1);
    assert_eq!(ft["scorer_passes_per_input"], 8);
    assert_eq!(recs[0]["cost"]["forward_passes_per_input"]["canon"], 1);
    assert_eq!(ft["prior_phase"]["curve"].as_array().unwrap().len(), 2);
    assert!(Path::new(ft["prior_phase"]["scorer_checkpoint"].as_str().unwrap()).is_file());
    assert!(ft["test_images_per_second"].as_f64().unwrap() > 0.0);
    assert!(recs[0]["config"]["canon"]["n_params"].as_u64().unwrap() > 0);
    // same seed, another results folder: the same metrics bit for bit (times and paths aside)
    assert_eq!(strip(&recs[0]["metrics"]), strip(&recs[1]["metrics"]));
}

#[test]
fn canon_flags_are_checked_at_parse_time() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().to_str().unwrap();
    for (flag, val) in [
        ("--canon-prior-weight", "-1"),
        ("--canon-temperature", "0"),
        ("--canon-width", "0"),
        ("--canon-lr", "nan"),
    ] {
        let arg = format!("{flag}={val}");
        let o = equirun(&["cnn", "--method", "canon", &arg, "--out", out]);
        assert_eq!(o.status.code(), Some(2), "{flag} {val}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(flag), "{flag}: {err}");
    }
    let o = equirun(&[
        "check",
        "--group",
        "rot90xflip",
        "--method",
        "canon",
        "--json",
    ]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["methods"]["canon"]["max_error"].as_f64().unwrap() <= 1e-5);
    assert_eq!(v["methods"]["canon"]["forward_passes"], 1);
    assert_eq!(v["methods"]["canon"]["scorer_passes"], 8);
}

/// `equirun clip --method canon` on a tiny random CLIP: a prior-only scorer trained on an image
/// folder, exactly invariant (upright and corrupted accuracy agree image by image), one model
/// pass per image; without --canon-train-dir a clear error.
#[test]
fn clip_canon_end_to_end() {
    use equirun::testing::{write_tiny_cifar10, write_tiny_clip_for_cifar10};
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("clip");
    write_tiny_clip_for_cifar10(&model, 1);
    write_tiny_cifar10(root.path(), 24, 2);
    let folder = root.path().join("upright").join("things");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..6u8 {
        let img = image::RgbImage::from_fn(20, 16, |x, y| {
            image::Rgb([(x * 12) as u8 ^ i, (y * 15) as u8, 40 * i])
        });
        img.save(folder.join(format!("{i}.png"))).unwrap();
    }
    let (m, d, o) = (
        model.to_str().unwrap().to_string(),
        root.path().to_str().unwrap().to_string(),
        root.path().join("out").to_str().unwrap().to_string(),
    );
    let up = root.path().join("upright").to_str().unwrap().to_string();
    let base = |transform: &'static str, run: &'static str| -> Vec<String> {
        [
            "clip",
            "--model-dir",
            &m,
            "--dataset",
            "cifar10",
            "--data-dir",
            &d,
            "--out",
            &o,
            "--group",
            "rot90xflip",
            "--method",
            "vanilla,equitune,canon",
            "--canon-train-dir",
            &up,
            "--canon-rounds",
            "1",
            "--canon-iters",
            "2",
            "--canon-batch-size",
            "4",
            "--batch-size",
            "8",
            "--transform",
            transform,
            "--run-name",
            run,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut recs = Vec::new();
    for (t, run) in [("none", "clean"), ("rot90xflip", "corrupt")] {
        let a = base(t, run);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(&equirun(&a));
        recs.push(only_json(&Path::new(&o).join("clip").join(run)));
    }
    let (c0, c1) = (&recs[0]["metrics"]["canon"], &recs[1]["metrics"]["canon"]);
    assert_eq!(c0["correct_top1"], c1["correct_top1"]);
    assert_eq!(c0["correct_top5"], c1["correct_top5"]);
    assert_eq!(c0["scorer_passes_per_input"], 8);
    assert_eq!(recs[0]["cost"]["forward_passes_per_input"]["canon"], 1);
    assert_eq!(recs[0]["config"]["canon"]["train_images"], 6);
    assert!(c0["identity_rate"].as_f64().is_some());
    // missing training images: exit 2 naming the flag, nothing written
    let o2 = root.path().join("out2").to_str().unwrap().to_string();
    let o = equirun(&[
        "clip",
        "--model-dir",
        &m,
        "--dataset",
        "cifar10",
        "--data-dir",
        &d,
        "--out",
        &o2,
        "--method",
        "canon",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--canon-train-dir"));
    assert!(!Path::new(&o2).exists());
}
#[test]
fn bench_clip_times_the_wrappers_in_one_run() {
    use equirun::testing::write_tiny_clip_for_cifar10;
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("clip");
    write_tiny_clip_for_cifar10(&model, 1);
    let m = model.to_str().unwrap();
    let o = equirun(&[
        "bench-clip",
        "--model-dir",
        m,
        "--batch-size",
        "2",
        "--batches",
        "1",
        "--warmup",
        "0",
        "--method",
        "vanilla,canon,equitune,multi-equitune",
        "--group",
        "rot90xflip",
    ]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let ms = &v["methods"];
    for (name, passes) in [
        ("vanilla", 1),
        ("canon", 1),
        ("equitune", 8),
        ("multi-equitune", 6),
    ] {
        assert!(ms[name]["images_per_s"].as_f64().unwrap() > 0.0, "{name}");
        assert_eq!(ms[name]["model_passes_per_image"], passes, "{name}");
        assert!(ms[name]["speed_vs_vanilla"].as_f64().is_some());
    }
    assert_eq!(ms["canon"]["scorer_passes_per_image"], 8);
    let o = equirun(&[
        "bench-clip",
        "--model-dir",
        m,
        "--method",
        "lambda-equitune",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--method"));
}

#[test]
fn bench_clip_times_the_text_classifier() {
    use equirun::testing::write_tiny_clip_for_cifar10;
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("clip");
    write_tiny_clip_for_cifar10(&model, 1);
    let m = model.to_str().unwrap();
    let o = equirun(&[
        "bench-clip",
        "--model-dir",
        m,
        "--text-classifier",
        "--batches",
        "2",
    ]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["task"], "cifar100-zero-shot-classifier");
    assert_eq!(v["templates"], 18);
    assert_eq!(v["seconds_per_pass"].as_array().unwrap().len(), 2);
    assert!(v["prompts_per_s"].as_f64().unwrap() > 0.0);
    // one kind of timing per run
    let o = equirun(&[
        "bench-clip",
        "--model-dir",
        m,
        "--text-classifier",
        "--method",
        "vanilla",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--text-classifier"));
}
