//! `equirun sweep` and `equirun report` through their library functions: grid expansion, the
//! local runner (skip-if-done, parallel jobs, failures and stages, SIGKILL and resume on a tiny
//! real CLIP), the Slurm / list emitters (bash -n, array range, task i runs line i), the paper
//! configs, and the report on hand-written result JSONs.

use equirun::tools::report;
use equirun::tools::sweep::{self, expand, run_sweep, SweepConfig, SweepOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn cfg(text: &str) -> SweepConfig {
    SweepConfig::parse(text, "t").unwrap()
}

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
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

/// Result JSONs (seed-<n>.json) below `d`, outside the sweep's own state folder.
fn seed_jsons(d: &Path) -> Vec<PathBuf> {
    files_under(d)
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == ".sweep"))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("seed-") && n.ends_with(".json")
        })
        .collect()
}

fn temp_files(d: &Path) -> Vec<PathBuf> {
    files_under(d)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// expansion

#[test]
fn grid_expands_to_the_cartesian_product_times_seeds() {
    let c = cfg(r#"
        out = "res"
        seeds = [0, 1, 2]
        command = "clip"
        [args]
        dataset = "cifar10"
        method = ["vanilla", "equitune"]
        limit = 100
        transform-per-batch = true
        equizero-elementwise = false
        [grid]
        model = ["org/a", "org/b"]
        transform = ["none", "rot90", "flip"]
    "#);
    let runs = expand(&c).unwrap();
    assert_eq!(runs.len(), 2 * 3 * 3);
    let r = &runs[0];
    assert_eq!(r.run_name, "t-a-none");
    assert_eq!(r.seeds, vec![0]);
    assert_eq!(
        r.results,
        vec![PathBuf::from("res/clip/t-a-none/seed-0.json")]
    );
    let a = r.args.join(" ");
    assert!(a.starts_with("clip "), "{a}");
    for part in [
        "--dataset cifar10",
        "--method vanilla,equitune",
        "--limit 100",
        "--model org/a",
        "--transform none",
        "--seeds 0 --out res --run-name t-a-none",
    ] {
        assert!(a.contains(part), "{part} not in {a}");
    }
    assert!(
        a.contains("--transform-per-batch") && !a.contains("equizero-elementwise"),
        "{a}"
    );
    // last axis fastest, seed innermost; every run distinct
    assert_eq!(runs[1].seeds, vec![1]);
    assert_eq!(runs[3].run_name, "t-a-rot90");
    assert_eq!(runs[17].run_name, "t-b-flip");
    let ids: std::collections::BTreeSet<String> = runs.iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), runs.len());
    assert!(runs
        .iter()
        .enumerate()
        .all(|(i, r)| r.index == i && r.stage_index == i));

    // one run per grid point with all seeds
    let c2 = cfg(r#"
        seeds = "0-4"
        per_seed = false
        command = ["clip"]
        run_name = "x-{model}-{transform}"
        [grid]
        model = ["org/a", "org/b"]
        transform = ["none", "rot90", "flip"]
    "#);
    let runs = expand(&c2).unwrap();
    assert_eq!(runs.len(), 6);
    assert_eq!(runs[0].seeds, vec![0, 1, 2, 3, 4]);
    assert_eq!(runs[0].results.len(), 5);
    assert!(runs[0]
        .args
        .join(" ")
        .contains("--seeds 0,1,2,3,4 --out results --run-name x-a-none"));
}

#[test]
fn stages_placeholders_and_result_folders() {
    let c = cfg(r#"
        name = "s2"
        out = "R"
        seeds = [0, 1]
        [[stage]]
        name = "pretrain"
        command = "scan pretrain"
        run_name = "p-{cell}"
        [stage.args]
        dataset = "scan"
        lr = 2e-5
        [stage.grid]
        cell = ["rnn", "gru", "lstm"]
        split = ["add-jump", "around-right"]
        [[stage]]
        name = "finetune"
        command = "scan finetune"
        run_name = "p-{cell}-{split}"
        seeds = [0]
        [stage.args]
        pretrained = "{out}/scan-pretrain/p-{cell}"
        method = "equitune,multi_equitune"
        [stage.grid]
        cell = ["gru"]
        task = [{ split = "add-jump", group = "verb" }, { split = "around-right", group = "direction-rl" }]
    "#);
    let e = expand(&c);
    // pretrain's run name lacks {split}: two runs would write the same files
    assert!(format!("{:#}", e.unwrap_err()).contains("both write"));
    let c = cfg(r#"
        name = "s2"
        out = "R"
        seeds = [0, 1]
        [[stage]]
        name = "pretrain"
        command = "scan pretrain"
        run_name = "p-{cell}-{split}"
        [stage.args]
        dataset = "scan"
        lr = 2e-5
        [stage.grid]
        cell = ["rnn", "gru", "lstm"]
        split = ["add-jump", "around-right"]
        [[stage]]
        name = "finetune"
        command = "scan finetune"
        run_name = "p-{cell}-{split}"
        seeds = [0]
        [stage.args]
        pretrained = "{out}/scan-pretrain/p-{cell}-{split}"
        method = "equitune,multi_equitune"
        [stage.grid]
        cell = ["gru"]
        task = [{ split = "add-jump", group = "verb" }, { split = "around-right", group = "direction-rl" }]
    "#);
    let runs = expand(&c).unwrap();
    assert_eq!(runs.len(), 3 * 2 * 2 + 2);
    assert_eq!(runs.iter().filter(|r| r.stage == "pretrain").count(), 12);
    let ft: Vec<_> = runs.iter().filter(|r| r.stage == "finetune").collect();
    assert_eq!(ft[0].stage_index, 0);
    assert_eq!(ft[1].stage_index, 1);
    assert_eq!(ft[1].index, 13);
    assert_eq!(runs[0].experiment, "scan-pretrain");
    assert!(runs[0].args.join(" ").contains("--lr 0.00002"));
    let a = ft[1].args.join(" ");
    assert!(a.starts_with("scan finetune "), "{a}");
    assert!(
        a.contains("--pretrained R/scan-pretrain/p-gru-around-right"),
        "{a}"
    );
    assert!(
        a.contains("--split around-right") && a.contains("--group direction-rl"),
        "{a}"
    );
    // one folder per method, canonical method names
    assert_eq!(
        ft[1].results,
        vec![
            PathBuf::from("R/scan-finetune/p-gru-around-right-equitune/seed-0.json"),
            PathBuf::from("R/scan-finetune/p-gru-around-right-multi-equitune/seed-0.json")
        ]
    );
}

#[test]
fn config_errors_are_explained() {
    // as `equirun sweep` does: expand, then parse every command line with the real parser
    let err = |t: &str| match SweepConfig::parse(t, "t")
        .and_then(|c| sweep::check_parses(&expand(&c)?, equirun::cli::parse_error))
    {
        Ok(()) => panic!("accepted: {t}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err("command = \"clip\"\n[args]\nseeds = 3\n").contains("set by the sweep"));
    assert!(
        err("command = \"clip\"\nrun_name = \"{nope}\"\n").contains("unknown placeholder {nope}")
    );
    assert!(err("command = \"clip\"\ncolour = 1\n").contains("unknown field"));
    assert!(err("command = \"bench-lm\"\n").contains("experiment ="));
    assert!(err("command = \"clip\"\n[grid]\nmodel = \"a\"\n").contains("must be a list"));
    assert!(
        err("command = \"clip\"\n[args]\nmodel = \"a\"\n[grid]\nmodel = [\"b\"]\n")
            .contains("both in args and in the grid")
    );
    assert!(err("seeds = [0]\n").contains("no command"));
    // every cell is parsed by equirun's own parser: a typo'd flag, a subcommand that takes no
    // --seeds/--out/--run-name, a value out of range fail before anything runs, naming the run
    let e = err("command = \"clip\"\n[grid]\nlimt = [3]\n");
    assert!(
        e.contains("run 1 of stage")
            && e.contains("--limt")
            && e.contains("not a valid equirun command"),
        "{e}"
    );
    let e = err("command = \"bench-lm\"\nexperiment = \"bench\"\n");
    assert!(e.contains("unexpected argument '--seeds'"), "{e}");
    let e = err("command = \"clip\"\n[args]\nbatch-size = 0\n");
    assert!(
        e.contains("--batch-size") && e.contains("at least 1"),
        "{e}"
    );
    let e = err("command = \"clip\"\n[grid]\ngroup = [\"rot90\", \"rot9\"]\n");
    assert!(
        e.contains("run 2 of stage") && e.contains("unknown image group 'rot9'"),
        "{e}"
    );
    // old flag spellings (hidden aliases) still parse
    assert!(
        err("command = \"clip\"\n[args]\nbatch = 3\n").contains("unexpected argument '--batch'")
    );
    let r = expand(&cfg(
        "command = \"scan pretrain\"\n[args]\neval-limit = 3\neval-batch = 8\n",
    ))
    .unwrap();
    assert!(r[0].args.contains(&"--eval-limit".to_string()));
    sweep::check_parses(&r, equirun::cli::parse_error).unwrap();
    let r = expand(&cfg("command = \"clip\"\n[args]\nlimit = 3\n")).unwrap();
    sweep::check_parses(&r, equirun::cli::parse_error).unwrap();
    assert!(err("command = \"clip\"\n[args]\nseed = 3\n").contains("set by the sweep"));
    // a declared results folder overrides the registry's
    let c = cfg("command = \"clip\"\nexperiment = \"bench\"\nresults = [\"{run-name}-a\", \"{run-name}-b\"]\n");
    let r = expand(&c).unwrap();
    assert_eq!(
        r[0].results,
        vec![
            PathBuf::from("results/bench/t-a/seed-0.json"),
            PathBuf::from("results/bench/t-b/seed-0.json")
        ]
    );
}

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn paper_configs_expand_and_emit() {
    type Expect<'a> = (&'a str, usize, &'a [(&'a str, usize)]);
    let expect: &[Expect] = &[
        ("clip-exp0", 96, &[("runs", 96)]),
        ("clip-exp1", 24, &[("runs", 24)]),
        ("clip-neurips-zeroshot", 24, &[("runs", 24)]),
        ("scan-ii", 18, &[("pretrain", 9), ("finetune", 9)]),
        ("scan-original", 36, &[("pretrain", 18), ("finetune", 18)]),
        ("fairness", 42, &[("runs", 42)]),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (name, total, stages) in expect {
        let c = SweepConfig::from_file(&configs_dir().join(format!("{name}.toml"))).unwrap();
        assert_eq!(c.name, *name);
        let runs = expand(&c).unwrap();
        assert_eq!(runs.len(), *total, "{name}");
        for (stage, n) in *stages {
            assert_eq!(
                runs.iter().filter(|r| r.stage == *stage).count(),
                *n,
                "{name} {stage}"
            );
        }
        let dir = tmp.path().join(name);
        let files = sweep::emit_slurm(&c, &dir, Path::new("/opt/equirun")).unwrap();
        for f in &files {
            if f.extension().is_some_and(|e| e == "sbatch" || e == "sh") {
                let o = Command::new("bash").arg("-n").arg(f).output().unwrap();
                assert!(
                    o.status.success(),
                    "bash -n {}: {}",
                    f.display(),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
    // SCAN-II: finetune runs point at the pretrain run of their cell and write both method folders
    let c = SweepConfig::from_file(&configs_dir().join("scan-ii.toml")).unwrap();
    let runs = expand(&c).unwrap();
    let ft = runs
        .iter()
        .find(|r| r.stage == "finetune" && r.run_name == "scan-ii-lstm")
        .unwrap();
    assert!(ft
        .args
        .join(" ")
        .contains("--pretrained results/scan-pretrain/scan-ii-lstm"));
    assert_eq!(ft.results.len(), 2);
    let sb = std::fs::read_to_string(tmp.path().join("scan-ii/pretrain.sbatch")).unwrap();
    assert!(
        sb.contains("#SBATCH --array=0-8%9\n")
            && sb.contains("#SBATCH --time=06:00:00\n")
            && sb.contains("#SBATCH --cpus-per-task=1\n"),
        "{sb}"
    );
    let sb = std::fs::read_to_string(tmp.path().join("scan-ii/finetune.sbatch")).unwrap();
    assert!(sb.contains("#SBATCH --time=12:00:00\n"), "{sb}");
}

// ---------------------------------------------------------------------------------------------
// a fake equirun: records its argv, writes the clip result files it is asked for

const FAKE: &str = r#"#!/bin/sh
# records argv (fields separated by \037; one write, so parallel runs do not interleave),
# then acts like `equirun clip` on the result files
us=$(printf '\037'); line=
for a in "$@"; do line="$line$a$us"; done
printf '%s\n' "$line" >> "$FAKE_LOG"
out=results; run=; seeds=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --run-name) run=$2; shift ;;
    --seeds) seeds=$2; shift ;;
  esac
  shift
done
case "$run" in *"${FAKE_FAIL:-@none@}"*) echo "fake failure of $run" >&2; exit 3 ;; esac
sleep "${FAKE_SLEEP:-0}"
mkdir -p "$out/clip/$run"
for s in $(echo "$seeds" | tr ',' ' '); do
  f="$out/clip/$run/seed-$s.json"
  [ -f "$f" ] && continue
  printf '{"experiment":"clip","seed":%s}\n' "$s" > "$out/clip/$run/.tmp-$$"
  mv "$out/clip/$run/.tmp-$$" "$f"
done
"#;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("fake-equirun");
        std::fs::write(&bin, FAKE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir }
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("fake-equirun")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }
    fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                l.split('\x1f')
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect()
            })
            .collect()
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("res")
    }
    fn opts(&self, jobs: usize, extra: &[(&str, &str)]) -> SweepOptions {
        let mut env = vec![("FAKE_LOG".to_string(), self.log().display().to_string())];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        SweepOptions {
            jobs,
            dry_run: false,
            binary: self.bin(),
            env,
        }
    }
    fn config(&self, grid: &str) -> SweepConfig {
        cfg(&format!(
            "out = \"{}\"\nseeds = [0, 1]\ncommand = \"clip\"\n[grid]\n{grid}\n",
            self.out().display()
        ))
    }
}

