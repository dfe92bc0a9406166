//! `equirun scan-dump` (hidden): the wrapped SCAN seq2seq's raw outputs on given command lines, for
//! comparing equirun with another implementation on the same weights (docs/scan-official.md).
//!
//! It loads a checkpoint, reads `IN: … OUT: …` lines, runs each requested method in evaluation
//! mode (greedy decoding, no dropout) and writes one JSON: both vocabularies, and per method either
//! the log-prob rows `[N, 50, V_out]` (zero rows after a sequence's end, as the model returns them)
//! or only the greedy predictions (`--predictions-only`, for whole test splits).

use super::registry::{self, Experiment};
use super::scan::{load_data, DataOpts};
use crate::cli::opts::DeviceOpts;
use crate::data::scan::{self as scandata, Collapse};
use crate::equi::proxy::top1_proxy;
use crate::equi::{Evaluator, Method, ZeroSelect};
use crate::groups::scan::scan_group;
use crate::models::seq2seq::{pack, CellKind, RunMode, Seq2Seq, Seq2SeqConfig};
use crate::output;
use anyhow::{bail, Context, Result};
use candle_core::{Tensor, D};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct DumpArgs {
    #[command(flatten)]
    pub data: DataOpts,
    /// Checkpoint file (`seed-<n>/best.safetensors` of a `scan pretrain` or `scan finetune` run).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, value_enum, default_value = "gru")]
    pub cell: CellKind,
    /// Wrapper(s), comma-separated: vanilla, equitune, equizero, multi-equitune, multi-equizero.
    #[arg(long, default_value = "vanilla")]
    pub method: String,
    /// Symmetry group: verb, direction-rl, direction-ud or a comma-separated product.
    #[arg(long, default_value = "verb,direction-rl,direction-ud")]
    pub group: String,
    /// Multi-equitune's canonicaliser.
    #[arg(long, value_enum, default_value = "official")]
    pub collapse: Collapse,
    /// Command lines to run, in the official format `IN: <command> OUT: <I_actions>`.
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSON.
    #[arg(long)]
    pub output: PathBuf,
    /// Write only the greedy predictions (token ids up to and including the first EOS).
    #[arg(long)]
    pub predictions_only: bool,
    /// Commands per forward batch.
    #[arg(long = "eval-batch-size", alias = "eval-batch", default_value_t = 256, value_parser = crate::cli::opts::at_least_one)]
    pub eval_batch: usize,
    /// Any device; f32 only (the recurrent cells run in f32).
    #[command(flatten)]
    pub compute: DeviceOpts,
}

pub fn run(a: &DumpArgs) -> Result<()> {
    let dev = a.compute.f32_only("scan-dump", "runs the seq2seq model in f32 (its recurrent cells are f32)")?;
    let methods = Method::parse_list_of(&a.method, &Method::EVALUATOR, "equirun scan-dump")
        .context("--method")?;
    if !a.checkpoint.is_file() {
        bail!(
            "--checkpoint {}: no such file (pass a seed-<n>/best.safetensors)",
            a.checkpoint.display()
        );
    }
    let examples = scandata::read_scan_file(&a.input).context("--input")?;
    if examples.is_empty() {
        bail!("--input {}: no command lines", a.input.display());
    }
    let data = load_data(&a.data)?;
    let (iv, ov) = (&data.in_vocab, &data.out_vocab);
    let group = scan_group(&a.group, iv, ov).context("--group")?;
    let ginfo = group.info();
    let sym = scandata::scan_symmetry(group, iv, ov, data.in_cols, a.collapse)?;
    let cfg = Seq2SeqConfig::official(a.cell, iv.len(), ov.len());
    let (varmap, _) = Seq2Seq::init(&cfg, 0, &dev)?;
    let mut varmap = varmap;
    varmap
        .load(&a.checkpoint)
        .with_context(|| format!("--checkpoint {} (wrong --cell?)", a.checkpoint.display()))?;
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev);
    let model = Seq2Seq::new(vb, &cfg)?.detached();
    let enc: Vec<(Vec<u32>, Vec<u32>)> = examples
        .iter()
        .map(|e| Ok((iv.encode(&e.command)?, ov.encode(&e.actions)?)))
        .collect::<Result<_>>()
        .context("--input")?;
    let proxy = top1_proxy;
    let ev = Evaluator {
        sym: &sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    let mode = RunMode::eval();
    let f = |z: &Tensor| -> Result<Tensor> { model.forward(z, data.in_cols, &mode) };
    let mut per_method: Vec<Vec<Value>> = vec![Vec::new(); methods.len()];
    for chunk in enc.chunks(a.eval_batch) {
        let refs: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|(x, y)| (x.as_slice(), y.as_slice()))
            .collect();
        let x = pack(&refs, data.in_cols, &dev)?;
        let (outs, _) = ev.run(&methods, &f, &x)?;
        for (k, y) in outs.iter().enumerate() {
            if a.predictions_only {
                for row in y.argmax(D::Minus1)?.to_vec2::<u32>()? {
                    let end = row
                        .iter()
                        .position(|&t| t == scandata::EOS)
                        .map(|p| p + 1)
                        .unwrap_or(row.len());
                    per_method[k].push(json!(row[..end]));
                }
            } else {
                for rows in y.to_vec3::<f32>()? {
                    per_method[k].push(json!(rows));
                }
            }
        }
    }
    let key = if a.predictions_only {
        "predictions"
    } else {
        "logprobs"
    };
    let mut by_method = serde_json::Map::new();
    for (m, v) in methods.iter().zip(per_method) {
        by_method.insert(m.name().to_string(), Value::Array(v));
    }
    let mut doc = json!({
        "checkpoint": a.checkpoint.display().to_string(),
        "cell": a.cell.name(),
        "group": ginfo,
        "collapse": a.collapse.name(),
        "in_vocab": iv.tokens(),
        "out_vocab": ov.tokens(),
        "n": enc.len(),
        key: by_method,
    });
    crate::device::record_in_config(&mut doc, &dev, candle_core::DType::F32);
    output::write_json_atomic(&a.output, &doc)?;
    eprintln!(
        "wrote {} ({} lines × {} methods)",
        a.output.display(),
        enc.len(),
        methods.len()
    );
    Ok(())
}

/// Hidden top-level subcommand; writes no result JSON, so nothing for sweeps or reports.
pub const ENTRY: Experiment = Experiment {
    name: "scan-dump",
    words: &[],
    command: Some(registry::Command {
        name: "scan-dump",
        about: "Dump the wrapped SCAN seq2seq's log-probs or predictions on given lines (for \
                comparisons with the official code; see docs/scan-official.md)",
        args: |c| {
            <DumpArgs as clap::Args>::augment_args(c)
                .hide(true)
                .after_help(
                    "Example:\n  equirun scan-dump --checkpoint results/scan-pretrain/real/seed-0/best.safetensors \\\n    \
                     --method vanilla,equitune,multi-equitune --input lines.txt --output dump.json",
                )
        },
        run: |m| registry::run_with(m, run),
    }),
    run_folders: registry::one_folder,
    extract: None,
};
