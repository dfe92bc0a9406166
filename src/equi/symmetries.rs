//! Concrete [`Symmetry`] implementations: images (D4 subgroups on NCHW) and token swaps.

use super::Symmetry;
use crate::groups::image::{random_pattern, D4};
use crate::groups::perm::{orbit_min_map, TokenPerm};
use crate::groups::FiniteGroup;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::sync::Mutex;

/// The [`Symmetry`] methods that only read `self.group`.
macro_rules! delegate_group {
    () => {
        fn order(&self) -> usize {
            self.group.order()
        }
        fn inv(&self, g: usize) -> usize {
            self.group.inv(g)
        }
        fn element_name(&self, g: usize) -> String {
            self.group.element_name(g)
        }
        fn n_factors(&self) -> usize {
            self.group.n_factors()
        }
        fn factor_elements(&self, i: usize) -> Vec<usize> {
            self.group.factor_elements(i)
        }
        fn complement_elements(&self, i: usize) -> Vec<usize> {
            self.group.complement_elements(i)
        }
        fn factors_commute(&self) -> bool {
            self.group.factors_commute()
        }
    };
}

/// How an image group acts on a model's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageOutput {
    /// Classification: outputs are invariant.
    Invariant,
    /// Dense prediction: outputs `[B, C, H, W]` transform like the input.
    Image,
}

/// A subgroup of D4 acting on NCHW images, with deterministic canonicalisers for multi-*.
pub struct ImageSymmetry {
    pub group: FiniteGroup<D4>,
    pub output: ImageOutput,
    /// Seed of the canonicalisation patterns (fixed per run: exact invariance, reproducible).
    pub canon_seed: u64,
    /// W₀ given by the user (`--canonicaliser-pattern`), `[C, H, W]`; `None`: drawn from
    /// `canon_seed`.
    base: Option<Tensor>,
    patterns: Mutex<HashMap<(usize, Vec<usize>), Tensor>>,
}

impl ImageSymmetry {
    pub fn new(group: FiniteGroup<D4>, output: ImageOutput, canon_seed: u64) -> Self {
        Self {
            group,
            output,
            canon_seed,
            base: None,
            patterns: Mutex::new(HashMap::new()),
        }
    }

    /// Uses `w0` (`[C, H, W]`) as the pattern W₀ instead of the seeded random one.
    pub fn with_pattern(mut self, w0: Tensor) -> Self {
        self.base = Some(w0);
        self.patterns = Mutex::new(HashMap::new());
        self
    }

    /// W₀ for inputs of shape `[_, C, H, W]`.
    fn base_pattern(&self, chw: &[usize], x: &Tensor) -> Result<Tensor> {
        match &self.base {
            Some(p) => {
                if p.dims() != chw {
                    bail!(
                        "the canonicaliser pattern has shape {:?} but the images are {:?} (C×H×W)",
                        p.dims(),
                        chw
                    );
                }
                Ok(p.to_device(x.device())?)
            }
            None => random_pattern(self.canon_seed, chw[0], chw[1], chw[2], x.device()),
        }
    }

    /// Per image, the element h of the other factors that `c₋ᵢ` applies (`c₋ᵢ(x) = h·x`).
    pub fn canonical_choice(&self, i: usize, x: &Tensor) -> Result<Vec<usize>> {
        let dims = x.dims().to_vec();
        if dims.len() != 4 {
            bail!(
                "image canonicaliser expects NCHW input, got shape {:?}",
                dims
            );
        }
        let w = self.pattern(i, &dims[1..], x)?;
        let hs = self.group.complement_elements(i);
        let scores = pattern_scores(&self.group, &hs, &w, x)?;
        Ok((0..dims[0])
            .map(|j| {
                let mut best = 0;
                for k in 1..hs.len() {
                    if scores[k][j] > scores[best][j] {
                        best = k;
                    }
                }
                hs[best]
            })
            .collect())
    }

