//! Fairness: equivariance of every LM wrapper for every element of gender × race(3) ×
//! orientation on a tiny random GPT-2, swap consistency of generation, and clear errors.

use candle_core::{Device, Tensor};
use equirun::equi::Method;
use equirun::equi::{Symmetry, TokenSymmetry};
use equirun::experiments::fairness::{method_logits, method_logits_with, Direction};
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
            noun: None,
            order: None,
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

fn tiny_lm(dir: &Path) -> equirun::models::lm::gpt2::Gpt2Lm {
    equirun::models::lm::gpt2::write_tiny_snapshot(dir, 4).unwrap();
    let files = ModelSource {
        model: String::new(),
        revision: "main".into(),
        model_dir: Some(dir.to_path_buf()),
    }
    .resolve(&["config.json", "model.safetensors"], &[])
    .unwrap();
    equirun::models::lm::gpt2::load_gpt2(&files, &Device::Cpu).unwrap()
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
    equirun::models::lm::gpt2::write_tiny_snapshot(dir, 9).unwrap();
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

/// Max |a − b| over the tokens in `only` (all rows).
fn max_abs_on(a: &Tensor, b: &Tensor, only: &[u32]) -> f32 {
    let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    let mut m = 0f32;
    for (ra, rb) in a.iter().zip(&b) {
        for &w in only {
            m = m.max((ra[w as usize] - rb[w as usize]).abs());
        }
    }
    m
}

#[test]
fn official_inverse_direction_differs_exactly_on_three_member_axes() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny_lm(dir.path());
    let x = Tensor::new(
        &[[1u32, 5, 10, 20, 40, 30, 7], [2, 6, 12, 21, 31, 50, 11]],
        &Device::Cpu,
    )
    .unwrap();
    let inc = Incremental::new(&mut lm);
    let race: Vec<u32> = vec![10, 11, 12];
    for names in [
        vec!["gender"],
        vec!["race"],
        vec!["gender", "race", "orientation"],
    ] {
        let (group, fg) = groups(&names);
        let sym = TokenSymmetry::new(group.clone(), false, None).with_collapse(fg.collapse_maps(V));
        let others: Vec<u32> = (0..V as u32).filter(|w| !race.contains(w)).collect();
        for m in [Method::Equitune, Method::REquitune, Method::MultiEquitune] {
            let def = method_logits(m, &sym, &fg.general_ids, &inc, &x).unwrap();
            let off = method_logits_with(
                m,
                &sym,
                &fg.general_ids,
                Direction::OfficialInverse,
                &inc,
                &x,
            )
            .unwrap();
            // identical (bit for bit) on every token outside the 3-member axis
            assert_eq!(
                max_abs_on(&def, &off, &others),
                0.0,
                "{names:?} {}",
                m.name()
            );
            let on_race = max_abs_on(&def, &off, &race);
            if names.contains(&"race") {
                assert!(on_race > 1e-3, "{names:?} {}: {on_race}", m.name());
                // and it is not swap-consistent: for the race generator, l(g·x) ≠ g·l(x) there
                let g = (0..group.order())
                    .find(|&g| group.element(g).input[10] == 11)
                    .unwrap();
                let gx = sym.act_input(g, &x).unwrap();
                let off_gx = method_logits_with(
                    m,
                    &sym,
                    &fg.general_ids,
                    Direction::OfficialInverse,
                    &inc,
                    &gx,
                )
                .unwrap();
                let expected = sym.act_output(g, &off).unwrap();
                assert!(max_abs_on(&off_gx, &expected, &race) > 1e-3);
                // while tokens outside the 3-member axis (and general words) stay equivariant
                let skip: Vec<u32> = race.iter().chain(&fg.general_ids).copied().collect();
                assert!(max_abs_masked(&off_gx, &expected, &skip) <= 1e-4);
            } else {
                assert_eq!(
                    on_race, 0.0,
                    "{names:?}: 2-member axes: the directions coincide"
                );
            }
        }
    }
}

