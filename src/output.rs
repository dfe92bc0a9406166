//! The output contract: one JSON per seed at `<out>/<experiment>/<run-name>/seed-<n>.json`,
//! written atomically (temp file in the same folder, then rename), skipped when a file with
//! the same config exists unless `--force`.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct RunRecord {
    pub schema_version: u32,
    pub experiment: String,
    pub seed: u64,
    pub config: Value,
    pub metrics: Value,
    pub cost: Value,
    pub equirun_version: String,
    pub started_at: String,
    pub finished_at: String,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn result_path(out: &Path, experiment: &str, run_name: &str, seed: u64) -> PathBuf {
    out.join(experiment)
        .join(run_name)
        .join(format!("seed-{seed}.json"))
}

/// What is already on disk for a run.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    Missing,
    SameConfig,
    DifferentConfig,
}

pub fn check_existing(path: &Path, config: &Value) -> Result<Existing> {
    if !path.exists() {
        return Ok(Existing::Missing);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => return Ok(Existing::DifferentConfig),
    };
    Ok(if v.get("config") == Some(config) {
        Existing::SameConfig
    } else {
        Existing::DifferentConfig
    })
}

/// Decides whether to run: `Ok(false)` = skip (done), error = a different run holds the path.
pub fn should_run(path: &Path, config: &Value, force: bool) -> Result<bool> {
    if force {
        return Ok(true);
    }
    match check_existing(path, config)? {
        Existing::Missing => Ok(true),
        Existing::SameConfig => Ok(false),
        Existing::DifferentConfig => bail!(
            "{} already exists with a different config; pass --force to overwrite it or --run-name to choose another name",
            path.display()
        ),
    }
}

/// Writes JSON atomically: a temp file beside the target, fsync, rename.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().context("result path has no parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".json")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Writes bytes atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent folder")?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(())
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

/// Parses `0,1,2` or `0-4` (inclusive) into seeds.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (u64, u64) = (
                a.trim()
                    .parse()
                    .with_context(|| format!("bad seed range '{part}'"))?,
                b.trim()
                    .parse()
                    .with_context(|| format!("bad seed range '{part}'"))?,
            );
            if b < a {
                bail!("bad seed range '{part}': end before start");
            }
            out.extend(a..=b);
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("bad seed '{part}': expected e.g. 0,1,2 or 0-4"))?,
            );
        }
    }
    if out.is_empty() {
        bail!("no seeds given: use e.g. --seeds 0,1,2");
    }
    Ok(out)
}
