//! `equirun clip finetune`: finetuning CLIP through the wrappers on corrupted CIFAR
//! (methods.md §3.2, NeurIPS figure §4.3).
//!
//! The image tower (f32 master weights) is trained through the wrapped prediction; the
//! zero-shot text classifier is computed once from the pretrained text tower and kept fixed.
//! Per copy, `p_g = softmax(s · cos(f(g·x), W))` (canonical choice 3); the loss is the
//! cross-entropy of the wrapped prediction, `−log p̄_y` (no second softmax). Equizero trains with
//! the straight-through estimator; λ-equitune in two phases: the λ-net on the frozen model's
//! unit-normalised image features (phase 1), then the image tower with the λ-net frozen and in
//! eval mode (phase 2), the features always from the frozen pretrained copy.
//!
//! Defaults follow the official code (§1.3, §3.2): batch 32, SGD momentum 0.9, backbone lr 5e-6
//! for 8 rounds × 500 iterations, λ-net lr 0.33 for 20 rounds × 100 iterations. Model
//! selection and the per-round curves use a validation split held out from the training set
//! (the official code selects on training batches); the test set is evaluated before
//! finetuning and once at the end. On a CPU use the `--limit-*`, `--rounds`, `--iters` flags to
//! size a run: ViT-B/32's image encoder alone runs at about 10 images/s on 2 cores
//! (rust-notes.md), a training step costs a few times a forward pass, and equitune over rot90
//! runs 4 copies per image.

use super::clip::{classifier, corrupt};
use super::RunOpts;
use crate::data::images::{self, DatasetKind, ImageDataset, Split};
use crate::data::preprocess::clip_preprocess;
use crate::equi::finetune::{
    classification_loss, run_phase, train_output, OptimKind, PhaseOutcome, Schedule, Select, Wrap,
};
use crate::equi::lambda::{orbit, Head, LambdaEquitune, LambdaForm, LambdaNet};
use crate::equi::{ImageOutput, ImageSymmetry, Method, Symmetry};
use crate::groups::image::{image_group, D4};
use crate::groups::FiniteGroup;
use crate::hub::ModelSource;
use crate::models::clip::{parse_config, Clip, REQUIRED_FILES};
use crate::models::l2_normalize;
use crate::output::{self, RunRecord};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::{ClipConfig, ClipModel};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const EXPERIMENT: &str = "clip-finetune";

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct ClipFinetuneArgs {
    #[command(flatten)]
    pub model: ModelSource,
    /// Dataset with a train split: cifar100 (the paper) or cifar10.
    #[arg(long, value_enum, default_value = "cifar100")]
    pub dataset: DatasetKind,
    /// Dataset folder (or the EQUIRUN_DATA environment variable).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Wrapper group (rot90, flip, rot90xflip, ...).
    #[arg(long, default_value = "rot90")]
    pub group: String,
    /// Corruption of train and test images, one random element per image (seeded); default =
    /// --group; `none` for clean images.
    #[arg(long)]
    pub transform: Option<String>,
    /// Methods, comma-separated: vanilla, equitune, equizero, lambda-equitune, multi-equitune,
    /// multi-equizero.
    #[arg(long, default_value = "equitune,equizero,lambda-equitune")]
    pub method: String,
    /// λ-equitune form: paper (softplus weights normalised over the orbit) or official (λ as a
    /// per-copy inverse temperature).
    #[arg(long, value_enum, default_value = "paper")]
    pub lambda_form: LambdaForm,
    /// Softmax scale on cosine similarities: a number (papers: 1.0) or `model`.
    #[arg(long, default_value = "1.0")]
    pub logit_scale: String,
    /// Training images held out for validation (selection and per-round curves).
    #[arg(long, default_value_t = 1000)]
    pub val_size: usize,
    /// Use only the first N training images (before the validation split).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub limit_test: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 32)]
    pub eval_batch_size: usize,
    /// Backbone finetuning rounds (validation after each).
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// Backbone iterations per round.
    #[arg(long, default_value_t = 500)]
    pub iters: usize,
    #[arg(long, value_enum, default_value = "sgd")]
    pub optim: OptimKind,
    #[arg(long, default_value_t = 5e-6)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// λ-equitune phase 1 (λ-net only): rounds.
    #[arg(long, default_value_t = 20)]
    pub lambda_rounds: usize,
    /// λ-equitune phase 1: iterations per round.
    #[arg(long, default_value_t = 100)]
    pub lambda_iters: usize,
    #[arg(long, value_enum, default_value = "sgd")]
    pub lambda_optim: OptimKind,
    #[arg(long, default_value_t = 0.33)]
    pub lambda_lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub lambda_momentum: f64,
    /// Which round each phase keeps.
    #[arg(long, value_enum, default_value = "best-val")]
    pub select: Select,
    /// Do not write the finetuned weights (ViT-B/32's image tower is ~350 MB per method).
    #[arg(long)]
    pub no_checkpoints: bool,
    /// Prompt templates file (one per line, each with one `{}`); default: the dataset's.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunOpts,
}

