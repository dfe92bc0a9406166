//! Table-driven: each class of bad input that used to panic (exit 101), abort (134) or pass
//! silently (exit 0) now exits 2 with a message naming the flag or file, and writes nothing
//! to `--out`. The rows use the CLI as it is today (`equirun clip --model-dir`, `equirun
//! check --group`).

use equirun::testing::run_equirun;
use serde_json::Value;
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_equirun");

struct Case {
    /// What the row is, and how it behaved before.
    name: &'static str,
    /// Builds the inputs under the temp dir and returns the arguments.
    args: fn(&Path) -> Vec<String>,
    /// All must be in stderr.
    needles: &'static [&'static str],
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn p(path: PathBuf) -> String {
    path.to_str().unwrap().to_string()
}

/// A tiny CLIP snapshot at `root/model` with `edit` applied to its config.json.
fn tiny_clip(root: &Path, edit: impl Fn(&mut Value)) -> PathBuf {
    let dir = root.join("model");
    equirun::testing::write_tiny_clip_for_cifar10(&dir, 3);
    let cfg = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&cfg, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    dir
}

/// `equirun clip --model-dir <model> --dataset cifar10` on a tiny CIFAR-10.
fn clip_args(root: &Path, model: &Path) -> Vec<String> {
    equirun::testing::write_tiny_cifar10(&root.join("data"), 6, 1);
    let mut a = s(&[
        "clip",
        "--dataset",
        "cifar10",
        "--group",
        "rot90",
        "--method",
        "vanilla",
    ]);
    a.extend([
        "--model-dir".into(),
        p(model.to_path_buf()),
        "--data-dir".into(),
        p(root.join("data")),
        "--out".into(),
        p(root.join("out")),
    ]);
    a
}

fn config_case(root: &Path, edit: fn(&mut Value)) -> Vec<String> {
    let m = tiny_clip(root, edit);
    clip_args(root, &m)
}

