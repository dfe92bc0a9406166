//! Option groups shared by the experiments' command lines, flattened into each experiment's
//! `Args` (`#[command(flatten)]`). A group declares a flag once — its name, type, help and
//! validation; an experiment whose default differs sets it with
//! `#[command(mut_arg("flag", |a| a.default_value("...")))]` on its `Args`.
//!
//! Every group serialises flattened (`#[serde(flatten)]` at the use site), so an `Args` value
//! reads as it did before the groups existed.

use crate::groups::image::{image_group, D4};
use crate::groups::FiniteGroup;
use crate::hub::ModelSource;
use crate::train::{OptimKind, Schedule, Select};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use crate::device::DeviceOpts;

/// Options shared by every experiment that writes results.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunOpts {
    /// Seeds to run, e.g. `0,1,2` or `0-4`; one JSON per seed.
    #[arg(long, default_value = "0", alias = "seed")]
    pub seeds: String,
    /// Results root: files go to <out>/<experiment>/<run-name>/seed-<n>.json.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Run folder name (default: derived from the config, with a short config hash). One path
    /// segment: no `/`, backslash, `.` or `..`, so results stay inside `<out>/<experiment>/`.
    #[arg(long, value_parser = run_name_segment)]
    pub run_name: Option<String>,
    /// Recompute and overwrite results that already exist.
    #[arg(long)]
    pub force: bool,
}

impl RunOpts {
    /// The parsed `--seeds`.
    pub fn seed_list(&self) -> Result<Vec<u64>> {
        crate::output::parse_seeds(&self.seeds).context("--seeds")
    }
}

/// Where a model's weights come from. No built-in default: each experiment names its own
/// ([`ModelOpts::source`]).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelOpts {
    /// Model: a Hugging Face id (resolved through the HF cache; downloaded only when online) or a
    /// name the experiment knows (CLIP paper names such as RN50, ViT-B/32; `smollm2`). Default:
    /// the experiment's model (see the command's description).
    #[arg(long)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// A local snapshot folder (config.json, model.safetensors, tokenizer.json); overrides --model.
    #[arg(long, value_name = "PATH")]
    pub model_dir: Option<PathBuf>,
}

impl ModelOpts {
    /// The model id: `--model`, else `default`.
    pub fn id<'a>(&'a self, default: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(default)
    }

    /// The hub source, `default` standing in for a missing `--model`.
    pub fn source(&self, default: &str) -> ModelSource {
        ModelSource {
            model: self.id(default).to_string(),
            revision: self.revision.clone(),
            model_dir: self.model_dir.clone(),
        }
    }
}

/// The default CLIP of `clip`, `clip finetune`, `bench-clip` and `check --model`.
pub const DEFAULT_CLIP: &str = "openai/clip-vit-base-patch32";

impl DeviceOpts {
    /// For inference commands: the device and dtype (f32, f16, or bf16 off the CPU). Scoring
    /// (softmax, accuracy) stays f32 whatever the dtype.
    pub fn inference(&self) -> Result<(candle_core::Device, candle_core::DType)> {
        self.resolve()
    }

    /// For commands that train: any device, but f32 only (a clear error instead of silently
    /// training in half precision).
    pub fn training(&self, command: &str) -> Result<candle_core::Device> {
        self.f32_only(command, "trains, and training runs in f32")
    }

    /// Any device, f32 only, `why` completing "`equirun <command>` …" in the error.
    pub fn f32_only(&self, command: &str, why: &str) -> Result<candle_core::Device> {
        let dtype = crate::device::parse_dtype(&self.dtype).context("--dtype")?;
        if dtype != candle_core::DType::F32 {
            bail!(
                "--dtype {}: `equirun {command}` {why}; --dtype applies to the inference commands \
                 (clip, bench-clip, check, gpt2-fairness, bench-lm, regard eval, regard score). Omit \
                 --dtype or pass --dtype f32",
                self.dtype
            );
        }
        let (dev, _) = self.resolve()?;
        Ok(dev)
    }
}