#[test]
fn local_sweep_runs_in_parallel_then_skips_what_is_done() {
    let f = Fake::new();
    let c = f.config("transform = [\"none\", \"rot90\", \"flip\"]");
    let runs = expand(&c).unwrap();
    let t0 = std::time::Instant::now();
    let s = run_sweep(&c, &f.opts(3, &[("FAKE_SLEEP", "0.4")])).unwrap();
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(
        (s.total, s.ran, s.already_done, s.verified, s.failed.len()),
        (6, 6, 0, 0, 0),
        "{s:?}"
    );
    assert!(wall < 6.0 * 0.4, "3 jobs should overlap: {wall:.2}s");
    let mut calls = f.calls();
    calls.sort();
    let mut want: Vec<Vec<String>> = runs.iter().map(|r| r.args.clone()).collect();
    want.sort();
    assert_eq!(calls, want, "each run's command line exactly once");
    let expected: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = runs.iter().flat_map(|r| r.results.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(seed_jsons(&f.out()), expected);
    // rerun: everything done, nothing executed
    let s = run_sweep(&c, &f.opts(2, &[])).unwrap();
    assert_eq!((s.already_done, s.ran), (6, 0), "{s:?}");
    assert_eq!(f.calls().len(), 6);
    // dry run lists the commands and runs nothing
    let s = run_sweep(
        &c,
        &SweepOptions {
            dry_run: true,
            ..f.opts(1, &[])
        },
    )
    .unwrap();
    assert_eq!(s.already_done, 6);
    assert_eq!(f.calls().len(), 6);
    // a result without the sweep's done marker is handed to equirun (which skips it): verified
    std::fs::remove_dir_all(sweep::state_dir(&f.out()).join("done")).unwrap();
    std::fs::remove_file(&runs[5].results[0]).unwrap();
    let s = run_sweep(&c, &f.opts(1, &[])).unwrap();
    assert_eq!((s.verified, s.ran, s.already_done), (5, 1, 0), "{s:?}");
    assert_eq!(f.calls().len(), 12);
    assert!(temp_files(&f.out()).is_empty());
}

#[test]
fn a_failed_stage_blocks_the_next_and_a_rerun_retries_only_failures() {
    let f = Fake::new();
    let out = f.out();
    let text = format!(
        "out = \"{}\"\nseeds = [0]\n[[stage]]\nname = \"a\"\ncommand = \"clip\"\nrun_name = \"a-{{transform}}\"\n[stage.grid]\ntransform = [\"none\", \"rot90\"]\n\
         [[stage]]\nname = \"b\"\ncommand = \"clip\"\nrun_name = \"b-{{transform}}\"\n[stage.grid]\ntransform = [\"none\", \"rot90\", \"flip\"]\n",
        out.display()
    );
    let c = cfg(&text);
    let s = run_sweep(&c, &f.opts(2, &[("FAKE_FAIL", "a-rot90")])).unwrap();
    assert_eq!((s.ran, s.failed.len(), s.blocked), (1, 1, 3), "{s:?}");
    assert_eq!(s.failed[0].0, 1);
    assert!(
        s.failed[0].1.contains("exit 3") && s.failed[0].1.contains("fake failure of a-rot90"),
        "{}",
        s.failed[0].1
    );
    assert!(!s.ok());
    let s = run_sweep(&c, &f.opts(2, &[])).unwrap();
    assert_eq!(
        (s.already_done, s.ran, s.failed.len(), s.blocked),
        (1, 4, 0, 0),
        "{s:?}"
    );
    assert_eq!(f.calls().len(), 2 + 4);
    assert_eq!(seed_jsons(&out).len(), 5);
}

#[test]
fn stale_temp_files_go_only_when_no_live_run_holds_their_folder() {
    let f = Fake::new();
    let c = cfg(&format!("out = \"{}\"\nseeds = [0, 1, 2]\nper_seed = false\ncommand = \"clip\"\n[grid]\ntransform = [\"none\"]\n", f.out().display()));
    let runs = expand(&c).unwrap();
    assert_eq!((runs.len(), runs[0].results.len()), (1, 3));
    let folder = runs[0].results[0].parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&folder).unwrap();
    let planted = folder.join(".tmp-half.json");
    std::fs::write(&planted, "{").unwrap();
    // a live run (here: this test) holds the run's lock: the temp file may be its own
    let lock = sweep::state_dir(&f.out())
        .join("locks")
        .join(format!("{}.lock", runs[0].id()));
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let held = std::fs::File::create(&lock).unwrap();
    held.lock().unwrap();
    let refs: Vec<&sweep::Run> = runs.iter().collect();
    assert!(sweep::clean_stale_temps(&f.out(), &refs)
        .unwrap()
        .is_empty());
    assert!(planted.exists());
    drop(held);
    assert_eq!(
        sweep::clean_stale_temps(&f.out(), &refs).unwrap(),
        vec![planted.clone()]
    );
    // and a sweep leaves exactly the three results
    let s = run_sweep(&c, &f.opts(1, &[])).unwrap();
    assert_eq!(s.ran, 1);
    assert_eq!(seed_jsons(&f.out()), runs[0].results);
    assert!(temp_files(&f.out()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// emitters

#[test]
fn slurm_array_task_i_runs_line_i_of_the_run_list() {
    let f = Fake::new();
    let out = f.out();
    let text = format!(
        "name = \"two\"\nout = \"{}\"\nseeds = [0, 1, 2]\n[slurm]\ntime = \"01:00:00\"\nmem = \"2G\"\narray_limit = 2\nextra = [\"--constraint=avx2\"]\nsetup = [\"export FROM_SETUP=1\"]\n\
         [[stage]]\nname = \"pre\"\ncommand = \"clip\"\nrun_name = \"p-{{transform}}\"\n[stage.grid]\ntransform = [\"none\", \"rot90\"]\n\
         [[stage]]\nname = \"fine\"\ncommand = \"clip\"\nrun_name = \"f-{{transform}}\"\n[stage.args]\nlimit = 3\ntemplates = \"a file with spaces.txt\"\n[stage.grid]\ntransform = [\"flip\"]\n[stage.slurm]\ntime = \"02:00:00\"\n",
        out.display()
    );
    let c = cfg(&text);
    let runs = expand(&c).unwrap();
    let emit = f.dir.path().join("emit");
    let files = sweep::emit_slurm(&c, &emit, &f.bin()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "pre.txt",
            "pre.sbatch",
            "fine.txt",
            "fine.sbatch",
            "submit.sh"
        ]
    );
    for f in &files {
        if f.extension().is_none_or(|e| e != "txt") {
            let o = Command::new("bash").arg("-n").arg(f).output().unwrap();
            assert!(
                o.status.success(),
                "bash -n {}: {}",
                f.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let pre = std::fs::read_to_string(emit.join("pre.sbatch")).unwrap();
    for want in [
        "#SBATCH --array=0-5%2\n",
        "#SBATCH --time=01:00:00\n",
        "#SBATCH --mem=2G\n",
        "#SBATCH --constraint=avx2\n",
        "export FROM_SETUP=1\n",
        "cd \"${SLURM_SUBMIT_DIR:-$PWD}\"",
    ] {
        assert!(pre.contains(want), "{want:?} not in\n{pre}");
    }
    let fine = std::fs::read_to_string(emit.join("fine.sbatch")).unwrap();
    assert!(
        fine.contains("#SBATCH --array=0-2%2\n") && fine.contains("#SBATCH --time=02:00:00\n"),
        "{fine}"
    );
    // the run lists hold the runs in order; each array task runs exactly its line
    for (stage, file) in [("pre", "pre"), ("fine", "fine")] {
        let stage_runs: Vec<_> = runs.iter().filter(|r| r.stage == stage).collect();
        let list = std::fs::read_to_string(emit.join(format!("{file}.txt"))).unwrap();
        assert_eq!(list.lines().count(), stage_runs.len());
        for (i, r) in stage_runs.iter().enumerate() {
            assert_eq!(list.lines().nth(i).unwrap(), r.command_line(&f.bin()));
            let before = f.calls().len();
            let o = Command::new("bash")
                .arg(emit.join(format!("{file}.sbatch")))
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .env("FAKE_LOG", f.log())
                .env_remove("SLURM_SUBMIT_DIR")
                .current_dir(f.dir.path())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "task {i}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let calls = f.calls();
            assert_eq!(calls.len(), before + 1);
            assert_eq!(calls.last().unwrap(), &r.args, "stage {stage} task {i}");
        }
        // past the end: an error, nothing run
        let o = Command::new("bash")
            .arg(emit.join(format!("{file}.sbatch")))
            .env("SLURM_ARRAY_TASK_ID", stage_runs.len().to_string())
            .env("FAKE_LOG", f.log())
            .output()
            .unwrap();
        assert!(
            !o.status.success()
                && String::from_utf8_lossy(&o.stderr).contains("no run for array task")
        );
    }
    assert_eq!(f.calls().len(), runs.len());
    assert_eq!(seed_jsons(&out).len(), runs.len());
    // submit.sh chains the arrays with afterok, through a stand-in sbatch
    let bin = f.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let sbatch = bin.join("sbatch");
    std::fs::write(&sbatch, "#!/bin/sh\necho \"$*\" >> \"$SBATCH_LOG\"\nn=$(wc -l < \"$SBATCH_LOG\")\necho \"$((1000 + n));cluster\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let slog = f.dir.path().join("sbatch.log");
    let o = Command::new("bash")
        .arg(emit.join("submit.sh"))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("SBATCH_LOG", &slog)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sub = std::fs::read_to_string(&slog).unwrap();
    let lines: Vec<&str> = sub.lines().collect();
    assert_eq!(lines.len(), 2, "{sub}");
    assert!(
        lines[0].starts_with("--parsable --export=ALL,EQUIRUN_RUNS=")
            && lines[0].ends_with("pre.sbatch"),
        "{sub}"
    );
    assert!(
        lines[1].starts_with("--parsable --dependency=afterok:1001 ")
            && lines[1].ends_with("fine.sbatch"),
        "{sub}"
    );
}

#[test]
fn list_for_gnu_parallel_or_xargs() {
    let f = Fake::new();
    let c = f.config("transform = [\"none\", \"rot90\"]");
    let files = sweep::emit_list(&c, &f.dir.path().join("list"), &f.bin()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].file_name().unwrap(), "runs.txt");
    // the documented xargs line runs every command
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tr '\\n' '\\0' < '{}' | xargs -0 -P 2 -n 1 sh -c",
            files[0].display()
        ))
        .env("FAKE_LOG", f.log())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(f.calls().len(), 4);
    assert_eq!(seed_jsons(&f.out()).len(), 4);
}

// ---------------------------------------------------------------------------------------------
// the real binary on a tiny CLIP: kill -9 and resume

struct Clip {
    root: tempfile::TempDir,
}

impl Clip {
    fn new() -> Clip {
        let root = tempfile::tempdir().unwrap();
        let snap = root.path().join("snapshot");
        equirun::testing::write_tiny_clip_for_cifar10(&snap, 3);
        equirun::testing::write_tiny_cifar10(&root.path().join("data"), 8, 5);
        let c = Clip { root };
        // warm the text-classifier cache once, so parallel runs only read it
        let o = Command::new(env!("CARGO_BIN_EXE_equirun"))
            .args([
                "clip",
                "--model-dir",
                c.p("snapshot").to_str().unwrap(),
                "--dataset",
                "cifar10",
                "--data-dir",
                c.p("data").to_str().unwrap(),
            ])
            .args([
                "--method",
                "vanilla",
                "--seeds",
                "0",
                "--out",
                c.p("warm").to_str().unwrap(),
            ])
            .envs(c.env())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        c
    }
    fn p(&self, s: &str) -> PathBuf {
        self.root.path().join(s)
    }
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "EQUIRUN_CACHE".into(),
                self.p("cache").display().to_string(),
            ),
            ("EQUIRUN_NO_PROGRESS".into(), "1".into()),
        ]
    }
    fn config(&self, transforms: &str) -> String {
        format!(
            "name = \"tiny\"\nout = \"{}\"\nseeds = [0, 1, 2]\ncommand = \"clip\"\nrun_name = \"tiny-{{transform}}\"\n[args]\nmodel-dir = \"{}\"\ndataset = \"cifar10\"\ndata-dir = \"{}\"\n\
             group = \"rot90\"\nmethod = [\"vanilla\", \"equitune\"]\nbatch-size = 4\n[grid]\ntransform = [{transforms}]\n",
            self.p("results").display(),
            self.p("snapshot").display(),
            self.p("data").display()
        )
    }
    fn opts(&self, jobs: usize) -> SweepOptions {
        SweepOptions {
            jobs,
            dry_run: false,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_equirun")),
            env: self.env(),
        }
    }
}

