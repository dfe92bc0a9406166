//! BERT-family text models on candle-transformers' `BertModel`: a sentence encoder (masked mean
//! pooling, as sentence-transformers' MiniLM) and a sequence classifier (pooler + linear head,
//! as transformers' `BertForSequenceClassification`), with the WordPiece tokenizer read from
//! `tokenizer.json` or rebuilt from `vocab.txt`.

use crate::hub::ResolvedModel;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;
use tokenizers::{Model as _, Tokenizer};

/// Files a BERT snapshot needs (`required`) and may have (`optional`).
pub const REQUIRED_FILES: &[&str] = &["config.json", "model.safetensors"];
pub const OPTIONAL_FILES: &[&str] = &["tokenizer.json", "vocab.txt", "tokenizer_config.json"];

/// Token ids of a batch, padded to its longest member.
pub struct Batch {
    /// [B, T] u32
    pub ids: Tensor,
    /// [B, T] u32, 1 on real tokens.
    pub mask: Tensor,
    /// Real tokens per row (after truncation, specials included).
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Right-pads token-id rows with `pad_id` to the longest row (at least 1) on `device`.
    pub fn pad(ids: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Batch> {
        let t = ids.iter().map(|v| v.len()).max().unwrap_or(0).max(1);
        let b = ids.len();
        let mut flat = vec![pad_id; b * t];
        let mut mask = vec![0u32; b * t];
        for (i, v) in ids.iter().enumerate() {
            flat[i * t..i * t + v.len()].copy_from_slice(v);
            mask[i * t..i * t + v.len()].iter_mut().for_each(|m| *m = 1);
        }
        Ok(Batch {
            ids: Tensor::from_vec(flat, (b, t), device)?,
            mask: Tensor::from_vec(mask, (b, t), device)?,
            lengths: ids.iter().map(|v| v.len()).collect(),
        })
    }
}

/// A BERT encoder with its tokenizer.
pub struct BertEncoder {
    pub model: BertModel,
    pub config: Config,
    tokenizer: Tokenizer,
    pad_id: u32,
    /// Pieces per text including [CLS]/[SEP]; longer texts are truncated.
    pub max_len: usize,
    pub device: Device,
    /// The dtype of the weights and hidden states.
    pub dtype: DType,
    /// The forward pass in f16/bf16 (see [`HalfBert`]).
    half: Option<HalfBert>,
    /// The same weights behind the fused CPU f32 kernels (`crate::kernels`), used for the
    /// forward pass when present.
    pub fast: Option<crate::kernels::towers::FastBert>,
}

/// Sanity of a BERT config's sizes: no zero or absurd sizes, heads divide the width. Errors
/// name the file and the key.
fn validate_config(cfg: &Config, path: &Path) -> Result<()> {
    let f = path.display().to_string();
    crate::parse::check_sizes(
        &f,
        &[
            ("vocab_size", cfg.vocab_size, 1, 10_000_000),
            ("hidden_size", cfg.hidden_size, 1, 1 << 16),
            ("num_hidden_layers", cfg.num_hidden_layers, 1, 1024),
            ("intermediate_size", cfg.intermediate_size, 1, 1 << 18),
            (
                "max_position_embeddings",
                cfg.max_position_embeddings,
                1,
                1 << 20,
            ),
            ("type_vocab_size", cfg.type_vocab_size, 1, 1 << 16),
        ],
    )?;
    crate::parse::check_heads(
        &f,
        "hidden_size",
        cfg.hidden_size,
        "num_attention_heads",
        cfg.num_attention_heads,
    )
}

/// Checks that `num_hidden_layers` matches the numbered layers in the weights file.
fn validate_layers(cfg: &Config, config_path: &Path, weights: &Path) -> Result<()> {
    // an unreadable weights file is reported by the loader itself
    let Ok(names) = crate::parse::safetensors_names(weights) else {
        return Ok(());
    };
    crate::parse::check_block_count(
        &names,
        weights,
        &config_path.display().to_string(),
        "num_hidden_layers",
        cfg.num_hidden_layers,
        &["encoder.layer.", "bert.encoder.layer."],
    )
}

/// Reads config.json as candle's BERT config, with a clear error for unsupported fields.
pub fn read_config(path: &Path) -> Result<(Config, serde_json::Value)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let cfg: Config = serde_json::from_value(raw.clone()).map_err(|e| {
        anyhow!(
            "{} is not a BERT config candle can load ({e}); a BERT-family config.json with \
             hidden_act gelu/gelu_approximate/relu and absolute positions is needed",
            path.display()
        )
    })?;
    validate_config(&cfg, path)?;
    Ok((cfg, raw))
}

