//! `equirun multi-image`: multi-input equivariance on k-tuples of images (docs/methods.md, "Multi-input equivariance"; docs/experiments.md#multi-image;
//! the multi-group paper's first design), on Fashion-MNIST.
//!
//! A sample is k *different* images of the same class (consecutive images of a class grouped into
//! k-tuples, remainder dropped, tuples shuffled), each view rotated independently at test time
//! (and, for `cnn-aug`, at training time). Models (the official `Gemini` structure, with equirun's
//! small CNN as the per-view feature extractor):
//!
//! | model | per-view group | fusion | CNN passes per tuple |
//! |---|---|---|---|
//! | `cnn` | {id} | – | k |
//! | `cnn-aug` | {id}, rot90 train augmentation | – | k |
//! | `multi-gcnn` | rot90 (equitune per view: invariant features) | – | Σ|Gᵢ| = 4k |
//! | `multi-gcnn-fusion` | rot90 + IS fusion branch (learnable c) | yes | 2·Σ|Gᵢ| = 8k |
//! | `product-gcnn` | equitune of the whole k-view network over rot90^k | – | k·Π|Gᵢ| = k·4^k |
//!
//! Fusion (`--fusion-form official`): hᵢ ← (hᵢ + c(ū − hᵢ))/(1 + c), ū the mean of the views'
//! fusion features; `is`: hᵢ ← hᵢ + c·mean_{j≠i} u_j (the IS sum of §1.5). Head: concat(h₁…h_k)
//! → Linear → 64 → ReLU → Dropout 0.5 → Linear → classes. SGD (momentum 0.9, weight decay 1e-3)
//! as the official recipe but sized for a CPU (3 epochs over 3,000 training images, lr 0.05
//! instead of 100 epochs at 0.01), with the epoch chosen on a validation split held out from the
//! training images (never on the test set), separately for upright and rotated tests.

use super::harness::{self, RunFolder, SeedOutcome};
use super::registry::{self, Experiment};
use crate::cli::opts::{DeviceOpts, RunOpts};
use crate::data::gray::{folder_gray, make_batch, make_tuples, Corruptor, GrayData, Tuples};
use crate::data::images::Split;
use crate::equi::lambda::dropout_mask;
use crate::equi::multi_input::{group_means, multi_input_forward_shared, product_group_mean};
use crate::equi::{ImageOutput, ImageSymmetry, Symmetry};
use crate::groups::image::image_group;
use crate::models::cnn::{self, Cnn, CnnConfig};
use crate::output::{self, progress_bar};
use crate::tools::table::{s, seed_of, Family, Obs};
use crate::train::{Optim, OptimConfig, OptimKind};
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::Instant;

pub const EXPERIMENT: &str = "multi-image";
const FEAT: usize = 64;

/// The models of the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Cnn,
    CnnAug,
    MultiGcnn,
    MultiGcnnFusion,
    ProductGcnn,
}

impl ModelKind {
    pub const ALL: [ModelKind; 5] = [
        ModelKind::Cnn,
        ModelKind::CnnAug,
        ModelKind::MultiGcnn,
        ModelKind::MultiGcnnFusion,
        ModelKind::ProductGcnn,
    ];
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::Cnn => "cnn",
            ModelKind::CnnAug => "cnn-aug",
            ModelKind::MultiGcnn => "multi-gcnn",
            ModelKind::MultiGcnnFusion => "multi-gcnn-fusion",
            ModelKind::ProductGcnn => "product-gcnn",
        }
    }
    pub fn parse_list(s: &str) -> Result<Vec<ModelKind>> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let m = Self::ALL
                .iter()
                .copied()
                .find(|m| m.name() == p)
                .ok_or_else(|| {
                    anyhow!(
                        "unknown model '{p}': valid models are {}",
                        Self::ALL.map(|m| m.name()).join(", ")
                    )
                })?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            bail!("--model is empty");
        }
        Ok(out)
    }
    fn per_view_group(&self) -> bool {
        matches!(self, ModelKind::MultiGcnn | ModelKind::MultiGcnnFusion)
    }
    fn fusion(&self) -> bool {
        *self == ModelKind::MultiGcnnFusion
    }
    /// CNN passes per tuple of k views, with |G| = 4 (rot90) per view: Σ|Gᵢ| per multi-input
    /// layer, k·Π|Gᵢ| for equitune over the product.
    pub fn passes(&self, k: usize) -> usize {
        let orders = vec![ROT90_ORDER; k];
        match self {
            ModelKind::Cnn | ModelKind::CnnAug => k,
            ModelKind::MultiGcnn => orders.iter().sum(),
            ModelKind::MultiGcnnFusion => 2 * orders.iter().sum::<usize>(),
            ModelKind::ProductGcnn => k * orders.iter().product::<usize>(),
        }
    }
}