/// Runs a sweep in this process when started by `sweep_survives_sigkill_and_resumes` (ignored
/// otherwise): the config path and jobs come from the environment.
#[test]
#[ignore]
fn sweep_helper_process() {
    let Some(path) = std::env::var_os("SWEEP_HELPER_CONFIG") else {
        return;
    };
    let c = SweepConfig::from_file(Path::new(&path)).unwrap();
    let jobs: usize = std::env::var("SWEEP_HELPER_JOBS").unwrap().parse().unwrap();
    let env = vec![(
        "EQUIRUN_CACHE".to_string(),
        std::env::var("EQUIRUN_CACHE").unwrap(),
    )];
    run_sweep(
        &c,
        &SweepOptions {
            jobs,
            dry_run: false,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_equirun")),
            env,
        },
    )
    .unwrap();
}

fn spawn_helper(c: &Clip, config: &Path, jobs: usize) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new(std::env::current_exe().unwrap())
        .args([
            "sweep_helper_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SWEEP_HELPER_CONFIG", config)
        .env("SWEEP_HELPER_JOBS", jobs.to_string())
        .envs(c.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn wait_for_results(dir: &Path, n: usize, child: &mut std::process::Child) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < 120 {
        if seed_jsons(dir).len() >= n {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no results after 120 s");
}

#[test]
fn sweep_survives_sigkill_and_resumes() {
    let c = Clip::new();
    let config = c.p("tiny.toml");
    std::fs::write(&config, c.config("\"none\", \"rot90\", \"flip\"")).unwrap();
    let cfgv = SweepConfig::from_file(&config).unwrap();
    let runs = expand(&cfgv).unwrap();
    assert_eq!(runs.len(), 9);
    let results = c.p("results");

    // 1. kill -9 the whole process group (sweep and its running equirun) after 2 results
    let mut child = spawn_helper(&c, &config, 2);
    let killed_mid_run = wait_for_results(&results, 2, &mut child);
    let st = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(st.success());
    child.wait().unwrap();
    let before: Vec<(PathBuf, String)> = seed_jsons(&results)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    eprintln!(
        "after kill -9: {} of 9 results (killed mid-run: {killed_mid_run})",
        before.len()
    );
    for (p, text) in &before {
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("partial JSON {}: {e}", p.display()));
        assert_eq!(v["experiment"], "clip");
    }
    // as if a kill had landed between an atomic write's temp file and its rename
    let planted = results.join("clip/tiny-none/.tmp-planted.json");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, "{\"half\": ").unwrap();
    // resume: finishes the rest, leaves finished seeds untouched
    let s = run_sweep(&cfgv, &c.opts(2)).unwrap();
    assert!(s.ok(), "{s:?}");
    assert_eq!(s.total, 9);
    assert_eq!(s.ran + s.verified + s.already_done, 9);
    assert_eq!(s.ran, 9 - before.len(), "{s:?}");
    let mut want: Vec<PathBuf> = runs.iter().flat_map(|r| r.results.clone()).collect();
    want.sort();
    assert_eq!(seed_jsons(&results), want, "exactly one JSON per run");
    for (p, text) in &before {
        assert_eq!(
            &std::fs::read_to_string(p).unwrap(),
            text,
            "{} was recomputed",
            p.display()
        );
    }
    assert!(
        temp_files(&results).is_empty(),
        "{:?}",
        temp_files(&results)
    );
    // and a third pass does nothing
    let s = run_sweep(&cfgv, &c.opts(2)).unwrap();
    assert_eq!(s.already_done, 9, "{s:?}");

    // 2. kill -9 only the sweep: its running equirun goes on as an orphan holding the run's
    //    lock; the resumed sweep waits for it instead of running the same seed twice
    let config2 = c.p("tiny2.toml");
    std::fs::write(
        &config2,
        c.config("\"rot90xflip\"")
            .replace("name = \"tiny\"", "name = \"tiny2\""),
    )
    .unwrap();
    let cfg2 = SweepConfig::from_file(&config2).unwrap();
    let mut child = spawn_helper(&c, &config2, 1);
    let n0 = seed_jsons(&results).len();
    wait_for_results(&results, n0 + 1, &mut child);
    child.kill().unwrap(); // SIGKILL to the helper alone
    child.wait().unwrap();
    let s = run_sweep(&cfg2, &c.opts(1)).unwrap();
    assert!(s.ok(), "{s:?}");
    assert_eq!(seed_jsons(&results).len(), n0 + 3);
    assert!(temp_files(&results).is_empty());
}

// ---------------------------------------------------------------------------------------------
// report

fn write_rec(root: &Path, experiment: &str, run: &str, seed: u64, config: Value, metrics: Value) {
    let p = root
        .join(experiment)
        .join(run)
        .join(format!("seed-{seed}.json"));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let rec = json!({"schema_version": 1, "experiment": experiment, "seed": seed, "config": config, "metrics": metrics,
                     "cost": {}, "equirun_version": "0", "started_at": "", "finished_at": ""});
    std::fs::write(p, serde_json::to_string_pretty(&rec).unwrap()).unwrap();
}

fn clip_config(model: &str, transform: &str, group: &str) -> Value {
    json!({"model": {"kind": "hub", "id": model}, "group": {"name": group}, "transform": {"name": transform},
           "transform_per_batch": false, "dataset": {"name": "cifar100", "n_images": 1000},
           "logit_scale": {"mode": "fixed", "value": 1.0}, "equizero_select": "whole-copy"})
}

#[test]
fn report_gives_mean_std_and_marks_missing_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("results");
    // CLIP: vanilla 10/20/30 → 20 ± 10; equitune seeds 0, 1 only → incomplete (missing 2)
    for (seed, v, e) in [
        (0, 10.0, Some(40.0)),
        (1, 20.0, Some(50.0)),
        (2, 30.0, None),
    ] {
        let mut m = json!({"vanilla": {"top1": v, "top5": 90.0}});
        if let Some(e) = e {
            m["equitune"] = json!({"top1": e, "top5": 95.0});
        }
        write_rec(
            &res,
            "clip",
            "b32-rot90",
            seed,
            clip_config("openai/clip-vit-base-patch32", "rot90", "rot90"),
            m,
        );
        // another model, other transform, from exp0-like runs: vanilla only
        write_rec(
            &res,
            "clip",
            "b16-none",
            seed,
            clip_config("openai/clip-vit-base-patch16", "none", "rot90xflip"),
            json!({"vanilla": {"top1": 60.0 + seed as f64}}),
        );
    }
    // SCAN: pretrain and finetune of one cell, two test splits
    let data = json!({"dataset": "scan-ii", "eval_limit": null});
    for seed in 0..3u64 {
        write_rec(
            &res,
            "scan-pretrain",
            "p-gru",
            seed,
            json!({"data": data, "model": {"cell": "gru"}}),
            json!({"test": {"jump": {"accuracy": 1.0 + seed as f64}, "turn_left": {"accuracy": 50.0}}}),
        );
        write_rec(
            &res,
            "scan-finetune",
            "p-gru-equitune",
            seed,
            json!({"data": data, "model": {"cell": "gru"}, "method": "equitune", "iters": 10}),
            json!({"test": {"jump": {"accuracy": 90.0}, "turn_left": {"accuracy": 80.0 + 2.0 * seed as f64}}}),
        );
    }
    // fairness
    for seed in 0..2u64 {
        write_rec(
            &res,
            "gpt2-fairness",
            "f",
            seed,
            json!({"model": {"kind": "gguf", "path": "/x/SmolLM2-135M.gguf"}, "axes": [{"name": "gender"}, {"name": "race"}], "contexts": ["respect"],
                         "samples_per_demographic": 5, "top_k": 40, "max_new_tokens": 15}),
            json!({"methods": {"vanilla": {"swap_consistency": 0.25 + 0.5 * seed as f64}, "equitune": {"swap_consistency": 1.0}}}),
        );
    }
    // noise the report must skip or flag
    std::fs::create_dir_all(res.join("scan-pretrain/p-gru/seed-0")).unwrap();
    std::fs::write(res.join("scan-pretrain/p-gru/seed-0/state.json"), "{}").unwrap();
    std::fs::write(res.join("clip/b32-rot90/.tmp-abc.json"), "{").unwrap();
    std::fs::create_dir_all(res.join("other/x")).unwrap();
    std::fs::write(res.join("other/x/seed-0.json"), "{not json").unwrap();

    let out = tmp.path().join("report");
    let r = report::report(&res, &out).unwrap();
    assert_eq!(r.records, 3 * 2 + 3 * 2 + 2);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert_eq!(r.tables.len(), 3);

    let clip = r
        .tables
        .iter()
        .find(|t| t.family == equirun::tools::table::Family::Clip)
        .unwrap();
    assert_eq!(clip.row_fields, ["model", "transform"]);
    assert_eq!(clip.columns, ["vanilla", "equitune"]);
    assert_eq!(clip.reference_seeds, [0, 1, 2]);
    assert_eq!(clip.rows[0], ["openai/clip-vit-base-patch16", "none"]);
    let v = clip
        .cell(&["openai/clip-vit-base-patch32", "rot90"], "vanilla")
        .unwrap();
    assert!((v.mean - 20.0).abs() < 1e-12 && (v.std.unwrap() - 10.0).abs() < 1e-12 && v.complete());
    let e = clip
        .cell(&["openai/clip-vit-base-patch32", "rot90"], "equitune")
        .unwrap();
    assert_eq!((e.seeds.clone(), e.missing.clone()), (vec![0, 1], vec![2]));
    assert!((e.mean - 45.0).abs() < 1e-12 && (e.std.unwrap() - 50f64.sqrt()).abs() < 1e-12);
    assert!(clip
        .cell(&["openai/clip-vit-base-patch16", "none"], "equitune")
        .is_none());
    let md = &r.markdown;
    assert!(md.contains("| openai/clip-vit-base-patch32 | rot90 | 20.00 ± 10.00 | 45.00 ± 7.07 ⚠ 2/3 seeds, missing 2 |"), "{md}");
    assert!(
        md.contains("| openai/clip-vit-base-patch16 | none | 61.00 ± 1.00 | — |"),
        "{md}"
    );
    assert!(md.contains("1 incomplete cell"), "{md}");

    let scan = r
        .tables
        .iter()
        .find(|t| t.family == equirun::tools::table::Family::Scan)
        .unwrap();
    assert_eq!(scan.columns, ["pretrained", "equitune"]);
    assert!(
        md.contains("| gru | jump | 2.00 ± 1.00 | 90.00 ± 0.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| gru | turn_left | 50.00 ± 0.00 | 82.00 ± 2.00 |"),
        "{md}"
    );
    let fair = r
        .tables
        .iter()
        .find(|t| t.family == equirun::tools::table::Family::Fairness)
        .unwrap();
    assert_eq!(fair.reference_seeds, [0, 1]);
    assert!(
        md.contains("| gender,race | respect | 0.500 ± 0.354 | 1.000 ± 0.000 |"),
        "{md}"
    );
    assert!(md.contains("SmolLM2-135M.gguf"), "{md}");

    // CSV shaped like the table, plus the long cells.csv
    let csv = std::fs::read_to_string(out.join(format!("{}.csv", clip.slug))).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "model,transform,vanilla mean,vanilla std,vanilla n,vanilla missing seeds,equitune mean,equitune std,equitune n,equitune missing seeds");
    assert_eq!(
        lines[2],
        format!(
            "openai/clip-vit-base-patch32,rot90,20,10,3,,45,{},2,2",
            50f64.sqrt()
        )
    );
    let cells = std::fs::read_to_string(out.join("cells.csv")).unwrap();
    assert!(
        cells.contains(",equitune,45,") && cells.contains(",0 1,2,,false,clip/b32-rot90"),
        "{cells}"
    );
    // plots: SVG with text, PNG that decodes and is not blank
    for t in &r.tables {
        let svg = std::fs::read_to_string(out.join(format!("{}.svg", t.slug))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text"), "{}", t.slug);
        let img = image::open(out.join(format!("{}.png", t.slug)))
            .unwrap()
            .to_rgb8();
        assert!(img.width() >= 480 && img.height() >= 300);
        let dark = img
            .pixels()
            .filter(|p| p.0.iter().all(|&c| c < 100))
            .count();
        assert!(
            dark > 200,
            "{}: text and axes drawn ({dark} dark pixels)",
            t.slug
        );
    }
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap() == r.markdown);
}

