//! λ-equitune and finetuning through the wrappers: exact invariance / equivariance for every
//! element of rot90xflip (both λ forms), the equitune and equizero special cases, the
//! straight-through estimator's value and gradient, and loss decrease on a tiny task.

use candle_core::{Device, Tensor, Var};
use equirun::equi::lambda::{
    lambda_combine, log_softplus, orbit, untransform, weighted_orbit_mean, Head, LambdaEquitune,
    LambdaForm, LambdaNet,
};
use equirun::equi::proxy::ProxyKind;
use equirun::equi::{Evaluator, ImageOutput, ImageSymmetry, Method, Symmetry, ZeroSelect};
use equirun::groups::image::image_group;
use equirun::models::cnn::{self, Cnn, CnnConfig};
use equirun::testing::{max_abs, max_abs_diff, randn};
use equirun::train::{
    classification_loss, run_phase, straight_through, train_output, OptimConfig, OptimKind,
    Schedule, Select,
};
use std::cell::RefCell;

const TOL: f32 = 1e-5;

fn d4() -> ImageSymmetry {
    ImageSymmetry::new(
        image_group("rot90xflip").unwrap(),
        ImageOutput::Invariant,
        3,
    )
}

/// A random tiny CNN on 8×8 images with 5 classes (features 12-d).
fn tiny_cnn(seed: u64) -> (candle_nn::VarMap, Cnn) {
    Cnn::init(&CnnConfig::tiny(8, 5), seed, &Device::Cpu).unwrap()
}

/// A λ-net with weights scaled up so that λ varies strongly between copies.
fn spread_lambda_net(in_dim: usize, seed: u64) -> LambdaNet {
    let net = LambdaNet::official(in_dim, seed, &Device::Cpu).unwrap();
    for v in net.vars() {
        v.set(&(v.as_tensor() * 4.0).unwrap()).unwrap();
    }
    net
}

fn lambda_output(le: &LambdaEquitune, model: &Cnn, feat: &Cnn, x: &Tensor) -> Tensor {
    let lg = |z: &Tensor| model.logits(z, None);
    let ft = |z: &Tensor| Ok(feat.forward(z, None)?.0);
    le.forward(&lg, &ft, x, None).unwrap()
}

#[test]
fn lambda_equitune_is_invariant_for_every_element_of_d4_in_both_forms() {
    let sym = d4();
    let (_, model) = tiny_cnn(1);
    let (_, feat) = tiny_cnn(2); // the frozen feature copy may be any network
    let net = spread_lambda_net(12, 5);
    let x = randn(7, &[4, 1, 8, 8]);
    // λ really varies over the orbit, so the test is not the equitune special case
    let lam = net
        .forward(
            &feat.forward(&orbit(&sym, &x).unwrap(), None).unwrap().0,
            None,
        )
        .unwrap();
    let lam_spread = max_abs(&lam.broadcast_sub(&lam.mean_all().unwrap()).unwrap());
    assert!(lam_spread > 0.1, "λ is nearly constant ({lam_spread})");
    let (_, vanilla_model) = tiny_cnn(1);
    for form in [LambdaForm::Paper, LambdaForm::Official] {
        for head in [Head::Logits, Head::Softmax] {
            let le = LambdaEquitune {
                sym: &sym,
                net: &net,
                form,
                head,
            };
            let base = lambda_output(&le, &model, &feat, &x);
            assert_eq!(base.dims(), &[4, 5]);
            for g in 0..sym.order() {
                let gx = sym.act_input(g, &x).unwrap();
                let e = max_abs_diff(&lambda_output(&le, &model, &feat, &gx), &base);
                assert!(
                    e <= TOL,
                    "{form:?} {head:?}: invariance error {e} for element {}",
                    sym.element_name(g)
                );
            }
            // and it is not trivially invariant: the backbone alone is not
            let v0 = head
                .apply(&vanilla_model.logits(&x, None).unwrap())
                .unwrap();
            let gx = sym.act_input(1, &x).unwrap();
            let v1 = head
                .apply(&vanilla_model.logits(&gx, None).unwrap())
                .unwrap();
            assert!(max_abs_diff(&v0, &v1) > 1e-3);
        }
    }
}

