//! Equivariance of every wrapper, for every group element, on random (non-equivariant) models.

use candle_core::{DType, Device, Module, Tensor};
use equirun::equi::{
    neg_max_confidence, Evaluator, ImageOutput, ImageSymmetry, Method, Symmetry, TokenSymmetry,
    ZeroSelect,
};
use equirun::groups::image::image_group;
use equirun::groups::perm::{cyclic_factor, TokenPerm};
use equirun::groups::FiniteGroup;
use equirun::models::clip::{tiny_clip, zero_shot_probs};
use equirun::testing::{max_abs_diff as max_abs, randn};
use std::cell::RefCell;

/// Max over g of |F(g·x) − ρ(g) F(x)| for each method.
fn errors(
    sym: &dyn Symmetry,
    methods: &[Method],
    model: &dyn equirun::equi::BatchModel,
    x: &Tensor,
    select: ZeroSelect,
) -> Vec<f32> {
    let proxy = neg_max_confidence;
    let ev = Evaluator {
        sym,
        proxy: &proxy,
        select,
    };
    let (base, _) = ev.run(methods, model, x).unwrap();
    let mut errs = vec![0f32; methods.len()];
    for g in 0..sym.order() {
        let (outs, _) = ev
            .run(methods, model, &sym.act_input(g, x).unwrap())
            .unwrap();
        for (i, (o, b)) in outs.iter().zip(&base).enumerate() {
            errs[i] = errs[i].max(max_abs(o, &sym.act_output(g, b).unwrap()));
        }
    }
    errs
}

#[test]
fn tiny_clip_wrappers_are_invariant_for_every_element() {
    let dev = Device::Cpu;
    let clip = tiny_clip(7, &dev).unwrap();
    let w = equirun::models::l2_normalize(&randn(1, &[10, 32])).unwrap();
    // a large scale makes the probabilities sharp, so a non-invariant model shows clearly
    let model = |x: &Tensor| -> anyhow::Result<Tensor> {
        zero_shot_probs(&clip.encode_images(x)?, &w, 20.0)
    };
    let x = randn(2, &[3, 3, 32, 32]);
    for spec in ["rot90", "flip", "rot90xflip"] {
        let sym = ImageSymmetry::new(image_group(spec).unwrap(), ImageOutput::Invariant, 11);
        for select in [ZeroSelect::WholeCopy, ZeroSelect::Elementwise] {
            let errs = errors(&sym, &Method::EVALUATOR, &model, &x, select);
            for (m, e) in Method::EVALUATOR.iter().zip(&errs) {
                if *m == Method::Vanilla {
                    assert!(
                        *e > 1e-3,
                        "{spec}: vanilla should NOT be invariant on a random model, error {e}"
                    );
                } else {
                    assert!(
                        *e <= 1e-5,
                        "{spec} {select:?}: {} invariance error {e}",
                        m.name()
                    );
                }
            }
        }
    }
}

