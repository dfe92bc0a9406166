//! A fine-tuned regard classifier: a BERT-family encoder (masked mean pooling over the last
//! hidden states) and a linear head, the whole network trained with candle autograd on Sheng et
//! al.'s annotations (docs/fairness.md, "Offline regard scorers").
//!
//! Training: AdamW (decoupled weight decay, none on biases and LayerNorm), linear warm-up and
//! decay, optional layer-wise learning-rate decay (layer l of L gets `lr · decay^(L+1−l)`,
//! embeddings l = 0, head l = L+1), optionally frozen word embeddings, early stopping on the dev
//! split (best epoch by accuracy, then macro-F1, then lower dev loss). Every random choice (head
//! initialisation, batch order) comes from ChaCha streams keyed by the seed, so a seed always
//! gives the same weights.
//!
//! A trained classifier is one self-contained safetensors file: the encoder tensors, the head
//! (`regard_head.weight` [C, H], `regard_head.bias` [C]) and metadata holding the encoder's
//! config.json, its tokenizer (tokenizer.json text), the label order and the training report.
//! Inference always builds the network from those tensors (the fused CPU kernels when they
//! apply), so a classifier predicts bit-identically before and after a save/load round trip.

use crate::data::regard::Regard;
use crate::hub::ResolvedModel;
use crate::models::bert::{load_tokenizer, read_config, BertEncoder};
use crate::models::mpnet::{mean_pool, Dropout, Mpnet, MpnetEncoder};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Optimizer, VarBuilder};
use candle_transformers::models::bert::Config;
use rand::seq::SliceRandom;
use rand::Rng;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;
use tokenizers::Tokenizer;

pub const HEAD_W: &str = "regard_head.weight";
pub const HEAD_B: &str = "regard_head.bias";
/// `format` metadata of a saved classifier.
pub const FORMAT: &str = "equirun-regard-finetuned v1";

/// A pretrained encoder to start from: its tensors (without a `bert.` prefix; only
/// `embeddings.*` and `encoder.*`), config and tokenizer.
pub struct BaseEncoder {
    pub tensors: BTreeMap<String, Tensor>,
    pub config: Config,
    pub config_json: String,
    pub tokenizer: Tokenizer,
    /// Where it came from (recorded in the metadata).
    pub origin: Value,
}

impl BaseEncoder {
    pub fn load(files: &ResolvedModel) -> Result<Self> {
        let cpath = files.file("config.json")?;
        let (config, raw) = read_config(cpath)?;
        let wpath = files.file("model.safetensors")?;
        let all = candle_core::safetensors::load(wpath, &Device::Cpu)
            .map_err(|e| anyhow!("cannot read weights file {}: {e}", wpath.display()))?;
        let mut tensors = BTreeMap::new();
        for (name, t) in all {
            let n = name.strip_prefix("bert.").unwrap_or(&name).to_string();
            if (n.starts_with("embeddings.") || n.starts_with("encoder."))
                && n != "embeddings.position_ids"
            {
                tensors.insert(n, t.to_dtype(DType::F32)?);
            }
        }
        if !tensors.contains_key("embeddings.word_embeddings.weight") {
            bail!(
                "{} has no embeddings.word_embeddings.weight (with or without a bert. prefix): not a \
                 BERT-family encoder",
                wpath.display()
            );
        }
        Ok(Self {
            tensors,
            config,
            config_json: raw.to_string(),
            tokenizer: load_tokenizer(files)?,
            origin: serde_json::to_value(&files.origin)?,
        })
    }
}

/// Fine-tuning hyper-parameters (all recorded in the saved classifier).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinetuneOpts {
    pub seed: u64,
    pub lr: f64,
    pub weight_decay: f64,
    /// Layer-wise learning-rate decay (1 = none).
    pub layer_decay: f64,
    pub max_epochs: usize,
    /// Stop after this many epochs without a better dev score.
    pub patience: usize,
    pub batch_size: usize,
    /// Fraction of the steps spent warming the learning rate up linearly.
    pub warmup: f64,
    /// Word pieces per text, [CLS]/[SEP] included.
    pub max_len: usize,
    pub freeze_word_embeddings: bool,
    /// Dropout probability on the hidden states while training (seeded masks).
    pub dropout: f64,
}

impl FinetuneOpts {
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, why: &str| Err(anyhow!("{flag}: {why}"));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr", "must be a positive number, e.g. 5e-5");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("--weight-decay", "must be ≥ 0, e.g. 0.01");
        }
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return bad("--layer-decay", "must be in (0, 1], e.g. 0.9 (1 = none)");
        }
        if self.max_epochs == 0 || self.patience == 0 || self.batch_size == 0 {
            return bad("--epochs / --patience / --batch-size", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("--dropout", "must be in [0, 1), e.g. 0.1");
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad("--warmup", "must be in [0, 1), e.g. 0.1");
        }
        Ok(())
    }
}

