#[cfg(all(feature = "cuda", target_arch = "x86_64", target_os = "linux"))]
mod cuda_shim;

use clap::Parser;
use equirun::cli::{Cli, Command};
use equirun::experiments;

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Clip(a) => {
            experiments::clip::run(&a)?;
            Ok(0)
        }
        Command::Scan(c) => {
            use experiments::scan::{self, ScanCommand};
            match c {
                ScanCommand::Generate(a) => scan::generate(&a)?,
                ScanCommand::Pretrain(a) => {
                    scan::pretrain(&a)?;
                }
                ScanCommand::Finetune(a) => {
                    scan::finetune(&a)?;
                }
                ScanCommand::Quick(a) => scan::quick(&a)?,
            }
            Ok(0)
        }
        Command::Data(equirun::cli::DataCommand::Scan { out, base_url }) => {
            for (f, n) in equirun::data::download::download_scan(&out, &base_url)? {
                println!("{}\t{n}", out.join(f).display());
            }
            Ok(0)
        }
        Command::Cnn(a) => {
            experiments::cnn::run(&a)?;
            Ok(0)
        }
        Command::Gpt2Fairness(a) => {
            experiments::fairness::run(&a)?;
            Ok(0)
        }
        Command::BenchLm {
            model_dir,
            gguf,
            batch,
            prompt_len,
            new_tokens,
        } => {
            let dev = candle_core::Device::Cpu;
            let mut lm: Box<dyn equirun::models::lm::CausalLm> = match (model_dir, gguf) {
                (_, Some(g)) => Box::new(equirun::models::gguf::load_gguf(&g, &dev)?.0),
                (Some(d), None) => {
                    let src = equirun::hub::ModelSource {
                        model: String::new(),
                        revision: "main".into(),
                        model_dir: Some(d),
                    };
                    Box::new(equirun::models::gpt2::load_gpt2(
                        &src.resolve(equirun::models::gpt2::REQUIRED_FILES, &[])?,
                        &dev,
                    )?)
                }
                (None, None) => {
                    anyhow::bail!("bench-lm needs --model-dir (GPT-2 snapshot) or --gguf FILE")
                }
            };
            let r =
                equirun::models::lm::bench_greedy(lm.as_mut(), batch, prompt_len, new_tokens, 0)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(0)
        }
        Command::MultiImage(a) => {
            experiments::multi_image::run(&a)?;
            Ok(0)
        }
        Command::Regard(c) => {
            experiments::regard::run(&c)?;
            Ok(0)
        }
        Command::BenchClip(a) => {
            println!(
                "{}",
                serde_json::to_string(&experiments::clip::bench_encoder(&a)?)?
            );
            Ok(0)
        }
        Command::Sweep(a) => experiments::sweep::run(&a),
        Command::Report(a) => experiments::report::run(&a),
        Command::Check(a) => {
            let r = experiments::check::run(&a)?;
            if a.json {
                println!("{}", serde_json::to_string(&r.value)?);
            } else {
                print!("{}", experiments::check::format_table(&r.value));
            }
            Ok(if r.all_ok { 0 } else { 1 })
        }
    }
}

fn main() {
    // The `cuda` build binds the NVIDIA driver here, so that a machine without one still runs
    // `--device cpu` and gets a clear error for `--device cuda` (see src/cuda_shim.rs).
    #[cfg(all(feature = "cuda", target_arch = "x86_64", target_os = "linux"))]
    cuda_shim::load();
    let cli = Cli::parse();
    // The SCAN seq2seq is made of many tiny ops: a second worker thread only adds
    // synchronisation (measured: 230 vs 141 examples/s at batch 1). Users can override.
    if matches!(cli.command, Command::Scan(_)) && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
