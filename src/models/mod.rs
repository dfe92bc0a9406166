//! Models behind small traits the wrappers use.

pub mod clip;
pub mod fused;
pub mod gguf;
pub mod gpt2;
pub mod gpt2_tokenizer;
pub mod lm;
pub mod seq2seq;
pub mod tape;

use anyhow::Result;
use candle_core::{Tensor, D};

/// L2-normalise the last axis.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}
