//! GPT-2 (HF `GPT2LMHeadModel` checkpoints) written directly with candle-nn, with a per-layer
//! KV cache for a batch of equally long sequences, plus a deterministic tiny random snapshot
//! for tests and `equirun check`.
//!
//! Checkpoint layout: names are either bare (`wte.weight`,
//! `h.0.attn.c_attn.weight`, … as in `openai-community/gpt2`) or `transformer.`-prefixed (what
//! `save_pretrained` writes; checked with transformers 5.24). The Conv1D weights (`c_attn`, `c_proj`, `c_fc`,
//! `mlp.c_proj`) are stored **[in, out]**. `lm_head` is tied to `wte` (an explicit
//! `lm_head.weight` is used only when `tie_word_embeddings` is false). The `attn.bias` /
//! `attn.masked_bias` causal-mask buffers are ignored.

use crate::hub::ResolvedModel;
use crate::kernels::decode::PackedLinear;
use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::kv_cache::KvCache;
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Files a GPT-2 snapshot needs for the model itself (the tokenizer is loaded elsewhere).
pub const REQUIRED_FILES: &[&str] = &["config.json", "model.safetensors"];

/// KV-cache buffers grow in chunks of this many positions (capped at `n_positions`).
const CACHE_CHUNK: usize = 128;

/// The GPT-2 hyper-parameters equirun uses (from an HF `GPT2Config` config.json).
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_positions: usize,
    /// MLP width (`n_inner`, default 4·n_embd).
    pub n_inner: usize,
    pub layer_norm_epsilon: f64,
    /// Scale attention scores by 1/sqrt(head_dim) (HF `scale_attn_weights`, default true).
    pub scale_attn_weights: bool,
    /// Also scale by 1/(layer_idx+1) (HF `scale_attn_by_inverse_layer_idx`, default false).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// `lm_head` shares `wte` (HF `tie_word_embeddings`, default true).
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Gpt2Config {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Number of parameters (tied lm_head counted once).
    pub fn num_params(&self) -> usize {
        let e = self.n_embd;
        let per_layer = 2 * 2 * e
            + (e * 3 * e + 3 * e)
            + (e * e + e)
            + (e * self.n_inner + self.n_inner)
            + (self.n_inner * e + e);
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * e
        };
        self.vocab_size * e + self.n_positions * e + self.n_layer * per_layer + 2 * e + head
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.n_head > 0 && self.n_embd > 0 && self.n_layer > 0,
            "GPT-2 config: n_embd, n_layer and n_head must be positive"
        );
        ensure!(
            self.n_embd % self.n_head == 0,
            "GPT-2 config: n_embd {} is not a multiple of n_head {}",
            self.n_embd,
            self.n_head
        );
        ensure!(
            self.vocab_size > 0 && self.n_positions > 0,
            "GPT-2 config: vocab_size and n_positions must be positive"
        );
        crate::parse::check_sizes(
            "config.json",
            &[
                ("vocab_size", self.vocab_size, 1, 10_000_000),
                ("n_embd", self.n_embd, 1, 1 << 16),
                ("n_layer", self.n_layer, 1, 1024),
                ("n_positions", self.n_positions, 1, 1 << 20),
                ("n_inner", self.n_inner, 1, 1 << 18),
            ],
        )?;
        Ok(())
    }

    /// Checks that `n_layer` matches the numbered blocks (`h.{i}.`) in the weights file.
    fn validate_layers(&self, weights: &std::path::Path) -> Result<()> {
        // an unreadable weights file is reported by the loader itself
        let Ok(names) = crate::parse::safetensors_names(weights) else {
            return Ok(());
        };
        crate::parse::check_block_count(
            &names,
            weights,
            "config.json",
            "n_layer",
            self.n_layer,
            &["h.", "transformer.h."],
        )
    }
}

#[derive(Deserialize, Debug)]
struct Gpt2Json {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_positions: Option<usize>,
    n_inner: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    tie_word_embeddings: Option<bool>,
    add_cross_attention: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn token_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}

