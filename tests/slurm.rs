//! `equirun sweep --emit slurm` on a real Slurm cluster: the emitted job arrays are submitted
//! with the emitted `submit.sh`, every array task's `JobState`/`ExitCode` is read back with
//! `scontrol`, and the results must be exactly those of a local `equirun sweep` of the same config.
//!
//! Opt-in, because a cluster needs root and system packages: start a local single-node one and
//! set the gate, e.g.
//!
//! ```sh
//! eval "$(scripts/slurm-local.sh start)"      # exports SLURM_CONF
//! EQUIRUN_SLURM=1 cargo test --release --test slurm
//! scripts/slurm-local.sh stop
//! ```
//!
//! Without `EQUIRUN_SLURM=1` the tests pass after printing why they were skipped (`.ci/run`
//! passes its reason on in `EQUIRUN_SLURM_SKIPPED`). With it, a missing `SLURM_CONF` file or
//! `sbatch` is an error, not a skip. On a multi-node cluster, set `EQUIRUN_SLURM_TMPDIR` to a
//! folder on a shared file system (the fixtures, run lists and results live there).

use equirun::tools::sweep::{expand, SweepConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_equirun");

/// libtest captures `println!`/`eprintln!` of passing tests; these lines go to the process's
/// stderr directly, so the CI log of `cargo test --release` shows them.
fn ci(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `Some(SLURM_CONF)` when the tests should run, `None` (after printing why) when not.
fn gate(test: &str) -> Option<PathBuf> {
    if std::env::var("EQUIRUN_SLURM").as_deref() != Ok("1") {
        let why = std::env::var("EQUIRUN_SLURM_SKIPPED").unwrap_or_else(|_| {
            "EQUIRUN_SLURM is not 1; to run it: eval \"$(scripts/slurm-local.sh start)\" && EQUIRUN_SLURM=1 cargo test --release --test slurm".into()
        });
        ci(&format!("slurm: {test} skipped: {why}"));
        return None;
    }
    // a client with a wrong SLURM_CONF retries for 60 s before failing: check first
    let conf = std::env::var_os("SLURM_CONF").map(PathBuf::from).unwrap_or_else(|| {
        panic!("EQUIRUN_SLURM=1 but SLURM_CONF is not set: run eval \"$(scripts/slurm-local.sh start)\" first")
    });
    assert!(
        conf.is_file(),
        "EQUIRUN_SLURM=1 but SLURM_CONF={} is not a file: is the cluster started (scripts/slurm-local.sh start)?",
        conf.display()
    );
    let found = Command::new("sbatch").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "EQUIRUN_SLURM=1 but `sbatch --version` fails: install the Slurm client ({found:?})"
    );
    Some(conf)
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

fn files_under(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    walk(d, &mut v);
    v.sort();
    v
}

fn seed_jsons(d: &Path) -> Vec<PathBuf> {
    files_under(d)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("seed-") && n.ends_with(".json")
        })
        .collect()
}

fn temp_files(d: &Path) -> Vec<PathBuf> {
    files_under(d)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(".tmp-") || n.ends_with(".tmp")
        })
        .collect()
}

/// A temp folder with a tiny CLIP snapshot and tiny CIFAR-10: `equirun clip` runs in about a second.
struct Fixture {
    root: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        // on a multi-node cluster the tasks must see this folder: EQUIRUN_SLURM_TMPDIR
        let root = match std::env::var_os("EQUIRUN_SLURM_TMPDIR") {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        equirun::testing::write_tiny_clip_for_cifar10(&root.path().join("snapshot"), 3);
        equirun::testing::write_tiny_cifar10(&root.path().join("data"), 8, 5);
        Fixture { root }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.root.path().join(s)
    }
    fn env(&self) -> [(&'static str, String); 2] {
        [
            ("EQUIRUN_CACHE", self.p("cache").display().to_string()),
            ("EQUIRUN_NO_PROGRESS", "1".into()),
        ]
    }
    /// A one-stage clip sweep with results under the relative `results` folder of the submit
    /// (or local-run) folder, throttled to 2 array tasks at once.
    fn config(&self, name: &str, seeds: &str, run_name: &str, fixed: &str, grid: &str) -> String {
        format!(
            "name = \"{name}\"\nout = \"results\"\nseeds = {seeds}\ncommand = \"clip\"\nrun_name = \"{run_name}\"\n\
             [args]\nmodel-dir = \"{}\"\ndataset = \"cifar10\"\ndata-dir = \"{}\"\nmethod = [\"vanilla\", \"equitune\"]\nbatch-size = 4\n{fixed}\n\
             [grid]\n{grid}\n\
             [slurm]\narray_limit = 2\ncpus_per_task = 1\nmem = \"1G\"\ntime = \"00:10:00\"\n",
            self.p("snapshot").display(),
            self.p("data").display()
        )
    }
    /// Writes `config` to `<dir>/<name>.toml`, emits it, submits `submit.sh` from `dir`;
    /// returns the array's job id.
    fn emit_and_submit(&self, dir: &Path, name: &str, config: &str, tasks: usize) -> String {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{name}.toml")), config).unwrap();
        run_ok(Command::new(BIN).current_dir(dir).args([
            "sweep",
            &format!("{name}.toml"),
            "--emit",
            "slurm",
        ]));
        let sbatch =
            std::fs::read_to_string(dir.join(format!("sweeps/{name}/runs.sbatch"))).unwrap();
        let want = format!("#SBATCH --array=0-{}%2\n", tasks - 1);
        assert!(sbatch.contains(&want), "{want:?} not in\n{sbatch}");
        let out = run_ok(
            Command::new("bash")
                .current_dir(dir)
                .arg(format!("sweeps/{name}/submit.sh"))
                .envs(self.env()),
        );
        // "stage runs: job array 12 (8 tasks)"
        let line = out
            .lines()
            .find(|l| l.contains("job array"))
            .unwrap_or_else(|| panic!("{out}"));
        let id = line.split_whitespace().nth(4).unwrap().to_string();
        assert!(id.chars().all(|c| c.is_ascii_digit()), "{line}");
        assert!(line.ends_with(&format!("({tasks} tasks)")), "{line}");
        id
    }
}

/// Cancels the arrays if the test panics before they finish.
struct Cancel(Vec<String>);

impl Drop for Cancel {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.0.is_empty() {
            let _ = Command::new("scancel").args(&self.0).status();
        }
    }
}

