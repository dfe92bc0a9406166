//! The hub client against a real HTTP server: a tiny hub on 127.0.0.1 (std `TcpListener` in a
//! thread) that speaks the hub's file-resolution protocol as huggingface.co does:
//!
//! * `HEAD/GET /{repo}/resolve/{revision}/{file}`: small files answer 200 with `ETag` (git
//!   sha1), `Content-Length` and `X-Repo-Commit`; LFS files (`*.safetensors`) answer 302 with
//!   `Location: <endpoint>/blobs/<sha256>`, `X-Linked-Etag: "<sha256>"`, `X-Linked-Size` and
//!   `X-Repo-Commit`;
//! * a missing file: 404 `X-Error-Code: EntryNotFound` (with `X-Repo-Commit`); a missing
//!   revision: 404 `RevisionNotFound`; a missing repo: 401 `RepositoryNotFound`.
//!
//! `equirun clip --model org/tiny` with `HF_ENDPOINT` pointed at it downloads into the
//! standard cache layout, records the commit, and then runs with `HF_HUB_OFFLINE=1` and with
//! the server stopped, without a single further request. Loopback only; every loop is bounded.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPO: &str = "org/tiny";
const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0002";
const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    auth: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Fault {
    #[default]
    None,
    /// every file body: half of it, then the connection closes (Content-Length announced)
    AllMidFile,
    /// LFS blobs only: half, then close
    BlobMidFile,
    /// LFS blobs only: no Content-Length, half, then close (a close-delimited body that looks
    /// complete to an HTTP client; only X-Linked-Size tells)
    BlobMidFileNoLength,
    /// LFS blobs only: the full length, but wrong bytes
    BlobCorrupt,
}

#[derive(Default)]
struct State {
    /// file name -> content
    files: BTreeMap<String, Vec<u8>>,
    /// revision (branch/tag/commit) -> commit
    revisions: BTreeMap<String, String>,
    requests: Vec<Req>,
    /// how file bodies fail (default: they don't)
    fault: Fault,
}

