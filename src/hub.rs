//! Weight resolution: a local `--model-dir` snapshot, or a Hugging Face hub repo through the
//! standard HF cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
//! With `HF_HUB_OFFLINE=1` the network is never touched; a file missing from the cache is an
//! error naming the file, the cache path searched and `--model-dir`.

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a model's files come from.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args, PartialEq)]
pub struct ModelSource {
    /// Hugging Face model id (resolved through the HF cache; downloaded only when online).
    #[arg(long, default_value = "openai/clip-vit-base-patch32")]
    pub model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// A local snapshot folder (config.json, model.safetensors, tokenizer.json); overrides --model.
    #[arg(long, value_name = "PATH")]
    pub model_dir: Option<PathBuf>,
}

/// The resolved provenance of a model, recorded in result JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelOrigin {
    /// `hub` or `local`.
    pub kind: String,
    pub id: String,
    pub revision: Option<String>,
    /// Commit hash the revision resolved to (hub only, when known).
    pub commit: Option<String>,
    pub path: String,
}

/// Resolved files by name.
#[derive(Clone, Debug)]
pub struct ResolvedModel {
    pub files: BTreeMap<String, PathBuf>,
    pub origin: ModelOrigin,
}

impl ResolvedModel {
    pub fn file(&self, name: &str) -> Result<&Path> {
        self.files
            .get(name)
            .map(|p| p.as_path())
            .ok_or_else(|| anyhow!("file {name} was not resolved"))
    }
}

/// `HF_HUB_OFFLINE` set to 1/true/yes/on.
pub fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// A cache folder: `$direct`, else `$parent/<sub>`, else `~/.cache/<home_sub>`.
pub fn env_cache_dir(direct: &str, parent: &str, sub: &str, home_sub: &str) -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var(direct) {
        return p;
    }
    if let Some(p) = var(parent) {
        return p.join(sub);
    }
    var("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache")
        .join(home_sub)
}

/// The HF hub cache folder, honouring `HF_HUB_CACHE` and `HF_HOME`.
pub fn hf_cache_dir() -> PathBuf {
    env_cache_dir("HF_HUB_CACHE", "HF_HOME", "hub", "huggingface/hub")
}

impl ModelSource {
    /// Resolves `required` files (and `optional` ones when present).
    pub fn resolve(&self, required: &[&str], optional: &[&str]) -> Result<ResolvedModel> {
        match &self.model_dir {
            Some(dir) => resolve_local(dir, required, optional),
            None => resolve_hub(&self.model, &self.revision, required, optional),
        }
    }
}

fn resolve_local(dir: &Path, required: &[&str], optional: &[&str]) -> Result<ResolvedModel> {
    if !dir.is_dir() {
        bail!("--model-dir {} is not a folder", dir.display());
    }
    let mut files = BTreeMap::new();
    for f in required {
        let p = dir.join(f);
        if !p.is_file() {
            bail!(
                "missing weights file: {} not found in --model-dir {} (it needs {})",
                f,
                dir.display(),
                required.join(", ")
            );
        }
        files.insert(f.to_string(), p);
    }
    for f in optional {
        let p = dir.join(f);
        if p.is_file() {
            files.insert(f.to_string(), p);
        }
    }
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Ok(ResolvedModel {
        files,
        origin: ModelOrigin {
            kind: "local".into(),
            id: abs.display().to_string(),
            revision: None,
            commit: None,
            path: abs.display().to_string(),
        },
    })
}

fn resolve_hub(
    model: &str,
    revision: &str,
    required: &[&str],
    optional: &[&str],
) -> Result<ResolvedModel> {
    if model.trim().is_empty() || model.split('/').count() > 2 {
        bail!("invalid hub model id '{model}': expected 'org/name' (or pass --model-dir PATH)");
    }
    let cache_dir = hf_cache_dir();
    let cache = Cache::new(cache_dir.clone());
    let repo = Repo::with_revision(model.to_string(), RepoType::Model, revision.to_string());
    let cache_repo = cache.repo(repo.clone());
    let repo_folder = cache_dir.join(repo.folder_name());
    let mut files = BTreeMap::new();
    let mut api_repo = None;
    for (f, is_required) in required
        .iter()
        .map(|f| (f, true))
        .chain(optional.iter().map(|f| (f, false)))
    {
        if let Some(p) = cache_repo.get(f) {
            files.insert(f.to_string(), p);
            continue;
        }
        if offline() {
            if is_required {
                bail!(
                    "missing weights: {f} of {model}@{revision} is not in the HF cache (searched {}) \
                     and HF_HUB_OFFLINE=1 forbids downloading it; download it on a machine with \
                     internet, or pass --model-dir PATH to a local snapshot (config.json, \
                     model.safetensors, tokenizer.json)",
                    repo_folder.join("snapshots").display()
                );
            }
            continue;
        }
        if api_repo.is_none() {
            let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
                .with_progress(true)
                .build()
                .context("building the Hugging Face hub client")?;
            api_repo = Some(api.repo(repo.clone()));
        }
        match api_repo.as_ref().unwrap().get(f) {
            Ok(p) => {
                files.insert(f.to_string(), p);
            }
            Err(e) if is_required => bail!(
                "could not get {f} of {model}@{revision}: {e}. The file is not in the HF cache \
                 ({}); check the model id and your network, set HF_HUB_OFFLINE=1 to stay offline, \
                 or pass --model-dir PATH to a local snapshot",
                repo_folder.display()
            ),
            Err(_) => {}
        }
    }
    let commit = std::fs::read_to_string(repo_folder.join("refs").join(revision))
        .ok()
        .map(|s| s.trim().to_string())
        .or_else(|| {
            (revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| revision.to_string())
        });
    Ok(ResolvedModel {
        files,
        origin: ModelOrigin {
            kind: "hub".into(),
            id: model.to_string(),
            revision: Some(revision.to_string()),
            commit,
            path: repo_folder.display().to_string(),
        },
    })
}

/// Writes `files` into an HF-cache layout (`models--org--name/{refs/<rev>, snapshots/<commit>/}`)
/// under `cache_dir`: how tests and offline users place a snapshot where `--model` finds it.
pub fn install_into_cache(
    cache_dir: &Path,
    model: &str,
    revision: &str,
    commit: &str,
    files: &[(&str, &Path)],
) -> Result<PathBuf> {
    let repo = Repo::with_revision(model.to_string(), RepoType::Model, revision.to_string());
    let root = cache_dir.join(repo.folder_name());
    let snap = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap)?;
    std::fs::create_dir_all(root.join("refs"))?;
    std::fs::write(root.join("refs").join(revision), commit)?;
    for (name, src) in files {
        std::fs::copy(src, snap.join(name))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(snap)
}