const CASES: &[Case] = &[
    Case {
        // before: `image_size % patch_size` divided by zero: panic, exit 101
        name: "config.json patch_size 0",
        args: |r| config_case(r, |v| v["vision_config"]["patch_size"] = 0.into()),
        needles: &["config.json", "vision_config.patch_size is 0"],
    },
    Case {
        // before: panic in candle's attention reshape (exit 101)
        name: "config.json num_attention_heads 0",
        args: |r| config_case(r, |v| v["text_config"]["num_attention_heads"] = 0.into()),
        needles: &["config.json", "text_config.num_attention_heads is 0"],
    },
    Case {
        name: "config.json heads do not divide the width",
        args: |r| config_case(r, |v| v["vision_config"]["num_attention_heads"] = 3.into()),
        needles: &[
            "config.json",
            "vision_config.hidden_size = 64 is not divisible by vision_config.num_attention_heads = 3",
        ],
    },
    Case {
        name: "config.json absurd image_size",
        args: |r| config_case(r, |v| v["vision_config"]["image_size"] = 10_000_000_000u64.into()),
        needles: &["config.json", "vision_config.image_size"],
    },
    Case {
        // before: exit 0, the second layer of each tower silently ignored
        name: "config.json with fewer layers than the weights",
        args: |r| {
            config_case(r, |v| {
                v["text_config"]["num_hidden_layers"] = 1.into();
            })
        },
        needles: &[
            "config.json",
            "text_config.num_hidden_layers = 1",
            "model.safetensors has 2 layers",
        ],
    },
    Case {
        // before: 16 × 2^30 × 2^30 wrapped to 0 = the data length: accepted, then a slice
        // out of range when the first image was read (exit 101)
        name: "idx header whose dimension product overflows",
        args: |r| {
            let d = r.join("fm");
            std::fs::create_dir_all(&d).unwrap();
            equirun::testing::write_idx(&d.join("t10k-images-idx3-ubyte"), &[16, 1 << 30, 1 << 30], &[]);
            equirun::testing::write_idx(&d.join("t10k-labels-idx1-ubyte"), &[16], &[1; 16]);
            let m = tiny_clip(r, |_| {});
            let mut a = clip_args(r, &m);
            let i = a.iter().position(|x| x == "cifar10").unwrap();
            a[i] = "fashion-mnist".into();
            let i = a.iter().position(|x| x == "--data-dir").unwrap();
            a[i + 1] = p(d);
            a
        },
        needles: &["t10k-images-idx3-ubyte", "malformed idx file", "18446744073709551616"],
    },
    Case {
        name: "idx file with zero-sized images",
        args: |r| {
            let d = r.join("fm");
            std::fs::create_dir_all(&d).unwrap();
            equirun::testing::write_idx(&d.join("t10k-images-idx3-ubyte"), &[4, 0, 28], &[]);
            equirun::testing::write_idx(&d.join("t10k-labels-idx1-ubyte"), &[4], &[1; 4]);
            let m = tiny_clip(r, |_| {});
            let mut a = clip_args(r, &m);
            let i = a.iter().position(|x| x == "cifar10").unwrap();
            a[i] = "fashion-mnist".into();
            let i = a.iter().position(|x| x == "--data-dir").unwrap();
            a[i + 1] = p(d);
            a
        },
        needles: &["t10k-images-idx3-ubyte", "is 0"],
    },
    Case {
        // before: exit 0, every method reported 0.00% with n: 0
        name: "folder dataset without images",
        args: |r| {
            let d = r.join("folder");
            for c in ["cat", "dog"] {
                std::fs::create_dir_all(d.join(c)).unwrap();
            }
            std::fs::write(d.join("cat").join("notes.txt"), "not an image").unwrap();
            let m = tiny_clip(r, |_| {});
            let mut a = clip_args(r, &m);
            let i = a.iter().position(|x| x == "cifar10").unwrap();
            a[i] = "folder".into();
            let i = a.iter().position(|x| x == "--data-dir").unwrap();
            a[i + 1] = p(d);
            a
        },
        needles: &["folder dataset", "has 2 class subfolders but no images"],
    },
    Case {
        // before: 4^40 overflowed (order wrapped to 0): an empty "group" (exit 101 later)
        name: "group with 40 factors",
        args: |_| {
            let spec = vec!["rot90"; 40].join("x");
            s(&["check", "--group", &spec, "--json"])
        },
        needles: &["group", "40 factors", "at most 32"],
    },
    Case {
        name: "group whose order exceeds the bound",
        args: |_| {
            let spec = vec!["rot90"; 6].join("x");
            s(&["check", "--group", &spec, "--json"])
        },
        needles: &["4096 elements", "maximum of 1024"],
    },
];

#[test]
fn bad_inputs_exit_2_with_a_message_and_write_nothing() {
    let mut report = Vec::new();
    for c in CASES {
        let root = tempfile::tempdir().unwrap();
        let args = (c.args)(root.path());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_equirun(BIN, &refs);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{}: expected exit 2, got {:?}\nstderr: {err}",
            c.name,
            o.status.code()
        );
        assert!(!err.contains("panicked"), "{}: {err}", c.name);
        for n in c.needles {
            assert!(err.contains(n), "{}: {n:?} not in stderr: {err}", c.name);
        }
        let out = root.path().join("out");
        let written: Vec<_> = std::fs::read_dir(&out)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(written.is_empty(), "{}: wrote {written:?}", c.name);
        report.push(format!(
            "{:50} exit 2  {}",
            c.name,
            err.trim().lines().last().unwrap_or("")
        ));
    }
    eprintln!("{}", report.join("\n"));
}

