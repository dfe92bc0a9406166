//! Training through any wrapper (docs/methods.md, "Finetuning through a wrapper"): the loss is
//! taken on the wrapped output and gradients flow into the backbone through every transformed
//! copy. Optimisers, schedules, the phase runner and the straight-through estimator live here.
//!
//! * vanilla / equitune / multi-equitune: the [`Evaluator`] output itself
//!   (it is differentiable: narrow, stack, f64 sums and casts all have gradients);
//! * equizero / multi-equizero: the **straight-through estimator**
//!   `out = E + stopgrad(Z − E)` with `E` the equitune (multi-equitune) average and `Z` the
//!   equizero (multi-equizero) output: the forward value is `Z`, the gradient that of `E`;
//! * λ-equitune: [`crate::equi::lambda`], in two phases (λ-net only, then the backbone with λ
//!   frozen): [`lambda_two_phase`].
//!
//! The loss is the cross-entropy of the wrapped prediction: `CE(z̄, y)` when logits are
//! averaged, `−log p̄_y` when probabilities are averaged (no second softmax). Parameters are f32
//! master weights; the optimisers below update them in f32.

use crate::equi::lambda::Head;
use crate::equi::{Evaluator, Method, Proxy, Symmetry, ZeroSelect};
use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Instant;

/// Adam with L2 weight decay added to the gradient (PyTorch `Adam(weight_decay=…)`), and
/// gradient-norm clipping per parameter group (PyTorch `clip_grad_norm_`). The update runs as
/// one fused loop per tensor on host memory (no per-op tensor allocations). Used by `scan`, whose
/// official recipe is PyTorch Adam with separate encoder and decoder groups.
pub struct GroupAdam {
    groups: Vec<Vec<Var>>,
    /// First and second moments per group and parameter (saved and restored by resumable runs).
    pub m: Vec<Vec<Vec<f32>>>,
    pub v: Vec<Vec<Vec<f32>>>,
    /// Steps taken so far (bias correction).
    pub step: usize,
    lr: f64,
    wd: f64,
    clip: f64,
}

impl GroupAdam {
    pub fn new(groups: Vec<Vec<Var>>, lr: f64, wd: f64, clip: f64) -> Result<GroupAdam> {
        let zeros = |g: &Vec<Var>| {
            g.iter()
                .map(|v| vec![0f32; v.elem_count()])
                .collect::<Vec<_>>()
        };
        let m = groups.iter().map(zeros).collect();
        let v = groups.iter().map(zeros).collect();
        Ok(GroupAdam {
            groups,
            m,
            v,
            step: 0,
            lr,
            wd,
            clip,
        })
    }
    /// One step from the gradients in `grads` (parameters without a gradient are left as they are).
    pub fn apply(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let (lr, wd) = (self.lr as f32, self.wd as f32);
        for (gi, group) in self.groups.iter().enumerate() {
            let gs: Vec<Option<Vec<f32>>> = group
                .iter()
                .map(|v| {
                    grads
                        .get(v.as_tensor())
                        .map(|g| g.flatten_all()?.to_vec1::<f32>())
                        .transpose()
                })
                .collect::<candle_core::Result<_>>()?;
            let sq: f64 = gs
                .iter()
                .flatten()
                .flat_map(|g| g.iter())
                .map(|&x| (x as f64) * (x as f64))
                .sum();
            let norm = sq.sqrt();
            let scale = if self.clip > 0.0 && norm > self.clip {
                (self.clip / (norm + 1e-6)) as f32
            } else {
                1.0
            };
            for (k, (var, g)) in group.iter().zip(gs).enumerate() {
                let Some(g) = g else { continue };
                let mut theta = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                let (m, v) = (&mut self.m[gi][k], &mut self.v[gi][k]);
                let (s1, s2) = (lr / bc1, 1.0 / bc2);
                for (((t, m), v), &g) in theta
                    .iter_mut()
                    .zip(m.iter_mut())
                    .zip(v.iter_mut())
                    .zip(g.iter())
                {
                    let gd = g * scale + wd * *t;
                    *m = b1 * *m + (1.0 - b1) * gd;
                    *v = b2 * *v + (1.0 - b2) * gd * gd;
                    *t -= s1 * *m / ((*v * s2).sqrt() + eps);
                }
                var.set(&Tensor::from_vec(theta, var.shape(), var.device())?)?;
            }
        }
        Ok(())
    }
}

