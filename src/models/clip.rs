//! CLIP (ViT) from an HF `CLIPModel` checkpoint through candle-transformers, plus the zero-shot
//! text classifier and a deterministic tiny random checkpoint for tests and `equirun check`.

use crate::hub::ResolvedModel;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::{
    text_model::{Activation, ClipTextConfig},
    vision_model::ClipVisionConfig,
    ClipConfig, ClipModel,
};
use serde::Deserialize;
use std::path::Path;
use tokenizers::Tokenizer;

/// Files a CLIP snapshot needs.
pub const REQUIRED_FILES: &[&str] = &["config.json", "model.safetensors", "tokenizer.json"];

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct TextJson {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    eos_token_id: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct VisionJson {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
}

#[derive(Deserialize, Debug)]
struct ClipJson {
    #[serde(default)]
    text_config: TextJson,
    #[serde(default)]
    vision_config: VisionJson,
    projection_dim: Option<usize>,
    logit_scale_init_value: Option<f32>,
    model_type: Option<String>,
}

fn check_act(which: &str, act: &Option<String>) -> Result<()> {
    match act.as_deref() {
        None | Some("quick_gelu") => Ok(()),
        Some(other) => bail!(
            "unsupported {which} hidden_act '{other}' in config.json: candle's CLIP implements quick_gelu only"
        ),
    }
}

fn check_eps(which: &str, eps: Option<f64>) -> Result<()> {
    match eps {
        Some(e) if (e - 1e-5).abs() > 1e-12 => {
            bail!("unsupported {which} layer_norm_eps {e} in config.json: candle's CLIP uses 1e-5")
        }
        _ => Ok(()),
    }
}

/// Parses an HF `CLIPModel` config.json (HF defaults = ViT-B/32 for absent keys).
pub fn parse_config(text: &str) -> Result<(ClipConfig, Option<u32>)> {
    let j: ClipJson =
        serde_json::from_str(text).context("config.json is not a valid CLIP config")?;
    if let Some(mt) = &j.model_type {
        if mt != "clip" {
            bail!("config.json has model_type '{mt}', expected 'clip'");
        }
    }
    check_act("text", &j.text_config.hidden_act)?;
    check_act("vision", &j.vision_config.hidden_act)?;
    check_eps("text", j.text_config.layer_norm_eps)?;
    check_eps("vision", j.vision_config.layer_norm_eps)?;
    let proj = j.projection_dim.unwrap_or(512);
    let t = &j.text_config;
    let v = &j.vision_config;
    let text_config = ClipTextConfig {
        vocab_size: t.vocab_size.unwrap_or(49408),
        embed_dim: t.hidden_size.unwrap_or(512),
        activation: Activation::QuickGelu,
        intermediate_size: t.intermediate_size.unwrap_or(2048),
        max_position_embeddings: t.max_position_embeddings.unwrap_or(77),
        pad_with: None,
        num_hidden_layers: t.num_hidden_layers.unwrap_or(12),
        num_attention_heads: t.num_attention_heads.unwrap_or(8),
        projection_dim: proj,
    };
    let image_size = v.image_size.unwrap_or(224);
    let vision_config = ClipVisionConfig {
        embed_dim: v.hidden_size.unwrap_or(768),
        activation: Activation::QuickGelu,
        intermediate_size: v.intermediate_size.unwrap_or(3072),
        num_hidden_layers: v.num_hidden_layers.unwrap_or(12),
        num_attention_heads: v.num_attention_heads.unwrap_or(12),
        projection_dim: proj,
        num_channels: v.num_channels.unwrap_or(3),
        image_size,
        patch_size: v.patch_size.unwrap_or(32),
    };
    if image_size % vision_config.patch_size != 0 {
        bail!(
            "config.json: image_size {image_size} is not a multiple of patch_size {}",
            vision_config.patch_size
        );
    }
    Ok((
        ClipConfig {
            text_config,
            vision_config,
            logit_scale_init_value: j.logit_scale_init_value.unwrap_or(2.6592),
            image_size,
        },
        t.eos_token_id,
    ))
}

/// A loaded CLIP model with its tokenizer.
pub struct Clip {
    pub model: ClipModel,
    pub config: ClipConfig,
    pub tokenizer: Option<Tokenizer>,
    pub eos_id: u32,
    /// exp(logit_scale) stored in the checkpoint.
    pub model_logit_scale: f32,
    pub device: Device,
}

impl Clip {
    /// Loads from resolved snapshot files.
    pub fn load(files: &ResolvedModel, device: &Device) -> Result<Clip> {
        let config_path = files.file("config.json")?;
        let text = std::fs::read_to_string(config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let (config, eos_cfg) =
            parse_config(&text).with_context(|| format!("in {}", config_path.display()))?;
        let weights = files.file("model.safetensors")?;
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device) }
            .map_err(|e| {
                anyhow!(
                    "cannot read weights file {}: {e}. The file is corrupt or not safetensors; \
                     delete it and download it again, or point --model-dir at a good snapshot",
                    weights.display()
                )
            })?;
        let tokenizer = match files.files.get("tokenizer.json") {
            Some(p) => Some(
                Tokenizer::from_file(p)
                    .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Self::from_varbuilder(vb, config, tokenizer, eos_cfg)
            .with_context(|| format!("loading CLIP weights from {}", weights.display()))
    }

    pub fn from_varbuilder(
        vb: VarBuilder,
        config: ClipConfig,
        tokenizer: Option<Tokenizer>,
        eos_cfg: Option<u32>,
    ) -> Result<Clip> {
        for name in ["vision_model.embeddings.class_embedding", "logit_scale"] {
            if !vb.contains_tensor(name) {
                bail!("tensor '{name}' is missing from the checkpoint (not an HF CLIPModel checkpoint?)");
            }
        }
        let model_logit_scale = vb.get((), "logit_scale")?.exp()?.to_scalar::<f32>()?;
        let device = vb.device().clone();
        let model = ClipModel::new(vb, &config)?;
        let vocab = config.text_config.vocab_size as u32;
        let eos_id = tokenizer
            .as_ref()
            .and_then(|t| t.token_to_id("<|endoftext|>"))
            .or(eos_cfg)
            .unwrap_or(vocab - 1);
        Ok(Clip {
            model,
            config,
            tokenizer,
            eos_id,
            model_logit_scale,
            device,
        })
    }

    pub fn image_size(&self) -> usize {
        self.config.image_size
    }

    /// Unnormalised image features `[B, D]`.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.model.get_image_features(pixels)?)
    }

    /// Token ids for texts, truncated to the context length (EOS kept) and padded with EOS.
    pub fn tokenize(&self, texts: &[String]) -> Result<Tensor> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            anyhow!("this CLIP snapshot has no tokenizer.json, needed to encode class prompts")
        })?;
        let max_len = self.config.text_config.max_position_embeddings;
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = tok
                .encode(t.as_str(), true)
                .map_err(|e| anyhow!("tokenizing {t:?}: {e}"))?;
            let mut ids = enc.get_ids().to_vec();
            if ids.len() > max_len {
                ids.truncate(max_len - 1);
                ids.push(self.eos_id);
            }
            if let Some(&bad) = ids.iter().find(|&&i| i > self.eos_id) {
                bail!(
                    "token id {bad} exceeds the EOS id {}: CLIP pools the text at argmax(input_ids), \
                     so EOS must be the largest id in the vocabulary",
                    self.eos_id
                );
            }
            rows.push(ids);
        }
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let flat: Vec<u32> = rows
            .iter()
            .flat_map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat(self.eos_id).take(len - r.len()))
            })
            .collect();
        Ok(Tensor::from_vec(flat, (texts.len(), len), &self.device)?)
    }

    /// Unnormalised text features `[N, D]` for token ids `[N, T]`.
    pub fn encode_token_ids(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.model.get_text_features(ids)?)
    }

    /// The zero-shot classifier `[C, D]`: per class, every template filled with the class name,
    /// encoded, L2-normalised, averaged, L2-normalised again. `progress` is called per class.
    pub fn zero_shot_classifier(
        &self,
        classes: &[String],
        templates: &[String],
        progress: &dyn Fn(usize),
    ) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(classes.len());
        for (i, c) in classes.iter().enumerate() {
            let texts: Vec<String> = templates.iter().map(|t| t.replacen("{}", c, 1)).collect();
            let mut feats = Vec::new();
            for chunk in texts.chunks(64) {
                let ids = self.tokenize(chunk)?;
                feats.push(super::l2_normalize(&self.encode_token_ids(&ids)?)?);
            }
            let f = Tensor::cat(&feats, 0)?.mean(0)?;
            rows.push(super::l2_normalize(&f.unsqueeze(0)?)?);
            progress(i + 1);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// Scores image features against a classifier: softmax(scale · cos) per row, in f32.
pub fn zero_shot_probs(image_features: &Tensor, classifier: &Tensor, scale: f32) -> Result<Tensor> {
    let f = super::l2_normalize(&image_features.to_dtype(DType::F32)?)?;
    let logits = (f.matmul(&classifier.t()?)? * scale as f64)?;
    Ok(candle_nn::ops::softmax_last_dim(&logits)?)
}

/// The tiny CLIP used by tests and `equirun check` (same shape as the parity fixture).
pub fn tiny_config() -> ClipConfig {
    ClipConfig {
        text_config: ClipTextConfig {
            vocab_size: 100,
            embed_dim: 64,
            activation: Activation::QuickGelu,
            intermediate_size: 128,
            max_position_embeddings: 16,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            projection_dim: 32,
        },
        vision_config: ClipVisionConfig {
            embed_dim: 64,
            activation: Activation::QuickGelu,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            projection_dim: 32,
            num_channels: 3,
            image_size: 32,
            patch_size: 8,
        },
        logit_scale_init_value: 2.6592,
        image_size: 32,
    }
}

/// The HF config.json of [`tiny_config`].
pub fn tiny_config_json() -> serde_json::Value {
    serde_json::json!({
        "model_type": "clip",
        "architectures": ["CLIPModel"],
        "projection_dim": 32,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "bos_token_id": 98, "eos_token_id": 99, "pad_token_id": 99
        },
        "vision_config": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "num_channels": 3,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
        }
    })
}