/// A trained classifier (encoder + head), ready to predict.
pub struct TunedClassifier {
    pub encoder: BertEncoder,
    head_w: Tensor,
    head_b: Tensor,
    /// Class index → regard label.
    pub labels: Vec<Regard>,
    tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

fn labels_from(meta: &HashMap<String, String>) -> Result<Vec<Regard>> {
    let s = meta
        .get("labels")
        .ok_or_else(|| anyhow!("no `labels` metadata"))?;
    s.split(',')
        .map(|l| Regard::from_label_name(l).ok_or_else(|| anyhow!("unknown label {l:?}")))
        .collect()
}

/// Writes f32 `tensors` with `metadata` as one safetensors file, atomically.
fn write_f32_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, t) in tensors {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        bufs.push((
            k.clone(),
            t.dims().to_vec(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    let views = bufs
        .iter()
        .map(|(k, s, b)| Ok((k.as_str(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, Some(metadata.clone()))?;
    crate::output::write_bytes_atomic(path, &data)
}

/// The f32 tensors (on the CPU) and metadata of a safetensors file's bytes; `bad` turns a
/// reason into the caller's "not a … classifier" error.
fn read_f32_safetensors(
    data: &[u8],
    bad: impl Fn(String) -> anyhow::Error,
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(data).map_err(|e| bad(e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("{name} is not f32")));
        }
        let t = Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), &Device::Cpu)?;
        tensors.insert(name.to_string(), t);
    }
    let (_, meta) = SafeTensors::read_metadata(data).map_err(|e| bad(e.to_string()))?;
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

/// The training report stored in a classifier's metadata (null when absent).
fn report_of(metadata: &HashMap<String, String>) -> Value {
    metadata
        .get("report")
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null)
}

impl TunedClassifier {
    /// Builds the network from its tensors and metadata (`config`, `tokenizer`, `labels`).
    pub fn from_tensors(
        tensors: BTreeMap<String, Tensor>,
        metadata: HashMap<String, String>,
        max_len: usize,
    ) -> Result<Self> {
        Self::from_tensors_on(tensors, metadata, max_len, &Device::Cpu, DType::F32)
    }

    /// [`TunedClassifier::from_tensors`] with the encoder on `device` in `dtype` (the head and
    /// the logits stay f32).
    pub fn from_tensors_on(
        tensors: BTreeMap<String, Tensor>,
        metadata: HashMap<String, String>,
        max_len: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let meta = |k: &str| metadata.get(k).ok_or_else(|| anyhow!("no `{k}` metadata"));
        if meta("format")? != FORMAT {
            bail!("format {:?}, expected {FORMAT:?}", meta("format")?);
        }
        let config: Config = serde_json::from_str(meta("config")?)
            .map_err(|e| anyhow!("the stored encoder config is not a BERT config: {e}"))?;
        let tokenizer: Tokenizer = meta("tokenizer")?
            .parse()
            .map_err(|e| anyhow!("the stored tokenizer cannot be read: {e}"))?;
        let labels = labels_from(&metadata)?;
        let get = |k: &str| {
            tensors
                .get(k)
                .cloned()
                .ok_or_else(|| anyhow!("no tensor {k}"))
        };
        let (head_w, head_b) = (
            get(HEAD_W)?.to_device(device)?,
            get(HEAD_B)?.to_device(device)?,
        );
        if head_w.dims() != [labels.len(), config.hidden_size] || head_b.dims() != [labels.len()] {
            bail!(
                "the head is {:?} + {:?}, expected [{}, {}] for labels {:?}",
                head_w.dims(),
                head_b.dims(),
                labels.len(),
                config.hidden_size,
                labels
            );
        }
        let enc_map: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("regard_head."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let vb = VarBuilder::from_tensors(enc_map, dtype, device);
        let encoder = BertEncoder::from_parts(vb, config, tokenizer, max_len)?;
        Ok(Self {
            encoder,
            head_w,
            head_b,
            labels,
            tensors,
            metadata,
        })
    }

    /// Logits [B, C] of (already masked) texts.
    pub fn logits(&self, texts: &[&str]) -> Result<Tensor> {
        let pooled = self.encoder.mean_pooled(texts)?;
        Ok(pooled
            .matmul(&self.head_w.t()?)?
            .broadcast_add(&self.head_b)?)
    }

    /// Arg-max label per text (ties → the lower index).
    pub fn predict(&self, texts: &[&str]) -> Result<Vec<Regard>> {
        let l = self.logits(texts)?.to_vec2::<f32>()?;
        Ok(l.iter()
            .map(|row| self.labels[crate::models::probe::argmax(row)])
            .collect())
    }

    /// The training report stored with the classifier (null when absent).
    pub fn report(&self) -> Value {
        report_of(&self.metadata)
    }

    /// Writes the classifier as one safetensors file with its metadata, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_f32_safetensors(path, &self.tensors, &self.metadata)
    }

    /// Reads a classifier written by [`TunedClassifier::save`].
    pub fn load(path: &Path, max_len: usize) -> Result<Self> {
        Self::load_on(path, max_len, &Device::Cpu, DType::F32)
    }

    /// [`TunedClassifier::load`] onto `device` in `dtype` (see [`TunedClassifier::from_tensors_on`]).
    pub fn load_on(path: &Path, max_len: usize, device: &Device, dtype: DType) -> Result<Self> {
        let data = std::fs::read(path)
            .with_context(|| format!("reading fine-tuned regard classifier {}", path.display()))?;
        let bad = |e: String| {
            anyhow!(
                "{} is not a regard classifier written by `equirun regard finetune` ({e})",
                path.display()
            )
        };
        let (tensors, metadata) = read_f32_safetensors(&data, bad)?;
        Self::from_tensors_on(tensors, metadata, max_len, device, dtype)
            .map_err(|e| bad(e.to_string()))
    }
}

/// Accuracy and macro-F1 (over the gold classes present) of class indices.
pub fn accuracy_macro_f1(gold: &[usize], pred: &[usize], classes: usize) -> (f64, f64) {
    let n = gold.len().max(1) as f64;
    let acc = gold.iter().zip(pred).filter(|(g, p)| g == p).count() as f64 / n;
    let mut f1s = Vec::new();
    for c in 0..classes {
        let tp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g == c && **p == c)
            .count() as f64;
        let fp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g != c && **p == c)
            .count() as f64;
        let fneg = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| **g == c && **p != c)
            .count() as f64;
        if tp + fneg == 0.0 {
            continue; // class absent from the gold labels
        }
        f1s.push(if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fneg)
        });
    }
    let f1 = f1s.iter().sum::<f64>() / f1s.len().max(1) as f64;
    (acc, f1)
}