/// `E + stopgrad(Z − E)`: the value of `Z`, the gradient of `E`.
pub fn straight_through(e: &Tensor, z: &Tensor) -> Result<Tensor> {
    Ok((e + (z.detach() - e.detach())?)?)
}

/// The differentiable output of a plain method for training (`[B, ...]` in the head's space).
/// `model` maps inputs to per-copy outputs in the averaging space (φ already applied). For
/// equizero / multi-equizero this is the straight-through estimator.
pub fn train_output(
    method: Method,
    sym: &dyn Symmetry,
    proxy: Proxy,
    model: &dyn crate::equi::BatchModel,
    x: &Tensor,
) -> Result<Tensor> {
    let ev = Evaluator {
        sym,
        proxy,
        select: ZeroSelect::WholeCopy,
    };
    let avg = match method {
        Method::Equizero => Some(Method::Equitune),
        Method::MultiEquizero => Some(Method::MultiEquitune),
        _ => None,
    };
    match avg {
        Some(a) => {
            let (outs, _) = ev.run(&[a, method], model, x)?;
            straight_through(&outs[0], &outs[1])
        }
        None => Ok(ev.run(&[method], model, x)?.0.remove(0)),
    }
}

/// Mean cross-entropy of wrapped predictions `out` `[B, C]` against labels: `CE(out, y)` for
/// averaged logits, `−log out_y` (clamped at 1e-12) for averaged probabilities.
pub fn classification_loss(out: &Tensor, labels: &Tensor, head: Head) -> Result<Tensor> {
    let out = out.to_dtype(DType::F32)?;
    match head {
        Head::Logits => Ok(candle_nn::loss::cross_entropy(&out, labels)?),
        Head::Softmax => {
            let lp = out.clamp(1e-12f64, f64::INFINITY)?.log()?;
            Ok(candle_nn::loss::nll(&lp, labels)?)
        }
    }
}

/// An optimiser kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    /// SGD with (PyTorch-style) momentum and L2 weight decay.
    Sgd,
    /// AdamW (decoupled weight decay), candle-nn's.
    Adamw,
}

/// An optimiser and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl OptimConfig {
    pub fn validate(&self, what: &str) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("{what}: learning rate must be positive, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("{what}: momentum must be in [0, 1), got {}", self.momentum);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "{what}: weight decay must be non-negative, got {}",
                self.weight_decay
            );
        }
        Ok(())
    }
}

/// The optimiser state.
pub enum Optim {
    Sgd {
        vars: Vec<Var>,
        velocity: Vec<Option<Tensor>>,
        cfg: OptimConfig,
    },
    AdamW(candle_nn::AdamW),
}

impl Optim {
    pub fn new(vars: Vec<Var>, cfg: OptimConfig) -> Result<Optim> {
        use candle_nn::Optimizer;
        Ok(match cfg.kind {
            OptimKind::Sgd => Optim::Sgd {
                velocity: vec![None; vars.len()],
                vars,
                cfg,
            },
            OptimKind::Adamw => Optim::AdamW(candle_nn::AdamW::new(
                vars,
                candle_nn::ParamsAdamW {
                    lr: cfg.lr,
                    weight_decay: cfg.weight_decay,
                    ..Default::default()
                },
            )?),
        })
    }

