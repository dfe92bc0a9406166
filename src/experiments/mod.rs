//! One module per experiment: config → run per seed → metrics JSON.

pub mod check;
pub mod clip;
pub mod clip_finetune;
pub mod cnn;
pub mod fairness;
pub mod multi_image;
pub mod regard;
pub mod regard_report;
pub mod report;
pub mod scan;
pub mod sweep;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Options shared by every experiment that writes results.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunOpts {
    /// Seeds to run, e.g. `0,1,2` or `0-4`; one JSON per seed.
    #[arg(long, default_value = "0")]
    pub seeds: String,
    /// Results root: files go to <out>/<experiment>/<run-name>/seed-<n>.json.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Run folder name (default: derived from the config, with a short config hash).
    #[arg(long)]
    pub run_name: Option<String>,
    /// Recompute and overwrite results that already exist.
    #[arg(long)]
    pub force: bool,
}

/// A progress bar on stderr (hidden when stderr is not a terminal or EQUIRUN_NO_PROGRESS is set).
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    if std::env::var_os("EQUIRUN_NO_PROGRESS").is_some() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{msg}}"
        ))
        .unwrap(),
    );
    pb
}
