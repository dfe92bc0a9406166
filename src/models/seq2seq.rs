//! The official SCAN seq2seq (Gordon et al. `BasicSeq2Seq` with attention; docs/experiments.md, "scan") in
//! candle with autograd: Embedding(V_in, 64) → 1-layer bidirectional RNN/GRU/LSTM (64 per
//! direction) → attention decoder (hidden 128: Embedding(V_out,128) → Dropout 0.1 → dot
//! attention on the encoder outputs → Linear(256→128) → ReLU → cell → Linear(128→V_out) →
//! log_softmax), greedy decoding from SOS up to 50 steps.
//!
//! Batched with masks: padded encoder steps do not update the state and are masked out of the
//! attention, so a batch of B gives exactly the B batch-1 results. Parameter names follow the
//! PyTorch state dict (`encoder.rnn.weight_ih_l0_reverse`, `decoder.attn_combine.weight`, …).
//!
//! Input convention (one u32 tensor per example, so that group actions stay generic): a row is
//! `[command ids + EOS, padded with EOS to in_cols | target ids + EOS, padded with EOS to 50]`.
//! Lengths are recovered from the first EOS.

use super::tape::Tape;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::sync::Arc;

pub const SOS: u32 = 0;
pub const EOS: u32 = 1;
pub const MAX_LEN: usize = 50;
/// Batches up to this size use the weight-gradient tape in training.
pub const TAPE_MAX_ROWS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    Rnn,
    Gru,
    Lstm,
}

