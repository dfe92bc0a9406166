//! `equirun clip`: robust zero-shot classification with CLIP under group transformations
//! (docs/experiments.md): vanilla / equitune / equizero / multi-equitune / multi-equizero.

use super::clip_data::{classifier, corrupt, load_batch};
use super::harness::{self, RunFolder, SeedOutcome};
use super::predictions::{self as preds, PredictionOpts};
use super::registry::{self, Experiment};
use crate::cli::opts::{
    DeviceOpts, GroupOpts, LogitScaleOpts, MethodOpts, ModelOpts, RunOpts, DEFAULT_CLIP,
};
use crate::data::images::{self, DatasetKind};
use crate::equi::{proxy, Evaluator, ImageOutput, ImageSymmetry, Method, ZeroSelect};
use crate::groups::image::D4;
use crate::groups::FiniteGroup;
use crate::models::clip::{zero_shot_probs, Clip};
use crate::output::{self, progress_bar};
use crate::tools::table::{group_name, model_name, s, seed_of, Family, Obs};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

pub const EXPERIMENT: &str = "clip";

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[command(args_conflicts_with_subcommands = true)]
#[command(mut_arg("model", |a| a.help("CLIP: a paper name (RN50, RN101, ViT-B/32, ViT-B/16, …; `clip --list-models`), an open_clip name or a Hugging Face id [default: openai/clip-vit-base-patch32]")))]
pub struct ClipArgs {
    /// `equirun clip finetune`: finetune CLIP through the wrappers (without a subcommand:
    /// zero-shot evaluation).
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<ClipCommand>,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    #[serde(flatten)]
    pub groups: GroupOpts,
    /// All methods are evaluated in one pass over the images.
    #[command(flatten)]
    #[serde(flatten)]
    pub methods: MethodOpts,
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
    #[arg(long = "limit-test", alias = "limit", value_parser = crate::cli::opts::at_least_one)]
    pub limit: Option<usize>,
    /// Images per forward pass (each costs one pass per group element).
    #[arg(long, default_value_t = 32, value_parser = crate::cli::opts::at_least_one)]
    pub batch_size: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub scale: LogitScaleOpts,
    /// Equizero as the official element-wise max over copies (top-5 may mix copies).
    #[arg(long)]
    pub equizero_elementwise: bool,
    /// Prompt templates file (one per line, each with one `{}`); default: the dataset's.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// How multi-equitune / multi-equizero combine their copies. `branches`: equal-weight mean
    /// of the per-factor branches, each with its own canonicaliser (docs/methods.md). `flat`: the
    /// official multi-group CLIP code: canonicalise over the whole group with the raw pattern,
    /// then average all Σ|Gᵢ| copies flat (rot90xflip: 4/6 rotation, 2/6 flip).
    #[arg(long, value_enum, default_value = "branches")]
    #[serde(default)]
    pub multi_mean: MultiMean,
    /// The canonicaliser pattern W₀ instead of the seeded random one: a safetensors file with
    /// one f32 tensor, `[3, S, S]` (S = the model's image size) or `[N, 3, S, S]`, one per batch
    /// in order (N ≥ the number of batches; the official code draws a fresh one per batch).
    #[arg(long, value_name = "FILE")]
    pub canonicaliser_pattern: Option<PathBuf>,
    #[command(flatten)]
    #[serde(default)]
    pub predictions: PredictionOpts,
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
    /// canon: the images its scorer is trained on with the canonicalisation prior alone (upright
    /// images map to the identity; labels unused): a folder (see --canon-train-dataset).
    #[arg(long, value_name = "DIR")]
    #[serde(default)]
    pub canon_train_dir: Option<PathBuf>,
    /// canon: the layout of --canon-train-dir (its train split where there is one).
    #[arg(long, value_enum, default_value = "folder")]
    #[serde(default = "default_canon_train_dataset")]
    pub canon_train_dataset: DatasetKind,
    #[command(flatten)]
    #[serde(default)]
    pub canon: crate::equi::canon::CanonOpts,
}

