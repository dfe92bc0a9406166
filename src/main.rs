#[cfg(all(feature = "cuda", target_arch = "x86_64", target_os = "linux"))]
mod cuda_shim;

use clap::FromArgMatches;
use equirun::cli::{Cli, Command};
use equirun::experiments;

/// The non-experiment commands.
fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Data(equirun::cli::DataCommand::Scan { out, base_url }) => {
            for (f, n) in equirun::data::download::download_scan(&out, &base_url)? {
                println!("{}\t{n}", out.join(f).display());
            }
            Ok(0)
        }
        Command::BenchLm {
            model_dir,
            gguf,
            compute,
            batch,
            prompt_len,
            new_tokens,
        } => {
            compute.require_cpu_f32("bench-lm")?;
            if model_dir.is_none() && gguf.is_none() {
                anyhow::bail!("bench-lm needs --model-dir (GPT-2 snapshot) or --gguf FILE");
            }
            let src = equirun::hub::ModelSource {
                model: String::new(),
                revision: "main".into(),
                model_dir,
            };
            let dev = candle_core::Device::Cpu;
            let (mut lm, _, _) = equirun::models::lm_loader::load_lm(&src, gguf.as_deref(), &dev)?;
            let r =
                equirun::models::lm::bench_greedy(lm.as_mut(), batch, prompt_len, new_tokens, 0)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(0)
        }
        Command::BenchClip(a) => {
            println!(
                "{}",
                serde_json::to_string(&experiments::clip::bench_encoder(&a)?)?
            );
            Ok(0)
        }
        Command::Sweep(a) => equirun::tools::sweep::run(&a),
        Command::Report(a) => equirun::tools::report::run(&a),
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
    let matches = equirun::cli::command().get_matches();
    let name = matches.subcommand_name().unwrap_or_default().to_string();
    // The SCAN seq2seq is made of many tiny ops: a second worker thread only adds
    // synchronisation (measured: 230 vs 141 examples/s at batch 1). Users can override.
    if name == "scan" && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let result = match (experiments::registry::command(&name), matches.subcommand()) {
        (Some(c), Some((_, sub))) => (c.run)(sub),
        _ => Cli::from_arg_matches(&matches)
            .map_err(anyhow::Error::from)
            .and_then(run),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