/// |rot90|.
const ROT90_ORDER: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FusionForm {
    /// The official code: hᵢ ← (hᵢ + c(ū − hᵢ))/(1 + c).
    Official,
    /// The IS sum (docs/methods.md, "Multi-input equivariance"): hᵢ ← hᵢ + c·mean_{j≠i} u_j.
    Is,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MultiDataset {
    /// Fashion-MNIST idx files (train/test splits as shipped).
    FashionMnist,
    /// One sub-folder of images per class (Caltech101's 101_ObjectCategories, 15Scene), read
    /// as grayscale, resized to --image-size, `BACKGROUND_Google` excluded, split 80/20 into
    /// train/test with a fixed seed.
    Folder,
}

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct MultiImageArgs {
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: MultiDataset,
    /// Dataset folder (Fashion-MNIST default: $EQUIRUN_DATA, else Debian's
    /// /usr/share/datasets/fashion-mnist; `folder` needs it).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Side of the square grayscale images of a `folder` dataset (a multiple of 4).
    #[arg(long, default_value_t = 64, value_parser = crate::cli::opts::multiple_of_four)]
    pub image_size: usize,
    /// Views per sample, comma-separated (one run folder per k).
    #[arg(long, default_value = "2,3,4", value_parser = crate::cli::opts::views_list)]
    pub k: String,
    /// Models: cnn, cnn-aug, multi-gcnn, multi-gcnn-fusion, product-gcnn (k·4^k passes: small k only).
    #[arg(
        long = "model",
        alias = "models",
        default_value = "cnn,cnn-aug,multi-gcnn,multi-gcnn-fusion"
    )]
    pub models: String,
    /// Multi-GCNN-Fusion's fusion layer: the official code's form or the paper's.
    #[arg(long, value_enum, default_value = "official")]
    pub fusion_form: FusionForm,
    /// Training images (the first N of the train split), grouped into k-tuples.
    #[arg(long = "limit-train", alias = "train-images", default_value_t = 3000, value_parser = crate::cli::opts::at_least_one)]
    pub train_images: usize,
    /// Validation images (the next N of the train split): model selection only.
    #[arg(long = "val-size", alias = "val-images", default_value_t = 600, value_parser = crate::cli::opts::at_least_one)]
    pub val_images: usize,
    /// Test images (the first N of the test split).
    #[arg(long = "limit-test", alias = "test-images", default_value_t = 1500, value_parser = crate::cli::opts::at_least_one)]
    pub test_images: usize,
    /// Training epochs (SGD).
    #[arg(long, default_value_t = 3, value_parser = crate::cli::opts::at_least_one)]
    pub epochs: usize,
    /// Tuples per SGD step.
    #[arg(long, default_value_t = 32, value_parser = crate::cli::opts::at_least_one)]
    pub batch_size: usize,
    /// SGD learning rate (the official 0.01 is for 100 epochs; 0.05 suits the short CPU budget).
    #[arg(long, default_value_t = 0.05, value_parser = crate::cli::opts::learning_rate)]
    pub lr: f64,
    /// SGD momentum, in [0, 1).
    #[arg(long, default_value_t = 0.9, value_parser = crate::cli::opts::momentum)]
    pub momentum: f64,
    /// SGD weight decay (≥ 0).
    #[arg(long, default_value_t = 1e-3, value_parser = crate::cli::opts::non_negative)]
    pub weight_decay: f64,
    /// Per test tuple and model, on the upright and the rotated test: the columns
    /// `<model>/upright` and `<model>/rotated` of seed-N.predictions.jsonl.gz.
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

