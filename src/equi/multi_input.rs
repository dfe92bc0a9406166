//! Multi-input equivariance (docs/methods.md, "Multi-input equivariance"; the first design of the
//! multi-group paper): inputs
//! X₁…X_k, group Gᵢ acting on Xᵢ only, outputs Yᵢ transforming like Xᵢ.
//!
//! * Linear: `Y_i = Σ_j W_ij X_j` is equivariant to every (g₁,…,g_k) iff the diagonal blocks
//!   commute with ρᵢ and every off-diagonal block is *invariant in its input and symmetric in its
//!   output* (IS): `W_ij ρ_j(g) = W_ij`, `ρ_i(g) W_ij = W_ij`. [`MultiLinear`] parametrises
//!   exactly that space: `W_ii = (1/|Gᵢ|) Σ_g ρᵢ(g)⁻¹ A_ii ρᵢ(g)`, `W_ij = Pᵢ A_ij P_j` with
//!   `Pᵢ = (1/|Gᵢ|) Σ_g ρᵢ(g)`; its free parameters number
//!   `Σᵢ dim End_{Gᵢ}(ρᵢ) + Σ_{i≠j} dim Fix(ρᵢ)·dim Fix(ρ_j)`.
//! * Non-linear: `Yᵢ = M^Eqᵢ(Xᵢ) + Σ_{j≠i} M^IS_{ji}(X_j)`, with M^Eq an equitune branch over Gᵢ
//!   and `M^IS_{ji}(x) = S_{Gᵢ}((1/|G_j|) Σ_{g∈G_j} f_j(g·x))` ([`multi_input_forward`]): Σ|Gᵢ|
//!   backbone passes (× 2 with the IS branches) instead of Π|Gᵢ| for equitune over the product.
//!
//! Everything here consumes a [`Symmetry`]; nothing is model-specific.

use super::{mean_of, BatchModel, Symmetry};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// A finite group's linear action on ℝ^d: ρ(g) for every element (index 0 = identity), as
/// [d, d] tensors, with the inverse element indices.
#[derive(Clone, Debug)]
pub struct MatRep {
    pub dim: usize,
    pub mats: Vec<Tensor>,
    pub inverse: Vec<usize>,
}

impl MatRep {
    /// The matrices of `sym`'s input action on tensors of `shape` (without the batch axis),
    /// obtained by acting on the standard basis: column j of ρ(g) is g·e_j.
    pub fn of_input_action(sym: &dyn Symmetry, shape: &[usize], device: &Device) -> Result<Self> {
        let d: usize = shape.iter().product();
        let mut bshape = vec![d];
        bshape.extend_from_slice(shape);
        let basis = Tensor::eye(d, DType::F32, device)?.reshape(bshape)?;
        let mats = (0..sym.order())
            .map(|g| {
                // row j = g·e_j, so ρ(g) = rowsᵀ
                Ok(sym
                    .act_input(g, &basis)?
                    .reshape((d, d))?
                    .t()?
                    .contiguous()?)
            })
            .collect::<Result<Vec<_>>>()?;
        let inverse = (0..sym.order()).map(|g| sym.inv(g)).collect();
        Self::new(mats, inverse)
    }

