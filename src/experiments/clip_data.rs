//! What `equirun clip` and `equirun clip finetune` share: preprocessed, corrupted image batches
//! and CLIP's zero-shot text classifier, cached on disk.

use crate::data::images::ImageDataset;
use crate::data::preprocess::clip_preprocess;
use crate::groups::image::D4;
use crate::groups::FiniteGroup;
use crate::hub::ResolvedModel;
use crate::models::clip::Clip;
use crate::output::{self, progress_bar};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::path::PathBuf;

/// Root of equirun's own cache: `$EQUIRUN_CACHE`, else `$XDG_CACHE_HOME/equirun`, else `~/.cache/equirun`.
pub fn cache_root() -> PathBuf {
    crate::hub::env_cache_dir("EQUIRUN_CACHE", "XDG_CACHE_HOME", "equirun", "equirun")
}

/// Content fingerprint of the text tower: the config + the text projection weights.
fn text_fingerprint(clip: &Clip, files: &ResolvedModel) -> Result<String> {
    use sha2::{Digest, Sha256};
    let (config_file, weights_file, tensors) = clip.text_fingerprint_sources();
    let mut h = Sha256::new();
    h.update(std::fs::read(files.file(config_file)?)?);
    h.update(std::fs::read(files.file("tokenizer.json")?)?);
    let st =
        unsafe { candle_core::safetensors::MmapedSafetensors::new(files.file(weights_file)?)? };
    for name in &tensors {
        let t = st
            .load(name, &Device::Cpu)
            .with_context(|| format!("reading {name}"))?;
        let v: Vec<f32> = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    Ok(h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The zero-shot classifier, from the on-disk cache when possible. Returns (matrix, texts encoded).
pub fn classifier(
    clip: &Clip,
    files: &ResolvedModel,
    classes: &[String],
    templates: &[String],
) -> Result<(Tensor, usize)> {
    let key = json!({
        "model": files.origin.id, "revision": files.origin.revision, "commit": files.origin.commit,
        "fingerprint": text_fingerprint(clip, files)?, "classes": classes, "templates": templates,
        "dtype": crate::device::dtype_name(clip.dtype),
    });
    let path = cache_root()
        .join("text-classifiers")
        .join(format!("{}.safetensors", output::short_hash(&key)));
    if path.is_file() {
        if let Ok(map) = candle_core::safetensors::load(&path, &Device::Cpu) {
            if let Some(t) = map.get("classifier") {
                if t.dims() == [classes.len(), clip.projection_dim()] {
                    return Ok((t.to_device(&clip.device)?, 0));
                }
            }
        }
    }
    let pb = progress_bar(classes.len() as u64, "text classifier");
    let w = clip.zero_shot_classifier(classes, templates, &|i| pb.set_position(i as u64))?;
    pb.finish_and_clear();
    // atomic with a unique temp name: parallel runs (sweep --jobs) may build the same classifier
    // a cache that cannot be written only costs the recomputation next time
    if let Err(e) = output::save_safetensors_atomic(
        &std::collections::HashMap::from([("classifier".to_string(), w.clone())]),
        &path,
    ) {
        eprintln!("warning: the text classifier is not cached ({e:#}); set EQUIRUN_CACHE to a writable folder to keep it");
    }
    Ok((w, classes.len() * templates.len()))
}

/// Loads a batch of images as a preprocessed `[B, 3, S, S]` tensor and their labels.
pub fn load_batch(
    ds: &ImageDataset,
    range: std::ops::Range<usize>,
    size: usize,
    dev: &Device,
) -> Result<(Tensor, Vec<u32>)> {
    let mut data = Vec::with_capacity(range.len() * 3 * size * size);
    let mut labels = Vec::with_capacity(range.len());
    for i in range.clone() {
        let img = ds.image(i)?;
        data.extend(clip_preprocess(&img.data, img.width, img.height, size));
        labels.push(ds.label(i));
    }
    Ok((
        Tensor::from_vec(data, (range.len(), 3, size, size), dev)?,
        labels,
    ))
}

/// Applies one transform element per image.
pub fn corrupt(x: &Tensor, tg: &FiniteGroup<D4>, elems: &[usize]) -> Result<Tensor> {
    if elems.iter().all(|&e| e == 0) {
        return Ok(x.clone());
    }
    let rows = elems
        .iter()
        .enumerate()
        .map(|(j, &e)| tg.element(e).apply(&x.narrow(0, j, 1)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}