/// The BERT forward pass written with differentiable candle ops only (candle's fused
/// layer-norm and soft-max kernels have no backward pass), with seeded dropout on the hidden
/// states when training. Same formulas as transformers' `BertModel` (erf GELU, post-LN).
struct TrainBert<'a> {
    t: &'a HashMap<String, Tensor>,
    cfg: &'a Config,
}

impl TrainBert<'_> {
    fn get(&self, k: &str) -> Result<&Tensor> {
        self.t
            .get(k)
            .ok_or_else(|| anyhow!("the encoder has no tensor {k}"))
    }
    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let (w, b) = (
            self.get(&format!("{name}.weight"))?,
            self.get(&format!("{name}.bias"))?,
        );
        let dims = x.dims().to_vec();
        let x2 = x.reshape(((), dims[dims.len() - 1]))?;
        let y = x2.matmul(&w.t()?)?.broadcast_add(b)?;
        let mut out = dims.clone();
        *out.last_mut().unwrap() = w.dim(0)?;
        Ok(y.reshape(out)?)
    }
    fn layer_norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let (w, b) = (
            self.get(&format!("{name}.weight"))?,
            self.get(&format!("{name}.bias"))?,
        );
        let h = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / h)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / h)?;
        let xn = xc.broadcast_div(&(var + self.cfg.layer_norm_eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(w)?.broadcast_add(b)?)
    }
    fn dropout(x: &Tensor, p: f64, rng: Option<&mut rand_chacha::ChaCha8Rng>) -> Result<Tensor> {
        let Some(rng) = rng.filter(|_| p > 0.0) else {
            return Ok(x.clone());
        };
        let keep = (1.0 / (1.0 - p)) as f32;
        let m: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
            .collect();
        Ok((x * Tensor::from_vec(m, x.shape(), x.device())?)?)
    }
    /// Last hidden states [B, T, H].
    fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        p: f64,
        mut rng: Option<&mut rand_chacha::ChaCha8Rng>,
    ) -> Result<Tensor> {
        use candle_transformers::models::bert::HiddenAct;
        let (b, t) = ids.dims2()?;
        let hsz = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let dh = hsz / heads;
        let we = self.get("embeddings.word_embeddings.weight")?;
        let pe = self.get("embeddings.position_embeddings.weight")?;
        let te = self.get("embeddings.token_type_embeddings.weight")?;
        let x = we
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, hsz))?
            .broadcast_add(&pe.narrow(0, 0, t)?)?
            .broadcast_add(&te.narrow(0, 0, 1)?)?;
        let x = self.layer_norm(&x, "embeddings.LayerNorm")?;
        let mut x = Self::dropout(&x, p, rng.as_deref_mut())?;
        // additive attention mask [B, 1, 1, T]
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        for l in 0..self.cfg.num_hidden_layers {
            let n = |s: &str| format!("encoder.layer.{l}.{s}");
            let q = split(self.linear(&x, &n("attention.self.query"))?)?;
            let k = split(self.linear(&x, &n("attention.self.key"))?)?;
            let v = split(self.linear(&x, &n("attention.self.value"))?)?;
            let scores = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, hsz))?;
            let a = self.linear(&ctx, &n("attention.output.dense"))?;
            let a = Self::dropout(&a, p, rng.as_deref_mut())?;
            x = self.layer_norm(&(a + &x)?, &n("attention.output.LayerNorm"))?;
            let i = self.linear(&x, &n("intermediate.dense"))?;
            let i = match self.cfg.hidden_act {
                HiddenAct::Gelu => i.gelu_erf()?,
                HiddenAct::GeluApproximate => i.gelu()?,
                HiddenAct::Relu => i.relu()?,
            };
            let o = self.linear(&i, &n("output.dense"))?;
            let o = Self::dropout(&o, p, rng.as_deref_mut())?;
            x = self.layer_norm(&(o + &x)?, &n("output.LayerNorm"))?;
        }
        Ok(x)
    }
}