/// The hardened seed-list parser (`equirun::parse::parse_seeds`, ≤ 10,000 seeds), reached
/// through every experiment's `--seeds`.
#[test]
fn huge_seed_range_exits_2() {
    let root = tempfile::tempdir().unwrap();
    let m = tiny_clip(root.path(), |_| {});
    let mut a = clip_args(root.path(), &m);
    a.extend(["--seeds".into(), "0-4000000000".into()]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = run_equirun(BIN, &refs);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--seeds") && err.contains("10000"), "{err}");
    assert!(!root.path().join("out").exists());
}

/// Numeric ranges and run names are checked while the command line is parsed, before any work:
/// each value that used to be accepted (a meaningless or out-of-range result, or a write outside
/// `<out>/<experiment>/`) exits 2 naming the flag, and nothing is written under `--out`.
#[test]
fn out_of_range_flags_exit_2_naming_the_flag() {
    let rows: &[(&[&str], &str, &str)] = &[
        // (arguments, flag named, reason)
        (&["check", "--logit-scale", "0"], "--logit-scale", "> 0"),
        // rounds to 0 in f32 (found by the property test of the flag parsers)
        (
            &["check", "--logit-scale", "1e-320"],
            "--logit-scale",
            "> 0",
        ),
        (
            &["check", "--logit-scale", "inf"],
            "--logit-scale",
            "finite",
        ),
        (&["check", "--classes", "1"], "--classes", "at least 2"),
        (&["check", "--batch", "0"], "--batch", "at least 1"),
        (
            &["scan", "pretrain", "--val-fraction", "0"],
            "--val-fraction",
            "(0, 1)",
        ),
        (
            &["scan", "pretrain", "--val-fraction=-0.1"],
            "--val-fraction",
            "(0, 1)",
        ),
        (
            &["scan", "pretrain", "--val-fraction", "1.5"],
            "--val-fraction",
            "(0, 1)",
        ),
        (
            &["scan", "finetune", "--val-fraction", "NaN"],
            "--val-fraction",
            "finite",
        ),
        (
            &["scan", "finetune", "--teacher-forcing", "2"],
            "--teacher-forcing",
            "[0, 1]",
        ),
        (
            &["scan", "pretrain", "--batch-size", "0"],
            "--batch-size",
            "at least 1",
        ),
        (
            &["scan", "pretrain", "--eval-every", "0"],
            "--eval-every",
            "at least 1",
        ),
        (
            &["sweep", "grid.toml", "--jobs", "0"],
            "--jobs",
            "at least 1",
        ),
        (
            &["regard", "score", "--bootstrap", "0"],
            "--bootstrap",
            "at least 1",
        ),
        (
            &["gpt2-fairness", "--bootstrap", "0"],
            "--bootstrap",
            "at least 1",
        ),
        (
            &["clip", "--run-name", "../../x"],
            "--run-name",
            "one path segment",
        ),
        (
            &["cnn", "--run-name", "a/b"],
            "--run-name",
            "one path segment",
        ),
        (
            &["scan", "pretrain", "--run-name", ".."],
            "--run-name",
            "one path segment",
        ),
        (&["cnn", "--lr", "0"], "--lr", "> 0"),
        (&["cnn", "--momentum", "1"], "--momentum", "[0, 1)"),
        (&["cnn", "--weight-decay=-1"], "--weight-decay", "≥ 0"),
        (&["cnn", "--rounds", "0"], "--rounds", "at least 1"),
        (&["cnn", "--iters", "0"], "--iters", "at least 1"),
        (&["cnn", "--batch-size", "0"], "--batch-size", "at least 1"),
        (&["cnn", "--lambda-lr", "nan"], "--lambda-lr", "finite"),
        (
            &["cnn", "--lambda-rounds", "0"],
            "--lambda-rounds",
            "at least 1",
        ),
        (
            &["cnn", "--lambda-iters", "0"],
            "--lambda-iters",
            "at least 1",
        ),
        (
            &["cnn", "--lambda-momentum", "1.5"],
            "--lambda-momentum",
            "[0, 1)",
        ),
        (&["cnn", "--val-size", "0"], "--val-size", "at least 1"),
        (&["cnn", "--val-eval", "0"], "--val-eval", "at least 1"),
        (&["cnn", "--limit-test", "0"], "--limit-test", "at least 1"),
        (
            &["cnn", "--limit-train", "0"],
            "--limit-train",
            "at least 1",
        ),
        (
            &["cnn", "--eval-batch-size", "0"],
            "--eval-batch-size",
            "at least 1",
        ),
        (
            &["cnn", "--pretrain-epochs", "0"],
            "--pretrain-epochs",
            "at least 1",
        ),
        (
            &["cnn", "--pretrain-batch-size", "0"],
            "--pretrain-batch-size",
            "at least 1",
        ),
        (&["cnn", "--pretrain-lr=-1e-3"], "--pretrain-lr", "> 0"),
        (
            &["cnn", "--transform", "rot90xfoo"],
            "--transform",
            "unknown image group 'foo'",
        ),
        (&["cnn", "bench", "--steps", "0"], "--steps", "at least 1"),
        (&["clip", "--limit", "0"], "--limit-test", "at least 1"),
        (&["clip", "--batch-size", "0"], "--batch-size", "at least 1"),
        (
            &["clip", "--group", "rot9"],
            "--group",
            "unknown image group 'rot9'",
        ),
        (
            &["clip", "--method", "equitun"],
            "--method",
            "unknown method 'equitun'",
        ),
        (
            &["clip", "finetune", "--val-size", "0"],
            "--val-size",
            "at least 1",
        ),
        (&["clip", "finetune", "--lr", "inf"], "--lr", "finite"),
        (
            &["clip", "finetune", "--eval-batch-size", "0"],
            "--eval-batch-size",
            "at least 1",
        ),
        (
            &["clip", "finetune", "--limit-train", "0"],
            "--limit-train",
            "at least 1",
        ),
        (&["bench-clip", "--batches", "0"], "--batches", "at least 1"),
        (&["bench-lm", "--batch", "0"], "--batch-size", "at least 1"),
        (
            &["bench-lm", "--new-tokens", "0"],
            "--new-tokens",
            "at least 1",
        ),
        (&["check", "--tolerance=-1"], "--tolerance", "≥ 0"),
        (
            &["multi-image", "--k", "0"],
            "--k",
            "views per sample must be between 1 and 6",
        ),
        (&["multi-image", "--k", "2,9"], "--k", "between 1 and 6"),
        (&["multi-image", "--k", ","], "--k", "comma-separated list"),
        (
            &["multi-image", "--image-size", "30"],
            "--image-size",
            "multiple of 4",
        ),
        (&["multi-image", "--epochs", "0"], "--epochs", "at least 1"),
        (
            &["multi-image", "--test-images", "0"],
            "--limit-test",
            "at least 1",
        ),
        (
            &["multi-image", "--val-size", "0"],
            "--val-size",
            "at least 1",
        ),
        (&["multi-image", "--lr", "0"], "--lr", "> 0"),
        (&["multi-image", "--momentum", "1"], "--momentum", "[0, 1)"),
        (
            &["multi-image", "--weight-decay=-0.5"],
            "--weight-decay",
            "≥ 0",
        ),
        (
            &["scan", "pretrain", "--iters", "0"],
            "--iters",
            "at least 1",
        ),
        (&["scan", "pretrain", "--lr", "0"], "--lr", "> 0"),
        (
            &["scan", "pretrain", "--clip-norm", "0"],
            "--clip-norm",
            "> 0",
        ),
        (
            &["scan", "pretrain", "--eval-limit", "0"],
            "--limit-test",
            "at least 1",
        ),
        (
            &["scan", "pretrain", "--val-limit", "0"],
            "--val-limit",
            "at least 1",
        ),
        (
            &["scan", "pretrain", "--eval-batch", "0"],
            "--eval-batch-size",
            "at least 1",
        ),
        (
            &["scan", "finetune", "--weight-decay=-0.1"],
            "--weight-decay",
            "≥ 0",
        ),
        (
            &["scan", "quick", "--pretrain-iters", "0"],
            "--pretrain-iters",
            "at least 1",
        ),
        (
            &["scan", "quick", "--batch-size", "0"],
            "--batch-size",
            "at least 1",
        ),
        (&["gpt2-fairness", "--top-k", "0"], "--top-k", "at least 1"),
        (
            &["gpt2-fairness", "--max-new-tokens", "0"],
            "--max-new-tokens",
            "at least 1",
        ),
        (
            &["gpt2-fairness", "--samples-per-demographic", "0"],
            "--samples-per-demographic",
            "at least 1",
        ),
        (
            &["gpt2-fairness", "--max-pieces", "2"],
            "--max-pieces",
            "[3, 512]",
        ),
        (
            &["regard", "score", "--scorer-batch-size", "0"],
            "--scorer-batch-size",
            "at least 1",
        ),
        (
            &["regard", "train", "--max-pieces", "100000"],
            "--max-pieces",
            "[3, 512]",
        ),
    ];
    for (args, flag, why) in rows {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let mut a: Vec<&str> = args.to_vec();
        let out_s = out.to_str().unwrap().to_string();
        let no_out = ["sweep", "check", "bench-lm", "bench-clip"].contains(&args[0])
            || args.get(1) == Some(&"bench");
        if !no_out {
            a.extend(["--out", out_s.as_str()]);
        }
        let o = run_equirun(BIN, &a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(why), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // in range: accepted
    let o = run_equirun(
        BIN,
        &[
            "check",
            "--group",
            "rot90",
            "--classes",
            "2",
            "--logit-scale",
            "100",
            "--json",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A result file truncated (full disk, killed copy) is reported as unreadable, named, with the
/// fix; it is not "a different config". `--force` recomputes it, and the new file is readable by
/// others (created like `File::create`, not 0600).
#[test]
fn truncated_result_json_is_named_unreadable_and_force_recomputes_it() {
    let root = tempfile::tempdir().unwrap();
    let m = tiny_clip(root.path(), |_| {});
    let mut a = clip_args(root.path(), &m);
    a.extend([
        "--run-name".into(),
        "r".into(),
        "--seeds".into(),
        "0".into(),
    ]);
    let path = root.path().join("out/clip/r/seed-0.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{\"schema_version\": 1, \"experiment\": \"cl").unwrap();
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = run_equirun(BIN, &refs);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(path.to_str().unwrap())
            && err.contains("unreadable")
            && err.contains("--force")
            && !err.contains("different config"),
        "{err}"
    );
    // valid JSON that is not a result object: the same
    std::fs::write(&path, "[1, 2]").unwrap();
    let o = run_equirun(BIN, &refs);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a result file") && err.contains("--force"),
        "{err}"
    );
    // --force recomputes it
    let mut forced = refs.clone();
    forced.push("--force");
    let o = run_equirun(BIN, &forced);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["seed"], 0);
    use std::os::unix::fs::PermissionsExt;
    let reference = path.with_file_name("reference");
    std::fs::File::create(&reference).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), mode(&reference), "result file mode");
    assert_ne!(mode(&path) & 0o044, 0, "not readable by others");
}

/// `--out` is checked writable before anything is loaded or computed: a folder that cannot be
/// created (a file in the way, a read-only filesystem such as /proc) exits 2 naming the flag,
/// even when the data would fail too (it is never looked at).
#[test]
fn unwritable_out_exits_2_naming_the_flag_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under_file = p(file.join("results"));
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["clip", "--data-dir", "/nonexistent"],
            &under_file,
            "is not a folder",
        ),
        (
            &["cnn", "--data-dir", "/nonexistent"],
            &under_file,
            "is not a folder",
        ),
        (&["scan", "pretrain"], &under_file, "is not a folder"),
        (
            &["multi-image"],
            "/proc/equirun-test/out",
            "cannot create files in /proc",
        ),
        (&["scan", "generate"], &under_file, "is not a folder"),
        (&["report", "--out"], &under_file, "is not a folder"),
    ];
    for (args, out, why) in cases {
        let mut a: Vec<&str> = args.to_vec();
        let flag = match args[0] {
            "scan" if args[1] == "generate" => "--data-dir",
            "report" => "--report-dir",
            _ => "--out",
        };
        if args[0] != "report" {
            a.push(flag);
        }
        a.push(out);
        let o = run_equirun(BIN, &a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {err}");
        assert!(
            err.starts_with(&format!("error: {flag} {out}: ")) && err.contains(why),
            "{a:?}: {err}"
        );
        assert!(
            !err.contains("nonexistent"),
            "{a:?} looked at the data: {err}"
        );
    }
    assert!(!root.path().join("results").exists());
}

