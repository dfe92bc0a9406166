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
            let (dev, dtype) = compute.inference()?;
            if model_dir.is_none() && gguf.is_none() {
                anyhow::bail!("bench-lm needs --model-dir (GPT-2 snapshot) or --gguf FILE");
            }
            let src = equirun::hub::ModelSource {
                model: String::new(),
                revision: "main".into(),
                model_dir,
            };
            let (mut lm, _, _) =
                equirun::models::lm::loader::load_lm(&src, gguf.as_deref(), &dev, dtype)?;
            let mut r =
                equirun::models::lm::bench_greedy(lm.as_mut(), batch, prompt_len, new_tokens, 0)?;
            r["inference"] = serde_json::json!({
                "device": equirun::device::device_name(&dev),
                "dtype": equirun::device::dtype_name(dtype),
            });
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
        Command::Sweep(a) => equirun::tools::sweep::run(&a, equirun::cli::parse_error),
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

/// Checks made before any command starts work (after the command line parsed): the folders the
/// command writes into (`--out` and the like) can be written, so that a long evaluation does not
/// fail at its end; a cache that cannot be written is only a warning (what it holds is still
/// read; what is not there cannot be kept).
fn preflight(matches: &clap::ArgMatches) -> anyhow::Result<()> {
    use std::path::PathBuf;
    let root = equirun::cli::command();
    let (mut m, mut c) = (matches, &root);
    let mut words: Vec<String> = Vec::new();
    while let Some((name, sub)) = m.subcommand() {
        match c.find_subcommand(name) {
            Some(next) => c = next,
            None => break,
        }
        words.push(name.to_string());
        m = sub;
    }
    // `sweep` checks its results root itself (the config may set it; a dry run writes nothing)
    if words.first().map(String::as_str) == Some("sweep") {
        return Ok(());
    }
    let flag = |id: &str| {
        c.get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| id.to_string())
    };
    let listing = matches!(m.try_get_one::<bool>("list_models"), Ok(Some(true)));
    if !listing {
        if let Ok(Some(dir)) = m.try_get_one::<PathBuf>("out") {
            equirun::output::check_writable_dir(dir).map_err(|e| {
                let f = flag("out");
                anyhow::anyhow!(
                    "{f} {}: {}; pass {f} with a folder you can write to",
                    dir.display(),
                    equirun::output::error_text(&e)
                )
            })?;
        }
    }
    let offline = std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && !v.is_empty());
    let has = |id: &str| m.try_get_raw(id).is_ok_and(|v| v.is_some());
    let from_hub = (has("revision") && !has("model_dir")) || has("scorer_revision");
    if from_hub && !offline && !listing {
        let cache = equirun::hub::hf_cache_dir();
        if let Err(e) = equirun::output::check_writable_dir(&cache) {
            eprintln!(
                "warning: the Hugging Face cache cannot be written ({}): models already there are \
                 used, new downloads will fail; set HF_HUB_CACHE (or HF_HOME) to a writable folder",
                equirun::output::error_text(&e)
            );
        }
    }
    Ok(())
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
    if let Err(e) = preflight(&matches) {
        eprintln!("error: {}", equirun::output::error_text(&e));
        std::process::exit(2);
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
            eprintln!("error: {}", equirun::output::error_text(&e));
            std::process::exit(2);
        }
    }
}