/// Logits through differentiable ops: masked mean pooling and the head.
fn train_logits(
    enc: &BertEncoder,
    tb: &TrainBert,
    w: &Tensor,
    b: &Tensor,
    texts: &[&str],
    p: f64,
    rng: Option<&mut rand_chacha::ChaCha8Rng>,
) -> Result<Tensor> {
    let batch = enc.batch(texts)?;
    let h = tb.forward(&batch.ids, &batch.mask, p, rng)?;
    let m = batch.mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let pooled = h.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
    Ok(pooled.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// Depth of a parameter for layer-wise decay: embeddings 0, encoder layer i → i + 1.
fn depth(name: &str, layers: usize) -> usize {
    name.strip_prefix("encoder.layer.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .map(|i| (i + 1).min(layers))
        .unwrap_or(0)
}

/// Each example's label as an index into `labels`.
fn label_indices(labels: &[Regard], xs: &[(String, Regard)]) -> Result<Vec<usize>> {
    xs.iter()
        .map(|x| {
            labels.iter().position(|l| *l == x.1).ok_or_else(|| {
                anyhow!(
                    "an example is labelled {} but the classifier's labels are {:?}",
                    x.1.name(),
                    labels
                )
            })
        })
        .collect()
}

/// A fresh head `[c, h]` (uniform ±1/√h from the seed's own stream) with zero biases.
fn init_head(seed: u64, c: usize, h: usize, dev: &Device) -> Result<(Var, Var)> {
    let mut init = crate::output::rng_for(seed, "regard-finetune-head");
    let a = 1.0 / (h as f32).sqrt();
    let w0: Vec<f32> = (0..c * h).map(|_| init.random_range(-a..a)).collect();
    let hw = Var::from_tensor(&Tensor::from_vec(w0, (c, h), dev)?)?;
    let hb = Var::from_tensor(&Tensor::zeros(c, DType::F32, dev)?)?;
    Ok((hw, hb))
}

/// The tensors of one epoch: the tuned variables, then the head.
type Snapshot = Vec<(String, Tensor)>;

/// The fine-tuning loop every encoder shares: AdamW groups by (depth, decayed?) with layer-wise
/// learning-rate decay (head at depth `layers + 1`), linear warm-up then decay, seeded batch
/// order and dropout, and early stopping on dev (accuracy, then macro-F1, then lower loss).
/// `train_logits(batch indices, dropout stream)` and `dev_logits()` (every dev example, in
/// order) are the encoder-specific forward passes. Returns the best epoch, its snapshot and the
/// per-epoch log.
#[allow(clippy::too_many_arguments)]
fn train_loop(
    o: &FinetuneOpts,
    layers: usize,
    vars: &[(String, Var)],
    (hw, hb): (&Var, &Var),
    (ytr, ydev, c): (&[usize], &[usize], usize),
    device: &Device,
    t0: Instant,
    mut train_logits: impl FnMut(&[usize], &mut rand_chacha::ChaCha8Rng) -> Result<Tensor>,
    mut dev_logits: impl FnMut() -> Result<Tensor>,
    progress: &mut impl FnMut(&str),
) -> Result<(usize, Snapshot, Vec<Value>)> {
    let mut drop_rng = crate::output::rng_for(o.seed, "regard-finetune-dropout");
    let mut groups: BTreeMap<(usize, bool), Vec<Var>> = BTreeMap::new();
    for (name, v) in vars {
        let no_decay = name.ends_with(".bias") || name.contains("LayerNorm");
        groups
            .entry((depth(name, layers), !no_decay))
            .or_default()
            .push(v.clone());
    }
    groups
        .entry((layers + 1, true))
        .or_default()
        .push(hw.clone());
    groups
        .entry((layers + 1, false))
        .or_default()
        .push(hb.clone());
    let mut opts: Vec<(candle_nn::AdamW, f64)> = groups
        .into_iter()
        .map(|((d, decay), vs)| {
            let mult = o.layer_decay.powi((layers + 1 - d) as i32);
            let p = candle_nn::ParamsAdamW {
                lr: o.lr * mult,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: if decay { o.weight_decay } else { 0.0 },
            };
            Ok((candle_nn::AdamW::new(vs, p)?, mult))
        })
        .collect::<Result<_>>()?;
    let n = ytr.len();
    let steps_per_epoch = n.div_ceil(o.batch_size);
    let total = o.max_epochs * steps_per_epoch;
    let warm = ((o.warmup * total as f64).round() as usize).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut shuffle = crate::output::rng_for(o.seed, "regard-finetune-order");
    let ydev_t = Tensor::from_vec(
        ydev.iter().map(|&y| y as u32).collect::<Vec<_>>(),
        ydev.len(),
        device,
    )?;
    let mut step = 0usize;
    let mut log = Vec::new();
    let mut best: Option<((f64, f64, f64), usize, Snapshot)> = None;
    let mut since_best = 0usize;
    for epoch in 1..=o.max_epochs {
        order.shuffle(&mut shuffle);
        let mut loss_sum = 0f64;
        for chunk in order.chunks(o.batch_size) {
            step += 1;
            let f = if step <= warm {
                step as f64 / warm as f64
            } else {
                (total - step) as f64 / (total - warm).max(1) as f64
            };
            for (opt, mult) in opts.iter_mut() {
                opt.set_learning_rate(o.lr * *mult * f.max(0.0));
            }
            let ys = Tensor::from_vec(
                chunk.iter().map(|&i| ytr[i] as u32).collect::<Vec<_>>(),
                chunk.len(),
                device,
            )?;
            let logits = train_logits(chunk, &mut drop_rng)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &ys)?;
            let grads = loss.backward()?;
            if grads.get(hw).is_none() || vars.first().is_some_and(|(_, v)| grads.get(v).is_none())
            {
                bail!("internal: the tuned parameters received no gradient");
            }
            for (opt, _) in opts.iter_mut() {
                opt.step(&grads)?;
            }
            loss_sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        }
        let dl = dev_logits()?;
        let dloss = candle_nn::loss::cross_entropy(&dl, &ydev_t)?.to_scalar::<f32>()? as f64;
        let pred: Vec<usize> = dl
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|x| x as usize)
            .collect();
        let (acc, f1) = accuracy_macro_f1(ydev, &pred, c);
        let score = (acc, f1, -dloss);
        let better = best
            .as_ref()
            .is_none_or(|(b, _, _)| score.partial_cmp(b) == Some(std::cmp::Ordering::Greater));
        progress(&format!(
            "seed {} epoch {epoch}: train loss {:.4}, dev loss {dloss:.4}, dev accuracy {acc:.3}, dev macro-F1 {f1:.3}{} ({:.0} s)",
            o.seed,
            loss_sum / n as f64,
            if better { " *" } else { "" },
            t0.elapsed().as_secs_f64()
        ));
        log.push(json!({"epoch": epoch, "train_loss": loss_sum / n as f64,
                        "dev_loss": dloss, "dev_accuracy": acc, "dev_macro_f1": f1}));
        if better {
            let mut snap: Snapshot = Vec::new();
            for (name, v) in vars {
                snap.push((name.clone(), v.as_tensor().detach().copy()?));
            }
            snap.push((HEAD_W.into(), hw.as_tensor().detach().copy()?));
            snap.push((HEAD_B.into(), hb.as_tensor().detach().copy()?));
            best = Some((score, epoch, snap));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= o.patience {
                break;
            }
        }
    }
    let (_, best_epoch, snap) = best.ok_or_else(|| anyhow!("no epoch was run"))?;
    Ok((best_epoch, snap, log))
}

/// Fine-tunes `base` with a fresh head for `labels` on `train`, selecting the epoch on `dev`.
/// Returns the classifier (built from the best epoch's tensors, as a reload would) and the
/// training log. `progress` receives one line per epoch.
pub fn finetune(
    base: &BaseEncoder,
    labels: &[Regard],
    train: &[(String, Regard)],
    dev: &[(String, Regard)],
    o: &FinetuneOpts,
    progress: impl FnMut(&str),
) -> Result<(TunedClassifier, Value)> {
    finetune_on(base, labels, train, dev, o, &Device::Cpu, progress)
}

/// [`finetune`] on `device` (f32; candle's autograd, the same on every device). The returned
/// classifier lives on the CPU.
pub fn finetune_on(
    base: &BaseEncoder,
    labels: &[Regard],
    train: &[(String, Regard)],
    dev: &[(String, Regard)],
    o: &FinetuneOpts,
    device: &Device,
    mut progress: impl FnMut(&str),
) -> Result<(TunedClassifier, Value)> {
    o.validate()?;
    if train.is_empty() || dev.is_empty() {
        bail!("fine-tuning needs training and dev examples");
    }
    let ytr = label_indices(labels, train)?;
    let ydev = label_indices(labels, dev)?;
    let dev_c = device.clone();
    let layers = base.config.num_hidden_layers;
    let h = base.config.hidden_size;
    let c = labels.len();
    // variables: every encoder tensor (word embeddings optionally frozen) and the head
    let mut vars: Vec<(String, Var)> = Vec::new();
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in &base.tensors {
        let t = &t.to_device(&dev_c)?;
        if o.freeze_word_embeddings && name == "embeddings.word_embeddings.weight" {
            map.insert(name.clone(), t.clone());
            continue;
        }
        let v = Var::from_tensor(t)?;
        map.insert(name.clone(), v.as_tensor().clone());
        vars.push((name.clone(), v));
    }
    let (hw, hb) = init_head(o.seed, c, h, &dev_c)?;
    // `enc` only tokenizes here; the differentiable forward pass reads the variables in `map`
    let enc_map: HashMap<String, Tensor> = base
        .tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let vb = VarBuilder::from_tensors(enc_map, DType::F32, &dev_c);
    let enc = BertEncoder::from_parts(vb, base.config.clone(), base.tokenizer.clone(), o.max_len)?;
    let tb = TrainBert {
        t: &map,
        cfg: &base.config,
    };
    let dev_texts: Vec<&str> = dev.iter().map(|x| x.0.as_str()).collect();
    let t0 = Instant::now();
    let (best_epoch, snap, log) = train_loop(
        o,
        layers,
        &vars,
        (&hw, &hb),
        (&ytr, &ydev, c),
        &dev_c,
        t0,
        |chunk, rng| {
            let texts: Vec<&str> = chunk.iter().map(|&i| train[i].0.as_str()).collect();
            train_logits(&enc, &tb, &hw, &hb, &texts, o.dropout, Some(rng))
        },
        || {
            let mut dev_logits = Vec::new();
            for ch in dev_texts.chunks(32) {
                dev_logits.push(train_logits(&enc, &tb, &hw, &hb, ch, 0.0, None)?.detach());
            }
            Ok(Tensor::cat(&dev_logits, 0)?)
        },
        &mut progress,
    )?;
    let mut tensors: BTreeMap<String, Tensor> = base.tensors.clone();
    for (n, t) in snap {
        tensors.insert(n, t.to_device(&Device::Cpu)?);
    }
    let log = json!({"epochs": log, "best_epoch": best_epoch, "seconds": t0.elapsed().as_secs_f64(),
                     "train_n": train.len(), "dev_n": dev.len()});
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), FORMAT.to_string());
    metadata.insert("config".into(), base.config_json.clone());
    metadata.insert(
        "tokenizer".into(),
        base.tokenizer
            .to_string(false)
            .map_err(|e| anyhow!("serialising the tokenizer: {e}"))?,
    );
    metadata.insert(
        "labels".into(),
        labels
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(","),
    );
    metadata.insert("base".into(), base.origin.to_string());
    metadata.insert("recipe".into(), serde_json::to_string(o)?);
    metadata.insert("training_log".into(), log.to_string());
    let clf = TunedClassifier::from_tensors(tensors, metadata, o.max_len)?;
    Ok((clf, log))
}

