//! λ-equitune (docs/methods.md#λ-equitune): a learned importance weight λ(g·x) per transformed copy.
//!
//! With per-copy outputs `u_g = ρ_Y(g)⁻¹ φ(z_g)`, where `z_g = M(g·x)` are the model's logits on
//! the copy and `φ` the output head (identity for logits, softmax for probabilities):
//!
//! * **paper form** (default, canonical choice 5): `M^λ(x) = Σ_g w_g u_g / Σ_g w_g` with
//!   `w_g = softplus(λ(g·x)) > 0`; computed as a softmax over the orbit of `log softplus λ`,
//!   which is exact and never divides by an underflowed sum;
//! * **official form** (`--lambda-form official`, the NeurIPS CLIP code): λ is a per-copy
//!   inverse temperature, `M^λ(x) = (1/|G|) Σ_g ρ_Y(g)⁻¹ φ(λ(g·x) · z_g)`, no positivity and no
//!   normalisation.
//!
//! Both are exactly equivariant: λ is evaluated on `g·x`, so transforming the input permutes
//! the terms of the sum. Equitune is the paper form with constant λ, equizero the weighted mean
//! with the indicator of the proxy's arg-min as weights ([`weighted_orbit_mean`]).
//!
//! The λ-network (`LambdaNet`) is the official `WeightNet`: Linear(d→100) → ReLU → Dropout(0.5)
//! → Linear(100→100) → Dropout(0.5) → Linear(100→1), on features of `g·x` from a frozen copy of
//! the pretrained backbone. Dropout is active only when a dropout RNG is passed (training);
//! evaluation is in eval mode. Nothing here knows about any particular model.

use super::Symmetry;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::Path;

/// How λ enters the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LambdaForm {
    /// Σ_g softplus(λ_g) u_g / Σ_g softplus(λ_g) (the paper's formula).
    #[default]
    Paper,
    /// mean_g ρ⁻¹ φ(λ_g · z_g): λ as a per-copy inverse temperature (the official CLIP code).
    Official,
}

impl LambdaForm {
    pub fn name(&self) -> &'static str {
        match self {
            LambdaForm::Paper => "paper",
            LambdaForm::Official => "official",
        }
    }
}

/// The output head φ applied to each copy's logits before averaging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Head {
    /// Average logits (CNN classifiers).
    Logits,
    /// Average class probabilities softmax(z) (CLIP, canonical choice 3).
    Softmax,
}

impl Head {
    pub fn apply(&self, z: &Tensor) -> Result<Tensor> {
        match self {
            Head::Logits => Ok(z.clone()),
            // `softmax_last_dim` has no backward pass in candle-nn 0.11: use the composed one
            Head::Softmax => Ok(candle_nn::ops::softmax(z, D::Minus1)?),
        }
    }
}

/// Builds the orbit batch `[|G|·B, ...]`: block `k` (rows `k·B..(k+1)·B`) is `g_k · x`.
pub fn orbit(sym: &dyn Symmetry, x: &Tensor) -> Result<Tensor> {
    let copies = (0..sym.order())
        .map(|g| sym.act_input(g, x))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&copies, 0)?)
}

/// Splits orbit-ordered outputs `[|G|·B, ...]` into the untransformed per-copy outputs
/// `ρ_Y(g)⁻¹ y_g`, one `[B, ...]` tensor per group element.
pub fn untransform(sym: &dyn Symmetry, y: &Tensor) -> Result<Vec<Tensor>> {
    let n = sym.order();
    let total = y.dim(0)?;
    if total % n != 0 {
        bail!(
            "{total} outputs cannot be split into {n} orbit copies: the model must keep the batch axis"
        );
    }
    let b = total / n;
    (0..n)
        .map(|g| sym.act_output(sym.inv(g), &y.narrow(0, g * b, b)?))
        .collect()
}

/// `Σ_g w_g u_g / Σ_g w_g` for per-copy outputs `u_g` (`[B, ...]` each) and non-negative
/// weights `w` of shape `[|G|, B]` (every column must have a positive sum).
pub fn weighted_orbit_mean(us: &[Tensor], w: &Tensor) -> Result<Tensor> {
    let (k, b) = w.dims2().context("weights must be [copies, batch]")?;
    if k != us.len() {
        bail!("{} weight rows for {} copies", k, us.len());
    }
    let sum = w.sum_keepdim(0)?;
    let norm = w.broadcast_div(&sum)?;
    weighted_sum(us, &norm, b)
}

