//! `equirun cnn`: the λ-equitune paper's pretrained-CNN experiment with data that is available
//! offline — Fashion-MNIST (Debian package `dataset-fashion-mnist`).
//!
//! Per seed:
//! 1. **pretrain** a small CNN ([`crate::models::cnn`], ~106k parameters) on upright training
//!    images, holding out a validation split of the training set for model selection (the test
//!    set is never used to select anything). The checkpoint is cached under
//!    `<out>/cnn-pretrain/<hash>/seed-<n>.safetensors` with its own JSON, shared by every
//!    `equirun cnn` run with the same pretraining config;
//! 2. **zero-shot**: evaluate vanilla / equitune / equizero / multi-* of the pretrained CNN on the
//!    upright test images and on test images corrupted by one random element of `--transform`
//!    per image (seeded, as in `equirun clip`); λ-equitune's zero-shot point is after its λ-net
//!    phase (the backbone is still the pretrained one), as in the paper's figure;
//! 3. **finetune** each method from the pretrained weights on corrupted training images through
//!    its wrapper (equizero straight-through; λ-equitune in two phases), the same batches for
//!    every method, keeping the round with the best corrupted-validation accuracy, then test.
//!
//! One JSON per seed (`<out>/cnn/<run>/seed-<n>.json`) with the curves and checkpoint paths,
//! and a mean ± std table over the seeds (`table.md` beside them).

use super::harness::{self, RunFolder, SeedOutcome};
use super::registry::{self, Experiment};
use crate::cli::opts::{DeviceOpts, FinetuneOpts, GroupOpts, LambdaOpts, MethodOpts, RunOpts};
use crate::data::gray::{make_batch, Corruptor, GrayData, FASHION_MEAN, FASHION_STD};
use crate::data::images::Split;
use crate::equi::canon::{self as canonical, Canon, CanonFinetuneOpts, CanonNet, CanonOpts};
use crate::equi::lambda::{orbit, Head, LambdaEquitune, LambdaNet};
use crate::equi::proxy::{self, ProxyKind};
use crate::equi::{Evaluator, ImageOutput, ImageSymmetry, Method, Symmetry, ZeroSelect};
use crate::groups::image::{image_group, D4};
use crate::groups::FiniteGroup;
use crate::models::cnn::{self, Cnn, CnnConfig};
use crate::output::{self, progress_bar};
use crate::tools::table::{s, seed_of, Family, Obs};
use crate::train::{
    classification_loss, lambda_two_phase, run_phase, train_output, OptimConfig, OptimKind, Phase,
    PhaseOutcome, Schedule, Select,
};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const EXPERIMENT: &str = "cnn";
pub const PRETRAIN_EXPERIMENT: &str = "cnn-pretrain";

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[command(args_conflicts_with_subcommands = true)]
#[command(mut_arg("method", |a| a.default_value("vanilla,equitune,equizero,lambda-equitune")))]
pub struct CnnArgs {
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<CnnCommand>,
    /// Fashion-MNIST folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz); default:
    /// $EQUIRUN_DATA, else Debian's /usr/share/datasets/fashion-mnist.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The corruption applies to the finetuning and test images.
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
    #[serde(default)]
    pub canon: CanonOpts,
    #[command(flatten)]
    #[serde(default)]
    pub canon_finetune: CanonFinetuneOpts,
    /// Equizero's proxy loss on each copy's prediction.
    #[arg(long, value_enum, default_value = "entropy")]
    pub equizero_proxy: ProxyKind,
    /// Training images held out for validation (model selection).
    #[arg(long, default_value_t = 5000, value_parser = crate::cli::opts::at_least_one)]
    pub val_size: usize,
    /// Corrupted validation images evaluated after each finetuning round.
    #[arg(long, default_value_t = 1000, value_parser = crate::cli::opts::at_least_one)]
    pub val_eval: usize,
    /// Use only the first N training images (before the validation split).
    #[arg(long, value_parser = crate::cli::opts::at_least_one)]
    pub limit_train: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_parser = crate::cli::opts::at_least_one)]
    pub limit_test: Option<usize>,
    /// Images per evaluation forward pass.
    #[arg(long, default_value_t = 500, value_parser = crate::cli::opts::at_least_one)]
    pub eval_batch_size: usize,
    /// Pretraining epochs over the upright training split (AdamW).
    #[arg(long, default_value_t = 2, value_parser = crate::cli::opts::at_least_one)]
    pub pretrain_epochs: usize,
    /// Pretraining batch size.
    #[arg(long, default_value_t = 64, value_parser = crate::cli::opts::at_least_one)]
    pub pretrain_batch_size: usize,
    /// Pretraining learning rate (> 0).
    #[arg(long, default_value_t = 1e-3, value_parser = crate::cli::opts::learning_rate)]
    pub pretrain_lr: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub finetune: FinetuneOpts,
    /// Per test image, for every method but λ-equitune: the zero-shot and the finetuned model on
    /// each test set (columns `<method>/zero-shot/<test>`, `<method>/<test>`).
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

#[derive(clap::Subcommand, Clone, Debug)]
pub enum CnnCommand {
    /// Training throughput of the CNN (images/s, fwd + bwd + AdamW) on seeded random images:
    /// compare with scripts/bench_cnn_torch.py (see scripts/bench_cnn.sh).
    Bench(BenchArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Images per training step.
    #[arg(long, default_value_t = 64, value_parser = crate::cli::opts::at_least_one)]
    pub batch_size: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 100, value_parser = crate::cli::opts::at_least_one)]
    pub steps: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// vanilla (one pass per image) or equitune over --group (|G| passes per image).
    #[arg(long, default_value = "vanilla")]
    pub method: String,
    #[arg(long, default_value = "rot90")]
    pub group: String,
    /// Time inference instead of training: the wrapped forward (no gradient) of every method in
    /// --method (comma-separated: vanilla, equitune, equizero, multi-equitune, multi-equizero,
    /// canon), the timed batches alternating between the methods; canon with a randomly
    /// initialised scorer (its cost does not depend on training).
    #[arg(long)]
    pub eval: bool,
    /// Any device; f32 only (the CNN is trained from scratch in f32).
    #[command(flatten)]
    pub compute: DeviceOpts,
}

/// A fixed evaluation set: image indices and their corruption elements.
pub struct EvalSet<'a> {
    pub data: &'a GrayData,
    pub idx: Vec<usize>,
    pub elems: Vec<usize>,
    pub corruptor: &'a Corruptor,
    /// Where the batches go (the model's device).
    pub dev: Device,
}

