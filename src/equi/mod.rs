//! Model-agnostic equivariance wrappers, written once for any model and any group action.
//!
//! A model is anything implementing [`BatchModel`] (a closure works): a batch of inputs
//! `[B, ...]` to a batch of outputs `[B, ...]` in the space where copies are averaged
//! (class probabilities for CLIP, log-probabilities for seq2seq). A [`Symmetry`] supplies the
//! group, its action on inputs and outputs and, for the multi-* methods, the canonicalisers.
//!
//! | method | output | passes per input |
//! |---|---|---|
//! | vanilla | M(x) | 1 |
//! | equitune | (1/|G|) Σ_g ρ(g)⁻¹ M(g·x) | |G| |
//! | equizero | ρ(g*)⁻¹ M(g*·x), g* = argmin_g ℓ(ρ(g)⁻¹ M(g·x)) | |G| |
//! | multi-equitune | (1/N) Σᵢ S_{G₋ᵢ}( (1/|Gᵢ|) Σ_{g∈Gᵢ} ρ(g)⁻¹ M(g·c₋ᵢ(x)) ) | Σ|Gᵢ| |
//! | multi-equizero | as multi-equitune with equizero inside each branch | Σ|Gᵢ| |
//! | canon | ρ(c(x)) M(c(x)⁻¹·x), c(x) = argmax_g s(g⁻¹·x) ([`canon`]) | 1 (+ |G| tiny scorer passes) |
//!
//! All transformed copies a set of methods needs are batched into a single forward call.

pub mod canon;
pub mod lambda;
pub mod multi_input;
pub mod proxy;
pub mod symmetries;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

pub use proxy::neg_max_confidence;
pub use symmetries::{ImageOutput, ImageSymmetry, TokenSymmetry};

/// A group acting on a model's inputs and outputs.
pub trait Symmetry {
    fn order(&self) -> usize;
    /// Index of `g⁻¹`.
    fn inv(&self, g: usize) -> usize;
    fn element_name(&self, g: usize) -> String;
    fn n_factors(&self) -> usize;
    /// Elements of factor `i` (as indices into the whole group).
    fn factor_elements(&self, i: usize) -> Vec<usize>;
    /// Elements of the product of all factors but `i`.
    fn complement_elements(&self, i: usize) -> Vec<usize>;
    /// Whether elements of different factors commute.
    fn factors_commute(&self) -> bool;
    /// `g·x` on a batch of inputs.
    fn act_input(&self, g: usize, x: &Tensor) -> Result<Tensor>;
    /// `ρ_Y(g) y` on a batch of outputs (identity for invariant tasks).
    fn act_output(&self, g: usize, y: &Tensor) -> Result<Tensor>;
    /// Whether ρ_Y is trivial.
    fn invariant_output(&self) -> bool;
    /// `c₋ᵢ(x)`: invariant to every factor but `i`, compatible with factor `i` (docs/methods.md, "Canonicalisers").
    fn canonicalize_except(&self, i: usize, x: &Tensor) -> Result<Tensor>;
    /// `mean_k ρ_Y(g_k) y_k` over `terms` `(g_k, y_k)`: the wrappers' averages (equitune's
    /// un-transformed copies, the output symmetriser). By default [`mean_of`] of
    /// [`Self::act_output`]; an override must give the same bits.
    fn mean_of_acted(&self, terms: &[(usize, &Tensor)]) -> Result<Tensor> {
        mean_of_copies(self, terms)
    }
}

/// [`Symmetry::mean_of_acted`] the plain way: [`mean_of`] the copies `ρ_Y(g_k) y_k`.
pub fn mean_of_copies<S: Symmetry + ?Sized>(sym: &S, terms: &[(usize, &Tensor)]) -> Result<Tensor> {
    let ys = terms
        .iter()
        .map(|&(g, y)| sym.act_output(g, y))
        .collect::<Result<Vec<_>>>()?;
    mean_of(&ys)
}

/// A model from an input batch to an output batch.
pub trait BatchModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