/// The wrapper group and the corruption of an image experiment.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GroupOpts {
    /// Symmetry group of the wrappers: rot90, flip (=vflip), hflip, vflip, rot180, id, or a
    /// product with 'x' such as rot90xflip (D4) or rot90xhflip (multi-* need a product).
    #[arg(long, default_value = "rot90", value_parser = image_group_spec)]
    pub group: String,
    /// Corruption group, one random element per image (seeded); default = --group; `none` for
    /// clean images.
    #[arg(long, value_parser = transform_spec)]
    pub transform: Option<String>,
}

impl GroupOpts {
    /// The wrapper group.
    pub fn group(&self) -> Result<FiniteGroup<D4>> {
        image_group(&self.group).context("--group")
    }

    /// The corruption group (`None` = clean images).
    pub fn transform(&self) -> Result<Option<FiniteGroup<D4>>> {
        match self.transform.as_deref().map(str::trim) {
            None => Ok(Some(self.group()?)),
            Some("none") | Some("") => Ok(None),
            Some(t) => Ok(Some(image_group(t).context("--transform")?)),
        }
    }

    /// The corruption's name as given (`--transform`, else `--group`).
    pub fn transform_spec(&self) -> String {
        self.transform.clone().unwrap_or_else(|| self.group.clone())
    }
}

/// `--method`: the wrappers to run (parsed by [`crate::equi::Method::parse_list`]).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MethodOpts {
    /// Methods, comma-separated (see docs/methods.md): vanilla, equitune, equizero,
    /// multi-equitune, multi-equizero, and where the experiment supports them lambda-equitune,
    /// r-equitune.
    #[arg(long, default_value = "vanilla,equitune,equizero", value_parser = method_list)]
    pub method: String,
}

/// `--logit-scale`: the softmax scale on CLIP's cosine similarities.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogitScaleOpts {
    /// Softmax scale on cosine similarities: a number (papers: 1.0) or `model` for CLIP's
    /// learned scale.
    #[arg(long, default_value = "1.0")]
    pub logit_scale: String,
}

impl LogitScaleOpts {
    /// `Some(v)` for a fixed positive scale, `None` for the model's own.
    pub fn fixed(&self) -> Result<Option<f32>> {
        match self.logit_scale.trim() {
            "model" => Ok(None),
            s => {
                let v: f32 = s.parse().with_context(|| {
                    format!("--logit-scale '{s}': expected a number or 'model'")
                })?;
                if !v.is_finite() || v <= 0.0 {
                    bail!("--logit-scale must be positive, got {v}");
                }
                Ok(Some(v))
            }
        }
    }
}

/// The backbone finetuning schedule (rounds × iterations, optimiser, selection).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinetuneOpts {
    /// Finetuning batch size (input images; each costs one pass per copy).
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub batch_size: usize,
    /// Finetuning rounds (validation after each; the best round is kept).
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub rounds: usize,
    /// Finetuning iterations per round.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub iters: usize,
    /// Finetuning optimiser.
    #[arg(long, value_enum, default_value = "adamw")]
    pub optim: OptimKind,
    /// Finetuning learning rate (> 0).
    #[arg(long, default_value_t = 1e-4, value_parser = learning_rate)]
    pub lr: f64,
    /// Momentum (SGD only), in [0, 1).
    #[arg(long, default_value_t = 0.9, value_parser = momentum)]
    pub momentum: f64,
    /// Decoupled weight decay (≥ 0).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub weight_decay: f64,
    /// Which round each finetuning phase keeps.
    #[arg(long, value_enum, default_value = "best-val")]
    pub select: Select,
}

impl FinetuneOpts {
    /// The validated backbone schedule.
    pub fn schedule(&self) -> Result<Schedule> {
        Schedule::from_flags(
            self.rounds,
            self.iters,
            self.optim,
            self.lr,
            self.momentum,
            self.weight_decay,
            "finetuning (--lr, --momentum, --weight-decay)",
        )
    }
}

