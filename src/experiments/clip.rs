//! `equirun clip`: robust zero-shot classification with CLIP under group transformations
//! (methods.md §3.1): vanilla / equitune / equizero / multi-equitune / multi-equizero.

use super::{progress_bar, RunOpts};
use crate::data::images::{self, DatasetKind, ImageDataset};
use crate::data::preprocess::clip_preprocess;
use crate::device::DeviceOpts;
use crate::equi::{Evaluator, ImageOutput, ImageSymmetry, Method, ZeroSelect};
use crate::groups::image::{image_group, D4};
use crate::groups::FiniteGroup;
use crate::hub::{ModelSource, ResolvedModel};
use crate::models::clip::{zero_shot_probs, Clip};
use crate::output::{self, RunRecord};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

pub const EXPERIMENT: &str = "clip";

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ClipArgs {
    /// `equirun clip finetune`: finetune CLIP through the wrappers (without a subcommand:
    /// zero-shot evaluation).
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<ClipCommand>,
    #[command(flatten)]
    pub model: ModelSource,
    /// Symmetry group: rot90, flip (=vflip), hflip, vflip, rot180, id, or a product with 'x'
    /// such as rot90xflip (D4) or rot90xhflip.
    #[arg(long, default_value = "rot90")]
    pub group: String,
    /// Methods, comma-separated; all are evaluated in one pass over the images:
    /// vanilla, equitune, equizero, multi-equitune, multi-equizero.
    #[arg(long, default_value = "vanilla,equitune,equizero")]
    pub method: String,
    /// Test-time corruption group, one random element per image (seeded); default = --group;
    /// `none` for clean images.
    #[arg(long)]
    pub transform: Option<String>,
    /// Draw the corruption once per batch (the official code) instead of per image.
    #[arg(long)]
    pub transform_per_batch: bool,
    /// Dataset (test split).
    #[arg(long, value_enum, default_value = "cifar100")]
    pub dataset: DatasetKind,
    /// Dataset folder (or the EQUIRUN_DATA environment variable).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Softmax scale on cosine similarities: a number (papers: 1.0) or `model` for CLIP's learned scale.
    #[arg(long, default_value = "1.0")]
    pub logit_scale: String,
    /// Equizero as the official element-wise max over copies (top-5 may mix copies).
    #[arg(long)]
    pub equizero_elementwise: bool,
    /// Prompt templates file (one per line, each with one `{}`); default: the dataset's.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunOpts,
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
    /// Print the model names (RN50, RN101, ViT-B/32, ViT-B/16, ...) with the hub repo each
    /// resolves to, and exit.
    #[arg(long)]
    #[serde(default)]
    pub list_models: bool,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum ClipCommand {
    /// Finetune CLIP's image tower through vanilla / equitune / equizero (straight-through) /
    /// λ-equitune on corrupted CIFAR train images (methods.md §3.2).
    Finetune(super::clip_finetune::ClipFinetuneArgs),
}

/// Parsed, validated options (cheap to build: no model or data touched).
struct Plan {
    group: FiniteGroup<D4>,
    transform: Option<FiniteGroup<D4>>,
    methods: Vec<Method>,
    seeds: Vec<u64>,
    scale_mode: Option<f32>,
}

fn plan(a: &ClipArgs) -> Result<Plan> {
    let group = image_group(&a.group).context("--group")?;
    let transform = match a.transform.as_deref().map(str::trim) {
        None => Some(image_group(&a.group)?),
        Some("none") | Some("") => None,
        Some(t) => Some(image_group(t).context("--transform")?),
    };
    let methods = Method::parse_list(&a.method).context("--method")?;
    let seeds = output::parse_seeds(&a.run.seeds).context("--seeds")?;
    let scale_mode = match a.logit_scale.trim() {
        "model" => None,
        s => {
            let v: f32 = s
                .parse()
                .with_context(|| format!("--logit-scale '{s}': expected a number or 'model'"))?;
            if !v.is_finite() || v <= 0.0 {
                bail!("--logit-scale must be positive, got {v}");
            }
            Some(v)
        }
    };
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    Ok(Plan {
        group,
        transform,
        methods,
        seeds,
        scale_mode,
    })
}

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
pub(crate) fn classifier(
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
    // a unique temp name: parallel runs (sweep --jobs) may build the same classifier
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".safetensors")
        .tempfile_in(dir)?;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("classifier".to_string(), w.clone())]),
        tmp.path(),
    )?;
    tmp.persist(&path)
        .map_err(|e| anyhow::anyhow!("saving {}: {}", path.display(), e.error))?;
    Ok((w, classes.len() * templates.len()))
}

