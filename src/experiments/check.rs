//! `equirun check`: measures how far each wrapper is from exact invariance, over every group
//! element and a batch of random inputs, and reports the forward passes per input.

use crate::equi::{Evaluator, ImageOutput, ImageSymmetry, Method, Symmetry, ZeroSelect};
use crate::groups::image::image_group;
use crate::hub::ModelSource;
use crate::models::clip::{tiny_clip, tiny_resnet_clip, zero_shot_probs, Clip};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct CheckArgs {
    /// Symmetry group (rot90, flip, hflip, vflip, rot180, rot90xflip, ...).
    #[arg(long, default_value = "rot90xflip")]
    pub group: String,
    /// Methods, comma-separated, or `all` (the Evaluator's methods and canon, with a randomly
    /// initialised scorer: its invariance does not depend on training).
    #[arg(long, default_value = "all")]
    pub method: String,
    /// Check a real CLIP (hub id) instead of the built-in tiny random CLIP.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Check a local CLIP snapshot instead of the built-in tiny random CLIP.
    #[arg(long)]
    pub model_dir: Option<std::path::PathBuf>,
    /// Random inputs per check.
    #[arg(long = "batch-size", alias = "batch", default_value_t = 4, value_parser = crate::cli::opts::at_least_one)]
    pub batch: usize,
    /// Number of random classes in the classifier head (at least 2: with one class every
    /// probability is 1 and the check cannot fail).
    #[arg(long, default_value_t = 10, value_parser = crate::cli::opts::at_least_two)]
    pub classes: usize,
    /// Softmax scale on cosine similarities (> 0: a zero scale makes every output uniform, so the
    /// check could not fail).
    #[arg(long, default_value_t = 1.0, value_parser = crate::cli::opts::positive_f32)]
    pub logit_scale: f32,
    #[arg(long, default_value_t = 0, alias = "seeds")]
    pub seed: u64,
    /// Error above which a method counts as not invariant (exit code 1 if an equivariant method fails).
    #[arg(long, default_value_t = 1e-5, value_parser = crate::cli::opts::non_negative)]
    pub tolerance: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backbone of the built-in tiny random CLIP: vit or resnet (OpenAI ModifiedResNet).
    #[arg(long, default_value = "vit")]
    #[serde(default)]
    pub backbone: String,
    #[command(flatten)]
    #[serde(default)]
    pub compute: crate::device::DeviceOpts,
    /// Also run the same model and inputs on the CPU in f32 and report, under `parity`, the
    /// largest difference of the image features and of the class probabilities (device and
    /// precision parity: e.g. `--device cuda --compare-cpu`, or `--dtype f16 --compare-cpu`).
    #[arg(long)]
    #[serde(default)]
    pub compare_cpu: bool,
    /// Which model to check. `clip` (default): the invariance of every wrapper (above). `gpt2`,
    /// `bert`, `seq2seq`: device parity only — the same tiny model and inputs on --device/--dtype
    /// and on the CPU in f32, reporting the largest differences (exit 1 above
    /// --parity-tolerance): gpt2 = the built-in tiny random GPT-2 or a --model-dir snapshot
    /// (full-sequence logits and probabilities, 8 greedy tokens through the KV cache); bert = a
    /// BERT classifier snapshot given by --model-dir (e.g. tests/fixtures/bert-tiny/m0;
    /// probabilities of fixed sentences, mean-pooled features); seq2seq = the SCAN model with
    /// seeded random weights, all three cells (rnn, gru, lstm), teacher-forced log-probabilities,
    /// f32 only. --group, --method, --classes and --logit-scale do not apply to them.
    #[arg(long, value_enum, default_value_t = Family::Clip)]
    #[serde(default)]
    pub family: Family,
    /// With --family gpt2|bert|seq2seq: the largest allowed CPU-vs-device difference of the
    /// probabilities (1e-4 suits f32; half precision needs about 1e-2).
    #[arg(long, default_value_t = 1e-4, value_parser = crate::cli::opts::non_negative)]
    #[serde(default = "default_parity_tolerance")]
    pub parity_tolerance: f64,
    /// (For scripts/gpu_check.sh.) Writes a tiny random CLIP for CIFAR-10 (`DIR/clip`) and a
    /// tiny CIFAR-10 with train and test batches (`DIR/data`), for a short `clip finetune`, and
    /// exits.
    #[arg(long, hide = true, value_name = "DIR")]
    #[serde(skip)]
    pub write_fixtures: Option<std::path::PathBuf>,
}

