//! CLIP behind one type, whatever the backbone: ViT from an HF `CLIPModel` checkpoint (any
//! config.json: ViT-B/32, B/16, L/14, L/14-336) through candle-transformers, or an OpenAI /
//! OpenCLIP checkpoint in the open_clip layout (ModifiedResNet RN50/RN101/..., or ViT) through
//! [`open_clip`]. Plus the zero-shot text classifier and deterministic tiny random
//! checkpoints for tests and `equirun check`.

pub mod open_clip;
pub mod tiny_tokenizer;
pub mod zoo;

use self::open_clip::{OpenClip, OpenClipConfig, OPEN_CLIP_FILES};
use self::zoo::ZooEntry;
use crate::hub::{ModelSource, ResolvedModel};
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

impl ClipJson {
    /// Sanity of the sizes (HF defaults for absent keys): no zero or absurd sizes, heads divide
    /// the width, the patch tiles the image. Errors name config.json and the key.
    fn validate(&self) -> Result<()> {
        use crate::parse::{check_heads, check_sizes};
        let (t, v) = (&self.text_config, &self.vision_config);
        let f = "config.json";
        let t_width = t.hidden_size.unwrap_or(512);
        let v_width = v.hidden_size.unwrap_or(768);
        let image = v.image_size.unwrap_or(224);
        let patch = v.patch_size.unwrap_or(32);
        check_sizes(
            f,
            &[
                (
                    "projection_dim",
                    self.projection_dim.unwrap_or(512),
                    1,
                    1 << 16,
                ),
                (
                    "text_config.vocab_size",
                    t.vocab_size.unwrap_or(49408),
                    1,
                    10_000_000,
                ),
                ("text_config.hidden_size", t_width, 1, 1 << 16),
                (
                    "text_config.intermediate_size",
                    t.intermediate_size.unwrap_or(2048),
                    1,
                    1 << 18,
                ),
                (
                    "text_config.num_hidden_layers",
                    t.num_hidden_layers.unwrap_or(12),
                    1,
                    1024,
                ),
                (
                    "text_config.max_position_embeddings",
                    t.max_position_embeddings.unwrap_or(77),
                    1,
                    1 << 16,
                ),
                ("vision_config.hidden_size", v_width, 1, 1 << 16),
                (
                    "vision_config.intermediate_size",
                    v.intermediate_size.unwrap_or(3072),
                    1,
                    1 << 18,
                ),
                (
                    "vision_config.num_hidden_layers",
                    v.num_hidden_layers.unwrap_or(12),
                    1,
                    1024,
                ),
                (
                    "vision_config.num_channels",
                    v.num_channels.unwrap_or(3),
                    1,
                    64,
                ),
                ("vision_config.image_size", image, 1, 4096),
                ("vision_config.patch_size", patch, 1, image),
            ],
        )?;
        check_heads(
            f,
            "text_config.hidden_size",
            t_width,
            "text_config.num_attention_heads",
            t.num_attention_heads.unwrap_or(8),
        )?;
        check_heads(
            f,
            "vision_config.hidden_size",
            v_width,
            "vision_config.num_attention_heads",
            v.num_attention_heads.unwrap_or(12),
        )
    }
}