    /// From matrices and inverse indices; checks that index 0 is the identity and the inverses.
    pub fn new(mats: Vec<Tensor>, inverse: Vec<usize>) -> Result<Self> {
        if mats.is_empty() || mats.len() != inverse.len() {
            bail!("a representation needs one matrix and one inverse index per element");
        }
        let dim = mats[0].dim(0)?;
        let eye = Tensor::eye(dim, DType::F32, mats[0].device())?;
        let err = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
        };
        if err(&mats[0], &eye)? > 1e-6 {
            bail!("element 0 of a representation must act as the identity");
        }
        for (g, &h) in inverse.iter().enumerate() {
            if err(&mats[g].matmul(&mats[h])?, &eye)? > 1e-5 {
                bail!("ρ({g})·ρ({h}) ≠ I: element {h} is not the inverse of {g}");
            }
        }
        Ok(Self { dim, mats, inverse })
    }

    pub fn order(&self) -> usize {
        self.mats.len()
    }

    /// Pᵢ = (1/|G|) Σ_g ρ(g), the projector onto the fixed subspace.
    pub fn projector(&self) -> Result<Tensor> {
        Ok((Tensor::stack(&self.mats, 0)?.sum(0)? / self.order() as f64)?)
    }

    /// dim Fix(ρ) = tr P = (1/|G|) Σ_g χ(g).
    pub fn fixed_dim(&self) -> Result<usize> {
        let mut t = 0f64;
        for m in &self.mats {
            t += trace(m)?;
        }
        Ok((t / self.order() as f64).round() as usize)
    }

    /// dim End_G(ρ) = (1/|G|) Σ_g χ(g) χ(g⁻¹), the dimension of the G-equivariant maps ρ → ρ.
    pub fn commutant_dim(&self) -> Result<usize> {
        let mut t = 0f64;
        for (g, m) in self.mats.iter().enumerate() {
            t += trace(m)? * trace(&self.mats[self.inverse[g]])?;
        }
        Ok((t / self.order() as f64).round() as usize)
    }

    /// (1/|G|) Σ_g ρ(g)⁻¹ A ρ(g): the projection of A onto the equivariant maps.
    pub fn twirl(&self, a: &Tensor) -> Result<Tensor> {
        let mut acc: Option<Tensor> = None;
        for (g, m) in self.mats.iter().enumerate() {
            let t = self.mats[self.inverse[g]].matmul(a)?.matmul(m)?;
            acc = Some(match acc {
                None => t,
                Some(s) => (s + t)?,
            });
        }
        Ok((acc.expect("non-empty group") / self.order() as f64)?)
    }
}

fn trace(m: &Tensor) -> Result<f64> {
    let d = m.dim(0)?;
    let v = m.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok((0..d).map(|i| v[i * d + i]).sum())
}

/// The linear multi-input layer: `Y_i = Σ_j W_ij X_j` with W in the equivariant (diagonal) /
/// IS (off-diagonal) space, parametrised from free blocks A_ij.
pub struct MultiLinear {
    pub reps: Vec<MatRep>,
    projectors: Vec<Tensor>,
}

impl MultiLinear {
    pub fn new(reps: Vec<MatRep>) -> Result<Self> {
        if reps.is_empty() {
            bail!("a multi-input layer needs at least one input");
        }
        let projectors = reps.iter().map(|r| r.projector()).collect::<Result<_>>()?;
        Ok(Self { reps, projectors })
    }

    pub fn dims(&self) -> Vec<usize> {
        self.reps.iter().map(|r| r.dim).collect()
    }

    /// Number of free parameters: Σᵢ dim End(ρᵢ) + Σ_{i≠j} dim Fix(ρᵢ)·dim Fix(ρ_j).
    pub fn free_parameters(&self) -> Result<usize> {
        let fix: Vec<usize> = self
            .reps
            .iter()
            .map(|r| r.fixed_dim())
            .collect::<Result<_>>()?;
        let mut n = 0;
        for (i, r) in self.reps.iter().enumerate() {
            n += r.commutant_dim()?;
            for (j, fj) in fix.iter().enumerate() {
                if i != j {
                    n += fix[i] * fj;
                }
            }
        }
        Ok(n)
    }

    /// Block W_ij from a free block A_ij ([d_i, d_j]); differentiable in A.
    pub fn block(&self, i: usize, j: usize, a: &Tensor) -> Result<Tensor> {
        let (di, dj) = a.dims2()?;
        if di != self.reps[i].dim || dj != self.reps[j].dim {
            bail!(
                "block ({i},{j}) must be {}×{}, got {di}×{dj}",
                self.reps[i].dim,
                self.reps[j].dim
            );
        }
        if i == j {
            self.reps[i].twirl(a)
        } else {
            Ok(self.projectors[i].matmul(a)?.matmul(&self.projectors[j])?)
        }
    }