/// A VarMap holding a CLIP with every tensor drawn from a seeded ChaCha RNG (HF names),
/// deterministic across runs; layer-norm weights are 1 + noise.
pub fn random_clip_varmap(config: &ClipConfig, seed: u64, device: &Device) -> Result<VarMap> {
    use rand::SeedableRng;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    vb.get_with_hints(
        config.vision_config.embed_dim,
        "vision_model.embeddings.class_embedding",
        candle_nn::Init::Const(0.),
    )?;
    vb.get_with_hints(
        (),
        "logit_scale",
        candle_nn::Init::Const(config.logit_scale_init_value as f64),
    )?;
    ClipModel::new(vb, config)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        if name == "logit_scale" {
            continue;
        }
        let var = &data[name];
        let n = var.elem_count();
        let is_norm = name.contains("norm") || name.contains("layrnorm");
        let v = super::random_values(&mut rng, name, n, is_norm);
        var.set(&Tensor::from_vec(v, var.shape(), device)?)?;
    }
    drop(data);
    Ok(varmap)
}

/// Builds an in-memory tiny CLIP with seeded random weights (no tokenizer).
pub fn tiny_clip(seed: u64, device: &Device) -> Result<Clip> {
    let config = tiny_config();
    let varmap = random_clip_varmap(&config, seed, device)?;
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    Clip::from_varbuilder(vb, config, None, Some(99))
}

