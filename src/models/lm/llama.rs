//! A llama-architecture causal LM in f32 on equirun's CPU kernels, for GGUF checkpoints
//! (SmolLM2-135M): the weights are dequantised once at load time and packed for products with
//! few rows ([`PackedLinear`]), so a decoding step of `n` batched rows (the `d` branches of an
//! equivariant generation) streams every weight once, whatever `n`.
//!
//! The computation is the one of `candle_transformers::models::quantized_llama` with dense f32
//! weights (`GgufCompute::DequantizedF32`), which the tests compare it with:
//! RMS norm → q|k|v (one fused product) → rotary embedding (interleaved pairs, the GGUF llama
//! convention) → grouped-query attention over the KV cache → output projection + residual →
//! RMS norm → gate|up (one fused product) → SiLU(gate)·up → down projection + residual; after
//! the last block the final RMS norm and the output layer (tied to the token embedding when the
//! file has no `output.weight`) run on each row's last position only.
//!
//! Differences that matter for speed, not for results:
//! - the KV cache is appended in place (`[position][row][kv head][head dim]`), where candle
//!   concatenates the whole cache at every step and repeats the KV heads for grouped-query
//!   attention;
//! - no candle op per layer: a step is a handful of slice loops plus the packed products, which
//!   split output columns over the worker threads.
//!
//! Each row's logits depend only on that row (the packed products compute every row alone, the
//! attention reads only that row's cache), and a step gives the same bits whatever the thread
//! count.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::kernels::decode::{PackedLinear, MAX_ROWS};

/// The sizes of a llama model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub blocks: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Positions the rotary table covers.
    pub max_positions: usize,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    fn validate(&self) -> Result<()> {
        if self.heads == 0 || self.kv_heads == 0 || self.dim % self.heads != 0 {
            bail!(
                "llama: embedding length {} is not a multiple of the head count {}",
                self.dim,
                self.heads
            );
        }
        if self.heads % self.kv_heads != 0 {
            bail!(
                "llama: head count {} is not a multiple of the KV head count {}",
                self.heads,
                self.kv_heads
            );
        }
        if self.head_dim() % 2 != 0 {
            bail!("llama: head dimension {} is odd", self.head_dim());
        }
        Ok(())
    }
}