/// The multi-view network.
pub struct MultiView {
    pub kind: ModelKind,
    pub k: usize,
    pub form: FusionForm,
    main: Cnn,
    fus: Option<Cnn>,
    c: Option<Var>,
    head: Vec<Var>,
    pub vars: Vec<Var>,
    /// The group of each view inside the network: rot90 for multi-gcnn(-fusion), else {id}.
    view_sym: ImageSymmetry,
    /// product-gcnn: the group of each view in the black-box equitune over the product.
    product_sym: Option<ImageSymmetry>,
    /// CNN image passes so far (counted).
    pub passes: Cell<usize>,
    /// The device of the variables.
    pub dev: Device,
}

fn uniform(rng: &mut impl Rng, shape: &[usize], fan_in: usize, dev: &Device) -> Result<Var> {
    let b = 1.0 / (fan_in as f32).sqrt();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-b..b)).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(v, shape, dev)?)?)
}

impl MultiView {
    pub fn new(
        kind: ModelKind,
        k: usize,
        form: FusionForm,
        cfg: &CnnConfig,
        seed: u64,
    ) -> Result<Self> {
        Self::new_on(kind, k, form, cfg, seed, &Device::Cpu)
    }

    /// [`MultiView::new`] with the variables on `dev`.
    pub fn new_on(
        kind: ModelKind,
        k: usize,
        form: FusionForm,
        cfg: &CnnConfig,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        let dev = dev.clone();
        let (vm_main, main) = Cnn::init(cfg, output::derive_seed(seed, "main-cnn"), &dev)?;
        let mut vars = cnn::vars(cfg, &vm_main)?;
        let (fus, c) = if kind.fusion() {
            let (vm, f) = Cnn::init(cfg, output::derive_seed(seed, "fusion-cnn"), &dev)?;
            vars.extend(cnn::vars(cfg, &vm)?);
            let c = Var::from_tensor(&Tensor::new(&[0.1f32], &dev)?)?;
            vars.push(c.clone());
            (Some(f), Some(c))
        } else {
            (None, None)
        };
        let mut rng = output::rng_for(seed, "multi-view-head");
        let head = vec![
            uniform(&mut rng, &[FEAT, k * cfg.hidden], k * cfg.hidden, &dev)?,
            uniform(&mut rng, &[FEAT], k * cfg.hidden, &dev)?,
            uniform(&mut rng, &[cfg.classes, FEAT], FEAT, &dev)?,
            uniform(&mut rng, &[cfg.classes], FEAT, &dev)?,
        ];
        vars.extend(head.iter().cloned());
        let view_group = if kind.per_view_group() {
            image_group("rot90")?
        } else {
            image_group("id")?
        };
        let product_sym = (kind == ModelKind::ProductGcnn)
            .then(|| -> Result<_> {
                Ok(ImageSymmetry::new(
                    image_group("rot90")?,
                    ImageOutput::Invariant,
                    0,
                ))
            })
            .transpose()?;
        Ok(Self {
            kind,
            k,
            form,
            main,
            fus,
            c,
            head,
            vars,
            view_sym: ImageSymmetry::new(view_group, ImageOutput::Invariant, 0),
            product_sym,
            passes: Cell::new(0),
            dev,
        })
    }

    /// `net`'s penultimate features as a [`crate::equi::BatchModel`], counting its passes.
    fn features<'b>(&'b self, net: &'b Cnn) -> impl Fn(&Tensor) -> Result<Tensor> + 'b {
        move |x: &Tensor| {
            self.passes.set(self.passes.get() + x.dim(0)?);
            Ok(net.forward(x, None)?.0)
        }
    }