fn default_canon_train_dataset() -> DatasetKind {
    DatasetKind::Folder
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum ClipCommand {
    /// Finetune CLIP's image tower through vanilla / equitune / equizero (straight-through) /
    /// λ-equitune on corrupted CIFAR train images (docs/experiments.md).
    Finetune(super::clip_finetune::ClipFinetuneArgs),
}

/// How the multi-* methods combine their copies (`--multi-mean`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MultiMean {
    /// Equal-weight mean of the branches, each with its own canonicaliser (the default).
    #[default]
    Branches,
    /// The official code: whole-group canonicaliser, flat mean of all copies.
    Flat,
}

/// A `--canonicaliser-pattern` file: one pattern `[C, H, W]` or one per batch `[N, C, H, W]`.
pub struct CanonPattern {
    pub tensor: Tensor,
    pub sha256: String,
}

impl CanonPattern {
    /// Reads and checks the file (one f32 tensor of rank 3 or 4, finite values).
    pub fn read(path: &std::path::Path) -> Result<CanonPattern> {
        use sha2::{Digest, Sha256};
        let flag = "--canonicaliser-pattern";
        let bytes =
            std::fs::read(path).with_context(|| format!("{flag}: reading {}", path.display()))?;
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
            .map_err(|e| anyhow::anyhow!("{flag}: {} is not a safetensors file ({e}); write one with safetensors.numpy.save_file({{\"pattern\": w}}, path)", path.display()))?;
        if tensors.len() != 1 {
            bail!(
                "{flag}: {} holds {} tensors; it must hold exactly one pattern",
                path.display(),
                tensors.len()
            );
        }
        let t = tensors.into_values().next().unwrap();
        if t.dtype() != candle_core::DType::F32 || !(3..=4).contains(&t.rank()) {
            bail!(
                "{flag}: {} holds a {:?} tensor of shape {:?}; expected f32 [C, H, W] or [N, C, H, W]",
                path.display(),
                t.dtype(),
                t.dims()
            );
        }
        let flat = t.flatten_all()?.to_vec1::<f32>()?;
        if flat.iter().any(|v| !v.is_finite()) {
            bail!("{flag}: {} has non-finite values", path.display());
        }
        Ok(CanonPattern { tensor: t, sha256 })
    }
    /// Checks the shape against the images (`[3, size, size]`) and the number of batches.
    pub fn check(&self, size: usize, batches: usize) -> Result<()> {
        let d = self.tensor.dims();
        let chw = &d[d.len() - 3..];
        if chw != [3, size, size] {
            bail!(
                "--canonicaliser-pattern: pattern shape {:?} does not match the images [3, {size}, {size}] of this model",
                chw
            );
        }
        if d.len() == 4 && d[0] < batches {
            bail!(
                "--canonicaliser-pattern: {} patterns for {batches} batches; give one per batch or a single [3, {size}, {size}] pattern",
                d[0]
            );
        }
        Ok(())
    }
    /// The pattern of batch `b`.
    pub fn for_batch(&self, b: usize) -> Result<Tensor> {
        Ok(if self.tensor.rank() == 4 {
            self.tensor.get(b)?
        } else {
            self.tensor.clone()
        })
    }
}