impl CellKind {
    fn gates(&self) -> usize {
        match self {
            CellKind::Rnn => 1,
            CellKind::Gru => 3,
            CellKind::Lstm => 4,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            CellKind::Rnn => "rnn",
            CellKind::Gru => "gru",
            CellKind::Lstm => "lstm",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Seq2SeqConfig {
    pub cell: CellKind,
    pub in_vocab: usize,
    pub out_vocab: usize,
    /// Encoder embedding and hidden size per direction (64).
    pub enc_hidden: usize,
    /// Decoder hidden size (= 2 × enc_hidden, 128).
    pub dec_hidden: usize,
    pub dropout: f64,
}

impl Seq2SeqConfig {
    pub fn official(cell: CellKind, in_vocab: usize, out_vocab: usize) -> Self {
        Seq2SeqConfig {
            cell,
            in_vocab,
            out_vocab,
            enc_hidden: 64,
            dec_hidden: 128,
            dropout: 0.1,
        }
    }
}

#[derive(Clone)]
struct RnnParams {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

/// The model's parameters (either trainable `Var`s' tensors or detached copies).
#[derive(Clone)]
pub struct Seq2Seq {
    pub cfg: Seq2SeqConfig,
    enc_emb: Tensor,
    enc_fwd: RnnParams,
    enc_bwd: RnnParams,
    dec_emb: Tensor,
    comb_w: Tensor,
    comb_b: Tensor,
    dec_rnn: RnnParams,
    out_w: Tensor,
    out_b: Tensor,
}

fn rnn_params(
    vb: &VarBuilder,
    prefix: &str,
    suffix: &str,
    input: usize,
    hidden: usize,
    gates: usize,
) -> Result<RnnParams> {
    let g = |n: &str, s: (usize, usize)| vb.get(s, &format!("{prefix}.{n}{suffix}"));
    let b = |n: &str| vb.get(gates * hidden, &format!("{prefix}.{n}{suffix}"));
    Ok(RnnParams {
        w_ih: g("weight_ih_l0", (gates * hidden, input))?,
        w_hh: g("weight_hh_l0", (gates * hidden, hidden))?,
        b_ih: b("bias_ih_l0")?,
        b_hh: b("bias_hh_l0")?,
    })
}

impl Seq2Seq {
    /// Builds the model from a VarBuilder holding the PyTorch-named tensors.
    pub fn new(vb: VarBuilder, cfg: &Seq2SeqConfig) -> Result<Self> {
        if cfg.dec_hidden != 2 * cfg.enc_hidden {
            bail!("decoder hidden must be twice the encoder hidden (bidirectional encoder)");
        }
        let (e, h, g) = (cfg.enc_hidden, cfg.dec_hidden, cfg.cell.gates());
        Ok(Seq2Seq {
            cfg: cfg.clone(),
            enc_emb: vb.get((cfg.in_vocab, e), "encoder.embedding.weight")?,
            enc_fwd: rnn_params(&vb, "encoder.rnn", "", e, e, g)?,
            enc_bwd: rnn_params(&vb, "encoder.rnn", "_reverse", e, e, g)?,
            dec_emb: vb.get((cfg.out_vocab, h), "decoder.embedding.weight")?,
            comb_w: vb.get((h, 2 * h), "decoder.attn_combine.weight")?,
            comb_b: vb.get(h, "decoder.attn_combine.bias")?,
            dec_rnn: rnn_params(&vb, "decoder.rnn", "", h, h, g)?,
            out_w: vb.get((cfg.out_vocab, h), "decoder.out.weight")?,
            out_b: vb.get(cfg.out_vocab, "decoder.out.bias")?,
        })
    }

    /// A fresh model in a VarMap with PyTorch's default initialisation drawn from a seeded
    /// ChaCha RNG: U(±1/√H) for recurrent tensors, U(±1/√fan_in) for linear layers, N(0,1)
    /// for embeddings.
    pub fn init(cfg: &Seq2SeqConfig, seed: u64, device: &Device) -> Result<(VarMap, Seq2Seq)> {
        use rand_distr::{Distribution, Normal, Uniform};
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Seq2Seq::new(vb, cfg)?;
        let mut rng = crate::output::rng_for(seed, "seq2seq-init");
        {
            let data = varmap.data().lock().unwrap();
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for name in names {
                let var = &data[name];
                let n = var.elem_count();
                let v: Vec<f32> = if name.ends_with("embedding.weight") {
                    let d = Normal::new(0f32, 1.0).unwrap();
                    (0..n).map(|_| d.sample(&mut rng)).collect()
                } else {
                    let k = if name.contains(".rnn.") {
                        let hsz = if name.starts_with("encoder") {
                            cfg.enc_hidden
                        } else {
                            cfg.dec_hidden
                        };
                        1.0 / (hsz as f32).sqrt()
                    } else if name.starts_with("decoder.attn_combine") {
                        1.0 / ((2 * cfg.dec_hidden) as f32).sqrt()
                    } else {
                        1.0 / (cfg.dec_hidden as f32).sqrt()
                    };
                    let d = Uniform::new_inclusive(-k, k).unwrap();
                    (0..n).map(|_| d.sample(&mut rng)).collect()
                };
                var.set(&Tensor::from_vec(v, var.shape(), device)?)?;
            }
        }
        Ok((varmap, model))
    }

    /// A copy whose tensors are detached from the autograd graph (fast evaluation).
    pub fn detached(&self) -> Seq2Seq {
        let d = |p: &RnnParams| RnnParams {
            w_ih: p.w_ih.detach(),
            w_hh: p.w_hh.detach(),
            b_ih: p.b_ih.detach(),
            b_hh: p.b_hh.detach(),
        };
        Seq2Seq {
            cfg: self.cfg.clone(),
            enc_emb: self.enc_emb.detach(),
            enc_fwd: d(&self.enc_fwd),
            enc_bwd: d(&self.enc_bwd),
            dec_emb: self.dec_emb.detach(),
            comb_w: self.comb_w.detach(),
            comb_b: self.comb_b.detach(),
            dec_rnn: d(&self.dec_rnn),
            out_w: self.out_w.detach(),
            out_b: self.out_b.detach(),
        }
    }
}

/// Names of the encoder's and the decoder's variables (for per-module gradient clipping).
pub fn split_vars(varmap: &VarMap) -> (Vec<Var>, Vec<Var>) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut enc = Vec::new();
    let mut dec = Vec::new();
    for n in names {
        if n.starts_with("encoder.") {
            enc.push(data[n].clone());
        } else {
            dec.push(data[n].clone());
        }
    }
    (enc, dec)
}

/// One recurrent step. `xw` = x·W_ihᵀ + b_ih, `hw` = h·W_hhᵀ + b_hh. GRU and LSTM
/// cells are fused custom ops (see `fused.rs`).
fn cell_step(
    kind: CellKind,
    xw: &Tensor,
    hw: Tensor,
    h: &Tensor,
    c: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let hs = h.dim(1)?;
    Ok(match kind {
        CellKind::Rnn => ((xw + hw)?.tanh()?, None),
        CellKind::Gru => (super::fused::gru_cell(xw, &hw, h)?, None),
        CellKind::Lstm => {
            let g = (xw + hw)?;
            let hc = super::fused::lstm_cell(&g, c.expect("lstm cell state"))?;
            (hc.narrow(1, 0, hs)?, Some(hc.narrow(1, hs, hs)?))
        }
    })
}

/// `m * new + (1 - m) * old` with a `[N, 1]` 0/1 mask.
fn masked(m: Option<&Tensor>, new: Tensor, old: &Tensor) -> Result<Tensor> {
    match m {
        None => Ok(new),
        Some(m) => Ok((old + (new - old)?.broadcast_mul(m)?)?),
    }
}

/// How a forward pass runs.
pub struct RunMode<'a> {
    /// Per base example: feed the gold target (teacher forcing). Row r of a batch of copies
    /// uses entry `r % len`. Empty = never.
    pub teacher: &'a [bool],
    /// Training mode: decoder-embedding dropout on (masks from `rng`).
    pub train: bool,
    pub rng: Option<&'a RefCell<rand_chacha::ChaCha8Rng>>,
    /// Training: weight gradients of the recurrent loop accumulate on this tape.
    pub tape: Option<&'a Arc<Tape>>,
}

impl RunMode<'_> {
    /// Evaluation mode: greedy decoding, no dropout, no tape.
    pub fn eval() -> RunMode<'static> {
        RunMode {
            teacher: &[],
            train: false,
            rng: None,
            tape: None,
        }
    }
    /// `x · wᵀ` (`w_t` = `wᵀ`), through the tape when training with small batches (where
    /// per-step weight-gradient allocations dominate; larger batches amortise them and gain
    /// from the blocked GEMM).
    fn lin(&self, x: &Tensor, w: &Tensor, w_t: &Tensor) -> Result<Tensor> {
        Ok(match self.tape {
            Some(t) if x.dim(0)? <= TAPE_MAX_ROWS => t.linear(x, w)?,
            _ => x.matmul(w_t)?,
        })
    }
}