struct Hub {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn sha256_hex(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// A git-blob-like etag for small files (40 hex).
fn small_etag(b: &[u8]) -> String {
    sha256_hex(b)[..40].to_string()
}

impl Hub {
    fn start(files: BTreeMap<String, Vec<u8>>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut revisions = BTreeMap::new();
        for (r, c) in [
            ("main", COMMIT_A),
            ("v1.0", COMMIT_A),
            ("dev", COMMIT_B),
            (COMMIT_A, COMMIT_A),
            (COMMIT_B, COMMIT_B),
        ] {
            revisions.insert(r.to_string(), c.to_string());
        }
        let state = Arc::new(Mutex::new(State {
            files,
            revisions,
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // bounded: the test stops the server, and no test runs anywhere near an hour
            let deadline = Instant::now() + Duration::from_secs(3600);
            while !sp.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = serve(s, port, &st);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Hub {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn requests(&self) -> Vec<Req> {
        self.state.lock().unwrap().requests.clone()
    }
    fn set_fault(&self, f: Fault) {
        self.state.lock().unwrap().fault = f;
    }
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut s: TcpStream, port: u16, st: &Mutex<State>) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let mut lines = text.split("\r\n");
    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let (method, path) = (
        first.first().copied().unwrap_or("").to_string(),
        first.get(1).copied().unwrap_or("").to_string(),
    );
    let auth = lines.take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("authorization")
            .then(|| v.trim().to_string())
    });
    let mut state = st.lock().unwrap();
    state.requests.push(Req {
        method: method.clone(),
        path: path.clone(),
        auth,
    });
    let head = method == "HEAD";
    let mut respond = |status: &str, headers: &[(String, String)], body: &[u8], fault: Fault| {
        let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if fault != Fault::BlobMidFileNoLength {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let _ = s.write_all(out.as_bytes());
        if !head {
            let half = &body[..body.len() / 2];
            let corrupt: Vec<u8> = body.iter().map(|b| b ^ 0x55).collect();
            let body: &[u8] = match fault {
                Fault::None => body,
                Fault::BlobCorrupt => &corrupt,
                _ => half,
            };
            let _ = s.write_all(body);
        }
        let _ = s.flush();
    };
    // GET /blobs/<sha256>
    if let Some(sha) = path.strip_prefix("/blobs/") {
        let found = state.files.values().find(|c| sha256_hex(c) == sha).cloned();
        match found {
            Some(c) => {
                let f = match state.fault {
                    Fault::AllMidFile => Fault::BlobMidFile,
                    f => f,
                };
                respond("200 OK", &[], &c, f)
            }
            None => respond("404 Not Found", &[], b"no such blob", Fault::None),
        }
        return Ok(());
    }
    // a renamed repo: the hub answers with a relative redirect to the new name
    if let Some(rest) = path.strip_prefix("/org/old-name/resolve/") {
        let h: Vec<(String, String)> = vec![("Location".into(), format!("/{REPO}/resolve/{rest}"))];
        respond("307 Temporary Redirect", &h, b"", Fault::None);
        return Ok(());
    }
    let rest = match path.strip_prefix(&format!("/{REPO}/resolve/")) {
        Some(r) => r.to_string(),
        None => {
            let h: Vec<(String, String)> = vec![
                ("X-Error-Code".into(), "RepositoryNotFound".into()),
                ("X-Error-Message".into(), "Repository not found".into()),
            ];
            respond("401 Unauthorized", &h, b"Repository not found", Fault::None);
            return Ok(());
        }
    };
    let (rev, file) = rest.split_once('/').unwrap_or((&rest, ""));
    let rev = rev.replace("%2F", "/");
    let commit = match state.revisions.get(&rev) {
        Some(c) => c.clone(),
        None => {
            let h: Vec<(String, String)> = vec![
                ("X-Error-Code".into(), "RevisionNotFound".into()),
                ("X-Error-Message".into(), format!("Invalid rev id: {rev}")),
            ];
            respond("404 Not Found", &h, b"Invalid rev id", Fault::None);
            return Ok(());
        }
    };
    let content = match state.files.get(file) {
        Some(c) => c.clone(),
        None => {
            let h: Vec<(String, String)> = vec![
                ("X-Error-Code".into(), "EntryNotFound".into()),
                ("X-Error-Message".into(), "Entry not found".into()),
                ("X-Repo-Commit".into(), commit.clone()),
            ];
            respond("404 Not Found", &h, b"Entry not found", Fault::None);
            return Ok(());
        }
    };
    if file.ends_with(".safetensors") {
        let sha = sha256_hex(&content);
        let h: Vec<(String, String)> = vec![
            ("X-Repo-Commit".into(), commit.clone()),
            ("ETag".into(), format!("\"{}\"", small_etag(&content))),
            ("X-Linked-Etag".into(), format!("\"{sha}\"")),
            ("X-Linked-Size".into(), content.len().to_string()),
            (
                "Location".into(),
                format!("http://127.0.0.1:{port}/blobs/{sha}"),
            ),
        ];
        respond("302 Found", &h, b"Found. Redirecting", Fault::None);
    } else {
        let h: Vec<(String, String)> = vec![
            ("X-Repo-Commit".into(), commit.clone()),
            ("ETag".into(), format!("\"{}\"", small_etag(&content))),
        ];
        let f = match state.fault {
            Fault::AllMidFile => Fault::AllMidFile,
            _ => Fault::None,
        };
        respond("200 OK", &h, &content, f);
    }
    Ok(())
}

struct Env {
    root: tempfile::TempDir,
    files: BTreeMap<String, Vec<u8>>,
}

impl Env {
    fn new() -> Env {
        let root = tempfile::tempdir().unwrap();
        let snap = root.path().join("snapshot");
        equirun::testing::write_tiny_clip_for_cifar10(&snap, 3);
        let files = FILES
            .iter()
            .map(|f| (f.to_string(), std::fs::read(snap.join(f)).unwrap()))
            .collect();
        equirun::testing::write_tiny_cifar10(&root.path().join("data"), 12, 5);
        Env { root, files }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.root.path().join(s)
    }
    fn repo_dir(&self) -> PathBuf {
        self.p("hf/hub/models--org--tiny")
    }
    fn cmd(&self, hub: &Hub, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_equirun"));
        c.args(args)
            .env("HF_ENDPOINT", hub.endpoint())
            .env("HF_HOME", self.p("hf"))
            .env("EQUIRUN_CACHE", self.p("cache"))
            .env("EQUIRUN_NO_PROGRESS", "1")
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("EQUIRUN_DATA");
        for k in [
            "HF_HUB_CACHE",
            "HF_HUB_OFFLINE",
            "HF_TOKEN",
            "HF_TOKEN_PATH",
            "HUGGING_FACE_HUB_TOKEN",
            "HUGGINGFACE_HUB_CACHE",
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            c.env_remove(k);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
    /// `equirun clip --model <model>` on the tiny CIFAR-10, results under `<root>/<out>`.
    fn clip(&self, hub: &Hub, env: &[(&str, &str)], model: &str, rev: &str, out: &str) -> Output {
        let data = self.p("data");
        let out = self.p(out);
        self.cmd(
            hub,
            env,
            &[
                "clip",
                "--model",
                model,
                "--revision",
                rev,
                "--dataset",
                "cifar10",
                "--data-dir",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--batch-size",
                "6",
                "--group",
                "rot90",
                "--method",
                "vanilla,equitune",
                "--seeds",
                "0",
            ],
        )
    }
    fn result(&self, out: &str) -> Value {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out)
                } else if p.extension().is_some_and(|e| e == "json") {
                    out.push(p)
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.p(out), &mut v);
        assert_eq!(v.len(), 1, "{v:?}");
        serde_json::from_str(&std::fs::read_to_string(&v[0]).unwrap()).unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\nstderr: {}",
        o.status.code(),
        stderr(o)
    );
    eprintln!("[{what}] exit 0");
}

fn fails(o: &Output, what: &str, needles: &[&str]) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{what}: stderr: {e}");
    for n in needles {
        assert!(e.contains(n), "{what}: {n:?} not in: {e}");
    }
    assert!(!e.contains("panicked"), "{what}: {e}");
    eprintln!("[{what}] exit 2: {}", e.trim());
    e
}

/// Every file under `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out)
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string())
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn download_then_offline_and_server_stopped() {
    let env = Env::new();
    let mut hub = Hub::start(env.files.clone());

    // 1. online: downloads into the standard cache layout and records the commit
    let o = env.clip(&hub, &[], REPO, "main", "r1");
    ok(&o, "download main");
    let j = env.result("r1");
    let m = &j["config"]["model"];
    assert_eq!(m["kind"], "hub");
    assert_eq!(m["id"], REPO);
    assert_eq!(m["revision"], "main");
    assert_eq!(m["commit"], COMMIT_A);
    let repo = env.repo_dir();
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT_A
    );
    let snap = repo.join("snapshots").join(COMMIT_A);
    for f in FILES {
        let p = snap.join(f);
        assert!(p.is_symlink(), "{} is not a symlink", p.display());
        let target = std::fs::read_link(&p).unwrap();
        assert!(
            target.starts_with("../../blobs"),
            "{f} -> {}",
            target.display()
        );
        assert_eq!(std::fs::read(&p).unwrap(), env.files[f], "{f}");
    }
    let blob = repo
        .join("blobs")
        .join(sha256_hex(&env.files["model.safetensors"]));
    assert!(blob.is_file(), "LFS blob named by its sha256");
    assert!(
        repo.join(".no_exist")
            .join(COMMIT_A)
            .join("open_clip_config.json")
            .is_file(),
        "the hub's EntryNotFound is remembered"
    );
    let files = tree(&repo);
    eprintln!("[cache] {}", files.join("  "));
    assert!(!files.iter().any(|f| f.contains("incomplete")), "{files:?}");
    let reqs = hub.requests();
    for r in &reqs {
        eprintln!("[request] {} {}", r.method, r.path);
    }
    assert!(reqs.iter().all(|r| r.auth.is_none()), "no token configured");
    assert!(reqs
        .iter()
        .any(|r| r.method == "GET" && r.path.starts_with("/blobs/")));
    let n_requests = reqs.len();

    // 2. online again, everything cached (including the absent open_clip_config.json): no request
    let o = env.clip(&hub, &[], REPO, "main", "r2");
    ok(&o, "cached rerun (online)");
    assert_eq!(
        hub.requests().len(),
        n_requests,
        "a fully cached model makes no request: {:?}",
        &hub.requests()[n_requests..]
    );
    assert_eq!(env.result("r2")["config"]["model"]["commit"], COMMIT_A);

    // 3. HF_HUB_OFFLINE=1 and the server stopped
    hub.stop();
    let o = env.clip(&hub, &[("HF_HUB_OFFLINE", "1")], REPO, "main", "r3");
    ok(&o, "offline rerun, server stopped");
    assert_eq!(env.result("r3")["config"]["model"]["commit"], COMMIT_A);
    assert_eq!(
        env.result("r3")["metrics"],
        env.result("r1")["metrics"],
        "same model, same numbers"
    );
    // 4. online but the server is gone: the cache still serves it
    let o = env.clip(&hub, &[], REPO, "main", "r4");
    ok(&o, "online, server stopped, cached");
    // 5. the commit hash as revision: snapshots/<hash> offline, no refs needed
    let o = env.clip(&hub, &[("HF_HUB_OFFLINE", "1")], REPO, COMMIT_A, "r5");
    ok(&o, "offline, 40-hex revision");
    assert_eq!(env.result("r5")["config"]["model"]["commit"], COMMIT_A);

    // 6. offline and not downloaded: says so, naming repo, revision, files and the fix
    let o = env.clip(&hub, &[("HF_HUB_OFFLINE", "1")], REPO, "dev", "r6");
    fails(
        &o,
        "offline, uncached revision",
        &[
            "not downloaded yet",
            "org/tiny@dev",
            "config.json",
            "HF_HUB_OFFLINE",
            "--model-dir",
        ],
    );
    assert!(!env.p("r6").exists(), "nothing written to --out");
    // 7. server stopped, uncached revision, online: a clear network error
    let o = env.clip(&hub, &[], REPO, "dev", "r7");
    fails(
        &o,
        "online, server stopped, uncached",
        &["cannot reach the hub"],
    );
}

#[test]
fn branch_tag_and_commit_revisions() {
    let env = Env::new();
    let hub = Hub::start(env.files.clone());
    let repo = env.repo_dir();
    // a tag
    ok(&env.clip(&hub, &[], REPO, "v1.0", "tag"), "tag v1.0");
    assert_eq!(env.result("tag")["config"]["model"]["commit"], COMMIT_A);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/v1.0")).unwrap(),
        COMMIT_A
    );
    // a branch at another commit
    ok(&env.clip(&hub, &[], REPO, "dev", "branch"), "branch dev");
    assert_eq!(env.result("branch")["config"]["model"]["commit"], COMMIT_B);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/dev")).unwrap(),
        COMMIT_B
    );
    // a commit: snapshots/<hash>, no refs/<hash> written (as huggingface_hub)
    ok(&env.clip(&hub, &[], REPO, COMMIT_B, "commit"), "commit");
    assert_eq!(env.result("commit")["config"]["model"]["commit"], COMMIT_B);
    assert!(!repo.join("refs").join(COMMIT_B).exists());
    // the blobs are shared between the two commits: one copy each
    let blobs = tree(&repo.join("blobs"));
    assert_eq!(blobs.len(), 3, "{blobs:?}");
    // and all three resolve offline
    for (rev, out) in [("v1.0", "o1"), ("dev", "o2"), (COMMIT_B, "o3")] {
        ok(
            &env.clip(&hub, &[("HF_HUB_OFFLINE", "1")], REPO, rev, out),
            &format!("offline {rev}"),
        );
    }
}

