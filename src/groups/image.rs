//! Image symmetries on NCHW tensors: subgroups of the dihedral group D4 of the square.
//!
//! An element is a signed permutation matrix `A` acting on centred pixel coordinates `(y, x)`
//! (row, column; row 0 at the top). The transformed image is `(g·x)[p] = x[A⁻¹ p]`, a proper
//! left action: `(gh)·x = g·(h·x)`.
//!
//! Named factors (docs/methods.md, "Canonical choices and why"):
//! * `rot90`  — k·90° counter-clockwise turns, k = 0..3 (`rot90^1`: out[r][c] = in[c][N−1−r]);
//! * `hflip`  — reverse the width axis;
//! * `vflip`  — reverse the height axis; `flip` is an alias of `vflip` (multi-group CLIP code);
//! * `rot180` — {e, 180° turn};
//! * `id`     — the trivial group.
//!
//! Products are written with `x`: `rot90xflip` = rot90 × vflip = D4 (8 elements).

use super::{Factor, FiniteGroup, GroupElement};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

/// A D4 element: `out[p] = in[A⁻¹ p]` with `A` = `m` (row-major 2×2, entries in {−1,0,1}).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct D4 {
    pub m: [[i32; 2]; 2],
}

impl D4 {
    pub const IDENTITY: D4 = D4 {
        m: [[1, 0], [0, 1]],
    };
    /// 90° counter-clockwise: A⁻¹(y,x) = (x, −y).
    pub const ROT90: D4 = D4 {
        m: [[0, -1], [1, 0]],
    };
    pub const VFLIP: D4 = D4 {
        m: [[-1, 0], [0, 1]],
    };
    pub const HFLIP: D4 = D4 {
        m: [[1, 0], [0, -1]],
    };

    pub fn rot(k: usize) -> D4 {
        let mut r = D4::IDENTITY;
        for _ in 0..(k % 4) {
            r = D4::ROT90.compose(&r);
        }
        r
    }
    /// Whether the element swaps the two image axes (needs square images).
    pub fn swaps_axes(&self) -> bool {
        self.m[0][0] == 0
    }
    fn apply_vec(m: &[[i32; 2]; 2], v: [i32; 2]) -> [i32; 2] {
        [
            m[0][0] * v[0] + m[0][1] * v[1],
            m[1][0] * v[0] + m[1][1] * v[1],
        ]
    }
    /// Gather indices over a flattened `h × w` image: `out[i] = in[idx[i]]`.
    pub fn gather_indices(&self, h: usize, w: usize) -> Result<Vec<u32>> {
        if self.swaps_axes() && h != w {
            bail!("a 90° rotation needs square images, got {h}×{w}; crop or resize first");
        }
        let inv = self.inverse().m;
        let (h2, w2) = (h as i32 - 1, w as i32 - 1);
        let mut idx = Vec::with_capacity(h * w);
        for r in 0..h as i32 {
            for c in 0..w as i32 {
                // doubled centred coordinates keep everything integral
                let p = [2 * r - h2, 2 * c - w2];
                let s = D4::apply_vec(&inv, p);
                let (rs, cs) = ((s[0] + h2) / 2, (s[1] + w2) / 2);
                idx.push((rs as usize * w + cs as usize) as u32);
            }
        }
        Ok(idx)
    }
    /// Applies the element to a `[..., H, W]` tensor.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if *self == D4::IDENTITY {
            return Ok(x.clone());
        }
        let dims = x.dims().to_vec();
        let n = dims.len();
        if n < 2 {
            bail!(
                "image action needs a tensor with at least 2 dims, got shape {:?}",
                dims
            );
        }
        let (h, w) = (dims[n - 2], dims[n - 1]);
        let idx = self.gather_indices(h, w)?;
        let idx = Tensor::from_vec(idx, h * w, x.device())?;
        let lead: usize = dims[..n - 2].iter().product();
        let flat = x.reshape((lead, h * w))?;
        Ok(flat.index_select(&idx, 1)?.reshape(dims)?)
    }
}