/// An unwritable Hugging Face cache is a warning, not an error (cached models still load).
#[test]
fn unwritable_hf_cache_is_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = p(root.path().join("out"));
    // nothing listens on port 9: the download fails at once, after the warning
    let o = std::process::Command::new(BIN)
        .args(["clip", "--model", "org/none", "--out", &out])
        .env("HF_HUB_CACHE", file.join("hub"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("HF_HUB_OFFLINE")
        .env("EQUIRUN_NO_PROGRESS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: the Hugging Face cache cannot be written")
            && err.contains("HF_HUB_CACHE"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// An empty SCAN split file: exit 2 naming the file (it used to train, then report 0.00% of 0).
#[test]
fn empty_scan_split_exits_2_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("scan/simple_split");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("tasks_train_simple.txt"),
        "IN: jump OUT: I_JUMP\nIN: walk OUT: I_WALK\n",
    )
    .unwrap();
    std::fs::write(d.join("tasks_test_simple.txt"), "").unwrap();
    let out = root.path().join("out");
    let o = run_equirun(
        BIN,
        &[
            "scan",
            "pretrain",
            "--dataset",
            "scan",
            "--split",
            "simple",
            "--data-dir",
            root.path().join("scan").to_str().unwrap(),
            "--iters",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tasks_test_simple.txt") && err.contains("no SCAN examples"),
        "{err}"
    );
    assert!(!out.exists());
}

/// I/O errors of the atomic writer name their path, and the OS reason appears once (tempfile's
/// own error repeats it: "No space left on device" used to be printed twice).
#[test]
fn io_errors_name_their_path_once() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    // a full disk under the safetensors writer: its error repeats the OS reason in its own
    // message ("I/O error: {source}") and gives the source again
    let enospc = std::io::Error::from_raw_os_error(28);
    let e = anyhow::Error::from(candle_core::Error::from(
        safetensors::SafeTensorError::IoError(enospc),
    ))
    .context("writing out/x.safetensors");
    let old = format!("{e:#}");
    assert_eq!(old.matches("No space left on device").count(), 2, "{old}");
    let now = equirun::output::error_text(&e);
    assert_eq!(now.matches("No space left on device").count(), 1, "{now}");
    assert!(now.starts_with("writing out/x.safetensors: "), "{now}");
    // the writer: one reason, with the path
    let target = file.join("sub").join("seed-0.json");
    let e = equirun::output::write_bytes_atomic(&target, b"{}").unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(file.join("sub").to_str().unwrap()), "{msg}");
    assert_eq!(msg.matches("os error").count(), 1, "{msg}");
    let e = equirun::output::check_writable_dir(&file.join("sub")).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(file.to_str().unwrap()) && msg.contains("is not a folder"),
        "{msg}"
    );
    // a folder that can be written: nothing is left behind
    let ok = root.path().join("new/deeper");
    equirun::output::check_writable_dir(&ok).unwrap();
    assert!(!root.path().join("new").exists());
    let before: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().collect();
    equirun::output::check_writable_dir(root.path()).unwrap();
    let after: Vec<_> = std::fs::read_dir(root.path()).unwrap().flatten().collect();
    assert_eq!(before.len(), after.len());
}