/// Parses an HF GPT-2 config.json (HF `GPT2Config` defaults = the 124M model for absent keys).
pub fn parse_config(text: &str) -> Result<Gpt2Config> {
    let j: Gpt2Json =
        serde_json::from_str(text).context("config.json is not a valid GPT-2 config")?;
    if let Some(mt) = &j.model_type {
        if mt != "gpt2" {
            bail!("config.json has model_type '{mt}', expected 'gpt2'");
        }
    }
    match j.activation_function.as_deref() {
        None | Some("gelu_new") | Some("gelu_pytorch_tanh") => {}
        Some(other) => bail!(
            "unsupported activation_function '{other}' in config.json: equirun's GPT-2 implements \
             the tanh-approximate GELU only (gelu_new / gelu_pytorch_tanh)"
        ),
    }
    if j.add_cross_attention == Some(true) {
        bail!("config.json sets add_cross_attention: GPT-2 with cross-attention is not supported");
    }
    let n_embd = j.n_embd.unwrap_or(768);
    let cfg = Gpt2Config {
        vocab_size: j.vocab_size.unwrap_or(50257),
        n_embd,
        n_layer: j.n_layer.unwrap_or(12),
        n_head: j.n_head.unwrap_or(12),
        n_positions: j.n_positions.unwrap_or(1024),
        n_inner: j.n_inner.unwrap_or(4 * n_embd),
        layer_norm_epsilon: j.layer_norm_epsilon.unwrap_or(1e-5),
        scale_attn_weights: j.scale_attn_weights.unwrap_or(true),
        scale_attn_by_inverse_layer_idx: j.scale_attn_by_inverse_layer_idx.unwrap_or(false),
        tie_word_embeddings: j.tie_word_embeddings.unwrap_or(true),
        bos_token_id: token_id(&j.bos_token_id),
        eos_token_id: token_id(&j.eos_token_id),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The decoding-step copy of a weight ([`PackedLinear`]) for f32 models on the CPU, when the
/// fast kernels are on (`EQUIRUN_FAST`).
fn pack(
    w: &Tensor,
    kn: bool,
    b: Option<&Tensor>,
    vb: &VarBuilder,
) -> Result<Option<Arc<PackedLinear>>> {
    if !crate::kernels::enabled(vb.device(), vb.dtype()) {
        return Ok(None);
    }
    Ok(PackedLinear::from_tensor(w, kn, b)?.map(Arc::new))
}

/// GPT-2's Conv1D: `y = x · W + b` with `W` stored `[in, out]`.
#[derive(Clone, Debug)]
struct Conv1D {
    /// `[in, out]`, as stored in the checkpoint.
    w: Tensor,
    b: Tensor,
    /// `w` and `b` packed for products with few rows (decoding steps); f32 on the CPU only.
    packed: Option<Arc<PackedLinear>>,
}

impl Conv1D {
    fn load(n_in: usize, n_out: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((n_in, n_out), "weight")?;
        let b = vb.get(n_out, "bias")?;
        let packed = pack(&w, true, Some(&b), &vb)?;
        Ok(Self { w, b, packed })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }

    /// `x · W + b`, then the tanh GELU (`gelu_new`) if `gelu`.
    fn forward_act(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let n_in = *dims.last().ok_or_else(|| anyhow!("Conv1D on a scalar"))?;
        let rows = x.elem_count() / n_in.max(1);
        let x = x.reshape((rows, n_in))?;
        let packed = match &self.packed {
            Some(p) => p.forward_tensor(&x, gelu)?,
            None => None,
        };
        let y = match packed {
            Some(y) => y,
            None => {
                let y = x.matmul(&self.w)?.broadcast_add(&self.b)?;
                if gelu {
                    y.gelu()? // tanh GELU = gelu_new
                } else {
                    y
                }
            }
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.b.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

#[derive(Clone, Debug)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    /// `x` `[n, t, E]`; `mask` `[t, T]` (additive, only for t > 1); `cache` appends k/v.
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (n, t, e) = x.dims3()?;
        let qkv = self.c_attn.forward(x)?; // [n, t, 3E]: [Q_all | K_all | V_all]
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(D::Minus1, i * e, e)?
                .reshape((n, t, self.n_head, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?); // [n, H, t, hd]
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?, // [n, H, T, hd] (views of the cache buffers)
            None => (k, v),
        };
        let mut att = (q.matmul(&k.t()?)? * self.scale)?; // [n, H, t, T]
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // [n, H, t, hd]
        let y = y.transpose(1, 2)?.reshape((n, t, e))?;
        self.c_proj.forward(&y)
    }
}

#[derive(Clone, Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

impl Block {
    fn load(cfg: &Gpt2Config, layer: usize, vb: VarBuilder) -> Result<Self> {
        let e = cfg.n_embd;
        let eps = cfg.layer_norm_epsilon;
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= (cfg.head_dim() as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Self {
            ln_1: candle_nn::layer_norm(e, eps, vb.pp("ln_1"))?,
            attn: Attention {
                c_attn: Conv1D::load(e, 3 * e, vb.pp("attn.c_attn"))?,
                c_proj: Conv1D::load(e, e, vb.pp("attn.c_proj"))?,
                n_head: cfg.n_head,
                head_dim: cfg.head_dim(),
                scale,
            },
            ln_2: candle_nn::layer_norm(e, eps, vb.pp("ln_2"))?,
            c_fc: Conv1D::load(e, cfg.n_inner, vb.pp("mlp.c_fc"))?,
            mlp_proj: Conv1D::load(cfg.n_inner, e, vb.pp("mlp.c_proj"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.attn.forward(&self.ln_1.forward(x)?, mask, cache)?;
        let x = (x + h)?;
        let h = self.c_fc.forward_act(&self.ln_2.forward(&x)?, true)?;
        let h = self.mlp_proj.forward(&h)?;
        Ok((x + h)?)
    }
}

/// GPT-2 weights (stateless; see [`Gpt2Lm`] for the cached decoder).
#[derive(Clone, Debug)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `[vocab, E]`: `wte` when tied.
    lm_head: Tensor,
    /// `lm_head` packed for decoding steps (f32 on the CPU only).
    lm_head_packed: Option<Arc<PackedLinear>>,
    pub config: Gpt2Config,
    device: Device,
}

impl Gpt2 {
    /// Loads from a VarBuilder over an HF checkpoint with bare or `transformer.`-prefixed names.
    pub fn load(vb: VarBuilder, cfg: Gpt2Config) -> Result<Gpt2> {
        crate::kernels::tune_allocator();
        cfg.validate()?;
        let root = vb.clone();
        let vb = if vb.contains_tensor("wte.weight") {
            vb
        } else if vb.contains_tensor("transformer.wte.weight") {
            vb.pp("transformer")
        } else {
            bail!("neither 'wte.weight' nor 'transformer.wte.weight' is in the checkpoint (not a GPT-2 checkpoint?)");
        };
        let e = cfg.n_embd;
        let wte = vb.get((cfg.vocab_size, e), "wte.weight")?;
        let wpe = vb.get((cfg.n_positions, e), "wpe.weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                Block::load(&cfg, i, vb.pp(format!("h.{i}")))
                    .with_context(|| format!("layer h.{i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = candle_nn::layer_norm(e, cfg.layer_norm_epsilon, vb.pp("ln_f"))?;
        let lm_head = if !cfg.tie_word_embeddings {
            if root.contains_tensor("lm_head.weight") {
                root.get((cfg.vocab_size, e), "lm_head.weight")?
            } else {
                bail!("config.json sets tie_word_embeddings false but the checkpoint has no lm_head.weight");
            }
        } else {
            wte.clone()
        };
        let lm_head_packed = pack(&lm_head, false, None, &vb)?;
        let device = vb.device().clone();
        Ok(Gpt2 {
            wte: Embedding::new(wte, e),
            wpe,
            blocks,
            ln_f,
            lm_head,
            lm_head_packed,
            config: cfg,
            device,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks `ids` `[n, t]` (any integer dtype) and returns them as u32.
    fn check_ids(&self, ids: &Tensor, past: usize) -> Result<(Tensor, usize, usize)> {
        let (n, t) = ids
            .dims2()
            .map_err(|_| anyhow!("GPT-2 input ids must be [n, t], got shape {:?}", ids.dims()))?;
        ensure!(
            n > 0 && t > 0,
            "GPT-2 input ids are empty (shape [{n}, {t}])"
        );
        if past + t > self.config.n_positions {
            bail!(
                "sequence too long for GPT-2: {past} cached + {t} new tokens = {} > n_positions {} \
                 (the model's context window)",
                past + t,
                self.config.n_positions
            );
        }
        let ids = ids.to_device(&self.device)?;
        let ids = match ids.dtype() {
            DType::U32 => ids,
            DType::I64 | DType::U8 => ids.to_dtype(DType::U32)?,
            other => bail!("GPT-2 input ids must be an integer tensor, got {other:?}"),
        };
        let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max as usize >= self.config.vocab_size {
            bail!(
                "token id {max} is out of range for GPT-2's vocabulary of {}",
                self.config.vocab_size
            );
        }
        Ok((ids, n, t))
    }

    /// Causal additive mask `[t, past + t]` for a new block of `t` tokens after `past` cached ones.
    fn causal_mask(&self, t: usize, past: usize) -> Result<Option<Tensor>> {
        if t <= 1 {
            return Ok(None);
        }
        let total = past + t;
        let m: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        Ok(Some(
            Tensor::from_vec(m, (t, total), &self.device)?.to_dtype(self.wpe.dtype())?,
        ))
    }

    /// Hidden states after `ln_f`, `[n, t, E]`; with `caches`, runs positions past..past+t.
    fn hidden(&self, ids: &Tensor, caches: Option<&mut [KvCache]>, past: usize) -> Result<Tensor> {
        let (ids, _n, t) = self.check_ids(ids, past)?;
        let pos = self.wpe.narrow(0, past, t)?; // [t, E]
        let mut x = self.wte.forward(&ids)?.broadcast_add(&pos)?;
        let mask = self.causal_mask(t, past)?;
        match caches {
            Some(caches) => {
                ensure!(
                    caches.len() == self.blocks.len(),
                    "KV cache has {} layers, model {}",
                    caches.len(),
                    self.blocks.len()
                );
                for (b, c) in self.blocks.iter().zip(caches.iter_mut()) {
                    x = b.forward(&x, mask.as_ref(), Some(c))?;
                }
            }
            None => {
                for b in &self.blocks {
                    x = b.forward(&x, mask.as_ref(), None)?;
                }
            }
        }
        Ok(self.ln_f.forward(&x)?)
    }

    fn project(&self, h: &Tensor) -> Result<Tensor> {
        // h [.., E] -> [.., V]
        let dims = h.dims().to_vec();
        let e = *dims.last().unwrap();
        let rows = h.elem_count() / e;
        let h = h.reshape((rows, e))?;
        let packed = match &self.lm_head_packed {
            Some(p) => p.forward_tensor(&h, false)?,
            None => None,
        };
        let logits = match packed {
            Some(l) => l,
            None => h.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?,
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.config.vocab_size;
        Ok(logits.reshape(out)?)
    }

    /// Full-sequence logits `[n, t, vocab]` (f32) without any cache.
    pub fn forward_full(&self, ids: &Tensor) -> Result<Tensor> {
        let h = self.hidden(ids, None, 0)?;
        self.project(&h)
    }

    /// New empty per-layer KV caches.
    pub fn new_caches(&self) -> Vec<KvCache> {
        let chunk = CACHE_CHUNK.min(self.config.n_positions);
        (0..self.blocks.len())
            .map(|_| KvCache::new(2, chunk))
            .collect()
    }

    /// Runs `ids` `[n, t]` after `past` cached positions (appending to `caches`) and returns the
    /// last position's logits `[n, vocab]` (f32).
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        caches: &mut [KvCache],
        past: usize,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, Some(caches), past)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?; // [n, E]
        self.project(&last)
    }

    pub fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "gpt2 (candle-nn; n_layer {}, n_embd {}, n_head {}, n_positions {}, vocab {}, {:.1}M params)",
            c.n_layer,
            c.n_embd,
            c.n_head,
            c.n_positions,
            c.vocab_size,
            c.num_params() as f64 / 1e6
        )
    }
}

/// GPT-2 with a KV cache for a batch of `n` equally long sequences; implements
/// [`crate::models::lm::CausalLm`].
pub struct Gpt2Lm {
    pub model: Gpt2,
    caches: Vec<KvCache>,
    n: usize,
    len: usize,
}

impl Gpt2Lm {
    pub fn new(model: Gpt2) -> Gpt2Lm {
        let caches = model.new_caches();
        Gpt2Lm {
            model,
            caches,
            n: 1,
            len: 0,
        }
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.model.config
    }

    /// Number of sequences (rows) the cache currently holds.
    pub fn batch(&self) -> usize {
        self.n
    }

    /// Full-sequence logits `[n, t, vocab]` without touching the cache.
    pub fn forward_full(&self, ids: &Tensor) -> Result<Tensor> {
        self.model.forward_full(ids)
    }
}

impl crate::models::lm::CausalLm for Gpt2Lm {
    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn reset(&mut self, n: usize) -> Result<()> {
        ensure!(
            n > 0,
            "GPT-2 reset: the number of sequences must be positive"
        );
        for c in self.caches.iter_mut() {
            c.reset();
        }
        self.n = n;
        self.len = 0;
        Ok(())
    }

    fn step(&mut self, ids: &Tensor) -> Result<Tensor> {
        let rows = ids.dims().first().copied().unwrap_or(0);
        if ids.rank() == 2 && rows != self.n {
            bail!(
                "GPT-2 step got {rows} rows but the cache holds {} sequences; call reset({rows}) first",
                self.n
            );
        }
        let t = ids.dims().get(1).copied().unwrap_or(0);
        let out = self.model.forward_cached(ids, &mut self.caches, self.len);
        match out {
            Ok(logits) => {
                self.len += t;
                Ok(logits)
            }
            Err(e) => {
                // input errors are caught before any cache is touched; a failure part-way through
                // the layers would leave them inconsistent, so then all state is dropped
                if self.caches.iter().any(|c| c.current_seq_len() != self.len) {
                    self.caches.iter_mut().for_each(|c| c.reset());
                    self.len = 0;
                }
                Err(e)
            }
        }
    }

    fn cached_len(&self) -> usize {
        self.len
    }

    fn describe(&self) -> String {
        self.model.describe()
    }
}

/// Loads a GPT-2 from resolved snapshot files (`config.json`, `model.safetensors`) in f32.
pub fn load_gpt2(files: &ResolvedModel, device: &Device) -> Result<Gpt2Lm> {
    load_gpt2_with(files, device, DType::F32)
}

/// [`load_gpt2`] with the weights and activations in `dtype` (logits are returned in f32).
pub fn load_gpt2_with(files: &ResolvedModel, device: &Device, dtype: DType) -> Result<Gpt2Lm> {
    let config_path = files.file("config.json")?;
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let cfg = parse_config(&text).with_context(|| format!("in {}", config_path.display()))?;
    let weights = files.file("model.safetensors")?;
    cfg.validate_layers(weights)
        .with_context(|| format!("in {}", config_path.display()))?;
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, device) }.map_err(|e| {
            anyhow!(
                "cannot read weights file {}: {e}. The file is corrupt or not safetensors; \
             delete it and download it again, or point --model-dir at a good snapshot",
                weights.display()
            )
        })?;
    let model = Gpt2::load(vb, cfg)
        .with_context(|| format!("loading GPT-2 weights from {}", weights.display()))?;
    Ok(Gpt2Lm::new(model))
}

/// The tiny GPT-2 used by tests (same shape as the parity fixture tests/fixtures/gpt2-tiny).
pub fn tiny_config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: 100,
        n_embd: 32,
        n_layer: 2,
        n_head: 4,
        n_positions: 64,
        n_inner: 128,
        layer_norm_epsilon: 1e-5,
        scale_attn_weights: true,
        scale_attn_by_inverse_layer_idx: false,
        tie_word_embeddings: true,
        bos_token_id: Some(99),
        eos_token_id: Some(99),
    }
}

/// The HF config.json of [`tiny_config`].
pub fn tiny_config_json() -> serde_json::Value {
    serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "activation_function": "gelu_new",
        "vocab_size": 100,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 64,
        "n_inner": null,
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "bos_token_id": 99,
        "eos_token_id": 99
    })
}

/// Names and shapes of every parameter of an HF GPT-2 checkpoint with bare names
/// (`openai-community/gpt2` layout, Conv1D weights `[in, out]`), in a fixed order.
pub fn checkpoint_shapes(cfg: &Gpt2Config) -> Vec<(String, Vec<usize>)> {
    let e = cfg.n_embd;
    let mut v = vec![
        ("wte.weight".to_string(), vec![cfg.vocab_size, e]),
        ("wpe.weight".to_string(), vec![cfg.n_positions, e]),
    ];
    for i in 0..cfg.n_layer {
        let p = |s: &str| format!("h.{i}.{s}");
        v.push((p("ln_1.weight"), vec![e]));
        v.push((p("ln_1.bias"), vec![e]));
        v.push((p("attn.c_attn.weight"), vec![e, 3 * e]));
        v.push((p("attn.c_attn.bias"), vec![3 * e]));
        v.push((p("attn.c_proj.weight"), vec![e, e]));
        v.push((p("attn.c_proj.bias"), vec![e]));
        v.push((p("ln_2.weight"), vec![e]));
        v.push((p("ln_2.bias"), vec![e]));
        v.push((p("mlp.c_fc.weight"), vec![e, cfg.n_inner]));
        v.push((p("mlp.c_fc.bias"), vec![cfg.n_inner]));
        v.push((p("mlp.c_proj.weight"), vec![cfg.n_inner, e]));
        v.push((p("mlp.c_proj.bias"), vec![e]));
    }
    v.push(("ln_f.weight".to_string(), vec![e]));
    v.push(("ln_f.bias".to_string(), vec![e]));
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, e]));
    }
    v
}