/// Polls `squeue` until no task of the array is queued or running (or `limit` passes).
fn wait_for(id: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let o = Command::new("squeue")
            .args(["-h", "-o", "%i %T", "-j", id])
            .output()
            .unwrap();
        // squeue exits 1 with "Invalid job id" once a job has left the queue
        if o.stdout.iter().all(|c| c.is_ascii_whitespace()) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "array {id} not finished after {limit:?}:\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One finished array task, from `scontrol -o show job`.
#[derive(Debug)]
struct Task {
    index: usize,
    state: String,
    exit: String,
    fields: BTreeMap<String, String>,
}

fn array_tasks(id: &str) -> Vec<Task> {
    let out = run_ok(Command::new("scontrol").args(["-o", "show", "job", id]));
    let mut tasks: Vec<Task> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let fields: BTreeMap<String, String> = l
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let get = |k: &str| {
                fields
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| panic!("no {k}= in scontrol line {l}"))
            };
            Task {
                index: get("ArrayTaskId")
                    .parse()
                    .unwrap_or_else(|_| panic!("array task not finished: {l}")),
                state: get("JobState"),
                exit: get("ExitCode"),
                fields,
            }
        })
        .collect();
    tasks.sort_by_key(|t| t.index);
    tasks
}

/// The task's `--output` file (`slurm-%x-%A_%a.out` in the submit folder).
fn task_log(dir: &Path, t: &Task) -> String {
    let p = PathBuf::from(&t.fields["StdOut"]);
    assert!(
        p.starts_with(dir),
        "{} is not in the submit folder",
        p.display()
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn report(dir: &Path) -> String {
    run_ok(
        Command::new(BIN)
            .current_dir(dir)
            .args(["report", "results"]),
    )
}

/// 4 grid points × 2 seeds = 8 array tasks, `%2`: every task completes with exit code 0, one
/// result JSON per run lands in the normal layout, no temp file is left, each JSON's config and
/// metrics equal the local sweep's bit for bit, and `equirun report` gives the same table.
#[test]
fn emitted_sweep_runs_as_a_job_array() {
    let Some(conf) = gate("emitted_sweep_runs_as_a_job_array") else {
        return;
    };
    let f = Fixture::new();
    let config = f.config(
        "slurm-ok",
        "[0, 1]",
        "ok-{transform}",
        "group = \"rot90\"",
        "transform = [\"none\", \"rot90\", \"flip\", \"rot90xflip\"]",
    );
    let cfg = SweepConfig::parse(&config, "slurm-ok").unwrap();
    let runs = expand(&cfg).unwrap();
    assert_eq!(runs.len(), 8);

    // the same config locally (this also fills the text-classifier cache the tasks then read)
    let local = f.p("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("slurm-ok.toml"), &config).unwrap();
    let t0 = Instant::now();
    run_ok(
        Command::new(BIN)
            .current_dir(&local)
            .args(["sweep", "slurm-ok.toml", "--jobs", "2"])
            .envs(f.env()),
    );
    let local_s = t0.elapsed().as_secs_f64();

    let sub = f.p("submit");
    let mut cancel = Cancel(Vec::new());
    let t0 = Instant::now();
    let id = f.emit_and_submit(&sub, "slurm-ok", &config, 8);
    cancel.0.push(id.clone());
    ci(&format!(
        "slurm: submitted job array {id}: 8 tasks (4 runs x 2 seeds, --array=0-7%2) with SLURM_CONF={}",
        conf.display()
    ));
    wait_for(&id, Duration::from_secs(300));
    let wall = t0.elapsed().as_secs_f64();

    let tasks = array_tasks(&id);
    let codes: Vec<String> = tasks
        .iter()
        .map(|t| format!("{}:{} {}", t.index, t.state, t.exit))
        .collect();
    ci(&format!(
        "slurm: array {id} task states and exit codes: {}",
        codes.join(", ")
    ));
    assert_eq!(
        tasks.iter().map(|t| t.index).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>(),
        "{tasks:#?}"
    );
    for t in &tasks {
        let log = task_log(&sub, t);
        assert!(
            t.state == "COMPLETED" && t.exit == "0:0",
            "task {} {} exit {}; its log:\n{log}",
            t.index,
            t.state,
            t.exit
        );
        assert_eq!(
            t.fields["ArrayTaskThrottle"], "2",
            "the config's array_limit"
        );
        // task i ran line i+1 of the run list: the run with stage_index i
        let run = &runs[t.index];
        assert!(
            log.contains(&format!("task {} on ", t.index))
                && log.contains(&format!("--run-name {}", run.run_name))
                && log.contains(&format!("--seeds {}", run.seeds[0])),
            "task {} should run {}:\n{log}",
            t.index,
            run.label()
        );
    }

    let results = sub.join("results");
    let mut want: Vec<PathBuf> = runs
        .iter()
        .flat_map(|r| r.results.iter().map(|p| sub.join(p)))
        .collect();
    want.sort();
    let got = seed_jsons(&results);
    assert_eq!(got, want, "exactly one result JSON per run");
    assert!(temp_files(&sub).is_empty(), "{:?}", temp_files(&sub));
    for p in &got {
        let rel = p.strip_prefix(&sub).unwrap();
        let a: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let b: Value =
            serde_json::from_str(&std::fs::read_to_string(local.join(rel)).unwrap()).unwrap();
        assert_eq!(a["config"], b["config"], "{}", rel.display());
        assert_eq!(a["metrics"], b["metrics"], "{}", rel.display());
    }
    let (slurm_table, local_table) = (report(&sub), report(&local));
    assert!(slurm_table.contains("equitune"), "{slurm_table}");
    assert_eq!(
        slurm_table, local_table,
        "equirun report differs from the local sweep's"
    );
    ci(&format!(
        "slurm: {} result JSONs (one per run), 0 temp files; equirun report identical to the local sweep's ({} lines)",
        got.len(),
        slurm_table.lines().count()
    ));
    ci(&format!(
        "slurm: 8 tasks ok in {wall:.1} s (submit to last task done; the local --jobs 2 sweep took {local_s:.1} s)"
    ));
}

/// One grid cell whose templates file does not exist (it parses, so `--emit` accepts it, and fails
/// when it runs): its array task fails with a non-zero exit code and the error in its log; the
/// other tasks of the array still finish and write their results.
#[test]
fn a_failing_cell_fails_only_its_array_task() {
    let Some(_) = gate("a_failing_cell_fails_only_its_array_task") else {
        return;
    };
    let f = Fixture::new();
    let config = f.config(
        "slurm-bad",
        "[0]",
        "bad-{group}",
        "",
        "cell = [{ group = \"rot90\" }, { group = \"hflip\", templates = \"/no/such/templates.txt\" }, { group = \"flip\" }]",
    );
    let sub = f.p("submit");
    let mut cancel = Cancel(Vec::new());
    let t0 = Instant::now();
    let id = f.emit_and_submit(&sub, "slurm-bad", &config, 3);
    cancel.0.push(id.clone());
    ci(&format!(
        "slurm: submitted job array {id}: 3 tasks (--group rot90 / hflip with a missing --templates / flip, --array=0-2%2)"
    ));
    wait_for(&id, Duration::from_secs(300));
    let wall = t0.elapsed().as_secs_f64();
    let tasks = array_tasks(&id);
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    for t in &tasks {
        let log = task_log(&sub, t);
        if t.index == 1 {
            assert_eq!(t.state, "FAILED", "{log}");
            assert_ne!(t.exit, "0:0");
            assert!(
                log.contains("/no/such/templates.txt"),
                "no clear message in the failed task's log:\n{log}"
            );
            let msg = log
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or_default();
            ci(&format!(
                "slurm: failing cell: array {id} task 1 (--templates /no/such/templates.txt) {} with ExitCode={}; its log says: {msg}",
                t.state, t.exit
            ));
        } else {
            assert!(
                t.state == "COMPLETED" && t.exit == "0:0",
                "task {} {} exit {}; its log:\n{log}",
                t.index,
                t.state,
                t.exit
            );
        }
    }
    let got: Vec<String> = seed_jsons(&sub.join("results"))
        .iter()
        .map(|p| p.strip_prefix(&sub).unwrap().display().to_string())
        .collect();
    assert_eq!(
        got,
        [
            "results/clip/bad-flip/seed-0.json",
            "results/clip/bad-rot90/seed-0.json"
        ]
    );
    assert!(temp_files(&sub).is_empty(), "{:?}", temp_files(&sub));
    ci(&format!(
        "slurm: the other tasks finished: task 0 (rot90) {} {}, task 2 (flip) {} {}; results: {} ({wall:.1} s)",
        tasks[0].state,
        tasks[0].exit,
        tasks[2].state,
        tasks[2].exit,
        got.join(", ")
    ));
}
