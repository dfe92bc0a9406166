//! Datasets and preprocessing.

pub mod download;
pub mod gray;
pub mod images;
pub mod preprocess;
pub mod prompts;
pub mod regard;
pub mod scan;

use std::path::PathBuf;

/// The data folder: `--data-dir`, else `$EQUIRUN_DATA`, else `None`.
pub fn data_dir(explicit: Option<&PathBuf>) -> Option<PathBuf> {
    explicit.cloned().or_else(|| {
        std::env::var_os("EQUIRUN_DATA")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
}
