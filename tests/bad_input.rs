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
    ];
    for (args, flag, why) in rows {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let mut a: Vec<&str> = args.to_vec();
        let out_s = out.to_str().unwrap().to_string();
        if args[0] != "sweep" && args[0] != "check" {
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
