//! A linear probe: multinomial logistic regression on fixed features, trained by equirun itself
//! (full-batch accelerated gradient descent in f64, deterministic), with per-feature
//! standardisation, L2 regularisation chosen on a validation split, saved as safetensors.
//!
//! Prediction always uses the stored f32 parameters, so a head predicts the same labels before
//! and after a save/load round trip.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// A trained head: `logits = W · ((x − mean) / std) + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearProbe {
    pub classes: usize,
    pub dim: usize,
    /// [classes × dim], row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Free-form metadata saved with the head (training recipe, accuracies).
    pub metadata: HashMap<String, String>,
}

/// Training options.
#[derive(Clone, Debug)]
pub struct ProbeTrain {
    /// L2 coefficient on W (per-sample loss + l2/2 ‖W‖²).
    pub l2: f64,
    pub iterations: usize,
}

impl LinearProbe {
    /// Logits of one feature vector.
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let z: Vec<f32> = x
            .iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((v, m), s)| (v - m) / s)
            .collect();
        (0..self.classes)
            .map(|c| {
                let w = &self.weight[c * self.dim..(c + 1) * self.dim];
                // f64 accumulation in a fixed order: deterministic.
                let dot: f64 = w.iter().zip(&z).map(|(a, b)| *a as f64 * *b as f64).sum();
                (dot + self.bias[c] as f64) as f32
            })
            .collect()
    }

    /// Arg-max class (ties → lowest index).
    pub fn predict(&self, x: &[f32]) -> usize {
        argmax(&self.logits(x))
    }

    /// Trains on `xs` (rows of equal length) with labels in `0..classes`.
    pub fn train(xs: &[Vec<f32>], ys: &[usize], classes: usize, opt: &ProbeTrain) -> Result<Self> {
        let n = xs.len();
        if n == 0 {
            bail!("no training examples for the probe");
        }
        let d = xs[0].len();
        if xs.iter().any(|x| x.len() != d) {
            bail!("probe features have different lengths");
        }
        if let Some(y) = ys.iter().find(|&&y| y >= classes) {
            bail!("probe label {y} out of range 0..{classes}");
        }
        // standardisation statistics
        let mut mean = vec![0f64; d];
        for x in xs {
            for (m, v) in mean.iter_mut().zip(x) {
                *m += *v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0f64; d];
        for x in xs {
            for ((s, v), m) in var.iter_mut().zip(x).zip(&mean) {
                *s += (*v as f64 - m).powi(2);
            }
        }
        let std: Vec<f32> = var
            .iter()
            .map(|s| ((s / n as f64).sqrt().max(1e-6)) as f32)
            .collect();
        let mean: Vec<f32> = mean.iter().map(|m| *m as f32).collect();
        let z: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| {
                x.iter()
                    .zip(&mean)
                    .zip(&std)
                    .map(|((v, m), s)| ((v - m) / s) as f64)
                    .collect()
            })
            .collect();
        // Lipschitz constant of the gradient: 0.5 · λmax(ZᵀZ/n) + l2 (power iteration).
        let mut v = vec![1.0 / (d as f64).sqrt(); d];
        let mut lmax = 0.0;
        for _ in 0..50 {
            let mut w = vec![0f64; d];
            for row in &z {
                let dot: f64 = row.iter().zip(&v).map(|(a, b)| a * b).sum();
                for (wi, ri) in w.iter_mut().zip(row) {
                    *wi += dot * ri / n as f64;
                }
            }
            lmax = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if lmax == 0.0 {
                break;
            }
            v = w.iter().map(|x| x / lmax).collect();
        }
        let lr = 1.0 / (0.5 * (lmax + 1.0) + opt.l2);
        let p = classes * (d + 1);
        let mut theta = vec![0f64; p]; // W row-major then b
        let mut prev = theta.clone();
        let mut grad = vec![0f64; p];
        for it in 0..opt.iterations {
            // Nesterov look-ahead point
            let mom = it as f64 / (it as f64 + 3.0);
            let look: Vec<f64> = theta
                .iter()
                .zip(&prev)
                .map(|(t, q)| t + mom * (t - q))
                .collect();
            grad.iter_mut().for_each(|g| *g = 0.0);
            for (row, &y) in z.iter().zip(ys) {
                let logits: Vec<f64> = (0..classes)
                    .map(|c| {
                        let w = &look[c * d..(c + 1) * d];
                        w.iter().zip(row).map(|(a, b)| a * b).sum::<f64>() + look[classes * d + c]
                    })
                    .collect();
                let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
                let s: f64 = e.iter().sum();
                for c in 0..classes {
                    let r = e[c] / s - (c == y) as u8 as f64;
                    let g = &mut grad[c * d..(c + 1) * d];
                    for (gi, ri) in g.iter_mut().zip(row) {
                        *gi += r * ri / n as f64;
                    }
                    grad[classes * d + c] += r / n as f64;
                }
            }
            for (g, w) in grad[..classes * d].iter_mut().zip(&look[..classes * d]) {
                *g += opt.l2 * w;
            }
            prev = std::mem::replace(
                &mut theta,
                look.iter().zip(&grad).map(|(l, g)| l - lr * g).collect(),
            );
        }
        Ok(Self {
            classes,
            dim: d,
            weight: theta[..classes * d].iter().map(|x| *x as f32).collect(),
            bias: theta[classes * d..].iter().map(|x| *x as f32).collect(),
            mean,
            std,
            metadata: HashMap::new(),
        })
    }

    /// Writes the head as safetensors (`weight`, `bias`, `mean`, `std`, f32) with its metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (w, b, m, s) = (
            bytes(&self.weight),
            bytes(&self.bias),
            bytes(&self.mean),
            bytes(&self.std),
        );
        let views = vec![
            (
                "weight",
                TensorView::new(Dtype::F32, vec![self.classes, self.dim], &w)?,
            ),
            ("bias", TensorView::new(Dtype::F32, vec![self.classes], &b)?),
            ("mean", TensorView::new(Dtype::F32, vec![self.dim], &m)?),
            ("std", TensorView::new(Dtype::F32, vec![self.dim], &s)?),
        ];
        let data = safetensors::serialize(views, Some(self.metadata.clone()))?;
        crate::output::write_bytes_atomic(path, &data)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let data = std::fs::read(path)
            .with_context(|| format!("reading probe head {}", path.display()))?;
        let bad = |e: String| {
            anyhow!(
                "{} is not a probe head written by `equirun regard train` ({e})",
                path.display()
            )
        };
        let st = SafeTensors::deserialize(&data).map_err(|e| bad(e.to_string()))?;
        let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!("{name} is not f32")));
            }
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let (ws, weight) = get("weight")?;
        let (_, bias) = get("bias")?;
        let (_, mean) = get("mean")?;
        let (_, std) = get("std")?;
        if ws.len() != 2 || bias.len() != ws[0] || mean.len() != ws[1] || std.len() != ws[1] {
            return Err(bad("inconsistent tensor shapes".into()));
        }
        let (_, meta) = SafeTensors::read_metadata(&data).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            classes: ws[0],
            dim: ws[1],
            weight,
            bias,
            mean,
            std,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }
}

/// Index of the largest value; ties → the lowest index.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}