/// Evaluates `methods` on one batch, multi-* per `mean`; returns the outputs (in order), the
/// distinct copies per input and, per image, the canonical elements (flat: one, the whole-group
/// element; branches: one per factor, the element `c₋ᵢ` applies; none for one factor).
pub fn evaluate_batch(
    ev: &Evaluator,
    sym: &ImageSymmetry,
    methods: &[Method],
    mean: MultiMean,
    model: &dyn crate::equi::BatchModel,
    x: &Tensor,
) -> Result<(Vec<Tensor>, usize, Vec<Vec<usize>>)> {
    let is_multi = |m: &Method| matches!(m, Method::MultiEquitune | Method::MultiEquizero);
    let b = x.dim(0)?;
    if mean == MultiMean::Branches || !methods.iter().any(is_multi) {
        let (outs, copies) = ev.run(methods, model, x)?;
        let canon = if methods.iter().any(is_multi) && sym.group.n_factors() > 1 {
            let per_factor = (0..sym.group.n_factors())
                .map(|i| sym.canonical_choice(i, x))
                .collect::<Result<Vec<_>>>()?;
            (0..b)
                .map(|j| per_factor.iter().map(|f| f[j]).collect())
                .collect()
        } else {
            vec![Vec::new(); b]
        };
        return Ok((outs, copies, canon));
    }
    let (multi, other): (Vec<Method>, Vec<Method>) = methods.iter().partition(|m| is_multi(m));
    let (other_outs, other_copies) = if other.is_empty() {
        (Vec::new(), 0)
    } else {
        ev.run(&other, model, x)?
    };
    let choice = sym.whole_group_choice(x)?;
    let c = sym.act_per_image(&choice, x)?;
    let flat = crate::equi::symmetries::FlatMulti::new(sym);
    let fev = Evaluator {
        sym: &flat,
        proxy: ev.proxy,
        select: ev.select,
    };
    let (multi_outs, multi_copies) = fev.run(&multi, model, &c)?;
    let outs = methods
        .iter()
        .map(|m| {
            if is_multi(m) {
                multi_outs[multi.iter().position(|k| k == m).unwrap()].clone()
            } else {
                other_outs[other.iter().position(|k| k == m).unwrap()].clone()
            }
        })
        .collect();
    Ok((
        outs,
        other_copies + multi_copies,
        choice.into_iter().map(|g| vec![g]).collect(),
    ))
}

/// The methods `equirun clip` evaluates (λ-equitune needs `clip finetune`; canon trains its
/// scorer with the prior alone first).
const METHODS: &[Method] = &[
    Method::Vanilla,
    Method::Equitune,
    Method::Equizero,
    Method::MultiEquitune,
    Method::MultiEquizero,
    Method::Canon,
];

/// Parsed, validated options (cheap to build: no model or data touched).
struct Parsed {
    group: FiniteGroup<D4>,
    transform: Option<FiniteGroup<D4>>,
    methods: Vec<Method>,
    seeds: Vec<u64>,
    scale_mode: Option<f32>,
}

