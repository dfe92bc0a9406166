//! `equirun scan-dump` (hidden; the equirun side of scripts/scan_official.py): bad input exits 2
//! naming the flag, and the dumped multi-equitune log-probs are equivariant under the 8-element
//! product with the official canonicaliser (what the comparison with the official code reads).

use candle_core::Device;
use equirun::experiments::scan::{load_data, DataOpts};
use equirun::models::seq2seq::{CellKind, Seq2Seq, Seq2SeqConfig};
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_equirun"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

#[test]
fn missing_checkpoint_is_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "IN: jump OUT: I_JUMP\n").unwrap();
    let out = bin()
        .args(["scan-dump", "--checkpoint"])
        .arg(dir.path().join("nope.safetensors"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("o.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--checkpoint"), "{err}");
    assert!(!dir.path().join("o.json").exists());
}

/// Swaps words of a line: jump↔run and JUMP↔RUN (`verb`), left↔right (`direction-rl`) as chosen.
fn act(line: &str, verb: bool, rl: bool, ud: bool) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if verb {
        pairs.extend([("jump", "run"), ("I_JUMP", "I_RUN")]);
    }
    if rl {
        pairs.extend([("left", "right"), ("I_TURN_LEFT", "I_TURN_RIGHT")]);
    }
    if ud {
        pairs.extend([("up", "down"), ("I_TURN_UP", "I_TURN_DOWN")]);
    }
    line.split(' ')
        .map(|w| {
            pairs
                .iter()
                .find_map(|&(a, b)| {
                    if w == a {
                        Some(b)
                    } else if w == b {
                        Some(a)
                    } else {
                        None
                    }
                })
                .unwrap_or(w)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn dumped_multi_equitune_is_equivariant() {
    let data = load_data(&DataOpts {
        dataset: "scan-ii".into(),
        split: "add-jump".into(),
        data_dir: None,
        eval_limit: Some(4),
        val_limit: None,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Seq2SeqConfig::official(CellKind::Gru, data.in_vocab.len(), data.out_vocab.len());
    let (vm, _) = Seq2Seq::init(&cfg, 5, &Device::Cpu).unwrap();
    let ckpt = dir.path().join("best.safetensors");
    equirun::output::save_varmap_atomic(&vm, &ckpt).unwrap();
    let base = [
        "IN: turn left and run up OUT: I_TURN_LEFT I_TURN_UP I_RUN",
        "IN: jump right twice after walk down OUT: I_TURN_DOWN I_WALK I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_JUMP",
    ];
    let elements: Vec<(bool, bool, bool)> = (0..8)
        .map(|k| (k & 1 != 0, k & 2 != 0, k & 4 != 0))
        .collect();
    let lines: Vec<String> = elements
        .iter()
        .flat_map(|&(v, r, u)| base.iter().map(move |l| act(l, v, r, u)))
        .collect();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = dir.path().join("dump.json");
    let st = bin()
        .args([
            "scan-dump",
            "--method",
            "multi-equitune",
            "--collapse",
            "official",
        ])
        .arg("--checkpoint")
        .arg(&ckpt)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&output)).unwrap()).unwrap();
    let vocab: Vec<String> = serde_json::from_value(doc["out_vocab"].clone()).unwrap();
    let lp: Vec<Vec<Vec<f32>>> =
        serde_json::from_value(doc["logprobs"]["multi-equitune"].clone()).unwrap();
    assert_eq!(lp.len(), lines.len());
    let id = |w: &str| vocab.iter().position(|t| t == w).unwrap();
    for (k, &(v, r, u)) in elements.iter().enumerate() {
        // the output action of g: the same swaps on the action vocabulary
        let perm: Vec<usize> = vocab
            .iter()
            .map(|t| id(&act(&format!("I_{t}"), v, r, u)[2..]))
            .collect();
        for b in 0..base.len() {
            let (x, gx) = (&lp[b], &lp[k * base.len() + b]);
            let mut worst = 0f32;
            for (row, grow) in x.iter().zip(gx) {
                for (t, &p) in row.iter().enumerate() {
                    worst = worst.max((grow[perm[t]] - p).abs());
                }
            }
            assert!(worst < 1e-4, "element {k}, line {b}: |Δ| = {worst}");
        }
    }
}
