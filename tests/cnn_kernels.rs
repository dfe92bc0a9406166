//! The fused CPU training ops of the CNN (src/kernels/conv.rs through `cnn::conv_block` and
//! `cnn::linear`) against the same layers built from candle's own ops — values and the
//! gradients of every input, on odd batch sizes that leave a partial task — and a CNN training
//! run that gives the same JSON and checkpoint bytes at 1 and 2 threads.

use candle_core::{Tensor, Var};
use equirun::models::cnn;
use equirun::testing::{max_abs, max_abs_diff, randn};
use serde_json::Value;
use std::path::Path;

/// max |a − b| / max(1, max |b|)
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b) / max_abs(b).max(1.0)
}

/// relu(max-pool 2×2(conv 3×3 pad 1(x) + b)) with candle's NCHW conv2d and reductions; NHWC
/// in, NHWC (or NCHW) out.
fn conv_block_ref(x: &Tensor, w: &Tensor, b: &Tensor, nchw: bool) -> Tensor {
    let co = w.dim(0).unwrap();
    let y = x
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap()
        .conv2d(w, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, co, 1, 1)).unwrap())
        .unwrap();
    let (n, c, h, wd) = y.dims4().unwrap();
    let p = y
        .reshape((n, c, h / 2, 2, wd / 2, 2))
        .unwrap()
        .max(5)
        .unwrap()
        .max(3)
        .unwrap()
        .relu()
        .unwrap();
    if nchw {
        p
    } else {
        p.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
    }
}

/// Gradients of Σ out·v with respect to `vars`.
fn grads(out: &Tensor, v: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
    let g = (out * v).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|x| g.get(x.as_tensor()).expect("gradient missing").clone())
        .collect()
}

#[test]
fn fused_conv_block_matches_candle_ops_in_values_and_gradients() {
    let mut seed = 100;
    // (batch, side, in channels, out channels): odd batches leave a partial task of images
    for (n, s, ci, co) in [
        (1, 4, 1, 3),
        (3, 6, 2, 5),
        (5, 8, 1, 16),
        (7, 14, 16, 32),
        (9, 6, 3, 4),
    ] {
        for nchw in [false, true] {
            seed += 10;
            let x = Var::from_tensor(&randn(seed, &[n, s, s, ci])).unwrap();
            let w = Var::from_tensor(&randn(seed + 1, &[co, ci, 3, 3])).unwrap();
            let b = Var::from_tensor(&randn(seed + 2, &[co])).unwrap();
            let ours = cnn::conv_block(x.as_tensor(), w.as_tensor(), b.as_tensor(), nchw).unwrap();
            let refr = conv_block_ref(x.as_tensor(), w.as_tensor(), b.as_tensor(), nchw);
            assert_eq!(ours.dims(), refr.dims());
            let e = rel(&ours, &refr);
            assert!(
                e <= 1e-5,
                "n {n} s {s} {ci}->{co} nchw {nchw}: values differ by {e}"
            );
            let v = randn(seed + 3, ours.dims());
            let g1 = grads(&ours, &v, &[&x, &w, &b]);
            let g2 = grads(&refr, &v, &[&x, &w, &b]);
            for (name, a, r) in [
                ("x", &g1[0], &g2[0]),
                ("w", &g1[1], &g2[1]),
                ("b", &g1[2], &g2[2]),
            ] {
                let e = rel(a, r);
                assert!(
                    e <= 1e-5,
                    "n {n} s {s} {ci}->{co} nchw {nchw}: gradient of {name} differs by {e}"
                );
            }
        }
    }
}

#[test]
fn fused_conv_block_skips_the_input_gradient_of_a_constant_input() {
    let x = randn(7, &[3, 6, 6, 2]); // not a variable: no gradient asked for it
    let w = Var::from_tensor(&randn(8, &[4, 2, 3, 3])).unwrap();
    let b = Var::from_tensor(&randn(9, &[4])).unwrap();
    let y = cnn::conv_block(&x, w.as_tensor(), b.as_tensor(), false).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none());
    let r = conv_block_ref(&x, w.as_tensor(), b.as_tensor(), false);
    let gr = r.sum_all().unwrap().backward().unwrap();
    assert!(
        rel(
            g.get(w.as_tensor()).unwrap(),
            gr.get(w.as_tensor()).unwrap()
        ) <= 1e-5
    );
    // a frozen (detached) block keeps no state and still computes the same values
    let f = cnn::conv_block(&x, &w.as_tensor().detach(), &b.as_tensor().detach(), false).unwrap();
    assert_eq!(max_abs_diff(&f, &y), 0.0);
}