#[test]
fn official_relaxed_mask_takes_identity_copy_for_equality_words() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny_lm(dir.path());
    let x = Tensor::new(&[[1u32, 5, 10, 20, 40, 30, 7]], &Device::Cpu).unwrap();
    let inc = Incremental::new(&mut lm);
    let (group, fg) = groups(&["gender", "race"]);
    let sym = TokenSymmetry::new(group, false, None).with_collapse(fg.collapse_maps(V));
    let equality: Vec<u32> = fg
        .axes
        .iter()
        .flat_map(|a| a.ids.iter().flatten().copied())
        .collect();
    let mut identity = fg.general_ids.clone();
    identity.extend(&equality);
    let official = method_logits_with(
        Method::REquitune,
        &sym,
        &identity,
        Direction::Equivariant,
        &inc,
        &x,
    )
    .unwrap();
    let default = method_logits(Method::REquitune, &sym, &fg.general_ids, &inc, &x).unwrap();
    let vanilla = method_logits(Method::Vanilla, &sym, &fg.general_ids, &inc, &x).unwrap();
    let equitune = method_logits(Method::Equitune, &sym, &fg.general_ids, &inc, &x).unwrap();
    let neutral: Vec<u32> = (0..V as u32).filter(|w| !identity.contains(w)).collect();
    // equality and general words: the identity copy; neutral words: equitune (= the default)
    // (vanilla and equitune alone run other forward batches: rounding only)
    assert!(max_abs_on(&official, &vanilla, &identity) < 1e-5);
    assert!(max_abs_on(&official, &equitune, &neutral) < 1e-5);
    assert_eq!(max_abs_on(&official, &default, &neutral), 0.0);
    assert_eq!(max_abs_on(&official, &default, &fg.general_ids), 0.0);
    assert!(max_abs_on(&official, &default, &equality) > 1e-3);
}

fn read_samples(p: &Path) -> Vec<serde_json::Value> {
    let (h, rows) = equirun::experiments::predictions::read_jsonl_gz(p).unwrap();
    assert_eq!(h["schema"], "equirun-samples");
    rows
}

#[test]
fn samples_carry_token_ids_that_round_trip_and_first_logits() {
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
            "vanilla,equitune",
            "--samples-per-demographic",
            "5",
            "--contexts",
            "respect",
            "--top-k",
            "7",
            "--save-logits",
            "first",
            "--run-name",
            "t",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tok = tokenizers::Tokenizer::from_file(snap.join("tokenizer.json")).unwrap();
    let rows = read_samples(&out.join("gpt2-fairness/t/seed-0.samples.jsonl.gz"));
    assert_eq!(rows.len(), 2 * 6 * 5);
    let tsv = std::fs::read_to_string(out.join("gpt2-fairness/t/seed-0.samples.tsv")).unwrap();
    let texts: Vec<&str> = tsv
        .lines()
        .skip(1)
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    for (r, tsv_text) in rows.iter().zip(&texts) {
        let ids = |k: &str| -> Vec<u32> {
            r[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, cont) = (ids("prompt_ids"), ids("continuation_ids"));
        let text = r["text"].as_str().unwrap();
        assert_eq!(text, *tsv_text);
        // the prompt re-encodes to its ids; prompt + continuation decode to the saved text
        let prompt_text = tok.decode(&prompt, false).unwrap();
        assert_eq!(
            tok.encode(prompt_text.as_str(), false).unwrap().get_ids(),
            prompt.as_slice()
        );
        let all: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let decoded = tok.decode(&all, false).unwrap();
        assert_eq!(decoded.lines().next().unwrap_or(""), text);
        assert!(text.starts_with(&prompt_text));
        let f = &r["first_logits"];
        assert_eq!(f["top_ids"].as_array().unwrap().len(), 7);
        let top: Vec<f64> = f["top_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(top.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(top[0], f["max"].as_f64().unwrap());
        assert!(f["logsumexp"].as_f64().unwrap() >= top[0]);
        // the first sampled token is one of the top-k
        if let Some(&t0) = cont.first() {
            assert!(f["top_ids"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(t0)));
        }
    }
    // JSON config unchanged by --save-logits? it is recorded only in the samples file
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("gpt2-fairness/t/seed-0.json")).unwrap(),
    )
    .unwrap();
    assert!(j["config"].get("official_quirks").is_none());
    assert!(j["config"].get("prompt_template").is_none());
}