/// Checks that config.json's layer counts match the numbered layers in the weights.
fn validate_layers(config: &ClipConfig, weights: &Path) -> Result<()> {
    // an unreadable weights file is reported by the loader itself
    let Ok(names) = crate::parse::safetensors_names(weights) else {
        return Ok(());
    };
    for (key, n, prefix) in [
        (
            "text_config.num_hidden_layers",
            config.text_config.num_hidden_layers,
            "text_model.encoder.layers.",
        ),
        (
            "vision_config.num_hidden_layers",
            config.vision_config.num_hidden_layers,
            "vision_model.encoder.layers.",
        ),
    ] {
        crate::parse::check_block_count(&names, weights, "config.json", key, n, &[prefix])?;
    }
    Ok(())
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
    let mut raw: serde_json::Value =
        serde_json::from_str(text).context("config.json is not valid JSON")?;
    // old transformers configs carry overrides in `text_config_dict` / `vision_config_dict`
    for part in ["text_config", "vision_config"] {
        let over = raw.get(format!("{part}_dict")).cloned();
        if let Some(serde_json::Value::Object(over)) = over {
            let base = raw
                .as_object_mut()
                .ok_or_else(|| anyhow!("config.json is not a JSON object"))?
                .entry(part)
                .or_insert_with(|| serde_json::json!({}));
            if let Some(base) = base.as_object_mut() {
                base.extend(over);
            }
        }
    }
    let j: ClipJson =
        serde_json::from_value(raw).context("config.json is not a valid CLIP config")?;
    if let Some(mt) = &j.model_type {
        if mt != "clip" {
            bail!("config.json has model_type '{mt}', expected 'clip'");
        }
    }
    j.validate()?;
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

/// The network behind a [`Clip`]: one variant per checkpoint layout.
pub enum ClipBackbone {
    /// HF `CLIPModel` (ViT) through candle-transformers.
    Vit(ClipModel),
    /// OpenAI / OpenCLIP layout: ModifiedResNet or ViT vision tower.
    OpenClip(Box<OpenClip>),
}

impl ClipBackbone {
    /// Unnormalised image features (model dtype; pixels must be on the model's device and dtype).
    pub fn get_image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        match self {
            ClipBackbone::Vit(m) => Ok(m.get_image_features(pixels)?),
            ClipBackbone::OpenClip(m) => m.encode_image(pixels),
        }
    }

    /// Unnormalised text features of token ids `[B, T]`.
    pub fn get_text_features(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            ClipBackbone::Vit(m) => Ok(m.get_text_features(ids)?),
            ClipBackbone::OpenClip(m) => m.encode_text(ids),
        }
    }

    /// `(logits_per_text, logits_per_image)` with the checkpoint's learned scale, as
    /// transformers' / open_clip's forward.
    pub fn forward(&self, pixels: &Tensor, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            ClipBackbone::Vit(m) => Ok(m.forward(pixels, ids)?),
            ClipBackbone::OpenClip(m) => {
                let i = super::l2_normalize(&m.encode_image(pixels)?.to_dtype(DType::F32)?)?;
                let t = super::l2_normalize(&m.encode_text(ids)?.to_dtype(DType::F32)?)?;
                let per_text = (t.matmul(&i.t()?)? * (m.logit_scale as f64).exp())?;
                let per_image = per_text.t()?;
                Ok((per_text, per_image))
            }
        }
    }
}

/// Backbone-independent facts about a loaded CLIP.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClipSpec {
    /// Vision tower: `ViT` or `ModifiedResNet`.
    pub family: &'static str,
    /// Checkpoint layout: `hf` or `open_clip`.
    pub layout: &'static str,
    pub image_size: usize,
    /// Joint embedding dimension.
    pub projection_dim: usize,
    /// Text context length.
    pub context_length: usize,
    pub vocab_size: usize,
}

/// A loaded CLIP model with its tokenizer.
pub struct Clip {
    pub model: ClipBackbone,
    pub spec: ClipSpec,
    pub tokenizer: Option<Tokenizer>,
    pub eos_id: u32,
    /// exp(logit_scale) stored in the checkpoint.
    pub model_logit_scale: f32,
    pub device: Device,
    /// Inference dtype of the network (features are returned in f32).
    pub dtype: DType,
    /// The same weights behind the fused CPU f32 kernels (`crate::kernels`), used by
    /// `encode_images` / `encode_token_ids` when present (HF ViT layout on the CPU in f32).
    pub fast: Option<crate::kernels::towers::FastClip>,
}