impl EvalSet<'_> {
    /// Accuracy (%) and correct counts of each output of `predict` (one per method).
    pub fn accuracies(
        &self,
        batch: usize,
        label: &str,
        predict: &mut dyn FnMut(&Tensor) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<(f64, usize)>> {
        let dev = self.dev.clone();
        let mut correct: Vec<usize> = Vec::new();
        let pb = progress_bar(self.idx.len() as u64, label);
        for (ci, chunk) in self.idx.chunks(batch.max(1)).enumerate() {
            let start = ci * batch.max(1);
            let elems = &self.elems[start..start + chunk.len()];
            let (x, y) = make_batch(self.data, chunk, elems, self.corruptor, &dev)?;
            let outs = predict(&x)?;
            if correct.is_empty() {
                correct = vec![0; outs.len()];
            }
            let y = y.to_vec1::<u32>()?;
            for (k, o) in outs.iter().enumerate() {
                let p = o.argmax(D::Minus1)?.to_vec1::<u32>()?;
                correct[k] += p.iter().zip(&y).filter(|(a, b)| a == b).count();
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        let n = self.idx.len().max(1) as f64;
        Ok(correct
            .into_iter()
            .map(|c| (100.0 * c as f64 / n, c))
            .collect())
    }
}

/// The methods `equirun cnn` runs.
const METHODS: &[Method] = &[
    Method::Vanilla,
    Method::Equitune,
    Method::Equizero,
    Method::LambdaEquitune,
    Method::MultiEquitune,
    Method::MultiEquizero,
    Method::Canon,
];

/// Parsed, validated options.
struct Parsed {
    group: FiniteGroup<D4>,
    transform: Option<FiniteGroup<D4>>,
    methods: Vec<Method>,
    seeds: Vec<u64>,
    finetune: Schedule,
    lambda: Schedule,
    canon: Schedule,
    dev: Device,
}

fn parse(a: &CnnArgs) -> Result<Parsed> {
    let dev = a.compute.training("cnn")?;
    let group = a.groups.group()?;
    let transform = a.groups.transform()?;
    let methods =
        Method::parse_list_of(&a.methods.method, METHODS, "equirun cnn").context("--method")?;
    let seeds = a.run.seed_list()?;
    for (v, name) in [
        (a.finetune.batch_size, "--batch-size"),
        (a.pretrain_batch_size, "--pretrain-batch-size"),
        (a.eval_batch_size, "--eval-batch-size"),
        (a.val_size, "--val-size"),
        (a.val_eval, "--val-eval"),
    ] {
        if v == 0 {
            bail!("{name} must be at least 1");
        }
    }
    let finetune = a.finetune.schedule()?;
    let lambda = a.lambda.schedule()?;
    let canon = a.canon.schedule()?;
    if !(a.pretrain_lr.is_finite() && a.pretrain_lr > 0.0) {
        bail!("--pretrain-lr must be positive");
    }
    Ok(Parsed {
        group,
        transform,
        methods,
        seeds,
        finetune,
        lambda,
        canon,
        dev,
    })
}

/// Train / validation split of the training set for a seed.
fn split(n: usize, val_size: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if val_size >= n {
        bail!(
            "--val-size {val_size} leaves no training images out of {n}; lower it (or raise --limit-train)"
        );
    }
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut output::rng_for(seed, "cnn-val-split"));
    let val = perm[..val_size].to_vec();
    let train = perm[val_size..].to_vec();
    Ok((train, val))
}

/// The pretrained CNN for a seed: loaded from the cache or trained now.
struct Pretrained {
    path: PathBuf,
    record: Value,
}

#[allow(clippy::too_many_arguments)]
fn pretrain(
    a: &CnnArgs,
    cfg: &CnnConfig,
    train: &GrayData,
    test: &GrayData,
    tr_idx: &[usize],
    val_idx: &[usize],
    seed: u64,
    pre_config: &Value,
    dev: &Device,
) -> Result<Pretrained> {
    let dev = dev.clone();
    let folder = RunFolder::new(
        &a.run,
        PRETRAIN_EXPERIMENT,
        harness::run_name(None, &["fashion-mnist"], pre_config),
        pre_config,
    );
    let json_path = folder.seed_path(seed);
    let ckpt = json_path.with_extension("safetensors");
    let (varmap, model) = Cnn::init(cfg, output::derive_seed(seed, "cnn-init"), &dev)?;
    if ckpt.is_file() && !harness::should_run(&json_path, pre_config, a.run.force)? {
        cnn::load_into(cfg, &varmap, &ckpt)?;
        let record: Value = serde_json::from_str(&std::fs::read_to_string(&json_path)?)?;
        eprintln!("seed {seed}: pretrained CNN from {}", ckpt.display());
        return Ok(Pretrained { path: ckpt, record });
    }
    let started_at = harness::now_rfc3339();
    let t0 = Instant::now();
    let none = Corruptor::new(None, train.side)?;
    let bs = a.pretrain_batch_size;
    let per_epoch = tr_idx.len() / bs;
    if per_epoch == 0 {
        bail!(
            "{} training images are fewer than one batch of --pretrain-batch-size {bs}",
            tr_idx.len()
        );
    }
    let schedule = Schedule {
        rounds: a.pretrain_epochs,
        iters_per_round: per_epoch,
        optim: OptimConfig {
            kind: OptimKind::Adamw,
            lr: a.pretrain_lr,
            momentum: 0.0,
            weight_decay: 0.0,
        },
    };
    let val = EvalSet {
        data: train,
        idx: val_idx.to_vec(),
        elems: vec![0; val_idx.len()],
        corruptor: &none,
        dev: dev.clone(),
    };
    let mut order_rng = output::rng_for(seed, "cnn-pretrain-order");
    let drop = RefCell::new(output::rng_for(seed, "cnn-pretrain-dropout"));
    let mut order: Vec<usize> = Vec::new();
    let eb = a.eval_batch_size;
    let vars = cnn::vars(cfg, &varmap)?;
    let outcome = run_phase(
        &format!("seed {seed} pretrain"),
        &schedule,
        vars,
        Select::BestVal,
        |it| {
            let k = (it - 1) % per_epoch;
            if k == 0 {
                order = tr_idx.to_vec();
                order.shuffle(&mut order_rng);
            }
            let (x, y) = make_batch(train, &order[k * bs..(k + 1) * bs], &[], &none, &dev)?;
            classification_loss(&model.logits(&x, Some(&drop))?, &y, Head::Logits)
        },
        || Ok(val.accuracies(eb, "val", &mut |x| Ok(vec![model.logits(x, None)?]))?[0].0),
    )?;
    let test_set = EvalSet {
        data: test,
        idx: (0..test.len()).collect(),
        elems: vec![0; test.len()],
        corruptor: &none,
        dev: dev.clone(),
    };
    let (test_acc, test_correct) =
        test_set.accuracies(eb, "test", &mut |x| Ok(vec![model.logits(x, None)?]))?[0];
    cnn::save(&varmap, &ckpt)?;
    let images = outcome.iterations * bs;
    let metrics = json!({
        "test_upright_accuracy": test_acc, "test_correct": test_correct, "n_test": test.len(),
        "best_val_accuracy": outcome.best_val, "best_epoch": outcome.best_round,
        "curve": outcome.curve, "checkpoint": ckpt.display().to_string(),
    });
    let cost = json!({
        "train_seconds": outcome.train_seconds, "train_images": images,
        "images_per_second": images as f64 / outcome.train_seconds.max(1e-9),
        "wall_seconds": t0.elapsed().as_secs_f64(), "peak_rss_mib": output::peak_rss_mib(),
    });
    folder.write(seed, started_at.clone(), metrics.clone(), cost.clone())?;
    let record = json!({"metrics": metrics, "cost": cost});
    eprintln!(
        "seed {seed}: pretrained CNN: best val {:.2}% (epoch {}), upright test {test_acc:.2}%, {:.0} images/s -> {}",
        outcome.best_val,
        outcome.best_round,
        images as f64 / outcome.train_seconds.max(1e-9),
        ckpt.display()
    );
    Ok(Pretrained { path: ckpt, record })
}

/// Everything a seed's finetuning needs.
struct SeedRun<'a> {
    a: &'a CnnArgs,
    p: &'a Parsed,
    cfg: &'a CnnConfig,
    sym: &'a ImageSymmetry,
    train: &'a GrayData,
    tr_idx: &'a [usize],
    corrupt: &'a Corruptor,
    /// [upright test, corrupted test]
    tests: Vec<(String, EvalSet<'a>)>,
    val: EvalSet<'a>,
    seed: u64,
    ckpt_dir: PathBuf,
}

impl SeedRun<'_> {
    fn proxy(&self) -> impl Fn(&Tensor) -> Result<Tensor> + '_ {
        move |y: &Tensor| self.a.equizero_proxy.eval(y, Head::Logits)
    }

    /// A fresh trainable copy of the pretrained CNN.
    fn fresh(&self, pre: &Path) -> Result<(VarMap, Cnn)> {
        let (vm, m) = Cnn::init(self.cfg, 0, &self.p.dev)?;
        cnn::load_into(self.cfg, &vm, pre)?;
        Ok((vm, m))
    }

    /// The finetuning sampler: the same images and corruptions for every method.
    fn sampler(&self, purpose: &str) -> impl FnMut() -> Result<(Tensor, Tensor)> + '_ {
        let mut rng = output::rng_for(self.seed, purpose);
        let bs = self.a.finetune.batch_size;
        move || {
            let idx: Vec<usize> = (0..bs)
                .map(|_| self.tr_idx[rng.random_range(0..self.tr_idx.len())])
                .collect();
            let elems = self.corrupt.draw(&mut rng, bs);
            make_batch(self.train, &idx, &elems, self.corrupt, &self.p.dev)
        }
    }

    /// Accuracies of plain methods of a model on the test sets: {test name: [per method]}.
    fn test_plain(&self, methods: &[Method], model: &Cnn) -> Result<Vec<(String, Vec<f64>)>> {
        let proxy = self.proxy();
        let ev = Evaluator {
            sym: self.sym,
            proxy: &proxy,
            select: ZeroSelect::WholeCopy,
        };
        let f = |x: &Tensor| model.logits(x, None);
        let mut out = Vec::new();
        for (name, set) in &self.tests {
            let accs =
                set.accuracies(self.a.eval_batch_size, &format!("test {name}"), &mut |x| {
                    Ok(ev.run(methods, &f, x)?.0)
                })?;
            out.push((name.clone(), accs.into_iter().map(|(a, _)| a).collect()));
        }
        Ok(out)
    }

    fn val_plain(&self, m: Method, model: &Cnn) -> Result<f64> {
        let proxy = self.proxy();
        let ev = Evaluator {
            sym: self.sym,
            proxy: &proxy,
            select: ZeroSelect::WholeCopy,
        };
        let f = |x: &Tensor| model.logits(x, None);
        Ok(self
            .val
            .accuracies(self.a.eval_batch_size, "val", &mut |x| {
                Ok(ev.run(&[m], &f, x)?.0)
            })?[0]
            .0)
    }

    /// λ-equitune outputs (eval mode) with features from `feat` and logits from `model`.
    fn lambda_predict<'b>(
        &'b self,
        le: &'b LambdaEquitune<'b>,
        model: &'b Cnn,
        feat: Option<&'b Cnn>,
    ) -> impl FnMut(&Tensor) -> Result<Vec<Tensor>> + 'b {
        move |x: &Tensor| {
            let xs = orbit(self.sym, x)?;
            let (f, z) = model.forward(&xs, None)?;
            let f = match feat {
                Some(fm) => fm.forward(&xs, None)?.0,
                None => f,
            };
            Ok(vec![le.combine(&z, &f, None)?])
        }
    }

    fn finetune_plain(&self, m: Method, pre: &Path) -> Result<Value> {
        let (vm, model) = self.fresh(pre)?;
        let drop = RefCell::new(output::rng_for(
            self.seed,
            &format!("cnn-finetune-dropout-{}", m.name()),
        ));
        let mut sample = self.sampler("cnn-finetune-data");
        let proxy = self.proxy();
        let out = run_phase(
            &format!("seed {} finetune {}", self.seed, m.name()),
            &self.p.finetune,
            cnn::vars(self.cfg, &vm)?,
            self.a.finetune.select,
            |_| {
                let (x, y) = sample()?;
                let f = |z: &Tensor| model.logits(z, Some(&drop));
                let o = train_output(m, self.sym, &proxy, &f, &x)?;
                classification_loss(&o, &y, Head::Logits)
            },
            || self.val_plain(m, &model),
        )?;
        let (tests, ips) = self.timed(|| self.test_plain(&[m], &model))?;
        let ckpt = self.ckpt_dir.join(format!("{}.safetensors", m.name()));
        cnn::save(&vm, &ckpt)?;
        let mut rec = self.finetune_record(
            &out,
            tests.into_iter().map(|(n, v)| (n, v[0])).collect(),
            &ckpt,
            m.passes(self.sym),
            None,
        );
        rec["test_images_per_second"] = json!(ips);
        Ok(rec)
    }

    /// λ-equitune ([`lambda_two_phase`]): phase 1 trains the λ-net on the frozen pretrained
    /// CNN, phase 2 the backbone with the λ-net frozen (eval mode); features always from the
    /// frozen pretrained copy. Returns (zero-shot test accuracies after phase 1, finetuning
    /// record).
    fn finetune_lambda(&self, pre: &Path) -> Result<(Vec<(String, f64)>, Value)> {
        let dev = self.p.dev.clone();
        let (vm, model) = self.fresh(pre)?;
        let frozen = model.frozen();
        let net = LambdaNet::official(
            self.cfg.hidden,
            output::derive_seed(self.seed, "cnn-lambda-init"),
            &dev,
        )?;
        let le = LambdaEquitune {
            sym: self.sym,
            net: &net,
            form: self.a.lambda.lambda_form,
            head: Head::Logits,
        };
        let lam_path = self.ckpt_dir.join("lambda-equitune.lambda-net.safetensors");
        // phase 1: λ-net only; backbone = frozen pretrained CNN (eval mode), one pass gives
        // both features and logits
        let ldrop = RefCell::new(output::rng_for(self.seed, "cnn-lambda-dropout"));
        let mut sample1 = self.sampler("cnn-lambda-data");
        let drop = RefCell::new(output::rng_for(self.seed, "cnn-finetune-dropout-lambda"));
        let mut sample = self.sampler("cnn-finetune-data");
        let eb = self.a.eval_batch_size;
        let (p1, zero_shot, p2) = lambda_two_phase(
            self.a.finetune.select,
            Phase {
                label: format!("seed {} λ-net", self.seed),
                schedule: &self.p.lambda,
                vars: net.vars(),
                loss: |_| {
                    let (x, y) = sample1()?;
                    let xs = orbit(self.sym, &x)?;
                    let (f, z) = frozen.forward(&xs, None)?;
                    let o = le.combine(&z, &f, Some(&ldrop))?;
                    classification_loss(&o, &y, Head::Logits)
                },
                validate: || {
                    let mut pr = self.lambda_predict(&le, &frozen, None);
                    Ok(self.val.accuracies(eb, "val", &mut pr)?[0].0)
                },
            },
            || {
                let zero_shot = self.test_lambda(&le, &frozen, None)?;
                net.save(&lam_path)?;
                Ok(zero_shot)
            },
            // phase 2: backbone with λ frozen
            Phase {
                label: format!("seed {} finetune λ-equitune", self.seed),
                schedule: &self.p.finetune,
                vars: cnn::vars(self.cfg, &vm)?,
                loss: |_| {
                    let (x, y) = sample()?;
                    let xs = orbit(self.sym, &x)?;
                    let z = model.logits(&xs, Some(&drop))?;
                    let f = frozen.forward(&xs, None)?.0;
                    let o = le.combine(&z, &f, None)?;
                    classification_loss(&o, &y, Head::Logits)
                },
                validate: || {
                    let mut pr = self.lambda_predict(&le, &model, Some(&frozen));
                    Ok(self.val.accuracies(eb, "val", &mut pr)?[0].0)
                },
            },
        )?;
        let (tests, ips) = self.timed(|| self.test_lambda(&le, &model, Some(&frozen)))?;
        let ckpt = self.ckpt_dir.join("lambda-equitune.safetensors");
        cnn::save(&vm, &ckpt)?;
        let phase1 = p1.lambda_json(json!(lam_path.display().to_string()));
        let mut rec = self.finetune_record(&p2, tests, &ckpt, 2 * self.sym.order(), Some(phase1));
        rec["test_images_per_second"] = json!(ips);
        Ok((zero_shot, rec))
    }

    /// Runs the test evaluation `f` and returns its result with the test images per second
    /// (every test set counted).
    fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        let n: usize = self.tests.iter().map(|(_, s)| s.idx.len()).sum();
        let t0 = Instant::now();
        let r = f()?;
        Ok((r, n as f64 / t0.elapsed().as_secs_f64().max(1e-9)))
    }

    /// Learned canonicalisation ([`crate::equi::canon`]): phase 1 trains the scorer alone with
    /// the canonicalisation prior on upright training images (the zero-shot point: the
    /// pretrained CNN behind a prior-only canonicaliser); phase 2 trains the backbone and the
    /// scorer together on the corrupted finetuning batches (the same batches as every method)
    /// with the task loss through the straight-through argmax plus `--canon-prior-weight` × the
    /// prior on the upright versions of the same images. Returns (zero-shot test accuracies,
    /// finetuning record).
    fn finetune_canon(&self, pre: &Path) -> Result<(Vec<(String, f64)>, Value)> {
        let dev = self.p.dev.clone();
        let co = &self.a.canon;
        let (vm, model) = self.fresh(pre)?;
        let frozen = model.frozen();
        let ccfg = co.config(self.cfg.in_channels, self.cfg.image_size)?;
        let net = CanonNet::new(
            ccfg.clone(),
            output::derive_seed(self.seed, "cnn-canon-init"),
            &dev,
        )?;
        let canon = Canon {
            sym: self.sym,
            scorer: &net,
        };
        let scorer_path = self.ckpt_dir.join("canon.scorer.safetensors");
        let none = Corruptor::new(None, self.train.side)?;
        let eb = self.a.eval_batch_size;
        // phase 1: the prior alone, on upright images
        let mut prng = output::rng_for(self.seed, "cnn-canon-prior-data");
        let pbs = co.canon_batch_size;
        let prior_batch = |rng: &mut rand_chacha::ChaCha8Rng| -> Result<Tensor> {
            let idx: Vec<usize> = (0..pbs)
                .map(|_| self.tr_idx[rng.random_range(0..self.tr_idx.len())])
                .collect();
            Ok(make_batch(self.train, &idx, &[], &none, &dev)?.0)
        };
        // phase 2: the finetuning batches of every method (same draws as `sampler`), corrupted
        // and upright
        let mut frng = output::rng_for(self.seed, "cnn-finetune-data");
        let bs = self.a.finetune.batch_size;
        let drop = RefCell::new(output::rng_for(self.seed, "cnn-finetune-dropout-canon"));
        let weight = self.a.canon_finetune.canon_prior_weight;
        let temperature = self.a.canon_finetune.canon_temperature;
        let frozen_f = |z: &Tensor| frozen.logits(z, None);
        let model_f = |z: &Tensor| model.logits(z, None);
        let accuracy = |m: &dyn crate::equi::BatchModel| -> Result<f64> {
            Ok(self
                .val
                .accuracies(eb, "val", &mut |x| Ok(vec![canon.forward(m, x)?.0]))?[0]
                .0)
        };
        let (p1, (zero_shot, zs_identity), p2) = lambda_two_phase(
            self.a.finetune.select,
            Phase {
                label: format!("seed {} canon prior", self.seed),
                schedule: &self.p.canon,
                vars: net.vars(),
                loss: |_| {
                    let x = prior_batch(&mut prng)?;
                    canonical::prior_loss(&canon.scores(&x)?, &vec![0; pbs])
                },
                validate: || accuracy(&frozen_f),
            },
            || {
                let r = self.test_canon(&canon, &frozen_f)?;
                net.save(&scorer_path)?;
                Ok(r)
            },
            Phase {
                label: format!("seed {} finetune canon", self.seed),
                schedule: &self.p.finetune,
                vars: cnn::vars(self.cfg, &vm)?
                    .into_iter()
                    .chain(net.vars())
                    .collect(),
                loss: |_| {
                    let idx: Vec<usize> = (0..bs)
                        .map(|_| self.tr_idx[frng.random_range(0..self.tr_idx.len())])
                        .collect();
                    let elems = self.corrupt.draw(&mut frng, bs);
                    let (x, y) = make_batch(self.train, &idx, &elems, self.corrupt, &dev)?;
                    let f = |z: &Tensor| model.logits(z, Some(&drop));
                    let (o, _) = canon.train_forward(&f, &x, temperature)?;
                    let task = classification_loss(&o, &y, Head::Logits)?;
                    if weight == 0.0 {
                        return Ok(task);
                    }
                    let (up, _) = make_batch(self.train, &idx, &[], &none, &dev)?;
                    let prior = canonical::prior_loss(&canon.scores(&up)?, &vec![0; bs])?;
                    Ok((task + (prior * weight)?)?)
                },
                validate: || accuracy(&model_f),
            },
        )?;
        let ((tests, identity), ips) = self.timed(|| self.test_canon(&canon, &model_f))?;
        let ckpt = self.ckpt_dir.join("canon.safetensors");
        cnn::save(&vm, &ckpt)?;
        let finetuned_scorer = self.ckpt_dir.join("canon.scorer-finetuned.safetensors");
        net.save(&finetuned_scorer)?;
        let mut rec = self.finetune_record(&p2, tests, &ckpt, 1, None);
        rec["test_images_per_second"] = json!(ips);
        rec["scorer_passes_per_input"] = json!(self.sym.order());
        rec["scorer_checkpoint"] = json!(finetuned_scorer.display().to_string());
        rec["upright_test_identity_rate"] = json!(identity);
        rec["prior_phase"] = json!({
            "curve": p1.curve, "best_round": p1.best_round, "best_val_accuracy": p1.best_val,
            "selected_round": p1.selected_round, "iterations": p1.iterations,
            "train_seconds": p1.train_seconds,
            "scorer_checkpoint": scorer_path.display().to_string(),
            "upright_test_identity_rate": zs_identity,
        });
        Ok((zero_shot, rec))
    }

    /// Canon's test accuracies and the fraction of upright test images mapped to the identity.
    fn test_canon(
        &self,
        canon: &Canon,
        model: &dyn crate::equi::BatchModel,
    ) -> Result<(Vec<(String, f64)>, Option<f64>)> {
        let mut out = Vec::new();
        let mut identity = None;
        for (name, set) in &self.tests {
            let mut stats = canonical::CanonStats::default();
            let acc =
                set.accuracies(self.a.eval_batch_size, &format!("test {name}"), &mut |x| {
                    let (o, s) = canon.forward(model, x)?;
                    stats.inputs += s.inputs;
                    stats.identity_picks += s.identity_picks;
                    Ok(vec![o])
                })?;
            if name == "upright" {
                identity = Some(stats.identity_picks as f64 / stats.inputs.max(1) as f64);
            }
            out.push((name.clone(), acc[0].0));
        }
        Ok((out, identity))
    }

    fn test_lambda(
        &self,
        le: &LambdaEquitune,
        model: &Cnn,
        feat: Option<&Cnn>,
    ) -> Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        for (name, set) in &self.tests {
            let mut pr = self.lambda_predict(le, model, feat);
            let acc = set.accuracies(self.a.eval_batch_size, &format!("test {name}"), &mut pr)?;
            out.push((name.clone(), acc[0].0));
        }
        Ok(out)
    }

    fn finetune_record(
        &self,
        o: &PhaseOutcome,
        tests: Vec<(String, f64)>,
        ckpt: &Path,
        passes: usize,
        lambda_phase: Option<Value>,
    ) -> Value {
        let mut v = serde_json::Map::new();
        v.insert("test".into(), to_map(tests));
        v.extend(o.json(self.a.finetune.batch_size));
        v.insert("forward_passes_per_input".into(), json!(passes));
        v.insert("checkpoint".into(), json!(ckpt.display().to_string()));
        if let Some(l) = lambda_phase {
            v.insert("lambda_phase".into(), l);
        }
        Value::Object(v)
    }
}