#[test]
fn report_splits_runs_that_disagree() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("r");
    for seed in 0..2u64 {
        // two run folders give vanilla for the same cell: identical → merged; different → split
        write_rec(
            &res,
            "clip",
            "exp0",
            seed,
            clip_config("m/a", "rot90", "rot90"),
            json!({"vanilla": {"top1": 10.0}, "equizero": {"top1": 30.0}}),
        );
        write_rec(
            &res,
            "clip",
            "neurips",
            seed,
            clip_config("m/a", "rot90", "rot90"),
            json!({"vanilla": {"top1": 10.0}, "equizero": {"top1": 31.0}}),
        );
    }
    let r = report::report(&res, &tmp.path().join("o")).unwrap();
    let t = &r.tables[0];
    assert_eq!(
        t.columns,
        ["vanilla", "equizero [exp0]", "equizero [neurips]"]
    );
    assert_eq!(
        t.cell(&["m/a", "rot90"], "vanilla").unwrap().sources,
        ["clip/exp0", "clip/neurips"]
    );
}

/// A failing run's excerpt always carries its `error:` line, even when more output follows it.
#[test]
fn failing_run_excerpt_keeps_the_error_line() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("run.log");
    let mut text = String::from("loading\nerror: --data-dir /x: no CIFAR-10 files there\n");
    for i in 0..10 {
        text.push_str(&format!("trailing line {i}\n"));
    }
    std::fs::write(&log, &text).unwrap();
    let ex = sweep::log_excerpt(&log, 6);
    let lines: Vec<&str> = ex.lines().collect();
    assert_eq!(
        lines[0], "error: --data-dir /x: no CIFAR-10 files there",
        "{ex}"
    );
    assert_eq!(lines[1], "…");
    assert_eq!(lines.last(), Some(&"trailing line 9"));
    assert_eq!(lines.len(), 8, "{ex}");
    // already in the tail: not repeated
    std::fs::write(&log, "a\nb\nerror: boom\n").unwrap();
    assert_eq!(sweep::log_excerpt(&log, 6), "a\nb\nerror: boom");
}