/// The leaf matches of a command line, and the leaf's clap definition.
fn leaf(args: &[&str]) -> clap::ArgMatches {
    let mut m = equirun::cli::command()
        .try_get_matches_from(std::iter::once("equirun").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    while let Some((_, sub)) = m.subcommand() {
        m = sub.clone();
    }
    m
}

/// Every old flag spelling (now a hidden alias) parses to exactly what the new name gives.
#[test]
fn old_flag_spellings_still_work() {
    let pairs: &[(&[&str], &[&str])] = &[
        (&["check", "--batch", "3"], &["check", "--batch-size", "3"]),
        (&["check", "--seeds", "3"], &["check", "--seed", "3"]),
        (
            &["bench-lm", "--batch", "2"],
            &["bench-lm", "--batch-size", "2"],
        ),
        (
            &["bench-clip", "--seeds", "5"],
            &["bench-clip", "--seed", "5"],
        ),
        (&["clip", "--limit", "7"], &["clip", "--limit-test", "7"]),
        (&["clip", "--seed", "1,2"], &["clip", "--seeds", "1,2"]),
        (&["cnn", "--seed", "0-2"], &["cnn", "--seeds", "0-2"]),
        (
            &["scan", "pretrain", "--eval-batch", "8"],
            &["scan", "pretrain", "--eval-batch-size", "8"],
        ),
        (
            &["scan", "pretrain", "--eval-limit", "9"],
            &["scan", "pretrain", "--limit-test", "9"],
        ),
        (
            &["scan", "quick", "--eval-limit", "9"],
            &["scan", "quick", "--limit-test", "9"],
        ),
        (
            &["scan", "generate", "--out", "d"],
            &["scan", "generate", "--data-dir", "d"],
        ),
        (
            &["scan", "generate", "--data-dir", "d", "--seeds", "4"],
            &["scan", "generate", "--data-dir", "d", "--seed", "4"],
        ),
        (
            &["data", "scan", "--out", "d"],
            &["data", "scan", "--data-dir", "d"],
        ),
        (&["report", "--out", "r"], &["report", "--report-dir", "r"]),
        (
            &["gpt2-fairness", "--groups", "gender,race"],
            &["gpt2-fairness", "--group", "gender,race"],
        ),
        (
            &["multi-image", "--models", "cnn"],
            &["multi-image", "--model", "cnn"],
        ),
        (
            &["multi-image", "--train-images", "40"],
            &["multi-image", "--limit-train", "40"],
        ),
        (
            &["multi-image", "--val-images", "40"],
            &["multi-image", "--val-size", "40"],
        ),
        (
            &["multi-image", "--test-images", "40"],
            &["multi-image", "--limit-test", "40"],
        ),
    ];
    for (old, new) in pairs {
        let (mo, mn) = (leaf(old), leaf(new));
        let ids: Vec<String> = mn.ids().map(|i| i.to_string()).collect();
        assert_eq!(mo.ids().count(), ids.len(), "{old:?}");
        for id in &ids {
            let raw = |m: &clap::ArgMatches| -> Vec<std::ffi::OsString> {
                m.get_raw(id)
                    .map(|v| v.map(|s| s.to_os_string()).collect())
                    .unwrap_or_default()
            };
            assert_eq!(raw(&mo), raw(&mn), "{old:?} vs {new:?}: {id}");
            assert_eq!(mo.value_source(id), mn.value_source(id), "{old:?}: {id}");
        }
    }
    // the result JSONs' config keys are the field names, unchanged by the renames
    use clap::FromArgMatches;
    let a = equirun::experiments::multi_image::MultiImageArgs::from_arg_matches(&leaf(&[
        "multi-image",
        "--model",
        "cnn",
        "--limit-test",
        "40",
        "--limit-train",
        "80",
        "--val-size",
        "20",
    ]))
    .unwrap();
    let v = serde_json::to_value(&a).unwrap();
    for (k, want) in [
        ("models", Value::from("cnn")),
        ("test_images", 40.into()),
        ("train_images", 80.into()),
        ("val_images", 20.into()),
    ] {
        assert_eq!(v[k], want, "{k} in {v}");
    }
    let a = equirun::experiments::clip::ClipArgs::from_arg_matches(&leaf(&[
        "clip",
        "--limit-test",
        "7",
    ]))
    .unwrap();
    assert_eq!(serde_json::to_value(&a).unwrap()["limit"], 7);
}

/// Every command's `--help` documents itself: examples that the real parser accepts (and that
/// run the command they are listed under), a sentence per method where it takes `--method`, the
/// exit-status footer, and a description for every flag.
#[test]
fn every_command_has_examples_and_described_flags() {
    fn walk(cmd: &clap::Command, path: Vec<String>, seen: &mut usize, missing: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            walk(sub, p, seen, missing);
        }
        if path.is_empty() {
            return;
        }
        *seen += 1;
        let name = path.join(" ");
        let after = cmd
            .get_after_help()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(after.contains("Examples:\n"), "{name}: no examples");
        assert!(
            after.contains("Exit status: 0 success"),
            "{name}: no exit status"
        );
        if cmd.get_arguments().any(|a| a.get_id() == "method") {
            assert!(
                after.contains("Methods (--method):\n  vanilla"),
                "{name}: {after}"
            );
        }
        // examples: `equirun …` lines (with `\` continuations), each parsed for real
        let text = after.split("\n\n").next().unwrap().replace("\\\n", " ");
        let mut n = 0;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("equirun "))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let m = equirun::cli::command()
                .try_get_matches_from(&words)
                .unwrap_or_else(|e| panic!("{name}: example `{line}` does not parse: {e}"));
            // a parent command's examples may run its subcommands
            let mut got = Vec::new();
            let mut cur = &m;
            while let Some((s, sub)) = cur.subcommand() {
                got.push(s.to_string());
                cur = sub;
            }
            assert!(
                got.starts_with(&path),
                "{name}: example `{line}` runs {got:?}"
            );
            n += 1;
        }
        assert!(n > 0, "{name}: no `equirun …` example line in {after}");
        let undescribed: Vec<String> = cmd
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|a| a.get_help().is_none() && a.get_long_help().is_none())
            .map(|a| a.get_long().unwrap_or(a.get_id().as_str()).to_string())
            .collect();
        if !undescribed.is_empty() {
            missing.push(format!("{name}: {undescribed:?}"));
        }
    }
    let root = equirun::cli::command();
    let top = root
        .get_after_help()
        .map(|s| s.to_string())
        .unwrap_or_default();
    for needle in [
        "EQUIRUN_NO_PROGRESS",
        "Exit status:",
        "  2    an error: bad input",
    ] {
        assert!(top.contains(needle), "equirun --help lacks {needle}");
    }
    let (mut seen, mut missing) = (0, Vec::new());
    walk(&root, Vec::new(), &mut seen, &mut missing);
    assert!(
        missing.is_empty(),
        "flags without a description:\n{}",
        missing.join("\n")
    );
    assert!(seen >= 20, "{seen} commands");
}