fn to_map(v: Vec<(String, f64)>) -> Value {
    Value::Object(v.into_iter().map(|(k, x)| (k, json!(x))).collect())
}

pub fn run(a: &CnnArgs) -> Result<Vec<PathBuf>> {
    cnn::tune_allocator();
    if let Some(CnnCommand::Bench(b)) = &a.command {
        let r = bench(b)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(vec![]);
    }
    let p = parse(a)?;
    let data_dir = crate::data::data_dir(a.data_dir.as_ref());
    let train = GrayData::load(data_dir.as_deref(), Split::Train, a.limit_train)?;
    let test = GrayData::load(data_dir.as_deref(), Split::Test, a.limit_test)?;
    if train.side != test.side {
        bail!(
            "train and test images differ in size ({} vs {})",
            train.side,
            test.side
        );
    }
    let cfg = CnnConfig {
        image_size: train.side,
        ..CnnConfig::fashion_mnist()
    };
    let corrupt = Corruptor::new(p.transform.clone(), train.side)?;
    let none = Corruptor::new(None, train.side)?;
    let data_cfg = json!({
        "name": "fashion-mnist", "train_source": train.source.display().to_string(),
        "test_source": test.source.display().to_string(), "n_train": train.len(), "n_test": test.len(),
        "limit_train": a.limit_train, "limit_test": a.limit_test, "val_size": a.val_size,
        "normalisation": {"mean": FASHION_MEAN, "std": FASHION_STD},
    });
    let mut pre_config = json!({
        "model": {"architecture": "cnn", "config": cfg, "n_params": cfg.n_params()},
        "data": data_cfg,
        "epochs": a.pretrain_epochs, "batch_size": a.pretrain_batch_size,
        "optimizer": {"kind": "adamw", "lr": a.pretrain_lr, "weight_decay": 0.0},
        "selection": "best upright validation accuracy over epochs (validation split of train)",
    });
    crate::device::record_in_config(&mut pre_config, &p.dev, candle_core::DType::F32);
    let mut base_config = json!({
        "pretrain": pre_config,
        "group": p.group.info(),
        "transform": p.transform.as_ref().map(|t| t.info()),
        "transform_draw": "one random element per image, seeded",
        "methods": p.methods.iter().map(|w| w.name()).collect::<Vec<_>>(),
        "lambda": {"form": a.lambda.lambda_form, "net": "Linear(d,100)-ReLU-Dropout(0.5)-Linear(100,100)-Dropout(0.5)-Linear(100,1)",
                   "features": "penultimate CNN features of g·x from a frozen copy of the pretrained CNN",
                   "phase1": p.lambda, "eval_mode_at_evaluation": true},
        "equizero_proxy": a.equizero_proxy,
        "equizero_finetuning": "straight-through: equitune gradient, equizero forward value",
        "head": "logits averaged over copies; cross-entropy on the wrapped logits",
        "finetune": {"schedule": p.finetune, "batch_size": a.finetune.batch_size, "select": a.finetune.select,
                     "data": "training split minus validation, corrupted per image; the same batches for every method"},
        "val_eval": a.val_eval,
        "eval_batch_size": a.eval_batch_size,
        "canonicaliser": "per-factor pattern argmax, pattern seeded from (seed, 'canon')",
    });
    if p.methods.contains(&Method::Canon) {
        // only with canon, so that the run folders of other method sets keep their names
        let ccfg = a.canon.config(cfg.in_channels, cfg.image_size)?;
        base_config["canon"] = json!({
            "scorer": "equituned tiny CNN: score of g = s(g⁻¹·x); s = block-average to side ≤ resolution, conv3×3-ReLU-maxpool2-conv3×3-ReLU-linear",
            "config": ccfg, "n_params": ccfg.n_params(), "macs_per_scorer_pass": ccfg.macs(),
            "prior_phase": p.canon, "prior_batch_size": a.canon.canon_batch_size,
            "prior_weight": a.canon_finetune.canon_prior_weight, "temperature": a.canon_finetune.canon_temperature,
            "ties": "scores within 1e-6 (relative) of the max are averaged",
            "finetuning": "backbone and scorer jointly, one AdamW (--lr); straight-through argmax; prior on the upright versions of the batch",
        });
    }
    let corrupt_spec = format!("t{}", corrupt.name());
    let name = harness::run_name(
        a.run.run_name.as_ref(),
        &["fashion-mnist", p.group.name(), &corrupt_spec],
        &base_config,
    );
    let folder = RunFolder::new(&a.run, EXPERIMENT, name, &base_config);
    let written = folder.run_seeds(&p.seeds, |seed, seed_path| {
        let t0 = Instant::now();
        let (tr_idx, val_idx) = split(train.len(), a.val_size, seed)?;
        let pre = pretrain(a, &cfg, &train, &test, &tr_idx, &val_idx, seed, &pre_config, &p.dev)?;
        let sym = ImageSymmetry::new(
            p.group.clone(),
            ImageOutput::Invariant,
            output::derive_seed(seed, "canon"),
        );
        let mut trng = output::rng_for(seed, "cnn-test-transform");
        let test_elems = corrupt.draw(&mut trng, test.len());
        let all: Vec<usize> = (0..test.len()).collect();
        let mut tests = vec![(
            "upright".to_string(),
            EvalSet {
                data: &test,
                idx: all.clone(),
                elems: vec![0; test.len()],
                corruptor: &none,
                dev: p.dev.clone(),
            },
        )];
        if corrupt.group.is_some() {
            tests.push((
                corrupt.name(),
                EvalSet {
                    data: &test,
                    idx: all,
                    elems: test_elems,
                    corruptor: &corrupt,
                    dev: p.dev.clone(),
                },
            ));
        }
        let nv = a.val_eval.min(val_idx.len());
        let mut vrng = output::rng_for(seed, "cnn-val-transform");
        let val = EvalSet {
            data: &train,
            idx: val_idx[..nv].to_vec(),
            elems: corrupt.draw(&mut vrng, nv),
            corruptor: &corrupt,
            dev: p.dev.clone(),
        };
        let run_dir = folder.dir();
        let ctx = SeedRun {
            a,
            p: &p,
            cfg: &cfg,
            sym: &sym,
            train: &train,
            tr_idx: &tr_idx,
            corrupt: &corrupt,
            tests,
            val,
            seed,
            ckpt_dir: run_dir.join(format!("seed-{seed}.checkpoints")),
        };
        // zero-shot: every plain method in one pass over the union of copies
        let plain: Vec<Method> = p
            .methods
            .iter()
            .copied()
            .filter(|&m| !matches!(m, Method::LambdaEquitune | Method::Canon))
            .collect();
        let pre_model = {
            let (_, m) = ctx.fresh(&pre.path)?;
            m
        };
        let mut zero_shot = serde_json::Map::new();
        if !plain.is_empty() {
            for (name, accs) in ctx.test_plain(&plain, &pre_model)? {
                for (m, acc) in plain.iter().zip(accs) {
                    zero_shot
                        .entry(m.name())
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .unwrap()
                        .insert(name.clone(), json!(acc));
                }
            }
        }
        let mut finetuned = serde_json::Map::new();
        let mut passes = serde_json::Map::new();
        for w in &p.methods {
            let rec = if *w == Method::LambdaEquitune {
                let (zs, rec) = ctx.finetune_lambda(&pre.path)?;
                zero_shot.insert(w.name().into(), to_map(zs));
                rec
            } else if *w == Method::Canon {
                let (zs, rec) = ctx.finetune_canon(&pre.path)?;
                zero_shot.insert(w.name().into(), to_map(zs));
                rec
            } else {
                ctx.finetune_plain(*w, &pre.path)?
            };
            passes.insert(w.name().into(), rec["forward_passes_per_input"].clone());
            eprintln!(
                "seed {seed}: {}: zero-shot {} -> finetuned {}",
                w.name(),
                zero_shot[w.name()],
                rec["test"]
            );
            finetuned.insert(w.name().into(), rec);
        }
        if a.predictions.save_predictions {
            write_predictions(&ctx, &plain, &pre_model, &test, seed, seed_path)?;
        }
        let wall = t0.elapsed().as_secs_f64();
        let pre_metrics = &pre.record["metrics"];
        Ok(SeedOutcome {
            metrics: json!({
                "pretrained": {
                    "test_upright_accuracy": pre_metrics["test_upright_accuracy"],
                    "best_val_accuracy": pre_metrics["best_val_accuracy"],
                    "best_epoch": pre_metrics["best_epoch"],
                    "curve": pre_metrics["curve"],
                    "checkpoint": pre.path.display().to_string(),
                },
                "zero_shot": zero_shot,
                "finetuned": finetuned,
            }),
            cost: json!({
                "forward_passes_per_input": passes,
                "pretrain_images_per_second": pre.record["cost"]["images_per_second"],
                "wall_seconds": wall,
                "peak_rss_mib": output::peak_rss_mib(),
            }),
            summary: format!("seed {seed}: done in {wall:.0}s"),
        })
    })?;
    if !written.is_empty() {
        // every seed of this run folder with this config (seeds may run as separate processes)
        let table = summary_table(&folder.same_config_results()?)?;
        output::write_bytes_atomic(&folder.dir().join("table.md"), table.as_bytes())?;
        print!("{table}");
    }
    Ok(written)
}