/// A dense model: outputs `[B, 2, H, W]` that transform like the input (ρ_Y = the image action).
#[test]
fn lambda_equitune_is_equivariant_for_image_outputs() {
    let sym = ImageSymmetry::new(image_group("rot90xflip").unwrap(), ImageOutput::Image, 3);
    let w = randn(11, &[2, 1, 3, 3]);
    // a non-equivariant dense map: a convolution plus a position-dependent bias
    let pos = randn(12, &[1, 2, 6, 6]);
    let model = |x: &Tensor| -> anyhow::Result<Tensor> {
        Ok(x.conv2d(&w, 1, 1, 1, 1)?.broadcast_add(&pos)?)
    };
    let proj = randn(13, &[36, 6]);
    let feats =
        |x: &Tensor| -> anyhow::Result<Tensor> { Ok(x.flatten_from(1)?.matmul(&proj)?.tanh()?) };
    let net = spread_lambda_net(6, 9);
    let x = randn(14, &[3, 1, 6, 6]);
    for form in [LambdaForm::Paper, LambdaForm::Official] {
        let le = LambdaEquitune {
            sym: &sym,
            net: &net,
            form,
            head: Head::Logits,
        };
        let base = le.forward(&model, &feats, &x, None).unwrap();
        for g in 0..sym.order() {
            let out = le
                .forward(&model, &feats, &sym.act_input(g, &x).unwrap(), None)
                .unwrap();
            let want = sym.act_output(g, &base).unwrap();
            let e = max_abs_diff(&out, &want);
            assert!(e <= TOL, "{form:?}: equivariance error {e} for element {g}");
        }
    }
}

