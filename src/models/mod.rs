//! Models behind small traits the wrappers use.

pub mod bert;
pub mod clip;
pub mod cnn;
pub mod fused;
pub mod lm;
pub mod mpnet;
pub mod probe;
pub mod regard_scorer;
pub mod seq2seq;
pub mod tape;

use anyhow::Result;
use candle_core::{Tensor, D};

/// L2-normalise the last axis.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

/// Seeded values for a random test checkpoint tensor: weights N(0, 0.2), biases N(0, 0.02),
/// layer-norm weights 1 + N(0, 0.1) and layer-norm biases N(0, 0.1) (`is_norm`), so that parity
/// tests exercise every parameter.
pub fn random_values(rng: &mut impl rand::Rng, name: &str, n: usize, is_norm: bool) -> Vec<f32> {
    use rand_distr::{Distribution, Normal};
    let std = if is_norm {
        0.1
    } else if name.ends_with("bias") {
        0.02
    } else {
        0.2
    };
    let normal = Normal::new(0f32, std).unwrap();
    let mut v: Vec<f32> = (0..n).map(|_| normal.sample(rng)).collect();
    if is_norm && name.ends_with("weight") {
        v.iter_mut().for_each(|x| *x += 1.0);
    }
    v
}