fn parse(a: &ClipArgs) -> Result<Parsed> {
    let group = a.groups.group()?;
    let transform = a.groups.transform()?;
    let methods =
        Method::parse_list_of(&a.methods.method, METHODS, "equirun clip").context("--method")?;
    let seeds = a.run.seed_list()?;
    let scale_mode = a.scale.fixed()?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if methods.contains(&Method::Canon) {
        if a.canon_train_dir.is_none() {
            bail!(
                "--method canon needs --canon-train-dir DIR: upright images its scorer learns to map \
                 to the identity (a folder with one sub-folder per class, or --canon-train-dataset)"
            );
        }
        a.canon.schedule()?;
    }
    Ok(Parsed {
        group,
        transform,
        methods,
        seeds,
        scale_mode,
    })
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
        print!("{}", crate::models::clip::zoo::format_list());
        return Ok(Vec::new());
    }
    let p = parse(a)?;
    let (want_dev, dtype) = a.compute.resolve()?;
    let pattern = match &a.canonicaliser_pattern {
        Some(f) => Some(CanonPattern::read(f)?),
        None => None,
    };
    let (files, alias) = crate::models::clip::resolve(&a.model.source(DEFAULT_CLIP))?;
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
    if let Some(pat) = &pattern {
        pat.check(clip.image_size(), ds.len().div_ceil(a.batch_size))?;
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
    if a.multi_mean == MultiMean::Flat {
        base_config["multi_mean"] = json!("flat");
        base_config["canonicaliser"] = json!(
            "whole-group pattern argmax (raw pattern, ties to the later candidate), flat mean of the factor copies"
        );
    }
    if let (Some(pat), Some(f)) = (&pattern, &a.canonicaliser_pattern) {
        if a.multi_mean == MultiMean::Branches {
            base_config["canonicaliser"] =
                json!("per-factor pattern argmax, pattern W0 from --canonicaliser-pattern");
        }
        base_config["canonicaliser_pattern"] = json!({
            "file": f.display().to_string(), "sha256": pat.sha256, "shape": pat.tensor.dims(),
        });
    }
    let canon_train = match (&a.canon_train_dir, p.methods.contains(&Method::Canon)) {
        (Some(dir), true) => {
            let ds = match a.canon_train_dataset {
                DatasetKind::Folder => images::open(DatasetKind::Folder, Some(dir)),
                kind => images::open_split(kind, Some(dir), images::Split::Train),
            }
            .context("--canon-train-dir")?;
            if ds.is_empty() {
                bail!("--canon-train-dir {}: no images", dir.display());
            }
            base_config["canon"] = json!({
                "train_dataset": a.canon_train_dataset.name(), "train_source": ds.source.display().to_string(),
                "train_images": ds.len(), "options": a.canon, "training": "prior only (upright images → identity), AdamW",
            });
            Some(ds)
        }
        _ => None,
    };
    let transform_spec = format!("t{}", a.groups.transform_spec());
    let name = harness::run_name(
        a.run.run_name.as_ref(),
        &[
            a.dataset.name(),
            &harness::model_slug(&files.origin.id),
            p.group.name(),
            &transform_spec,
        ],
        &base_config,
    );
    let folder = RunFolder::new(&a.run, EXPERIMENT, name, &base_config);
    preds::warn_skipped(&a.predictions, &folder, &p.seeds);
    let mut clf: Option<(Tensor, usize)> = None;
    folder.run_seeds(&p.seeds, |seed, seed_path| {
        if clf.is_none() {
            clf = Some(classifier(&clip, &files, &ds.classes, &ds.templates)?);
        }
        let (w, texts_encoded) = clf.as_mut().unwrap();
        // text encoding is a one-off cost: charged to the first seed that needed it
        let texts_encoded = std::mem::take(texts_encoded);
        let w = &*w;
        let t0 = Instant::now();
        let new_sym = |batch: usize| -> Result<ImageSymmetry> {
            let s = ImageSymmetry::new(
                p.group.clone(),
                ImageOutput::Invariant,
                output::derive_seed(seed, "canon"),
            );
            Ok(match &pattern {
                Some(pat) => s.with_pattern(pat.for_batch(batch)?),
                None => s,
            })
        };
        let per_batch_pattern = pattern.as_ref().is_some_and(|p| p.tensor.rank() == 4);
        let mut sym = new_sym(0)?;
        let proxy = proxy::neg_max_confidence;
        let mut collector = preds::Collector::new(&a.predictions);
        let method_names: Vec<&str> = p.methods.iter().map(|m| m.name()).collect();
        let model =
            |x: &Tensor| -> Result<Tensor> { zero_shot_probs(&clip.encode_images(x)?, w, scale) };
        // canon: a prior-only scorer for this seed; the other methods share one Evaluator call
        let canon_net = match &canon_train {
            Some(ds) => Some(canon_prior_only(a, &p, ds, size, seed)?),
            None => None,
        };
        let plain: Vec<Method> = p
            .methods
            .iter()
            .copied()
            .filter(|m| *m != Method::Canon)
            .collect();
        let mut canon_identity = 0usize;
        let mut trng = output::rng_for(seed, "transform");
        let n = ds.len();
        let mut top1 = vec![0usize; p.methods.len()];
        let mut top5 = vec![0usize; p.methods.len()];
        let mut shared_passes = 0;
        let pb = progress_bar(n as u64, &format!("seed {seed}"));
        for (bi, start) in (0..n).step_by(a.batch_size).enumerate() {
            let end = (start + a.batch_size).min(n);
            if per_batch_pattern && bi > 0 {
                sym = new_sym(bi)?;
            }
            let ev = Evaluator {
                sym: &sym,
                proxy: &proxy,
                select,
            };
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
            let (mut plain_outs, copies, canon) = if plain.is_empty() {
                (Vec::new(), 0, vec![Vec::new(); x.dim(0)?])
            } else {
                evaluate_batch(&ev, &sym, &plain, a.multi_mean, &model, &x)?
            };
            shared_passes = copies;
            let mut outs = Vec::with_capacity(p.methods.len());
            for m in &p.methods {
                if *m == Method::Canon {
                    let (net, _) = canon_net.as_ref().expect("scorer trained above");
                    let wrapper = crate::equi::canon::Canon {
                        sym: &sym,
                        scorer: net,
                    };
                    let (o, st) = wrapper.forward(&model, &x)?;
                    canon_identity += st.identity_picks;
                    outs.push(o);
                } else {
                    outs.push(plain_outs.remove(0));
                }
            }
            let mut all_rows = Vec::with_capacity(outs.len());
            for (mi, o) in outs.iter().enumerate() {
                let rows = o.to_vec2::<f32>()?;
                for (row, &l) in rows.iter().zip(&labels) {
                    let (h1, h5) = hits(row, l as usize);
                    top1[mi] += h1 as usize;
                    top5[mi] += h5 as usize;
                }
                all_rows.push(rows);
            }
            if collector.enabled {
                for (j, &l) in labels.iter().enumerate() {
                    let per: Vec<(&str, &[f32])> = method_names
                        .iter()
                        .zip(&all_rows)
                        .map(|(m, rows)| (*m, rows[j].as_slice()))
                        .collect();
                    let mut row = preds::class_row(start + j, l as usize, &per);
                    if !canon[j].is_empty() {
                        row["canonical"] = json!(canon[j]
                            .iter()
                            .map(|&g| p.group.element_name(g))
                            .collect::<Vec<_>>());
                    }
                    collector.rows.push(row);
                }
            }
            pb.set_position(end as u64);
        }
        pb.finish_and_clear();
        let wall = t0.elapsed().as_secs_f64();
        let canonical = match (a.multi_mean, p.group.n_factors()) {
            (MultiMean::Flat, _) => json!("one element per image: the whole-group canonicaliser's g (c(x) = g·x)"),
            (MultiMean::Branches, 1) => Value::Null,
            _ => json!("one element per factor i: the element h of the other factors that c_-i applies (c_-i(x) = h·x)"),
        };
        collector.write(
            seed_path,
            &preds::class_header(
                EXPERIMENT,
                seed,
                &method_names,
                &ds.classes,
                "softmax(scale*cos), f32",
                json!({"multi_mean": a.multi_mean, "canonical": canonical, "n": n}),
            ),
        )?;
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
        if let Some((net, phase)) = &canon_net {
            let c = metrics.get_mut("canon").expect("canon evaluated");
            c["identity_rate"] = json!(canon_identity as f64 / n as f64);
            c["scorer_passes_per_input"] = json!(p.group.order());
            c["scorer"] = json!({"config": net.config, "n_params": net.config.n_params(),
                                 "macs_per_pass": net.config.macs()});
            c["prior_phase"] = phase.clone();
        }
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
        Ok(SeedOutcome {
            metrics: Value::Object(metrics),
            cost: json!({
                "forward_passes_per_input": passes,
                "forward_passes_per_input_shared": shared_passes,
                "wall_seconds": wall,
                "images_per_second": n as f64 / wall,
                "texts_encoded": texts_encoded,
                "peak_rss_mib": output::peak_rss_mib(),
            }),
            summary: format!(
                "seed {seed}: top1/top5 {} ({n} images, {wall:.1}s)",
                summary.join(", ")
            ),
        })
    })
}

