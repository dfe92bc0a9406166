//! `equirun clip finetune`: finetuning CLIP through the wrappers on corrupted CIFAR
//! (docs/experiments.md#clip-finetune; the NeurIPS CLIP finetuning figure).
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
//! size a run: ViT-B/32's image encoder alone runs at about 10 images/s on 2 cores, a training step costs a few times a forward pass, and equitune over rot90
//! runs 4 copies per image.

use super::clip_data::{classifier, corrupt};
use super::harness::{self, RunFolder, SeedOutcome};
use super::registry::{self, Experiment};
use crate::cli::opts::{
    DeviceOpts, FinetuneOpts, GroupOpts, LambdaOpts, LogitScaleOpts, MethodOpts, ModelOpts,
    RunOpts, DEFAULT_CLIP,
};
use crate::data::images::{self, DatasetKind, ImageDataset, Split};
use crate::data::preprocess::clip_preprocess;
use crate::equi::lambda::{orbit, Head, LambdaEquitune, LambdaNet};
use crate::equi::{proxy, ImageOutput, ImageSymmetry, Method, Symmetry};
use crate::groups::image::D4;
use crate::groups::FiniteGroup;
use crate::models::clip::{parse_config, Clip, REQUIRED_FILES};
use crate::models::l2_normalize;
use crate::output;
use crate::tools::table::{group_name, model_name, s, seed_of, Family, Obs};
use crate::train::{
    classification_loss, lambda_two_phase, run_phase, train_output, Phase, PhaseOutcome,
};
use anyhow::{anyhow, bail, Result};
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

/// The methods `clip finetune` trains.
const METHODS: &[Method] = &[
    Method::Vanilla,
    Method::Equitune,
    Method::Equizero,
    Method::LambdaEquitune,
    Method::MultiEquitune,
    Method::MultiEquizero,
];

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[command(mut_arg("model", |a| a.help("CLIP: a paper name (RN50, RN101, ViT-B/32, ViT-B/16, …; `clip --list-models`), an open_clip name or a Hugging Face id [default: openai/clip-vit-base-patch32]")))]
#[command(mut_arg("method", |a| a.default_value("equitune,equizero,lambda-equitune")))]
#[command(mut_arg("rounds", |a| a.default_value("8")))]
#[command(mut_arg("iters", |a| a.default_value("500")))]
#[command(mut_arg("optim", |a| a.default_value("sgd")))]
#[command(mut_arg("lr", |a| a.default_value("5e-6")))]
#[command(mut_arg("lambda_rounds", |a| a.default_value("20")))]
#[command(mut_arg("lambda_optim", |a| a.default_value("sgd")))]
#[command(mut_arg("lambda_lr", |a| a.default_value("0.33")))]
pub struct ClipFinetuneArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelOpts,
    /// Dataset with a train split: cifar100 (the paper) or cifar10.
    #[arg(long, value_enum, default_value = "cifar100")]
    pub dataset: DatasetKind,
    /// Dataset folder (or the EQUIRUN_DATA environment variable).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The corruption applies to train and test images.
    #[command(flatten)]
    #[serde(flatten)]
    pub groups: GroupOpts,
    #[command(flatten)]
    #[serde(flatten)]
    pub methods: MethodOpts,
    #[command(flatten)]
    #[serde(flatten)]
    pub lambda: LambdaOpts,
    #[command(flatten)]
    #[serde(flatten)]
    pub scale: LogitScaleOpts,
    /// Training images held out for validation (selection and per-round curves).
    #[arg(long, default_value_t = 1000, value_parser = crate::cli::opts::at_least_one)]
    pub val_size: usize,
    /// Use only the first N training images (before the validation split).
    #[arg(long, value_parser = crate::cli::opts::at_least_one)]
    pub limit_train: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_parser = crate::cli::opts::at_least_one)]
    pub limit_test: Option<usize>,
    /// Images per evaluation forward pass.
    #[arg(long, default_value_t = 32, value_parser = crate::cli::opts::at_least_one)]
    pub eval_batch_size: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub finetune: FinetuneOpts,
    /// Do not write the finetuned weights (ViT-B/32's image tower is ~350 MB per method).
    #[arg(long)]
    pub no_checkpoints: bool,
    /// Prompt templates file (one per line, each with one `{}`); default: the dataset's.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Per test image: the finetuned model of each method (column `<method>`) and, except for
    /// λ-equitune, the zero-shot one (`<method>/zero-shot`).
    #[command(flatten)]
    #[serde(default)]
    pub predictions: super::predictions::PredictionOpts,
    #[command(flatten)]
    pub run: RunOpts,
    /// Any device; f32 only (training).
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
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
    output::save_safetensors_atomic(&map, path)
}