/// The WordPiece tokenizer: `tokenizer.json` if present, else rebuilt from `vocab.txt`
/// (BertNormalizer with lowercasing per `tokenizer_config.json` `do_lower_case`, default on;
/// BertPreTokenizer; `[CLS] … [SEP]`).
pub fn load_tokenizer(files: &ResolvedModel) -> Result<Tokenizer> {
    if let Ok(p) = files.file("tokenizer.json") {
        return Tokenizer::from_file(p)
            .map_err(|e| anyhow!("cannot read tokenizer {}: {e}", p.display()));
    }
    let vocab = files.file("vocab.txt").map_err(|_| {
        anyhow!(
            "the BERT snapshot {} has neither tokenizer.json nor vocab.txt; add one of them",
            files.origin.path
        )
    })?;
    let lowercase = match files.file("tokenizer_config.json") {
        Ok(p) => {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p)?)
                .with_context(|| format!("{} is not valid JSON", p.display()))?;
            v.get("do_lower_case")
                .and_then(|b| b.as_bool())
                .unwrap_or(true)
        }
        Err(_) => true,
    };
    wordpiece_from_vocab(vocab, lowercase)
}

/// A BERT WordPiece tokenizer from a `vocab.txt` file.
pub fn wordpiece_from_vocab(vocab: &Path, lowercase: bool) -> Result<Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let wp = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("cannot read WordPiece vocabulary {}: {e}", vocab.display()))?;
    let id = |t: &str| {
        wp.get_vocab().get(t).copied().ok_or_else(|| {
            anyhow!(
                "{} has no {t} token; not a BERT vocabulary",
                vocab.display()
            )
        })
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    id("[PAD]")?;
    let mut tok = Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .map_err(|e| anyhow!("{e}"))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    Ok(tok)
}

fn load_vb<'a>(files: &ResolvedModel, device: &Device, dtype: DType) -> Result<VarBuilder<'a>> {
    let weights = files.file("model.safetensors")?;
    if let Ok(config_path) = files.file("config.json") {
        validate_layers(&read_config(config_path)?.0, config_path, weights)?;
    }
    unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, device) }.map_err(|e| {
        anyhow!(
            "cannot read weights file {}: {e}. The file is corrupt or not safetensors \
             (convert a pytorch_model.bin with scripts/convert_bert_bin.py)",
            weights.display()
        )
    })
}

impl BertEncoder {
    /// Loads the encoder (`bert.` prefix or none) and its tokenizer from resolved files.
    pub fn load(files: &ResolvedModel, max_len: usize, device: &Device) -> Result<Self> {
        Self::load_with(files, max_len, device, DType::F32)
    }

    /// [`BertEncoder::load`] with the weights and activations in `dtype`.
    pub fn load_with(
        files: &ResolvedModel,
        max_len: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let (config, _) = read_config(files.file("config.json")?)?;
        let vb = load_vb(files, device, dtype)?;
        Self::from_parts(vb, config, load_tokenizer(files)?, max_len)
    }

    /// The encoder on given weights (any VarBuilder backend), config and tokenizer; uses the
    /// fused CPU kernels for the forward pass when they apply.
    pub fn from_parts(
        vb: VarBuilder,
        config: Config,
        mut tokenizer: Tokenizer,
        max_len: usize,
    ) -> Result<Self> {
        crate::kernels::tune_allocator();
        if max_len < 2 || max_len > config.max_position_embeddings {
            bail!(
                "--max-pieces {max_len} must be between 2 and the model's {} positions",
                config.max_position_embeddings
            );
        }
        let model = BertModel::load(vb.clone(), &config).map_err(|e| {
            anyhow!("loading BERT weights: {e} (expected HF BertModel tensor names)")
        })?;
        let fast = if crate::kernels::enabled(vb.device(), vb.dtype()) {
            crate::kernels::towers::FastBert::load(&vb, &config).ok()
        } else {
            None
        };
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{e}"))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .unwrap_or(config.pad_token_id as u32);
        let half = if vb.dtype() == DType::F32 {
            None
        } else {
            Some(HalfBert::load(&vb, &config)?)
        };
        Ok(Self {
            model,
            config,
            tokenizer,
            pad_id,
            max_len,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            half,
            fast,
        })
    }

