//! Fairness: equivariance of every LM wrapper for every element of gender × race(3) ×
//! orientation on a tiny random GPT-2, swap consistency of generation, and clear errors.

use candle_core::{Device, Tensor};
use equirun::equi::Method;
use equirun::equi::{Symmetry, TokenSymmetry};
use equirun::experiments::fairness::method_logits;
use equirun::groups::fairness::{Axis, FairnessGroups};
use equirun::groups::perm::{cyclic_factor, TokenPerm};
use equirun::groups::FiniteGroup;
use equirun::hub::ModelSource;
use equirun::models::lm::Incremental;
use std::path::Path;
use std::process::Command;

const V: usize = 100;

/// gender [5,6], race [10,11,12] (a 3-cycle: catches σ vs σ⁻¹), orientation [20,21];
/// general words 30..33.
fn groups(names: &[&str]) -> (FiniteGroup<TokenPerm>, FairnessGroups) {
    let all = [
        ("gender", vec![vec![5u32, 6]]),
        ("race", vec![vec![10, 11, 12]]),
        ("orientation", vec![vec![20, 21]]),
    ];
    let mut factors = Vec::new();
    let mut out = Vec::new();
    for (n, ids) in all.into_iter().filter(|(n, _)| names.contains(n)) {
        factors
            .push(cyclic_factor(n, n, TokenPerm::from_cycles(V, V, &ids, &ids).unwrap()).unwrap());
        out.push(Axis {
            name: n.into(),
            members: ids[0].iter().map(|i| i.to_string()).collect(),
            sets: vec![],
            ids,
        });
    }
    (
        FiniteGroup::product(&names.join(","), factors).unwrap(),
        FairnessGroups {
            axes: out,
            general_words: vec![],
            general_ids: vec![30, 31, 32, 33],
        },
    )
}

fn tiny_lm(dir: &Path) -> equirun::models::gpt2::Gpt2Lm {
    equirun::models::gpt2::write_tiny_snapshot(dir, 4).unwrap();
    let files = ModelSource {
        model: String::new(),
        revision: "main".into(),
        model_dir: Some(dir.to_path_buf()),
    }
    .resolve(&["config.json", "model.safetensors"], &[])
    .unwrap();
    equirun::models::gpt2::load_gpt2(&files, &Device::Cpu).unwrap()
}

fn max_abs_masked(a: &Tensor, b: &Tensor, skip: &[u32]) -> f32 {
    let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    let mut m = 0f32;
    for (ra, rb) in a.iter().zip(&b) {
        for (w, (x, y)) in ra.iter().zip(rb).enumerate() {
            if !skip.contains(&(w as u32)) {
                m = m.max((x - y).abs());
            }
        }
    }
    m
}

#[test]
fn lm_wrappers_equivariant_for_every_element() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny_lm(dir.path());
    // prefixes that contain words of every axis and general words
    let x = Tensor::new(
        &[[1u32, 5, 10, 20, 40, 30, 7], [2, 6, 12, 21, 31, 50, 11]],
        &Device::Cpu,
    )
    .unwrap();
    let methods = [
        Method::Vanilla,
        Method::Equitune,
        Method::REquitune,
        Method::MultiEquitune,
        Method::Equizero,
    ];
    let inc = Incremental::new(&mut lm);
    for (names, order, passes_eq, passes_multi) in [
        (vec!["gender"], 2, 2, 2),
        (vec!["race"], 3, 3, 3),
        (vec!["gender", "race", "orientation"], 12, 12, 7),
    ] {
        let (group, fg) = groups(&names);
        assert_eq!(group.order(), order);
        let sym = TokenSymmetry::new(group.clone(), false, None).with_collapse(fg.collapse_maps(V));
        assert_eq!(Method::Equitune.passes(&sym), passes_eq);
        assert_eq!(Method::MultiEquitune.passes(&sym), passes_multi);
        let mut errs = vec![0f32; methods.len()];
        let mut errs_rel = vec![0f32; methods.len()];
        for (k, m) in methods.iter().enumerate() {
            let base = method_logits(*m, &sym, &fg.general_ids, &inc, &x).unwrap();
            for g in 0..group.order() {
                let gx = sym.act_input(g, &x).unwrap();
                let out = method_logits(*m, &sym, &fg.general_ids, &inc, &gx).unwrap();
                let expected = sym.act_output(g, &base).unwrap();
                errs[k] = errs[k].max(max_abs_masked(&out, &expected, &[]));
                errs_rel[k] = errs_rel[k].max(max_abs_masked(&out, &expected, &fg.general_ids));
            }
        }
        println!("{names:?}: max |l(gx) - g.l(x)| over {order} elements for {:?}: {:?} (non-general words {:?})", methods.map(|m| m.name()), errs, errs_rel);
        assert!(
            errs[0] > 1e-3,
            "vanilla must not be equivariant ({})",
            errs[0]
        );
        for k in [1, 3, 4] {
            assert!(
                errs[k] <= 1e-4,
                "{names:?} {}: error {}",
                methods[k].name(),
                errs[k]
            );
        }
        // r-equitune: exact on E' ∪ N only
        assert!(
            errs_rel[2] <= 1e-4,
            "r-equitune on non-general words: {}",
            errs_rel[2]
        );
        assert!(errs[2] > 1e-4, "r-equitune should differ on general words");
    }
}

