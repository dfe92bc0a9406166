//! Multi-input equivariance (docs/methods.md, "Multi-input equivariance"): the linear equivariant / IS layer and the
//! non-linear multi-input network, for random parameters and every element of G₁×…×G_k.

use candle_core::{Device, Tensor};
use equirun::equi::multi_input::{multi_input_forward, MatRep, MultiLinear};
use equirun::equi::{BatchModel, ImageOutput, ImageSymmetry, Symmetry};
use equirun::groups::image::image_group;
use equirun::testing::{max_abs_diff, randn};
use std::cell::Cell;

fn sym(spec: &str, output: ImageOutput) -> ImageSymmetry {
    ImageSymmetry::new(image_group(spec).unwrap(), output, 0)
}

fn rep(s: &ImageSymmetry, shape: &[usize]) -> MatRep {
    MatRep::of_input_action(s, shape, &Device::Cpu).unwrap()
}

/// Hand-worked: rot90 on a 3×3 image (orbits: centre, 4 corners, 4 edges) and hflip on a 1×3
/// image (orbits {0,2}, {1}).
///   dim Fix: 3 and 2 → off-diagonal blocks 3·2 + 2·3 = 12;
///   dim End = (1/|G|) Σ χ(g)²: rot90: (81 + 1 + 1 + 1)/4 = 21; hflip: (9 + 1)/2 = 5;
///   total 21 + 5 + 12 = 38 free parameters (of 12² = 144 unconstrained).
#[test]
fn free_parameters_hand_worked() {
    let r = sym("rot90", ImageOutput::Invariant);
    let h = sym("hflip", ImageOutput::Invariant);
    let (rr, hr) = (rep(&r, &[1, 3, 3]), rep(&h, &[1, 1, 3]));
    assert_eq!(rr.fixed_dim().unwrap(), 3);
    assert_eq!(hr.fixed_dim().unwrap(), 2);
    assert_eq!(rr.commutant_dim().unwrap(), 21);
    assert_eq!(hr.commutant_dim().unwrap(), 5);
    let layer = MultiLinear::new(vec![rr, hr]).unwrap();
    assert_eq!(layer.free_parameters().unwrap(), 38);
    // the parametrisation really spans a 38-dimensional space
    assert_eq!(layer.measured_dimension().unwrap(), 38);
    // a smaller case: hflip on 2 pixels (End 2, Fix 1) and rot90 on 2×2 (regular C4: End 4, Fix 1)
    let l2 = MultiLinear::new(vec![rep(&h, &[1, 1, 2]), rep(&r, &[1, 2, 2])]).unwrap();
    assert_eq!(l2.free_parameters().unwrap(), 2 + 4 + 1 + 1);
    assert_eq!(l2.measured_dimension().unwrap(), 8);
}