    /// Logits [B, classes] of k views (each [B, 1, S, S]); dropout from `rng` when training.
    fn network(
        &self,
        views: &[Tensor],
        rng: Option<&RefCell<rand_chacha::ChaCha8Rng>>,
    ) -> Result<Tensor> {
        // the multi-input layer (docs/methods.md, "Multi-input equivariance"): per view the
        // equitune branch M^Eq over its group (invariant features), and for the fusion model the
        // IS features u_j = mean_g fus(g·x_j)
        let syms: Vec<&dyn Symmetry> = vec![&self.view_sym; self.k];
        let main = self.features(&self.main);
        let mut h = Tensor::stack(&multi_input_forward_shared(&syms, &main, None, views)?, 0)?; // [k, B, H]
        if let (Some(fus), Some(c)) = (&self.fus, &self.c) {
            let fus = self.features(fus);
            let u = Tensor::stack(&group_means(&syms, &fus, views, false)?, 0)?;
            let c = c.as_tensor();
            h = match self.form {
                FusionForm::Official => {
                    let ubar = u.mean_keepdim(0)?;
                    let num = (&h + ubar.broadcast_sub(&h)?.broadcast_mul(c)?)?;
                    num.broadcast_div(&(c + 1.0)?)?
                }
                FusionForm::Is => {
                    let k = self.k as f64;
                    let others = (u.sum_keepdim(0)?.broadcast_sub(&u)? / (k - 1.0).max(1.0))?;
                    (&h + others.broadcast_mul(c)?)?
                }
            };
        }
        let (k, b, hd) = h.dims3()?;
        let cat = h.transpose(0, 1)?.reshape((b, k * hd))?;
        let z = cat
            .matmul(&self.head[0].as_tensor().t()?)?
            .broadcast_add(self.head[1].as_tensor())?
            .relu()?;
        let z = match rng {
            Some(r) => z.broadcast_mul(&dropout_mask(z.dims(), 0.5, r, z.device())?)?,
            None => z,
        };
        Ok(z.matmul(&self.head[2].as_tensor().t()?)?
            .broadcast_add(self.head[3].as_tensor())?)
    }

