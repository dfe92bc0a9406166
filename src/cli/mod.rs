//! Command-line interface (clap): the commands here, the option groups the experiments share
//! in [`opts`].

pub mod opts;

use crate::experiments::check::CheckArgs;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "equirun",
    version,
    about = "Model-agnostic group equivariance: wrap pretrained models (CLIP, ...) with equitune, \
             equizero, multi-equitune and multi-equizero, run the papers' experiments, write JSON per seed.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands that are not experiments (tools over runs, benchmarks, checks). The experiments'
/// subcommands come from the registry ([`command`]).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Greedy-generation throughput of a causal LM with its KV cache (GPT-2 snapshot or GGUF).
    #[command(name = "bench-lm")]
    BenchLm {
        /// GPT-2 snapshot folder (config.json, model.safetensors).
        #[arg(long)]
        model_dir: Option<std::path::PathBuf>,
        /// A llama GGUF file instead.
        #[arg(long)]
        gguf: Option<std::path::PathBuf>,
        /// Sequences generated together.
        #[arg(long = "batch-size", alias = "batch", default_value_t = 1, value_parser = opts::at_least_one)]
        batch: usize,
        /// Prompt tokens per sequence.
        #[arg(long, default_value_t = 16, value_parser = opts::at_least_one)]
        prompt_len: usize,
        /// Tokens generated per sequence (timed).
        #[arg(long, default_value_t = 32, value_parser = opts::at_least_one)]
        new_tokens: usize,
        /// CPU and f32 only.
        #[command(flatten)]
        compute: opts::DeviceOpts,
    },
    /// Image-encoder throughput of a CLIP (any backbone) on seeded random inputs; prints JSON.
    #[command(name = "bench-clip")]
    BenchClip(crate::experiments::clip::BenchClipArgs),
    /// Fetch datasets (needs internet).
    #[command(subcommand)]
    Data(DataCommand),
    /// Measure each wrapper's invariance error over every group element (built-in tiny CLIP by default).
    Check(CheckArgs),
    /// Run a TOML grid of equirun commands × seeds locally (--jobs, resumable), or write it as a
    /// Slurm job array / a run list (--emit).
    Sweep(crate::tools::sweep::SweepArgs),
    /// Aggregate per-seed result JSONs into mean ± std tables (Markdown, CSV) and plots (SVG, PNG).
    Report(crate::tools::report::ReportArgs),
}

/// The whole command line: every registered experiment's subcommand first (registry order), then
/// the tools of [`Command`].
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let tools: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let experiments = crate::experiments::registry::commands();
    let n = experiments.len();
    for (i, sub) in experiments.into_iter().enumerate() {
        cmd = cmd.subcommand(sub.display_order(i));
    }
    for (j, name) in tools.iter().enumerate() {
        cmd = cmd.mut_subcommand(name, |s| s.display_order(n + j));
    }
    cmd
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download the official SCAN files (brendenlake/SCAN, pinned commit) into --out.
    Scan {
        /// Folder to download into (read it back with `--data-dir`).
        #[arg(long = "data-dir", alias = "out", default_value = "data/scan")]
        out: std::path::PathBuf,
        /// Raw-file URL prefix of the repository.
        #[arg(
            long,
            default_value = "https://raw.githubusercontent.com/brendenlake/SCAN"
        )]
        base_url: String,
    },
}
