//! Command-line interface (clap). Nothing else lives here.

use crate::experiments::{
    check::CheckArgs, clip::ClipArgs, fairness::FairnessArgs, scan::ScanCommand,
};
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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// CLIP zero-shot classification under rot90/flip corruptions with equivariant wrappers.
    Clip(ClipArgs),
    /// Equivariant text generation over demographic word swaps (GPT-2, GGUF LMs), with the
    /// swap-consistency check.
    #[command(name = "gpt2-fairness")]
    Gpt2Fairness(FairnessArgs),
    /// Multi-input equivariance on k-tuples of Fashion-MNIST images (CNN, CNN-Aug, Multi-GCNN,
    /// Multi-GCNN-Fusion): per-view rot90 groups, Σ|Gᵢ| passes instead of Π|Gᵢ|.
    #[command(name = "multi-image")]
    MultiImage(crate::experiments::multi_image::MultiImageArgs),
    /// Regard classification of generated text and the fairness report (train the offline
    /// minilm-probe, evaluate a scorer, score samples → fractions, TVD, plots).
    #[command(subcommand)]
    Regard(crate::experiments::regard::RegardCommand),
    /// SCAN / SCAN-II: generate data, pretrain the seq2seq, finetune through equivariant wrappers.
    #[command(subcommand)]
    Scan(ScanCommand),
    /// Greedy-generation throughput of a causal LM with its KV cache (GPT-2 snapshot or GGUF).
    #[command(name = "bench-lm")]
    BenchLm {
        /// GPT-2 snapshot folder (config.json, model.safetensors).
        #[arg(long)]
        model_dir: Option<std::path::PathBuf>,
        /// A llama GGUF file instead.
        #[arg(long)]
        gguf: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 16)]
        prompt_len: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
    },
    /// Pretrained-CNN experiment on Fashion-MNIST (offline): pretrain upright, then zero-shot
    /// and finetuned vanilla / equitune / equizero / λ-equitune / multi-* on rot90- or
    /// flip-corrupted test images; `cnn bench` measures training throughput.
    Cnn(crate::experiments::cnn::CnnArgs),
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
    Sweep(crate::experiments::sweep::SweepArgs),
    /// Aggregate per-seed result JSONs into mean ± std tables (Markdown, CSV) and plots (SVG, PNG).
    Report(crate::experiments::report::ReportArgs),
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download the official SCAN files (brendenlake/SCAN, pinned commit) into --out.
    Scan {
        #[arg(long, default_value = "data/scan")]
        out: std::path::PathBuf,
        /// Raw-file URL prefix of the repository.
        #[arg(
            long,
            default_value = "https://raw.githubusercontent.com/brendenlake/SCAN"
        )]
        base_url: String,
    },
}