    /// The official multi-group CLIP canonicaliser: per image, the element g of the whole group
    /// maximising ⟨g·x, W₀⟩ with the raw pattern W₀ (no symmetrisation), ties going to the later
    /// candidate in the order first factor outer, last factor inner (the official loop).
    pub fn whole_group_choice(&self, x: &Tensor) -> Result<Vec<usize>> {
        let dims = x.dims().to_vec();
        if dims.len() != 4 {
            bail!(
                "image canonicaliser expects NCHW input, got shape {:?}",
                dims
            );
        }
        let w = self.base_pattern(&dims[1..], x)?.to_dtype(x.dtype())?;
        let mut gs: Vec<usize> = (0..self.group.order()).collect();
        gs.sort_by(|a, b| self.group.coords(*a).cmp(self.group.coords(*b)));
        let scores = pattern_scores(&self.group, &gs, &w, x)?;
        Ok((0..dims[0])
            .map(|j| {
                let mut best = 0;
                for k in 1..gs.len() {
                    if scores[k][j] >= scores[best][j] {
                        best = k;
                    }
                }
                gs[best]
            })
            .collect())
    }

    /// Applies one element per image: row j of the result is `gs[j]·x[j]`.
    pub fn act_per_image(&self, gs: &[usize], x: &Tensor) -> Result<Tensor> {
        let rows = gs
            .iter()
            .enumerate()
            .map(|(j, &g)| self.group.element(g).apply(&x.narrow(0, j, 1)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// W_i = mean over g ∈ G_i of g·W₀: a pattern fixed by factor i, so that choosing the
    /// complement element that maximises ⟨W_i, h·x⟩ is invariant to the other factors and
    /// compatible with factor i (docs/methods.md, "Images: rot90 × flip do not commute").
    fn pattern(&self, i: usize, chw: &[usize], x: &Tensor) -> Result<Tensor> {
        let key = (i, chw.to_vec());
        let mut cache = self.patterns.lock().unwrap();
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let w0 = self.base_pattern(chw, x)?;
        let copies = self
            .group
            .factor_elements(i)
            .into_iter()
            .map(|g| self.group.element(g).apply(&w0))
            .collect::<Result<Vec<_>>>()?;
        let w = super::mean_of(&copies)?.to_dtype(x.dtype())?;
        cache.insert(key, w.clone());
        Ok(w)
    }
}

impl Symmetry for ImageSymmetry {
    delegate_group!();
    fn act_input(&self, g: usize, x: &Tensor) -> Result<Tensor> {
        self.group.element(g).apply(x)
    }
    fn act_output(&self, g: usize, y: &Tensor) -> Result<Tensor> {
        match self.output {
            ImageOutput::Invariant => Ok(y.clone()),
            ImageOutput::Image => self.group.element(g).apply(y),
        }
    }
    fn invariant_output(&self) -> bool {
        self.output == ImageOutput::Invariant
    }
    fn canonicalize_except(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let hs = self.canonical_choice(i, x)?;
        self.act_per_image(&hs, x)
    }
}

/// `⟨g·x, w⟩` for every candidate g (rows) and image (columns), in f32.
fn pattern_scores(
    group: &FiniteGroup<D4>,
    gs: &[usize],
    w: &Tensor,
    x: &Tensor,
) -> Result<Vec<Vec<f32>>> {
    let scores = gs
        .iter()
        .map(|&g| {
            Ok(group
                .element(g)
                .apply(x)?
                .broadcast_mul(w)?
                .flatten_from(1)?
                .sum(1)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&scores, 0)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?)
}

/// The official multi-group CLIP averaging (`--multi-mean flat`) as a one-factor symmetry on
/// already canonicalised images: its single "factor" lists every factor's elements in turn
/// (rot90: r0 r1 r2 r3, then flip: e V), so multi-equitune is the flat mean of those Σ|Gᵢ|
/// copies (the identity counted once per factor) and multi-equizero selects among them.
pub struct FlatMulti<'a> {
    pub inner: &'a ImageSymmetry,
    elements: Vec<usize>,
}

impl<'a> FlatMulti<'a> {
    pub fn new(inner: &'a ImageSymmetry) -> Self {
        let elements = (0..inner.group.n_factors())
            .flat_map(|i| inner.group.factor_elements(i))
            .collect();
        FlatMulti { inner, elements }
    }
}

impl Symmetry for FlatMulti<'_> {
    fn order(&self) -> usize {
        self.inner.order()
    }
    fn inv(&self, g: usize) -> usize {
        self.inner.inv(g)
    }
    fn element_name(&self, g: usize) -> String {
        self.inner.element_name(g)
    }
    fn n_factors(&self) -> usize {
        1
    }
    fn factor_elements(&self, _i: usize) -> Vec<usize> {
        self.elements.clone()
    }
    fn complement_elements(&self, _i: usize) -> Vec<usize> {
        vec![0]
    }
    fn factors_commute(&self) -> bool {
        true
    }
    fn act_input(&self, g: usize, x: &Tensor) -> Result<Tensor> {
        self.inner.act_input(g, x)
    }
    fn act_output(&self, g: usize, y: &Tensor) -> Result<Tensor> {
        self.inner.act_output(g, y)
    }
    fn invariant_output(&self) -> bool {
        self.inner.invariant_output()
    }
    fn canonicalize_except(&self, _i: usize, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// A symmetry whose outputs are moved back the other way: `act_output(g)` applies `g⁻¹`. The
/// wrappers then combine copy g as `ρ(g) M(g·x)` instead of `ρ(g)⁻¹ M(g·x)`, which is what the
/// authors' EquiNLG code does (`gpt2-fairness --official-inverse-direction`); it equals the
/// default for involutions and is not equivariant for a 3-cycle.
pub struct InverseOutput<'a>(pub &'a dyn Symmetry);

impl Symmetry for InverseOutput<'_> {
    fn order(&self) -> usize {
        self.0.order()
    }
    fn inv(&self, g: usize) -> usize {
        self.0.inv(g)
    }
    fn element_name(&self, g: usize) -> String {
        self.0.element_name(g)
    }
    fn n_factors(&self) -> usize {
        self.0.n_factors()
    }
    fn factor_elements(&self, i: usize) -> Vec<usize> {
        self.0.factor_elements(i)
    }
    fn complement_elements(&self, i: usize) -> Vec<usize> {
        self.0.complement_elements(i)
    }
    fn factors_commute(&self) -> bool {
        self.0.factors_commute()
    }
    fn act_input(&self, g: usize, x: &Tensor) -> Result<Tensor> {
        self.0.act_input(g, x)
    }
    fn act_output(&self, g: usize, y: &Tensor) -> Result<Tensor> {
        self.0.act_output(self.0.inv(g), y)
    }
    fn invariant_output(&self) -> bool {
        self.0.invariant_output()
    }
    fn canonicalize_except(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        self.0.canonicalize_except(i, x)
    }
    fn mean_of_acted(&self, terms: &[(usize, &Tensor)]) -> Result<Tensor> {
        let inner: Vec<(usize, &Tensor)> = terms.iter().map(|&(g, y)| (self.0.inv(g), y)).collect();
        self.0.mean_of_acted(&inner)
    }
}

/// A group of token permutations acting on input ids and on output scores (last axis).
///
/// With `input_cols = Some(k)` an input row packs `k` input-vocabulary ids followed by
/// output-vocabulary ids (a seq2seq target used for teacher forcing): the first part is acted
/// on by the input permutation, the rest by the output permutation.
pub struct TokenSymmetry {
    pub group: FiniteGroup<TokenPerm>,
    /// Whether outputs are invariant (e.g. a classifier on token input).
    pub invariant: bool,
    pub input_cols: Option<usize>,
    collapse_in: Vec<Vec<u32>>,
    collapse_out: Vec<Vec<u32>>,
    /// Per element g: the output ids it moves, as (v, g·v) (see `mean_of_acted`).
    moved_out: Vec<Vec<(usize, usize)>>,
}

impl TokenSymmetry {
    pub fn new(group: FiniteGroup<TokenPerm>, invariant: bool, input_cols: Option<usize>) -> Self {
        let n_in = group.element(0).input.len();
        let n_out = group.element(0).output.len();
        let mut collapse_in = Vec::new();
        let mut collapse_out = Vec::new();
        for i in 0..group.n_factors() {
            let els: Vec<&TokenPerm> = group
                .complement_elements(i)
                .into_iter()
                .map(|g| group.element(g))
                .collect();
            collapse_in.push(orbit_min_map(&els, n_in));
            let outs: Vec<TokenPerm> = els
                .iter()
                .map(|p| TokenPerm {
                    input: p.output.clone(),
                    output: vec![],
                })
                .collect();
            let refs: Vec<&TokenPerm> = outs.iter().collect();
            collapse_out.push(orbit_min_map(&refs, n_out));
        }
        let moved_out = group
            .elements()
            .iter()
            .map(|e| {
                (0..n_out)
                    .filter(|&v| e.output[v] as usize != v)
                    .map(|v| (v, e.output[v] as usize))
                    .collect()
            })
            .collect();
        Self {
            group,
            invariant,
            input_cols,
            collapse_in,
            collapse_out,
            moved_out,
        }
    }
    /// Replaces the canonicalisers (one map per factor, applied to input ids and, for packed
    /// rows, to output ids): e.g. "first word of the set" instead of the orbit minimum. Each map
    /// must be invariant to the other factors and commute with its own factor.
    pub fn with_collapse(mut self, maps: Vec<Vec<u32>>) -> Self {
        self.collapse_out = maps.clone();
        self.collapse_in = maps;
        self
    }
    /// Like [`TokenSymmetry::with_collapse`] with separate maps for input ids and output ids
    /// (packed seq2seq rows: command words and actions are different vocabularies).
    pub fn with_collapse_io(mut self, input: Vec<Vec<u32>>, output: Vec<Vec<u32>>) -> Self {
        self.collapse_in = input;
        self.collapse_out = output;
        self
    }
    fn map_packed(&self, x: &Tensor, in_table: &[u32], out_table: &[u32]) -> Result<Tensor> {
        let lookup = |t: &Tensor, table: &[u32]| -> Result<Tensor> {
            let tab = Tensor::new(table, t.device())?;
            let shape = t.dims().to_vec();
            Ok(tab.index_select(&t.flatten_all()?, 0)?.reshape(shape)?)
        };
        match self.input_cols {
            None => lookup(x, in_table),
            Some(k) => {
                let cols = x.dim(1)?;
                let a = lookup(&x.narrow(1, 0, k)?.contiguous()?, in_table)?;
                let b = lookup(&x.narrow(1, k, cols - k)?.contiguous()?, out_table)?;
                Ok(Tensor::cat(&[a, b], 1)?)
            }
        }
    }
}

impl Symmetry for TokenSymmetry {
    delegate_group!();
    fn act_input(&self, g: usize, x: &Tensor) -> Result<Tensor> {
        let e = self.group.element(g);
        self.map_packed(x, &e.input, &e.output)
    }
    fn act_output(&self, g: usize, y: &Tensor) -> Result<Tensor> {
        if self.invariant {
            return Ok(y.clone());
        }
        self.group.element(g).apply_output(y)
    }
    fn invariant_output(&self) -> bool {
        self.invariant
    }
    fn canonicalize_except(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        self.map_packed(x, &self.collapse_in[i], &self.collapse_out[i])
    }
    /// The same f64 sums as [`super::mean_of`] of the permuted copies, in the same order, but
    /// without building the copies: every decoding step averages the 50,257-way logits of each
    /// branch, and a token permutation moves only a few dozen of them. When every term is the
    /// same tensor (the output symmetriser), the logits no element moves are `k·x` exactly
    /// (small multiples of an f32 are exact in f64) and only the moved ones are summed.
    fn mean_of_acted(&self, terms: &[(usize, &Tensor)]) -> Result<Tensor> {
        let fast = !self.invariant
            && terms.len() > 1
            && terms.iter().all(|(_, y)| {
                y.device().is_cpu()
                    && y.dtype() == DType::F32
                    && !y.track_op()
                    && y.dims() == terms[0].1.dims()
                    && y.dims().last() == Some(&self.group.element(0).output.len())
            });
        if !fast {
            return super::mean_of_copies(self, terms);
        }
        let n = self.group.element(0).output.len();
        // (source v, target g·v) of the logits each term's element moves: (ρ(g)y)[g·v] = y[v]
        let moved: Vec<&[(usize, usize)]> = terms
            .iter()
            .map(|&(g, _)| self.moved_out[g].as_slice())
            .collect();
        let same = terms.iter().all(|(_, y)| y.id() == terms[0].1.id());
        let len = terms[0].1.elem_count();
        let mut acc: Vec<f64>;
        if same {
            let y = terms[0].1.flatten_all()?.to_vec1::<f32>()?;
            let k = terms.len() as f64;
            acc = y.iter().map(|&x| x as f64 * k).collect();
            let mut union: Vec<usize> = moved
                .iter()
                .flat_map(|m| m.iter())
                .map(|&(_, t)| t)
                .collect();
            union.sort_unstable();
            union.dedup();
            // source of target t under each term: t itself unless that term moves it
            let src: Vec<Vec<usize>> = moved
                .iter()
                .map(|mv| {
                    let mut s: Vec<usize> = union.clone();
                    for &(v, t) in mv.iter() {
                        s[union.binary_search(&t).unwrap()] = v;
                    }
                    s
                })
                .collect();
            for (arow, yrow) in acc.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
                for (ui, &t) in union.iter().enumerate() {
                    let mut a = 0f64;
                    for s in &src {
                        a += yrow[s[ui]] as f64;
                    }
                    arow[t] = a;
                }
            }
        } else {
            acc = vec![0f64; len];
            let mut saved = Vec::new();
            for ((_, y), mv) in terms.iter().zip(&moved) {
                let y = y.flatten_all()?.to_vec1::<f32>()?;
                for (arow, yrow) in acc.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
                    saved.clear();
                    saved.extend(mv.iter().map(|&(_, t)| arow[t]));
                    for (a, &x) in arow.iter_mut().zip(yrow) {
                        *a += x as f64;
                    }
                    for (&(v, t), &s) in mv.iter().zip(saved.iter()) {
                        arow[t] = s + yrow[v] as f64;
                    }
                }
            }
        }
        let scale = 1.0 / terms.len() as f64;
        // `+ 0.0` as in mean_of (turns −0 into +0)
        let out: Vec<f32> = acc.into_iter().map(|a| (a * scale + 0.0) as f32).collect();
        Ok(Tensor::from_vec(
            out,
            terms[0].1.dims(),
            terms[0].1.device(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::perm::cyclic_factor;
    use candle_core::Device;

    /// `TokenSymmetry::mean_of_acted` gives the bits of `mean_of` over `act_output` copies: for
    /// one tensor under many elements (the output symmetriser) and for distinct tensors
    /// (equitune's copies), with signed zeros, ties and a 3-cycle; `InverseOutput` too.
    #[test]
    fn mean_of_acted_matches_the_copies() -> Result<()> {
        let (n_in, n_out) = (12usize, 40usize);
        let perm = |cin: Vec<Vec<u32>>, cout: Vec<Vec<u32>>| {
            TokenPerm::from_cycles(n_in, n_out, &cin, &cout).unwrap()
        };
        let factors = vec![
            cyclic_factor(
                "a",
                "swap",
                perm(vec![vec![1, 2]], vec![vec![3, 7], vec![30, 31]]),
            )?,
            cyclic_factor(
                "b",
                "cycle",
                perm(vec![vec![4, 5, 6]], vec![vec![8, 9, 10]]),
            )?,
            cyclic_factor("c", "swap", perm(vec![vec![7, 8]], vec![vec![11, 39]]))?,
        ];
        let group = FiniteGroup::product("a,b,c", factors)?;
        assert_eq!(group.order(), 12);
        let sym = TokenSymmetry::new(group, false, None);
        let logits = |seed: u64| -> Result<Tensor> {
            let mut v = crate::testing::randn(seed, &[3, n_out])
                .flatten_all()?
                .to_vec1::<f32>()?;
            v[3] = -0.0;
            v[7] = -0.0;
            v[8] = v[9];
            v[n_out + 5] = -0.0;
            Ok(Tensor::from_vec(v, (3, n_out), &Device::Cpu)?)
        };
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|x| x.to_bits())
                .collect())
        };
        let reference =
            |s: &dyn Symmetry, terms: &[(usize, &Tensor)]| crate::equi::mean_of_copies(s, terms);
        let y = logits(1)?;
        let ys: Vec<Tensor> = (0..12).map(|k| logits(10 + k)).collect::<Result<_>>()?;
        for i in 0..3 {
            let same: Vec<(usize, &Tensor)> = sym
                .complement_elements(i)
                .into_iter()
                .map(|h| (h, &y))
                .collect();
            assert_eq!(
                bits(&sym.mean_of_acted(&same)?)?,
                bits(&reference(&sym, &same)?)?,
                "symmetriser over the complement of factor {i}"
            );
        }
        let distinct: Vec<(usize, &Tensor)> = (0..12).map(|g| (sym.inv(g), &ys[g])).collect();
        assert_eq!(
            bits(&sym.mean_of_acted(&distinct)?)?,
            bits(&reference(&sym, &distinct)?)?,
            "equitune's mean of the un-transformed copies"
        );
        let inverse = InverseOutput(&sym);
        assert_eq!(
            bits(&inverse.mean_of_acted(&distinct)?)?,
            bits(&reference(&inverse, &distinct)?)?,
            "the official inverse direction"
        );
        Ok(())
    }
}