/// Every GPT-2 parameter (bare HF names, Conv1D `[in, out]`) drawn from a seeded ChaCha RNG,
/// deterministic across runs: weights N(0, 0.2), biases N(0, 0.02), layer-norm weights 1 + N(0, 0.1).
pub fn random_gpt2_tensors(
    cfg: &Gpt2Config,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in checkpoint_shapes(cfg) {
        let n: usize = shape.iter().product();
        let v = crate::models::random_values(&mut rng, &name, n, name.contains("ln_"));
        out.insert(name, Tensor::from_vec(v, shape, device)?);
    }
    Ok(out)
}

/// Builds an in-memory tiny GPT-2 with seeded random weights.
pub fn tiny_gpt2(seed: u64, device: &Device) -> Result<Gpt2Lm> {
    tiny_gpt2_with(seed, device, DType::F32)
}

/// [`tiny_gpt2`] in `dtype` (the same seeded values on every device, then converted).
pub fn tiny_gpt2_with(seed: u64, device: &Device, dtype: DType) -> Result<Gpt2Lm> {
    let cfg = tiny_config();
    let ts = random_gpt2_tensors(&cfg, seed, &Device::Cpu)?;
    let vb = VarBuilder::from_tensors(ts, dtype, device);
    Ok(Gpt2Lm::new(Gpt2::load(vb, cfg)?))
}