#[test]
fn forward_pass_counts_are_measured() {
    // a model that records its batch sizes
    let calls = RefCell::new(Vec::new());
    let model = |x: &Tensor| -> anyhow::Result<Tensor> {
        calls.borrow_mut().push(x.dim(0)?);
        Ok(x.flatten_from(1)?.sum_keepdim(1)?)
    };
    let x = randn(3, &[5, 3, 8, 8]);
    let sym = ImageSymmetry::new(
        image_group("rot90xflip").unwrap(),
        ImageOutput::Invariant,
        0,
    );
    let proxy = neg_max_confidence;
    let ev = Evaluator {
        sym: &sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    for (m, passes) in [
        (Method::Vanilla, 1),
        (Method::Equitune, 8),
        (Method::Equizero, 8),
        (Method::MultiEquitune, 6),
        (Method::MultiEquizero, 6),
    ] {
        calls.borrow_mut().clear();
        assert_eq!(m.passes(&sym), passes);
        let (_, copies) = ev.run(&[m], &model, &x).unwrap();
        assert_eq!(copies, passes);
        assert_eq!(
            *calls.borrow(),
            vec![5 * passes],
            "{}: one batched call of {} copies",
            m.name(),
            passes
        );
    }
    // all five together share copies: 8 raw + 6 canonicalised = 14
    calls.borrow_mut().clear();
    let (_, copies) = ev.run(&Method::EVALUATOR, &model, &x).unwrap();
    assert_eq!(copies, 14);
    assert_eq!(*calls.borrow(), vec![5 * 14]);
}

#[test]
fn equitune_equivariant_image_output() {
    // a random 3x3 convolution is not rot/flip equivariant; its equitune average is
    let w = randn(5, &[2, 3, 3, 3]);
    let conv = candle_nn::Conv2d::new(
        w,
        None,
        candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
    );
    let model = |x: &Tensor| -> anyhow::Result<Tensor> { Ok(conv.forward(x)?) };
    let x = randn(6, &[2, 3, 9, 9]);
    let sym = ImageSymmetry::new(image_group("rot90xflip").unwrap(), ImageOutput::Image, 0);
    let errs = errors(
        &sym,
        &[Method::Vanilla, Method::Equitune],
        &model,
        &x,
        ZeroSelect::WholeCopy,
    );
    assert!(
        errs[0] > 1e-2,
        "vanilla conv should not be equivariant: {}",
        errs[0]
    );
    assert!(
        errs[1] <= 1e-5,
        "equitune image equivariance error {}",
        errs[1]
    );
    // multi-* needs commuting factors for equivariant outputs: a clear error, not a wrong answer
    let proxy = neg_max_confidence;
    let ev = Evaluator {
        sym: &sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    let err = format!(
        "{:#}",
        ev.run(&[Method::MultiEquitune], &model, &x).unwrap_err()
    );
    assert!(err.contains("commuting"), "{err}");
}

/// SCAN-like: three commuting swaps on input and output vocabularies; a random model from
/// token ids `[B, T]` to log-probs `[B, T, V]`.
#[test]
fn token_swaps_all_methods_equivariant() {
    let (n_in, n_out) = (9usize, 8usize);
    let swap = |a: u32, b: u32, oa: u32, ob: u32| {
        TokenPerm::from_cycles(n_in, n_out, &[vec![a, b]], &[vec![oa, ob]]).unwrap()
    };
    let factors = vec![
        cyclic_factor("verb", "jump<->run", swap(2, 3, 2, 3)).unwrap(),
        cyclic_factor("direction-rl", "left<->right", swap(4, 5, 4, 5)).unwrap(),
        cyclic_factor("direction-ud", "up<->down", swap(6, 7, 6, 7)).unwrap(),
    ];
    let group = FiniteGroup::product("verb,direction-rl,direction-ud", factors).unwrap();
    assert_eq!(group.order(), 8);
    let sym = TokenSymmetry::new(group, false, None);
    let emb = randn(8, &[n_in, 16]);
    let mix = randn(9, &[16, n_out]);
    // position-mixing: output at t depends on tokens t and t+1 (non-equivariant weights)
    let model = |ids: &Tensor| -> anyhow::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let e = emb
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, 16))?;
        let shifted = Tensor::cat(&[e.narrow(1, 1, t - 1)?, e.narrow(1, 0, 1)?], 1)?;
        let h = (e + (shifted * 0.5)?)?.tanh()?;
        let logits = h.broadcast_matmul(&mix)?;
        Ok(candle_nn::ops::log_softmax(&logits, 2)?)
    };
    let ids: Vec<u32> = (0..4 * 6).map(|i| ((i * 7 + 3) % n_in) as u32).collect();
    let x = Tensor::from_vec(ids, (4, 6), &Device::Cpu).unwrap();
    let errs = errors(&sym, &Method::EVALUATOR, &model, &x, ZeroSelect::WholeCopy);
    for (m, e) in Method::EVALUATOR.iter().zip(&errs) {
        if *m == Method::Vanilla {
            assert!(*e > 1e-3, "vanilla should not be equivariant: {e}");
        } else {
            assert!(*e <= 1e-5, "{} equivariance error {e}", m.name());
        }
    }
    assert_eq!(Method::MultiEquitune.passes(&sym), 6);
    assert_eq!(Method::Equitune.passes(&sym), 8);
    let _ = DType::F32;
}

#[test]
fn method_parsing() {
    assert_eq!(
        Method::parse_list("equitune,multi_equitune,equitune").unwrap(),
        vec![Method::Equitune, Method::MultiEquitune]
    );
    let err = format!("{:#}", Method::parse("equifoo").unwrap_err());
    assert!(
        err.contains("unknown method 'equifoo'") && err.contains("multi-equizero"),
        "{err}"
    );
}
