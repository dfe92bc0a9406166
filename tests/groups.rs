//! Group laws and exact actions.

use candle_core::{Device, Tensor};
use equirun::groups::image::{image_group, D4};
use equirun::groups::perm::{cyclic_factor, TokenPerm};
use equirun::groups::{FiniteGroup, GroupElement};
use equirun::testing::max_abs_diff;

fn check_laws<E: GroupElement>(g: &FiniteGroup<E>) {
    let n = g.order();
    let e = g.identity();
    for a in 0..n {
        assert_eq!(g.mul(a, g.inv(a)), e, "a·a⁻¹ = e for {}", g.element_name(a));
        assert_eq!(g.mul(g.inv(a), a), e);
        assert_eq!(g.mul(a, e), a);
        assert_eq!(g.mul(e, a), a);
        for b in 0..n {
            // closure: the product is a group element, computed from the concrete elements
            let ab = g.element(a).compose(g.element(b));
            assert_eq!(&ab, g.element(g.mul(a, b)));
            for c in 0..n {
                assert_eq!(
                    g.mul(g.mul(a, b), c),
                    g.mul(a, g.mul(b, c)),
                    "associativity"
                );
            }
        }
    }
}

#[test]
fn image_groups_orders_and_laws() {
    for (spec, order) in [
        ("rot90", 4),
        ("flip", 2),
        ("hflip", 2),
        ("vflip", 2),
        ("rot180", 2),
        ("id", 1),
        ("rot90xflip", 8),
        ("rot90xhflip", 8),
    ] {
        let g = image_group(spec).unwrap();
        assert_eq!(g.order(), order, "{spec}");
        check_laws(&g);
    }
    // D4 is not abelian; rot90 is
    assert!(!image_group("rot90xflip").unwrap().is_abelian());
    assert!(image_group("rot90").unwrap().is_abelian());
    // rot90 × rot180 is not a product of independent factors
    let err = image_group("rot90xrot180").unwrap_err();
    assert!(format!("{err:#}").contains("not independent"), "{err:#}");
}

#[test]
fn unknown_group_lists_valid_names() {
    let err = format!("{:#}", image_group("rot45").unwrap_err());
    assert!(err.contains("unknown image group 'rot45'"), "{err}");
    assert!(
        err.contains("rot90") && err.contains("hflip") && err.contains("rot90xflip"),
        "{err}"
    );
}

/// 3×3 image with pixel values 0..8 (row-major).
fn img3() -> Tensor {
    Tensor::arange(0f32, 9., &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 3, 3))
        .unwrap()
}

fn apply(e: &D4) -> Vec<f32> {
    e.apply(&img3())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn actions_on_hand_made_3x3() {
    // in = [[0,1,2],[3,4,5],[6,7,8]]
    // 90° counter-clockwise: out[r][c] = in[c][N-1-r]
    assert_eq!(apply(&D4::rot(1)), vec![2., 5., 8., 1., 4., 7., 0., 3., 6.]);
    assert_eq!(apply(&D4::rot(2)), vec![8., 7., 6., 5., 4., 3., 2., 1., 0.]);
    assert_eq!(apply(&D4::rot(3)), vec![6., 3., 0., 7., 4., 1., 8., 5., 2.]);
    assert_eq!(
        apply(&D4::rot(0)),
        (0..9).map(|v| v as f32).collect::<Vec<_>>()
    );
    // vflip reverses H (rows), hflip reverses W (columns)
    assert_eq!(apply(&D4::VFLIP), vec![6., 7., 8., 3., 4., 5., 0., 1., 2.]);
    assert_eq!(apply(&D4::HFLIP), vec![2., 1., 0., 5., 4., 3., 8., 7., 6.]);
    // every D4 element of rot90xflip: g = rot^a ∘ vflip^b, i.e. flip first, then rotate
    let g = image_group("rot90xflip").unwrap();
    let expected: [[f32; 9]; 8] = [
        [0., 1., 2., 3., 4., 5., 6., 7., 8.], // e
        [6., 7., 8., 3., 4., 5., 0., 1., 2.], // vflip
        [2., 5., 8., 1., 4., 7., 0., 3., 6.], // rot90
        [8., 5., 2., 7., 4., 1., 6., 3., 0.], // rot90 ∘ vflip = anti-transpose
        [8., 7., 6., 5., 4., 3., 2., 1., 0.], // rot180
        [2., 1., 0., 5., 4., 3., 8., 7., 6.], // rot180 ∘ vflip = hflip
        [6., 3., 0., 7., 4., 1., 8., 5., 2.], // rot270
        [0., 3., 6., 1., 4., 7., 2., 5., 8.], // rot270 ∘ vflip = transpose
    ];
    for (k, exp) in expected.iter().enumerate() {
        assert_eq!(
            apply(g.element(k)),
            exp.to_vec(),
            "element {} ({})",
            k,
            g.element_name(k)
        );
    }
}

#[test]
fn action_is_a_left_action_and_inverse_undoes() {
    let g = image_group("rot90xflip").unwrap();
    let x = Tensor::arange(0f32, 2. * 3. * 5. * 5., &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 5, 5))
        .unwrap();
    for a in 0..g.order() {
        for b in 0..g.order() {
            let lhs = g
                .element(a)
                .apply(&g.element(b).apply(&x).unwrap())
                .unwrap();
            let rhs = g.element(g.mul(a, b)).apply(&x).unwrap();
            let d = max_abs_diff(&lhs, &rhs);
            assert_eq!(d, 0.0, "(ab)·x = a·(b·x)");
        }
        let back = g
            .element(g.inv(a))
            .apply(&g.element(a).apply(&x).unwrap())
            .unwrap();
        let d = max_abs_diff(&back, &x);
        assert_eq!(d, 0.0);
    }
}

#[test]
fn rotation_needs_square_images() {
    let x = Tensor::zeros((1, 3, 4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = format!("{:#}", D4::rot(1).apply(&x).unwrap_err());
    assert!(err.contains("square"), "{err}");
    // flips work on any shape
    assert!(D4::HFLIP.apply(&x).is_ok());
}

#[test]
fn token_permutation_products() {
    // 6 input tokens, 5 output tokens; three disjoint swaps and one 3-cycle
    let swap = |a: u32, b: u32, oa: u32, ob: u32| {
        TokenPerm::from_cycles(6, 5, &[vec![a, b]], &[vec![oa, ob]]).unwrap()
    };
    let f1 = cyclic_factor("verb", "jump<->run", swap(0, 1, 0, 1)).unwrap();
    let f2 = cyclic_factor("dir", "left<->right", swap(2, 3, 2, 3)).unwrap();
    let g = FiniteGroup::product("verb,dir", vec![f1, f2]).unwrap();
    assert_eq!(g.order(), 4);
    assert!(g.is_abelian() && g.factors_commute());
    check_laws(&g);
    // a non-involutive cycle: inverse is not the element itself
    let c3 = TokenPerm::from_cycles(6, 5, &[vec![0, 1, 2]], &[vec![0, 1, 2]]).unwrap();
    let f3 = cyclic_factor("race", "black->white->asian", c3.clone()).unwrap();
    assert_eq!(f3.elements.len(), 3);
    let g3 = FiniteGroup::product("race", vec![f3]).unwrap();
    check_laws(&g3);
    assert_ne!(g3.inv(1), 1, "a 3-cycle is not its own inverse");
    assert_eq!(c3.inverse().input, vec![2, 0, 1, 3, 4, 5]);
    // overlapping cycles are rejected
    assert!(TokenPerm::from_cycles(6, 5, &[vec![0, 1], vec![1, 2]], &[]).is_err());
}