/// Resolves a CLIP snapshot: a zoo alias (`RN50`, `ViT-B/16`, ...) or hub id through the HF
/// cache, or `--model-dir`; either layout (HF `config.json` + `model.safetensors`, or open_clip
/// `open_clip_config.json` + `open_clip_model.safetensors`), plus `tokenizer.json`.
pub fn resolve(src: &ModelSource) -> Result<(ResolvedModel, Option<&'static ZooEntry>)> {
    let (id, alias) = if src.model_dir.is_some() {
        (src.model.clone(), None)
    } else {
        zoo::resolve_model_id(&src.model)
    };
    let src = ModelSource {
        model: id,
        revision: src.revision.clone(),
        model_dir: src.model_dir.clone(),
    };
    if let Some(dir) = &src.model_dir {
        let hf = dir.join("config.json").is_file();
        let oc = dir.join("open_clip_config.json").is_file();
        let use_oc = oc && (!hf || !hf_config_supported(&dir.join("config.json")));
        let files = if use_oc {
            OPEN_CLIP_FILES
        } else {
            REQUIRED_FILES
        };
        return Ok((src.resolve(files, &[])?, alias));
    }
    // hub: fetch the (small) config files first, then the weights of one layout only
    let configs = src.resolve(&[], &["config.json", "open_clip_config.json"])?;
    let hf = configs.files.get("config.json");
    let oc = configs.files.get("open_clip_config.json");
    let use_oc = match (hf, oc) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(h), Some(_)) => !hf_config_supported(h),
    };
    let files = if use_oc {
        OPEN_CLIP_FILES
    } else {
        REQUIRED_FILES
    };
    let r = src.resolve(files, &[]).with_context(|| {
        if hf.is_none() && oc.is_none() {
            format!(
                "{} has neither config.json (HF CLIPModel) nor open_clip_config.json (OpenCLIP); \
                 see `equirun clip --list-models` for known names",
                src.model
            )
        } else {
            format!(
                "resolving the {} snapshot",
                if use_oc { "open_clip" } else { "HF" }
            )
        }
    })?;
    Ok((r, alias))
}

fn hf_config_supported(p: &Path) -> bool {
    std::fs::read_to_string(p)
        .ok()
        .is_some_and(|t| parse_config(&t).is_ok())
}

fn load_tokenizer(files: &ResolvedModel) -> Result<Option<Tokenizer>> {
    Ok(match files.files.get("tokenizer.json") {
        Some(p) => Some(
            Tokenizer::from_file(p)
                .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", p.display()))?,
        ),
        None => None,
    })
}

fn mmap_weights(weights: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, device) }.map_err(|e| {
        anyhow!(
            "cannot read weights file {}: {e}. The file is corrupt or not safetensors; \
             delete it and download it again, or point --model-dir at a good snapshot",
            weights.display()
        )
    })
}

impl Clip {
    /// Loads from resolved snapshot files (either layout) in f32.
    pub fn load(files: &ResolvedModel, device: &Device) -> Result<Clip> {
        Self::load_with(files, device, DType::F32)
    }

