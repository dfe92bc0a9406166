//! Weight resolution: a local `--model-dir` snapshot, or a Hugging Face hub repo through the
//! standard HF cache, configured from the environment as the Hugging Face tools are:
//!
//! * `HF_ENDPOINT`: the hub or a mirror / air-gapped proxy (default `https://huggingface.co`);
//! * `HF_TOKEN` (else the file `HF_TOKEN_PATH`, else `$HF_HOME/token`, else
//!   `~/.cache/huggingface/token`): sent as `Authorization: Bearer` to the endpoint's host only;
//! * `HF_HUB_OFFLINE=1`: never touch the network;
//! * `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`: the cache, in the
//!   hub's layout `models--org--name/{blobs/<etag>, refs/<revision>, snapshots/<commit>/<file>,
//!   .no_exist/<commit>/<file>}`.
//!
//! A 40-hex `--revision` is a commit and resolves to `snapshots/<commit>` without a request;
//! a branch or tag goes through `refs/<name>` (while every file of the commit it points at is
//! cached, a branch is not re-checked for newer commits: pin a commit, or delete
//! `refs/<branch>` to pick up a new one). A file that is in the snapshot, or that the
//! hub said does not exist at that commit (`.no_exist/`, as huggingface_hub records it), is
//! never asked for again, so a fully cached model runs without a single request. Offline and
//! uncached is an error saying the files are "not downloaded yet" and how to get them.
//!
//! Why not `hf_hub::api::sync`: hf-hub 0.5's client reads neither `HF_TOKEN` nor
//! `HF_HUB_CACHE`, keeps no `.no_exist` record (every run re-asks for optional files), turns
//! every 4xx into an opaque status error (the hub's `X-Error-Code`: EntryNotFound vs
//! RevisionNotFound vs RepositoryNotFound is lost), never checks the downloaded size (a
//! connection closed early is renamed into `blobs/` as if complete) and panics on a redirect
//! without `Location`. The resolve protocol is small, so it is spoken here with `ureq`:
//! `HEAD {endpoint}/{repo}/resolve/{revision}/{file}` (relative redirects followed, as for
//! renamed repos) gives `X-Repo-Commit`, `X-Linked-Etag`/`ETag`, `X-Linked-Size`/
//! `Content-Length` and, for LFS files, a `Location` to download from; the body is streamed
//! into a temporary file beside the blob, its size (and sha256, for LFS etags) checked, and
//! only then renamed into place, so a download that dies midway leaves nothing in the cache.

use anyhow::{anyhow, bail, Context, Result};
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

/// The HF hub cache folder as huggingface_hub finds it: `HF_HUB_CACHE` (or the legacy
/// `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(p) = env_nonempty("HF_HUB_CACHE").or_else(|| env_nonempty("HUGGINGFACE_HUB_CACHE"))
    {
        return PathBuf::from(p);
    }
    env_cache_dir("HF_HOME", "XDG_CACHE_HOME", "huggingface", "huggingface").join("hub")
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

/// The hub client's configuration, read from the environment (see the module docs).
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Without a trailing slash.
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
    pub cache: PathBuf,
}

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|s| !s.trim().is_empty())
}

impl HubConfig {
    pub fn from_env() -> Result<HubConfig> {
        let endpoint = env_nonempty("HF_ENDPOINT")
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let valid = ["http://", "https://"].iter().any(|p| {
            endpoint
                .strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        });
        if !valid
            || endpoint
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            bail!("HF_ENDPOINT '{endpoint}' is not an http(s) URL such as https://huggingface.co");
        }
        Ok(HubConfig {
            endpoint,
            token: token_from_env(),
            offline: offline(),
            cache: hf_cache_dir(),
        })
    }

    /// `scheme://host[:port]` of the endpoint (where relative redirects point).
    fn origin(&self) -> &str {
        let after = self.endpoint.find("://").map(|i| i + 3).unwrap_or(0);
        match self.endpoint[after..].find('/') {
            Some(i) => &self.endpoint[..after + i],
            None => &self.endpoint,
        }
    }
}