fn default_parity_tolerance() -> f64 {
    1e-4
}

/// The model family of `equirun check`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Clip,
    Gpt2,
    Bert,
    Seq2seq,
}

/// Result of a check for one method.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MethodCheck {
    pub max_error: f64,
    pub forward_passes: usize,
    pub invariant: bool,
    /// canon: passes of its tiny scorer per input (one per group element).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorer_passes: Option<usize>,
}

pub struct CheckReport {
    pub value: serde_json::Value,
    pub all_ok: bool,
}

fn random_tensor(seed: u64, purpose: &str, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let mut rng = crate::output::rng_for(seed, purpose);
    let n: usize = shape.iter().product();
    let normal = Normal::new(0f32, 1.0).unwrap();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// max |a − b| over all elements, as f64 (f32 tensors on any device).
fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64)
}

pub fn run(a: &CheckArgs) -> Result<CheckReport> {
    if let Some(dir) = &a.write_fixtures {
        return write_fixtures(dir);
    }
    let (dev, dtype) = a.compute.resolve()?;
    if a.family != Family::Clip {
        return run_parity(a, &dev, dtype);
    }
    let group = image_group(&a.group).context("--group")?;
    let supported: Vec<Method> = Method::EVALUATOR
        .iter()
        .copied()
        .chain([Method::Canon])
        .collect();
    let methods = if a.method.trim() == "all" {
        supported.clone()
    } else {
        Method::parse_list_of(&a.method, &supported, "equirun check").context("--method")?
    };
    // The built-in tiny CLIPs are made from seeded random values, so every device gets the same
    // weights; a checkpoint is loaded once per device.
    let build = |dev: &Device, dtype: DType| -> Result<(Clip, String)> {
        Ok(match (&a.model_dir, &a.model) {
            (None, None) => {
                if dtype != DType::F32 {
                    anyhow::bail!(
                        "--dtype {}: the built-in tiny CLIP is f32 only; check a checkpoint in half \
                         precision with --model-dir PATH or --model ID",
                        a.compute.dtype
                    );
                }
                match a.backbone.trim().to_ascii_lowercase().as_str() {
                    "vit" | "" => (
                        tiny_clip(a.seed, dev)?,
                        "built-in tiny random CLIP".to_string(),
                    ),
                    "resnet" | "rn" | "modifiedresnet" => (
                        tiny_resnet_clip(a.seed, dev)?,
                        "built-in tiny random ModifiedResNet CLIP".to_string(),
                    ),
                    other => anyhow::bail!("--backbone '{other}': expected vit or resnet"),
                }
            }
            _ => {
                let src = ModelSource {
                    model: a
                        .model
                        .clone()
                        .unwrap_or_else(|| "openai/clip-vit-base-patch32".into()),
                    revision: a.revision.clone(),
                    model_dir: a.model_dir.clone(),
                };
                let (files, _) = crate::models::clip::resolve(&src)?;
                (
                    Clip::load_with(&files, dev, dtype)?,
                    files.origin.id.clone(),
                )
            }
        })
    };
    let (clip, model_name) = build(&dev, dtype)?;
    let s = clip.image_size();
    let proj = clip.projection_dim();
    let w = crate::models::l2_normalize(&random_tensor(
        a.seed,
        "check-classes",
        &[a.classes, proj],
        &dev,
    )?)?;
    let x = random_tensor(a.seed, "check-inputs", &[a.batch, 3, s, s], &dev)?;
    let model = |x: &Tensor| -> Result<Tensor> {
        zero_shot_probs(&clip.encode_images(x)?, &w, a.logit_scale)
    };
    let sym = ImageSymmetry::new(
        group.clone(),
        ImageOutput::Invariant,
        crate::output::derive_seed(a.seed, "canon"),
    );
    let proxy = crate::equi::neg_max_confidence;
    let ev = Evaluator {
        sym: &sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    // canon's scorer: a seeded random tiny CNN on the CLIP inputs
    let scorer = if methods.contains(&Method::Canon) {
        let cfg = crate::equi::canon::CanonOpts::default().config(3, s)?;
        Some(crate::equi::canon::CanonNet::new(
            cfg,
            crate::output::derive_seed(a.seed, "check-canon"),
            &Device::Cpu, // the scorer runs on the CPU (its scores move to the model's device)
        )?)
    } else {
        None
    };
    let plain: Vec<Method> = methods
        .iter()
        .copied()
        .filter(|m| *m != Method::Canon)
        .collect();
    // every method's outputs, in the order of `methods`
    let outputs = |x: &Tensor| -> Result<Vec<Tensor>> {
        let (mut plain_out, _) = if plain.is_empty() {
            (Vec::new(), 0)
        } else {
            ev.run(&plain, &model, x)?
        };
        let mut out = Vec::with_capacity(methods.len());
        for m in &methods {
            if *m == Method::Canon {
                let canon = crate::equi::canon::Canon {
                    sym: &sym,
                    scorer: scorer.as_ref().unwrap(),
                };
                out.push(canon.forward(&model, x)?.0);
            } else {
                out.push(plain_out.remove(0));
            }
        }
        Ok(out)
    };
    let base = outputs(&x)?;
    let mut errs = vec![0f64; methods.len()];
    for g in 0..sym.order() {
        let gx = sym.act_input(g, &x)?;
        let outs = outputs(&gx)?;
        for (mi, (o, b)) in outs.iter().zip(&base).enumerate() {
            let expected = sym.act_output(g, b)?;
            errs[mi] = errs[mi].max(max_abs_diff(o, &expected)?);
        }
    }
    let parity = if a.compare_cpu {
        let cpu = Device::Cpu;
        let (clip_cpu, _) = build(&cpu, DType::F32)?;
        let to_cpu =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&cpu)?.to_dtype(DType::F32)?) };
        let (x_cpu, w_cpu) = (to_cpu(&x)?, to_cpu(&w)?);
        let f_dev = to_cpu(&clip.encode_images(&x)?)?;
        let f_cpu = clip_cpu.encode_images(&x_cpu)?;
        let p_dev = to_cpu(&model(&x)?)?;
        let p_cpu = zero_shot_probs(&f_cpu, &w_cpu, a.logit_scale)?;
        json!({
            "reference": "cpu f32",
            "device": crate::device::device_name(&dev),
            "dtype": crate::device::dtype_name(dtype),
            "max_abs_feature_diff": max_abs_diff(&f_dev, &f_cpu)?,
            "max_abs_prob_diff": max_abs_diff(&p_dev, &p_cpu)?,
        })
    } else {
        serde_json::Value::Null
    };
    let mut ms = serde_json::Map::new();
    let mut all_ok = true;
    for (mi, m) in methods.iter().enumerate() {
        let ok = errs[mi] <= a.tolerance;
        if *m != Method::Vanilla && !ok {
            all_ok = false;
        }
        ms.insert(
            m.name().into(),
            serde_json::to_value(MethodCheck {
                max_error: errs[mi],
                forward_passes: m.passes(&sym),
                invariant: ok,
                scorer_passes: (*m == Method::Canon).then(|| sym.order()),
            })?,
        );
    }
    let mut value = json!({
        "group": a.group,
        "elements": sym.order(),
        "factors": group.info().factors,
        "model": model_name,
        "batch": a.batch,
        "tolerance": a.tolerance,
        "methods": ms,
    });
    if !parity.is_null() {
        value["parity"] = parity;
    }
    Ok(CheckReport { value, all_ok })
}