/// Writes a tiny GPT-2 snapshot (config.json, model.safetensors) with seeded random weights in
/// the original `openai-community/gpt2` layout: bare names, Conv1D `[in, out]`, no lm_head, and
/// the `h.{i}.attn.bias` causal-mask buffers (which the loader ignores).
pub fn write_tiny_snapshot(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = tiny_config();
    let dev = Device::Cpu;
    let mut ts = random_gpt2_tensors(&cfg, seed, &dev)?;
    let p = cfg.n_positions;
    let tril: Vec<f32> = (0..p * p)
        .map(|k| if k % p <= k / p { 1.0 } else { 0.0 })
        .collect();
    let tril = Tensor::from_vec(tril, (1, 1, p, p), &dev)?;
    for i in 0..cfg.n_layer {
        ts.insert(format!("h.{i}.attn.bias"), tril.clone());
    }
    candle_core::safetensors::save(&ts, dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&tiny_config_json())?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::lm::CausalLm;

    #[test]
    fn gpt2_config_defaults_and_errors() {
        let c = parse_config("{}").unwrap();
        assert_eq!(
            (
                c.vocab_size,
                c.n_embd,
                c.n_layer,
                c.n_head,
                c.n_positions,
                c.n_inner
            ),
            (50257, 768, 12, 12, 1024, 3072)
        );
        assert!(
            (c.num_params() as f64 / 1e6 - 124.44).abs() < 0.01,
            "{}",
            c.num_params()
        );
        let t = parse_config(&tiny_config_json().to_string()).unwrap();
        assert_eq!(t, tiny_config());
        let e = parse_config(r#"{"activation_function": "relu"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("relu") && e.contains("gelu_new"), "{e}");
        assert!(parse_config(r#"{"activation_function": "gelu_pytorch_tanh"}"#).is_ok());
        let e = parse_config(r#"{"model_type": "llama"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("llama"), "{e}");
        let e = parse_config(r#"{"n_embd": 30, "n_head": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple"), "{e}");
    }

    #[test]
    fn gpt2_cache_matches_full_forward() -> Result<()> {
        let dev = Device::Cpu;
        let mut lm = tiny_gpt2(7, &dev)?;
        let ids: Vec<u32> = (0..10u32).map(|i| (i * 37 + 11) % 100).collect();
        let ids = Tensor::from_vec(ids, (2, 5), &dev)?;
        let full = lm.forward_full(&ids)?; // [2, 5, 100]
        lm.reset(2)?;
        let a = lm.step(&ids.narrow(1, 0, 3)?)?;
        let b = lm.step(&ids.narrow(1, 3, 2)?)?;
        assert_eq!(lm.cached_len(), 5);
        let da = (a - full.narrow(1, 2, 1)?.squeeze(1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let db = (b - full.narrow(1, 4, 1)?.squeeze(1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(da < 1e-5 && db < 1e-5, "{da} {db}");
        // wrong row count is an error, not a panic
        assert!(lm.step(&ids.narrow(0, 0, 1)?.narrow(1, 0, 1)?).is_err());
        assert_eq!(lm.cached_len(), 5);
        Ok(())
    }
}