/// `HF_TOKEN` (or the legacy `HUGGING_FACE_HUB_TOKEN`), else the token file `HF_TOKEN_PATH`,
/// else `$HF_HOME/token` (default `~/.cache/huggingface/token`), as huggingface_hub reads it.
pub fn token_from_env() -> Option<String> {
    if let Some(t) = env_nonempty("HF_TOKEN").or_else(|| env_nonempty("HUGGING_FACE_HUB_TOKEN")) {
        return Some(t.trim().to_string());
    }
    let path = env_nonempty("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            env_cache_dir("HF_HOME", "XDG_CACHE_HOME", "huggingface", "huggingface").join("token")
        });
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A 40-hex commit hash.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a hub repo id (`name` or `org/name`, letters, digits, `-`, `_`, `.`).
pub fn validate_repo_id(model: &str) -> Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with('.')
            && !p.contains("--")
            && !p.contains("..")
    };
    let parts: Vec<&str> = model.split('/').collect();
    if parts.len() > 2 || !parts.iter().all(|p| ok_part(p)) {
        bail!(
            "invalid hub model id '{model}': expected 'org/name' (letters, digits, '-', '_', '.'), \
             or pass --model-dir PATH"
        );
    }
    Ok(())
}

/// Checks a revision (branch, tag, `refs/pr/N` or commit): it names a file under `refs/`, so
/// no `..`, no absolute path, no empty or control characters.
pub fn validate_revision(rev: &str) -> Result<()> {
    let bad = rev.is_empty()
        || rev.len() > 255
        || rev.starts_with('/')
        || rev.ends_with('/')
        || rev.contains('\\')
        || rev.chars().any(|c| c.is_control() || c.is_whitespace())
        || rev
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        bail!(
            "invalid --revision '{}': expected a branch, tag or 40-hex commit",
            rev.escape_debug()
        );
    }
    Ok(())
}

/// The cache folder of a model repo: `models--org--name`.
pub fn repo_folder_name(model: &str) -> String {
    format!("models--{}", model.replace('/', "--"))
}

/// One repo's folder in the HF cache.
struct RepoCache {
    root: PathBuf,
}

impl RepoCache {
    fn new(cache: &Path, model: &str) -> RepoCache {
        RepoCache {
            root: cache.join(repo_folder_name(model)),
        }
    }
    /// The commit a revision points at, from the cache alone: a commit hash is itself,
    /// anything else is read from `refs/<revision>`.
    fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_ascii_lowercase());
        }
        let c = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        let c = c.trim();
        safe_component(c).then(|| c.to_string())
    }
    fn pointer(&self, commit: &str, file: &str) -> PathBuf {
        self.root.join("snapshots").join(commit).join(file)
    }
    fn cached(&self, commit: &str, file: &str) -> Option<PathBuf> {
        let p = self.pointer(commit, file);
        // follows the symlink: a dangling pointer is not a cached file
        p.is_file().then_some(p)
    }
    fn no_exist(&self, commit: &str, file: &str) -> PathBuf {
        self.root.join(".no_exist").join(commit).join(file)
    }
    fn known_absent(&self, commit: &str, file: &str) -> bool {
        self.no_exist(commit, file).exists()
    }
    fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let p = self.root.join("refs").join(revision);
        if std::fs::read_to_string(&p).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        crate::output::write_bytes_atomic(&p, commit.as_bytes())
            .with_context(|| format!("writing the HF cache ref {}", p.display()))
    }
    fn mark_absent(&self, commit: &str, file: &str) {
        let p = self.no_exist(commit, file);
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = std::fs::write(&p, b"");
    }
}

/// A path component the hub gave us (commit, etag) that is safe to use as a file name.
fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn url_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