/// The clip-tiny parity fixture carries the tokenizer it needs to run as a `--model-dir` (the
/// tiny word-level one of `equirun::models::clip::tiny_tokenizer`, over the CIFAR-10 prompt words; ids
/// 98/99 are its BOS/EOS, as in its config). Regenerate with `EQUIRUN_BLESS=1`.
#[test]
fn clip_tiny_fixture_runs_as_a_model_dir() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
    let words = equirun::testing::cifar10_prompt_words();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut want = serde_json::to_string_pretty(
        &equirun::models::clip::tiny_tokenizer::tiny_tokenizer_json(&refs).unwrap(),
    )
    .unwrap();
    want.push('\n');
    let path = fixture.join("tokenizer.json");
    if std::env::var_os("EQUIRUN_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).expect("tests/fixtures/clip-tiny/tokenizer.json");
    assert_eq!(have, want, "regenerate with EQUIRUN_BLESS=1");
    let root = tempfile::tempdir().unwrap();
    let mut a = clip_args(root.path(), &fixture);
    let i = a.iter().position(|x| x == "--method").unwrap();
    a[i + 1] = "vanilla,equitune".into();
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = run_equirun(BIN, &refs);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let results: Vec<PathBuf> = std::fs::read_dir(root.path().join("out/clip"))
        .unwrap()
        .flatten()
        .flat_map(|d| {
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|e| e.path())
        })
        .collect();
    assert_eq!(results.len(), 1, "{results:?}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&results[0]).unwrap()).unwrap();
    for m in ["vanilla", "equitune"] {
        assert_eq!(v["metrics"][m]["n"], 6, "{m}: {v}");
    }
}