impl<F: Fn(&Tensor) -> Result<Tensor>> BatchModel for F {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self(x)
    }
}

/// The wrappers.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Vanilla,
    Equitune,
    Equizero,
    MultiEquitune,
    MultiEquizero,
    /// λ-equitune: a λ-net weighs the copies ([`lambda`]); needs training (`cnn`, `clip finetune`).
    LambdaEquitune,
    /// Relaxed equitune for language models: general words from the identity branch
    /// (`gpt2-fairness`).
    REquitune,
    /// Learned canonicalisation: an equivariant scorer picks c(x), the model sees c(x)⁻¹·x once
    /// ([`canon`]); needs its scorer trained (`cnn`, `clip`).
    Canon,
}

impl Method {
    /// The methods [`Evaluator`] computes (no training, no special output rule).
    pub const EVALUATOR: [Method; 5] = [
        Method::Vanilla,
        Method::Equitune,
        Method::Equizero,
        Method::MultiEquitune,
        Method::MultiEquizero,
    ];
    /// Every method, in the order of the docs and tables.
    pub const ALL: [Method; 8] = [
        Method::Vanilla,
        Method::Equitune,
        Method::Equizero,
        Method::MultiEquitune,
        Method::MultiEquizero,
        Method::LambdaEquitune,
        Method::REquitune,
        Method::Canon,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Method::Vanilla => "vanilla",
            Method::Equitune => "equitune",
            Method::Equizero => "equizero",
            Method::MultiEquitune => "multi-equitune",
            Method::MultiEquizero => "multi-equizero",
            Method::LambdaEquitune => "lambda-equitune",
            Method::REquitune => "r-equitune",
            Method::Canon => "canon",
        }
    }

    /// The one method parser (case-insensitive, `_` = `-`; `λ-equitune`/`lambda` and
    /// `requitune` are accepted spellings).
    pub fn parse(s: &str) -> Result<Method> {
        let t = s.trim().to_ascii_lowercase().replace('_', "-");
        let t = match t.as_str() {
            "λ-equitune" | "lambda" => "lambda-equitune",
            "requitune" => "r-equitune",
            "canonicalise" | "canonicalize" | "canonicalisation" | "canonicalization" => "canon",
            other => other,
        };
        Method::ALL
            .iter()
            .copied()
            .find(|m| m.name() == t)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown method '{s}': valid methods are {}",
                    Method::ALL
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// Parses a comma-separated list, keeping order and dropping duplicates.
    pub fn parse_list(s: &str) -> Result<Vec<Method>> {
        Self::parse_list_of(s, &Method::ALL, "equirun")
    }

    /// [`Method::parse_list`] restricted to the methods `command` supports.
    pub fn parse_list_of(s: &str, supported: &[Method], command: &str) -> Result<Vec<Method>> {
        let names = || {
            supported
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let m = Method::parse(part).map_err(|_| {
                anyhow::anyhow!(
                    "unknown method '{}': valid methods are {}",
                    part.trim(),
                    names()
                )
            })?;
            if !supported.contains(&m) {
                bail!(
                    "method '{}' is not available in {command}: valid methods are {}",
                    m.name(),
                    names()
                );
            }
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            bail!("no method given: use one or more of {}", names());
        }
        Ok(out)
    }

    /// The transformed copies this method evaluates.
    pub fn copies(&self, sym: &dyn Symmetry) -> Vec<CopySpec> {
        match self {
            // canon: one pass on the canonical input (its tiny scorer passes are not model passes)
            Method::Vanilla | Method::Canon => vec![CopySpec {
                source: Source::Raw,
                g: 0,
            }],
            Method::Equitune | Method::Equizero | Method::REquitune | Method::LambdaEquitune => (0
                ..sym.order())
                .map(|g| CopySpec {
                    source: Source::Raw,
                    g,
                })
                .collect(),
            Method::MultiEquitune | Method::MultiEquizero => (0..sym.n_factors())
                .flat_map(|i| {
                    let src = if sym.n_factors() == 1 {
                        Source::Raw
                    } else {
                        Source::CanonExcept(i)
                    };
                    sym.factor_elements(i)
                        .into_iter()
                        .map(move |g| CopySpec { source: src, g })
                })
                .collect(),
        }
    }

    /// Model forward passes per input.
    pub fn passes(&self, sym: &dyn Symmetry) -> usize {
        self.copies(sym).len()
    }
}