fn mean_std(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return format!("{m:.2}");
    }
    let s = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{m:.2} ± {s:.2}")
}

/// A Markdown table (mean ± sample std over the given seed files): the pretrained CNN's
/// upright accuracy, then per method and test set the zero-shot and finetuned accuracies.
pub fn summary_table(paths: &[PathBuf]) -> Result<String> {
    let recs = paths
        .iter()
        .map(|p| -> Result<Value> {
            Ok(serde_json::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let first = &recs[0];
    let methods: Vec<String> = first["config"]["methods"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let tests: Vec<String> = first["metrics"]["finetuned"]
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|v| v["test"].as_object())
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let seeds: Vec<String> = recs.iter().map(|r| r["seed"].to_string()).collect();
    let ft = &first["config"]["finetune"]["schedule"];
    let iters = ft["rounds"].as_u64().unwrap_or(0) * ft["iters_per_round"].as_u64().unwrap_or(0);
    let mut s = String::new();
    s.push_str(&format!(
        "Fashion-MNIST, group {}, seeds {} (mean ± std); finetuning budget {} iterations × batch {}\n\n",
        first["config"]["group"]["name"].as_str().unwrap_or("?"),
        seeds.join(","),
        iters,
        first["config"]["finetune"]["batch_size"]
    ));
    let col = |f: &dyn Fn(&Value) -> Option<f64>| -> String {
        mean_std(&recs.iter().filter_map(f).collect::<Vec<_>>())
    };
    s.push_str(&format!(
        "pretrained CNN, upright test accuracy: {} %\n\n",
        col(&|r| r["metrics"]["pretrained"]["test_upright_accuracy"].as_f64())
    ));
    s.push_str(
        "| method | test images | zero-shot | finetuned | model passes per image | test images/s (finetuned) |\n|---|---|---|---|---|---|\n",
    );
    for m in &methods {
        let f = &first["metrics"]["finetuned"][m];
        let passes = match (
            f["forward_passes_per_input"].as_u64(),
            f["scorer_passes_per_input"].as_u64(),
        ) {
            (Some(p), Some(k)) => format!("{p} (+{k} scorer)"),
            (Some(p), None) => p.to_string(),
            _ => "–".into(),
        };
        for t in &tests {
            s.push_str(&format!(
                "| {m} | {t} | {} | {} | {passes} | {} |\n",
                col(&|r| r["metrics"]["zero_shot"][m][t].as_f64()),
                col(&|r| r["metrics"]["finetuned"][m]["test"][t].as_f64()),
                col(&|r| r["metrics"]["finetuned"][m]["test_images_per_second"].as_f64()),
            ));
        }
    }
    s.push('\n');
    Ok(s)
}

/// Training throughput of the CNN: `steps` AdamW steps on seeded random images.
pub fn bench(b: &BenchArgs) -> Result<Value> {
    let dev = b.compute.f32_only(
        "cnn bench",
        "runs the CNN (trained from scratch, kept in f32) in f32",
    )?;
    if b.eval {
        return bench_eval(b, &dev);
    }
    let cfg = CnnConfig::fashion_mnist();
    let (vm, model) = Cnn::init(&cfg, 0, &dev)?;
    let m = Method::parse(&b.method).context("--method")?;
    if !matches!(m, Method::Vanilla | Method::Equitune) {
        bail!("bench --method must be vanilla or equitune");
    }
    let group = image_group(&b.group).context("--group")?;
    let sym = ImageSymmetry::new(group, ImageOutput::Invariant, 0);
    let bs = b.batch_size.max(1);
    let x = {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let n = Normal::new(0f32, 1.0).unwrap();
        let v: Vec<f32> = (0..bs * 28 * 28).map(|_| n.sample(&mut rng)).collect();
        Tensor::from_vec(v, (bs, 1, 28, 28), &dev)?
    };
    let y = Tensor::from_vec((0..bs as u32).map(|i| i % 10).collect::<Vec<_>>(), bs, &dev)?;
    let mut opt = crate::train::Optim::new(
        cnn::vars(&cfg, &vm)?,
        OptimConfig {
            kind: OptimKind::Adamw,
            lr: 1e-3,
            momentum: 0.0,
            weight_decay: 0.0,
        },
    )?;
    let drop = RefCell::new(output::rng_for(0, "bench-dropout"));
    let proxy = proxy::neg_max_confidence;
    let mut step = || -> Result<()> {
        let f = |z: &Tensor| model.logits(z, Some(&drop));
        let o = train_output(m, &sym, &proxy, &f, &x)?;
        let l = classification_loss(&o, &y, Head::Logits)?;
        opt.step(&l.backward()?)
    };
    for _ in 0..b.warmup {
        step()?;
    }
    let t0 = Instant::now();
    for _ in 0..b.steps {
        step()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(json!({
        "framework": "equirun (candle)", "method": m.name(), "group": b.group,
        "passes_per_image": m.passes(&sym), "batch_size": bs, "steps": b.steps,
        "threads": candle_core::utils::get_num_threads(), "device": crate::device::device_name(&dev),
        "seconds": secs, "images_per_second": (bs * b.steps) as f64 / secs,
        "n_params": cfg.n_params(),
    }))
}

/// `cnn bench --eval`: inference images/s of each wrapper of the (randomly initialised) CNN on
/// seeded random images, batches alternating between methods after one untimed warm-up round.
fn bench_eval(b: &BenchArgs, dev: &Device) -> Result<Value> {
    const EVAL_METHODS: &[Method] = &[
        Method::Vanilla,
        Method::Equitune,
        Method::Equizero,
        Method::MultiEquitune,
        Method::MultiEquizero,
        Method::Canon,
    ];
    let methods = Method::parse_list_of(&b.method, EVAL_METHODS, "equirun cnn bench --eval")
        .context("--method")?;
    let group = image_group(&b.group).context("--group")?;
    let dev = dev.clone();
    let cfg = CnnConfig::fashion_mnist();
    let (_, model) = Cnn::init(&cfg, 0, &dev)?;
    let sym = ImageSymmetry::new(group.clone(), ImageOutput::Invariant, 0);
    let bs = b.batch_size.max(1);
    let x = crate::testing::randn(0, &[bs, 1, cfg.image_size, cfg.image_size]).to_device(&dev)?;
    let ccfg = CanonOpts::default().config(1, cfg.image_size)?;
    let scorer = CanonNet::new(ccfg.clone(), 0, &dev)?;
    let canon = Canon {
        sym: &sym,
        scorer: &scorer,
    };
    let proxy = proxy::neg_max_confidence;
    let ev = Evaluator {
        sym: &sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    let f = |z: &Tensor| model.logits(z, None);
    let run = |m: Method| -> Result<Tensor> {
        if m == Method::Canon {
            Ok(canon.forward(&f, &x)?.0)
        } else {
            Ok(ev.run(&[m], &f, &x)?.0.remove(0))
        }
    };
    for _ in 0..b.warmup.max(1) {
        for &m in &methods {
            run(m)?;
        }
    }
    let mut secs = vec![0f64; methods.len()];
    for _ in 0..b.steps {
        for (k, &m) in methods.iter().enumerate() {
            let t0 = Instant::now();
            run(m)?;
            secs[k] += t0.elapsed().as_secs_f64();
        }
    }
    let mut per = serde_json::Map::new();
    let v0 = methods
        .iter()
        .position(|&m| m == Method::Vanilla)
        .map(|k| (bs * b.steps) as f64 / secs[k]);
    for (k, &m) in methods.iter().enumerate() {
        let ips = (bs * b.steps) as f64 / secs[k];
        let mut v = json!({"images_per_second": ips, "seconds": secs[k], "model_passes_per_image": m.passes(&sym)});
        if m == Method::Canon {
            v["scorer_passes_per_image"] = json!(sym.order());
        }
        if let Some(v0) = v0 {
            v["speed_vs_vanilla"] = json!(ips / v0);
        }
        per.insert(m.name().into(), v);
    }
    Ok(json!({
        "framework": "equirun (candle)", "mode": "inference, batches alternating between methods",
        "group": b.group, "batch_size": bs, "steps": b.steps,
        "threads": candle_core::utils::get_num_threads(), "n_params": cfg.n_params(),
        "device": crate::device::device_name(&dev),
        "canon_scorer": {"config": ccfg, "n_params": ccfg.n_params(), "macs_per_pass": ccfg.macs()},
        "methods": per,
    }))
}

// ---------------------------------------------------------------------------------------------
// what `equirun report` tabulates

/// Per (zero-shot / finetuned, upright / corrupted test images) and method.
pub fn extract_cnn(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let group = s(&c["group"]["name"]);
    let transform = s(&c["transform"]["name"]);
    let setting = vec![
        ("group".to_string(), group.clone()),
        ("corruption".into(), transform.clone()),
        (
            "finetune".into(),
            format!(
                "{}×{} iterations, batch {}, {} lr {}",
                s(&c["finetune"]["schedule"]["rounds"]),
                s(&c["finetune"]["schedule"]["iters_per_round"]),
                s(&c["finetune"]["batch_size"]),
                s(&c["finetune"]["schedule"]["optim"]["kind"]),
                s(&c["finetune"]["schedule"]["optim"]["lr"])
            ),
        ),
    ];
    let title = format!("CNN on Fashion-MNIST — group {group}, corruption {transform}");
    let mut out = Vec::new();
    let m = &rec["metrics"];
    if let Some(x) = m["pretrained"]["test_upright_accuracy"].as_f64() {
        out.push(Obs {
            family: Family::Cnn,
            title: title.clone(),
            setting: setting.clone(),
            row: vec!["pretrained".into(), "upright".into()],
            column: "vanilla".into(),
            seed: seed_of(rec),
            value: x,
            source: source.into(),
        });
    }
    for (stage, key) in [("zero-shot", "zero_shot"), ("finetuned", "finetuned")] {
        for (method, v) in m[key].as_object().into_iter().flatten() {
            let t = if key == "finetuned" { &v["test"] } else { v };
            for (set, label) in [
                ("upright", "upright".to_string()),
                (transform.as_str(), transform.clone()),
            ] {
                let Some(x) = t[set].as_f64() else { continue };
                out.push(Obs {
                    family: Family::Cnn,
                    title: title.clone(),
                    setting: setting.clone(),
                    row: vec![stage.into(), label.clone()],
                    column: method.clone(),
                    seed: seed_of(rec),
                    value: x,
                    source: source.into(),
                });
            }
        }
    }
    out
}

pub const ENTRY: Experiment = Experiment {
    name: EXPERIMENT,
    words: &["cnn"],
    command: Some(registry::Command {
        name: "cnn",
        about: "Pretrained-CNN experiment on Fashion-MNIST (offline): pretrain upright, then zero-shot \
                and finetuned vanilla / equitune / equizero / λ-equitune / multi-* on rot90- or \
                flip-corrupted test images; `cnn bench` measures training throughput",
        args: <CnnArgs as clap::Args>::augment_args,
        run: |m| registry::run_with(m, run),
    }),
    run_folders: registry::one_folder,
    extract: Some(extract_cnn),
};

/// The pretrained CNNs `equirun cnn` caches (not tabulated: their numbers are in every `cnn`
/// result).
pub const PRETRAIN_ENTRY: Experiment = Experiment {
    name: PRETRAIN_EXPERIMENT,
    words: &[],
    command: None,
    run_folders: registry::one_folder,
    extract: None,
};

// ---------------------------------------------------------------------------------------------
// --save-predictions (docs/experiments.md, "Predictions files")

/// Per test image: argmax class and softmax probabilities of `predict`'s logits.
fn eval_scores(
    set: &EvalSet,
    batch: usize,
    predict: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Vec<(usize, Vec<f32>)>> {
    let mut out = Vec::with_capacity(set.idx.len());
    for (ci, chunk) in set.idx.chunks(batch.max(1)).enumerate() {
        let start = ci * batch.max(1);
        let elems = &set.elems[start..start + chunk.len()];
        let (x, _) = make_batch(set.data, chunk, elems, set.corruptor, &set.dev)?;
        let logits = predict(&x)?;
        let p = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        out.extend(p.into_iter().map(|c| c as usize).zip(probs));
    }
    Ok(out)
}

/// Writes `seed-<n>.predictions.jsonl.gz`: the plain methods' zero-shot (pretrained) and
/// finetuned (reloaded from their checkpoints) predictions on every test set.
fn write_predictions(
    ctx: &SeedRun,
    plain: &[Method],
    pre_model: &Cnn,
    test: &GrayData,
    seed: u64,
    seed_path: &Path,
) -> Result<()> {
    use super::predictions as preds;
    let proxy = ctx.proxy();
    let ev = Evaluator {
        sym: ctx.sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    let mut columns: Vec<(String, Vec<(usize, Vec<f32>)>)> = Vec::new();
    for &m in plain {
        let (_, tuned) = ctx.fresh(&ctx.ckpt_dir.join(format!("{}.safetensors", m.name())))?;
        for (model, tag) in [(pre_model, "zero-shot/"), (&tuned, "")] {
            let f = |x: &Tensor| model.logits(x, None);
            for (name, set) in &ctx.tests {
                let rows = eval_scores(set, ctx.a.eval_batch_size, &mut |x| {
                    Ok(ev.run(&[m], &f, x)?.0.remove(0))
                })?;
                columns.push((format!("{}/{tag}{name}", m.name()), rows));
            }
        }
    }
    let n = ctx.tests.first().map(|t| t.1.idx.len()).unwrap_or(0);
    let mut c = preds::Collector::new(&ctx.a.predictions);
    for j in 0..n {
        let i = ctx.tests[0].1.idx[j];
        let label = test.labels[i] as usize;
        let mut ms = serde_json::Map::new();
        for (name, rows) in &columns {
            let (pred, probs) = &rows[j];
            let (top, scores) = preds::top_k(probs, preds::TOP_K);
            ms.insert(
                name.clone(),
                json!({"pred": pred, "correct": *pred == label, "top": top, "scores": scores}),
            );
        }
        let corr: Vec<String> = ctx
            .tests
            .iter()
            .filter_map(|(_, s)| {
                s.corruptor
                    .group
                    .as_ref()
                    .map(|g| g.element_name(s.elems[j]))
            })
            .collect();
        c.rows
            .push(json!({"index": i, "label": label, "corruption": corr.first(), "methods": ms}));
    }
    let names: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
    let classes: Vec<String> = (0..ctx.cfg.classes).map(|k| k.to_string()).collect();
    c.write(
        seed_path,
        &preds::class_header(
            EXPERIMENT,
            seed,
            &names,
            &classes,
            "softmax of the wrapped logits",
            json!({}),
        ),
    )?;
    Ok(())
}