/// Loads the checkpoint into a trainable CLIP (a VarMap of f32 variables, HF names).
pub fn trainable_clip(
    weights: &Path,
    config: &ClipConfig,
    dev: &Device,
) -> Result<(VarMap, ClipModel)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    vb.get_with_hints(
        config.vision_config.embed_dim,
        "vision_model.embeddings.class_embedding",
        candle_nn::Init::Const(0.),
    )?;
    vb.get_with_hints((), "logit_scale", candle_nn::Init::Const(0.))?;
    let model = ClipModel::new(vb, config)?;
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(weights)? };
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let t = st
            .load(name, dev)
            .map_err(|e| anyhow!("{}: tensor {name}: {e}", weights.display()))?;
        if t.dims() != var.dims() {
            bail!(
                "{}: tensor {name} has shape {:?}, the config expects {:?}",
                weights.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    drop(data);
    Ok((varmap, model))
}

/// The image-tower variables (the only ones the loss reaches), sorted by name.
fn image_vars(varmap: &VarMap) -> Vec<Var> {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data
        .keys()
        .filter(|n| n.starts_with("vision_model.") || n.starts_with("visual_projection"))
        .collect();
    names.sort();
    names.into_iter().map(|n| data[n].clone()).collect()
}

fn save_image_tower(varmap: &VarMap, path: &Path) -> Result<()> {
    let data = varmap.data().lock().unwrap();
    let map: std::collections::HashMap<String, Tensor> = data
        .iter()
        .filter(|(n, _)| n.starts_with("vision_model.") || n.starts_with("visual_projection"))
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    drop(data);
    let dir = path.parent().context("checkpoint path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".safetensors")
        .tempfile_in(dir)?;
    candle_core::safetensors::save(&map, tmp.path())?;
    tmp.persist(path)
        .map_err(|e| anyhow!("saving {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Images of a dataset, with a fixed corruption element per image.
struct Set<'a> {
    ds: &'a ImageDataset,
    idx: Vec<usize>,
    elems: Vec<usize>,
}

struct Ctx<'a> {
    a: &'a ClipFinetuneArgs,
    sym: &'a ImageSymmetry,
    transform: Option<&'a FiniteGroup<D4>>,
    frozen: &'a Clip,
    classifier: &'a Tensor,
    scale: f32,
    size: usize,
    train: &'a ImageDataset,
    tr_idx: &'a [usize],
    seed: u64,
    dev: Device,
}

impl Ctx<'_> {
    /// Preprocessed, corrupted batch `[B, 3, S, S]` and labels.
    fn batch(&self, ds: &ImageDataset, idx: &[usize], elems: &[usize]) -> Result<(Tensor, Tensor)> {
        let s = self.size;
        let mut data = Vec::with_capacity(idx.len() * 3 * s * s);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            let img = ds.image(i)?;
            data.extend(clip_preprocess(&img.data, img.width, img.height, s));
            labels.push(ds.label(i));
        }
        let x = Tensor::from_vec(data, (idx.len(), 3, s, s), &self.dev)?;
        let x = match self.transform {
            Some(tg) => corrupt(&x, tg, elems)?,
            None => x,
        };
        Ok((x, Tensor::from_vec(labels, idx.len(), &self.dev)?))
    }

    fn draw(&self, rng: &mut impl Rng, n: usize) -> Vec<usize> {
        match self.transform {
            Some(tg) => (0..n).map(|_| rng.random_range(0..tg.order())).collect(),
            None => vec![0; n],
        }
    }

    /// Per-copy logits `s · cos(f(x), W)` from image features.
    fn logits_from(&self, feats: &Tensor) -> Result<Tensor> {
        let f = l2_normalize(&feats.to_dtype(DType::F32)?)?;
        Ok((f.matmul(&self.classifier.t()?)? * self.scale as f64)?)
    }

    fn sampler(&self, purpose: &str) -> impl FnMut() -> Result<(Tensor, Tensor)> + '_ {
        let mut rng = output::rng_for(self.seed, purpose);
        move || {
            let idx: Vec<usize> = (0..self.a.batch_size)
                .map(|_| self.tr_idx[rng.random_range(0..self.tr_idx.len())])
                .collect();
            let elems = self.draw(&mut rng, idx.len());
            self.batch(self.train, &idx, &elems)
        }
    }

    /// Top-1 accuracy (%) of `predict` over a set.
    fn accuracy(
        &self,
        set: &Set,
        label: &str,
        predict: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<f64> {
        let eb = self.a.eval_batch_size.max(1);
        let pb = super::progress_bar(set.idx.len() as u64, label);
        let mut correct = 0usize;
        for (k, chunk) in set.idx.chunks(eb).enumerate() {
            let (x, y) = self.batch(set.ds, chunk, &set.elems[k * eb..k * eb + chunk.len()])?;
            let p = predict(&x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            correct += p
                .iter()
                .zip(y.to_vec1::<u32>()?)
                .filter(|(a, b)| **a == *b)
                .count();
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        Ok(100.0 * correct as f64 / set.idx.len().max(1) as f64)
    }

    fn plain_predict<'b>(
        &'b self,
        m: Method,
        model: &'b ClipModel,
    ) -> impl FnMut(&Tensor) -> Result<Tensor> + 'b {
        move |x: &Tensor| {
            let f = |z: &Tensor| -> Result<Tensor> {
                Head::Softmax.apply(&self.logits_from(&model.get_image_features(z)?)?)
            };
            let proxy = crate::equi::neg_max_confidence;
            let ev = crate::equi::Evaluator {
                sym: self.sym,
                proxy: &proxy,
                select: crate::equi::ZeroSelect::WholeCopy,
            };
            Ok(ev.run(&[m], &f, x)?.0.remove(0).detach())
        }
    }

    fn lambda_predict<'b>(
        &'b self,
        le: &'b LambdaEquitune<'b>,
        model: Option<&'b ClipModel>,
    ) -> impl FnMut(&Tensor) -> Result<Tensor> + 'b {
        move |x: &Tensor| {
            let xs = orbit(self.sym, x)?;
            let f0 = self.frozen.encode_images(&xs)?;
            let z = match model {
                Some(m) => self.logits_from(&m.get_image_features(&xs)?)?,
                None => self.logits_from(&f0)?,
            };
            Ok(le.combine(&z, &l2_normalize(&f0)?, None)?.detach())
        }
    }
}