/// Which input a copy is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Raw,
    CanonExcept(usize),
}

/// One transformed copy: `g · source(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopySpec {
    pub source: Source,
    pub g: usize,
}

/// How equizero turns the per-copy outputs into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ZeroSelect {
    /// Pick the copy with the lowest proxy loss, keep its whole output (canonical).
    #[default]
    WholeCopy,
    /// The official CLIP code: the element-wise max over copies (top-5 may mix copies).
    Elementwise,
}

/// Proxy loss for equizero: `[B, ...]` outputs of one copy → `[B]` losses (lower is better).
pub type Proxy<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;

/// Evaluates several methods on one input batch with a single model forward call over the
/// union of the copies they need. Returns one output batch per method, in order.
pub struct Evaluator<'a> {
    pub sym: &'a dyn Symmetry,
    pub proxy: Proxy<'a>,
    pub select: ZeroSelect,
}

impl<'a> Evaluator<'a> {
    /// Returns the per-method outputs and the number of distinct copies evaluated per input.
    pub fn run(
        &self,
        methods: &[Method],
        model: &dyn BatchModel,
        x: &Tensor,
    ) -> Result<(Vec<Tensor>, usize)> {
        let sym = self.sym;
        for m in methods {
            if !Method::EVALUATOR.contains(m) {
                bail!(
                    "{} is not computed by the Evaluator (λ-equitune: equi::lambda; r-equitune: \
                     gpt2-fairness's method_logits; canon: equi::canon)",
                    m.name()
                );
            }
            if matches!(m, Method::MultiEquitune | Method::MultiEquizero)
                && sym.n_factors() > 1
                && !sym.invariant_output()
                && !sym.factors_commute()
            {
                bail!(
                    "{} with an equivariant output needs commuting factors (the output symmetriser); \
                     this group's factors do not commute",
                    m.name()
                );
            }
        }
        let mut union: Vec<CopySpec> = Vec::new();
        for m in methods {
            for c in m.copies(sym) {
                if !union.contains(&c) {
                    union.push(c);
                }
            }
        }
        // Build the inputs: canonicalise once per factor, then act.
        let mut canon: Vec<Option<Tensor>> = vec![None; sym.n_factors()];
        let mut inputs = Vec::with_capacity(union.len());
        for c in &union {
            let base = match c.source {
                Source::Raw => x.clone(),
                Source::CanonExcept(i) => {
                    if canon[i].is_none() {
                        canon[i] = Some(sym.canonicalize_except(i, x)?);
                    }
                    canon[i].clone().unwrap()
                }
            };
            inputs.push(sym.act_input(c.g, &base)?);
        }
        let b = x.dim(0)?;
        let batch = Tensor::cat(&inputs, 0)?;
        let y = model.forward(&batch)?;
        if y.dim(0)? != b * union.len() {
            bail!(
                "model returned {} outputs for {} inputs (shape {:?}); a BatchModel must keep the batch axis",
                y.dim(0)?,
                b * union.len(),
                y.dims()
            );
        }
        // Copy k's output, and the copy un-transformed: u = ρ_Y(g)⁻¹ y_g (computed when a
        // method needs it on its own; the averages go through `mean_of_acted`, which applies the
        // actions while it sums).
        let ys: Vec<Tensor> = (0..union.len())
            .map(|k| y.narrow(0, k * b, b))
            .collect::<candle_core::Result<_>>()?;
        let pos = |c: &CopySpec| union.iter().position(|u| u == c).unwrap();
        // each copy un-transformed at most once, however many methods use it on its own
        let cache = std::cell::RefCell::new(vec![None::<Tensor>; union.len()]);
        let get = |c: &CopySpec| -> Result<Tensor> {
            let k = pos(c);
            if let Some(u) = &cache.borrow()[k] {
                return Ok(u.clone());
            }
            let u = sym.act_output(sym.inv(c.g), &ys[k])?;
            cache.borrow_mut()[k] = Some(u.clone());
            Ok(u)
        };
        let mean_untransformed = |cs: &[CopySpec]| -> Result<Tensor> {
            let terms: Vec<(usize, &Tensor)> =
                cs.iter().map(|c| (sym.inv(c.g), &ys[pos(c)])).collect();
            sym.mean_of_acted(&terms)
        };
        let mut outs = Vec::with_capacity(methods.len());
        for m in methods {
            let out = match m {
                Method::Vanilla => get(&CopySpec {
                    source: Source::Raw,
                    g: 0,
                })?,
                Method::Equitune => mean_untransformed(&m.copies(sym))?,
                Method::Equizero => {
                    self.select(&m.copies(sym).iter().map(get).collect::<Result<Vec<_>>>()?)?
                }
                Method::MultiEquitune | Method::MultiEquizero => {
                    let mut branches = Vec::with_capacity(sym.n_factors());
                    let copies = m.copies(sym);
                    let mut start = 0;
                    for i in 0..sym.n_factors() {
                        let n = sym.factor_elements(i).len();
                        let cs = &copies[start..start + n];
                        start += n;
                        let branch = if *m == Method::MultiEquitune {
                            mean_untransformed(cs)?
                        } else {
                            self.select(&cs.iter().map(get).collect::<Result<Vec<_>>>()?)?
                        };
                        branches.push(self.symmetrize_except(i, &branch)?);
                    }
                    mean_of(&branches)?
                }
                Method::LambdaEquitune | Method::REquitune | Method::Canon => {
                    unreachable!("rejected at the top of Evaluator::run")
                }
            };
            outs.push(out);
        }
        Ok((outs, union.len()))
    }