    /// One update from the gradients (variables without a gradient are left alone).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        use candle_nn::Optimizer;
        match self {
            Optim::AdamW(o) => Ok(o.step(grads)?),
            Optim::Sgd {
                vars,
                velocity,
                cfg,
            } => {
                for (v, vel) in vars.iter().zip(velocity.iter_mut()) {
                    let Some(g) = grads.get(v.as_tensor()) else {
                        continue;
                    };
                    let mut g = g.clone();
                    if cfg.weight_decay > 0.0 {
                        g = (g + (v.as_tensor() * cfg.weight_decay)?)?;
                    }
                    let d = match vel.take() {
                        Some(b) if cfg.momentum > 0.0 => ((b * cfg.momentum)? + g)?,
                        _ => g,
                    };
                    v.set(&(v.as_tensor() - (&d * cfg.lr)?)?)?;
                    if cfg.momentum > 0.0 {
                        *vel = Some(d);
                    }
                }
                Ok(())
            }
        }
    }
}

/// Rounds × iterations of one training phase.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub rounds: usize,
    pub iters_per_round: usize,
    pub optim: OptimConfig,
}

impl Schedule {
    pub fn iterations(&self) -> usize {
        self.rounds * self.iters_per_round
    }

    /// A schedule from command-line values, validated (`what` names the flags in the error);
    /// momentum only applies to SGD and is recorded as 0 otherwise.
    pub fn from_flags(
        rounds: usize,
        iters_per_round: usize,
        kind: OptimKind,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        what: &str,
    ) -> Result<Schedule> {
        let optim = OptimConfig {
            kind,
            lr,
            momentum: if kind == OptimKind::Sgd {
                momentum
            } else {
                0.0
            },
            weight_decay,
        };
        optim.validate(what)?;
        Ok(Schedule {
            rounds,
            iters_per_round,
            optim,
        })
    }
}

/// Which parameters a finished phase keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// The parameters at the evaluation point (before round 1 or after any round) with the
    /// best validation accuracy (ties: the earliest).
    BestVal,
    /// The parameters after the last round.
    Last,
}

/// What a phase did.
pub struct PhaseOutcome {
    /// One entry per evaluation point: round, iteration, mean train loss since the last point,
    /// validation accuracy.
    pub curve: Vec<Value>,
    pub best_round: usize,
    pub best_val: f64,
    pub selected_round: usize,
    pub train_seconds: f64,
    pub iterations: usize,
}

/// Runs a phase: evaluates before round 1 and after every round, trains `iters_per_round`
/// iterations per round with `loss(iteration)` (1-based), and finally restores the selected
/// parameters into `vars`. `evaluate` returns a validation accuracy.
pub fn run_phase(
    label: &str,
    schedule: &Schedule,
    vars: Vec<Var>,
    select: Select,
    mut loss: impl FnMut(usize) -> Result<Tensor>,
    mut evaluate: impl FnMut() -> Result<f64>,
) -> Result<PhaseOutcome> {
    schedule.optim.validate(label)?;
    let mut opt = Optim::new(vars.clone(), schedule.optim)?;
    let snapshot = |vars: &[Var]| -> Result<Vec<Tensor>> {
        vars.iter()
            .map(|v| Ok(v.as_tensor().copy()?))
            .collect::<Result<Vec<_>>>()
    };
    let v0 = evaluate()?;
    let mut out = PhaseOutcome {
        curve: vec![
            json!({"round": 0, "iteration": 0, "train_loss": Value::Null, "val_accuracy": v0}),
        ],
        best_round: 0,
        best_val: v0,
        selected_round: 0,
        train_seconds: 0.0,
        iterations: 0,
    };
    let mut best = if select == Select::BestVal {
        Some(snapshot(&vars)?)
    } else {
        None
    };
    let total = schedule.iterations();
    let pb = crate::output::progress_bar(total as u64, label);
    let mut it = 0;
    for round in 1..=schedule.rounds {
        let t0 = Instant::now();
        let mut sum = 0f64;
        for _ in 0..schedule.iters_per_round {
            it += 1;
            let l = loss(it)?;
            let v = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !v.is_finite() {
                bail!("{label}: the training loss became {v} at iteration {it}; lower the learning rate");
            }
            sum += v;
            let grads = l.backward()?;
            if it == 1 && !vars.iter().any(|v| grads.get(v.as_tensor()).is_some()) {
                bail!(
                    "{label}: the loss does not depend on the trained parameters (no gradient \
                     reaches them; a non-differentiable op on the path?)"
                );
            }
            opt.step(&grads)?;
            pb.set_position(it as u64);
        }
        out.train_seconds += t0.elapsed().as_secs_f64();
        out.iterations = it;
        let acc = evaluate()?;
        let mean = sum / schedule.iters_per_round.max(1) as f64;
        pb.set_message(format!("loss {mean:.4} val {acc:.2}"));
        out.curve.push(
            json!({"round": round, "iteration": it, "train_loss": mean, "val_accuracy": acc}),
        );
        if acc > out.best_val {
            out.best_val = acc;
            out.best_round = round;
            if select == Select::BestVal {
                best = Some(snapshot(&vars)?);
            }
        }
    }
    pb.finish_and_clear();
    out.selected_round = match select {
        Select::BestVal => {
            for (v, t) in vars.iter().zip(best.unwrap()) {
                v.set(&t)?;
            }
            out.best_round
        }
        Select::Last => schedule.rounds,
    };
    Ok(out)
}