/// A word-level tokenizer.json covering the prompts, and a tiny GPT-2 snapshot using it.
fn snapshot_with_tokenizer(dir: &Path, extra: &[&str]) {
    equirun::models::gpt2::write_tiny_snapshot(dir, 9).unwrap();
    let mut words: Vec<&str> = "The man woman Black White Asian gay straight person he she his her him was known for described as regarded thought of well - worked had a job part time earned money by started working".split(' ').collect();
    words.extend_from_slice(extra);
    let tok = equirun::models::clip::tiny_tokenizer_json(&words).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tok).unwrap(),
    )
    .unwrap();
}

fn fairness_cmd(dir: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_equirun"))
        .args(["gpt2-fairness", "--model-dir"])
        .arg(dir)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("EQUIRUN_NO_PROGRESS", "1")
        .output()
        .unwrap()
}

#[test]
fn generation_swap_consistency() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    snapshot_with_tokenizer(&snap, &[]);
    let out = dir.path().join("res");
    let o = fairness_cmd(
        &snap,
        &out,
        &[
            "--groups",
            "gender,race",
            "--method",
            "vanilla,equitune,multi-equitune,r-equitune",
            "--samples-per-demographic",
            "10",
            "--contexts",
            "respect",
            "--run-name",
            "t",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("gpt2-fairness/t/seed-0.json")).unwrap(),
    )
    .unwrap();
    let m = &j["metrics"]["methods"];
    // 6 demographics (2 genders × 3 races), 10 samples each → 6·5·10 ordered pairs
    assert_eq!(m["equitune"]["pairs"], 300);
    assert_eq!(m["equitune"]["swap_consistency"], 1.0);
    assert_eq!(m["multi-equitune"]["swap_consistency"], 1.0);
    assert!(m["vanilla"]["swap_consistency"].as_f64().unwrap() < 1.0);
    assert_eq!(
        j["cost"]["methods"]["equitune"]["forward_passes_per_token"],
        6
    );
    assert_eq!(
        j["cost"]["methods"]["multi-equitune"]["forward_passes_per_token"],
        5
    );
    let samples = std::fs::read_to_string(out.join("gpt2-fairness/t/seed-0.samples.tsv")).unwrap();
    assert_eq!(samples.lines().count(), 1 + 4 * 6 * 10);
    assert!(
        samples
            .to_lowercase()
            .contains("the white woman was known for"),
        "{}",
        &samples[..300]
    );
}

#[test]
fn bad_fairness_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    snapshot_with_tokenizer(&snap, &["step", "father", "mother"]);
    let out = dir.path().join("res");
    let check = |o: std::process::Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
        assert!(!out.join("gpt2-fairness").exists());
    };
    check(
        fairness_cmd(&snap, &out, &["--groups", "gender,religion"]),
        "unknown demographic axis 'religion'",
    );
    let wl = dir.path().join("multi.toml");
    std::fs::write(&wl, "general = []\n[axes.gender]\nmembers = [\"man\", \"woman\"]\nsets = [[\" man\", \" woman\"], [\" step father\", \" step mother\"]]\n").unwrap();
    check(
        fairness_cmd(&snap, &out, &["--wordlists", wl.to_str().unwrap()]),
        "multi-token word",
    );
    let wl2 = dir.path().join("two.toml");
    std::fs::write(&wl2, "general = []\n[axes.gender]\nmembers = [\"man\", \"woman\"]\nsets = [[\" man\", \" woman\"]]\n[axes.orientation]\nmembers = [\"gay\", \"man\"]\nsets = [[\" gay\", \" man\"]]\n").unwrap();
    check(
        fairness_cmd(
            &snap,
            &out,
            &[
                "--wordlists",
                wl2.to_str().unwrap(),
                "--groups",
                "gender,orientation",
            ],
        ),
        "also in axis 'gender'",
    );
}

#[test]
fn generation_then_regard_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    snapshot_with_tokenizer(&snap, &[]);
    let out = dir.path().join("res");
    let bert = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert-tiny/m0");
    let scorer = format!("bert:{}", bert.display());
    let o = fairness_cmd(
        &snap,
        &out,
        &[
            "--groups",
            "gender,race",
            "--method",
            "vanilla,equitune",
            "--samples-per-demographic",
            "5",
            "--run-name",
            "t",
            "--score",
            "--scorer",
            &scorer,
            "--max-pieces",
            "32",
            "--bootstrap",
            "20",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("gpt2-fairness/t/seed-0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(j["config"]["regard"]["mask_demographic"], true);
    let r = &j["metrics"]["regard"]["metrics"];
    // 2 methods × 2 contexts × 6 demographics, 5 samples each
    let groups = r["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 24);
    assert!(groups.iter().all(|g| g["n"] == 5));
    // per axis: gender pools 3 demographics per member, race 2
    for a in r["axes"].as_array().unwrap() {
        let want = if a["axis"] == "gender" { 15 } else { 10 };
        assert!(a["n"].as_array().unwrap().iter().all(|n| *n == want), "{a}");
    }
    let labels = std::fs::read_to_string(out.join("gpt2-fairness/t/seed-0.labels.tsv")).unwrap();
    assert_eq!(labels.lines().count(), 1 + 2 * 2 * 6 * 5);
    assert!(
        labels
            .lines()
            .nth(1)
            .unwrap()
            .to_lowercase()
            .contains("\tthe "),
        "labels keep the unmasked text"
    );
    for p in j["metrics"]["regard"]["plots"].as_array().unwrap() {
        assert!(out
            .join("gpt2-fairness/t")
            .join(p.as_str().unwrap())
            .is_file());
    }
    assert_eq!(
        j["metrics"]["regard"]["plots"].as_array().unwrap().len(),
        8,
        "(gender, race) × 2 contexts × svg/png"
    );
}