impl GroupElement for D4 {
    fn compose(&self, o: &Self) -> Self {
        let a = &self.m;
        let b = &o.m;
        let mut m = [[0; 2]; 2];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = a[i][0] * b[0][j] + a[i][1] * b[1][j];
            }
        }
        D4 { m }
    }
    fn inverse(&self) -> Self {
        // orthogonal: inverse = transpose
        let m = self.m;
        D4 {
            m: [[m[0][0], m[1][0]], [m[0][1], m[1][1]]],
        }
    }
}

/// Names accepted for image factors, for error messages.
pub const IMAGE_FACTORS: &[&str] = &["rot90", "hflip", "vflip", "flip", "rot180", "id"];

/// Example image group specs, for error messages and `--help`.
pub const IMAGE_GROUP_EXAMPLES: &[&str] = &[
    "rot90",
    "flip",
    "hflip",
    "vflip",
    "rot180",
    "rot90xflip",
    "rot90xhflip",
    "id",
];

/// One named image factor.
pub fn image_factor(name: &str) -> Result<Factor<D4>> {
    let f = |name: &str, action: &str, els: Vec<(D4, &str)>| Factor {
        name: name.to_string(),
        action: action.to_string(),
        element_names: els.iter().map(|(_, n)| n.to_string()).collect(),
        elements: els.into_iter().map(|(e, _)| e).collect(),
    };
    Ok(match name {
        "rot90" => f(
            "rot90",
            "rot90: k*90 degree counter-clockwise turn of (H, W), k=0..3",
            (0..4)
                .map(|k| (D4::rot(k), ["e", "rot90^1", "rot90^2", "rot90^3"][k]))
                .collect(),
        ),
        "vflip" | "flip" => f(
            name,
            "vflip: reverse the height axis (top-bottom mirror)",
            vec![(D4::IDENTITY, "e"), (D4::VFLIP, "vflip")],
        ),
        "hflip" => f(
            "hflip",
            "hflip: reverse the width axis (left-right mirror)",
            vec![(D4::IDENTITY, "e"), (D4::HFLIP, "hflip")],
        ),
        "rot180" => f(
            "rot180",
            "rot180: 180 degree turn (both axes reversed)",
            vec![(D4::IDENTITY, "e"), (D4::rot(2), "rot180")],
        ),
        "id" | "none" | "trivial" => f("id", "identity only", vec![(D4::IDENTITY, "e")]),
        other => bail!(
            "unknown image group '{other}': valid factors are {} (combine with 'x', e.g. rot90xflip); \
             examples: {}",
            IMAGE_FACTORS.join(", "),
            IMAGE_GROUP_EXAMPLES.join(", ")
        ),
    })
}

/// Parses a group spec such as `rot90`, `flip`, `rot90xflip`, `rot90xhflip`.
pub fn image_group(spec: &str) -> Result<FiniteGroup<D4>> {
    let spec = spec.trim();
    if spec.is_empty() {
        bail!(
            "empty group spec: use one of {}",
            IMAGE_GROUP_EXAMPLES.join(", ")
        );
    }
    let spec_norm = spec.replace('×', "x").replace(',', "x");
    let names: Vec<&str> = spec_norm.split('x').map(str::trim).collect();
    let factors = names
        .iter()
        .map(|n| image_factor(n))
        .collect::<Result<Vec<_>>>()?;
    FiniteGroup::product(spec, factors).with_context(|| format!("building image group '{spec}'"))
}

/// A deterministic pattern `W₀ ~ U[0,1)^{C×H×W}` drawn from a ChaCha RNG.
pub fn random_pattern(seed: u64, c: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..c * h * w).map(|_| rng.random::<f32>()).collect();
    Ok(Tensor::from_vec(v, (c, h, w), dev)?)
}