fn equitune_and_equizero(
    sym: &dyn Symmetry,
    model: &Cnn,
    head: Head,
    x: &Tensor,
) -> (Tensor, Tensor) {
    let proxy = |y: &Tensor| ProxyKind::Entropy.eval(y, head);
    let ev = Evaluator {
        sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    let f = |z: &Tensor| head.apply(&model.logits(z, None)?);
    let (mut outs, _) = ev
        .run(&[Method::Equitune, Method::Equizero], &f, x)
        .unwrap();
    let z = outs.pop().unwrap();
    (outs.pop().unwrap(), z)
}

#[test]
fn constant_lambda_is_equitune_in_both_forms() {
    let sym = d4();
    let (_, model) = tiny_cnn(21);
    let (_, feat) = tiny_cnn(22);
    let x = randn(23, &[5, 1, 8, 8]);
    for head in [Head::Logits, Head::Softmax] {
        let (eq, _) = equitune_and_equizero(&sym, &model, head, &x);
        let net = spread_lambda_net(12, 24);
        // paper form: any constant weight gives the plain mean
        net.set_constant(2.7).unwrap();
        let le = LambdaEquitune {
            sym: &sym,
            net: &net,
            form: LambdaForm::Paper,
            head,
        };
        let e = max_abs_diff(&lambda_output(&le, &model, &feat, &x), &eq);
        assert!(
            e <= 1e-6,
            "{head:?}: paper form with constant λ vs equitune: {e}"
        );
        // official form: λ = 1 leaves the copies unscaled
        net.set_constant(1.0).unwrap();
        let le = LambdaEquitune {
            form: LambdaForm::Official,
            ..le
        };
        let e = max_abs_diff(&lambda_output(&le, &model, &feat, &x), &eq);
        assert!(
            e <= 1e-6,
            "{head:?}: official form with λ = 1 vs equitune: {e}"
        );
    }
}

#[test]
fn indicator_of_the_argmin_is_equizero_and_uniform_weights_are_equitune() {
    let sym = d4();
    let (_, model) = tiny_cnn(31);
    let x = randn(32, &[6, 1, 8, 8]);
    for head in [Head::Logits, Head::Softmax] {
        let (eq, zero) = equitune_and_equizero(&sym, &model, head, &x);
        let y = head
            .apply(&model.logits(&orbit(&sym, &x).unwrap(), None).unwrap())
            .unwrap();
        let us = untransform(&sym, &y).unwrap();
        // indicator of argmin_g of the proxy
        let losses: Vec<Vec<f32>> = us
            .iter()
            .map(|u| ProxyKind::Entropy.eval(u, head).unwrap().to_vec1().unwrap())
            .collect();
        let (k, b) = (us.len(), 6);
        let mut w = vec![0f32; k * b];
        for j in 0..b {
            let best = (0..k)
                .min_by(|&p, &q| losses[p][j].partial_cmp(&losses[q][j]).unwrap())
                .unwrap();
            w[best * b + j] = 1.0;
        }
        let w = Tensor::from_vec(w, (k, b), &Device::Cpu).unwrap();
        let e = max_abs_diff(&weighted_orbit_mean(&us, &w).unwrap(), &zero);
        assert!(e <= 1e-6, "{head:?}: indicator weights vs equizero: {e}");
        let ones = Tensor::ones((k, b), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = max_abs_diff(&weighted_orbit_mean(&us, &ones).unwrap(), &eq);
        assert!(e <= 1e-6, "{head:?}: uniform weights vs equitune: {e}");
        // and equizero differs from equitune here (the indicator case is not vacuous)
        assert!(max_abs_diff(&eq, &zero) > 1e-4);
    }
}

#[test]
fn paper_form_weights_are_softplus_normalised_over_the_orbit() {
    let sym = ImageSymmetry::new(image_group("rot90").unwrap(), ImageOutput::Invariant, 0);
    // identity-element outputs: make per-copy outputs distinguishable constants
    let b = 2;
    let z = Tensor::from_vec(
        (0..4 * b * 3).map(|i| i as f32).collect::<Vec<_>>(),
        (4 * b, 3),
        &Device::Cpu,
    )
    .unwrap();
    let lam_v = vec![0.3f32, -2.0, 5.0, 1.0, -40.0, 0.0, 2.0, -1.0];
    let lam = Tensor::new(lam_v.as_slice(), &Device::Cpu).unwrap();
    let out = lambda_combine(&sym, &z, &lam, LambdaForm::Paper, Head::Logits).unwrap();
    let zv: Vec<Vec<f32>> = z.to_vec2().unwrap();
    let sp = |x: f32| (x as f64).exp().ln_1p();
    for j in 0..b {
        let w: Vec<f64> = (0..4).map(|g| sp(lam_v[g * b + j])).collect();
        let s: f64 = w.iter().sum();
        for c in 0..3 {
            let want: f64 = (0..4).map(|g| w[g] * zv[g * b + j][c] as f64).sum::<f64>() / s;
            let got = out
                .get(j)
                .unwrap()
                .get(c)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            assert!(
                (got - want).abs() < 1e-4,
                "row {j} class {c}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn log_softplus_is_exact_and_has_finite_gradients() {
    let xs = [-200f32, -30.0, -15.5, -3.0, 0.0, 2.0, 40.0];
    let v = Var::new(&xs[..], &Device::Cpu).unwrap();
    let y = log_softplus(v.as_tensor()).unwrap();
    for (x, got) in xs.iter().zip(y.to_vec1::<f32>().unwrap()) {
        let want = ((*x as f64).exp().ln_1p()).ln();
        assert!(
            (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
            "log softplus({x}) = {got}, want {want}"
        );
    }
    let g = y.sum_all().unwrap().backward().unwrap();
    let gv = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert!(gv.iter().all(|x| x.is_finite()), "gradients {gv:?}");
}

/// Gradients of `Σ out ⊙ v` with respect to every CNN parameter.
fn grads_of(vars: &[Var], out: &Tensor, v: &Tensor) -> Vec<Tensor> {
    let g = (out * v).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .enumerate()
        .map(|(i, var)| {
            g.get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for parameter {i}"))
                .clone()
        })
        .collect()
}

#[test]
fn straight_through_has_the_equizero_value_and_the_equitune_gradient() {
    let cfg = CnnConfig::tiny(8, 5);
    for (spec, zero, avg) in [
        ("rot90xflip", Method::Equizero, Method::Equitune),
        ("rot90xflip", Method::MultiEquizero, Method::MultiEquitune),
    ] {
        let sym = ImageSymmetry::new(image_group(spec).unwrap(), ImageOutput::Invariant, 4);
        let (vm, model) = Cnn::init(&cfg, 41, &Device::Cpu).unwrap();
        let vars = cnn::vars(&cfg, &vm).unwrap();
        let x = randn(42, &[4, 1, 8, 8]);
        let v = randn(43, &[4, 5]);
        let head = Head::Softmax;
        let proxy = |y: &Tensor| ProxyKind::MaxProb.eval(y, head);
        let f = |z: &Tensor| head.apply(&model.logits(z, None)?);
        let st = train_output(zero, &sym, &proxy, &f, &x).unwrap();
        let ev = Evaluator {
            sym: &sym,
            proxy: &proxy,
            select: ZeroSelect::WholeCopy,
        };
        let (outs, _) = ev.run(&[avg, zero], &f, &x).unwrap();
        // forward value = the equizero output
        assert!(max_abs_diff(&st, &outs[1]) <= 1e-6, "{}", zero.name());
        // gradient = the equitune gradient, and different from the gradient through Z
        let g_st = grads_of(&vars, &st, &v);
        let g_eq = grads_of(&vars, &outs[0], &v);
        let g_z = grads_of(&vars, &outs[1], &v);
        let mut diff_z = 0f32;
        for ((a, b), c) in g_st.iter().zip(&g_eq).zip(&g_z) {
            assert!(
                max_abs_diff(a, b) <= 1e-6,
                "{}: ST gradient != equitune gradient",
                zero.name()
            );
            diff_z = diff_z.max(max_abs_diff(b, c));
        }
        assert!(
            diff_z > 1e-4,
            "{}: the check is vacuous (gradients of E and Z agree)",
            zero.name()
        );
    }
    // the estimator itself
    let e = randn(44, &[3, 4]);
    let z = randn(45, &[3, 4]);
    assert!(max_abs_diff(&straight_through(&e, &z).unwrap(), &z) <= 1e-6);
}

/// Two classes told apart by where a bright bar is: near the top-left or centre-ish, at any
/// rotation/flip (the task is D4-invariant).
fn synthetic(n: usize, seed: u64) -> (Tensor, Tensor) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let sym = d4();
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for i in 0..n {
        let class = (i % 2) as u32;
        let mut img = vec![0f32; 64];
        for v in img.iter_mut() {
            *v = rng.random_range(-0.2..0.2);
        }
        let row = if class == 0 { 0 } else { 3 };
        for c in 1..7 {
            img[row * 8 + c] += 2.0;
        }
        let t = Tensor::from_vec(img, (1, 1, 8, 8), &Device::Cpu).unwrap();
        let g = rng.random_range(0..sym.order());
        xs.push(sym.act_input(g, &t).unwrap());
        ys.push(class);
    }
    (
        Tensor::cat(&xs, 0).unwrap(),
        Tensor::from_vec(ys, n, &Device::Cpu).unwrap(),
    )
}

#[test]
fn finetuning_through_each_wrapper_decreases_the_training_loss() {
    let cfg = CnnConfig {
        classes: 2,
        ..CnnConfig::tiny(8, 2)
    };
    let sym = ImageSymmetry::new(image_group("rot90").unwrap(), ImageOutput::Invariant, 1);
    let (x, y) = synthetic(24, 51);
    let schedule = Schedule {
        rounds: 1,
        iters_per_round: 40,
        optim: OptimConfig {
            kind: OptimKind::Adamw,
            lr: 1e-2,
            momentum: 0.0,
            weight_decay: 0.0,
        },
    };
    for (m, head) in [
        (Method::Vanilla, Head::Logits),
        (Method::Equitune, Head::Logits),
        (Method::Equizero, Head::Logits),
        (Method::Equitune, Head::Softmax),
        (Method::Equizero, Head::Softmax),
    ] {
        let proxy = |t: &Tensor| ProxyKind::Entropy.eval(t, head);
        let (vm, model) = Cnn::init(&cfg, 52, &Device::Cpu).unwrap();
        let drop = RefCell::new(equirun::output::rng_for(0, "test-dropout"));
        let loss_now = || {
            let f = |z: &Tensor| head.apply(&model.logits(z, None)?);
            let o = train_output(m, &sym, &proxy, &f, &x).unwrap();
            classification_loss(&o, &y, head)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let before = loss_now();
        run_phase(
            "test",
            &schedule,
            cnn::vars(&cfg, &vm).unwrap(),
            Select::Last,
            |_| {
                let f = |z: &Tensor| head.apply(&model.logits(z, Some(&drop))?);
                let o = train_output(m, &sym, &proxy, &f, &x)?;
                classification_loss(&o, &y, head)
            },
            || Ok(0.0),
        )
        .unwrap();
        let after = loss_now();
        assert!(
            after < 0.5 * before,
            "{} {head:?}: training loss {before} -> {after}",
            m.name()
        );
    }
    let head = Head::Logits;
    // λ-equitune: phase 1 (λ-net only) then phase 2 (backbone, λ frozen)
    for form in [LambdaForm::Paper, LambdaForm::Official] {
        let (vm, model) = Cnn::init(&cfg, 53, &Device::Cpu).unwrap();
        let frozen = model.frozen();
        let net = LambdaNet::official(cfg.hidden, 54, &Device::Cpu).unwrap();
        let le = LambdaEquitune {
            sym: &sym,
            net: &net,
            form,
            head,
        };
        let xs = orbit(&sym, &x).unwrap();
        let feats = frozen.forward(&xs, None).unwrap().0;
        let loss_now = || {
            let z = model.logits(&xs, None).unwrap();
            classification_loss(&le.combine(&z, &feats, None).unwrap(), &y, head)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let l0 = loss_now();
        let ldrop = RefCell::new(equirun::output::rng_for(0, "test-λ-dropout"));
        let mut sched1 = schedule;
        sched1.optim.lr = 3e-3;
        run_phase(
            "λ",
            &sched1,
            net.vars(),
            Select::Last,
            |_| {
                let z = frozen.logits(&xs, None)?;
                classification_loss(&le.combine(&z, &feats, Some(&ldrop))?, &y, head)
            },
            || Ok(0.0),
        )
        .unwrap();
        let l1 = loss_now();
        assert!(l1 < l0, "{form:?}: λ phase {l0} -> {l1}");
        let fixed_lambda: Vec<Tensor> = net
            .vars()
            .iter()
            .map(|v| v.as_tensor().copy().unwrap())
            .collect();
        run_phase(
            "backbone",
            &schedule,
            cnn::vars(&cfg, &vm).unwrap(),
            Select::Last,
            |_| {
                let z = model.logits(&xs, None)?;
                classification_loss(&le.combine(&z, &feats, None)?, &y, head)
            },
            || Ok(0.0),
        )
        .unwrap();
        let l2 = loss_now();
        assert!(l2 < 0.5 * l1, "{form:?}: backbone phase {l1} -> {l2}");
        // λ stayed frozen
        for (v, t) in net.vars().iter().zip(&fixed_lambda) {
            assert_eq!(max_abs_diff(v.as_tensor(), t), 0.0);
        }
    }
}

#[test]
fn best_val_selection_restores_the_best_round() {
    let v = Var::new(&[0f32], &Device::Cpu).unwrap();
    let schedule = Schedule {
        rounds: 3,
        iters_per_round: 1,
        optim: OptimConfig {
            kind: OptimKind::Sgd,
            lr: 1.0,
            momentum: 0.0,
            weight_decay: 0.0,
        },
    };
    // loss = −v: each step adds 1 to v; validation peaks after round 2
    let vals = RefCell::new(vec![10.0, 30.0, 50.0, 20.0].into_iter());
    let out = run_phase(
        "t",
        &schedule,
        vec![v.clone()],
        Select::BestVal,
        |_| Ok(v.as_tensor().neg()?.sum_all()?),
        || Ok(vals.borrow_mut().next().unwrap()),
    )
    .unwrap();
    assert_eq!(out.best_round, 2);
    assert_eq!(out.curve.len(), 4);
    assert_eq!(v.as_tensor().to_vec1::<f32>().unwrap(), vec![2.0]);
}
