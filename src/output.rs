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
/// The file is created readable by others (0644 before the umask, like `File::create`; a temp
/// file alone would be 0600), and every error names the path it is about, once.
pub fn write_atomic_with(
    path: &Path,
    suffix: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating the folder", dir, &e))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-").suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let tmp = builder
        .tempfile_in(dir)
        .map_err(|e| io_error("creating a temp file in", dir, &e))?;
    write(tmp.path())
        .map_err(|e| anyhow::anyhow!("writing {}: {}", path.display(), error_text(&e)))?;
    std::fs::File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("syncing", tmp.path(), &e))?;
    tmp.persist(path)
        .map_err(|e| io_error("renaming into", path, &e.error))?;
    Ok(())
}

/// An I/O error as one line that names `path`: `<what> <path>: <reason>`. The reason is the
/// OS's message alone (some wrappers, e.g. tempfile's, repeat it with their own path, which read
/// as the same error printed twice).
pub fn io_error(what: &str, path: &Path, e: &std::io::Error) -> anyhow::Error {
    let reason = match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    };
    anyhow::anyhow!("{what} {}: {reason}", path.display())
}

/// An error and its causes on one line (`a: b: c`), a cause left out when the message before it
/// already says it: wrappers such as the safetensors crate's `IO error: {0}` print their source
/// in their own message, and the OS reason ("No space left on device") would read twice.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if parts.last().is_some_and(|p| p.contains(&s)) {
            continue;
        }
        parts.push(s);
    }
    parts.join(": ")
}

/// Checks up front that files can be created in `dir` (or, if it does not exist yet, in the
/// nearest folder above it that does, where it would be created), without leaving anything
/// behind: an unnamed temp file is created and dropped. Errors name the folder and the reason.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    let mut probe: &Path = dir;
    loop {
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => anyhow::bail!(
                "{} is not a folder{}",
                probe.display(),
                if probe == dir {
                    String::new()
                } else {
                    format!(" (so {} cannot be created)", dir.display())
                }
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) && probe != Path::new(".") =>
            {
                probe = match probe.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
            }
            Err(e) => return Err(io_error("cannot inspect", probe, &e)),
        }
    }
    tempfile::tempfile_in(probe).map_err(|e| io_error("cannot create files in", probe, &e))?;
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