/// `equirun bench-clip`: image-encoder throughput on seeded random inputs (no data), or the
/// text tower's throughput building the CIFAR-100 zero-shot classifier.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[command(mut_arg("model", |a| a.help("CLIP: a paper name (RN50, RN101, ViT-B/32, ViT-B/16, …; `clip --list-models`), an open_clip name or a Hugging Face id [default: openai/clip-vit-base-patch32]")))]
pub struct BenchClipArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelOpts,
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
    /// Images per timed batch.
    #[arg(long, default_value_t = 32, value_parser = crate::cli::opts::at_least_one)]
    pub batch_size: usize,
    /// Timed batches.
    #[arg(long, default_value_t = 2, value_parser = crate::cli::opts::at_least_one)]
    pub batches: usize,
    /// Untimed warm-up batches.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0, alias = "seeds")]
    pub seed: u64,
    /// Time these wrappers instead of the bare encoder (comma-separated: vanilla, equitune,
    /// equizero, multi-equitune, multi-equizero, canon): each is a full wrapped forward (image
    /// encoder + softmax over 10 random classes) over --group; the timed batches alternate
    /// between the methods, so they share the machine's state. canon uses a randomly
    /// initialised scorer (its cost does not depend on training).
    #[arg(long)]
    #[serde(default)]
    pub method: Option<String>,
    /// The wrappers' group (with --method).
    #[arg(long, default_value = "rot90xflip")]
    #[serde(default = "default_bench_group")]
    pub group: String,
    #[command(flatten)]
    #[serde(default)]
    pub canon: crate::equi::canon::CanonOpts,
    /// Time the text tower instead: building the CIFAR-100 zero-shot classifier (100 classes ×
    /// the 18 CIFAR templates, one batch of 18 prompts per class, tokenisation included),
    /// --batches times after one untimed pass over the first 5 classes; reports prompts/s.
    #[arg(long, conflicts_with = "method")]
    #[serde(default)]
    pub text_classifier: bool,
}