#[test]
fn not_found_errors() {
    let env = Env::new();
    let hub = Hub::start(env.files.clone());
    let o = env.clip(&hub, &[], REPO, "no-such-branch", "a");
    fails(
        &o,
        "404 RevisionNotFound",
        &[
            "revision 'no-such-branch' not found in org/tiny",
            "--revision",
        ],
    );
    let o = env.clip(&hub, &[], "org/missing", "main", "b");
    fails(
        &o,
        "401 RepositoryNotFound",
        &["repository org/missing not found", "HF_TOKEN"],
    );
    // a repo without the weights: 404 EntryNotFound for a required file
    let mut files = env.files.clone();
    files.remove("model.safetensors");
    drop(hub);
    let hub = Hub::start(files);
    let o = env.clip(&hub, &[], REPO, "main", "c");
    fails(
        &o,
        "404 EntryNotFound",
        &["model.safetensors does not exist in org/tiny@main"],
    );
    for out in ["a", "b", "c"] {
        assert!(!env.p(out).exists(), "nothing written to --out {out}");
    }
    // bad ids never reach the network or the file system
    let o = env.clip(&hub, &[], "../../etc", "main", "d");
    fails(&o, "bad repo id", &["invalid hub model id"]);
    let o = env.clip(&hub, &[], REPO, "../../../x", "e");
    fails(&o, "bad revision", &["invalid --revision"]);
}