/// A word-level tokenizer.json for the tiny CLIP: lowercase, whitespace/punctuation split,
/// `<|startoftext|>`=98 … `<|endoftext|>`=99 around every text; unknown words map to `<unk>`=0.
pub fn tiny_tokenizer_json(words: &[&str]) -> Result<serde_json::Value> {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    let mut next = 1u32;
    for w in words {
        let w = w.to_lowercase();
        if vocab.contains_key(&w) {
            continue;
        }
        if next >= 98 {
            bail!("tiny tokenizer vocabulary is full (97 words)");
        }
        vocab.insert(w, next.into());
        next += 1;
    }
    vocab.insert("<|startoftext|>".into(), 98.into());
    vocab.insert("<|endoftext|>".into(), 99.into());
    Ok(serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 98, "content": "<|startoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 99, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
            "special_tokens": {
                "<|startoftext|>": {"id": "<|startoftext|>", "ids": [98], "tokens": ["<|startoftext|>"]},
                "<|endoftext|>": {"id": "<|endoftext|>", "ids": [99], "tokens": ["<|endoftext|>"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    }))
}

/// Writes a complete tiny CLIP snapshot (config.json, model.safetensors, tokenizer.json).
pub fn write_tiny_snapshot(dir: &Path, seed: u64, words: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let varmap = random_clip_varmap(&tiny_config(), seed, &Device::Cpu)?;
    varmap.save(dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&tiny_config_json())?,
    )?;
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string_pretty(&tiny_tokenizer_json(words)?)?,
    )?;
    Ok(())
}
