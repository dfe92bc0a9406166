//! The CNN (im2col convolutions, NHWC pooling) against candle's own NCHW conv2d / max_pool2d
//! (values and gradients), seeded determinism, and `equirun cnn` end to end on a tiny
//! Fashion-MNIST-format dataset written here.

use candle_core::{Device, Tensor, Var};
use equirun::models::cnn::{self, Cnn, CnnConfig};
use equirun::testing::{max_abs_diff, randn};
use serde_json::Value;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Output;

/// 2×2 max-pool from reshape + max reductions. candle 0.11's own `max_pool2d` has a wrong
/// backward pass (a unique maximum receives a quarter of the gradient: checked by finite
/// differences), so the reference pools with reductions, whose gradient is right.
fn pool_ref(x: &Tensor) -> Tensor {
    let (n, c, h, w) = x.dims4().unwrap();
    x.reshape((n, c, h / 2, 2, w / 2, 2))
        .unwrap()
        .max(5)
        .unwrap()
        .max(3)
        .unwrap()
}

/// The same network written the PyTorch way with candle's NCHW ops.
fn reference_logits(cfg: &CnnConfig, w: &[Tensor], x: &Tensor) -> Tensor {
    let conv = |x: &Tensor, k: &Tensor, b: &Tensor| {
        x.conv2d(k, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
            .unwrap()
    };
    let h = pool_ref(&conv(x, &w[0], &w[1]).relu().unwrap());
    let h = pool_ref(&conv(&h, &w[2], &w[3]).relu().unwrap());
    let h = h.flatten_from(1).unwrap(); // (C, H, W) order
    let f = h
        .matmul(&w[4].t().unwrap())
        .unwrap()
        .broadcast_add(&w[5])
        .unwrap()
        .relu()
        .unwrap();
    let _ = cfg;
    f.matmul(&w[6].t().unwrap())
        .unwrap()
        .broadcast_add(&w[7])
        .unwrap()
}

#[test]
fn cnn_matches_candle_conv2d_reference_in_values_and_gradients() {
    for (cfg, seed) in [
        (CnnConfig::tiny(8, 5), 1u64),
        (CnnConfig::fashion_mnist(), 2),
        (
            CnnConfig {
                in_channels: 3,
                ..CnnConfig::tiny(12, 4)
            },
            3,
        ),
    ] {
        let (vm, model) = Cnn::init(&cfg, seed, &Device::Cpu).unwrap();
        let vars = cnn::vars(&cfg, &vm).unwrap();
        let w: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let s = cfg.image_size;
        let xv = Var::from_tensor(&randn(seed + 10, &[3, cfg.in_channels, s, s])).unwrap();
        let x = xv.as_tensor();
        let ours = model.logits(x, None).unwrap();
        let refr = reference_logits(&cfg, &w, x);
        let e = max_abs_diff(&ours, &refr);
        assert!(e < 1e-4, "{cfg:?}: logits differ by {e}");
        // gradients of a random functional, for every parameter and for the input
        let v = randn(seed + 20, ours.dims());
        let g1 = (&ours * &v).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&refr * &v).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, var) in vars.iter().enumerate() {
            let a = g1.get(var.as_tensor()).expect("gradient missing");
            let b = g2.get(var.as_tensor()).expect("reference gradient missing");
            let scale = equirun::testing::max_abs(b).max(1.0);
            let e = max_abs_diff(a, b) / scale;
            assert!(
                e < 1e-4,
                "{cfg:?}: parameter {i} gradient differs by {e} (relative)"
            );
        }
        let e = max_abs_diff(g1.get(x).unwrap(), g2.get(x).unwrap());
        assert!(e < 1e-4, "{cfg:?}: input gradient differs by {e}");
    }
}

