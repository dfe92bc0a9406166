//! MPNet (Song et al., 2020) as a sentence encoder, e.g. sentence-transformers'
//! all-mpnet-base-v2: the same formulas as transformers' `MPNetModel` (docs/fairness.md,
//! "MPNet"), written with candle ops.
//!
//! - Embeddings: word + absolute position embeddings, LayerNorm, no token types. Position ids
//!   are RoBERTa's: the padding id (1) for padding tokens, `padding_idx + 1, + 2, …` for the
//!   others.
//! - Encoder: BERT-like post-LN layers (q/k/v/o attention, GELU (erf) feed-forward) plus a
//!   relative position bias: a learned `[32 buckets, heads]` table, indexed by the T5-style
//!   bidirectional bucket of `key position − query position` (16 buckets per direction, 8 exact,
//!   logarithmic up to distance 128), computed once per forward pass and added to the attention
//!   scores of every layer.
//! - Sentence embedding: the mean of the last hidden states over real tokens.
//!
//! One forward pass serves inference and training: with `train` set, LayerNorm and soft-max are
//! composed from differentiable candle ops (candle's fused kernels have no backward pass) and
//! seeded dropout masks are applied where transformers applies hidden-state dropout.

use crate::models::bert::Batch;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

/// The buckets transformers' `MPNetEncoder.compute_position_bias` always uses (it ignores
/// `relative_attention_num_buckets` there; the table must have at least this many rows).
pub const POSITION_BUCKETS: usize = 32;
/// Distances from which on every relative position shares the last bucket of its direction.
pub const MAX_DISTANCE: usize = 128;

fn default_eps() -> f64 {
    1e-5
}
fn default_buckets() -> usize {
    32
}
fn default_pad() -> u32 {
    1
}
fn default_act() -> String {
    "gelu".into()
}

/// The keys of an MPNet `config.json` the forward pass uses.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MpnetConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

impl MpnetConfig {
    /// Reads and checks `config.json` (model_type mpnet, sizes, GELU); errors name the file.
    pub fn read(path: &Path) -> Result<(Self, String)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let f = path.display().to_string();
        if let Some(t) = raw.get("model_type").and_then(|t| t.as_str()) {
            if t != "mpnet" {
                bail!("{f}: model_type is {t:?}, not \"mpnet\"; this is not an MPNet checkpoint");
            }
        }
        let cfg: Self =
            serde_json::from_value(raw).map_err(|e| anyhow!("{f} is not an MPNet config ({e})"))?;
        cfg.validate(&f)?;
        Ok((cfg, text))
    }

    pub fn validate(&self, f: &str) -> Result<()> {
        crate::parse::check_sizes(
            f,
            &[
                ("vocab_size", self.vocab_size, 3, 10_000_000),
                ("hidden_size", self.hidden_size, 1, 1 << 16),
                ("num_hidden_layers", self.num_hidden_layers, 1, 1024),
                ("intermediate_size", self.intermediate_size, 1, 1 << 18),
                (
                    "max_position_embeddings",
                    self.max_position_embeddings,
                    4,
                    1 << 20,
                ),
                (
                    "relative_attention_num_buckets",
                    self.relative_attention_num_buckets,
                    POSITION_BUCKETS,
                    1 << 16,
                ),
            ],
        )?;
        crate::parse::check_heads(
            f,
            "hidden_size",
            self.hidden_size,
            "num_attention_heads",
            self.num_attention_heads,
        )?;
        if self.hidden_act != "gelu" {
            bail!(
                "{f}: hidden_act {:?} is not supported (MPNet checkpoints use \"gelu\")",
                self.hidden_act
            );
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            bail!("{f}: layer_norm_eps must be in (0, 1)");
        }
        Ok(())
    }
}

/// transformers' `MPNetEncoder.relative_position_bucket` for one relative position
/// (`key − query`), with its float32 arithmetic.
pub fn relative_position_bucket(relative: i64) -> usize {
    let half = (POSITION_BUCKETS / 2) as i64;
    let n = -relative;
    let mut ret = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        ret += n;
    } else {
        let ratio = (n as f32 / max_exact as f32).ln();
        let scale = ((MAX_DISTANCE as f64) / (max_exact as f64)).ln() as f32;
        let large = max_exact + (ratio / scale * (half - max_exact) as f32) as i64;
        ret += large.min(half - 1);
    }
    ret as usize
}