impl TunedClassifier {
    /// The named tensors (encoder and head) the classifier is built from.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Adds (or replaces) a metadata entry, e.g. the evaluation report before saving.
    pub fn set_metadata(&mut self, key: &str, value: String) {
        self.metadata.insert(key.into(), value);
    }
}

// ---------------------------------------------------------------------------------------------
// MPNet: top layers fine-tuned on frozen, cached lower layers

/// `format` metadata of a saved MPNet top-layer classifier.
pub const MPNET_FORMAT: &str = "equirun-regard-mpnet-top v1";

/// The pretrained MPNet a top-layer classifier builds on, with a fingerprint of its weights and
/// tokenizer (SHA-256 over the tensors in name order and the tokenizer JSON), so a classifier is
/// never combined with a different base.
pub struct MpnetBase {
    pub encoder: MpnetEncoder,
    pub config_json: String,
    pub origin: Value,
    pub fingerprint: String,
}

impl MpnetBase {
    /// Loads the folder (config.json, model.safetensors, tokenizer.json) on the CPU in f32.
    pub fn load(dir: &Path, max_len: usize) -> Result<Self> {
        let encoder = MpnetEncoder::load(dir, max_len, &Device::Cpu)?;
        let config_json = serde_json::to_string(&encoder.model.config)?;
        let fingerprint = Self::fingerprint_of(&encoder)?;
        Ok(Self {
            encoder,
            config_json,
            origin: json!({"path": dir.display().to_string()}),
            fingerprint,
        })
    }