#[test]
fn server_dying_mid_file_leaves_no_corrupt_file() {
    let env = Env::new();
    let hub = Hub::start(env.files.clone());
    let repo = env.repo_dir();
    for (fault, needles) in [
        (
            Fault::AllMidFile,
            &[
                "config.json of org/tiny@main",
                "failed after 360 of 720 bytes",
            ][..],
        ),
        (
            Fault::BlobMidFile,
            &["model.safetensors of org/tiny@main", "failed after"][..],
        ),
        (
            Fault::BlobMidFileNoLength,
            &[
                "model.safetensors",
                "the connection closed before the end of the file",
            ][..],
        ),
        (
            Fault::BlobCorrupt,
            &["model.safetensors", "its sha256 is"][..],
        ),
    ] {
        let _ = std::fs::remove_dir_all(&repo);
        hub.set_fault(fault);
        let what = format!("server fault {fault:?}");
        let e = fails(&env.clip(&hub, &[], REPO, "main", "a"), &what, needles);
        assert!(e.contains("nothing was written to the HF cache"), "{e}");
        assert!(!env.p("a").exists());
        let files = tree(&repo);
        eprintln!("[cache after {fault:?}] {}", files.join("  "));
        assert!(
            !files.iter().any(|f| f.contains("model.safetensors")
                || f.contains(&sha256_hex(&env.files["model.safetensors"]))
                || f.contains("incomplete")),
            "no partial or corrupt weights in the cache: {files:?}"
        );
    }
    // the server recovers: the next run downloads and succeeds
    hub.set_fault(Fault::None);
    ok(
        &env.clip(&hub, &[], REPO, "main", "b"),
        "retry after failure",
    );
    for f in FILES {
        assert_eq!(
            std::fs::read(repo.join("snapshots").join(COMMIT_A).join(f)).unwrap(),
            env.files[f]
        );
    }
}