/// One transformer block: weights and its KV cache.
struct Block {
    attn_norm: Vec<f32>,
    /// `[heads + 2·kv_heads]·head_dim` outputs: q, then k, then v.
    qkv: PackedLinear,
    o: PackedLinear,
    ffn_norm: Vec<f32>,
    /// `2·ffn` outputs: gate, then up.
    gate_up: PackedLinear,
    down: PackedLinear,
    /// `[position][row][kv head][head dim]`, appended at every step.
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

/// The weights of a block, `[out, in]` row-major as GGUF stores them (after dequantisation).
pub struct BlockWeights {
    pub attn_norm: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// A llama model with batched, lock-step KV caches.
pub struct Llama {
    cfg: LlamaConfig,
    /// `[vocab, dim]`
    embed: Vec<f32>,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    output: PackedLinear,
    /// `[max_positions, head_dim / 2]`
    cos: Vec<f32>,
    sin: Vec<f32>,
    n: usize,
    pos: usize,
}

fn check_len(v: &[f32], len: usize, what: &str) -> Result<()> {
    if v.len() != len {
        bail!("llama: {what} has {} values, expected {len}", v.len());
    }
    Ok(())
}

/// The rotary tables as `quantized_llama` computes them (f32 throughout).
fn rope_tables(head_dim: usize, base: f32, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let theta: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions * theta.len());
    let mut sin = Vec::with_capacity(positions * theta.len());
    for p in 0..positions {
        for &t in &theta {
            let a = p as f32 * t;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

impl Llama {
    /// Builds the model from dequantised weights: `embed` `[vocab, dim]`, `output` `[vocab, dim]`
    /// (`None`: tied to `embed`), `norm` `[dim]`.
    pub fn new(
        cfg: LlamaConfig,
        embed: Vec<f32>,
        blocks: Vec<BlockWeights>,
        norm: Vec<f32>,
        output: Option<Vec<f32>>,
    ) -> Result<Llama> {
        cfg.validate()?;
        let (d, hd) = (cfg.dim, cfg.head_dim());
        let (qn, kvn) = (cfg.heads * hd, cfg.kv_heads * hd);
        if blocks.len() != cfg.blocks {
            bail!("llama: {} blocks, config says {}", blocks.len(), cfg.blocks);
        }
        check_len(&embed, cfg.vocab * d, "token_embd.weight")?;
        check_len(&norm, d, "output_norm.weight")?;
        let mut out = Vec::with_capacity(blocks.len());
        for (i, b) in blocks.into_iter().enumerate() {
            let what = |s: &str| format!("blk.{i}.{s}");
            check_len(&b.attn_norm, d, &what("attn_norm.weight"))?;
            check_len(&b.q, qn * d, &what("attn_q.weight"))?;
            check_len(&b.k, kvn * d, &what("attn_k.weight"))?;
            check_len(&b.v, kvn * d, &what("attn_v.weight"))?;
            check_len(&b.o, d * qn, &what("attn_output.weight"))?;
            check_len(&b.ffn_norm, d, &what("ffn_norm.weight"))?;
            check_len(&b.gate, cfg.ffn * d, &what("ffn_gate.weight"))?;
            check_len(&b.up, cfg.ffn * d, &what("ffn_up.weight"))?;
            check_len(&b.down, d * cfg.ffn, &what("ffn_down.weight"))?;
            let qkv = [b.q, b.k, b.v].concat();
            let gate_up = [b.gate, b.up].concat();
            out.push(Block {
                attn_norm: b.attn_norm,
                qkv: PackedLinear::from_nk(&qkv, qn + 2 * kvn, d, None),
                o: PackedLinear::from_nk(&b.o, d, qn, None),
                ffn_norm: b.ffn_norm,
                gate_up: PackedLinear::from_nk(&gate_up, 2 * cfg.ffn, d, None),
                down: PackedLinear::from_nk(&b.down, d, cfg.ffn, None),
                k_cache: Vec::new(),
                v_cache: Vec::new(),
            });
        }
        let output = match output {
            Some(w) => {
                check_len(&w, cfg.vocab * d, "output.weight")?;
                PackedLinear::from_nk(&w, cfg.vocab, d, None)
            }
            None => PackedLinear::from_nk(&embed, cfg.vocab, d, None),
        };
        let (cos, sin) = rope_tables(hd, cfg.rope_base, cfg.max_positions);
        Ok(Llama {
            cfg,
            embed,
            blocks: out,
            norm,
            output,
            cos,
            sin,
            n: 1,
            pos: 0,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Starts `n` empty sequences.
    pub fn reset(&mut self, n: usize) {
        self.n = n;
        self.pos = 0;
        for b in &mut self.blocks {
            b.k_cache.clear();
            b.v_cache.clear();
        }
    }

    /// Positions cached per row.
    pub fn cached_len(&self) -> usize {
        self.pos
    }

    /// Appends `ids` (`[n, t]` row-major, `n` as in [`Self::reset`]) and returns the logits of
    /// each row's last position, `[n, vocab]` row-major.
    pub fn step(&mut self, ids: &[u32], t: usize) -> Result<Vec<f32>> {
        let n = self.n;
        let cfg = self.cfg.clone();
        let (d, hd) = (cfg.dim, cfg.head_dim());
        let (h, kvh) = (cfg.heads, cfg.kv_heads);
        let (qn, kvn) = (h * hd, kvh * hd);
        if t == 0 || ids.len() != n * t {
            bail!("llama step: {} ids for {n} rows of {t} tokens", ids.len());
        }
        if self.pos + t > cfg.max_positions {
            bail!(
                "llama step: {} + {t} positions exceed the limit {}",
                self.pos,
                cfg.max_positions
            );
        }
        let rows = n * t;
        let mut x = vec![0f32; rows * d];
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= cfg.vocab {
                bail!(
                    "llama step: token id {id} is outside the vocabulary ({})",
                    cfg.vocab
                );
            }
            x[r * d..(r + 1) * d].copy_from_slice(&self.embed[id * d..(id + 1) * d]);
        }
        let mut hbuf = vec![0f32; rows * d];
        let mut qkv = vec![0f32; rows * (qn + 2 * kvn)];
        let mut att = vec![0f32; rows * qn];
        let mut proj = vec![0f32; rows * d];
        let mut gu = vec![0f32; rows * 2 * cfg.ffn];
        let mut act = vec![0f32; rows * cfg.ffn];
        let half = hd / 2;
        let pos0 = self.pos;
        for blk in &mut self.blocks {
            rms_norm(&x, &blk.attn_norm, cfg.rms_eps, &mut hbuf);
            linear(&blk.qkv, &hbuf, rows, &mut qkv);
            // rotary embedding of q and k (row r = b·t + i is at position pos0 + i)
            let w = qn + 2 * kvn;
            for r in 0..rows {
                let p = pos0 + r % t;
                let (c, s) = (
                    &self.cos[p * half..(p + 1) * half],
                    &self.sin[p * half..(p + 1) * half],
                );
                for head in qkv[r * w..r * w + qn + kvn].chunks_exact_mut(hd) {
                    rope_interleaved(head, c, s);
                }
            }
            // append k, v: cache layout [position][row][kv head · head dim]
            for i in 0..t {
                for b in 0..n {
                    let r = (b * t + i) * w;
                    blk.k_cache.extend_from_slice(&qkv[r + qn..r + qn + kvn]);
                    blk.v_cache.extend_from_slice(&qkv[r + qn + kvn..r + w]);
                }
            }
            attention(
                &qkv,
                &blk.k_cache,
                &blk.v_cache,
                &mut att,
                AttnShape {
                    n,
                    t,
                    pos0,
                    heads: h,
                    kv_heads: kvh,
                    head_dim: hd,
                },
            );
            linear(&blk.o, &att, rows, &mut proj);
            add_into(&mut x, &proj);
            rms_norm(&x, &blk.ffn_norm, cfg.rms_eps, &mut hbuf);
            linear(&blk.gate_up, &hbuf, rows, &mut gu);
            let f = cfg.ffn;
            for (a, g) in act.chunks_exact_mut(f).zip(gu.chunks_exact(2 * f)) {
                let (gate, up) = g.split_at(f);
                for ((o, &gv), &uv) in a.iter_mut().zip(gate).zip(up) {
                    *o = gv / (1.0 + (-gv).exp()) * uv;
                }
            }
            linear(&blk.down, &act, rows, &mut proj);
            add_into(&mut x, &proj);
        }
        self.pos += t;
        let mut last = vec![0f32; n * d];
        for b in 0..n {
            let r = b * t + t - 1;
            last[b * d..(b + 1) * d].copy_from_slice(&x[r * d..(r + 1) * d]);
        }
        let mut normed = vec![0f32; n * d];
        rms_norm(&last, &self.norm, cfg.rms_eps, &mut normed);
        let mut logits = vec![0f32; n * cfg.vocab];
        linear(&self.output, &normed, n, &mut logits);
        Ok(logits)
    }
}

/// `out = x·Wᵀ` for any number of rows (the packed kernel takes at most [`MAX_ROWS`] at once).
fn linear(p: &PackedLinear, x: &[f32], m: usize, out: &mut [f32]) {
    let (k, n) = (p.k(), p.n());
    let mut r0 = 0;
    while r0 < m {
        let r = MAX_ROWS.min(m - r0);
        p.forward(&x[r0 * k..(r0 + r) * k], r, &mut out[r0 * n..(r0 + r) * n]);
        r0 += r;
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

/// candle's `rms_norm`: `x / sqrt(mean(x²) + eps) · w`, row by row.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let sum2: f32 = xr.iter().map(|v| v * v).sum();
        let m = (sum2 / d as f32 + eps).sqrt();
        for ((o, &v), &a) in or.iter_mut().zip(xr).zip(w) {
            *o = v / m * a;
        }
    }
}

/// Rotates the pairs `(x[2i], x[2i+1])` by the angle whose cosine and sine are `c[i]`, `s[i]`.
fn rope_interleaved(x: &mut [f32], c: &[f32], s: &[f32]) {
    for (pair, (&c, &s)) in x.chunks_exact_mut(2).zip(c.iter().zip(s)) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

#[derive(Clone, Copy)]
struct AttnShape {
    n: usize,
    t: usize,
    pos0: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Causal grouped-query attention of the `t` new positions of every row over that row's cache
/// (`pos0 + t` positions): `att [n·t, heads·head_dim]`.
fn attention(qkv: &[f32], kc: &[f32], vc: &[f32], att: &mut [f32], s: AttnShape) {
    let AttnShape {
        n,
        t,
        pos0,
        heads,
        kv_heads,
        head_dim: hd,
    } = s;
    let (qn, kvn) = (heads * hd, kv_heads * hd);
    let w = qn + 2 * kvn;
    let group = heads / kv_heads;
    let stride = n * kvn; // one cache position
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let len_max = pos0 + t;
    // one task per (row, query, head): disjoint `head_dim` slices of `att`
    let work = n * t * heads * len_max * hd;
    let run = |(idx, out): (usize, &mut [f32]), scores: &mut Vec<f32>| {
        let head = idx % heads;
        let r = idx / heads; // b·t + i
        let (b, i) = (r / t, r % t);
        let g = head / group;
        let q = &qkv[r * w + head * hd..r * w + (head + 1) * hd];
        let len = pos0 + i + 1;
        scores.clear();
        let mut mx = f32::NEG_INFINITY;
        for j in 0..len {
            let o = j * stride + b * kvn + g * hd;
            let k = &kc[o..o + hd];
            let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
            let v = dot * scale;
            mx = mx.max(v);
            scores.push(v);
        }
        let mut sum = 0f32;
        for v in scores.iter_mut() {
            *v = (*v - mx).exp();
            sum += *v;
        }
        out.fill(0.0);
        for (j, p) in scores.iter().enumerate() {
            let p = p / sum;
            let o = j * stride + b * kvn + g * hd;
            for (a, &v) in out.iter_mut().zip(&vc[o..o + hd]) {
                *a += p * v;
            }
        }
    };
    if work > 1 << 16 {
        att.par_chunks_mut(hd)
            .enumerate()
            .with_min_len(8)
            .for_each_init(|| Vec::with_capacity(len_max), |sc, job| run(job, sc));
    } else {
        let mut sc = Vec::with_capacity(len_max);
        for job in att.chunks_mut(hd).enumerate() {
            run(job, &mut sc);
        }
    }
}

/// Reads `name` from a GGUF file as f32 values (dequantised), with its shape.
pub fn read_f32(
    ct: &candle_core::quantized::gguf_file::Content,
    file: &mut std::fs::File,
    name: &str,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let info = ct
        .tensor_infos
        .get(name)
        .with_context(|| format!("the GGUF file has no tensor {name}"))?;
    let q = info
        .read(file, ct.tensor_data_offset, &candle_core::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("reading tensor {name}: {e}"))?;
    let t = q.dequantize(&candle_core::Device::Cpu)?;
    let dims = t.dims().to_vec();
    Ok((t.flatten_all()?.to_vec1::<f32>()?, dims))
}