fn default_bench_group() -> String {
    "rot90xflip".into()
}

/// Times `encode_images` on `[batch, 3, S, S]` N(0,1) inputs; returns a JSON summary.
pub fn bench_encoder(a: &BenchClipArgs) -> Result<Value> {
    use rand_distr::{Distribution, Normal};
    if a.batch_size == 0 || a.batches == 0 {
        bail!("--batch-size and --batches must be at least 1");
    }
    let wrappers = match &a.method {
        Some(m) => Some((
            Method::parse_list_of(m, METHODS, "equirun bench-clip").context("--method")?,
            crate::groups::image::image_group(&a.group).context("--group")?,
        )),
        None => None,
    };
    let (dev, dtype) = a.compute.resolve()?;
    let (files, alias) = crate::models::clip::resolve(&a.model.source(DEFAULT_CLIP))?;
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
    // the fields both kinds of run report, in this order
    let mut v = json!({
        "framework": "equirun",
        "model": files.origin.id,
        "model_alias": alias.map(|e| e.name),
        "backbone": clip.spec,
        "device": crate::device::device_name(&dev),
        "dtype": crate::device::dtype_name(dtype),
        "threads": candle_core::utils::get_num_threads(),
        "batch_size": a.batch_size,
        "batches": a.batches,
    });
    let fields = v.as_object_mut().expect("a JSON object");
    if a.text_classifier {
        let classes = crate::data::prompts::cifar100_classes();
        let templates = crate::data::prompts::cifar_templates();
        sync(&clip.zero_shot_classifier(&classes[..5], &templates, &|_| {})?)?;
        let pb = progress_bar((a.batches * classes.len()) as u64, "bench-clip text");
        let mut per_pass = Vec::new();
        let t0 = Instant::now();
        for i in 0..a.batches {
            let t = Instant::now();
            let done = i * classes.len();
            sync(&clip.zero_shot_classifier(&classes, &templates, &|c| {
                pb.set_position((done + c) as u64)
            })?)?;
            per_pass.push(t.elapsed().as_secs_f64());
        }
        pb.finish_and_clear();
        let prompts = a.batches * classes.len() * templates.len();
        fields.remove("batch_size");
        fields.insert("task".into(), json!("cifar100-zero-shot-classifier"));
        fields.insert("templates".into(), json!(templates.len()));
        fields.insert(
            "prompts_per_s".into(),
            json!(prompts as f64 / t0.elapsed().as_secs_f64()),
        );
        fields.insert("seconds_per_pass".into(), json!(per_pass));
        fields.insert("load_seconds".into(), json!(load_s));
        return Ok(v);
    }
    if let Some((methods, group)) = wrappers {
        let r = bench_wrappers(a, &clip, &x, &methods, group, &sync)?;
        fields.insert("load_seconds".into(), json!(load_s));
        fields.extend(r);
        return Ok(v);
    }
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
    fields.insert(
        "images_per_s".into(),
        json!((a.batch_size * a.batches) as f64 / total),
    );
    fields.insert("seconds_per_batch".into(), json!(per_batch));
    fields.insert("load_seconds".into(), json!(load_s));
    Ok(v)
}