#[test]
fn prompt_template_noun_axes_and_switch_errors() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    snapshot_with_tokenizer(&snap, &["A", "Q", ":"]);
    let out = dir.path().join("res");
    // an axis not named gender provides the noun; race words come before it
    let wl = dir.path().join("noun.toml");
    std::fs::write(&wl, "general = []\n[axes.person]\nmembers = [\"man\", \"woman\"]\nsets = [[\" man\", \" woman\"]]\nnoun = true\n[axes.race]\nmembers = [\"Black\", \"White\", \"Asian\"]\nsets = [[\" Black\", \" White\", \" Asian\"]]\n").unwrap();
    let o = fairness_cmd(
        &snap,
        &out,
        &[
            "--wordlists",
            wl.to_str().unwrap(),
            "--groups",
            "person,race",
            "--method",
            "equitune",
            "--samples-per-demographic",
            "5",
            "--contexts",
            "respect",
            "--prompt-template",
            "Q: A {demographic} {context}",
            "--official-inverse-direction",
            "--run-name",
            "t",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("gpt2-fairness/t/seed-0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(j["config"]["demographics"][0], "Black man");
    assert_eq!(
        j["config"]["prompt_template"],
        "Q: A {demographic} {context}"
    );
    assert_eq!(j["config"]["official_quirks"].as_array().unwrap().len(), 1);
    // the 3-member axis with the official direction: not swap-consistent
    assert!(
        j["metrics"]["methods"]["equitune"]["swap_consistency"]
            .as_f64()
            .unwrap()
            < 1.0
    );
    let rows = read_samples(&out.join("gpt2-fairness/t/seed-0.samples.jsonl.gz"));
    let first = rows[0]["text"].as_str().unwrap().to_lowercase();
    assert!(
        first.starts_with("q : a black man was known for")
            || first.starts_with("q: a black man was known for"),
        "{first}"
    );

    let check = |extra: &[&str], needle: &str| {
        let bad = dir.path().join("bad");
        let o = fairness_cmd(&snap, &bad, extra);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
        assert!(!bad.exists());
    };
    check(
        &["--prompt-template", "The {demographic}"],
        "--prompt-template",
    );
    check(
        &["--prompt-template", "{demographic} {context} {x}"],
        "--prompt-template",
    );
    check(
        &["--method", "vanilla,equitune", "--official-relaxed-mask"],
        "--official-relaxed-mask",
    );
    check(
        &["--method", "vanilla", "--official-inverse-direction"],
        "--official-inverse-direction",
    );
    // a word listed twice inside one axis: the error names the axis and the word
    let dup = dir.path().join("dup.toml");
    std::fs::write(&dup, "general = []\n[axes.gender]\nmembers = [\"man\", \"woman\"]\nsets = [[\" man\", \" woman\"], [\" woman\", \" man\"]]\n").unwrap();
    check(
        &["--wordlists", dup.to_str().unwrap()],
        "axis 'gender': word \" woman\" (token",
    );
    // two noun axes
    let two = dir.path().join("two.toml");
    std::fs::write(&two, "general = []\n[axes.gender]\nmembers = [\"man\", \"woman\"]\nsets = [[\" man\", \" woman\"]]\n[axes.who]\nmembers = [\"Black\", \"White\"]\nsets = [[\" Black\", \" White\"]]\nnoun = true\n").unwrap();
    check(
        &[
            "--wordlists",
            two.to_str().unwrap(),
            "--groups",
            "gender,who",
        ],
        "noun = false",
    );
}