#[test]
fn fused_linear_matches_candle_ops_in_values_and_gradients() {
    // batches around the 16-row tasks; 300 inputs span two 256-column weight-gradient tasks
    for (k, (n, din, dout)) in [(1, 5, 3), (3, 300, 7), (17, 40, 64), (33, 300, 10)]
        .into_iter()
        .enumerate()
    {
        for relu in [false, true] {
            let seed = 200 + 10 * k as u64 + relu as u64;
            let x = Var::from_tensor(&randn(seed, &[n, din])).unwrap();
            let w = Var::from_tensor(&randn(seed + 1, &[dout, din])).unwrap();
            let b = Var::from_tensor(&randn(seed + 2, &[dout])).unwrap();
            let ours = cnn::linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), relu).unwrap();
            let mut refr = x
                .as_tensor()
                .matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            if relu {
                refr = refr.relu().unwrap();
            }
            let e = rel(&ours, &refr);
            assert!(
                e <= 1e-5,
                "{n}x{din}->{dout} relu {relu}: values differ by {e}"
            );
            let v = randn(seed + 3, ours.dims());
            let g1 = grads(&ours, &v, &[&x, &w, &b]);
            let g2 = grads(&refr, &v, &[&x, &w, &b]);
            for (name, a, r) in [
                ("x", &g1[0], &g2[0]),
                ("w", &g1[1], &g2[1]),
                ("b", &g1[2], &g2[2]),
            ] {
                let e = rel(a, r);
                assert!(
                    e <= 1e-5,
                    "{n}x{din}->{dout} relu {relu}: gradient of {name} differs by {e}"
                );
            }
        }
    }
}

#[test]
fn fused_ops_handle_an_empty_batch() {
    let x = Var::from_tensor(&randn(1, &[0, 6, 6, 2])).unwrap();
    let w = Var::from_tensor(&randn(2, &[4, 2, 3, 3])).unwrap();
    let b = Var::from_tensor(&randn(3, &[4])).unwrap();
    let y = cnn::conv_block(x.as_tensor(), w.as_tensor(), b.as_tensor(), true).unwrap();
    assert_eq!(y.dims(), [0, 4, 3, 3]);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(max_abs(g.get(w.as_tensor()).unwrap()), 0.0);
    let x = Var::from_tensor(&randn(4, &[0, 5])).unwrap();
    let w = Var::from_tensor(&randn(5, &[3, 5])).unwrap();
    let b = Var::from_tensor(&randn(6, &[3])).unwrap();
    let y = cnn::linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), true).unwrap();
    assert_eq!(y.dims(), [0, 3]);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(w.as_tensor()).unwrap().dims(), [3, 5]);
    assert_eq!(max_abs(g.get(b.as_tensor()).unwrap()), 0.0);
}

#[test]
fn fused_ops_reject_mismatched_shapes() {
    let x = randn(1, &[2, 6, 6, 3]);
    let e = cnn::conv_block(&x, &randn(2, &[4, 2, 3, 3]), &randn(3, &[4]), false).unwrap_err();
    assert!(e.to_string().contains("3 input channels"), "{e}");
    let odd = randn(1, &[2, 5, 5, 3]);
    let e = cnn::conv_block(&odd, &randn(2, &[4, 3, 3, 3]), &randn(3, &[4]), false).unwrap_err();
    assert!(e.to_string().contains("even sides"), "{e}");
    let e = cnn::linear(
        &randn(1, &[2, 5]),
        &randn(2, &[3, 4]),
        &randn(3, &[3]),
        true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("5 inputs"), "{e}");
}

/// `equirun cnn` (pretraining and finetuning of every trained method) with RAYON_NUM_THREADS.
fn run_cnn(data: &str, out: &str, threads: &str) {
    let mut a = equirun::testing::tiny_cnn_args(data, out);
    a.extend([
        "--group",
        "rot90",
        "--method",
        "vanilla,equitune,equizero,lambda-equitune",
        "--lambda-rounds",
        "1",
        "--lambda-iters",
        "2",
        "--seeds",
        "3",
        "--run-name",
        "t",
    ]);
    // an odd batch: partial tasks of images and rows
    let i = a.iter().position(|x| *x == "--batch-size").unwrap();
    a[i + 1] = "5";
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(&a)
        .env("EQUIRUN_NO_PROGRESS", "1")
        .env("RAYON_NUM_THREADS", threads)
        .env_remove("EQUIRUN_DATA")
        .output()
        .unwrap();
    equirun::testing::assert_success(&o);
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| {
                !k.contains("seconds") && !k.contains("checkpoint") && !k.contains("per_second")
            });
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// Every file under `dir` (relative path → bytes), sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cnn_training_is_identical_at_one_and_two_threads() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("fm");
    equirun::testing::write_tiny_fashion(&data, 84, 30);
    let d = data.to_str().unwrap();
    let (o1, o2) = (root.path().join("t1"), root.path().join("t2"));
    run_cnn(d, o1.to_str().unwrap(), "1");
    run_cnn(d, o2.to_str().unwrap(), "2");
    let (f1, f2) = (files(&o1), files(&o2));
    assert_eq!(
        f1.iter().map(|f| &f.0).collect::<Vec<_>>(),
        f2.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let mut checked = 0;
    for ((name, a), (_, b)) in f1.iter().zip(&f2) {
        if name.ends_with(".safetensors") {
            assert!(a == b, "{name}: checkpoints differ between 1 and 2 threads");
            checked += 1;
        } else if name.ends_with(".json") && !name.ends_with("config.json") {
            let mut va: Value = serde_json::from_slice(a).unwrap();
            let mut vb: Value = serde_json::from_slice(b).unwrap();
            for v in [&mut va, &mut vb] {
                for key in ["cost", "started_at", "finished_at", "host", "environment"] {
                    v.as_object_mut().map(|m| m.remove(key));
                }
                strip(v);
            }
            assert_eq!(va, vb, "{name}: results differ between 1 and 2 threads");
            checked += 1;
        }
    }
    // the pretrained CNN, three finetuned CNNs, a λ-net and the JSONs at least
    assert!(
        checked >= 6,
        "only {checked} files compared: {:?}",
        f1.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
}
