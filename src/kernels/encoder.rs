//! A transformer encoder for CPU f32 inference built from [`super::cpu`]'s kernels: CLIP's
//! pre-LN towers (vision ViT, causal text) and BERT's post-LN encoder, reading the very weight
//! tensors candle-transformers loaded (no copies).
//!
//! Per layer: one parallel layer norm, three GEMMs straight into a fused `[N, 3D]` q|k|v buffer,
//! attention per (image, head) read in place from that buffer, output projection with bias and
//! residual folded into the GEMM, and the MLP's bias + activation in one parallel pass. In the
//! last layer only the pooled rows (CLS / EOS) are carried through attention's query side, the
//! output projection and the MLP: the other rows cannot reach the pooled output any more.
//!
//! Inference only (no autograd): models that are trained keep candle's op-by-op forward.

use super::cpu::{self, Act, KeyMask};
use candle_core::{DType, Device, Layout, Storage, Tensor};
use candle_nn::VarBuilder;

/// Weights are checked once at construction: f32, CPU, contiguous.
fn usable(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous()
}

/// Weight tensors and a way to borrow their f32 data for the duration of a forward pass.
#[derive(Default)]
pub(crate) struct Params {
    tensors: Vec<Tensor>,
}

impl Params {
    pub(crate) fn push(&mut self, t: Tensor) -> candle_core::Result<usize> {
        if !usable(&t) {
            candle_core::bail!("fast encoder needs contiguous f32 CPU weights");
        }
        self.tensors.push(t);
        Ok(self.tensors.len() - 1)
    }

    pub(crate) fn get(
        &mut self,
        vb: &VarBuilder,
        shape: impl Into<candle_core::Shape>,
        name: &str,
    ) -> candle_core::Result<usize> {
        let t = vb.get(shape, name)?;
        self.push(t)
    }

    /// Read guards of every weight; `slices` turns them into `&[f32]`.
    pub(crate) fn lock(&self) -> Vec<(impl std::ops::Deref<Target = Storage> + '_, &Layout)> {
        self.tensors
            .iter()
            .map(|t| t.storage_and_layout())
            .collect()
    }
}

