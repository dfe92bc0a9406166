//! The per-seed harness every experiment runs through (the output contract of `docs/outputs.md`):
//!
//! * one JSON per seed at `<out>/<experiment>/<run-name>/seed-<n>.json`, a [`RunRecord`];
//! * a seed whose file already holds the same `config` is skipped; a file with another config is
//!   an error unless `--force` (then it is recomputed and overwritten);
//! * default run names are `<readable parts>-<short hash of the config>` ([`run_name`]);
//! * every file is written atomically ([`crate::output`]: temp file beside the target, fsync,
//!   rename), JSON and safetensors alike.
//!
//! An experiment builds its config once, names its run folder with [`RunFolder::new`] and hands
//! [`RunFolder::run_seeds`] a closure that computes one seed's metrics and cost.

use crate::cli::opts::RunOpts;
use crate::output;
use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const SCHEMA_VERSION: u32 = 1;

/// What `seed-<n>.json` holds.
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

impl RunRecord {
    /// A record finished now.
    pub fn new(
        experiment: &str,
        seed: u64,
        config: &Value,
        metrics: Value,
        cost: Value,
        started_at: String,
    ) -> RunRecord {
        RunRecord {
            schema_version: SCHEMA_VERSION,
            experiment: experiment.into(),
            seed,
            config: config.clone(),
            metrics,
            cost,
            equirun_version: env!("CARGO_PKG_VERSION").into(),
            started_at,
            finished_at: now_rfc3339(),
        }
    }
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

/// What `path` holds. A file that is not a result JSON (truncated by a full disk, corrupt) is an
/// error naming it, not "a different config".
pub fn check_existing(path: &Path, config: &Value) -> Result<Existing> {
    if !path.exists() {
        return Ok(Existing::Missing);
    }
    let bytes = std::fs::read(path).map_err(|e| output::io_error("reading", path, &e))?;
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => bail!(
            "{} is not a result file (its JSON is not an object); pass --force to recompute it, or delete the file",
            path.display()
        ),
        Err(e) => bail!(
            "{} is unreadable (truncated or corrupt JSON: {e}); pass --force to recompute it, or delete the file",
            path.display()
        ),
    };
    Ok(if v.get("config") == Some(config) {
        Existing::SameConfig
    } else {
        Existing::DifferentConfig
    })
}

/// Decides whether to run: `Ok(false)` = skip (done), error = a different run holds the path
/// or the file there cannot be read as a result (truncated, corrupt).
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

/// The default run name: the readable `parts` joined by `-`, then the config's short hash; an
/// explicit `--run-name` wins.
pub fn run_name(explicit: Option<&String>, parts: &[&str], config: &Value) -> String {
    explicit.cloned().unwrap_or_else(|| {
        let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        p.push(output::short_hash(config));
        p.join("-")
    })
}

/// The last path segment of a model id (`openai/clip-vit-base-patch32` → `clip-vit-base-patch32`).
pub fn model_slug(id: &str) -> String {
    id.rsplit('/').next().unwrap_or("model").to_string()
}

/// What one seed produced: the record's metrics and cost, and a one-line summary printed with
/// the result path.
pub struct SeedOutcome {
    pub metrics: Value,
    pub cost: Value,
    pub summary: String,
}

/// One run folder of one experiment: `<out>/<experiment>/<name>/`, all seeds with one config.
pub struct RunFolder<'a> {
    pub out: &'a Path,
    pub experiment: &'a str,
    pub name: String,
    pub config: &'a Value,
    pub force: bool,
}

impl<'a> RunFolder<'a> {
    pub fn new(run: &'a RunOpts, experiment: &'a str, name: String, config: &'a Value) -> Self {
        RunFolder {
            out: &run.out,
            experiment,
            name,
            config,
            force: run.force,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.out.join(self.experiment).join(&self.name)
    }

    pub fn seed_path(&self, seed: u64) -> PathBuf {
        result_path(self.out, self.experiment, &self.name, seed)
    }

    /// The result path of `seed` if it has to be computed; `None` (with a message) when a result
    /// with the same config exists; an error when another config holds the path.
    pub fn claim(&self, seed: u64) -> Result<Option<PathBuf>> {
        let path = self.seed_path(seed);
        if should_run(&path, self.config, self.force)? {
            Ok(Some(path))
        } else {
            eprintln!(
                "skip: {} exists with the same config (use --force to recompute)",
                path.display()
            );
            Ok(None)
        }
    }

    /// Writes seed `seed`'s record atomically; returns its path.
    pub fn write(
        &self,
        seed: u64,
        started_at: String,
        metrics: Value,
        cost: Value,
    ) -> Result<PathBuf> {
        let path = self.seed_path(seed);
        let record = RunRecord::new(
            self.experiment,
            seed,
            self.config,
            metrics,
            cost,
            started_at,
        );
        output::write_json_atomic(&path, &record)?;
        Ok(path)
    }

    /// The seed loop: for every seed not done yet, `body(seed, result path)` computes the
    /// outcome, the record is written atomically and `<summary> -> <path>` printed. Returns every
    /// seed's result path (skipped ones included), in seed order.
    pub fn run_seeds(
        &self,
        seeds: &[u64],
        mut body: impl FnMut(u64, &Path) -> Result<SeedOutcome>,
    ) -> Result<Vec<PathBuf>> {
        let mut paths = Vec::with_capacity(seeds.len());
        for &seed in seeds {
            let Some(path) = self.claim(seed)? else {
                paths.push(self.seed_path(seed));
                continue;
            };
            let started_at = now_rfc3339();
            let o = body(seed, &path)?;
            self.write(seed, started_at, o.metrics, o.cost)?;
            if o.summary.is_empty() {
                eprintln!("seed {seed} -> {}", path.display());
            } else {
                eprintln!("{} -> {}", o.summary, path.display());
            }
            paths.push(path);
        }
        Ok(paths)
    }

    /// The result files of this folder whose config is this run's, in seed order (seeds may have
    /// run as separate processes).
    pub fn same_config_results(&self) -> Result<Vec<PathBuf>> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut seeds: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| output::io_error("listing", &dir, &e))?
            .flatten()
            .map(|e| e.path())
            .filter_map(|p| {
                let n = p.file_name()?.to_str()?;
                let s = n
                    .strip_prefix("seed-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((s, p))
            })
            .filter(|(_, p)| matches!(check_existing(p, self.config), Ok(Existing::SameConfig)))
            .collect();
        seeds.sort_by_key(|(s, _)| *s);
        Ok(seeds.into_iter().map(|(_, p)| p).collect())
    }
}