/// Training state of a forward pass: dropout probability and its seeded mask stream.
pub struct Dropout<'a> {
    pub p: f64,
    pub rng: &'a mut rand_chacha::ChaCha8Rng,
}

impl Dropout<'_> {
    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let p = self.p;
        let m: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if self.rng.random::<f64>() < p {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        Ok((x * Tensor::from_vec(m, x.shape(), x.device())?)?)
    }
}

/// The MPNet network on a map of named tensors (transformers' names without a model prefix:
/// `embeddings.*`, `encoder.layer.<i>.*`, `encoder.relative_attention_bias.weight`), f32.
pub struct Mpnet {
    pub config: MpnetConfig,
    pub tensors: HashMap<String, Tensor>,
}

/// Tensor names every layer needs.
const LAYER_TENSORS: &[&str] = &[
    "attention.attn.q",
    "attention.attn.k",
    "attention.attn.v",
    "attention.attn.o",
    "attention.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
];

impl Mpnet {
    /// Checks that every tensor the config implies is present with the right shape.
    pub fn new(config: MpnetConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut want: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![config.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![config.max_position_embeddings, h],
            ),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
            (
                "encoder.relative_attention_bias.weight".into(),
                vec![
                    config.relative_attention_num_buckets,
                    config.num_attention_heads,
                ],
            ),
        ];
        for l in 0..config.num_hidden_layers {
            for n in LAYER_TENSORS {
                let (wo, wi) = match *n {
                    "intermediate.dense" => (i, h),
                    "output.dense" => (h, i),
                    _ => (h, h),
                };
                let p = format!("encoder.layer.{l}.{n}");
                if n.ends_with("LayerNorm") {
                    want.push((format!("{p}.weight"), vec![h]));
                } else {
                    want.push((format!("{p}.weight"), vec![wo, wi]));
                }
                want.push((format!("{p}.bias"), vec![wo]));
            }
        }
        for (k, s) in &want {
            let t = tensors
                .get(k)
                .ok_or_else(|| anyhow!("the MPNet weights have no tensor {k}"))?;
            if t.dims() != s.as_slice() {
                bail!(
                    "MPNet tensor {k} has shape {:?}, the config implies {s:?}",
                    t.dims()
                );
            }
        }
        Ok(Self { config, tensors })
    }

    /// Reads `model.safetensors` (names with or without an `mpnet.` prefix; the pooler and any
    /// head are dropped) as f32 on `device`.
    pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
        let all = candle_core::safetensors::load(path, device).map_err(|e| {
            anyhow!(
                "cannot read MPNet weights {}: {e} (corrupt or not safetensors)",
                path.display()
            )
        })?;
        let mut out = HashMap::new();
        for (name, t) in all {
            let n = name.strip_prefix("mpnet.").unwrap_or(&name).to_string();
            if (n.starts_with("embeddings.") || n.starts_with("encoder."))
                && n != "embeddings.position_ids"
            {
                out.insert(n, t.to_dtype(DType::F32)?);
            }
        }
        Ok(out)
    }

    fn get(&self, k: &str) -> Result<&Tensor> {
        self.tensors
            .get(k)
            .ok_or_else(|| anyhow!("the MPNet weights have no tensor {k}"))
    }

    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.get(&format!("{name}.weight"))?;
        let b = self.get(&format!("{name}.bias"))?;
        let dims = x.dims().to_vec();
        let x2 = x.reshape(((), dims[dims.len() - 1]))?;
        let y = x2.matmul(&w.t()?)?.broadcast_add(b)?;
        let mut out = dims;
        *out.last_mut().unwrap() = w.dim(0)?;
        Ok(y.reshape(out)?)
    }

    fn layer_norm(&self, x: &Tensor, name: &str, train: bool) -> Result<Tensor> {
        let w = self.get(&format!("{name}.weight"))?;
        let b = self.get(&format!("{name}.bias"))?;
        let eps = self.config.layer_norm_eps;
        if !train {
            return Ok(candle_nn::ops::layer_norm(x, w, b, eps as f32)?);
        }
        let h = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / h)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / h)?;
        let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(w)?.broadcast_add(b)?)
    }

    /// Position ids as transformers derives them from the input ids ([B, T] u32).
    pub fn position_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let pad = self.config.pad_token_id;
        let rows = ids.to_vec2::<u32>()?;
        let mut out = Vec::with_capacity(b * t);
        for row in rows {
            let mut k = 0u32;
            for id in row {
                if id == pad {
                    out.push(pad);
                } else {
                    k += 1;
                    out.push(pad + k);
                }
            }
        }
        if out
            .iter()
            .any(|&p| p as usize >= self.config.max_position_embeddings)
        {
            bail!(
                "a text is longer than MPNet's {} positions allow; lower --max-pieces",
                self.config.max_position_embeddings
            );
        }
        Ok(Tensor::from_vec(out, (b, t), ids.device())?)
    }

    /// Embedding output [B, T, H] (word + position embeddings, LayerNorm, dropout).
    pub fn embed(&self, ids: &Tensor, mut drop: Option<&mut Dropout>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.config.hidden_size;
        let pos = self.position_ids(ids)?;
        let we = self.get("embeddings.word_embeddings.weight")?;
        let pe = self.get("embeddings.position_embeddings.weight")?;
        let x = (we.index_select(&ids.flatten_all()?, 0)?
            + pe.index_select(&pos.flatten_all()?, 0)?)?
        .reshape((b, t, h))?;
        let x = self.layer_norm(&x, "embeddings.LayerNorm", drop.is_some())?;
        match drop.as_deref_mut() {
            Some(d) => d.apply(&x),
            None => Ok(x),
        }
    }

    /// The additive attention bias [B, heads, T, T]: relative-position bias plus a large
    /// negative value on padded keys (`mask` [B, T], 1 on real tokens).
    pub fn attention_bias(&self, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = mask.dims2()?;
        let heads = self.config.num_attention_heads;
        let buckets: Vec<u32> = (0..t)
            .flat_map(|q| (0..t).map(move |k| relative_position_bucket(k as i64 - q as i64) as u32))
            .collect();
        let idx = Tensor::from_vec(buckets, t * t, mask.device())?;
        let rel = self
            .get("encoder.relative_attention_bias.weight")?
            .index_select(&idx, 0)? // [T·T, heads]
            .reshape((t, t, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?; // [1, heads, T, T]
        let pad = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        Ok(rel.broadcast_add(&pad)?.contiguous()?)
    }

    /// Encoder layer `l` on hidden states `x` [B, T, H].
    pub fn layer(
        &self,
        l: usize,
        x: &Tensor,
        bias: &Tensor,
        mut drop: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t, hsz) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let dh = hsz / heads;
        let train = drop.is_some();
        let n = |s: &str| format!("encoder.layer.{l}.{s}");
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.linear(x, &n("attention.attn.q"))?)?;
        let k = split(self.linear(x, &n("attention.attn.k"))?)?;
        let v = split(self.linear(x, &n("attention.attn.v"))?)?;
        let scores = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?.broadcast_add(bias)?;
        let probs = if train {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, hsz))?;
        let mut a = self.linear(&ctx, &n("attention.attn.o"))?;
        if let Some(d) = drop.as_deref_mut() {
            a = d.apply(&a)?;
        }
        let x = self.layer_norm(&(a + x)?, &n("attention.LayerNorm"), train)?;
        let i = self.linear(&x, &n("intermediate.dense"))?.gelu_erf()?;
        let mut o = self.linear(&i, &n("output.dense"))?;
        if let Some(d) = drop.as_deref_mut() {
            o = d.apply(&o)?;
        }
        self.layer_norm(&(o + x)?, &n("output.LayerNorm"), train)
    }

    /// Layers `from..to` on `x` (the output of layer `from − 1`, or the embeddings).
    pub fn layers(
        &self,
        x: &Tensor,
        bias: &Tensor,
        from: usize,
        to: usize,
        mut drop: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for l in from..to {
            x = self.layer(l, &x, bias, drop.as_deref_mut())?;
        }
        Ok(x)
    }

    /// Last hidden states [B, T, H] of `ids` [B, T] u32 with `mask` [B, T] (inference).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = self.embed(ids, None)?;
        let bias = self.attention_bias(mask)?;
        self.layers(&x, &bias, 0, self.config.num_hidden_layers, None)
    }
}