enum Fetched {
    File { path: PathBuf, commit: String },
    Absent { commit: Option<String> },
}

/// The most relative redirects followed for one file (renamed repos redirect once).
const MAX_REDIRECTS: usize = 10;

struct HubClient<'a> {
    cfg: &'a HubConfig,
    head: ureq::Agent,
    get: ureq::Agent,
}

impl<'a> HubClient<'a> {
    fn new(cfg: &'a HubConfig) -> HubClient<'a> {
        use std::time::Duration;
        let agent = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(120)))
                .timeout_per_read(Some(Duration::from_secs(120)))
                .user_agent(concat!("equirun/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        HubClient {
            cfg,
            head: agent(0),
            get: agent(MAX_REDIRECTS as u32),
        }
    }

    fn auth_for(&self, url: &str) -> Option<String> {
        let origin = self.cfg.origin();
        let same = url
            .strip_prefix(origin)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        match (&self.cfg.token, same) {
            (Some(t), true) => Some(format!("Bearer {t}")),
            _ => None,
        }
    }

    fn request_error(&self, e: ureq::Error, url: &str) -> anyhow::Error {
        anyhow!(
            "cannot reach the hub at {} ({url}): {e}. Check the network and HF_ENDPOINT, or set \
             HF_HUB_OFFLINE=1 to use only what is already in the HF cache",
            self.cfg.endpoint
        )
    }