/// Loads a batch of images as a preprocessed `[B, 3, S, S]` tensor and their labels.
pub(crate) fn load_batch(
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
pub(crate) fn corrupt(x: &Tensor, tg: &FiniteGroup<D4>, elems: &[usize]) -> Result<Tensor> {
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

/// Rank-based top-k hits for one probability row (ties broken towards the lower class index).
fn hits(row: &[f32], label: usize) -> (bool, bool) {
    let p = row[label];
    let rank = row
        .iter()
        .enumerate()
        .filter(|&(c, &q)| q > p || (q == p && c < label))
        .count();
    (rank < 1, rank < 5)
}

pub fn run(a: &ClipArgs) -> Result<Vec<PathBuf>> {
    if let Some(ClipCommand::Finetune(f)) = &a.command {
        return super::clip_finetune::run(f);
    }
    if a.list_models {
        print!("{}", crate::models::zoo::format_list());
        return Ok(Vec::new());
    }
    let p = plan(a)?;
    let (want_dev, dtype) = a.compute.resolve()?;
    let (files, alias) = crate::models::clip::resolve(&a.model)?;
    let clip = Clip::load_with(&files, &want_dev, dtype)?;
    let dev = clip.device.clone();
    let data_dir = crate::data::data_dir(a.data_dir.as_ref());
    let mut ds = images::open(a.dataset, data_dir.as_deref())?;
    if let Some(t) = &a.templates {
        ds.templates = crate::data::prompts::read_templates(t)?;
    }
    if let Some(n) = a.limit {
        ds.truncate(n);
    }
    if ds.is_empty() {
        bail!(
            "dataset {} at {} has no images",
            a.dataset.name(),
            ds.source.display()
        );
    }
    let scale = p.scale_mode.unwrap_or(clip.model_logit_scale);
    let select = if a.equizero_elementwise {
        ZeroSelect::Elementwise
    } else {
        ZeroSelect::WholeCopy
    };
    let size = clip.image_size();

    let mut base_config = json!({
        "model": files.origin,
        "image_size": size,
        "group": p.group.info(),
        "transform": p.transform.as_ref().map(|t| t.info()),
        "transform_per_batch": a.transform_per_batch,
        "methods": p.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "dataset": {
            "name": a.dataset.name(), "source": ds.source.display().to_string(),
            "n_images": ds.len(), "n_classes": ds.classes.len(), "n_templates": ds.templates.len(),
            "limit": a.limit,
        },
        "batch_size": a.batch_size,
        "logit_scale": {"mode": if p.scale_mode.is_some() { "fixed" } else { "model" }, "value": scale},
        "equizero_select": select,
        "canonicaliser": "per-factor pattern argmax, pattern seeded from (seed, 'canon')",
        "preprocess": "pillow-bicubic short side, center crop, CLIP mean/std; group actions after preprocessing",
        "scoring": "softmax(scale*cos) per copy, f32",
        "backbone": clip.spec,
        "inference": {"device": crate::device::device_name(&dev), "dtype": crate::device::dtype_name(dtype)},
    });
    if let Some(e) = alias {
        base_config["model_alias"] = json!(e.name);
    }
    let run_name = a.run.run_name.clone().unwrap_or_else(|| {
        let model_slug = files
            .origin
            .id
            .rsplit('/')
            .next()
            .unwrap_or("model")
            .to_string();
        format!(
            "{}-{}-{}-t{}-{}",
            a.dataset.name(),
            model_slug,
            p.group.name(),
            a.transform.clone().unwrap_or_else(|| a.group.clone()),
            output::short_hash(&base_config)
        )
    });

    let mut written = Vec::new();
    let mut clf: Option<(Tensor, usize)> = None;
    for &seed in &p.seeds {
        let path = output::result_path(&a.run.out, EXPERIMENT, &run_name, seed);
        if !output::should_run(&path, &base_config, a.run.force)? {
            eprintln!(
                "skip: {} exists with the same config (use --force to recompute)",
                path.display()
            );
            written.push(path);
            continue;
        }
        if clf.is_none() {
            clf = Some(classifier(&clip, &files, &ds.classes, &ds.templates)?);
        }
        let (w, texts_encoded) = clf.as_mut().unwrap();
        // text encoding is a one-off cost: charged to the first seed that needed it
        let texts_encoded = std::mem::take(texts_encoded);
        let w = &*w;
        let started_at = output::now_rfc3339();
        let t0 = Instant::now();
        let sym = ImageSymmetry::new(
            p.group.clone(),
            ImageOutput::Invariant,
            output::derive_seed(seed, "canon"),
        );
        let proxy = crate::equi::neg_max_confidence;
        let ev = Evaluator {
            sym: &sym,
            proxy: &proxy,
            select,
        };
        let model =
            |x: &Tensor| -> Result<Tensor> { zero_shot_probs(&clip.encode_images(x)?, w, scale) };
        let mut trng = output::rng_for(seed, "transform");
        let n = ds.len();
        let mut top1 = vec![0usize; p.methods.len()];
        let mut top5 = vec![0usize; p.methods.len()];
        let mut shared_passes = 0;
        let pb = progress_bar(n as u64, &format!("seed {seed}"));
        for start in (0..n).step_by(a.batch_size) {
            let end = (start + a.batch_size).min(n);
            let (x, labels) = load_batch(&ds, start..end, size, &dev)?;
            let x = match &p.transform {
                None => x,
                Some(tg) => {
                    let elems: Vec<usize> = if a.transform_per_batch {
                        vec![trng.random_range(0..tg.order()); end - start]
                    } else {
                        (start..end)
                            .map(|_| trng.random_range(0..tg.order()))
                            .collect()
                    };
                    corrupt(&x, tg, &elems)?
                }
            };
            let (outs, copies) = ev.run(&p.methods, &model, &x)?;
            shared_passes = copies;
            for (mi, o) in outs.iter().enumerate() {
                let rows = o.to_vec2::<f32>()?;
                for (row, &l) in rows.iter().zip(&labels) {
                    let (h1, h5) = hits(row, l as usize);
                    top1[mi] += h1 as usize;
                    top5[mi] += h5 as usize;
                }
            }
            pb.set_position(end as u64);
        }
        pb.finish_and_clear();
        let wall = t0.elapsed().as_secs_f64();
        let mut metrics = serde_json::Map::new();
        let mut passes = serde_json::Map::new();
        for (mi, m) in p.methods.iter().enumerate() {
            metrics.insert(
                m.name().into(),
                json!({"top1": 100.0 * top1[mi] as f64 / n as f64, "top5": 100.0 * top5[mi] as f64 / n as f64,
                       "correct_top1": top1[mi], "correct_top5": top5[mi], "n": n}),
            );
            passes.insert(m.name().into(), json!(m.passes(&sym)));
        }
        let record = RunRecord {
            schema_version: output::SCHEMA_VERSION,
            experiment: EXPERIMENT.into(),
            seed,
            config: base_config.clone(),
            metrics: Value::Object(metrics),
            cost: json!({
                "forward_passes_per_input": passes,
                "forward_passes_per_input_shared": shared_passes,
                "wall_seconds": wall,
                "images_per_second": n as f64 / wall,
                "texts_encoded": texts_encoded,
                "peak_rss_mib": output::peak_rss_mib(),
            }),
            equirun_version: env!("CARGO_PKG_VERSION").into(),
            started_at,
            finished_at: output::now_rfc3339(),
        };
        output::write_json_atomic(&path, &record)?;
        let summary: Vec<String> = p
            .methods
            .iter()
            .enumerate()
            .map(|(mi, m)| {
                format!(
                    "{} {:.2}/{:.2}",
                    m.name(),
                    100.0 * top1[mi] as f64 / n as f64,
                    100.0 * top5[mi] as f64 / n as f64
                )
            })
            .collect();
        eprintln!(
            "seed {seed}: top1/top5 {} ({n} images, {wall:.1}s) -> {}",
            summary.join(", "),
            path.display()
        );
        written.push(path);
    }
    Ok(written)
}

/// `equirun bench-clip`: image-encoder throughput on seeded random inputs (no data, no text).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct BenchClipArgs {
    #[command(flatten)]
    pub model: ModelSource,
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Timed batches.
    #[arg(long, default_value_t = 2)]
    pub batches: usize,
    /// Untimed warm-up batches.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Times `encode_images` on `[batch, 3, S, S]` N(0,1) inputs; returns a JSON summary.
pub fn bench_encoder(a: &BenchClipArgs) -> Result<Value> {
    use rand_distr::{Distribution, Normal};
    if a.batch_size == 0 || a.batches == 0 {
        bail!("--batch-size and --batches must be at least 1");
    }
    let (dev, dtype) = a.compute.resolve()?;
    let (files, alias) = crate::models::clip::resolve(&a.model)?;
    let t_load = Instant::now();
    let clip = Clip::load_with(&files, &dev, dtype)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let s = clip.image_size();
    let mut rng = output::rng_for(a.seed, "bench-clip");
    let normal = Normal::new(0f32, 1.0).unwrap();
    let n = a.batch_size * 3 * s * s;
    let x = Tensor::from_vec(
        (0..n)
            .map(|_| normal.sample(&mut rng))
            .collect::<Vec<f32>>(),
        (a.batch_size, 3, s, s),
        &dev,
    )?;
    let sync = |t: &Tensor| -> Result<()> {
        // a host copy of one number waits for the device
        t.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    for _ in 0..a.warmup {
        sync(&clip.encode_images(&x)?)?;
    }
    let pb = progress_bar(a.batches as u64, "bench-clip");
    let mut per_batch = Vec::new();
    let t0 = Instant::now();
    for i in 0..a.batches {
        let t = Instant::now();
        sync(&clip.encode_images(&x)?)?;
        per_batch.push(t.elapsed().as_secs_f64());
        pb.set_position(i as u64 + 1);
    }
    pb.finish_and_clear();
    let total = t0.elapsed().as_secs_f64();
    Ok(json!({
        "framework": "equirun",
        "model": files.origin.id,
        "model_alias": alias.map(|e| e.name),
        "backbone": clip.spec,
        "device": crate::device::device_name(&dev),
        "dtype": crate::device::dtype_name(dtype),
        "threads": candle_core::utils::get_num_threads(),
        "batch_size": a.batch_size,
        "batches": a.batches,
        "images_per_s": (a.batch_size * a.batches) as f64 / total,
        "seconds_per_batch": per_batch,
        "load_seconds": load_s,
    }))
}