#[test]
fn max_pool_gradient_matches_finite_differences() {
    let x0 = randn(31, &[1, 4, 6, 3]);
    let v = randn(32, &[1, 2, 3, 3]);
    let f = |x: &Tensor| -> f32 {
        (cnn::max_pool2(x).unwrap() * &v)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let xv = Var::from_tensor(&x0).unwrap();
    let g = (cnn::max_pool2(xv.as_tensor()).unwrap() * &v)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = g
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut xs = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for i in 0..xs.len() {
        let h = 1e-3;
        xs[i] += h;
        let p = f(&Tensor::from_vec(xs.clone(), x0.dims(), &Device::Cpu).unwrap());
        xs[i] -= 2.0 * h;
        let m = f(&Tensor::from_vec(xs.clone(), x0.dims(), &Device::Cpu).unwrap());
        xs[i] += h;
        let num = (p - m) / (2.0 * h);
        assert!(
            (num - g[i]).abs() < 1e-2,
            "element {i}: analytic {} numeric {num}",
            g[i]
        );
    }
}

#[test]
fn max_pool_routes_the_gradient_to_the_first_maximum_and_has_the_right_shape() {
    // NHWC [1, 2, 2, 2]: channel 0 has a tie between positions 0 and 3
    let x = Var::new(
        &[[[[5f32, 1.0], [2.0, 7.0]], [[3.0, 0.0], [5.0, 4.0]]]],
        &Device::Cpu,
    )
    .unwrap();
    let y = cnn::max_pool2(x.as_tensor()).unwrap();
    assert_eq!(y.dims(), &[1, 1, 1, 2]);
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![5.0, 7.0]
    );
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(gx, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn initialisation_and_dropout_are_seeded() {
    let cfg = CnnConfig::tiny(8, 5);
    let x = randn(5, &[4, 1, 8, 8]);
    let run = |seed: u64| {
        let (_, m) = Cnn::init(&cfg, seed, &Device::Cpu).unwrap();
        let rng = RefCell::new(equirun::output::rng_for(9, "drop"));
        let train = m.logits(&x, Some(&rng)).unwrap();
        let eval = m.logits(&x, None).unwrap();
        (train, eval)
    };
    let (a_train, a_eval) = run(1);
    let (b_train, b_eval) = run(1);
    let (c_train, _) = run(2);
    assert_eq!(max_abs_diff(&a_train, &b_train), 0.0);
    assert_eq!(max_abs_diff(&a_eval, &b_eval), 0.0);
    assert!(
        max_abs_diff(&a_train, &a_eval) > 1e-4,
        "dropout had no effect"
    );
    assert!(max_abs_diff(&a_train, &c_train) > 1e-4);
    assert_eq!(
        cfg.n_params(),
        4 * 9 + 4 + 6 * 4 * 9 + 6 + 12 * 24 + 12 + 5 * 12 + 5
    );
    assert_eq!(CnnConfig::fashion_mnist().n_params(), 105_866);
}

#[test]
fn checkpoints_round_trip_and_reject_other_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CnnConfig::tiny(8, 5);
    let (vm, m) = Cnn::init(&cfg, 1, &Device::Cpu).unwrap();
    let p = dir.path().join("a.safetensors");
    cnn::save(&vm, &p).unwrap();
    let (vm2, m2) = Cnn::init(&cfg, 2, &Device::Cpu).unwrap();
    cnn::load_into(&cfg, &vm2, &p).unwrap();
    let x = randn(3, &[2, 1, 8, 8]);
    assert_eq!(
        max_abs_diff(&m.logits(&x, None).unwrap(), &m2.logits(&x, None).unwrap()),
        0.0
    );
    let other = CnnConfig::tiny(12, 5);
    let (vm3, _) = Cnn::init(&other, 1, &Device::Cpu).unwrap();
    let err = cnn::load_into(&other, &vm3, &p).unwrap_err().to_string();
    assert!(err.contains("fc1.weight") && err.contains("shape"), "{err}");
}

// ---------- CLI ----------

use equirun::testing::write_tiny_fashion;

fn equirun(args: &[&str]) -> Output {
    equirun::testing::run_equirun(env!("CARGO_BIN_EXE_equirun"), args)
}

fn ok(o: &Output) {
    equirun::testing::assert_success(o)
}

fn tiny_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut a = equirun::testing::tiny_cnn_args(data, out);
    a.extend(["--lambda-rounds", "1", "--lambda-iters", "2"]);
    a
}

