//! SCAN: wrapper equivariance on the real seq2seq for every element of the 8-element product,
//! pass counts, learning (overfitting 20 examples) and the CLI data paths.

use candle_core::{Device, Tensor};
use equirun::equi::proxy::top1_proxy;
use equirun::equi::{Evaluator, Method, Symmetry, TokenSymmetry, ZeroSelect};
use equirun::experiments::scan::{load_data, overfit, DataOpts};
use equirun::groups::scan::scan_group;
use equirun::models::seq2seq::{pack, CellKind, RunMode, Seq2Seq, Seq2SeqConfig};
use equirun::testing::max_abs_diff as max_abs;
use std::process::Command;

fn scan_ii(limit: usize) -> equirun::experiments::scan::ScanData {
    load_data(&DataOpts {
        dataset: "scan-ii".into(),
        split: "add-jump".into(),
        data_dir: None,
        eval_limit: Some(limit),
        val_limit: None,
    })
    .unwrap()
}

#[test]
fn seq2seq_wrappers_equivariant_for_every_element() {
    let data = scan_ii(8);
    let group = scan_group(
        "verb,direction-rl,direction-ud",
        &data.in_vocab,
        &data.out_vocab,
    )
    .unwrap();
    assert_eq!(group.order(), 8);
    let sym = TokenSymmetry::new(group, false, Some(data.in_cols));
    assert_eq!(Method::MultiEquitune.passes(&sym), 6);
    assert_eq!(Method::Equitune.passes(&sym), 8);
    // examples that contain the swapped words
    let pairs: Vec<(&[u32], &[u32])> = data.tests[3]
        .1
        .iter()
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    let x = pack(&pairs, data.in_cols, &Device::Cpu).unwrap();
    for cell in [CellKind::Gru, CellKind::Lstm, CellKind::Rnn] {
        let cfg = Seq2SeqConfig::official(cell, data.in_vocab.len(), data.out_vocab.len());
        let (_vm, model) = Seq2Seq::init(&cfg, 3, &Device::Cpu).unwrap();
        // both greedy decoding and teacher forcing (targets transform with the output action)
        for teacher in [vec![], vec![true]] {
            let mode = RunMode {
                teacher: &teacher,
                train: false,
                rng: None,
                tape: None,
            };
            let f =
                |z: &Tensor| -> anyhow::Result<Tensor> { model.forward(z, data.in_cols, &mode) };
            let proxy = top1_proxy;
            let ev = Evaluator {
                sym: &sym,
                proxy: &proxy,
                select: ZeroSelect::WholeCopy,
            };
            let (base, _) = ev.run(&Method::EVALUATOR, &f, &x).unwrap();
            let mut errs = [0f32; 5];
            for g in 0..sym.order() {
                let (outs, _) = ev
                    .run(&Method::EVALUATOR, &f, &sym.act_input(g, &x).unwrap())
                    .unwrap();
                for (k, (o, b)) in outs.iter().zip(&base).enumerate() {
                    errs[k] = errs[k].max(max_abs(o, &sym.act_output(g, b).unwrap()));
                }
            }
            for (m, e) in Method::EVALUATOR.iter().zip(errs) {
                if *m == Method::Vanilla {
                    assert!(
                        e > 1e-3,
                        "{cell:?}: an untrained seq2seq should not be equivariant ({e})"
                    );
                } else {
                    assert!(
                        e <= 1e-5,
                        "{cell:?} tf={teacher:?} {}: equivariance error {e}",
                        m.name()
                    );
                }
            }
        }
    }
}

#[test]
fn batched_equals_batch_of_one() {
    // masking: padded encoder steps and finished rows must not change any example's output
    let data = scan_ii(6);
    let cfg = Seq2SeqConfig::official(CellKind::Lstm, data.in_vocab.len(), data.out_vocab.len());
    let (_vm, model) = Seq2Seq::init(&cfg, 1, &Device::Cpu).unwrap();
    let pairs: Vec<(&[u32], &[u32])> = data.tests[0]
        .1
        .iter()
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    assert!(
        pairs
            .iter()
            .map(|p| p.0.len())
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "need ragged lengths"
    );
    for teacher in [vec![false], vec![true]] {
        let mode = RunMode {
            teacher: &teacher,
            train: false,
            rng: None,
            tape: None,
        };
        let all = model
            .forward(
                &pack(&pairs, data.in_cols, &Device::Cpu).unwrap(),
                data.in_cols,
                &mode,
            )
            .unwrap();
        for (i, p) in pairs.iter().enumerate() {
            let one = model
                .forward(
                    &pack(&[*p], data.in_cols, &Device::Cpu).unwrap(),
                    data.in_cols,
                    &mode,
                )
                .unwrap();
            let d = max_abs(&all.narrow(0, i, 1).unwrap(), &one);
            assert!(
                d <= 1e-5,
                "example {i} differs by {d} between batch and batch-1"
            );
        }
    }
}