    fn fingerprint_of(enc: &MpnetEncoder) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut names: Vec<&String> = enc.model.tensors.keys().collect();
        names.sort();
        for n in names {
            let t = &enc.model.tensors[n];
            h.update(n.as_bytes());
            for x in t.flatten_all()?.to_vec1::<f32>()? {
                h.update(x.to_le_bytes());
            }
        }
        h.update(
            enc.tokenizer()
                .to_string(false)
                .map_err(|e| anyhow!("serialising the tokenizer: {e}"))?
                .as_bytes(),
        );
        Ok(format!("{:x}", h.finalize()))
    }

    /// Output of the first `k` layers (no dropout) of each text, unpadded: [T_i, H] per text,
    /// computed in length-sorted batches of `batch` texts.
    pub fn lower_outputs(&self, texts: &[&str], k: usize, batch: usize) -> Result<Vec<Tensor>> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.encoder.token_ids(t))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (ids[i].len(), i));
        let mut out: Vec<Option<Tensor>> = vec![None; texts.len()];
        for chunk in order.chunks(batch.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let b = self.encoder.batch_of_ids(&rows)?;
            let m = &self.encoder.model;
            let x = m.embed(&b.ids, None)?;
            let bias = m.attention_bias(&b.mask)?;
            let h = m.layers(&x, &bias, 0, k, None)?;
            for (r, &i) in chunk.iter().enumerate() {
                out[i] = Some(h.get(r)?.narrow(0, 0, b.lengths[r])?.copy()?);
            }
        }
        Ok(out.into_iter().map(|t| t.unwrap()).collect())
    }
}

/// Pads cached [T_i, H] rows into [B, T, H] (zeros) with the mask [B, T].
fn pad_rows(rows: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let t = rows
        .iter()
        .map(|r| r.dim(0).unwrap_or(0))
        .max()
        .unwrap_or(1);
    let h = rows[0].dim(1)?;
    let dev = rows[0].device();
    let mut xs = Vec::with_capacity(rows.len());
    let mut mask = Vec::with_capacity(rows.len() * t);
    for r in rows {
        let n = r.dim(0)?;
        xs.push(if n < t {
            Tensor::cat(&[*r, &Tensor::zeros((t - n, h), DType::F32, dev)?], 0)?
        } else {
            (*r).clone()
        });
        mask.extend((0..t).map(|j| (j < n) as u32));
    }
    Ok((
        Tensor::stack(&xs, 0)?,
        Tensor::from_vec(mask, (rows.len(), t), dev)?,
    ))
}

/// An MPNet classifier: the base's layers below `first_tuned`, its own layers from
/// `first_tuned` on, mean pooling and a linear head. Saved as the tuned tensors only (the base is
/// identified by its fingerprint).
pub struct MpnetTuned {
    pub first_tuned: usize,
    pub labels: Vec<Regard>,
    /// Tuned layer tensors and the head.
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl MpnetTuned {
    /// Writes the classifier as one safetensors file with its metadata, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_f32_safetensors(path, &self.tensors, &self.metadata)
    }

