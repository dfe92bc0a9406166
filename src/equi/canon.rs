//! Learned canonicalisation (docs/methods.md#learned-canonicalisation): an exactly invariant /
//! equivariant wrapper that costs **one** pass of the big model.
//!
//! A small scorer `s` (any function from an input to one number) is made equivariant by
//! evaluating it on the orbit: the score of group element `g` for input `x` is
//! `σ_g(x) = s(g⁻¹·x)`. Transforming the input permutes the scores exactly,
//! `σ_g(h·x) = s(g⁻¹h·x) = σ_{h⁻¹g}(x)`, so the chosen element `c(x) = argmax_g σ_g(x)` satisfies
//! `c(h·x) = h·c(x)`. The big model sees the canonical input `c(x)⁻¹·x` (the same tensor for
//! every element of the orbit of `x`) once, and its output is transformed back:
//! `F(x) = ρ_Y(c(x)) M(c(x)⁻¹·x)`.
//!
//! **Ties.** Elements whose score is within [`CANON_TIE_TOL`] of the maximum form a tie set
//! `T(x)`, which the permutation property maps to `T(h·x) = h·T(x)`; the output is the mean over
//! `T(x)` of `ρ_Y(t) M(t⁻¹·x)`, exactly equivariant whatever the order of the elements (a
//! tie-break by index would not be). Ties happen for inputs fixed by some group element (their
//! canonical inputs then coincide); each extra tied element costs one more big-model row.
//!
//! **Training** goes through the argmax with the straight-through estimator of Kaba et al.: the
//! canonical input is `Σ_g w_g · g⁻¹x` with `w = hard + p − stopgrad(p)`, `hard` the (tie-averaged)
//! one-hot choice and `p = softmax(σ/τ)`: the forward value is exactly the hard canonical input,
//! the gradient reaches the scorer through `p`. The **canonicalisation prior** (Mondal et al.) is
//! the cross-entropy of `softmax(σ(x))` against the identity on upright training images, so the
//! pretrained model keeps seeing the orientation it was trained on.
//!
//! The scorer here ([`CanonNet`]) is a tiny CNN: block average-pooling to a side of at most
//! `resolution` (non-overlapping blocks commute with the D4 actions), conv 3×3 → ReLU →
//! 2×2 max-pool → conv 3×3 → ReLU → linear → one score. It is deliberately not invariant (it
//! must tell orientations apart); the orbit evaluation is what makes the scores equivariant.

use super::{BatchModel, Symmetry};
use crate::models::cnn::{check_image_batch, conv3x3, max_pool2};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Relative tolerance under which two canonicaliser scores count as tied.
pub const CANON_TIE_TOL: f32 = 1e-6;

/// The canonicaliser's scorer and its prior-only phase (`equirun cnn`, `equirun clip`).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CanonOpts {
    /// canon: channels of the scorer's two 3×3 convolutions.
    #[arg(long, default_value_t = 8, value_parser = crate::cli::opts::at_least_one)]
    pub canon_width: usize,
    /// canon: the scorer block-averages its input down to a side of at most this many pixels.
    #[arg(long, default_value_t = 16, value_parser = crate::cli::opts::at_least_one)]
    pub canon_resolution: usize,
    /// canon: prior-only phase (scorer alone, upright training images): rounds.
    #[arg(long, default_value_t = 2)]
    pub canon_rounds: usize,
    /// canon: prior-only phase: iterations per round.
    #[arg(long, default_value_t = 100)]
    pub canon_iters: usize,
    /// canon: prior-only phase: AdamW learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = positive)]
    pub canon_lr: f64,
    /// canon: prior-only phase: batch size (upright images).
    #[arg(long, default_value_t = 32, value_parser = crate::cli::opts::at_least_one)]
    pub canon_batch_size: usize,
}

/// The canonicaliser's finetuning through the task loss (`equirun cnn`).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CanonFinetuneOpts {
    /// canon: weight of the canonicalisation prior (cross-entropy of the scores against the
    /// identity on upright training images) next to the task loss when finetuning (≥ 0).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    pub canon_prior_weight: f64,
    /// canon: temperature of the softmax relaxation through which the straight-through
    /// estimator passes gradients to the scorer (> 0).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    pub canon_temperature: f64,
}