    /// Token ids of one text ([CLS] … [SEP], truncated to `max_len`).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenizes and pads a batch.
    pub fn batch(&self, texts: &[&str]) -> Result<Batch> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_>>()?;
        Batch::pad(&ids, self.pad_id, &self.device)
    }

    /// Last hidden states [B, T, H].
    pub fn hidden(&self, batch: &Batch) -> Result<Tensor> {
        if let Some(f) = &self.fast {
            return Ok(f.forward(&batch.ids, &batch.mask, false)?);
        }
        if let Some(h) = &self.half {
            return h.forward(&batch.ids, &batch.mask);
        }
        let types = batch.ids.zeros_like()?;
        Ok(self.model.forward(&batch.ids, &types, Some(&batch.mask))?)
    }

    /// Masked mean of the last hidden states over real tokens [B, H] (sentence-transformers'
    /// mean pooling), in f32 whatever the model's dtype.
    pub fn mean_pooled(&self, texts: &[&str]) -> Result<Tensor> {
        let batch = self.batch(texts)?;
        let h = self.hidden(&batch)?.to_dtype(DType::F32)?;
        let m = batch.mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let sum = h.broadcast_mul(&m)?.sum(1)?;
        let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        Ok(sum.broadcast_div(&count)?)
    }
}

/// The BERT encoder forward pass for f16/bf16 weights. candle-transformers' `BertModel` builds
/// its additive attention mask as `(1 − mask) · f32::MIN` cast to the model dtype, which is −inf
/// in half precision, and 0 · (−inf) = NaN poisons every row; this pass computes the attention
/// scores, mask and softmax in f32 and everything else in the model dtype.
struct HalfBert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    ln_emb: candle_nn::LayerNorm,
    layers: Vec<HalfLayer>,
    heads: usize,
    act: candle_transformers::models::bert::HiddenAct,
}

struct HalfLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln1: candle_nn::LayerNorm,
    up: Linear,
    down: Linear,
    ln2: candle_nn::LayerNorm,
}

impl HalfBert {
    fn load(vb: &VarBuilder, c: &Config) -> Result<Self> {
        let mut prefixes = vec![String::new(), "bert.".to_string()];
        if let Some(t) = &c.model_type {
            prefixes.push(format!("{t}."));
        }
        let p = prefixes
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| {
                anyhow!("no embeddings.word_embeddings.weight in the BERT checkpoint")
            })?;
        let vb = if p.is_empty() {
            vb.clone()
        } else {
            vb.pp(p.trim_end_matches('.'))
        };
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let lin = |vb: VarBuilder, i: usize, o: usize| candle_nn::linear(i, o, vb);
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|l| -> Result<HalfLayer> {
                let v = vb.pp(format!("encoder.layer.{l}"));
                Ok(HalfLayer {
                    q: lin(v.pp("attention.self.query"), h, h)?,
                    k: lin(v.pp("attention.self.key"), h, h)?,
                    v: lin(v.pp("attention.self.value"), h, h)?,
                    o: lin(v.pp("attention.output.dense"), h, h)?,
                    ln1: candle_nn::layer_norm(h, eps, v.pp("attention.output.LayerNorm"))?,
                    up: lin(v.pp("intermediate.dense"), h, c.intermediate_size)?,
                    down: lin(v.pp("output.dense"), c.intermediate_size, h)?,
                    ln2: candle_nn::layer_norm(h, eps, v.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            word: e.get((c.vocab_size, h), "word_embeddings.weight")?,
            position: e.get((c.max_position_embeddings, h), "position_embeddings.weight")?,
            token_type: e.get((c.type_vocab_size, h), "token_type_embeddings.weight")?,
            ln_emb: candle_nn::layer_norm(h, eps, e.pp("LayerNorm"))?,
            layers,
            heads: c.num_attention_heads,
            act: c.hidden_act,
        })
    }

    /// Last hidden states `[B, T, H]` (model dtype) of ids and 0/1 mask `[B, T]`.
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        use candle_transformers::models::bert::HiddenAct;
        let (b, t) = ids.dims2()?;
        let h = self.word.dim(1)?;
        let dh = h / self.heads;
        let x = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?
            .broadcast_add(&self.position.narrow(0, 0, t)?)?
            .broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        let mut x = self.ln_emb.forward(&x)?;
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e4)?.reshape((b, 1, 1, t))?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        for l in &self.layers {
            let q = split(l.q.forward(&x)?)?;
            let k = split(l.k.forward(&x)?)?;
            let v = split(l.v.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)?.to_dtype(DType::F32)?
                / (dh as f64).sqrt())?
            .broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(x.dtype())?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, h))?;
            x = l.ln1.forward(&(l.o.forward(&ctx)? + &x)?)?;
            let i = l.up.forward(&x)?;
            let i = match self.act {
                HiddenAct::Gelu => i.gelu_erf()?,
                HiddenAct::GeluApproximate => i.gelu()?,
                HiddenAct::Relu => i.relu()?,
            };
            x = l.ln2.forward(&(l.down.forward(&i)? + &x)?)?;
        }
        Ok(x)
    }
}