    /// S_{G₋ᵢ}(y) = mean over h in the other factors of ρ_Y(h) y (identity if invariant).
    fn symmetrize_except(&self, i: usize, y: &Tensor) -> Result<Tensor> {
        if self.sym.invariant_output() || self.sym.n_factors() == 1 {
            return Ok(y.clone());
        }
        let terms: Vec<(usize, &Tensor)> = self
            .sym
            .complement_elements(i)
            .into_iter()
            .map(|h| (h, y))
            .collect();
        self.sym.mean_of_acted(&terms)
    }

    fn select(&self, ys: &[Tensor]) -> Result<Tensor> {
        let stacked = Tensor::stack(ys, 0)?; // [K, B, ...]
        match self.select {
            ZeroSelect::Elementwise => Ok(stacked.max(0)?),
            ZeroSelect::WholeCopy => {
                let losses = ys
                    .iter()
                    .map(|y| (self.proxy)(y))
                    .collect::<Result<Vec<_>>>()?;
                let losses = Tensor::stack(&losses, 0)?.to_dtype(DType::F32)?; // [K, B]
                let best = argmin_sets(&losses)?;
                let rows = best
                    .iter()
                    .enumerate()
                    .map(|(j, ks)| {
                        let picked = ks
                            .iter()
                            .map(|&k| Ok(stacked.get(k)?.narrow(0, j, 1)?))
                            .collect::<Result<Vec<_>>>()?;
                        mean_of(&picked)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&rows, 0)?)
            }
        }
    }
}

/// Relative tolerance under which two proxy losses count as tied.
pub const ZERO_TIE_TOL: f32 = 1e-6;