/// Masked mean over the tokens of `h` [B, T, H] (`mask` [B, T], 1 on real tokens) → [B, H].
pub fn mean_pool(h: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let sum = h.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
}

/// An MPNet sentence encoder with its tokenizer (`<s> … </s>`, truncated to `max_len` pieces).
pub struct MpnetEncoder {
    pub model: Mpnet,
    tokenizer: Tokenizer,
    pad_id: u32,
    pub max_len: usize,
    pub device: Device,
}

impl MpnetEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from a folder.
    pub fn load(dir: &Path, max_len: usize, device: &Device) -> Result<Self> {
        let file = |n: &str| {
            let p = dir.join(n);
            if p.is_file() {
                Ok(p)
            } else {
                Err(anyhow!(
                    "the MPNet folder {} has no {n} (it needs config.json, model.safetensors, \
                     tokenizer.json; scripts/setup_mpnet.sh installs all-mpnet-base-v2)",
                    dir.display()
                ))
            }
        };
        let (config, _) = MpnetConfig::read(&file("config.json")?)?;
        let tpath = file("tokenizer.json")?;
        let tokenizer = Tokenizer::from_file(&tpath)
            .map_err(|e| anyhow!("cannot read tokenizer {}: {e}", tpath.display()))?;
        let tensors = Mpnet::read_tensors(&file("model.safetensors")?, device)?;
        Self::from_parts(Mpnet::new(config, tensors)?, tokenizer, max_len)
    }

    /// The encoder on a network and a tokenizer.
    pub fn from_parts(model: Mpnet, mut tokenizer: Tokenizer, max_len: usize) -> Result<Self> {
        if max_len < 2 || max_len + 2 > model.config.max_position_embeddings {
            bail!(
                "--max-pieces {max_len} must be between 2 and {} for this MPNet (its {} positions \
                 start after the padding id)",
                model.config.max_position_embeddings.saturating_sub(2),
                model.config.max_position_embeddings
            );
        }
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{e}"))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer
            .token_to_id("<pad>")
            .unwrap_or(model.config.pad_token_id);
        if pad_id != model.config.pad_token_id {
            bail!(
                "the tokenizer's <pad> is id {pad_id} but the MPNet config's pad_token_id is {}",
                model.config.pad_token_id
            );
        }
        let device = model
            .get("embeddings.word_embeddings.weight")?
            .device()
            .clone();
        Ok(Self {
            model,
            tokenizer,
            pad_id,
            max_len,
            device,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of one text (`<s> … </s>`, truncated to `max_len`).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenizes and right-pads a batch with `<pad>`.
    pub fn batch(&self, texts: &[&str]) -> Result<Batch> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_>>()?;
        self.batch_of_ids(&ids)
    }

    /// Right-pads token-id rows into a batch.
    pub fn batch_of_ids(&self, ids: &[Vec<u32>]) -> Result<Batch> {
        Batch::pad(ids, self.pad_id, &self.device)
    }

    /// Last hidden states [B, T, H].
    pub fn hidden(&self, batch: &Batch) -> Result<Tensor> {
        self.model.forward(&batch.ids, &batch.mask)
    }

    /// Masked mean of the last hidden states [B, H] (sentence-transformers' mean pooling,
    /// before its normalisation).
    pub fn mean_pooled(&self, texts: &[&str]) -> Result<Tensor> {
        let batch = self.batch(texts)?;
        mean_pool(&self.hidden(&batch)?, &batch.mask)
    }
}