/// `BertForSequenceClassification`: encoder, pooler tanh(W h_[CLS] + b), classifier.
pub struct BertClassifier {
    pub encoder: BertEncoder,
    pooler: Linear,
    classifier: Linear,
    /// Label names by class index (config.json `id2label`, else LABEL_i).
    pub labels: Vec<String>,
}

fn linear(vb: VarBuilder, name: &str, i: usize, o: usize) -> Result<Linear> {
    let w = vb
        .get((o, i), &format!("{name}.weight"))
        .map_err(|e| anyhow!("classifier checkpoint: tensor {name}.weight: {e}"))?;
    let b = vb
        .get(o, &format!("{name}.bias"))
        .map_err(|e| anyhow!("classifier checkpoint: tensor {name}.bias: {e}"))?;
    Ok(Linear::new(w, Some(b)))
}

impl BertClassifier {
    pub fn load(files: &ResolvedModel, max_len: usize, device: &Device) -> Result<Self> {
        Self::load_with(files, max_len, device, DType::F32)
    }

    /// [`BertClassifier::load`] with the weights and activations in `dtype` (logits are f32).
    pub fn load_with(
        files: &ResolvedModel,
        max_len: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let config_path = files.file("config.json")?;
        let (config, raw) = read_config(config_path)?;
        let vb = load_vb(files, device, dtype)?;
        let encoder =
            BertEncoder::from_parts(vb.clone(), config.clone(), load_tokenizer(files)?, max_len)?;
        let h = config.hidden_size;
        let pooler_prefix = if vb.contains_tensor("bert.pooler.dense.weight") {
            "bert.pooler.dense"
        } else {
            "pooler.dense"
        };
        let pooler = linear(vb.clone(), pooler_prefix, h, h)?;
        let n = raw
            .get("id2label")
            .and_then(|m| m.as_object())
            .map(|m| m.len())
            .or_else(|| {
                raw.get("num_labels")
                    .and_then(|n| n.as_u64())
                    .map(|n| n as usize)
            })
            .unwrap_or(2);
        let classifier = linear(vb, "classifier", h, n)
            .with_context(|| format!("{}: id2label has {n} labels", config_path.display()))?;
        let mut labels: Vec<String> = (0..n).map(|i| format!("LABEL_{i}")).collect();
        if let Some(m) = raw.get("id2label").and_then(|m| m.as_object()) {
            for (k, v) in m {
                let i: usize = k.parse().map_err(|_| {
                    anyhow!(
                        "{}: id2label key {k:?} is not an index",
                        config_path.display()
                    )
                })?;
                if i >= n {
                    bail!("{}: id2label index {i} out of range", config_path.display());
                }
                labels[i] = v.as_str().unwrap_or_default().to_string();
            }
        }
        Ok(Self {
            encoder,
            pooler,
            classifier,
            labels,
        })
    }

    /// Logits [B, num_labels].
    pub fn logits_of(&self, batch: &Batch) -> Result<Tensor> {
        let cls = match &self.encoder.fast {
            // only the [CLS] rows are carried through the last layer
            Some(f) => f.forward(&batch.ids, &batch.mask, true)?,
            None => self.encoder.hidden(batch)?.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        Ok(self.classifier.forward(&pooled)?.to_dtype(DType::F32)?)
    }

    pub fn logits(&self, texts: &[&str]) -> Result<Tensor> {
        self.logits_of(&self.encoder.batch(texts)?)
    }

    /// Arg-max class per text.
    pub fn predict(&self, texts: &[&str]) -> Result<Vec<usize>> {
        Ok(self
            .logits(texts)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|x| x as usize)
            .collect())
    }
}