fn first_eos_len(row: &[u32]) -> usize {
    row.iter()
        .position(|&t| t == EOS)
        .map(|p| p + 1)
        .unwrap_or(row.len())
}

impl Seq2Seq {
    /// Forward pass on packed rows `[N, in_cols + 50]` → log-probs `[N, 50, V_out]`, rows after
    /// a sequence's end (EOS emitted, or target length under teacher forcing) are zero.
    pub fn forward(&self, packed: &Tensor, in_cols: usize, mode: &RunMode) -> Result<Tensor> {
        let dev = packed.device().clone();
        let (n, cols) = packed.dims2()?;
        if cols != in_cols + MAX_LEN {
            bail!(
                "packed SCAN batch has {cols} columns, expected {} + {MAX_LEN}",
                in_cols
            );
        }
        let rows = packed.to_vec2::<u32>()?;
        let in_len: Vec<usize> = rows.iter().map(|r| first_eos_len(&r[..in_cols])).collect();
        let tgt_len: Vec<usize> = rows.iter().map(|r| first_eos_len(&r[in_cols..])).collect();
        let t_in = *in_len.iter().max().unwrap();
        let (e, h) = (self.cfg.enc_hidden, self.cfg.dec_hidden);
        let lstm = self.cfg.cell == CellKind::Lstm;

        // ---- encoder
        // time-major: row t*N + b, so each step's slice is a contiguous block
        let ids = packed.narrow(1, 0, t_in)?.t()?.contiguous()?;
        let emb = self.enc_emb.index_select(&ids.flatten_all()?, 0)?; // [T*N, e]
        let ragged = in_len.iter().any(|&l| l != t_in);
        let masks: Vec<Option<Tensor>> = (0..t_in)
            .map(|t| {
                if !ragged {
                    return Ok(None);
                }
                let m: Vec<f32> = in_len
                    .iter()
                    .map(|&l| if t < l { 1.0 } else { 0.0 })
                    .collect();
                Ok(Some(Tensor::from_vec(m, (n, 1), &dev)?))
            })
            .collect::<Result<_>>()?;
        let run_dir =
            |p: &RnnParams, reverse: bool| -> Result<(Vec<Tensor>, Tensor, Option<Tensor>)> {
                let xw = emb.matmul(&p.w_ih.t()?)?.broadcast_add(&p.b_ih)?; // [T*N, G*e]
                let w_hh_t = p.w_hh.t()?;
                let mut hs = Tensor::zeros((n, e), DType::F32, &dev)?;
                let mut cs = if lstm {
                    Some(Tensor::zeros((n, e), DType::F32, &dev)?)
                } else {
                    None
                };
                let mut outs = vec![None; t_in];
                let order: Vec<usize> = if reverse {
                    (0..t_in).rev().collect()
                } else {
                    (0..t_in).collect()
                };
                for t in order {
                    let x = xw.narrow(0, t * n, n)?;
                    let hw = mode.lin(&hs, &p.w_hh, &w_hh_t)?.broadcast_add(&p.b_hh)?;
                    let (h2, c2) = cell_step(self.cfg.cell, &x, hw, &hs, cs.as_ref())?;
                    hs = masked(masks[t].as_ref(), h2, &hs)?;
                    if let (Some(c2), Some(c)) = (c2, cs.as_ref()) {
                        cs = Some(masked(masks[t].as_ref(), c2, c)?);
                    }
                    outs[t] = Some(hs.clone());
                }
                Ok((outs.into_iter().map(|o| o.unwrap()).collect(), hs, cs))
            };
        let (of, hf, cf) = run_dir(&self.enc_fwd, false)?;
        let (ob, hb, cb) = run_dir(&self.enc_bwd, true)?;
        let enc_out = Tensor::cat(&[Tensor::stack(&of, 1)?, Tensor::stack(&ob, 1)?], 2)?; // [N, T, h]
        let enc_out_t = enc_out.transpose(1, 2)?.contiguous()?; // [N, h, T]
        let attn_mask = if ragged {
            let m: Vec<f32> = in_len
                .iter()
                .flat_map(|&l| (0..t_in).map(move |t| if t < l { 0.0 } else { -1e9 }))
                .collect();
            Some(Tensor::from_vec(m, (n, 1, t_in), &dev)?)
        } else {
            None
        };
        let mut hd = Tensor::cat(&[hf, hb], 1)?;
        let mut cd = if lstm {
            Some(Tensor::cat(&[cf.unwrap(), cb.unwrap()], 1)?)
        } else {
            None
        };

        // ---- decoder
        let tf: Vec<bool> = (0..n)
            .map(|r| !mode.teacher.is_empty() && mode.teacher[r % mode.teacher.len()])
            .collect();
        let max_tf = (0..n)
            .filter(|&r| tf[r])
            .map(|r| tgt_len[r])
            .max()
            .unwrap_or(0);
        let any_free = tf.iter().any(|&b| !b);
        let comb_w_t = self.comb_w.t()?;
        let out_w_t = self.out_w.t()?;
        let rnn_w_ih_t = self.dec_rnn.w_ih.t()?;
        let rnn_w_hh_t = self.dec_rnn.w_hh.t()?;
        let mut input: Vec<u32> = vec![SOS; n];
        let mut done = vec![false; n]; // free-running rows that emitted EOS
        let mut outs: Vec<Tensor> = Vec::new();
        let p = self.cfg.dropout;
        for t in 0..MAX_LEN {
            let alive: Vec<bool> = (0..n)
                .map(|r| if tf[r] { t < tgt_len[r] } else { !done[r] })
                .collect();
            if !alive.iter().any(|&a| a) || (!any_free && t >= max_tf) {
                break;
            }
            let inp = Tensor::from_vec(input.clone(), n, &dev)?;
            let mut x = self.dec_emb.index_select(&inp, 0)?; // [N, h]
            if mode.train && p > 0.0 {
                let rng = mode.rng.expect("training mode needs an RNG for dropout");
                let mut rng = rng.borrow_mut();
                let keep = 1.0 / (1.0 - p) as f32;
                let m: Vec<f32> = (0..n * h)
                    .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
                    .collect();
                x = (x * Tensor::from_vec(m, (n, h), &dev)?)?;
            }
            let mut scores = hd.unsqueeze(1)?.matmul(&enc_out_t)?; // [N,1,T]
            if let Some(m) = &attn_mask {
                scores = (scores + m)?;
            }
            let attn = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = attn.matmul(&enc_out)?.squeeze(1)?; // [N, h]
            let comb = mode
                .lin(&Tensor::cat(&[x, ctx], 1)?, &self.comb_w, &comb_w_t)?
                .broadcast_add(&self.comb_b)?
                .relu()?;
            let xw = mode
                .lin(&comb, &self.dec_rnn.w_ih, &rnn_w_ih_t)?
                .broadcast_add(&self.dec_rnn.b_ih)?;
            let hw = mode
                .lin(&hd, &self.dec_rnn.w_hh, &rnn_w_hh_t)?
                .broadcast_add(&self.dec_rnn.b_hh)?;
            let (h2, c2) = cell_step(self.cfg.cell, &xw, hw, &hd, cd.as_ref())?;
            hd = h2;
            cd = c2;
            let logp = candle_nn::ops::log_softmax(
                &mode
                    .lin(&hd, &self.out_w, &out_w_t)?
                    .broadcast_add(&self.out_b)?,
                D::Minus1,
            )?;
            let pred: Vec<u32> = logp.argmax(D::Minus1)?.to_vec1()?;
            let alive_t = if alive.iter().all(|&a| a) {
                logp
            } else {
                let m: Vec<f32> = alive.iter().map(|&a| if a { 1.0 } else { 0.0 }).collect();
                logp.broadcast_mul(&Tensor::from_vec(m, (n, 1), &dev)?)?
            };
            outs.push(alive_t);
            for r in 0..n {
                if tf[r] {
                    input[r] = rows[r][in_cols + t];
                } else {
                    input[r] = pred[r];
                    if alive[r] && pred[r] == EOS {
                        done[r] = true;
                    }
                }
            }
        }
        let steps = outs.len();
        let mut y = Tensor::stack(&outs, 1)?; // [N, steps, V]
        if steps < MAX_LEN {
            let pad = Tensor::zeros((n, MAX_LEN - steps, self.cfg.out_vocab), DType::F32, &dev)?;
            y = Tensor::cat(&[y, pad], 1)?;
        }
        Ok(y)
    }
}