impl Default for CanonFinetuneOpts {
    /// The command-line defaults.
    fn default() -> Self {
        Self {
            canon_prior_weight: 1.0,
            canon_temperature: 1.0,
        }
    }
}

impl Default for CanonOpts {
    /// The command-line defaults.
    fn default() -> Self {
        Self {
            canon_width: 8,
            canon_resolution: 16,
            canon_rounds: 2,
            canon_iters: 100,
            canon_lr: 1e-3,
            canon_batch_size: 32,
        }
    }
}

fn finite(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("'{s}' is not a finite number")),
    }
}

fn non_negative(s: &str) -> std::result::Result<f64, String> {
    let x = finite(s)?;
    if x < 0.0 {
        return Err(format!("{x} must be ≥ 0"));
    }
    Ok(x)
}

fn positive(s: &str) -> std::result::Result<f64, String> {
    let x = finite(s)?;
    if x <= 0.0 {
        return Err(format!("{x} must be > 0"));
    }
    Ok(x)
}

impl CanonOpts {
    /// The validated prior-only schedule (AdamW).
    pub fn schedule(&self) -> Result<crate::train::Schedule> {
        crate::train::Schedule::from_flags(
            self.canon_rounds,
            self.canon_iters,
            crate::train::OptimKind::Adamw,
            self.canon_lr,
            0.0,
            0.0,
            "canonicaliser prior phase (--canon-lr)",
        )
    }

    /// The scorer's architecture for inputs with `channels` channels and side `side`.
    pub fn config(&self, channels: usize, side: usize) -> Result<CanonConfig> {
        CanonConfig::new(channels, side, self.canon_width, self.canon_resolution)
    }
}

/// The scorer's sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanonConfig {
    pub in_channels: usize,
    /// Side of the (square) input.
    pub image_size: usize,
    /// Block-average factor: the scorer works at `image_size / pool`.
    pub pool: usize,
    pub width: usize,
}

const CANON_PARAMS: [&str; 6] = [
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc.weight",
    "fc.bias",
];

impl CanonConfig {
    /// The smallest block factor that divides `side` and brings it to at most `resolution`.
    pub fn new(channels: usize, side: usize, width: usize, resolution: usize) -> Result<Self> {
        if channels == 0 || side == 0 || width == 0 || resolution == 0 {
            bail!(
                "canonicaliser sizes must be positive (channels {channels}, side {side}, \
                 --canon-width {width}, --canon-resolution {resolution})"
            );
        }
        let pool = (1..=side)
            .find(|k| side % k == 0 && side / k <= resolution)
            .unwrap_or(side);
        Ok(Self {
            in_channels: channels,
            image_size: side,
            pool,
            width,
        })
    }
    /// Side at which the convolutions run.
    pub fn side(&self) -> usize {
        self.image_size / self.pool
    }
    /// Side after the (optional) 2×2 max-pool (skipped for an odd side).
    fn pooled_side(&self) -> usize {
        let s = self.side();
        if s % 2 == 0 {
            s / 2
        } else {
            s
        }
    }
    /// (name, shape, fan_in) of every parameter, in [`CANON_PARAMS`] order.
    pub fn params(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let (c, w) = (self.in_channels, self.width);
        let flat = w * self.pooled_side() * self.pooled_side();
        let shapes = [
            (vec![w, c, 3, 3], c * 9),
            (vec![w], c * 9),
            (vec![w, w, 3, 3], w * 9),
            (vec![w], w * 9),
            (vec![1, flat], flat),
            (vec![1], flat),
        ];
        CANON_PARAMS
            .iter()
            .zip(shapes)
            .map(|(n, (s, f))| (*n, s, f))
            .collect()
    }
    pub fn n_params(&self) -> usize {
        self.params()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }
    /// Multiply-accumulates of one scorer pass (one orbit element).
    pub fn macs(&self) -> usize {
        let (c, w, s, p) = (
            self.in_channels,
            self.width,
            self.side(),
            self.pooled_side(),
        );
        s * s * 9 * c * w + p * p * 9 * w * w + p * p * w
    }
}