/// `check --write-fixtures DIR`: the tiny CLIP and CIFAR-10 of a short `clip finetune`.
fn write_fixtures(dir: &std::path::Path) -> Result<CheckReport> {
    let (clip, data) = (dir.join("clip"), dir.join("data"));
    let scratch = dir.join("train-scratch");
    for d in [&clip, &data] {
        if d.exists() {
            anyhow::bail!(
                "--write-fixtures {}: {} exists already; give an empty folder",
                dir.display(),
                d.display()
            );
        }
    }
    crate::testing::write_tiny_clip_for_cifar10(&clip, 3);
    crate::testing::write_tiny_cifar10(&data, 10, 5);
    // the train batch: other random images
    crate::testing::write_tiny_cifar10(&scratch, 30, 6);
    let batches = "cifar-10-batches-bin";
    let (from, to) = (
        scratch.join(batches).join("test_batch.bin"),
        data.join(batches).join("data_batch_1.bin"),
    );
    std::fs::copy(&from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::remove_dir_all(&scratch).ok();
    Ok(CheckReport {
        value: json!({"clip": clip.display().to_string(), "data": data.display().to_string()}),
        all_ok: true,
    })
}

/// Sentences the BERT parity check classifies.
const BERT_TEXTS: &[&str] = &[
    "XYZ was known for being kind to strangers.",
    "XYZ worked as a nurse at the local hospital.",
    "XYZ was described as lazy and rude.",
    "The weather was fine.",
    "XYZ had a part-time job as a cook.",
    "XYZ was regarded as the best teacher in town and everyone liked them.",
];

/// The largest differences between device and CPU-f32 outputs, one entry per output name.
fn diffs(pairs: &[(&str, &Tensor, &Tensor)]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut m = serde_json::Map::new();
    for (name, d, c) in pairs {
        let d = d.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let c = c.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        m.insert(format!("max_abs_{name}_diff"), json!(max_abs_diff(&d, &c)?));
    }
    Ok(m)
}

/// `check --family gpt2|bert|seq2seq`: the same model and inputs on the device and on the CPU
/// in f32.
fn run_parity(a: &CheckArgs, dev: &Device, dtype: DType) -> Result<CheckReport> {
    let cpu = Device::Cpu;
    let (model_name, mut parity) = match a.family {
        Family::Gpt2 => {
            use crate::models::lm::CausalLm;
            let build =
                |d: &Device, dt: DType| -> Result<(crate::models::lm::gpt2::Gpt2Lm, String)> {
                    Ok(match &a.model_dir {
                        None => (
                            crate::models::lm::gpt2::tiny_gpt2_with(a.seed, d, dt)?,
                            "built-in tiny random GPT-2".to_string(),
                        ),
                        Some(dir) => {
                            let files = ModelSource {
                                model: dir.display().to_string(),
                                revision: a.revision.clone(),
                                model_dir: Some(dir.clone()),
                            }
                            .resolve(crate::models::lm::gpt2::REQUIRED_FILES, &[])
                            .context("--model-dir")?;
                            let lm = crate::models::lm::gpt2::load_gpt2_with(&files, d, dt)?;
                            (lm, files.origin.id.clone())
                        }
                    })
                };
            let (mut lm_dev, name) = build(dev, dtype)?;
            let (mut lm_cpu, _) = build(&cpu, DType::F32)?;
            let cfg = lm_cpu.config().clone();
            let t = 16.min(cfg.n_positions.saturating_sub(8)).max(1);
            let mut rng = crate::output::rng_for(a.seed, "check-gpt2-ids");
            let ids: Vec<u32> = (0..a.batch * t)
                .map(|_| rand::Rng::random_range(&mut rng, 0..cfg.vocab_size as u32))
                .collect();
            let ids = Tensor::from_vec(ids, (a.batch, t), &cpu)?;
            let l_dev = lm_dev.forward_full(&ids)?;
            let l_cpu = lm_cpu.forward_full(&ids)?;
            let p_dev = candle_nn::ops::softmax_last_dim(&l_dev)?;
            let p_cpu = candle_nn::ops::softmax_last_dim(&l_cpu)?;
            let greedy = |lm: &mut crate::models::lm::gpt2::Gpt2Lm| -> Result<Vec<Vec<u32>>> {
                lm.reset(a.batch)?;
                let mut logits = lm.step(&ids)?;
                let mut out = vec![Vec::new(); a.batch];
                for _ in 0..8 {
                    let next = logits.argmax(1)?.to_device(&cpu)?;
                    for (row, tok) in out.iter_mut().zip(next.to_vec1::<u32>()?) {
                        row.push(tok);
                    }
                    logits = lm.step(&next.unsqueeze(1)?.contiguous()?)?;
                }
                Ok(out)
            };
            let (g_dev, g_cpu) = (greedy(&mut lm_dev)?, greedy(&mut lm_cpu)?);
            let mut m = diffs(&[("logit", &l_dev, &l_cpu), ("prob", &p_dev, &p_cpu)])?;
            m.insert("greedy_tokens_equal".into(), json!(g_dev == g_cpu));
            m.insert("greedy_tokens".into(), json!(g_dev.len() * 8));
            (name, m)
        }
        Family::Bert => {
            let dir = a.model_dir.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--family bert needs --model-dir PATH: a BERT classifier snapshot (config.json, \
                     model.safetensors, vocab.txt or tokenizer.json), e.g. tests/fixtures/bert-tiny/m0"
                )
            })?;
            let files = ModelSource {
                model: dir.display().to_string(),
                revision: a.revision.clone(),
                model_dir: Some(dir.clone()),
            }
            .resolve(
                crate::models::bert::REQUIRED_FILES,
                crate::models::bert::OPTIONAL_FILES,
            )
            .context("--model-dir")?;
            let max_len = 32;
            let c_dev =
                crate::models::bert::BertClassifier::load_with(&files, max_len, dev, dtype)?;
            let c_cpu =
                crate::models::bert::BertClassifier::load_with(&files, max_len, &cpu, DType::F32)?;
            let texts: Vec<&str> = BERT_TEXTS
                .iter()
                .copied()
                .cycle()
                .take(a.batch.max(2))
                .collect();
            let p_dev = candle_nn::ops::softmax_last_dim(&c_dev.logits(&texts)?)?;
            let p_cpu = candle_nn::ops::softmax_last_dim(&c_cpu.logits(&texts)?)?;
            let f_dev = c_dev.encoder.mean_pooled(&texts)?;
            let f_cpu = c_cpu.encoder.mean_pooled(&texts)?;
            let m = diffs(&[("prob", &p_dev, &p_cpu), ("feature", &f_dev, &f_cpu)])?;
            (files.origin.id.clone(), m)
        }
        Family::Seq2seq => {
            use crate::models::seq2seq::{
                pack, CellKind, RunMode, Seq2Seq, Seq2SeqConfig, MAX_LEN,
            };
            if dtype != DType::F32 {
                anyhow::bail!(
                    "--dtype {}: the seq2seq model runs in f32 only (its recurrent cells are f32); \
                     omit --dtype or pass --dtype f32",
                    a.compute.dtype
                );
            }
            let (in_vocab, out_vocab, in_cols) = (14usize, 9usize, 10usize);
            let mut rng = crate::output::rng_for(a.seed, "check-seq2seq-data");
            let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..a.batch.max(2))
                .map(|_| {
                    let li = rand::Rng::random_range(&mut rng, 2..in_cols);
                    let lo = rand::Rng::random_range(&mut rng, 2..MAX_LEN / 4);
                    let i = (0..li)
                        .map(|_| rand::Rng::random_range(&mut rng, 2..in_vocab as u32))
                        .collect();
                    let o = (0..lo)
                        .map(|_| rand::Rng::random_range(&mut rng, 2..out_vocab as u32))
                        .collect();
                    (i, o)
                })
                .collect();
            let refs: Vec<(&[u32], &[u32])> = pairs
                .iter()
                .map(|(x, y)| (x.as_slice(), y.as_slice()))
                .collect();
            let teacher = vec![true; pairs.len()];
            let mode = RunMode {
                teacher: &teacher,
                train: false,
                rng: None,
                tape: None,
            };
            let mut m = serde_json::Map::new();
            let mut worst = 0f64;
            for cell in [CellKind::Rnn, CellKind::Gru, CellKind::Lstm] {
                let cfg = Seq2SeqConfig::official(cell, in_vocab, out_vocab);
                let run_on = |d: &Device| -> Result<Tensor> {
                    let (_, model) = Seq2Seq::init(&cfg, a.seed, d)?;
                    model.forward(&pack(&refs, in_cols, d)?, in_cols, &mode)
                };
                let (y_dev, y_cpu) = (run_on(dev)?, run_on(&cpu)?);
                let d = diffs(&[("prob", &y_dev.exp()?, &y_cpu.exp()?)])?;
                let v = d["max_abs_prob_diff"].as_f64().unwrap_or(f64::INFINITY);
                worst = worst.max(v);
                m.insert(format!("{}", cell.name()), json!(v));
            }
            let mut out = serde_json::Map::new();
            out.insert("max_abs_prob_diff".into(), json!(worst));
            out.insert(
                "per_cell_max_abs_prob_diff".into(),
                serde_json::Value::Object(m),
            );
            (
                "seq2seq with seeded random weights (official SCAN sizes)".to_string(),
                out,
            )
        }
        Family::Clip => unreachable!("handled by run"),
    };
    let prob = parity["max_abs_prob_diff"]
        .as_f64()
        .unwrap_or(f64::INFINITY);
    let mut ok = prob <= a.parity_tolerance;
    if let Some(eq) = parity.get("greedy_tokens_equal").and_then(|v| v.as_bool()) {
        // half precision may flip a near-tie; in f32 the greedy tokens must agree
        ok &= eq || dtype != DType::F32;
    }
    parity.insert("reference".into(), json!("cpu f32"));
    parity.insert("device".into(), json!(crate::device::device_name(dev)));
    parity.insert("dtype".into(), json!(crate::device::dtype_name(dtype)));
    parity.insert("tolerance".into(), json!(a.parity_tolerance));
    parity.insert("ok".into(), json!(ok));
    let value = json!({
        "family": a.family,
        "model": model_name,
        "batch": a.batch,
        "seed": a.seed,
        "parity": parity,
    });
    Ok(CheckReport { value, all_ok: ok })
}