/// The official loss per example: Σ_t −out[t, target_t] over target positions, stopping after
/// the first position whose argmax is EOS (inclusive); averaged over the batch.
/// Returns (loss tensor, mean of per-example loss / target length for logging).
pub fn seq_nll(out: &Tensor, packed: &Tensor, in_cols: usize) -> Result<(Tensor, f64)> {
    let (n, _, _) = out.dims3()?;
    let tgt = packed.narrow(1, in_cols, MAX_LEN)?.contiguous()?;
    let rows = tgt.to_vec2::<u32>()?;
    let pred = out.argmax(D::Minus1)?.to_vec2::<u32>()?;
    let mut w = vec![0f32; n * MAX_LEN];
    let mut lens = Vec::with_capacity(n);
    for r in 0..n {
        let len = first_eos_len(&rows[r]);
        lens.push(len as f64);
        for t in 0..len {
            w[r * MAX_LEN + t] = 1.0;
            if pred[r][t] == EOS {
                break;
            }
        }
    }
    let w = Tensor::from_vec(w, (n, MAX_LEN), out.device())?;
    let picked = out.gather(&tgt.unsqueeze(2)?, 2)?.squeeze(2)?; // [N, 50]
    let per = (picked * &w)?.sum(1)?.neg()?; // [N]
    let loss = per.mean(0)?;
    let per_v: Vec<f32> = per.to_vec1()?;
    let log = per_v
        .iter()
        .zip(&lens)
        .map(|(&l, &len)| l as f64 / len)
        .sum::<f64>()
        / n as f64;
    Ok((loss, log))
}

