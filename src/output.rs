//! Files and run-level utilities below every experiment: atomic writes (JSON, bytes,
//! safetensors — a temp file in the target's folder, fsync, rename, so a crash never leaves a
//! half-written file), config hashes, per-purpose seeded RNGs, `--seeds` parsing, peak memory and
//! progress bars. The per-seed result contract is `crate::experiments::harness`.

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Writes JSON (pretty, newline-terminated) atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_bytes_atomic(path, text.as_bytes())
}

/// Writes bytes atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, "", |tmp| {
        std::fs::write(tmp, bytes)?;
        Ok(())
    })
}

/// Writes a file atomically through `write(temp path)`: the temp file (`.tmp-*<suffix>`) sits
/// beside the target (parallel runs get unique names), is synced, then renamed over `path`.
pub fn write_atomic_with(
    path: &Path,
    suffix: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().context("path has no parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(suffix)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    write(tmp.path()).with_context(|| format!("writing {}", path.display()))?;
    std::fs::File::open(tmp.path())?.sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Saves named tensors as safetensors, atomically.
pub fn save_safetensors_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    write_atomic_with(path, ".safetensors", |tmp| {
        candle_core::safetensors::save(tensors, tmp)?;
        Ok(())
    })
}

/// Saves every variable of a `VarMap` as safetensors, atomically.
pub fn save_varmap_atomic(varmap: &candle_nn::VarMap, path: &Path) -> Result<()> {
    write_atomic_with(path, ".safetensors", |tmp| {
        varmap.save(tmp)?;
        Ok(())
    })
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

/// First 12 hex digits of the SHA-256 of a value's canonical JSON.
pub fn short_hash(v: &Value) -> String {
    let h = Sha256::digest(serde_json::to_vec(v).unwrap_or_default());
    h.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Peak resident memory of this process in MiB (Linux), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// A ChaCha RNG seeded from (run seed, purpose): independent streams per purpose.
pub fn rng_for(seed: u64, purpose: &str) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(purpose.as_bytes());
    let d = h.finalize();
    rand_chacha::ChaCha8Rng::from_seed(d.into())
}

/// A u64 derived from (seed, purpose).
pub fn derive_seed(seed: u64, purpose: &str) -> u64 {
    use rand::RngCore;
    rng_for(seed, purpose).next_u64()
}

/// Parses `0,1,2`, `0-4` (inclusive) or a mix into distinct seeds, bounded before expansion
/// (see [`crate::parse::parse_seeds`]).
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    crate::parse::parse_seeds(s)
}