/// λ-equitune's λ-net phase.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LambdaOpts {
    /// λ-equitune form: paper (softplus weights normalised over the orbit) or official (λ as a
    /// per-copy inverse temperature).
    #[arg(long, value_enum, default_value = "paper")]
    pub lambda_form: crate::equi::lambda::LambdaForm,
    /// λ-equitune phase 1 (λ-net only, backbone frozen): rounds.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    pub lambda_rounds: usize,
    /// λ-equitune phase 1: iterations per round.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub lambda_iters: usize,
    /// λ-equitune phase 1: optimiser of the λ-net.
    #[arg(long, value_enum, default_value = "adamw")]
    pub lambda_optim: OptimKind,
    /// λ-equitune phase 1: learning rate (> 0).
    #[arg(long, default_value_t = 1e-3, value_parser = learning_rate)]
    pub lambda_lr: f64,
    /// λ-equitune phase 1: momentum (SGD only), in [0, 1).
    #[arg(long, default_value_t = 0.9, value_parser = momentum)]
    pub lambda_momentum: f64,
}

impl LambdaOpts {
    /// The validated λ-net schedule.
    pub fn schedule(&self) -> Result<Schedule> {
        Schedule::from_flags(
            self.lambda_rounds,
            self.lambda_iters,
            self.lambda_optim,
            self.lambda_lr,
            self.lambda_momentum,
            0.0,
            "λ-net training (--lambda-lr, --lambda-momentum)",
        )
    }
}

// Range checks run by clap while parsing (bad values exit with code 2 and name the flag, before
// any work starts). Used as `#[arg(value_parser = …)]` by the option groups and experiments.

/// A `--run-name`: one non-empty path segment, so that results cannot land outside
/// `<out>/<experiment>/`.
pub fn run_name_segment(s: &str) -> std::result::Result<String, String> {
    let bad = s.is_empty()
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == '\\' || c == '\0' || c.is_control())
        || s.len() > 200;
    if bad {
        return Err(format!(
            "'{}' is not a run folder name: use one path segment (letters, digits, '-', '_', '.'; \
             no '/', no '..', at most 200 bytes)",
            s.escape_debug()
        ));
    }
    Ok(s.to_string())
}

/// An integer ≥ 1 (counts, batch sizes, resamples, parallel jobs).
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number ≥ 1")),
    }
}

/// An integer ≥ 2 (class counts: one class makes every probability 1).
pub fn at_least_two(s: &str) -> std::result::Result<usize, String> {
    match at_least_one(s)? {
        1 => Err("must be at least 2".into()),
        n => Ok(n),
    }
}

fn finite(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("'{s}' is not a finite number")),
    }
}

/// A probability in [0, 1].
pub fn probability(s: &str) -> std::result::Result<f64, String> {
    let x = finite(s)?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{x} is outside [0, 1]"));
    }
    Ok(x)
}

/// A fraction strictly between 0 and 1 (a held-out split: 0 would leave nothing to validate on,
/// 1 nothing to train on).
pub fn open_fraction(s: &str) -> std::result::Result<f64, String> {
    let x = finite(s)?;
    if !(x > 0.0 && x < 1.0) {
        return Err(format!(
            "{x} is outside (0, 1): it must leave examples on both sides"
        ));
    }
    Ok(x)
}

/// A finite number > 0 (a scale).
pub fn positive_f32(s: &str) -> std::result::Result<f32, String> {
    let x = finite(s)?;
    // in f32: a tiny positive f64 such as 1e-320 rounds to 0, a huge one to infinity
    let y = x as f32;
    if x <= 0.0 || !y.is_finite() || y <= 0.0 {
        return Err(format!("{x} must be a finite number > 0 (in f32)"));
    }
    Ok(y)
}