impl PhaseOutcome {
    /// The phase as JSON, in the order result files use: curve, best round and accuracy,
    /// selected round, iterations, training images and seconds, images per second.
    pub fn json(&self, batch_size: usize) -> serde_json::Map<String, Value> {
        let images = self.iterations * batch_size;
        let v = json!({
            "curve": self.curve, "best_round": self.best_round, "best_val_accuracy": self.best_val,
            "selected_round": self.selected_round, "iterations": self.iterations,
            "train_images": images, "train_seconds": self.train_seconds,
            "images_per_second": if self.train_seconds > 0.0 { json!(images as f64 / self.train_seconds) } else { Value::Null },
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        }
    }

    /// λ-equitune's phase-1 record (`lambda_phase` in result files).
    pub fn lambda_json(&self, lambda_net_checkpoint: Value) -> Value {
        json!({
            "curve": self.curve, "best_round": self.best_round, "best_val_accuracy": self.best_val,
            "selected_round": self.selected_round, "iterations": self.iterations,
            "train_seconds": self.train_seconds, "lambda_net_checkpoint": lambda_net_checkpoint,
        })
    }
}

/// One training phase: its schedule, loss and validation.
pub struct Phase<'a, L, V> {
    pub label: String,
    pub schedule: &'a Schedule,
    pub vars: Vec<Var>,
    pub loss: L,
    pub validate: V,
}

/// λ-equitune's two phases (docs/methods.md, "λ-equitune"), shared by `cnn` and `clip finetune`:
/// phase 1 trains the λ-net alone on the frozen pretrained backbone; `between` then runs on the
/// trained λ-net (the zero-shot evaluation, saving it); phase 2 trains the backbone with the
/// λ-net frozen and in eval mode, with the budget of the other methods. Each phase keeps the
/// round `select` picks.
pub fn lambda_two_phase<L1, V1, L2, V2, Z>(
    select: Select,
    lambda_net: Phase<L1, V1>,
    between: impl FnOnce() -> Result<Z>,
    backbone: Phase<L2, V2>,
) -> Result<(PhaseOutcome, Z, PhaseOutcome)>
where
    L1: FnMut(usize) -> Result<Tensor>,
    V1: FnMut() -> Result<f64>,
    L2: FnMut(usize) -> Result<Tensor>,
    V2: FnMut() -> Result<f64>,
{
    let p1 = run_phase(
        &lambda_net.label,
        lambda_net.schedule,
        lambda_net.vars,
        select,
        lambda_net.loss,
        lambda_net.validate,
    )?;
    let z = between()?;
    let p2 = run_phase(
        &backbone.label,
        backbone.schedule,
        backbone.vars,
        select,
        backbone.loss,
        backbone.validate,
    )?;
    Ok((p1, z, p2))
}