    /// The model's logits: for `product-gcnn` the mean over every element of rot90^k of the
    /// whole network on the transformed views (black-box equitune over the product).
    pub fn logits(
        &self,
        views: &[Tensor],
        rng: Option<&RefCell<rand_chacha::ChaCha8Rng>>,
    ) -> Result<Tensor> {
        match &self.product_sym {
            None => self.network(views, rng),
            Some(sym) => {
                let syms: Vec<&dyn Symmetry> = vec![sym; self.k];
                product_group_mean(&syms, &|moved: &[Tensor]| self.network(moved, rng), views)
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self
            .vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    }
    fn restore(&self, s: &[Tensor]) -> Result<()> {
        for (v, t) in self.vars.iter().zip(s) {
            v.set(t)?;
        }
        Ok(())
    }
}

/// The views of a batch of tuples: k tensors [B, 1, S, S], view v of tuple `rows[j]` transformed
/// by `elems[j][v]` (rot90 powers).
fn views_of(
    d: &GrayData,
    tuples: &Tuples,
    rows: &[usize],
    elems: &[Vec<usize>],
    c: &Corruptor,
    dev: &Device,
) -> Result<(Vec<Tensor>, Tensor)> {
    let k = tuples.idx[0].len();
    let mut views = Vec::with_capacity(k);
    for v in 0..k {
        let idx: Vec<usize> = rows.iter().map(|&r| tuples.idx[r][v]).collect();
        let el: Vec<usize> = elems.iter().map(|e| e[v]).collect();
        views.push(make_batch(d, &idx, &el, c, dev)?.0);
    }
    let labels: Vec<u32> = rows.iter().map(|&r| tuples.labels[r]).collect();
    Ok((views, Tensor::from_vec(labels, rows.len(), dev)?))
}

fn accuracy(
    m: &MultiView,
    d: &GrayData,
    t: &Tuples,
    elems: &[Vec<usize>],
    c: &Corruptor,
    batch: usize,
) -> Result<f64> {
    accuracy_rec(m, d, t, elems, c, batch, None)
}

/// [`accuracy`]; with `rec`, also every tuple's (argmax class, softmax probabilities).
fn accuracy_rec(
    m: &MultiView,
    d: &GrayData,
    t: &Tuples,
    elems: &[Vec<usize>],
    c: &Corruptor,
    batch: usize,
    mut rec: Option<&mut Vec<(usize, Vec<f32>)>>,
) -> Result<f64> {
    let rows: Vec<usize> = (0..t.labels.len()).collect();
    let mut correct = 0usize;
    for chunk in rows.chunks(batch.max(1)) {
        let (views, y) = views_of(d, t, chunk, &elems[chunk[0]..chunk[0] + chunk.len()], c, &m.dev)?;
        let logits = m.logits(&views, None)?;
        let p = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        if let Some(r) = rec.as_deref_mut() {
            let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
            r.extend(p.iter().map(|&c| c as usize).zip(probs));
        }
        correct += p
            .iter()
            .zip(y.to_vec1::<u32>()?)
            .filter(|(a, b)| **a == *b)
            .count();
    }
    Ok(100.0 * correct as f64 / t.labels.len().max(1) as f64)
}

fn draw_elems(rng: &mut impl Rng, n: usize, k: usize, rotate: bool) -> Vec<Vec<usize>> {
    (0..n)
        .map(|_| {
            (0..k)
                .map(|_| {
                    if rotate {
                        rng.random_range(0..ROT90_ORDER)
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect()
}

/// The SGD recipe of the run (docs/experiments.md#multi-image).
fn sgd(a: &MultiImageArgs) -> OptimConfig {
    OptimConfig {
        kind: OptimKind::Sgd,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
    }
}

/// Trains one model and evaluates it; returns its metrics JSON.
#[allow(clippy::too_many_arguments)]
fn train_eval(
    a: &MultiImageArgs,
    kind: ModelKind,
    k: usize,
    seed: u64,
    train: &GrayData,
    test: &GrayData,
    sets: &Sets,
    rot: &Corruptor,
    cfg: &CnnConfig,
    mut rec: Option<&mut [Vec<(usize, Vec<f32>)>; 2]>,
    dev: &Device,
) -> Result<Value> {
    let cfg = cfg.clone();
    let m = MultiView::new_on(kind, k, a.fusion_form, &cfg, seed, dev)?;
    let mut opt = Optim::new(m.vars.clone(), sgd(a))?;
    let n = sets.train.labels.len();
    let steps = n.div_ceil(a.batch_size.max(1));
    let pb = progress_bar(
        (a.epochs * steps) as u64,
        &format!("k={k} seed {seed} {}", kind.name()),
    );
    let mut order_rng = output::rng_for(seed, &format!("order-{}", kind.name()));
    let mut aug_rng = output::rng_for(seed, &format!("aug-{}", kind.name()));
    let drop_rng = RefCell::new(output::rng_for(seed, &format!("dropout-{}", kind.name())));
    let (mut best_up, mut best_rot): ((f64, usize, Vec<Tensor>), (f64, usize, Vec<Tensor>)) =
        ((-1.0, 0, vec![]), (-1.0, 0, vec![]));
    let mut curve = Vec::new();
    let mut epoch_seconds = Vec::new();
    let mut train_passes = 0usize;
    for epoch in 1..=a.epochs {
        let t0 = Instant::now();
        let mut rows: Vec<usize> = (0..n).collect();
        rows.shuffle(&mut order_rng);
        let mut loss_sum = 0.0;
        let p0 = m.passes.get();
        for chunk in rows.chunks(a.batch_size.max(1)) {
            let elems = draw_elems(&mut aug_rng, chunk.len(), k, kind == ModelKind::CnnAug);
            let (views, y) = views_of(train, &sets.train, chunk, &elems, rot, &m.dev)?;
            let logits = m.logits(&views, Some(&drop_rng))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            opt.step(&loss.backward()?)?;
            pb.inc(1);
        }
        train_passes += m.passes.get() - p0;
        let secs = t0.elapsed().as_secs_f64();
        epoch_seconds.push(secs);
        let vu = accuracy(&m, train, &sets.val, &sets.val_up, rot, 256)?;
        let vr = accuracy(&m, train, &sets.val, &sets.val_rot, rot, 256)?;
        curve.push(json!({"epoch": epoch, "train_loss": loss_sum / n as f64, "val_upright": vu, "val_rotated": vr, "seconds": secs}));
        if vu > best_up.0 {
            best_up = (vu, epoch, m.snapshot()?);
        }
        if vr > best_rot.0 {
            best_rot = (vr, epoch, m.snapshot()?);
        }
    }
    pb.finish_and_clear();
    m.restore(&best_up.2)?;
    let (up_rec, rot_rec) = match rec.as_deref_mut() {
        Some([u, r]) => (Some(u), Some(r)),
        None => (None, None),
    };
    let test_up = accuracy_rec(&m, test, &sets.test, &sets.test_up, rot, 256, up_rec)?;
    m.restore(&best_rot.2)?;
    let test_rot = accuracy_rec(&m, test, &sets.test, &sets.test_rot, rot, 256, rot_rec)?;
    Ok(json!({
        "test_upright": test_up, "test_rotated": test_rot,
        "selected_epoch": {"upright": best_up.1, "rotated": best_rot.1},
        "val_best": {"upright": best_up.0, "rotated": best_rot.0},
        "curve": curve,
        "passes_per_tuple": kind.passes(k),
        "measured_train_passes_per_tuple": train_passes as f64 / (n * a.epochs) as f64,
        "epoch_seconds": epoch_seconds,
        "parameters": m.vars.iter().map(|v| v.elem_count()).sum::<usize>(),
    }))
}

struct Sets {
    train: Tuples,
    val: Tuples,
    test: Tuples,
    val_up: Vec<Vec<usize>>,
    val_rot: Vec<Vec<usize>>,
    test_up: Vec<Vec<usize>>,
    test_rot: Vec<Vec<usize>>,
}

pub fn run(a: &MultiImageArgs) -> Result<Vec<PathBuf>> {
    let models = ModelKind::parse_list(&a.models)?;
    let ks: Vec<usize> =
        a.k.split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| anyhow!("--k: '{s}' is not a number"))
            })
            .collect::<Result<_>>()?;
    if let Some(k) = ks.iter().find(|&&k| !(1..=6).contains(&k)) {
        bail!("--k {k}: views per sample must be between 1 and 6");
    }
    if models.contains(&ModelKind::ProductGcnn) && ks.iter().any(|&k| k > 4) {
        bail!("product-gcnn costs k·4^k passes per tuple: use it with k ≤ 4");
    }
    if a.epochs == 0 || a.batch_size == 0 {
        bail!("--epochs and --batch-size must be positive");
    }
    sgd(a).validate("--lr, --momentum, --weight-decay")?;
    let dev = a.compute.training("multi-image")?;
    let seeds = a.run.seed_list()?;
    let (train, test, classes) = match a.dataset {
        MultiDataset::FashionMnist => (
            GrayData::load(
                a.data_dir.as_deref(),
                Split::Train,
                Some(a.train_images + a.val_images),
            )?,
            GrayData::load(a.data_dir.as_deref(), Split::Test, Some(a.test_images))?,
            10,
        ),
        MultiDataset::Folder => {
            let dir = a.data_dir.as_deref().ok_or_else(|| {
                anyhow!(
                    "--dataset folder needs --data-dir PATH (one sub-folder of images per class)"
                )
            })?;
            let (mut tr, mut te, names) = folder_gray(dir, a.image_size)?;
            let n = (a.train_images + a.val_images).min(tr.len());
            tr.labels.truncate(n);
            tr.pixels.truncate(n * tr.side * tr.side);
            let m = a.test_images.min(te.len());
            te.labels.truncate(m);
            te.pixels.truncate(m * te.side * te.side);
            (tr, te, names.len())
        }
    };
    let cfg = CnnConfig {
        in_channels: 1,
        image_size: train.side,
        classes,
        ..CnnConfig::fashion_mnist()
    };
    if train.len() < a.train_images + a.val_images {
        bail!(
            "{} has {} training images; --limit-train {} + --val-size {} is too many",
            train.source.display(),
            train.len(),
            a.train_images,
            a.val_images
        );
    }
    let rot = Corruptor::new(Some(image_group("rot90")?), train.side)?;
    let mut written = Vec::new();
    for &k in &ks {
        let mut config = json!({
            "dataset": a.dataset, "train_source": train.source.display().to_string(),
            "image_size": train.side, "classes": classes,
            "k": k, "models": models.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "fusion_form": a.fusion_form, "train_images": a.train_images, "val_images": a.val_images,
            "test_images": test.len(), "epochs": a.epochs, "batch_size": a.batch_size,
            "optimizer": {"kind": "sgd", "lr": a.lr, "momentum": a.momentum, "weight_decay": a.weight_decay},
            "backbone": {"cnn": cfg, "features": "penultimate (64), group mean per view"},
            "head": "concat(k·64) → 64 → ReLU → Dropout 0.5 → 10",
            "selection": "best validation epoch, separately for upright and per-view-rotated tests",
            "tuples": "consecutive same-class images, remainder dropped, shuffled per seed",
        });
        crate::device::record_in_config(&mut config, &dev, candle_core::DType::F32);
        let name = match &a.run.run_name {
            Some(n) => format!("{n}-k{k}"),
            None => harness::run_name(None, &[&format!("k{k}")], &config),
        };
        let folder = RunFolder::new(&a.run, EXPERIMENT, name, &config);
        super::predictions::warn_skipped(&a.predictions, &folder, &seeds);
        written.extend(folder.run_seeds(&seeds, |seed, seed_path| {
            let t0 = Instant::now();
            let mut trng = output::rng_for(seed, "tuples");
            let train_idx: Vec<usize> = (0..a.train_images).collect();
            let val_idx: Vec<usize> = (a.train_images..a.train_images + a.val_images).collect();
            let test_idx: Vec<usize> = (0..test.len()).collect();
            let tr = make_tuples(&train.labels, &train_idx, k, &mut trng);
            let va = make_tuples(&train.labels, &val_idx, k, &mut trng);
            let te = make_tuples(&test.labels, &test_idx, k, &mut trng);
            if tr.labels.is_empty() || va.labels.is_empty() || te.labels.is_empty() {
                bail!("k = {k}: too few images for one tuple per split; raise --limit-train/--val-size/--limit-test");
            }
            let mut erng = output::rng_for(seed, "eval-rotations");
            let sets = Sets {
                val_up: draw_elems(&mut erng, va.labels.len(), k, false),
                val_rot: draw_elems(&mut erng, va.labels.len(), k, true),
                test_up: draw_elems(&mut erng, te.labels.len(), k, false),
                test_rot: draw_elems(&mut erng, te.labels.len(), k, true),
                train: tr,
                val: va,
                test: te,
            };
            let mut metrics = serde_json::Map::new();
            let mut collector = super::predictions::Collector::new(&a.predictions);
            let mut per_model: Vec<[Vec<(usize, Vec<f32>)>; 2]> = Vec::new();
            for &kind in &models {
                let mut rec = [Vec::new(), Vec::new()];
                let r = train_eval(
                    a,
                    kind,
                    k,
                    seed,
                    &train,
                    &test,
                    &sets,
                    &rot,
                    &cfg,
                    collector.enabled.then_some(&mut rec),
                    &dev,
                )?;
                per_model.push(rec);
                eprintln!(
                    "k={k} seed {seed} {:18} test upright {:.2}%  rotated {:.2}%  ({:.1} s/epoch, {} passes/tuple)",
                    kind.name(),
                    r["test_upright"].as_f64().unwrap_or(0.0),
                    r["test_rotated"].as_f64().unwrap_or(0.0),
                    r["epoch_seconds"].as_array().map(|v| v.iter().filter_map(|x| x.as_f64()).sum::<f64>() / v.len().max(1) as f64).unwrap_or(0.0),
                    kind.passes(k)
                );
                metrics.insert(kind.name().into(), r);
            }
            if collector.enabled {
                let names: Vec<String> = models
                    .iter()
                    .flat_map(|m| [format!("{}/upright", m.name()), format!("{}/rotated", m.name())])
                    .collect();
                for (j, &label) in sets.test.labels.iter().enumerate() {
                    let label = label as usize;
                    let mut methods = serde_json::Map::new();
                    for (mi, rec) in per_model.iter().enumerate() {
                        for (t, r) in rec.iter().enumerate() {
                            let (pred, probs) = &r[j];
                            let (top, scores) = super::predictions::top_k(probs, super::predictions::TOP_K);
                            methods.insert(
                                names[2 * mi + t].clone(),
                                json!({"pred": pred, "correct": *pred == label, "top": top, "scores": scores}),
                            );
                        }
                    }
                    collector.rows.push(json!({
                        "index": j, "label": label, "images": sets.test.idx[j],
                        "rotations": sets.test_rot[j], "methods": methods,
                    }));
                }
                let class_names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
                let header = super::predictions::class_header(
                    EXPERIMENT,
                    seed,
                    &names.iter().map(String::as_str).collect::<Vec<_>>(),
                    &class_names,
                    "softmax of the logits",
                    json!({"k": k, "images": "test-split indices of the tuple's views", "rotations": "rot90 power per view on the rotated test (the upright test uses none)"}),
                );
                collector.write(seed_path, &header)?;
            }
            Ok(SeedOutcome {
                metrics: json!({"models": metrics, "tuples": {"train": sets.train.labels.len(), "val": sets.val.labels.len(), "test": sets.test.labels.len()}}),
                cost: json!({"seconds": t0.elapsed().as_secs_f64(), "peak_rss_mib": output::peak_rss_mib()}),
                summary: String::new(),
            })
        })?);
    }
    Ok(written)
}

// ---------------------------------------------------------------------------------------------
// what `equirun report` tabulates

/// Per (k, upright / rotated test tuples) and model: test accuracy at the validation-selected epoch.
pub fn extract_multi_image(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let setting = vec![
        ("train images".to_string(), s(&c["train_images"])),
        ("epochs".into(), s(&c["epochs"])),
        ("lr".into(), s(&c["optimizer"]["lr"])),
        ("fusion".into(), s(&c["fusion_form"])),
    ];
    let mut out = Vec::new();
    for (model, m) in rec["metrics"]["models"].as_object().into_iter().flatten() {
        for (key, label) in [
            ("test_upright", "upright"),
            ("test_rotated", "rotated per view"),
        ] {
            let Some(x) = m[key].as_f64() else { continue };
            out.push(Obs {
                family: Family::MultiImage,
                title: "Multi-image Fashion-MNIST: test accuracy (%)".into(),
                setting: setting.clone(),
                row: vec![s(&c["k"]), label.into()],
                column: model.clone(),
                seed: seed_of(rec),
                value: x,
                source: source.into(),
            });
        }
    }
    out
}

pub const ENTRY: Experiment = Experiment {
    name: EXPERIMENT,
    words: &["multi-image"],
    command: Some(registry::Command {
        name: "multi-image",
        about: "Multi-input equivariance on k-tuples of Fashion-MNIST images (CNN, CNN-Aug, \
                Multi-GCNN, Multi-GCNN-Fusion): per-view rot90 groups, Σ|Gᵢ| passes instead of Π|Gᵢ|",
        args: <MultiImageArgs as clap::Args>::augment_args,
        run: |m| registry::run_with(m, run),
    }),
    // one folder per k: `<run-name>-k<k>`
    run_folders: |flag, run_name| {
        let ks = flag("k")?.unwrap_or_else(|| "2,3,4".into());
        Ok(ks
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| format!("{run_name}-k{k}"))
            .collect())
    },
    extract: Some(extract_multi_image),
};