/// Images of a dataset, with a fixed corruption element per image.
struct EvalImages<'a> {
    ds: &'a ImageDataset,
    idx: Vec<usize>,
    elems: Vec<usize>,
}

struct SeedRun<'a> {
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

impl SeedRun<'_> {
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
            let idx: Vec<usize> = (0..self.a.finetune.batch_size)
                .map(|_| self.tr_idx[rng.random_range(0..self.tr_idx.len())])
                .collect();
            let elems = self.draw(&mut rng, idx.len());
            self.batch(self.train, &idx, &elems)
        }
    }

    /// Top-1 accuracy (%) of `predict` over a set.
    fn accuracy(
        &self,
        set: &EvalImages,
        label: &str,
        predict: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<f64> {
        self.accuracy_rec(set, label, predict, None)
    }

    /// [`Self::accuracy`]; with `rec`, also every image's (argmax class, scores).
    fn accuracy_rec(
        &self,
        set: &EvalImages,
        label: &str,
        predict: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
        mut rec: Option<&mut Vec<(usize, Vec<f32>)>>,
    ) -> Result<f64> {
        let eb = self.a.eval_batch_size.max(1);
        let pb = output::progress_bar(set.idx.len() as u64, label);
        let mut correct = 0usize;
        for (k, chunk) in set.idx.chunks(eb).enumerate() {
            let (x, y) = self.batch(set.ds, chunk, &set.elems[k * eb..k * eb + chunk.len()])?;
            let out = predict(&x)?;
            let p = out.argmax(D::Minus1)?.to_vec1::<u32>()?;
            if let Some(r) = rec.as_deref_mut() {
                let scores = out.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                r.extend(p.iter().map(|&c| c as usize).zip(scores));
            }
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
            let proxy = proxy::neg_max_confidence;
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
    let mut m = serde_json::Map::new();
    m.insert("test_top1".into(), json!(test));
    m.extend(o.json(batch));
    Value::Object(m)
}

pub fn run(a: &ClipFinetuneArgs) -> Result<Vec<PathBuf>> {
    if !matches!(a.dataset, DatasetKind::Cifar10 | DatasetKind::Cifar100) {
        bail!(
            "clip finetune needs a dataset with a train split: cifar100 or cifar10, not {}",
            a.dataset.name()
        );
    }
    let dev = a.compute.training("clip finetune")?;
    let group = a.groups.group()?;
    let transform = a.groups.transform()?;
    let methods = Method::parse_list_of(&a.methods.method, METHODS, "equirun clip finetune")
        .map_err(|e| anyhow!("--method: {e}"))?;
    let seeds = a.run.seed_list()?;
    if a.finetune.batch_size == 0 || a.eval_batch_size == 0 || a.val_size == 0 {
        bail!("--batch-size, --eval-batch-size and --val-size must be at least 1");
    }
    let schedule = a.finetune.schedule()?;
    let lambda_schedule = a.lambda.schedule()?;
    let scale_fixed = a.scale.fixed()?;
    let files = a.model.source(DEFAULT_CLIP).resolve(REQUIRED_FILES, &[])?;
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

    let mut base_config = json!({
        "model": files.origin, "image_size": size,
        "group": group.info(), "transform": transform.as_ref().map(|t| t.info()),
        "transform_draw": "one random element per image, seeded (train and test)",
        "methods": methods.iter().map(|w| w.name()).collect::<Vec<_>>(),
        "dataset": {"name": a.dataset.name(), "train_source": train.source.display().to_string(),
                    "test_source": test.source.display().to_string(), "n_train": train.len(),
                    "n_test": test.len(), "val_size": a.val_size,
                    "limit_train": a.limit_train, "limit_test": a.limit_test,
                    "n_templates": test.templates.len()},
        "logit_scale": {"mode": if scale_fixed.is_some() { "fixed" } else { "model" }, "value": scale},
        "batch_size": a.finetune.batch_size, "eval_batch_size": a.eval_batch_size,
        "finetune": schedule, "select": a.finetune.select,
        "lambda": {"form": a.lambda.lambda_form, "phase1": lambda_schedule,
                   "net": "Linear(d,100)-ReLU-Dropout(0.5)-Linear(100,100)-Dropout(0.5)-Linear(100,1)",
                   "features": "unit-normalised image features of g·x from a frozen pretrained CLIP",
                   "eval_mode_at_evaluation": true, "frozen_in_phase2": true},
        "trained": "image tower (f32); text classifier fixed from the pretrained text tower",
        "loss": "cross-entropy of the wrapped prediction: -log p̄_y (probabilities averaged, no second softmax)",
        "equizero_finetuning": "straight-through: equitune gradient, equizero forward value",
        "scoring": "softmax(scale*cos) per copy, f32",
    });
    crate::device::record_in_config(&mut base_config, &dev, DType::F32);
    let name = harness::run_name(
        a.run.run_name.as_ref(),
        &[
            a.dataset.name(),
            &harness::model_slug(&files.origin.id),
            group.name(),
        ],
        &base_config,
    );
    let folder = RunFolder::new(&a.run, EXPERIMENT, name, &base_config);
    let batch_size = a.finetune.batch_size;
    let select = a.finetune.select;
    super::predictions::warn_skipped(&a.predictions, &folder, &seeds);
    let mut clf: Option<Tensor> = None;
    folder.run_seeds(&seeds, |seed, path| {
        if clf.is_none() {
            clf = Some(classifier(&frozen, &files, &test.classes, &test.templates)?.0);
        }
        let w = clf.as_ref().unwrap();
        let t0 = Instant::now();
        let sym = ImageSymmetry::new(
            group.clone(),
            ImageOutput::Invariant,
            output::derive_seed(seed, "canon"),
        );
        let mut perm: Vec<usize> = (0..train.len()).collect();
        perm.shuffle(&mut output::rng_for(seed, "clip-ft-val-split"));
        let (val_idx, tr_idx) = perm.split_at(a.val_size);
        let ctx = SeedRun {
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
        let val = EvalImages {
            ds: &train,
            idx: val_idx.to_vec(),
            elems: ctx.draw(
                &mut output::rng_for(seed, "clip-ft-val-transform"),
                val_idx.len(),
            ),
        };
        let test_set = EvalImages {
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
        let mut collector = super::predictions::Collector::new(&a.predictions);
        // (column, per test image (argmax, scores))
        let mut columns: Vec<(String, Vec<(usize, Vec<f32>)>)> = Vec::new();
        for &m in &methods {
            let (vm, model) = trainable_clip(files.file("model.safetensors")?, &clip_config, &dev)?;
            let label = format!("seed {seed} {}", m.name());
            let mut rec = if m != Method::LambdaEquitune {
                let mut zrec = Vec::new();
                let zero = ctx.accuracy_rec(
                    &test_set,
                    "test",
                    &mut ctx.plain_predict(m, &model),
                    collector.enabled.then_some(&mut zrec),
                )?;
                let mut sample = ctx.sampler("clip-ft-data");
                let proxy = proxy::neg_max_confidence;
                let o = run_phase(
                    &label,
                    &schedule,
                    image_vars(&vm),
                    select,
                    |_| {
                        let (x, y) = sample()?;
                        let f = |z: &Tensor| -> Result<Tensor> {
                            Head::Softmax.apply(&ctx.logits_from(&model.get_image_features(z)?)?)
                        };
                        let out = train_output(m, &sym, &proxy, &f, &x)?;
                        classification_loss(&out, &y, Head::Softmax)
                    },
                    || ctx.accuracy(&val, "val", &mut ctx.plain_predict(m, &model)),
                )?;
                let mut frec = Vec::new();
                let t = ctx.accuracy_rec(
                    &test_set,
                    "test",
                    &mut ctx.plain_predict(m, &model),
                    collector.enabled.then_some(&mut frec),
                )?;
                if collector.enabled {
                    columns.push((m.name().to_string(), frec));
                    columns.push((format!("{}/zero-shot", m.name()), zrec));
                }
                let mut r = record(&o, t, batch_size);
                r["zero_shot_test_top1"] = json!(zero);
                r
            } else {
                let net = LambdaNet::official(
                    clip_config.text_config.projection_dim,
                    output::derive_seed(seed, "clip-lambda-init"),
                    &dev,
                )?;
                let le = LambdaEquitune {
                    sym: &sym,
                    net: &net,
                    form: a.lambda.lambda_form,
                    head: Head::Softmax,
                };
                let ldrop = std::cell::RefCell::new(output::rng_for(seed, "clip-lambda-dropout"));
                let mut s1 = ctx.sampler("clip-lambda-data");
                let mut s2 = ctx.sampler("clip-ft-data");
                let (p1, zero, o) = lambda_two_phase(
                    select,
                    Phase {
                        label: format!("{label} λ-net"),
                        schedule: &lambda_schedule,
                        vars: net.vars(),
                        loss: |_| {
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
                        validate: || ctx.accuracy(&val, "val", &mut ctx.lambda_predict(&le, None)),
                    },
                    || ctx.accuracy(&test_set, "test", &mut ctx.lambda_predict(&le, None)),
                    Phase {
                        label: label.clone(),
                        schedule: &schedule,
                        vars: image_vars(&vm),
                        loss: |_| {
                            let (x, y) = s2()?;
                            let xs = orbit(&sym, &x)?;
                            let z = ctx.logits_from(&model.get_image_features(&xs)?)?;
                            let f0 = l2_normalize(&frozen.encode_images(&xs)?)?;
                            let out = le.combine(&z, &f0, None)?;
                            classification_loss(&out, &y, Head::Softmax)
                        },
                        validate: || {
                            ctx.accuracy(&val, "val", &mut ctx.lambda_predict(&le, Some(&model)))
                        },
                    },
                )?;
                let mut frec = Vec::new();
                let t = ctx.accuracy_rec(
                    &test_set,
                    "test",
                    &mut ctx.lambda_predict(&le, Some(&model)),
                    collector.enabled.then_some(&mut frec),
                )?;
                if collector.enabled {
                    columns.push((m.name().to_string(), frec));
                }
                let mut r = record(&o, t, batch_size);
                r["zero_shot_test_top1"] = json!(zero);
                r["zero_shot_note"] = json!("after the λ-net phase (pretrained backbone)");
                let lp = ckpt_dir.join("lambda-equitune.lambda-net.safetensors");
                if !a.no_checkpoints {
                    net.save(&lp)?;
                }
                r["lambda_phase"] = p1.lambda_json(if a.no_checkpoints {
                    Value::Null
                } else {
                    json!(lp.display().to_string())
                });
                r
            };
            let ck = ckpt_dir.join(format!("{}.image-tower.safetensors", m.name()));
            rec["checkpoint"] = if a.no_checkpoints {
                Value::Null
            } else {
                save_image_tower(&vm, &ck)?;
                json!(ck.display().to_string())
            };
            let p = if m == Method::LambdaEquitune {
                2 * sym.order()
            } else {
                m.passes(&sym as &dyn Symmetry)
            };
            passes.insert(m.name().into(), json!(p));
            eprintln!(
                "seed {seed}: {}: test top-1 {:.2} -> {:.2}",
                m.name(),
                rec["zero_shot_test_top1"].as_f64().unwrap_or(f64::NAN),
                rec["test_top1"].as_f64().unwrap_or(f64::NAN)
            );
            metrics.insert(m.name().into(), rec);
        }
        if collector.enabled {
            for (j, &i) in test_set.idx.iter().enumerate() {
                let label = test.label(i) as usize;
                let mut ms = serde_json::Map::new();
                for (name, rows) in &columns {
                    let (pred, scores) = &rows[j];
                    let (top, sc) = super::predictions::top_k(scores, super::predictions::TOP_K);
                    ms.insert(
                        name.clone(),
                        json!({"pred": pred, "correct": *pred == label, "top": top, "scores": sc}),
                    );
                }
                collector.rows.push(json!({
                    "index": i, "label": label,
                    "corruption": transform.as_ref().map(|t| t.element_name(test_set.elems[j])),
                    "methods": ms,
                }));
            }
            let names: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
            collector.write(
                path,
                &super::predictions::class_header(
                    EXPERIMENT,
                    seed,
                    &names,
                    &test.classes,
                    "the wrapped model's class probabilities",
                    json!({}),
                ),
            )?;
        }
        let wall = t0.elapsed().as_secs_f64();
        Ok(SeedOutcome {
            metrics: Value::Object(metrics),
            cost: json!({"forward_passes_per_input": passes, "wall_seconds": wall,
                         "peak_rss_mib": output::peak_rss_mib()}),
            summary: format!("seed {seed}: done in {wall:.0}s"),
        })
    })
}

/// `equirun clip finetune`'s results; its command is a subcommand of `equirun clip`.
pub const ENTRY: Experiment = Experiment {
    name: EXPERIMENT,
    words: &["clip", "finetune"],
    command: None,
    run_folders: registry::one_folder,
    extract: Some(extract_clip_finetune),
};

/// Per (model, zero-shot / finetuned) and method: test top-1 (%).
pub fn extract_clip_finetune(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let dataset = s(&c["dataset"]["name"]);
    let model = model_name(&c["model"]);
    let transform = group_name(&c["transform"]);
    let ft = &c["finetune"];
    let setting = vec![
        ("dataset".to_string(), dataset.clone()),
        ("group".into(), s(&c["group"]["name"])),
        ("corruption".into(), transform),
        (
            "finetune".into(),
            format!(
                "{}×{} iterations, batch {}, {} lr {}",
                s(&ft["rounds"]),
                s(&ft["iters_per_round"]),
                s(&c["batch_size"]),
                s(&ft["optim"]["kind"]),
                s(&ft["optim"]["lr"])
            ),
        ),
        ("train images".into(), s(&c["dataset"]["n_train"])),
    ];
    let mut out = Vec::new();
    for (method, v) in rec["metrics"].as_object().into_iter().flatten() {
        for (stage, key) in [
            ("zero-shot", "zero_shot_test_top1"),
            ("finetuned", "test_top1"),
        ] {
            let Some(x) = v[key].as_f64() else { continue };
            out.push(Obs {
                family: Family::ClipFinetune,
                title: format!("CLIP finetuned through the wrappers: test top-1 (%) — {dataset}"),
                setting: setting.clone(),
                row: vec![model.clone(), stage.into()],
                column: method.clone(),
                seed: seed_of(rec),
                value: x,
                source: source.into(),
            });
        }
    }
    out
}