pub(crate) fn slices<'g, G: std::ops::Deref<Target = Storage>>(
    g: &'g [(G, &Layout)],
) -> candle_core::Result<Vec<&'g [f32]>> {
    g.iter()
        .map(|(s, l)| match &**s {
            Storage::Cpu(c) => {
                let data = c.as_slice::<f32>()?;
                let o = l.start_offset();
                Ok(&data[o..o + l.shape().elem_count()])
            }
            _ => candle_core::bail!("fast encoder weights must be on the CPU"),
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Lin {
    w: usize,
    b: Option<usize>,
}

struct LayerIdx {
    ln1: (usize, usize),
    /// q | k | v weights concatenated `[3D, D]` (one GEMM), bias `[3D]`
    qkv: Lin,
    o: Lin,
    ln2: (usize, usize),
    fc1: Lin,
    fc2: Lin,
}

/// Names of one layer's tensors (relative to the layer's VarBuilder).
pub(crate) struct LayerNames {
    pub ln1: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub ln2: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
}

pub(crate) const CLIP_NAMES: LayerNames = LayerNames {
    ln1: "layer_norm1",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    o: "self_attn.out_proj",
    ln2: "layer_norm2",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

pub(crate) const BERT_NAMES: LayerNames = LayerNames {
    ln1: "attention.output.LayerNorm",
    q: "attention.self.query",
    k: "attention.self.key",
    v: "attention.self.value",
    o: "attention.output.dense",
    ln2: "output.LayerNorm",
    fc1: "intermediate.dense",
    fc2: "output.dense",
};

/// Encoder geometry.
#[derive(Clone, Copy, Debug)]
pub struct EncoderSpec {
    pub d: usize,
    pub heads: usize,
    pub ff: usize,
    pub layers: usize,
    pub eps: f32,
    pub act: Act,
    /// CLIP (LN before attention / MLP) vs BERT (LN after the residual add).
    pub pre_ln: bool,
}

pub(crate) fn layer_norm_params(
    p: &mut Params,
    vb: &VarBuilder,
    d: usize,
) -> candle_core::Result<(usize, usize)> {
    let w = if vb.contains_tensor("gamma") && !vb.contains_tensor("weight") {
        "gamma"
    } else {
        "weight"
    };
    let b = if vb.contains_tensor("beta") && !vb.contains_tensor("bias") {
        "beta"
    } else {
        "bias"
    };
    Ok((p.get(vb, d, w)?, p.get(vb, d, b)?))
}

fn lin(p: &mut Params, vb: &VarBuilder, o: usize, i: usize) -> candle_core::Result<Lin> {
    Ok(Lin {
        w: p.get(vb, (o, i), "weight")?,
        b: Some(p.get(vb, o, "bias")?),
    })
}

/// Batches of at least this many sequences run as two halves (see [`Encoder::forward`]).
pub const SPLIT_MIN: usize = 4;

/// The layer stack.
pub struct Encoder {
    pub spec: EncoderSpec,
    layers: Vec<LayerIdx>,
    /// Work buffers kept between calls, one set per concurrent forward pass (see
    /// [`cpu::map_items`]): fresh multi-MB allocations cost page faults and zeroing on every
    /// pass.
    scratch: std::sync::Mutex<Vec<Vec<Vec<f32>>>>,
}

fn take(pool: &mut Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut v = pool.pop().unwrap_or_default();
    v.clear();
    v.resize(len, 0.0);
    v
}

impl Encoder {
    /// Reads `layers.{i}.…` (CLIP) or `layer.{i}.…` (BERT) from `vb` into `p`.
    pub(crate) fn load(
        p: &mut Params,
        vb: VarBuilder,
        spec: EncoderSpec,
        names: &LayerNames,
    ) -> candle_core::Result<Encoder> {
        if spec.d % spec.heads != 0 {
            candle_core::bail!("hidden size not divisible by heads");
        }
        let mut layers = Vec::with_capacity(spec.layers);
        let d = spec.d;
        for i in 0..spec.layers {
            let l = vb.pp(i.to_string());
            let qkv = {
                let (mut ws, mut bs) = (Vec::new(), Vec::new());
                for n in [names.q, names.k, names.v] {
                    let lv = l.pp(n);
                    ws.push(lv.get((d, d), "weight")?);
                    bs.push(lv.get(d, "bias")?);
                }
                Lin {
                    w: p.push(Tensor::cat(&ws, 0)?)?,
                    b: Some(p.push(Tensor::cat(&bs, 0)?)?),
                }
            };
            layers.push(LayerIdx {
                ln1: layer_norm_params(p, &l.pp(names.ln1), d)?,
                qkv,
                o: lin(p, &l.pp(names.o), d, d)?,
                ln2: layer_norm_params(p, &l.pp(names.ln2), d)?,
                fc1: lin(p, &l.pp(names.fc1), spec.ff, d)?,
                fc2: lin(p, &l.pp(names.fc2), d, spec.ff)?,
            });
        }
        Ok(Encoder {
            spec,
            layers,
            scratch: Default::default(),
        })
    }

    /// Runs the stack on `x` `[b·t, d]`. With `pool` (one row index per batch element, within
    /// its sequence) the result is those rows `[b, d]`; otherwise every row `[b·t, d]`.
    ///
    /// With two or more kernel threads, a batch of at least [`SPLIT_MIN`] sequences runs as two
    /// halves (the first ⌈b/2⌉ sequences, then the rest) concurrently, each half single-threaded
    /// through the whole stack ([`cpu::map_items`]): no fork/join per GEMM, layer norm or
    /// softmax, and each core keeps its half's activations in its own cache. The split does not
    /// change a bit: every kernel works row by row, keys never cross sequences, and the GEMM
    /// computes a row the same way however many rows it is given (from 2 rows on, with more
    /// than 64 output columns, as every layer here has: `gemm` picks its k-blocking from k and
    /// the cache sizes alone). `towers::tests::encoder_split_is_bit_identical` checks it.
    pub(crate) fn forward(
        &self,
        w: &[&[f32]],
        x: Vec<f32>,
        b: usize,
        t: usize,
        mask: KeyMask,
        pool: Option<&[usize]>,
    ) -> Vec<f32> {
        if b < SPLIT_MIN || cpu::threads() < 2 {
            return self.forward_rows(w, x, b, t, mask, pool);
        }
        let d = self.spec.d;
        let h = b.div_ceil(2);
        let halves = [(0, h), (h, b)];
        let outs = cpu::map_items(&halves, |&(s, e)| {
            let m = match mask {
                KeyMask::Valid(v) => KeyMask::Valid(&v[s * t..e * t]),
                other => other,
            };
            let xs = x[s * t * d..e * t * d].to_vec();
            self.forward_rows(w, xs, e - s, t, m, pool.map(|p| &p[s..e]))
        });
        let [a, c]: [Vec<f32>; 2] = outs.try_into().expect("two halves");
        let mut a = a;
        a.extend_from_slice(&c);
        a
    }

    /// [`Self::forward`] on one run of sequences, with the kernels' own threading.
    fn forward_rows(
        &self,
        w: &[&[f32]],
        mut x: Vec<f32>,
        b: usize,
        t: usize,
        mask: KeyMask,
        pool: Option<&[usize]>,
    ) -> Vec<f32> {
        let s = self.spec;
        let (d, ff) = (s.d, s.ff);
        let hd = d / s.heads;
        let scale = (hd as f32).powf(-0.5);
        let n = b * t;
        let mut bufs = self.scratch.lock().unwrap().pop().unwrap_or_default();
        let mut m = take(&mut bufs, n * ff);
        let mut x2 = take(&mut bufs, n * d);
        let mut attn = take(&mut bufs, n * d);
        let mut qkv = take(&mut bufs, n * 3 * d);
        let mut h = take(&mut bufs, n * d);
        let nl = self.layers.len();
        for (li, l) in self.layers.iter().enumerate() {
            let last_pool = if li + 1 == nl { pool } else { None };
            let nq = if last_pool.is_some() { b } else { n };
            // attention input
            let src: &[f32] = if s.pre_ln {
                cpu::layer_norm_into(&x, &mut h, d, w[l.ln1.0], w[l.ln1.1], s.eps);
                &h
            } else {
                &x
            };
            cpu::linear(
                src,
                d,
                n,
                d,
                w[l.qkv.w],
                3 * d,
                l.qkv.b.map(|i| w[i]),
                None,
                &mut qkv,
                3 * d,
            );
            cpu::attention(&qkv, b, t, s.heads, hd, scale, mask, last_pool, &mut attn);
            // residual rows
            let res: Vec<f32>;
            let res_rows: &[f32] = match last_pool {
                Some(p) => {
                    res = (0..b)
                        .flat_map(|bi| x[(bi * t + p[bi]) * d..(bi * t + p[bi] + 1) * d].to_vec())
                        .collect();
                    &res
                }
                None => &x,
            };
            cpu::linear(
                &attn,
                d,
                nq,
                d,
                w[l.o.w],
                d,
                l.o.b.map(|i| w[i]),
                Some(res_rows),
                &mut x2,
                d,
            );
            let x2n = &mut x2[..nq * d];
            let mlp_in: &[f32] = if s.pre_ln {
                cpu::layer_norm_into(x2n, &mut h[..nq * d], d, w[l.ln2.0], w[l.ln2.1], s.eps);
                &h[..nq * d]
            } else {
                cpu::layer_norm(x2n, d, w[l.ln1.0], w[l.ln1.1], s.eps);
                x2n
            };
            cpu::linear(
                mlp_in,
                d,
                nq,
                d,
                w[l.fc1.w],
                ff,
                l.fc1.b.map(|i| w[i]),
                None,
                &mut m,
                ff,
            );
            cpu::activate(&mut m[..nq * ff], ff, s.act);
            x.truncate(nq * d);
            cpu::linear(
                &m,
                ff,
                nq,
                ff,
                w[l.fc2.w],
                d,
                l.fc2.b.map(|i| w[i]),
                Some(&x2[..nq * d]),
                &mut x,
                d,
            );
            if !s.pre_ln {
                cpu::layer_norm(&mut x, d, w[l.ln2.0], w[l.ln2.1], s.eps);
            }
        }
        self.scratch.lock().unwrap().push(vec![h, qkv, attn, x2, m]);
        if let (Some(p), 0) = (pool, nl) {
            return (0..b)
                .flat_map(|bi| x[(bi * t + p[bi]) * d..(bi * t + p[bi] + 1) * d].to_vec())
                .collect();
        }
        x
    }
}

/// Whether the fast CPU path may be used for a model on `dev` in `dtype`; `EQUIRUN_FAST=0`
/// turns it off (candle's op-by-op forward, for comparisons).
pub fn enabled(dev: &Device, dtype: DType) -> bool {
    dev.is_cpu()
        && dtype == DType::F32
        && std::env::var("EQUIRUN_FAST")
            .map(|v| v != "0")
            .unwrap_or(true)
}