/// `bench-clip --method`: images/s of each wrapped forward on the same inputs, batches
/// alternating between methods (warm-up batches untimed).
fn bench_wrappers(
    a: &BenchClipArgs,
    clip: &Clip,
    x: &Tensor,
    methods: &[Method],
    group: FiniteGroup<D4>,
    sync: &dyn Fn(&Tensor) -> Result<()>,
) -> Result<serde_json::Map<String, Value>> {
    use crate::equi::canon::{Canon, CanonNet};
    let dev = x.device().clone();
    let s = clip.image_size();
    let mut rng = output::rng_for(a.seed, "bench-clip-classes");
    let normal = rand_distr::Normal::new(0f32, 1.0).unwrap();
    let proj = clip.projection_dim();
    let w = crate::models::l2_normalize(&Tensor::from_vec(
        (0..10 * proj)
            .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
            .collect::<Vec<f32>>(),
        (10, proj),
        &dev,
    )?)?;
    let model =
        |x: &Tensor| -> Result<Tensor> { zero_shot_probs(&clip.encode_images(x)?, &w, 1.0) };
    let sym = ImageSymmetry::new(group.clone(), ImageOutput::Invariant, 0);
    let proxy = proxy::neg_max_confidence;
    let ev = Evaluator {
        sym: &sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    let scorer = CanonNet::new(
        a.canon.config(3, s)?,
        output::derive_seed(a.seed, "bench-canon"),
        &candle_core::Device::Cpu,
    )?;
    let canon = Canon {
        sym: &sym,
        scorer: &scorer,
    };
    let run = |m: Method| -> Result<()> {
        let o = if m == Method::Canon {
            canon.forward(&model, x)?.0
        } else {
            ev.run(&[m], &model, x)?.0.remove(0)
        };
        sync(&o)
    };
    for _ in 0..a.warmup {
        for &m in methods {
            run(m)?;
        }
    }
    let mut secs = vec![Vec::new(); methods.len()];
    let pb = progress_bar((a.batches * methods.len()) as u64, "bench-clip");
    for _ in 0..a.batches {
        for (k, &m) in methods.iter().enumerate() {
            let t = Instant::now();
            run(m)?;
            secs[k].push(t.elapsed().as_secs_f64());
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let ips = |k: usize| (a.batch_size * a.batches) as f64 / secs[k].iter().sum::<f64>();
    let vanilla = methods.iter().position(|&m| m == Method::Vanilla).map(ips);
    let mut per = serde_json::Map::new();
    for (k, &m) in methods.iter().enumerate() {
        let mut v = json!({
            "images_per_s": ips(k),
            "seconds_per_batch": secs[k],
            "model_passes_per_image": m.passes(&sym),
        });
        if m == Method::Canon {
            v["scorer_passes_per_image"] = json!(group.order());
            v["scorer"] = json!({"config": scorer.config, "n_params": scorer.config.n_params(),
                                 "macs_per_pass": scorer.config.macs()});
        }
        if let Some(v0) = vanilla {
            v["speed_vs_vanilla"] = json!(ips(k) / v0);
        }
        per.insert(m.name().into(), v);
    }
    let mut out = serde_json::Map::new();
    out.insert("group".into(), json!(group.info()));
    out.insert(
        "timing".into(),
        json!("wrapped forward (encoder + softmax over 10 random classes), batches alternating between methods"),
    );
    out.insert("methods".into(), Value::Object(per));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// what `equirun report` tabulates

pub fn extract_clip(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let dataset = s(&c["dataset"]["name"]);
    let model = model_name(&c["model"]);
    let transform = group_name(&c["transform"]);
    let group = s(&c["group"]["name"]);
    let scale = &c["logit_scale"];
    let setting = vec![
        ("dataset".to_string(), dataset.clone()),
        ("images".into(), s(&c["dataset"]["n_images"])),
        (
            "logit scale".into(),
            format!("{} {}", s(&scale["mode"]), s(&scale["value"])),
        ),
        (
            "corruption draw".into(),
            if c["transform_per_batch"].as_bool() == Some(true) {
                "per batch".into()
            } else {
                "per image".into()
            },
        ),
        ("equizero".into(), s(&c["equizero_select"])),
    ];
    let mut out = Vec::new();
    if let Some(m) = rec["metrics"].as_object() {
        for (method, v) in m {
            let Some(top1) = v["top1"].as_f64() else {
                continue;
            };
            let column = if method == "vanilla" || group == transform {
                method.clone()
            } else {
                format!("{method} ({group})")
            };
            out.push(Obs {
                family: Family::Clip,
                title: format!("CLIP zero-shot top-1 accuracy (%) — {dataset}"),
                setting: setting.clone(),
                row: vec![model.clone(), transform.clone()],
                column,
                seed: seed_of(rec),
                value: top1,
                source: source.into(),
            });
        }
    }
    out
}

pub const ENTRY: Experiment = Experiment {
    name: EXPERIMENT,
    words: &["clip"],
    command: Some(registry::Command {
        name: "clip",
        about:
            "CLIP zero-shot classification under rot90/flip corruptions with equivariant wrappers",
        args: <ClipArgs as clap::Args>::augment_args,
        run: |m| registry::run_with(m, run),
    }),
    run_folders: registry::one_folder,
    extract: Some(extract_clip),
};

/// canon in `equirun clip`: a scorer for CLIP's preprocessed inputs trained with the
/// canonicalisation prior alone on upright images of `ds` (`--canon-*` schedule, AdamW). Returns
/// the scorer and its phase record (loss curve; validation = the share of 64 held-back upright
/// images mapped to the identity).
fn canon_prior_only(
    a: &ClipArgs,
    p: &Parsed,
    ds: &images::ImageDataset,
    size: usize,
    seed: u64,
) -> Result<(crate::equi::canon::CanonNet, Value)> {
    use crate::equi::canon::{prior_loss, Canon, CanonNet};
    let cpu = candle_core::Device::Cpu;
    let net = CanonNet::new(
        a.canon.config(3, size)?,
        output::derive_seed(seed, "clip-canon-init"),
        &cpu,
    )?;
    let sym = ImageSymmetry::new(p.group.clone(), ImageOutput::Invariant, 0);
    let canon = Canon {
        sym: &sym,
        scorer: &net,
    };
    let n = ds.len();
    let n_val = 64.min(n / 2);
    let load = |idx: &[usize]| -> Result<Tensor> {
        let xs = idx
            .iter()
            .map(|&i| Ok(load_batch(ds, i..i + 1, size, &cpu)?.0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&xs, 0)?)
    };
    let val_x = load(&(0..n_val).collect::<Vec<_>>())?;
    let mut rng = output::rng_for(seed, "clip-canon-prior-data");
    let bs = a.canon.canon_batch_size;
    let schedule = a.canon.schedule()?;
    let outcome = crate::train::run_phase(
        &format!("seed {seed} canon prior"),
        &schedule,
        net.vars(),
        crate::train::Select::Last,
        |_| {
            let idx: Vec<usize> = (0..bs).map(|_| rng.random_range(n_val..n)).collect();
            let x = load(&idx)?;
            prior_loss(&canon.scores(&x)?, &vec![0; bs])
        },
        || {
            if n_val == 0 {
                return Ok(0.0);
            }
            let ties = crate::equi::canon::tie_sets(&canon.scores(&val_x)?)?;
            let id = ties
                .iter()
                .filter(|t| t.contains(&sym.group.identity()))
                .count();
            Ok(100.0 * id as f64 / n_val as f64)
        },
    )?;
    Ok((
        net,
        json!({
            "curve": outcome.curve, "iterations": outcome.iterations,
            "train_seconds": outcome.train_seconds, "held_back_images": n_val,
            "validation": "% of held-back upright images mapped to the identity",
        }),
    ))
}