/// Column-wise arg-min sets over axis 0 of a `[K, B]` tensor. Copies whose loss ties with the
/// minimum (within [`ZERO_TIE_TOL`]) are all kept and averaged by the caller: a tie-break by
/// position would depend on the order of the copies, which a group element permutes, and
/// would break equivariance (e.g. SCAN inputs without the swapped words give tied copies).
fn argmin_sets(losses: &Tensor) -> Result<Vec<Vec<usize>>> {
    let v = losses.to_vec2::<f32>()?;
    let b = v[0].len();
    Ok((0..b)
        .map(|j| {
            let min = (0..v.len()).map(|k| v[k][j]).fold(f32::INFINITY, f32::min);
            let tol = ZERO_TIE_TOL * min.abs().max(1.0);
            (0..v.len()).filter(|&k| v[k][j] <= min + tol).collect()
        })
        .collect())
}

/// Mean of equally shaped tensors, accumulated in f64: the sum of a few f32 values is then
/// (practically always) exact, so the result does not depend on the order of the copies — a
/// group element permutes that order, and sampling from logits needs bit-exact equivariance.
pub fn mean_of(ys: &[Tensor]) -> Result<Tensor> {
    if ys.is_empty() {
        bail!("mean of no tensors");
    }
    if ys.len() == 1 {
        return Ok(ys[0].clone());
    }
    let dt = ys[0].dtype();
    if dt == DType::F32
        && ys
            .iter()
            .all(|y| y.device().is_cpu() && y.dims() == ys[0].dims() && !y.track_op())
    {
        // the same f64 sum in copy order and the same scaling as below, without the stacked
        // copies (the logits of every decoding step pass through here); tensors that carry
        // gradients (finetuning through the wrappers) take candle's ops below
        let mut acc = vec![0f64; ys[0].elem_count()];
        for y in ys {
            let v = y.flatten_all()?.to_vec1::<f32>()?;
            for (a, &x) in acc.iter_mut().zip(&v) {
                *a += x as f64;
            }
        }
        let scale = 1.0 / ys.len() as f64;
        // `+ 0.0` as in candle's affine (turns −0 into +0)
        let out: Vec<f32> = acc.into_iter().map(|a| (a * scale + 0.0) as f32).collect();
        return Ok(Tensor::from_vec(out, ys[0].dims(), ys[0].device())?);
    }
    let s = Tensor::stack(ys, 0)?.to_dtype(DType::F64)?.sum(0)?;
    Ok((s / ys.len() as f64)?.to_dtype(dt)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Gradients flow through `mean_of` (finetuning through equitune averages copies).
    #[test]
    fn mean_of_keeps_gradients() -> Result<()> {
        let v = candle_core::Var::from_tensor(&crate::testing::randn(1, &[2, 3]))?;
        let ys = vec![(v.as_tensor() * 2.0)?, (v.as_tensor() * 3.0)?];
        let loss = mean_of(&ys)?.sum_all()?;
        let g = loss.backward()?;
        let gv = g.get(v.as_tensor()).expect("a gradient for the variable");
        assert!(gv
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|&x| (x - 2.5).abs() < 1e-6));
        Ok(())
    }

    /// The f32 fast path of `mean_of` gives the bits of the stacked f64 sum (signed zeros too).
    #[test]
    fn mean_of_f32_matches_the_stacked_f64_sum() -> Result<()> {
        let mut ys = Vec::new();
        for k in 0..5u64 {
            let mut t = crate::testing::randn(k, &[3, 7])
                .flatten_all()?
                .to_vec1::<f32>()?;
            t[0] = -0.0; // −0 everywhere at [0, 0]: candle's affine turns the mean into +0
            t[1] = if k % 2 == 0 { 1e-30 } else { -1e-30 };
            ys.push(Tensor::from_vec(t, (3, 7), &Device::Cpu)?);
        }
        for n in 1..=5 {
            let fast = mean_of(&ys[..n])?.flatten_all()?.to_vec1::<f32>()?;
            let s = Tensor::stack(&ys[..n], 0)?.to_dtype(DType::F64)?.sum(0)?;
            let slow = (s / n as f64)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            if n > 1 {
                assert_eq!(bits(&fast), bits(&slow), "n = {n}");
            }
        }
        Ok(())
    }
}