fn jsons(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().map(|e| e == "json").unwrap_or(false))
        .collect();
    v.sort();
    v
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn cnn_cli_end_to_end_is_deterministic_invariant_and_resumable() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("fm");
    write_tiny_fashion(&data, 84, 30);
    let (d, o1, o2) = (
        data.to_str().unwrap().to_string(),
        root.path().join("r1").to_str().unwrap().to_string(),
        root.path().join("r2").to_str().unwrap().to_string(),
    );
    let methods = "vanilla,equitune,equizero,lambda-equitune,multi-equitune";
    let mut a = tiny_args(&d, &o1);
    a.extend([
        "--group",
        "rot90xflip",
        "--method",
        methods,
        "--seeds",
        "0,1",
        "--run-name",
        "t",
    ]);
    let out = equirun(&a);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| lambda-equitune | rot90xflip |"),
        "{stdout}"
    );
    let run_dir = Path::new(&o1).join("cnn").join("t");
    let files = jsons(&run_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(run_dir.join("table.md").is_file());
    let r = read(&files[0]);
    assert_eq!(r["experiment"], "cnn");
    assert_eq!(r["config"]["group"]["order"], 8);
    let m = &r["metrics"];
    assert!(m["pretrained"]["test_upright_accuracy"].is_number());
    for name in methods.split(',') {
        let zs = &m["zero_shot"][name];
        let ft = &m["finetuned"][name];
        for t in ["upright", "rot90xflip"] {
            assert!(zs[t].is_number(), "{name} zero-shot {t}: {zs}");
            assert!(ft["test"][t].is_number(), "{name} finetuned {t}: {ft}");
        }
        // curves: round 0 plus one point per round
        assert_eq!(ft["curve"].as_array().unwrap().len(), 3, "{name}");
        assert!(Path::new(ft["checkpoint"].as_str().unwrap()).is_file());
        if name != "vanilla" {
            // exactly invariant wrappers: the corruption cannot change a prediction
            assert_eq!(zs["upright"], zs["rot90xflip"], "{name} zero-shot");
            assert_eq!(
                ft["test"]["upright"], ft["test"]["rot90xflip"],
                "{name} finetuned"
            );
        }
    }
    assert_eq!(r["cost"]["forward_passes_per_input"]["equitune"], 8);
    assert_eq!(r["cost"]["forward_passes_per_input"]["multi-equitune"], 6);
    assert_eq!(r["cost"]["forward_passes_per_input"]["lambda-equitune"], 16);
    let lp = &m["finetuned"]["lambda-equitune"]["lambda_phase"];
    assert_eq!(lp["curve"].as_array().unwrap().len(), 2);
    assert!(Path::new(lp["lambda_net_checkpoint"].as_str().unwrap()).is_file());

    // rerun: skipped (same config)
    let again = equirun(&a);
    ok(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("skip:"));

    // same seed in another results folder: the same metrics bit for bit (paths and times aside)
    let mut b = tiny_args(&d, &o2);
    b.extend([
        "--group",
        "rot90xflip",
        "--method",
        methods,
        "--seeds",
        "1",
        "--run-name",
        "t",
    ]);
    ok(&equirun(&b));
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        fn walk(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    m.retain(|k, _| {
                        !k.contains("seconds")
                            && !k.contains("checkpoint")
                            && !k.contains("per_second")
                    });
                    m.values_mut().for_each(walk);
                }
                Value::Array(a) => a.iter_mut().for_each(walk),
                _ => {}
            }
        }
        walk(&mut v);
        v
    };
    let r1 = read(&files[1]);
    let r2 = read(&jsons(&Path::new(&o2).join("cnn").join("t"))[0]);
    assert_eq!(strip(&r1["metrics"]), strip(&r2["metrics"]));

    // a different method list reuses the cached pretrained CNN
    let mut c = tiny_args(&d, &o1);
    c.extend(["--group", "rot90", "--method", "equitune", "--seeds", "0"]);
    let out = equirun(&c);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pretrained CNN from"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cnn_cli_errors_are_clear() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("nothing");
    let out = root.path().join("r");
    let o = equirun(&[
        "cnn",
        "--data-dir",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dataset-fashion-mnist") && err.contains("train-images"),
        "{err}"
    );

    let data = root.path().join("fm");
    write_tiny_fashion(&data, 30, 10);
    let d = data.to_str().unwrap();
    let o_s = out.to_str().unwrap();
    for (extra, needle) in [
        (vec!["--val-size", "30"], "--val-size"),
        (
            vec!["--val-size", "5", "--method", "equitune,bogus"],
            "unknown method 'bogus'",
        ),
        (
            vec!["--val-size", "5", "--group", "rot45"],
            "unknown image group",
        ),
        (vec!["--val-size", "5", "--lr=-1"], "learning rate"),
    ] {
        let mut a = vec!["cnn", "--data-dir", d, "--out", o_s];
        a.extend(extra);
        let o = equirun(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{a:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // nothing half-written
    assert!(!out.join("cnn").exists() || jsons(&out.join("cnn")).is_empty());
}

#[test]
fn cnn_bench_reports_throughput() {
    let o = equirun(&[
        "cnn",
        "bench",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch-size",
        "8",
    ]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_params"], 105_866);
    assert!(v["images_per_second"].as_f64().unwrap() > 0.0);
}
