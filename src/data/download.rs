//! `equirun data scan`: fetch the official SCAN files (brendenlake/SCAN on GitHub) for users
//! with internet access. Each file is written atomically; existing files are kept.

use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;

/// The commit the SCAN files are pinned to (the same as `../shared/data/scan/SOURCE`).
pub const SCAN_COMMIT: &str = "c4b756cbc010d75c912f16c42c8f15dc6b7e6c8f";

pub const SCAN_FILES: &[&str] = &[
    "tasks.txt",
    "simple_split/tasks_train_simple.txt",
    "simple_split/tasks_test_simple.txt",
    "add_prim_split/tasks_train_addprim_jump.txt",
    "add_prim_split/tasks_test_addprim_jump.txt",
    "add_prim_split/tasks_train_addprim_turn_left.txt",
    "add_prim_split/tasks_test_addprim_turn_left.txt",
    "length_split/tasks_train_length.txt",
    "length_split/tasks_test_length.txt",
    "template_split/tasks_train_template_around_right.txt",
    "template_split/tasks_test_template_around_right.txt",
];

/// Downloads the SCAN files into `out` (skipping files already present) and checks that each
/// parses as SCAN. Returns (file, lines) pairs.
pub fn download_scan(out: &Path, base_url: &str) -> Result<Vec<(String, usize)>> {
    let mut done = Vec::new();
    for f in SCAN_FILES {
        let dest = out.join(f);
        if !dest.is_file() {
            let url = format!("{}/{}/{}", base_url.trim_end_matches('/'), SCAN_COMMIT, f);
            eprintln!("downloading {url}");
            let mut resp = ureq::get(&url).call().with_context(|| {
                format!("could not download {url}; without internet, copy the SCAN files into {} by hand", out.display())
            })?;
            let mut body = String::new();
            resp.body_mut()
                .as_reader()
                .read_to_string(&mut body)
                .with_context(|| format!("reading {url}"))?;
            crate::data::scan::parse_scan_str(&body, &dest)?;
            crate::output::write_bytes_atomic(&dest, body.as_bytes())?;
        }
        let n = crate::data::scan::read_scan_file(&dest)?.len();
        done.push((f.to_string(), n));
    }
    Ok(done)
}