#[test]
fn linear_layer_equivariant_for_every_product_element() {
    let dev = Device::Cpu;
    // three inputs: D4 on a 3×3 image, hflip on a 1×4 strip, rot90 on a 2×2 image with 2 channels
    let s = [
        (sym("rot90xflip", ImageOutput::Image), vec![1usize, 3, 3]),
        (sym("hflip", ImageOutput::Image), vec![1, 1, 4]),
        (sym("rot90", ImageOutput::Image), vec![2, 2, 2]),
    ];
    let reps: Vec<MatRep> = s.iter().map(|(sy, sh)| rep(sy, sh)).collect();
    let dims: Vec<usize> = reps.iter().map(|r| r.dim).collect();
    let layer = MultiLinear::new(reps.clone()).unwrap();
    let a: Vec<Vec<Tensor>> = (0..3)
        .map(|i| {
            (0..3)
                .map(|j| randn(10 + 3 * i as u64 + j as u64, &[dims[i], dims[j]]))
                .collect()
        })
        .collect();
    let w = layer.weight(&a).unwrap();
    let xs: Vec<Tensor> = (0..3)
        .map(|i| randn(100 + i as u64, &[5, dims[i]]))
        .collect();
    let ys = layer.forward(&w, &xs).unwrap();
    let act = |i: usize, g: usize, x: &Tensor| -> Tensor {
        // act on [B, d] by reshaping to the input's image shape
        let mut sh = vec![x.dim(0).unwrap()];
        sh.extend_from_slice(&s[i].1);
        s[i].0
            .act_input(g, &x.reshape(sh).unwrap())
            .unwrap()
            .reshape(x.shape())
            .unwrap()
    };
    let mut worst = 0f32;
    let mut checked = 0;
    for g0 in 0..8 {
        for g1 in 0..2 {
            for g2 in 0..4 {
                let gs = [g0, g1, g2];
                let gx: Vec<Tensor> = (0..3).map(|i| act(i, gs[i], &xs[i])).collect();
                let y_gx = layer.forward(&w, &gx).unwrap();
                for i in 0..3 {
                    worst = worst.max(max_abs_diff(&y_gx[i], &act(i, gs[i], &ys[i])));
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 64);
    assert!(worst < 1e-5, "equivariance error {worst}");
    // each off-diagonal block is invariant in its input and fixed in its output
    for i in 0..3 {
        for j in 0..3 {
            if i == j {
                continue;
            }
            let b = layer.block(i, j, &a[i][j]).unwrap();
            for g in 0..reps[j].order() {
                assert!(max_abs_diff(&b.matmul(&reps[j].mats[g]).unwrap(), &b) < 1e-5);
            }
            for g in 0..reps[i].order() {
                assert!(max_abs_diff(&reps[i].mats[g].matmul(&b).unwrap(), &b) < 1e-5);
            }
        }
    }
    // and an unconstrained weight is not equivariant (the test can fail)
    let raw = Tensor::cat(
        &(0..3)
            .map(|i| Tensor::cat(&a[i], 1).unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let y = layer.forward(&raw, &xs).unwrap();
    let gx: Vec<Tensor> = (0..3).map(|i| act(i, 1, &xs[i])).collect();
    let y_gx = layer.forward(&raw, &gx).unwrap();
    assert!(max_abs_diff(&y_gx[0], &act(0, 1, &y[0])) > 1e-2);
    let _ = dev;
}

/// A fixed random non-equivariant "network" from [B, 1, 6, 6] images to [B, 4] logits that counts
/// how many images it sees.
struct Net {
    w: Tensor,
    seen: Cell<usize>,
}

impl BatchModel for Net {
    fn forward(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        self.seen.set(self.seen.get() + x.dim(0)?);
        let f = x.flatten_from(1)?;
        Ok(f.matmul(&self.w)?.tanh()?)
    }
}

#[test]
fn multi_input_network_invariant_per_view_and_counts_passes() {
    let k = 3;
    let views: Vec<ImageSymmetry> = (0..k)
        .map(|_| sym("rot90", ImageOutput::Invariant))
        .collect();
    let syms: Vec<&dyn Symmetry> = views.iter().map(|v| v as &dyn Symmetry).collect();
    let mk = |seed: u64| Net {
        w: randn(seed, &[36, 4]),
        seen: Cell::new(0),
    };
    let eq: Vec<Net> = (0..k as u64).map(|i| mk(200 + i)).collect();
    let is: Vec<Net> = (0..k as u64).map(|i| mk(300 + i)).collect();
    let eq_refs: Vec<&dyn BatchModel> = eq.iter().map(|n| n as &dyn BatchModel).collect();
    let is_refs: Vec<&dyn BatchModel> = is.iter().map(|n| n as &dyn BatchModel).collect();
    let b = 2;
    let xs: Vec<Tensor> = (0..k as u64)
        .map(|i| randn(400 + i, &[b, 1, 6, 6]))
        .collect();
    let predict = |xs: &[Tensor], fusion: bool| -> Tensor {
        let ys = multi_input_forward(&syms, &eq_refs, fusion.then_some(&is_refs[..]), xs).unwrap();
        Tensor::cat(&ys, 1).unwrap()
    };
    for fusion in [false, true] {
        for n in eq.iter().chain(&is) {
            n.seen.set(0);
        }
        let y = predict(&xs, fusion);
        let passes: usize = eq.iter().chain(&is).map(|n| n.seen.get()).sum();
        assert_eq!(
            passes,
            b * 4 * k * if fusion { 2 } else { 1 },
            "Σ|Gᵢ| per tuple (×2 with IS)"
        );
        let mut worst = 0f32;
        for v in 0..k {
            for g in 0..4 {
                let mut moved = xs.clone();
                moved[v] = views[v].act_input(g, &xs[v]).unwrap();
                worst = worst.max(max_abs_diff(&predict(&moved, fusion), &y));
            }
        }
        assert!(worst < 1e-5, "fusion={fusion}: error {worst}");
        // the backbone alone is not invariant
        let moved = views[0].act_input(1, &xs[0]).unwrap();
        assert!(
            max_abs_diff(
                &eq[0].forward(&moved).unwrap(),
                &eq[0].forward(&xs[0]).unwrap()
            ) > 1e-3
        );
    }
}