/// `Σ_g a_g u_g` with per-copy, per-row coefficients `a` `[|G|, B]`.
fn weighted_sum(us: &[Tensor], a: &Tensor, b: usize) -> Result<Tensor> {
    let stacked = Tensor::stack(us, 0)?; // [K, B, ...]
    let mut shape = vec![us.len(), b];
    shape.extend(std::iter::repeat_n(1, stacked.rank() - 2));
    Ok(stacked
        .broadcast_mul(&a.to_dtype(stacked.dtype())?.reshape(shape)?)?
        .sum(0)?)
}

/// `log softplus(x)`, exact for very negative `x` (where softplus underflows) and with finite
/// gradients everywhere.
pub fn log_softplus(x: &Tensor) -> Result<Tensor> {
    let cut = -15f64;
    let xs = x.maximum(cut)?;
    // softplus(x) = max(x, 0) + log(1 + exp(−|x|))
    let sp = (xs.relu()? + (xs.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let small = x.lt(cut)?;
    Ok(small.where_cond(x, &sp.log()?)?)
}

/// Combines orbit-ordered logits `z` `[|G|·B, ...]` and raw λ values `[|G|·B]` into the
/// λ-equitune output `[B, ...]` (in the head's output space).
pub fn lambda_combine(
    sym: &dyn Symmetry,
    z: &Tensor,
    lambda: &Tensor,
    form: LambdaForm,
    head: Head,
) -> Result<Tensor> {
    let n = sym.order();
    let total = z.dim(0)?;
    if lambda.dims() != [total] {
        bail!(
            "λ has shape {:?}, expected [{total}] (one value per copy)",
            lambda.dims()
        );
    }
    let b = total / n;
    let lam = lambda.reshape((n, b))?;
    match form {
        LambdaForm::Paper => {
            let us = untransform(sym, &head.apply(z)?)?;
            let w = candle_nn::ops::softmax(&log_softplus(&lam)?, 0)?;
            weighted_sum(&us, &w, b)
        }
        LambdaForm::Official => {
            let mut shape = vec![total];
            shape.extend(std::iter::repeat_n(1, z.rank() - 1));
            let scaled = z.broadcast_mul(&lambda.reshape(shape)?)?;
            let us = untransform(sym, &head.apply(&scaled)?)?;
            super::mean_of(&us)
        }
    }
}

/// The λ-network: Linear(d→h) → ReLU → Dropout → Linear(h→h) → Dropout → Linear(h→1).
pub struct LambdaNet {
    pub varmap: VarMap,
    pub in_dim: usize,
    pub hidden: usize,
    pub dropout: f32,
    w: Vec<Tensor>,
}

const LAMBDA_PARAMS: [&str; 6] = [
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "fc3.weight",
    "fc3.bias",
];

impl LambdaNet {
    /// The official sizes: hidden 100, dropout 0.5.
    pub fn official(in_dim: usize, seed: u64, dev: &Device) -> Result<LambdaNet> {
        Self::new(in_dim, 100, 0.5, seed, dev)
    }

    /// A λ-net with PyTorch-default initialisation drawn from a ChaCha RNG seeded with `seed`.
    pub fn new(
        in_dim: usize,
        hidden: usize,
        dropout: f32,
        seed: u64,
        dev: &Device,
    ) -> Result<LambdaNet> {
        use rand::SeedableRng;
        if in_dim == 0 || hidden == 0 {
            bail!("λ-net sizes must be positive (features {in_dim}, hidden {hidden})");
        }
        if !(0.0..1.0).contains(&dropout) {
            bail!("λ-net dropout must be in [0, 1), got {dropout}");
        }
        let shapes: [(Vec<usize>, usize); 6] = [
            (vec![hidden, in_dim], in_dim),
            (vec![hidden], in_dim),
            (vec![hidden, hidden], hidden),
            (vec![hidden], hidden),
            (vec![1, hidden], hidden),
            (vec![1], hidden),
        ];
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut w = Vec::new();
        for (name, (shape, fan_in)) in LAMBDA_PARAMS.iter().zip(shapes) {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            vb.get_with_hints(shape.clone(), name, candle_nn::Init::Const(0.))?;
            let data = varmap.data().lock().unwrap();
            data[*name].set(&Tensor::from_vec(v, shape, dev)?)?;
            w.push(data[*name].as_tensor().clone());
        }
        Ok(LambdaNet {
            varmap,
            in_dim,
            hidden,
            dropout,
            w,
        })
    }

    /// Raw λ `[N]` for features `[N, d]`; dropout only with an RNG (training mode).
    pub fn forward(
        &self,
        feats: &Tensor,
        dropout: Option<&RefCell<rand_chacha::ChaCha8Rng>>,
    ) -> Result<Tensor> {
        let (_, d) = feats.dims2().context("λ-net features must be [N, d]")?;
        if d != self.in_dim {
            bail!("λ-net expects {}-d features, got {d}", self.in_dim);
        }
        let lin = |x: &Tensor, i: usize| -> Result<Tensor> {
            Ok(x.matmul(&self.w[2 * i].t()?)?
                .broadcast_add(&self.w[2 * i + 1])?)
        };
        let drop = |x: Tensor| -> Result<Tensor> {
            match dropout {
                Some(rng) if self.dropout > 0.0 => {
                    Ok(x.broadcast_mul(&dropout_mask(x.dims(), self.dropout, rng, x.device())?)?)
                }
                _ => Ok(x),
            }
        };
        let h = drop(lin(&feats.to_dtype(DType::F32)?, 0)?.relu()?)?;
        let h = drop(lin(&h, 1)?)?;
        Ok(lin(&h, 2)?.squeeze(D::Minus1)?)
    }

    /// The trainable variables.
    pub fn vars(&self) -> Vec<Var> {
        let data = self.varmap.data().lock().unwrap();
        LAMBDA_PARAMS.iter().map(|n| data[*n].clone()).collect()
    }

    /// Sets the last layer to a constant output `c` (weights 0, bias c): a constant λ.
    pub fn set_constant(&self, c: f32) -> Result<()> {
        let data = self.varmap.data().lock().unwrap();
        let w = &data["fc3.weight"];
        w.set(&w.zeros_like()?)?;
        data["fc3.bias"].set(&Tensor::new(&[c], w.device())?)?;
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::output::save_varmap_atomic(&self.varmap, path)
            .with_context(|| format!("saving λ-net {}", path.display()))
    }

    /// Loads λ-net weights saved by [`LambdaNet::save`] (shapes checked).
    pub fn load(&self, path: &Path) -> Result<()> {
        let st = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading λ-net {}", path.display()))?;
        let data = self.varmap.data().lock().unwrap();
        for n in LAMBDA_PARAMS {
            let t = st
                .get(n)
                .with_context(|| format!("λ-net file {} lacks {n}", path.display()))?;
            if t.dims() != data[n].dims() {
                bail!(
                    "λ-net file {}: {n} has shape {:?}, expected {:?}",
                    path.display(),
                    t.dims(),
                    data[n].dims()
                );
            }
            data[n].set(t)?;
        }
        Ok(())
    }
}

/// λ-equitune over a symmetry with a λ-net, a form and an output head.
pub struct LambdaEquitune<'a> {
    pub sym: &'a dyn Symmetry,
    pub net: &'a LambdaNet,
    pub form: LambdaForm,
    pub head: Head,
}

impl<'a> LambdaEquitune<'a> {
    /// The wrapped output `[B, ...]` from orbit-ordered logits `[|G|·B, ...]` and features
    /// `[|G|·B, d]` of the same copies (from the frozen feature network).
    pub fn combine(
        &self,
        z: &Tensor,
        feats: &Tensor,
        dropout: Option<&RefCell<rand_chacha::ChaCha8Rng>>,
    ) -> Result<Tensor> {
        let lam = self.net.forward(feats, dropout)?;
        lambda_combine(self.sym, z, &lam, self.form, self.head)
    }

    /// Builds the orbit of `x`, runs `logits` and `features` on it and combines.
    pub fn forward(
        &self,
        logits: &dyn super::BatchModel,
        features: &dyn super::BatchModel,
        x: &Tensor,
        dropout: Option<&RefCell<rand_chacha::ChaCha8Rng>>,
    ) -> Result<Tensor> {
        let xs = orbit(self.sym, x)?;
        let z = logits.forward(&xs)?;
        let f = features.forward(&xs)?;
        self.combine(&z, &f, dropout)
    }

    /// Model forward passes per input (the λ-net's feature passes counted separately).
    pub fn passes(&self) -> usize {
        self.sym.order()
    }
}

/// An inverted-dropout mask (values 0 or 1/(1−p)) drawn from a seeded RNG.
pub fn dropout_mask(
    shape: &[usize],
    p: f32,
    rng: &RefCell<rand_chacha::ChaCha8Rng>,
    dev: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let keep = 1.0 / (1.0 - p);
    let mut r = rng.borrow_mut();
    let v: Vec<f32> = (0..n)
        .map(|_| if r.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}