/// Exact match (docs/experiments.md, "scan"): argmax per row, cut after the first EOS (no EOS: the first
/// 49 rows); correct iff the length equals the target length (EOS included) and every token
/// matches.
pub fn exact_match(pred_rows: &[u32], target_with_eos: &[u32]) -> bool {
    let cut = match pred_rows.iter().position(|&t| t == EOS) {
        Some(p) => &pred_rows[..p + 1],
        None => &pred_rows[..pred_rows.len().min(MAX_LEN - 1)],
    };
    cut == target_with_eos
}

/// Packs (input ids without EOS, target ids without EOS) pairs into `[N, in_cols + 50]`.
pub fn pack(pairs: &[(&[u32], &[u32])], in_cols: usize, device: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(pairs.len() * (in_cols + MAX_LEN));
    for (inp, tgt) in pairs {
        if inp.len() + 1 > in_cols {
            bail!(
                "command of {} tokens does not fit in {} columns",
                inp.len(),
                in_cols
            );
        }
        if tgt.len() + 1 > MAX_LEN {
            bail!(
                "target of {} actions exceeds the maximum of {}",
                tgt.len(),
                MAX_LEN - 1
            );
        }
        v.extend_from_slice(inp);
        v.extend(std::iter::repeat_n(EOS, in_cols - inp.len()));
        v.extend_from_slice(tgt);
        v.extend(std::iter::repeat_n(EOS, MAX_LEN - tgt.len()));
    }
    Ok(Tensor::from_vec(
        v,
        (pairs.len(), in_cols + MAX_LEN),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_edge_cases() {
        // correct, with EOS
        assert!(exact_match(&[3, 4, EOS, 0, 0], &[3, 4, EOS]));
        // wrong token
        assert!(!exact_match(&[3, 5, EOS], &[3, 4, EOS]));
        // too long / too short
        assert!(!exact_match(&[3, 4, 4, EOS], &[3, 4, EOS]));
        assert!(!exact_match(&[3, EOS, 4], &[3, 4, EOS]));
        // no EOS at all: the first 49 rows are compared, so it can never equal a target with EOS
        let no_eos = vec![3u32; 50];
        assert!(!exact_match(&no_eos, &[3, 3, EOS]));
        let mut t49 = vec![3u32; 48];
        t49.push(EOS);
        assert!(!exact_match(&no_eos, &t49));
    }
}