    /// Reads a classifier written by [`MpnetTuned::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let data = std::fs::read(path)
            .with_context(|| format!("reading MPNet regard classifier {}", path.display()))?;
        let bad = |e: String| {
            anyhow!(
                "{} is not an MPNet regard classifier written by `equirun regard finetune \
                 --encoder mpnet` ({e})",
                path.display()
            )
        };
        let (tensors, metadata) = read_f32_safetensors(&data, bad)?;
        if metadata.get("format").map(String::as_str) != Some(MPNET_FORMAT) {
            return Err(bad(format!("format is not {MPNET_FORMAT:?}")));
        }
        let first_tuned = metadata
            .get("first_tuned_layer")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no first_tuned_layer metadata".into()))?;
        let labels = labels_from(&metadata).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            first_tuned,
            labels,
            tensors,
            metadata,
        })
    }

    /// The training report stored with the classifier (null when absent).
    pub fn report(&self) -> Value {
        report_of(&self.metadata)
    }

    pub fn set_metadata(&mut self, key: &str, value: String) {
        self.metadata.insert(key.into(), value);
    }
}

/// Several MPNet classifiers on one base, sharing the frozen lower layers' computation.
pub struct MpnetStack {
    pub base: std::sync::Arc<MpnetBase>,
    /// Per member: its network (base tensors with its tuned ones swapped in) and the head.
    nets: Vec<(Mpnet, Tensor, Tensor)>,
    pub members: Vec<MpnetTuned>,
    first: usize,
}

impl MpnetStack {
    pub fn new(base: std::sync::Arc<MpnetBase>, members: Vec<MpnetTuned>) -> Result<Self> {
        let l = base.encoder.model.config.num_hidden_layers;
        let mut nets = Vec::new();
        for m in &members {
            let fp = m
                .metadata
                .get("base_fingerprint")
                .cloned()
                .unwrap_or_default();
            if fp != base.fingerprint {
                bail!(
                    "an MPNet regard classifier was trained on a different base encoder \
                     (fingerprint {}…, installed {}…); retrain it with `equirun regard finetune \
                     --encoder mpnet` or point --mpnet-dir at the encoder it was trained on",
                    fp.get(..12).unwrap_or(&fp),
                    base.fingerprint.get(..12).unwrap_or("")
                );
            }
            if m.first_tuned >= l {
                bail!(
                    "first_tuned_layer {} ≥ the base's {l} layers",
                    m.first_tuned
                );
            }
            let mut t = base.encoder.model.tensors.clone();
            for (k, v) in &m.tensors {
                if !k.starts_with("regard_head.") {
                    if !t.contains_key(k) {
                        bail!("the classifier has a tensor {k} the base does not");
                    }
                    t.insert(k.clone(), v.clone());
                }
            }
            let get = |k: &str| {
                m.tensors
                    .get(k)
                    .cloned()
                    .ok_or_else(|| anyhow!("the classifier has no {k}"))
            };
            let (w, b) = (get(HEAD_W)?, get(HEAD_B)?);
            if w.dims() != [m.labels.len(), base.encoder.model.config.hidden_size] {
                bail!(
                    "the head is {:?}, expected [{}, H]",
                    w.dims(),
                    m.labels.len()
                );
            }
            nets.push((Mpnet::new(base.encoder.model.config.clone(), t)?, w, b));
        }
        let first = members.iter().map(|m| m.first_tuned).min().unwrap_or(l);
        Ok(Self {
            base,
            nets,
            members,
            first,
        })
    }

    /// Logits [B, C] of each member for (already masked) texts.
    pub fn logits(&self, texts: &[&str]) -> Result<Vec<Tensor>> {
        let b = self.base.encoder.batch(texts)?;
        let m = &self.base.encoder.model;
        let bias = m.attention_bias(&b.mask)?;
        let low = m.layers(&m.embed(&b.ids, None)?, &bias, 0, self.first, None)?;
        let l = m.config.num_hidden_layers;
        self.nets
            .iter()
            .map(|(net, w, hb)| {
                let h = net.layers(&low, &bias, self.first, l, None)?;
                let p = mean_pool(&h, &b.mask)?;
                Ok(p.matmul(&w.t()?)?.broadcast_add(hb)?)
            })
            .collect()
    }

    /// Each member's arg-max label per text: `[member][text]`.
    pub fn predict_members(&self, texts: &[&str]) -> Result<Vec<Vec<Regard>>> {
        self.logits(texts)?
            .iter()
            .zip(&self.members)
            .map(|(l, m)| {
                Ok(l.to_vec2::<f32>()?
                    .iter()
                    .map(|row| m.labels[crate::models::probe::argmax(row)])
                    .collect())
            })
            .collect()
    }
}

/// Fine-tunes the top `top_layers` layers of `base` and a fresh head on `train` (the lower
/// layers frozen: their outputs are computed once, without dropout), selecting the epoch on
/// `dev` as [`finetune`] does. Returns the classifier and the training log.
pub fn finetune_mpnet(
    base: &MpnetBase,
    top_layers: usize,
    labels: &[Regard],
    train: &[(String, Regard)],
    dev: &[(String, Regard)],
    o: &FinetuneOpts,
    mut progress: impl FnMut(&str),
) -> Result<(MpnetTuned, Value)> {
    o.validate()?;
    let cfg = &base.encoder.model.config;
    let layers = cfg.num_hidden_layers;
    if top_layers == 0 || top_layers > layers {
        bail!("--top-layers must be between 1 and the encoder's {layers} layers");
    }
    if train.is_empty() || dev.is_empty() {
        bail!("fine-tuning needs training and dev examples");
    }
    // every label known before the frozen layers' (heavy) pass
    label_indices(labels, train)?;
    label_indices(labels, dev)?;
    let first = layers - top_layers;
    let t0 = Instant::now();
    fn texts(s: &[(String, Regard)]) -> Vec<&str> {
        s.iter().map(|x| x.0.as_str()).collect()
    }
    let low_tr = base.lower_outputs(&texts(train), first, 32)?;
    let low_dev = base.lower_outputs(&texts(dev), first, 32)?;
    let cache_s = t0.elapsed().as_secs_f64();
    progress(&format!(
        "outputs of the {first} frozen layers cached ({cache_s:.0} s)"
    ));
    finetune_mpnet_cached(
        base, top_layers, labels, train, &low_tr, dev, &low_dev, o, progress,
    )
}