#[test]
fn token_sent_as_bearer() {
    let env = Env::new();
    let hub = Hub::start(env.files.clone());
    ok(
        &env.clip(&hub, &[("HF_TOKEN", "hf_secret_1")], REPO, "main", "a"),
        "HF_TOKEN",
    );
    let reqs = hub.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(
            r.auth.as_deref(),
            Some("Bearer hf_secret_1"),
            "{} {}",
            r.method,
            r.path
        );
    }
    eprintln!(
        "[token] {} requests, all with Authorization: Bearer",
        reqs.len()
    );
    // the token file under HF_HOME (huggingface-cli login), for a revision not cached yet
    std::fs::write(env.p("hf/token"), "hf_from_file\n").unwrap();
    ok(&env.clip(&hub, &[], REPO, "dev", "b"), "HF_HOME/token");
    let later: Vec<Req> = hub.requests()[reqs.len()..].to_vec();
    assert!(!later.is_empty());
    assert!(later
        .iter()
        .all(|r| r.auth.as_deref() == Some("Bearer hf_from_file")));
    // HF_TOKEN_PATH wins over HF_HOME/token
    std::fs::write(env.p("tok"), "hf_from_path").unwrap();
    let tok = env.p("tok");
    ok(
        &env.clip(
            &hub,
            &[("HF_TOKEN_PATH", tok.to_str().unwrap())],
            REPO,
            COMMIT_B,
            "c",
        ),
        "HF_TOKEN_PATH (cached commit: no request)",
    );
    std::fs::remove_dir_all(env.repo_dir()).unwrap();
    let n = hub.requests().len();
    ok(
        &env.clip(
            &hub,
            &[("HF_TOKEN_PATH", tok.to_str().unwrap())],
            REPO,
            "main",
            "d",
        ),
        "HF_TOKEN_PATH",
    );
    let later: Vec<Req> = hub.requests()[n..].to_vec();
    assert!(!later.is_empty());
    assert!(later
        .iter()
        .all(|r| r.auth.as_deref() == Some("Bearer hf_from_path")));
}

#[test]
fn hf_hub_cache_trailing_slash_endpoint_and_renamed_repo() {
    let env = Env::new();
    let hub = Hub::start(env.files.clone());
    let cache = env.p("elsewhere");
    let endpoint = format!("{}/", hub.endpoint());
    let o = env.clip(
        &hub,
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_ENDPOINT", &endpoint),
        ],
        "org/old-name",
        "main",
        "a",
    );
    ok(&o, "HF_HUB_CACHE, endpoint with '/', renamed repo");
    assert_eq!(env.result("a")["config"]["model"]["commit"], COMMIT_A);
    let snap = cache.join("models--org--old-name/snapshots").join(COMMIT_A);
    for f in FILES {
        assert!(snap.join(f).is_file(), "{f} in HF_HUB_CACHE");
    }
    assert!(!env.p("hf/hub").exists(), "HF_HUB_CACHE wins over HF_HOME");
    let reqs = hub.requests();
    assert!(reqs.iter().any(|r| r.path.starts_with("/org/old-name/")));
    assert!(reqs.iter().any(|r| r.path.starts_with("/org/tiny/")));
    // a bad endpoint is a clear error
    let o = env.clip(
        &hub,
        &[("HF_ENDPOINT", "ftp://mirror")],
        REPO,
        COMMIT_B,
        "b",
    );
    fails(
        &o,
        "bad HF_ENDPOINT",
        &["HF_ENDPOINT 'ftp://mirror' is not an http(s) URL"],
    );
}