    /// Resolves `file` of `model@revision`: the HEAD request, then the download if needed.
    fn fetch(&self, rc: &RepoCache, model: &str, revision: &str, file: &str) -> Result<Fetched> {
        let what = format!("{file} of {model}@{revision}");
        let mut url = format!(
            "{}/{}/resolve/{}/{}",
            self.cfg.endpoint,
            model,
            url_encode(revision, false),
            url_encode(file, true)
        );
        let mut hops = 0;
        let resp = loop {
            let mut req = self.head.head(&url).header("Accept-Encoding", "identity");
            if let Some(a) = self.auth_for(&url) {
                req = req.header("Authorization", a);
            }
            let resp = req.call().map_err(|e| self.request_error(e, &url))?;
            let st = resp.status().as_u16();
            let loc = header(&resp, "location");
            match (st, loc) {
                (300..=399, Some(loc)) if loc.starts_with('/') && !loc.starts_with("//") => {
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        bail!(
                            "{what}: more than {MAX_REDIRECTS} redirects from {}",
                            self.cfg.endpoint
                        );
                    }
                    url = format!("{}{loc}", self.cfg.origin());
                }
                _ => break resp,
            }
        };
        let st = resp.status().as_u16();
        let commit = header(&resp, "x-repo-commit");
        let code = header(&resp, "x-error-code").unwrap_or_default();
        let msg = header(&resp, "x-error-message").unwrap_or_default();
        let detail = if msg.is_empty() {
            String::new()
        } else {
            format!(" ({msg})")
        };
        match st {
            200..=299 | 300..=399 => {}
            404 if code == "EntryNotFound" => {
                if let Some(c) = commit.as_deref().filter(|c| safe_component(c)) {
                    rc.write_ref(revision, c)?;
                    rc.mark_absent(c, file);
                }
                return Ok(Fetched::Absent {
                    commit: commit.filter(|c| safe_component(c)),
                });
            }
            404 if code == "RevisionNotFound" => bail!(
                "revision '{revision}' not found in {model} on {}{detail}: check --revision \
                 (a branch, tag or 40-hex commit)",
                self.cfg.endpoint
            ),
            401 | 404 if code == "RepositoryNotFound" || st == 401 => bail!(
                "repository {model} not found on {}{detail} (HTTP {st}): check --model; for a \
                 private or gated repo set HF_TOKEN{}",
                self.cfg.endpoint,
                if self.cfg.token.is_some() {
                    " (a token was sent)"
                } else {
                    ""
                }
            ),
            403 => bail!(
                "access to {model} denied by {} (HTTP 403{}){detail}: a gated repo needs its terms \
                 accepted on the hub and HF_TOKEN set",
                self.cfg.endpoint,
                if code.is_empty() { String::new() } else { format!(", {code}") }
            ),
            404 => bail!(
                "{what} not found on {} (HTTP 404{}){detail}: check --model, --revision and \
                 HF_ENDPOINT",
                self.cfg.endpoint,
                if code.is_empty() {
                    String::new()
                } else {
                    format!(", {code}")
                }
            ),
            _ => bail!(
                "the hub at {} answered HTTP {st} for {what} ({url}){detail}",
                self.cfg.endpoint
            ),
        }
        let commit = commit.ok_or_else(|| {
            anyhow!(
                "{url} sent no X-Repo-Commit header: {} does not look like a Hugging Face hub or \
                 mirror (check HF_ENDPOINT and any proxy in between)",
                self.cfg.endpoint
            )
        })?;
        if !safe_component(&commit) {
            bail!("{url} sent an invalid X-Repo-Commit {commit:?}");
        }
        let etag = header(&resp, "x-linked-etag")
            .or_else(|| header(&resp, "etag"))
            .map(|e| {
                e.trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .to_string()
            })
            .ok_or_else(|| {
                anyhow!("{url} sent no ETag header: cannot place {what} in the HF cache")
            })?;
        if !safe_component(&etag) {
            bail!("{url} sent an invalid ETag {etag:?}");
        }
        let size = header(&resp, "x-linked-size")
            .or_else(|| header(&resp, "content-length"))
            .and_then(|s| s.trim().parse::<u64>().ok());
        let download_url = match (st, header(&resp, "location")) {
            (300..=399, Some(loc)) => loc,
            (300..=399, None) => bail!("{url}: HTTP {st} redirect without a Location header"),
            _ => url.clone(),
        };
        rc.write_ref(revision, &commit)?;
        if let Some(p) = rc.cached(&commit, file) {
            return Ok(Fetched::File { path: p, commit });
        }
        let blob = rc.root.join("blobs").join(&etag);
        if !blob.is_file() {
            self.download(&download_url, &blob, size, &etag, &what)?;
        }
        let pointer = rc.pointer(&commit, file);
        link_pointer(&blob, &pointer, file)?;
        Ok(Fetched::File {
            path: pointer,
            commit,
        })
    }

    /// Streams `url` into a temporary file beside `blob`, checks its size (and sha256 for an
    /// LFS etag) and renames it into place. On any failure the temporary file is removed.
    fn download(
        &self,
        url: &str,
        blob: &Path,
        size: Option<u64>,
        etag: &str,
        what: &str,
    ) -> Result<()> {
        use sha2::{Digest, Sha256};
        use std::io::{Read, Write};
        let dir = blob.parent().expect("blob path has a parent");
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the HF cache folder {}", dir.display()))?;
        let mut req = self.get.get(url).header("Accept-Encoding", "identity");
        if let Some(a) = self.auth_for(url) {
            req = req.header("Authorization", a);
        }
        let mut resp = req.call().map_err(|e| self.request_error(e, url))?;
        let st = resp.status().as_u16();
        if st != 200 {
            bail!("downloading {what}: {url} answered HTTP {st}");
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{etag}."))
            .suffix(".incomplete")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        // a byte progress bar on stderr (hidden when it is not a terminal or with
        // EQUIRUN_NO_PROGRESS), after one log line naming the download
        let pb = if std::env::var_os("EQUIRUN_NO_PROGRESS").is_some() {
            indicatif::ProgressBar::hidden()
        } else {
            eprintln!(
                "downloading {what}{}",
                size.map(|s| format!(" ({s} bytes)")).unwrap_or_default()
            );
            let pb = indicatif::ProgressBar::new(size.unwrap_or(0));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} [{elapsed_precise}<{eta_precise}, {bytes_per_sec}]",
            ) {
                pb.set_style(style);
            }
            pb.set_message(what.to_string());
            pb
        };
        let check_sha = etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit());
        let mut hasher = Sha256::new();
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut got: u64 = 0;
        let failed = |got: u64, why: String| {
            anyhow!(
                "downloading {what} from {url} failed after {got}{} bytes: {why}; nothing was \
                 written to the HF cache (the partial file was removed): run again to retry",
                size.map(|s| format!(" of {s}")).unwrap_or_default()
            )
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(failed(got, e.to_string())),
            };
            got += n as u64;
            pb.set_position(got);
            if size.is_some_and(|s| got > s) {
                return Err(failed(
                    got,
                    "the server sent more bytes than announced".into(),
                ));
            }
            if check_sha {
                hasher.update(&buf[..n]);
            }
            tmp.write_all(&buf[..n])
                .with_context(|| format!("writing {}", tmp.path().display()))?;
        }
        pb.finish_and_clear();
        if let Some(s) = size {
            if got != s {
                return Err(failed(
                    got,
                    "the connection closed before the end of the file".into(),
                ));
            }
        }
        if check_sha {
            let h = format!("{:x}", hasher.finalize());
            if !h.eq_ignore_ascii_case(etag) {
                return Err(failed(
                    got,
                    format!("its sha256 is {h}, not the announced {etag}"),
                ));
            }
        }
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = tmp
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644));
        }
        tmp.persist(blob)
            .map_err(|e| anyhow!("moving the download into {}: {}", blob.display(), e.error))?;
        Ok(())
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