/// A finite number > 0 (learning rates, gradient-norm clips, tolerances).
pub fn positive_f64(s: &str) -> std::result::Result<f64, String> {
    let x = finite(s)?;
    if x <= 0.0 {
        return Err(format!("{x} must be a finite number > 0"));
    }
    Ok(x)
}

/// A finite number ≥ 0 (weight decay).
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    let x = finite(s)?;
    if x < 0.0 {
        return Err(format!("{x} must be a finite number ≥ 0"));
    }
    Ok(x)
}

/// An SGD momentum in [0, 1) (1 never forgets a gradient: the steps grow without bound).
pub fn momentum(s: &str) -> std::result::Result<f64, String> {
    let x = finite(s)?;
    if !(0.0..1.0).contains(&x) {
        return Err(format!("{x} is outside [0, 1)"));
    }
    Ok(x)
}

/// A positive multiple of 4 (image sides that rot90 and the CNN's pooling keep whole).
pub fn multiple_of_four(s: &str) -> std::result::Result<usize, String> {
    let n = at_least_one(s)?;
    if n % 4 != 0 {
        return Err(format!("{n} is not a multiple of 4"));
    }
    Ok(n)
}

/// A comma-separated list of views per sample, each in 1..=6 (the multi-input groups grow as
/// 4^k); the list is kept as written.
pub fn views_list(s: &str) -> std::result::Result<String, String> {
    let items: Vec<&str> = s.split(',').map(str::trim).collect();
    if items.iter().all(|k| k.is_empty()) {
        return Err("expected a comma-separated list such as `2,3,4`".into());
    }
    for k in items.iter().filter(|k| !k.is_empty()) {
        match k.parse::<usize>() {
            Ok(n) if (1..=6).contains(&n) => {}
            _ => return Err(format!("'{k}': views per sample must be between 1 and 6")),
        }
    }
    Ok(s.to_string())
}

/// A tokenizer budget for the BERT-style scorers: [CLS] + at least one piece + [SEP], at most
/// their 512 positions.
pub fn max_pieces(s: &str) -> std::result::Result<usize, String> {
    let n = at_least_one(s)?;
    if !(3..=512).contains(&n) {
        return Err(format!(
            "{n} is outside [3, 512] ([CLS], the pieces and [SEP] share 512 positions)"
        ));
    }
    Ok(n)
}

/// An image group spec (`rot90`, `rot90xflip`, …), checked by building the group (bounded, see
/// [`crate::groups::image::image_group`]); kept as written.
pub fn image_group_spec(s: &str) -> std::result::Result<String, String> {
    image_group(s).map_err(|e| format!("{e:#}"))?;
    Ok(s.to_string())
}

/// A corruption spec: an image group spec or `none`.
pub fn transform_spec(s: &str) -> std::result::Result<String, String> {
    match s.trim() {
        "none" | "" => Ok(s.to_string()),
        _ => image_group_spec(s),
    }
}

/// A comma-separated list of known method names (which of them an experiment supports is
/// checked by the experiment); kept as written.
pub fn method_list(s: &str) -> std::result::Result<String, String> {
    crate::equi::Method::parse_list(s).map_err(|e| format!("{e:#}"))?;
    Ok(s.to_string())
}

/// `clip finetune --dataset`: the datasets with a train split it reads (CIFAR-100, CIFAR-10).
pub fn finetune_dataset(s: &str) -> std::result::Result<crate::data::images::DatasetKind, String> {
    use crate::data::images::DatasetKind;
    match s.trim().to_ascii_lowercase().as_str() {
        "cifar100" => Ok(DatasetKind::Cifar100),
        "cifar10" => Ok(DatasetKind::Cifar10),
        _ => Err(format!(
            "'{s}': finetuning needs a train split, which equirun reads for cifar100 and cifar10 only"
        )),
    }
}

/// A learning rate: a finite number > 0.
pub fn learning_rate(s: &str) -> std::result::Result<f64, String> {
    positive_f64(s).map_err(|e| format!("a learning rate must be a finite number > 0 ({e})"))
}