/// [`finetune_mpnet`] on lower-layer outputs already computed by
/// [`MpnetBase::lower_outputs`] (`layers − top_layers` layers; one per example), so that several
/// seeds share them.
#[allow(clippy::too_many_arguments)]
pub fn finetune_mpnet_cached(
    base: &MpnetBase,
    top_layers: usize,
    labels: &[Regard],
    train: &[(String, Regard)],
    low_tr: &[Tensor],
    dev: &[(String, Regard)],
    low_dev: &[Tensor],
    o: &FinetuneOpts,
    mut progress: impl FnMut(&str),
) -> Result<(MpnetTuned, Value)> {
    o.validate()?;
    let cfg = &base.encoder.model.config;
    let layers = cfg.num_hidden_layers;
    if top_layers == 0 || top_layers > layers {
        bail!("--top-layers must be between 1 and the encoder's {layers} layers");
    }
    if low_tr.len() != train.len()
        || low_dev.len() != dev.len()
        || train.is_empty()
        || dev.is_empty()
    {
        bail!("fine-tuning needs training and dev examples with their cached lower-layer outputs");
    }
    let ytr = label_indices(labels, train)?;
    let ydev = label_indices(labels, dev)?;
    let first = layers - top_layers;
    let t0 = Instant::now();
    let (h, c) = (cfg.hidden_size, labels.len());
    // variables: the top layers and the head
    let mut map = base.encoder.model.tensors.clone();
    let mut vars: Vec<(String, Var)> = Vec::new();
    let mut names: Vec<String> = map
        .keys()
        .filter(|k| depth(k, layers) > first)
        .cloned()
        .collect();
    names.sort();
    for n in names {
        let v = Var::from_tensor(&map[&n].copy()?)?;
        map.insert(n.clone(), v.as_tensor().clone());
        vars.push((n, v));
    }
    let net = Mpnet::new(cfg.clone(), map)?;
    let (hw, hb) = init_head(o.seed, c, h, &Device::Cpu)?;
    let logits_of = |rows: &[&Tensor], drop: Option<&mut Dropout>| -> Result<Tensor> {
        let (x, mask) = pad_rows(rows)?;
        let bias = net.attention_bias(&mask)?;
        let out = net.layers(&x, &bias, first, layers, drop)?;
        let p = mean_pool(&out, &mask)?;
        Ok(p.matmul(&hw.as_tensor().t()?)?
            .broadcast_add(hb.as_tensor())?)
    };
    let (best_epoch, snap, log) = train_loop(
        o,
        layers,
        &vars,
        (&hw, &hb),
        (&ytr, &ydev, c),
        &Device::Cpu,
        t0,
        |chunk, rng| {
            let rows: Vec<&Tensor> = chunk.iter().map(|&i| &low_tr[i]).collect();
            let mut d = Dropout { p: o.dropout, rng };
            logits_of(&rows, Some(&mut d))
        },
        || {
            // length-sorted batches, then back to dev order
            let mut dl = Vec::new();
            let mut idx: Vec<usize> = (0..dev.len()).collect();
            idx.sort_by_key(|&i| (low_dev[i].dim(0).unwrap_or(0), i));
            let mut pos = vec![0usize; dev.len()];
            for ch in idx.chunks(32) {
                let rows: Vec<&Tensor> = ch.iter().map(|&i| &low_dev[i]).collect();
                dl.push(logits_of(&rows, None)?.detach());
            }
            for (k, &i) in idx.iter().enumerate() {
                pos[i] = k;
            }
            Ok(Tensor::cat(&dl, 0)?.index_select(
                &Tensor::from_vec(
                    pos.iter().map(|&p| p as u32).collect::<Vec<_>>(),
                    pos.len(),
                    &Device::Cpu,
                )?,
                0,
            )?)
        },
        &mut progress,
    )?;
    let log = json!({"epochs": log, "best_epoch": best_epoch, "seconds": t0.elapsed().as_secs_f64(),
                     "train_n": train.len(), "dev_n": dev.len(),
                     "top_layers": top_layers});
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), MPNET_FORMAT.to_string());
    metadata.insert("config".into(), base.config_json.clone());
    metadata.insert(
        "labels".into(),
        labels
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(","),
    );
    metadata.insert("first_tuned_layer".into(), first.to_string());
    metadata.insert("base".into(), base.origin.to_string());
    metadata.insert("base_fingerprint".into(), base.fingerprint.clone());
    metadata.insert("recipe".into(), serde_json::to_string(o)?);
    metadata.insert("training_log".into(), log.to_string());
    Ok((
        MpnetTuned {
            first_tuned: first,
            labels: labels.to_vec(),
            tensors: snap.into_iter().collect(),
            metadata,
        },
        log,
    ))
}