/// The tiny CNN scorer: `[N, C, S, S]` → `[N]` scores.
pub struct CanonNet {
    pub config: CanonConfig,
    pub varmap: VarMap,
    w: Vec<Tensor>,
}

impl CanonNet {
    /// A scorer with PyTorch-default initialisation drawn from a ChaCha RNG seeded with `seed`.
    pub fn new(config: CanonConfig, seed: u64, dev: &Device) -> Result<CanonNet> {
        use rand::SeedableRng;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut w = Vec::new();
        for (name, shape, fan_in) in config.params() {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            vb.get_with_hints(shape.clone(), name, candle_nn::Init::Const(0.))?;
            let data = varmap.data().lock().unwrap();
            data[name].set(&Tensor::from_vec(v, shape, dev)?)?;
            w.push(data[name].as_tensor().clone());
        }
        Ok(CanonNet { config, varmap, w })
    }

    /// Scores `[N]` of inputs `[N, C, S, S]` ([`Scorer::reduce`] then [`Scorer::score_reduced`]).
    pub fn score(&self, x: &Tensor) -> Result<Tensor> {
        self.score_reduced(&self.reduce(x)?)
    }

    pub fn vars(&self) -> Vec<Var> {
        let data = self.varmap.data().lock().unwrap();
        CANON_PARAMS.iter().map(|n| data[*n].clone()).collect()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::output::save_varmap_atomic(&self.varmap, path)
            .with_context(|| format!("saving canonicaliser {}", path.display()))
    }
}

impl Scorer for CanonNet {
    /// Block average to `[N, C, side, side]` on the CPU, summed in f64 (exact for these sums, so
    /// the result does not depend on the summation order, which a rotation or flip changes:
    /// `reduce(g·x) = g·reduce(x)` bit for bit).
    fn reduce(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        check_image_batch(
            x,
            c.in_channels,
            c.image_size,
            "canonicaliser expects inputs",
        )?;
        let dims = x.dims();
        let x = x.to_device(&Device::Cpu)?;
        if c.pool == 1 {
            return Ok(x.to_dtype(DType::F32)?);
        }
        let s = c.side();
        let sum = x
            .to_dtype(DType::F64)?
            .reshape((dims[0], c.in_channels, s, c.pool, s, c.pool))?
            .sum(5)?
            .sum(3)?;
        Ok((sum / (c.pool * c.pool) as f64)?.to_dtype(DType::F32)?)
    }

    /// The tiny CNN on reduced inputs `[N, C, side, side]` (CPU; scores go back to the input's
    /// device in [`Canon`]).
    fn score_reduced(&self, r: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let s = c.side();
        let dims = r.dims();
        if dims.len() != 4 || dims[1] != c.in_channels || dims[2] != s || dims[3] != s {
            bail!(
                "canonicaliser scorer expects reduced inputs [N, {}, {s}, {s}], got {:?}",
                c.in_channels,
                dims
            );
        }
        let nhwc = r
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        let h = conv3x3(&nhwc, &self.w[0], &self.w[1])?.relu()?;
        let h = if s % 2 == 0 { max_pool2(&h)? } else { h };
        let h = conv3x3(&h, &self.w[2], &self.w[3])?.relu()?;
        let h = h.flatten_from(1)?;
        Ok(h.matmul(&self.w[4].t()?)?
            .broadcast_add(&self.w[5])?
            .squeeze(D::Minus1)?)
    }
}

/// A canonicaliser's scorer: one number per input, made equivariant by [`Canon`].
pub trait Scorer {
    /// A map applied once per input before the orbit is built; it must commute with the group
    /// action exactly (`reduce(g·x) = g·reduce(x)`). Default: the identity.
    fn reduce(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    /// One score per reduced input: `[N, ...]` → `[N]`.
    fn score_reduced(&self, r: &Tensor) -> Result<Tensor>;
}

/// Any [`BatchModel`] that returns one number per input is a scorer (no reduction).
pub struct PlainScorer<'a>(pub &'a dyn BatchModel);

impl Scorer for PlainScorer<'_> {
    fn score_reduced(&self, r: &Tensor) -> Result<Tensor> {
        self.0.forward(r)
    }
}