fn record(o: &PhaseOutcome, test: f64, batch: usize) -> Value {
    let images = o.iterations * batch;
    json!({
        "test_top1": test, "curve": o.curve, "best_round": o.best_round,
        "best_val_accuracy": o.best_val, "selected_round": o.selected_round,
        "iterations": o.iterations, "train_images": images, "train_seconds": o.train_seconds,
        "images_per_second": if o.train_seconds > 0.0 { json!(images as f64 / o.train_seconds) } else { Value::Null },
    })
}

pub fn run(a: &ClipFinetuneArgs) -> Result<Vec<PathBuf>> {
    if !matches!(a.dataset, DatasetKind::Cifar10 | DatasetKind::Cifar100) {
        bail!(
            "clip finetune needs a dataset with a train split: cifar100 or cifar10, not {}",
            a.dataset.name()
        );
    }
    let group = image_group(&a.group).context("--group")?;
    let transform = match a.transform.as_deref().map(str::trim) {
        None => Some(group.clone()),
        Some("none") | Some("") => None,
        Some(t) => Some(image_group(t).context("--transform")?),
    };
    let wraps = Wrap::parse_list(&a.method).context("--method")?;
    let seeds = output::parse_seeds(&a.run.seeds).context("--seeds")?;
    if a.batch_size == 0 || a.eval_batch_size == 0 || a.val_size == 0 {
        bail!("--batch-size, --eval-batch-size and --val-size must be at least 1");
    }
    let schedule = Schedule::from_flags(
        a.rounds,
        a.iters,
        a.optim,
        a.lr,
        a.momentum,
        a.weight_decay,
        "finetuning (--lr, --momentum, --weight-decay)",
    )?;
    let lambda_schedule = Schedule::from_flags(
        a.lambda_rounds,
        a.lambda_iters,
        a.lambda_optim,
        a.lambda_lr,
        a.lambda_momentum,
        0.0,
        "λ-net training (--lambda-lr, --lambda-momentum)",
    )?;
    let scale_fixed = match a.logit_scale.trim() {
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
    let dev = Device::Cpu;
    let files = a.model.resolve(REQUIRED_FILES, &[])?;
    let frozen = Clip::load(&files, &dev)?;
    let data_dir = crate::data::data_dir(a.data_dir.as_ref());
    let mut train = images::open_split(a.dataset, data_dir.as_deref(), Split::Train)?;
    let mut test = images::open_split(a.dataset, data_dir.as_deref(), Split::Test)?;
    if let Some(t) = &a.templates {
        test.templates = crate::data::prompts::read_templates(t)?;
    }
    if let Some(n) = a.limit_train {
        train.truncate(n);
    }
    if let Some(n) = a.limit_test {
        test.truncate(n);
    }
    if a.val_size >= train.len() {
        bail!(
            "--val-size {} leaves no training images out of {}; lower it",
            a.val_size,
            train.len()
        );
    }
    if test.is_empty() {
        bail!("the test split at {} has no images", test.source.display());
    }
    let scale = scale_fixed.unwrap_or(frozen.model_logit_scale);
    let size = frozen.image_size();
    let config_text = std::fs::read_to_string(files.file("config.json")?)?;
    let (clip_config, _) = parse_config(&config_text)?;

    let base_config = json!({
        "model": files.origin, "image_size": size,
        "group": group.info(), "transform": transform.as_ref().map(|t| t.info()),
        "transform_draw": "one random element per image, seeded (train and test)",
        "methods": wraps.iter().map(|w| w.name()).collect::<Vec<_>>(),
        "dataset": {"name": a.dataset.name(), "train_source": train.source.display().to_string(),
                    "test_source": test.source.display().to_string(), "n_train": train.len(),
                    "n_test": test.len(), "val_size": a.val_size,
                    "limit_train": a.limit_train, "limit_test": a.limit_test,
                    "n_templates": test.templates.len()},
        "logit_scale": {"mode": if scale_fixed.is_some() { "fixed" } else { "model" }, "value": scale},
        "batch_size": a.batch_size, "eval_batch_size": a.eval_batch_size,
        "finetune": schedule, "select": a.select,
        "lambda": {"form": a.lambda_form, "phase1": lambda_schedule,
                   "net": "Linear(d,100)-ReLU-Dropout(0.5)-Linear(100,100)-Dropout(0.5)-Linear(100,1)",
                   "features": "unit-normalised image features of g·x from a frozen pretrained CLIP",
                   "eval_mode_at_evaluation": true, "frozen_in_phase2": true},
        "trained": "image tower (f32); text classifier fixed from the pretrained text tower",
        "loss": "cross-entropy of the wrapped prediction: -log p̄_y (probabilities averaged, no second softmax)",
        "equizero_finetuning": "straight-through: equitune gradient, equizero forward value",
        "scoring": "softmax(scale*cos) per copy, f32",
    });
    let run_name = a.run.run_name.clone().unwrap_or_else(|| {
        let slug = files
            .origin
            .id
            .rsplit('/')
            .next()
            .unwrap_or("model")
            .to_string();
        format!(
            "{}-{}-{}-{}",
            a.dataset.name(),
            slug,
            group.name(),
            output::short_hash(&base_config)
        )
    });
    let mut written = Vec::new();
    let mut clf: Option<Tensor> = None;
    for &seed in &seeds {
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
            clf = Some(classifier(&frozen, &files, &test.classes, &test.templates)?.0);
        }
        let w = clf.as_ref().unwrap();
        let started_at = output::now_rfc3339();
        let t0 = Instant::now();
        let sym = ImageSymmetry::new(
            group.clone(),
            ImageOutput::Invariant,
            output::derive_seed(seed, "canon"),
        );
        let mut perm: Vec<usize> = (0..train.len()).collect();
        perm.shuffle(&mut output::rng_for(seed, "clip-ft-val-split"));
        let (val_idx, tr_idx) = perm.split_at(a.val_size);
        let ctx = Ctx {
            a,
            sym: &sym,
            transform: transform.as_ref(),
            frozen: &frozen,
            classifier: w,
            scale,
            size,
            train: &train,
            tr_idx,
            seed,
            dev: dev.clone(),
        };
        let val = Set {
            ds: &train,
            idx: val_idx.to_vec(),
            elems: ctx.draw(
                &mut output::rng_for(seed, "clip-ft-val-transform"),
                val_idx.len(),
            ),
        };
        let test_set = Set {
            ds: &test,
            idx: (0..test.len()).collect(),
            elems: ctx.draw(&mut output::rng_for(seed, "transform"), test.len()),
        };
        let ckpt_dir = path
            .parent()
            .unwrap()
            .join(format!("seed-{seed}.checkpoints"));
        let mut metrics = serde_json::Map::new();
        let mut passes = serde_json::Map::new();
        for wr in &wraps {
            let (vm, model) = trainable_clip(files.file("model.safetensors")?, &clip_config, &dev)?;
            let label = format!("seed {seed} {}", wr.name());
            let mut rec = match wr {
                Wrap::Plain(m) => {
                    let m = *m;
                    let zero =
                        ctx.accuracy(&test_set, "test", &mut ctx.plain_predict(m, &model))?;
                    let mut sample = ctx.sampler("clip-ft-data");
                    let proxy = crate::equi::neg_max_confidence;
                    let o = run_phase(
                        &label,
                        &schedule,
                        image_vars(&vm),
                        a.select,
                        |_| {
                            let (x, y) = sample()?;
                            let f = |z: &Tensor| -> Result<Tensor> {
                                Head::Softmax
                                    .apply(&ctx.logits_from(&model.get_image_features(z)?)?)
                            };
                            let out = train_output(m, &sym, &proxy, &f, &x)?;
                            classification_loss(&out, &y, Head::Softmax)
                        },
                        || ctx.accuracy(&val, "val", &mut ctx.plain_predict(m, &model)),
                    )?;
                    let t = ctx.accuracy(&test_set, "test", &mut ctx.plain_predict(m, &model))?;
                    let mut r = record(&o, t, a.batch_size);
                    r["zero_shot_test_top1"] = json!(zero);
                    r
                }
                Wrap::Lambda => {
                    let net = LambdaNet::official(
                        clip_config.text_config.projection_dim,
                        output::derive_seed(seed, "clip-lambda-init"),
                        &dev,
                    )?;
                    let le = LambdaEquitune {
                        sym: &sym,
                        net: &net,
                        form: a.lambda_form,
                        head: Head::Softmax,
                    };
                    let ldrop =
                        std::cell::RefCell::new(output::rng_for(seed, "clip-lambda-dropout"));
                    let mut s1 = ctx.sampler("clip-lambda-data");
                    let p1 = run_phase(
                        &format!("{label} λ-net"),
                        &lambda_schedule,
                        net.vars(),
                        a.select,
                        |_| {
                            let (x, y) = s1()?;
                            let xs = orbit(&sym, &x)?;
                            let f0 = frozen.encode_images(&xs)?;
                            let out = le.combine(
                                &ctx.logits_from(&f0)?,
                                &l2_normalize(&f0)?,
                                Some(&ldrop),
                            )?;
                            classification_loss(&out, &y, Head::Softmax)
                        },
                        || ctx.accuracy(&val, "val", &mut ctx.lambda_predict(&le, None)),
                    )?;
                    let zero =
                        ctx.accuracy(&test_set, "test", &mut ctx.lambda_predict(&le, None))?;
                    let mut s2 = ctx.sampler("clip-ft-data");
                    let o = run_phase(
                        &label,
                        &schedule,
                        image_vars(&vm),
                        a.select,
                        |_| {
                            let (x, y) = s2()?;
                            let xs = orbit(&sym, &x)?;
                            let z = ctx.logits_from(&model.get_image_features(&xs)?)?;
                            let f0 = l2_normalize(&frozen.encode_images(&xs)?)?;
                            let out = le.combine(&z, &f0, None)?;
                            classification_loss(&out, &y, Head::Softmax)
                        },
                        || ctx.accuracy(&val, "val", &mut ctx.lambda_predict(&le, Some(&model))),
                    )?;
                    let t = ctx.accuracy(
                        &test_set,
                        "test",
                        &mut ctx.lambda_predict(&le, Some(&model)),
                    )?;
                    let mut r = record(&o, t, a.batch_size);
                    r["zero_shot_test_top1"] = json!(zero);
                    r["zero_shot_note"] = json!("after the λ-net phase (pretrained backbone)");
                    let lp = ckpt_dir.join("lambda-equitune.lambda-net.safetensors");
                    if !a.no_checkpoints {
                        std::fs::create_dir_all(&ckpt_dir)?;
                        net.save(&lp)?;
                    }
                    r["lambda_phase"] = json!({
                        "curve": p1.curve, "best_round": p1.best_round, "best_val_accuracy": p1.best_val,
                        "selected_round": p1.selected_round, "iterations": p1.iterations,
                        "train_seconds": p1.train_seconds,
                        "lambda_net_checkpoint": if a.no_checkpoints { Value::Null } else { json!(lp.display().to_string()) },
                    });
                    r
                }
            };
            let ck = ckpt_dir.join(format!("{}.image-tower.safetensors", wr.name()));
            rec["checkpoint"] = if a.no_checkpoints {
                Value::Null
            } else {
                save_image_tower(&vm, &ck)?;
                json!(ck.display().to_string())
            };
            let p = match wr {
                Wrap::Plain(m) => m.passes(&sym as &dyn Symmetry),
                Wrap::Lambda => 2 * sym.order(),
            };
            passes.insert(wr.name().into(), json!(p));
            eprintln!(
                "seed {seed}: {}: test top-1 {:.2} -> {:.2}",
                wr.name(),
                rec["zero_shot_test_top1"].as_f64().unwrap_or(f64::NAN),
                rec["test_top1"].as_f64().unwrap_or(f64::NAN)
            );
            metrics.insert(wr.name().into(), rec);
        }
        let wall = t0.elapsed().as_secs_f64();
        let rec = RunRecord {
            schema_version: output::SCHEMA_VERSION,
            experiment: EXPERIMENT.into(),
            seed,
            config: base_config.clone(),
            metrics: Value::Object(metrics),
            cost: json!({"forward_passes_per_input": passes, "wall_seconds": wall,
                         "peak_rss_mib": output::peak_rss_mib()}),
            equirun_version: env!("CARGO_PKG_VERSION").into(),
            started_at,
            finished_at: output::now_rfc3339(),
        };
        output::write_json_atomic(&path, &rec)?;
        eprintln!("seed {seed}: done in {wall:.0}s -> {}", path.display());
        written.push(path);
    }
    Ok(written)
}
