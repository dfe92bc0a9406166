//! Concrete [`Symmetry`] implementations: images (D4 subgroups on NCHW) and token swaps.

use super::Symmetry;
use crate::groups::image::{random_pattern, D4};
use crate::groups::perm::{orbit_min_map, TokenPerm};
use crate::groups::FiniteGroup;
use anyhow::{bail, Result};
use candle_core::Tensor;
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
    patterns: Mutex<HashMap<(usize, Vec<usize>), Tensor>>,
}

impl ImageSymmetry {
    pub fn new(group: FiniteGroup<D4>, output: ImageOutput, canon_seed: u64) -> Self {
        Self {
            group,
            output,
            canon_seed,
            patterns: Mutex::new(HashMap::new()),
        }
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
        let w0 = random_pattern(self.canon_seed, chw[0], chw[1], chw[2], x.device())?;
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
        let dims = x.dims().to_vec();
        if dims.len() != 4 {
            bail!(
                "image canonicaliser expects NCHW input, got shape {:?}",
                dims
            );
        }
        let w = self.pattern(i, &dims[1..], x)?;
        let hs = self.group.complement_elements(i);
        let cands = hs
            .iter()
            .map(|&h| self.group.element(h).apply(x))
            .collect::<Result<Vec<_>>>()?;
        let scores = cands
            .iter()
            .map(|c| Ok(c.broadcast_mul(&w)?.flatten_from(1)?.sum(1)?))
            .collect::<Result<Vec<_>>>()?;
        let scores = Tensor::stack(&scores, 0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let b = dims[0];
        let rows = (0..b)
            .map(|j| {
                let mut best = 0;
                for k in 1..hs.len() {
                    if scores[k][j] > scores[best][j] {
                        best = k;
                    }
                }
                Ok(cands[best].narrow(0, j, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
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
        Self {
            group,
            invariant,
            input_cols,
            collapse_in,
            collapse_out,
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
}