    /// Loads from resolved snapshot files (either layout), running in `dtype` on `device`.
    pub fn load_with(files: &ResolvedModel, device: &Device, dtype: DType) -> Result<Clip> {
        crate::kernels::tune_allocator();
        if files.files.contains_key("open_clip_config.json") {
            return Self::load_open_clip(files, device, dtype);
        }
        let config_path = files.file("config.json")?;
        let text = std::fs::read_to_string(config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let (config, eos_cfg) =
            parse_config(&text).with_context(|| format!("in {}", config_path.display()))?;
        let weights = files.file("model.safetensors")?;
        validate_layers(&config, weights)
            .with_context(|| format!("in {}", config_path.display()))?;
        let vb = mmap_weights(weights, dtype, device)?;
        let tokenizer = load_tokenizer(files)?;
        Self::from_varbuilder(vb, config, tokenizer, eos_cfg)
            .with_context(|| format!("loading CLIP weights from {}", weights.display()))
    }

    fn load_open_clip(files: &ResolvedModel, device: &Device, dtype: DType) -> Result<Clip> {
        let config_path = files.file("open_clip_config.json")?;
        let text = std::fs::read_to_string(config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let config = open_clip::parse_open_clip_config(&text)
            .with_context(|| format!("in {}", config_path.display()))?;
        let weights = files.file("open_clip_model.safetensors")?;
        config
            .validate_layers(weights)
            .with_context(|| format!("in {}", config_path.display()))?;
        // read in f32 (batch norms are folded in f32), converted to `dtype` per tensor
        let vb = mmap_weights(weights, DType::F32, device)?;
        let tokenizer = load_tokenizer(files)?;
        Self::from_open_clip(vb, &config, tokenizer, dtype)
            .with_context(|| format!("loading OpenCLIP weights from {}", weights.display()))
    }

    /// Builds from open_clip tensor names.
    pub fn from_open_clip(
        vb: VarBuilder,
        config: &OpenClipConfig,
        tokenizer: Option<Tokenizer>,
        dtype: DType,
    ) -> Result<Clip> {
        for name in ["visual", "logit_scale", "text_projection"] {
            let found = if name == "visual" {
                vb.contains_tensor("visual.attnpool.c_proj.weight")
                    || vb.contains_tensor("visual.proj")
            } else {
                vb.contains_tensor(name) || vb.contains_tensor(&format!("text.{name}"))
            };
            if !found {
                bail!("'{name}' tensors are missing from the checkpoint (not an OpenAI/OpenCLIP CLIP checkpoint?)");
            }
        }
        crate::kernels::tune_allocator();
        let device = vb.device().clone();
        let model = OpenClip::new(vb, config, dtype)?;
        let vocab = config.text.vocab_size as u32;
        let eos_id = tokenizer
            .as_ref()
            .and_then(|t| t.token_to_id("<|endoftext|>"))
            .unwrap_or(vocab - 1);
        Ok(Clip {
            spec: ClipSpec {
                family: config.vision.family(),
                layout: "open_clip",
                image_size: config.vision.image_size(),
                projection_dim: config.embed_dim,
                context_length: config.text.context_length,
                vocab_size: config.text.vocab_size,
            },
            model_logit_scale: model.logit_scale.exp(),
            model: ClipBackbone::OpenClip(Box::new(model)),
            tokenizer,
            eos_id,
            device,
            dtype,
            fast: None,
        })
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
        let model_logit_scale = vb
            .get((), "logit_scale")?
            .to_dtype(DType::F32)?
            .exp()?
            .to_scalar::<f32>()?;
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let model = ClipModel::new(vb.clone(), &config)?;
        // after ClipModel::new, so that a VarMap-backed builder already holds every tensor
        // (nothing is created here with other initialisers)
        let fast = if crate::kernels::enabled(&device, dtype) {
            crate::kernels::towers::FastClip::load(&vb, &config).ok()
        } else {
            None
        };
        let vocab = config.text_config.vocab_size as u32;
        let eos_id = tokenizer
            .as_ref()
            .and_then(|t| t.token_to_id("<|endoftext|>"))
            .or(eos_cfg)
            .unwrap_or(vocab - 1);
        Ok(Clip {
            model: ClipBackbone::Vit(model),
            spec: ClipSpec {
                family: "ViT",
                layout: "hf",
                image_size: config.image_size,
                projection_dim: config.vision_config.projection_dim,
                context_length: config.text_config.max_position_embeddings,
                vocab_size: config.text_config.vocab_size,
            },
            tokenizer,
            eos_id,
            model_logit_scale,
            device,
            dtype,
            fast,
        })
    }

    pub fn image_size(&self) -> usize {
        self.spec.image_size
    }

    /// Dimension of the joint embedding (image and text features).
    pub fn projection_dim(&self) -> usize {
        self.spec.projection_dim
    }

    /// Config and weights file names of this checkpoint's layout, and the tensors that
    /// fingerprint its text tower (for the classifier cache).
    pub fn text_fingerprint_sources(&self) -> (&'static str, &'static str, Vec<String>) {
        match &self.model {
            ClipBackbone::Vit(_) => (
                "config.json",
                "model.safetensors",
                [
                    "text_projection.weight",
                    "text_model.final_layer_norm.weight",
                    "text_model.embeddings.token_embedding.weight",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
            ClipBackbone::OpenClip(m) => (
                "open_clip_config.json",
                "open_clip_model.safetensors",
                m.text_fingerprint_tensors(),
            ),
        }
    }

    /// Unnormalised image features `[B, D]` in f32, on the model's device. Pixels may be f32 on
    /// any device: they are moved and cast to the model's.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = pixels.to_device(&self.device)?.to_dtype(self.dtype)?;
        if let Some(f) = &self.fast {
            return Ok(f.vision.forward(&x)?);
        }
        Ok(self.model.get_image_features(&x)?.to_dtype(DType::F32)?)
    }

    /// Token ids for texts, truncated to the context length (EOS kept) and padded with EOS.
    pub fn tokenize(&self, texts: &[String]) -> Result<Tensor> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            anyhow!("this CLIP snapshot has no tokenizer.json, needed to encode class prompts")
        })?;
        let max_len = self.spec.context_length;
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

    /// Unnormalised text features `[N, D]` in f32 for token ids `[N, T]`.
    pub fn encode_token_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.to_device(&self.device)?;
        if let Some(f) = &self.fast {
            return Ok(f.text.forward(&ids)?);
        }
        Ok(self.model.get_text_features(&ids)?.to_dtype(DType::F32)?)
    }