#[test]
fn tiny_model_overfits_20_examples() {
    let data = scan_ii(20);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = data.tests[1].1.iter().take(20).cloned().collect();
    assert_eq!(pairs.len(), 20);
    let cfg = Seq2SeqConfig::official(CellKind::Gru, data.in_vocab.len(), data.out_vocab.len());
    // an untrained model decodes none of them
    let (acc0, _) = overfit(&cfg, &pairs, data.in_cols, 0, 1e-2, 0).unwrap();
    assert!(acc0 < 10.0, "untrained accuracy {acc0}%");
    let (acc, steps) = overfit(&cfg, &pairs, data.in_cols, 1500, 1e-2, 0).unwrap();
    assert_eq!(acc, 100.0, "training accuracy after {steps} steps: {acc}%");
}

#[test]
fn unknown_scan_group_and_missing_words() {
    let data = scan_ii(1);
    let err = format!(
        "{:#}",
        scan_group("colour", &data.in_vocab, &data.out_vocab).unwrap_err()
    );
    assert!(
        err.contains("unknown SCAN group 'colour'") && err.contains("direction-ud"),
        "{err}"
    );
}

#[test]
fn cli_generate_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(["scan", "generate", "--dataset", "scan-ii", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(count("train.txt"), 51_168);
    assert_eq!(count("test_jump.txt"), 26_949);
    assert_eq!(count("test_turn_left.txt"), 2_289);
    assert_eq!(count("test_turn_up.txt"), 2_289);
    assert_eq!(count("test_turn_up_jump_turn_left.txt"), 31_527);
    // a malformed dataset line: clear error with file and line, exit 2
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(bad.join("add_prim_split")).unwrap();
    std::fs::write(
        bad.join("add_prim_split/tasks_train_addprim_jump.txt"),
        "IN: jump OUT: I_JUMP\nIN: walk I_WALK\n",
    )
    .unwrap();
    std::fs::write(
        bad.join("add_prim_split/tasks_test_addprim_jump.txt"),
        "IN: jump OUT: I_JUMP\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args([
            "scan",
            "pretrain",
            "--dataset",
            "scan",
            "--split",
            "add-jump",
            "--iters",
            "1",
            "--data-dir",
        ])
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("results"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tasks_train_addprim_jump.txt:2"), "{err}");
    assert!(
        !dir.path().join("results").join("scan-pretrain").exists()
            || std::fs::read_dir(dir.path().join("results/scan-pretrain"))
                .unwrap()
                .count()
                == 0
    );
}

fn pretrain_cmd(out: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_equirun"));
    c.args([
        "scan",
        "pretrain",
        "--iters",
        "600",
        "--eval-every",
        "50",
        "--batch-size",
        "2",
        "--val-limit",
        "8",
        "--eval-limit",
        "8",
        "--run-name",
        "r",
    ])
    .arg("--out")
    .arg(out)
    .env("EQUIRUN_NO_PROGRESS", "1");
    c
}

/// A pretraining run killed with SIGKILL resumes from its last validation point and ends with
/// exactly the JSON of an uninterrupted run (same seed): parameters, Adam moments and both
/// RNG streams are restored.
#[test]
fn pretrain_survives_sigkill_and_resumes_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let out = pretrain_cmd(&a).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // interrupted run
    let mut child = pretrain_cmd(&b)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let meta = b.join("scan-pretrain/r/seed-0/state.json");
    let t0 = std::time::Instant::now();
    while !meta.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no state.json appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let result = b.join("scan-pretrain/r/seed-0.json");
    if result.exists() {
        eprintln!("skipping: the run finished before it could be killed");
        return;
    }
    let out = pretrain_cmd(&b).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (ja, jb) = (read(&a.join("scan-pretrain/r/seed-0.json")), read(&result));
    let resumed = jb["cost"]["resumed_from_iteration"].as_u64().unwrap();
    assert!(resumed >= 50 && resumed % 50 == 0, "resumed from {resumed}");
    assert_eq!(
        ja["metrics"], jb["metrics"],
        "the resumed run must equal the uninterrupted one"
    );
    assert_eq!(ja["config"], jb["config"]);
    // only the newest state file is kept, and no temp files are left
    let files: Vec<String> = std::fs::read_dir(b.join("scan-pretrain/r/seed-0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        files.iter().filter(|f| f.starts_with("state-")).count(),
        1,
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.ends_with(".tmp")), "{files:?}");
}
