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
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