/// Points `snapshots/<commit>/<file>` at the blob (a relative symlink, as the HF tools do; a
/// copy where symlinks are unavailable), atomically.
fn link_pointer(blob: &Path, pointer: &Path, file: &str) -> Result<()> {
    if pointer.is_file() {
        return Ok(());
    }
    let dir = pointer.parent().expect("pointer path has a parent");
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the HF cache folder {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        pointer.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    let linked = {
        // snapshots/<commit>/<file> -> ../../blobs/<etag>, one more ../ per folder in `file`
        let depth = 2 + file.matches('/').count();
        let mut rel = PathBuf::new();
        for _ in 0..depth {
            rel.push("..");
        }
        rel.push("blobs");
        rel.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&rel, &tmp).is_ok()
    };
    #[cfg(not(unix))]
    let linked = false;
    if !linked {
        std::fs::copy(blob, &tmp).with_context(|| format!("copying {}", blob.display()))?;
    }
    std::fs::rename(&tmp, pointer)
        .with_context(|| format!("writing the HF cache entry {}", pointer.display()))?;
    Ok(())
}

fn resolve_hub(
    model: &str,
    revision: &str,
    required: &[&str],
    optional: &[&str],
) -> Result<ResolvedModel> {
    if model.trim().is_empty() {
        bail!("no hub model id: pass --model ORG/NAME or --model-dir PATH");
    }
    validate_repo_id(model)?;
    validate_revision(revision)?;
    let cfg = HubConfig::from_env()?;
    let rc = RepoCache::new(&cfg.cache, model);
    let mut commit = rc.commit_for(revision);
    let mut files = BTreeMap::new();
    let mut client: Option<HubClient> = None;
    let mut missing = Vec::new(); // offline: required files not in the cache
    let mut unknown = Vec::new(); // offline: optional files neither cached nor known absent
    let mut known_absent = 0usize;
    for (f, is_required) in required
        .iter()
        .map(|f| (*f, true))
        .chain(optional.iter().map(|f| (*f, false)))
    {
        if let Some(c) = &commit {
            if let Some(p) = rc.cached(c, f) {
                files.insert(f.to_string(), p);
                continue;
            }
            if rc.known_absent(c, f) {
                known_absent += 1;
                if !is_required {
                    continue;
                }
                if cfg.offline {
                    bail!(
                        "{f} does not exist in {model}@{revision} (commit {c}; the hub said so \
                         earlier, recorded in {}); check --model and --revision",
                        rc.no_exist(c, f).display()
                    );
                }
            }
        }
        if cfg.offline {
            if is_required {
                missing.push(f);
            } else {
                unknown.push(f);
            }
            continue;
        }
        let cl = client.get_or_insert_with(|| HubClient::new(&cfg));
        match cl.fetch(&rc, model, revision, f)? {
            Fetched::File { path, commit: c } => {
                commit = Some(c);
                files.insert(f.to_string(), path);
            }
            Fetched::Absent { commit: c } => {
                if c.is_some() {
                    commit = c;
                }
                if is_required {
                    bail!(
                        "{f} does not exist in {model}@{revision} on {} (EntryNotFound): this \
                         repo does not have the files equirun needs ({})",
                        cfg.endpoint,
                        required.join(", ")
                    );
                }
            }
        }
    }
    let nothing_known = files.is_empty() && known_absent == 0 && !unknown.is_empty();
    if cfg.offline && (!missing.is_empty() || nothing_known) {
        let names: Vec<&str> = if missing.is_empty() {
            unknown.clone()
        } else {
            missing.clone()
        };
        let state = match &commit {
            Some(c) => format!(
                "the HF cache has snapshot {} but not these files",
                rc.root.join("snapshots").join(c).display()
            ),
            None => format!(
                "the HF cache has no snapshot of this revision (searched {})",
                rc.root.display()
            ),
        };
        bail!(
            "{} of {model}@{revision} not downloaded yet: HF_HUB_OFFLINE=1 forbids downloading \
             and {state}. Run once online (unset HF_HUB_OFFLINE; HF_ENDPOINT for a mirror) to \
             download it, copy the snapshot into the cache, or pass --model-dir PATH to a local \
             snapshot",
            names.join(", ")
        );
    }
    Ok(ResolvedModel {
        files,
        origin: ModelOrigin {
            kind: "hub".into(),
            id: model.to_string(),
            revision: Some(revision.to_string()),
            commit,
            path: rc.root.display().to_string(),
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
    let root = cache_dir.join(repo_folder_name(model));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_revisions_and_urls() {
        for ok in [
            "org/name",
            "gpt2",
            "openai/clip-vit-base-patch32",
            "a.b/c_d",
        ] {
            assert!(validate_repo_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/x", "a/b/c", "../x", "a/..", "a--b/c", "a b/c", "a/.x", "a/b.",
        ] {
            assert!(validate_repo_id(bad).is_err(), "{bad:?}");
        }
        for ok in [
            "main",
            "v1.0",
            "refs/pr/1",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(validate_revision(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/main", "main/", "a/../b", "..", "a//b", "a\\b", "a b", "x\n",
        ] {
            assert!(validate_revision(bad).is_err(), "{bad:?}");
        }
        assert!(is_commit_hash("0123456789abcdef0123456789ABCDEF01234567"));
        assert!(!is_commit_hash("main"));
        assert_eq!(url_encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(url_encode("sub dir/f.json", true), "sub%20dir/f.json");
        assert_eq!(repo_folder_name("org/name"), "models--org--name");
        let cfg = |e: &str| HubConfig {
            endpoint: e.into(),
            token: None,
            offline: false,
            cache: PathBuf::new(),
        };
        assert_eq!(cfg("https://hf.co").origin(), "https://hf.co");
        assert_eq!(
            cfg("http://127.0.0.1:8080/mirror/hf").origin(),
            "http://127.0.0.1:8080"
        );
        assert!(safe_component("0d370e4d4b01"));
        assert!(!safe_component("../x") && !safe_component("a/b") && !safe_component(""));
    }
}