    /// The zero-shot classifier `[C, D]`: per class, every template filled with the class name,
    /// encoded, L2-normalised, averaged, L2-normalised again. `progress` is called with the
    /// number of classes done. On the fused CPU kernels the classes run concurrently, one per
    /// thread, each single-threaded (`kernels::cpu::map_items`): the same bits as one class at
    /// a time, without a fork/join per operation of these small batches.
    pub fn zero_shot_classifier(
        &self,
        classes: &[String],
        templates: &[String],
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Tensor> {
        let done = std::sync::atomic::AtomicUsize::new(0);
        let class_row = |c: &String| -> Result<Tensor> {
            let texts: Vec<String> = templates.iter().map(|t| t.replacen("{}", c, 1)).collect();
            let mut feats = Vec::new();
            for chunk in texts.chunks(64) {
                let ids = self.tokenize(chunk)?;
                feats.push(super::l2_normalize(&self.encode_token_ids(&ids)?)?);
            }
            let f = Tensor::cat(&feats, 0)?.mean(0)?;
            let row = super::l2_normalize(&f.unsqueeze(0)?)?;
            progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            Ok(row)
        };
        let rows: Vec<Tensor> = if self.fast.is_some() {
            crate::kernels::cpu::map_items(classes, class_row)
                .into_iter()
                .collect::<Result<_>>()?
        } else {
            classes.iter().map(class_row).collect::<Result<_>>()?
        };
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

/// An in-memory tiny ModifiedResNet CLIP (open_clip layout) with seeded random weights (no
/// tokenizer): the ResNet counterpart of [`tiny_clip`].
pub fn tiny_resnet_clip(seed: u64, device: &Device) -> Result<Clip> {
    let config =
        open_clip::parse_open_clip_config(&open_clip::tiny_resnet_config_json().to_string())?;
    let varmap = open_clip::random_open_clip_varmap(&config, seed, device)?;
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let mut clip = Clip::from_open_clip(vb, &config, None, DType::F32)?;
    clip.eos_id = 99;
    Ok(clip)
}

pub use self::tiny_tokenizer::tiny_tokenizer_json;

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