/// What a canonicalised evaluation did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CanonStats {
    /// Inputs.
    pub inputs: usize,
    /// Rows the big model saw (inputs + extra tied elements).
    pub big_rows: usize,
    /// Inputs whose chosen element is the identity.
    pub identity_picks: usize,
}

/// The canonicalisation wrapper over a symmetry and a scorer (`[N, ...]` → `[N]`).
pub struct Canon<'a> {
    pub sym: &'a dyn Symmetry,
    pub scorer: &'a dyn Scorer,
}

impl<'a> Canon<'a> {
    /// `[|G|·B, ...]` with block `g` = `g⁻¹·x`.
    pub fn inverse_orbit(&self, x: &Tensor) -> Result<Tensor> {
        let copies = (0..self.sym.order())
            .map(|g| self.sym.act_input(self.sym.inv(g), x))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&copies, 0)?)
    }

    /// Scores `[B, |G|]` (column `g` = `s(g⁻¹·x)`) from the inverse orbit of reduced inputs.
    fn scores_of_orbit(&self, orbit: &Tensor, b: usize) -> Result<Tensor> {
        let n = self.sym.order();
        let s = self.scorer.score_reduced(orbit)?;
        if s.dims() != [n * b] {
            bail!(
                "the canonicaliser's scorer returned shape {:?} for {} inputs (one score each expected)",
                s.dims(),
                n * b
            );
        }
        Ok(s.reshape((n, b))?.t()?.contiguous()?)
    }

    /// The equivariant scores `[B, |G|]`: `σ_g(x) = s(g⁻¹·x)` (on the scorer's device).
    pub fn scores(&self, x: &Tensor) -> Result<Tensor> {
        let r = self.scorer.reduce(x)?;
        self.scores_of_orbit(&self.inverse_orbit(&r)?, x.dim(0)?)
    }

    /// The exactly equivariant output `[B, ...]`, with one big-model call.
    pub fn forward(&self, model: &dyn BatchModel, x: &Tensor) -> Result<(Tensor, CanonStats)> {
        let scores = self.scores(x)?;
        self.finish(model, x, &scores)
    }

    /// As [`Canon::forward`] with given scores `[B, |G|]` (equivariant only if the scores
    /// permute with the group; the tests use it to show that a plain scorer is not).
    pub fn forward_with_scores(
        &self,
        model: &dyn BatchModel,
        x: &Tensor,
        scores: &Tensor,
    ) -> Result<(Tensor, CanonStats)> {
        self.finish(model, x, scores)
    }

    /// `t⁻¹·x_j` for every `(j, t)` in `rows`, in that order: each element acts once on the
    /// inputs that chose it.
    fn canonical_inputs(&self, x: &Tensor, rows: &[(usize, usize)]) -> Result<Tensor> {
        let dev = x.device();
        let mut parts = Vec::new();
        let mut pos = vec![0u32; rows.len()];
        let mut offset = 0;
        for t in 0..self.sym.order() {
            let rs: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].1 == t).collect();
            if rs.is_empty() {
                continue;
            }
            let js: Vec<u32> = rs.iter().map(|&r| rows[r].0 as u32).collect();
            let xt = x.index_select(&Tensor::from_vec(js, rs.len(), dev)?, 0)?;
            parts.push(self.sym.act_input(self.sym.inv(t), &xt)?);
            for (k, &r) in rs.iter().enumerate() {
                pos[r] = (offset + k) as u32;
            }
            offset += rs.len();
        }
        let all = Tensor::cat(&parts, 0)?;
        if pos.iter().enumerate().all(|(r, &p)| p as usize == r) {
            return Ok(all);
        }
        Ok(all.index_select(&Tensor::from_vec(pos, rows.len(), dev)?, 0)?)
    }

    fn finish(
        &self,
        model: &dyn BatchModel,
        x: &Tensor,
        scores: &Tensor,
    ) -> Result<(Tensor, CanonStats)> {
        let b = x.dim(0)?;
        let ties = tie_sets(scores)?;
        let mut owner = Vec::new();
        for (j, ts) in ties.iter().enumerate() {
            for &t in ts {
                owner.push((j, t));
            }
        }
        let stats = CanonStats {
            inputs: b,
            big_rows: owner.len(),
            identity_picks: ties.iter().filter(|t| t.contains(&0)).count(),
        };
        let canon_in = self.canonical_inputs(x, &owner)?;
        let y = model.forward(&canon_in)?;
        let idx = &owner;
        if y.dim(0)? != idx.len() {
            bail!(
                "model returned {} outputs for {} inputs (shape {:?}); a BatchModel must keep the batch axis",
                y.dim(0)?,
                idx.len(),
                y.dims()
            );
        }
        if idx.len() == b && self.sym.invariant_output() {
            return Ok((y, stats));
        }
        let mut rows: Vec<Vec<Tensor>> = vec![Vec::new(); b];
        for (r, &(j, t)) in owner.iter().enumerate() {
            rows[j].push(self.sym.act_output(t, &y.narrow(0, r, 1)?)?);
        }
        let rows = rows
            .iter()
            .map(|r| super::mean_of(r))
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::cat(&rows, 0)?, stats))
    }

    /// The training output (straight-through through the argmax) and the scores `[B, |G|]`.
    /// The forward value equals [`Canon::forward`]'s for inputs without ties.
    pub fn train_forward(
        &self,
        model: &dyn BatchModel,
        x: &Tensor,
        temperature: f64,
    ) -> Result<(Tensor, Tensor)> {
        let b = x.dim(0)?;
        let n = self.sym.order();
        let orbit = self.inverse_orbit(x)?;
        let scores = self.scores(x)?.to_device(x.device())?;
        let hard = hard_weights(&tie_sets(&scores)?, n, scores.device())?;
        let p = candle_nn::ops::softmax(&(&scores / temperature)?, 1)?;
        let w = (hard + (&p - p.detach())?)?.to_dtype(orbit.dtype())?; // [B, G]
        let mut shape = vec![n, b];
        shape.extend(std::iter::repeat_n(1, x.rank() - 1));
        let wg = w.t()?.contiguous()?.reshape(shape.clone())?; // [G, B, 1, ...]
        let mut full = vec![n];
        full.extend_from_slice(x.dims());
        let canon_in = orbit.reshape(full)?.broadcast_mul(&wg)?.sum(0)?;
        let y = model.forward(&canon_in)?;
        if self.sym.invariant_output() {
            return Ok((y, scores));
        }
        let mut yshape = vec![b];
        yshape.extend(std::iter::repeat_n(1, y.rank() - 1));
        let mut acc: Option<Tensor> = None;
        for g in 0..n {
            let term = self
                .sym
                .act_output(g, &y)?
                .broadcast_mul(&w.narrow(1, g, 1)?.reshape(yshape.clone())?)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        Ok((acc.unwrap(), scores))
    }
}