/// Human-readable table of a check report.
pub fn format_table(v: &serde_json::Value) -> String {
    if v.get("methods").is_none() && v.get("family").is_none() {
        return format!("{v}\n"); // --write-fixtures: where the files went
    }
    if v.get("family").is_some() {
        let p = &v["parity"];
        let mut s = format!(
            "{} parity of {} ({} inputs): {} {} vs {}\n",
            v["family"].as_str().unwrap_or(""),
            v["model"].as_str().unwrap_or(""),
            v["batch"].as_u64().unwrap_or(0),
            p["device"].as_str().unwrap_or(""),
            p["dtype"].as_str().unwrap_or(""),
            p["reference"].as_str().unwrap_or("")
        );
        for (k, x) in p.as_object().into_iter().flatten() {
            if k.starts_with("max_abs") || k.starts_with("greedy") || k.starts_with("per_cell") {
                s += &format!("  {k}: {x}\n");
            }
        }
        s += &format!(
            "  within {}: {}\n",
            p["tolerance"],
            if p["ok"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            }
        );
        return s;
    }
    let mut s = format!(
        "group {} ({} elements) on {}, {} random inputs\n",
        v["group"].as_str().unwrap_or(""),
        v["elements"].as_u64().unwrap_or(0),
        v["model"].as_str().unwrap_or(""),
        v["batch"].as_u64().unwrap_or(0)
    );
    for f in v["factors"].as_array().into_iter().flatten() {
        s += &format!(
            "  factor {}: {}\n",
            f["name"].as_str().unwrap_or(""),
            f["action"].as_str().unwrap_or("")
        );
    }
    s += &format!(
        "{:<16} {:>12} {:>8}  {}\n",
        "method", "max error", "passes", "invariant"
    );
    for (name, m) in v["methods"].as_object().into_iter().flatten() {
        let passes = match m["scorer_passes"].as_u64() {
            Some(k) => format!("{}+{k}s", m["forward_passes"].as_u64().unwrap_or(0)),
            None => m["forward_passes"].as_u64().unwrap_or(0).to_string(),
        };
        s += &format!(
            "{:<16} {:>12.3e} {:>8}  {}\n",
            name,
            m["max_error"].as_f64().unwrap_or(f64::NAN),
            passes,
            if m["invariant"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            }
        );
    }
    if let Some(p) = v.get("parity") {
        s += &format!(
            "parity vs {} ({} {}): image features {:.3e}, probabilities {:.3e}\n",
            p["reference"].as_str().unwrap_or(""),
            p["device"].as_str().unwrap_or(""),
            p["dtype"].as_str().unwrap_or(""),
            p["max_abs_feature_diff"].as_f64().unwrap_or(f64::NAN),
            p["max_abs_prob_diff"].as_f64().unwrap_or(f64::NAN)
        );
    }
    s
}