    /// The full weight matrix [Σd, Σd] from free blocks `a[i][j]`.
    pub fn weight(&self, a: &[Vec<Tensor>]) -> Result<Tensor> {
        let k = self.reps.len();
        if a.len() != k || a.iter().any(|r| r.len() != k) {
            bail!("need a {k}×{k} grid of free blocks");
        }
        let rows = (0..k)
            .map(|i| {
                let blocks = (0..k)
                    .map(|j| self.block(i, j, &a[i][j]))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&blocks, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// `Y = W X` for inputs `xs[i]` of shape [B, d_i]; returns the outputs split per input.
    pub fn forward(&self, w: &Tensor, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        let x = Tensor::cat(xs, 1)?;
        let y = x.matmul(&w.t()?)?;
        let mut out = Vec::new();
        let mut off = 0;
        for d in self.dims() {
            out.push(y.narrow(1, off, d)?);
            off += d;
        }
        Ok(out)
    }

    /// Dimension of the span of {W(A)}: the rank of the linear map A ↦ W(A), measured on the
    /// basis of free blocks (a check of [`Self::free_parameters`]; small dimensions only).
    pub fn measured_dimension(&self) -> Result<usize> {
        let dims = self.dims();
        let dev = self.projectors[0].device().clone();
        let total: usize = dims.iter().sum();
        let mut rows: Vec<Vec<f64>> = Vec::new();
        let k = dims.len();
        for i in 0..k {
            for j in 0..k {
                for p in 0..dims[i] * dims[j] {
                    let mut v = vec![0f32; dims[i] * dims[j]];
                    v[p] = 1.0;
                    let a: Vec<Vec<Tensor>> = (0..k)
                        .map(|r| {
                            (0..k)
                                .map(|c| {
                                    if (r, c) == (i, j) {
                                        Tensor::from_vec(v.clone(), (dims[i], dims[j]), &dev)
                                    } else {
                                        Tensor::zeros((dims[r], dims[c]), DType::F32, &dev)
                                    }
                                })
                                .collect::<candle_core::Result<Vec<_>>>()
                        })
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    let w = self.weight(&a)?;
                    rows.push(w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
                }
            }
        }
        let _ = total;
        Ok(rank(rows, 1e-6))
    }
}

/// Rank by Gaussian elimination with partial pivoting.
fn rank(mut m: Vec<Vec<f64>>, tol: f64) -> usize {
    let cols = m.first().map_or(0, |r| r.len());
    let mut r = 0;
    for c in 0..cols {
        let Some(p) = (r..m.len()).max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs())) else {
            break;
        };
        if m[p][c].abs() <= tol {
            continue;
        }
        m.swap(r, p);
        let pivot = m[r].clone();
        for row in m.iter_mut().skip(r + 1) {
            let f = row[c] / pivot[c];
            if f != 0.0 {
                for (x, y) in row.iter_mut().zip(&pivot).skip(c) {
                    *x -= f * y;
                }
            }
        }
        r += 1;
        if r == m.len() {
            break;
        }
    }
    r
}

/// The group mean of a model over one input's group, as one batched call, accumulated in f64:
/// `(1/|G|) Σ_g ρ_Y(g)⁻¹ f(g·x)` with `invert_output` (the equitune branch M^Eq), else
/// `(1/|G|) Σ_g f(g·x)` (the IS branch, before its output symmetriser).
pub fn group_mean(
    sym: &dyn Symmetry,
    f: &dyn BatchModel,
    x: &Tensor,
    invert_output: bool,
) -> Result<Tensor> {
    Ok(group_means(&[sym], f, std::slice::from_ref(x), invert_output)?.remove(0))
}

/// [`group_mean`] of several inputs through one shared model, with every copy of every input in
/// **one** forward call (input-major, then group element): the batching of a multi-input network
/// whose inputs share their feature extractor.
pub fn group_means(
    syms: &[&dyn Symmetry],
    f: &dyn BatchModel,
    xs: &[Tensor],
    invert_output: bool,
) -> Result<Vec<Tensor>> {
    if syms.len() != xs.len() || xs.is_empty() {
        bail!("group means: {} groups for {} inputs", syms.len(), xs.len());
    }
    let mut copies = Vec::new();
    for (sym, x) in syms.iter().zip(xs) {
        for g in 0..sym.order() {
            copies.push(sym.act_input(g, x)?);
        }
    }
    let y = f.forward(&Tensor::cat(&copies, 0)?)?;
    let mut out = Vec::with_capacity(xs.len());
    let mut off = 0;
    for (sym, x) in syms.iter().zip(xs) {
        let b = x.dim(0)?;
        let ys = (0..sym.order())
            .map(|g| {
                let yg = y.narrow(0, off + g * b, b)?;
                if invert_output {
                    sym.act_output(sym.inv(g), &yg)
                } else {
                    Ok(yg)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        off += sym.order() * b;
        out.push(mean_of(&ys)?);
    }
    Ok(out)
}

/// `S_G(y) = (1/|G|) Σ_g ρ_Y(g) y`: makes an output fixed by G.
pub fn symmetrize_output(sym: &dyn Symmetry, y: &Tensor) -> Result<Tensor> {
    if sym.invariant_output() {
        return Ok(y.clone());
    }
    let ys = (0..sym.order())
        .map(|g| sym.act_output(g, y))
        .collect::<Result<Vec<_>>>()?;
    mean_of(&ys)
}

/// The non-linear multi-input network: `Yᵢ = M^Eqᵢ(Xᵢ) + Σ_{j≠i} S_{Gᵢ}(u_j)` with
/// `M^Eqᵢ` the equitune branch of `eq[i]` over Gᵢ and `u_j = (1/|G_j|) Σ_g is[j](g·X_j)` the IS
/// feature of input j (computed once, shared by every i ≠ j). The IS features must already be in
/// Yᵢ's space (same shape as the M^Eq outputs). Backbone passes: Σ|Gᵢ| (+ Σ|G_j| with IS).
pub fn multi_input_forward(
    syms: &[&dyn Symmetry],
    eq: &[&dyn BatchModel],
    is: Option<&[&dyn BatchModel]>,
    xs: &[Tensor],
) -> Result<Vec<Tensor>> {
    let k = syms.len();
    if eq.len() != k || xs.len() != k || is.is_some_and(|f| f.len() != k) {
        bail!(
            "multi-input network: {k} groups but {} models / {} inputs",
            eq.len(),
            xs.len()
        );
    }
    let ys = (0..k)
        .map(|i| group_mean(syms[i], eq[i], &xs[i], true))
        .collect::<Result<Vec<_>>>()?;
    let us = match is {
        Some(is) => Some(
            (0..k)
                .map(|j| group_mean(syms[j], is[j], &xs[j], false))
                .collect::<Result<Vec<_>>>()?,
        ),
        None => None,
    };
    add_is_features(syms, ys, us)
}

/// [`multi_input_forward`] when every input shares one equitune model `eq` (and one IS model):
/// each branch's copies of all inputs go through one forward call ([`group_means`]).
pub fn multi_input_forward_shared(
    syms: &[&dyn Symmetry],
    eq: &dyn BatchModel,
    is: Option<&dyn BatchModel>,
    xs: &[Tensor],
) -> Result<Vec<Tensor>> {
    let ys = group_means(syms, eq, xs, true)?;
    let us = match is {
        Some(is) => Some(group_means(syms, is, xs, false)?),
        None => None,
    };
    add_is_features(syms, ys, us)
}

/// `Yᵢ = ysᵢ + Σ_{j≠i} S_{Gᵢ}(u_j)`.
fn add_is_features(
    syms: &[&dyn Symmetry],
    mut ys: Vec<Tensor>,
    us: Option<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    if let Some(us) = us {
        for i in 0..ys.len() {
            for (j, u) in us.iter().enumerate() {
                if j != i {
                    ys[i] = (&ys[i] + symmetrize_output(syms[i], u)?)?;
                }
            }
        }
    }
    Ok(ys)
}

/// Black-box equitune of a k-input model over the product G₁ × … × G_k acting factor-wise, for an
/// invariant output: `(1/Π|Gᵢ|) Σ_{(g₁,…,g_k)} f(g₁·x₁, …, g_k·x_k)`. It costs Π|Gᵢ| calls of the
/// whole model — the cost the multi-input layers above avoid (Σ|Gᵢ|). Elements are enumerated in
/// mixed radix with input 0 fastest; the sum is accumulated in the model's dtype.
pub fn product_group_mean(
    syms: &[&dyn Symmetry],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    xs: &[Tensor],
) -> Result<Tensor> {
    if syms.len() != xs.len() || xs.is_empty() {
        bail!(
            "product equitune: {} groups for {} inputs",
            syms.len(),
            xs.len()
        );
    }
    let total: usize = syms.iter().map(|s| s.order()).product();
    let mut acc: Option<Tensor> = None;
    for e in 0..total {
        let mut code = e;
        let moved = xs
            .iter()
            .zip(syms)
            .map(|(x, s)| {
                let g = code % s.order();
                code /= s.order();
                s.act_input(g, x)
            })
            .collect::<Result<Vec<_>>>()?;
        let y = f(&moved)?;
        acc = Some(match acc {
            None => y,
            Some(a) => (a + y)?,
        });
    }
    Ok((acc.expect("a group has at least one element") / total as f64)?)
}