/// The canonicalisation prior: mean cross-entropy of `softmax(scores)` `[B, |G|]` against the
/// element each input should be mapped from (the identity, 0, for upright inputs).
pub fn prior_loss(scores: &Tensor, targets: &[usize]) -> Result<Tensor> {
    let t = Tensor::from_vec(
        targets.iter().map(|&t| t as u32).collect::<Vec<_>>(),
        targets.len(),
        scores.device(),
    )?;
    Ok(candle_nn::loss::cross_entropy(
        &scores.to_dtype(DType::F32)?,
        &t,
    )?)
}

/// Per row of `[B, K]` scores, the elements tied with the maximum (within [`CANON_TIE_TOL`]).
pub fn tie_sets(scores: &Tensor) -> Result<Vec<Vec<usize>>> {
    let v = scores
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    v.iter()
        .enumerate()
        .map(|(j, row)| {
            if row.iter().any(|s| !s.is_finite()) {
                bail!("canonicaliser score of input {j} is not finite ({row:?})");
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let tol = CANON_TIE_TOL * max.abs().max(1.0);
            Ok((0..row.len()).filter(|&k| row[k] >= max - tol).collect())
        })
        .collect()
}

/// `[B, K]` weights: 1/|T_j| on the tie set of row j, 0 elsewhere.
fn hard_weights(ties: &[Vec<usize>], k: usize, dev: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; ties.len() * k];
    for (j, ts) in ties.iter().enumerate() {
        for &t in ts {
            v[j * k + t] = 1.0 / ts.len() as f32;
        }
    }
    Ok(Tensor::from_vec(v, (ties.len(), k), dev)?)
}
