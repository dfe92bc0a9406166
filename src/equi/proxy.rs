//! Equizero's proxy losses, all in one place (docs/methods.md, "Equizero"): each maps one copy's
//! output batch `[B, ...]` to `[B]` losses, lower is better. Which proxy an experiment uses is
//! recorded in its config.

use super::lambda::Head;
use anyhow::Result;
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// Negative max over the last axis, averaged over any middle axes: the CLIP / SCAN `top1` proxy.
pub fn neg_max_confidence(y: &Tensor) -> Result<Tensor> {
    let m = y.max(D::Minus1)?.neg()?;
    let b = m.dim(0)?;
    Ok(m.reshape((b, ()))?.mean(1)?)
}

/// SCAN's equizero proxy `top1`: minus the mean over the 50 rows of the max softmax
/// probability (zero rows become uniform), as the official code.
pub fn top1_proxy(y: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::softmax_last_dim(y)?;
    Ok(p.max(D::Minus1)?.mean(1)?.neg()?)
}

/// Entropy of softmax(logits) per row (the equizero proxy): `[B, V]` → `[B]`.
pub fn entropy_proxy(y: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(y, D::Minus1)?;
    Ok((logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?)
}

/// Equizero proxies on one copy's output `[B, C]` (lower is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyKind {
    /// Entropy of the predicted distribution (the official CNN code's `--use_entropy`).
    Entropy,
    /// Minus the largest class probability (the CLIP proxy).
    MaxProb,
}

impl ProxyKind {
    /// The proxy on outputs in `head`'s space.
    pub fn eval(&self, y: &Tensor, head: Head) -> Result<Tensor> {
        let p = match head {
            Head::Logits => candle_nn::ops::softmax_last_dim(&y.to_dtype(DType::F32)?)?,
            Head::Softmax => y.to_dtype(DType::F32)?,
        };
        match self {
            ProxyKind::MaxProb => Ok(p.max(D::Minus1)?.neg()?),
            ProxyKind::Entropy => {
                let lp = p.clamp(1e-30f64, 1.0)?.log()?;
                Ok((p * lp)?.sum(D::Minus1)?.neg()?)
            }
        }
    }
}
