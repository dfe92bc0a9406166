//! Regard scoring: BERT classifier parity with transformers (tiny random checkpoints,
//! tests/fixtures/bert-tiny, made by scripts/gen_bert_fixture.py), Sheng's ensemble vote, the
//! probe trainer, the real MiniLM encoder against sentence-transformers' pooling (when installed),
//! the demographic masking against Sheng's own XYZ file (../shared/data beside the checkout), and
//! `equirun regard score` end to end.

use equirun::data::regard::{mask_demographic, read_samples, Regard};
use equirun::experiments::regard::{classify_all, load_scorer, MiniLm, ScorerOpts};
use equirun::hub::ModelSource;
use equirun::models::bert::{BertClassifier, OPTIONAL_FILES, REQUIRED_FILES};
use equirun::models::probe::{LinearProbe, ProbeTrain};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn reference(dir: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("reference.json")).unwrap())
        .unwrap()
}

fn local(dir: &Path) -> ModelSource {
    ModelSource {
        model: String::new(),
        revision: "main".into(),
        model_dir: Some(dir.to_path_buf()),
    }
}

fn opts(scorer: &str) -> ScorerOpts {
    ScorerOpts {
        scorer: scorer.into(),
        scorer_revision: "main".into(),
        probe: None,
        minilm_dir: None,
        max_pieces: 16,
        no_mask: true,
        scorer_batch_size: 3,
        regard_data: None,
    }
}

#[test]
fn bert_classifier_matches_transformers() {
    let r = reference("bert-tiny");
    let texts: Vec<&str> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for (k, m) in r["models"].as_array().unwrap().iter().enumerate() {
        let dir = fixture("bert-tiny").join(m["dir"].as_str().unwrap());
        let files = local(&dir).resolve(REQUIRED_FILES, OPTIONAL_FILES).unwrap();
        let clf = BertClassifier::load(&files, 16, &candle_core::Device::Cpu).unwrap();
        if k == 0 {
            // WordPiece rebuilt from vocab.txt == transformers' BertTokenizer, truncation included
            for (t, ids) in texts.iter().zip(r["input_ids"].as_array().unwrap()) {
                let want: Vec<u32> = ids
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect();
                assert_eq!(
                    clf.encoder.token_ids(t).unwrap(),
                    want,
                    "token ids of {t:?}"
                );
            }
        }
        let got = clf.logits(&texts).unwrap().to_vec2::<f32>().unwrap();
        let mut worst = 0f32;
        for (g, w) in got.iter().zip(m["logits"].as_array().unwrap()) {
            for (a, b) in g.iter().zip(w.as_array().unwrap()) {
                worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
            }
        }
        eprintln!("model m{k}: max |logit diff| vs transformers = {worst:.2e}");
        assert!(worst <= 1e-4, "model m{k}: logits differ by {worst}");
        // one row at a time (no padding) gives the same logits
        let single = clf.logits(&texts[6..7]).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in single[0].iter().zip(&got[6]) {
            assert!((a - b).abs() <= 1e-5);
        }
    }
}

#[test]
fn ensemble_votes_like_sheng() {
    let r = reference("bert-tiny");
    let d = fixture("bert-tiny");
    let texts: Vec<String> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let want = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let names =
        |v: Vec<Regard>| -> Vec<String> { v.iter().map(|x| x.name().to_string()).collect() };
    // each member alone (m2's id2label is permuted and named)
    for k in 0..3 {
        let s = load_scorer(
            &opts(&format!("bert:{}", d.join(format!("m{k}")).display())),
            None,
        )
        .unwrap();
        let got = classify_all(s.as_ref(), &texts, 3, "t").unwrap();
        assert_eq!(names(got), want(&r["per_model_regard"][k]), "member m{k}");
    }
    let spec = format!(
        "bert:{},{},{}",
        d.join("m0").display(),
        d.join("m1").display(),
        d.join("m2").display()
    );
    let s = load_scorer(&opts(&spec), None).unwrap();
    let got = classify_all(s.as_ref(), &texts, 3, "t").unwrap();
    assert_eq!(names(got), want(&r["ensemble"]));
    // the fixture contains a 1-1-1 split, resolved to negative
    assert!(
        (0..texts.len()).any(|j| {
            let v: Vec<&str> = (0..3)
                .map(|k| r["per_model_regard"][k][j].as_str().unwrap())
                .collect();
            v[0] != v[1] && v[1] != v[2] && v[0] != v[2] && r["ensemble"][j] == "negative"
        }),
        "fixture lacks a three-way tie"
    );
}

#[test]
fn probe_trainer_separates_and_round_trips() {
    // 4 Gaussian clusters in 16 dimensions, 40 points each
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let centers: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..16).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let (mut xs, mut ys) = (vec![], vec![]);
    for i in 0..160 {
        let c = i % 4;
        xs.push(
            centers[c]
                .iter()
                .map(|v| v + rng.random_range(-0.3f32..0.3))
                .collect::<Vec<f32>>(),
        );
        ys.push(c);
    }
    let h = LinearProbe::train(
        &xs,
        &ys,
        4,
        &ProbeTrain {
            l2: 1e-3,
            iterations: 300,
        },
    )
    .unwrap();
    let acc = xs
        .iter()
        .zip(&ys)
        .filter(|(x, y)| h.predict(x) == **y)
        .count() as f64
        / 160.0;
    assert!(acc >= 0.9, "training accuracy {acc}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("head.safetensors");
    let mut h = h;
    h.metadata.insert("note".into(), "test".into());
    h.save(&p).unwrap();
    let back = LinearProbe::load(&p).unwrap();
    assert_eq!(back, h, "head round trip");
    for x in &xs {
        let (a, b) = (h.logits(x), back.logits(x));
        assert!(a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits()));
    }
    // a non-head file is a clear error
    std::fs::write(&p, b"not safetensors").unwrap();
    let e = LinearProbe::load(&p).unwrap_err().to_string();
    assert!(e.contains("not a probe head"), "{e}");
}

#[test]
#[ignore = "needs the MiniLM encoder (scripts/setup_minilm.sh); .ci/run runs it when installed"]
fn minilm_matches_sentence_transformers() {
    let m = MiniLm::load(None, 128, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e} (install it with scripts/setup_minilm.sh)"));
    let r = reference("minilm");
    let texts: Vec<&str> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for (t, ids) in texts.iter().zip(r["input_ids"].as_array().unwrap()) {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(m.encoder.token_ids(t).unwrap(), want, "{t:?}");
    }
    let got = m.embed(&texts).unwrap();
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(r["embeddings"].as_array().unwrap()) {
        for (a, b) in g.iter().zip(w.as_array().unwrap()) {
            worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
        }
    }
    eprintln!("MiniLM embeddings: max |diff| vs transformers = {worst:.2e}");
    assert!(worst <= 1e-4, "{worst}");
}

fn shared_samples() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/nlg-bias/data/generated_samples/small_gpt2_generated_samples.tsv");
    p.is_file().then_some(p)
}

#[test]
fn sheng_samples_parse_and_mask_exactly_as_sheng() {
    let p = shared_samples().expect(
        "../shared/data/nlg-bias beside the checkout (Sheng et al.'s samples) is part of the test data",
    );
    let samples = read_samples(&p).unwrap();
    assert_eq!(samples.len(), 6000);
    for d in [
        "Black person",
        "White person",
        "man",
        "woman",
        "gay person",
        "straight person",
    ] {
        for c in ["respect", "occupation"] {
            let n = samples
                .iter()
                .filter(|s| s.demographic == d && s.context == c)
                .count();
            assert_eq!(n, 500, "{d} / {c}");
        }
    }
    let xyz = std::fs::read_to_string(p.with_extension("tsv.XYZ")).unwrap();
    let xyz: Vec<&str> = xyz.lines().collect();
    assert_eq!(xyz.len(), 6000);
    let same = samples
        .iter()
        .zip(&xyz)
        .filter(|(s, x)| mask_demographic(&s.text, &s.demographic) == **x)
        .count();
    assert_eq!(same, 6000, "masked lines equal to Sheng's .XYZ file");
}

// ---------------------------------------------------------------------------------------------
// CLI

fn equirun(args: &[&str]) -> Output {
    equirun::testing::run_equirun(env!("CARGO_BIN_EXE_equirun"), args)
}

fn write_samples(path: &Path, n_per: usize) {
    let mut s = String::new();
    let conts = [
        "being very kind.",
        "being a thief and a criminal.",
        "a cook.",
        "a nurse.",
    ];
    for (i, d) in ["man", "woman", "Black person", "White person"]
        .iter()
        .enumerate()
    {
        for j in 0..n_per {
            s += &format!("The {d} was known for {}\n", conts[(i + j) % 4]);
            s += &format!("The {d} worked as {}\n", conts[(i * 3 + j) % 4]);
        }
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn regard_score_cli_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("samples.txt");
    write_samples(&input, 5);
    let d = fixture("bert-tiny");
    let scorer = format!(
        "bert:{},{},{}",
        d.join("m0").display(),
        d.join("m1").display(),
        d.join("m2").display()
    );
    let out = dir.path().join("results");
    let args = |out: &Path, extra: &[&str]| {
        let mut v: Vec<String> = [
            "regard",
            "score",
            "--input",
            input.to_str().unwrap(),
            "--scorer",
            &scorer,
            "--out",
            out.to_str().unwrap(),
            "--seeds",
            "0,1",
            "--bootstrap",
            "50",
            "--max-pieces",
            "16",
            "--run-name",
            "t",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>| equirun(&v.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let o = run(args(&out, &[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rd = out.join("regard-score/t");
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("seed-0.json")).unwrap()).unwrap();
    assert_eq!(j["experiment"], "regard-score");
    assert_eq!(j["config"]["samples"], 40);
    assert_eq!(j["config"]["mask_demographic"], true);
    let groups = j["metrics"]["regard"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 8, "4 demographics × 2 contexts");
    for g in groups {
        assert_eq!(g["n"], 5);
        let c: u64 = g["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum();
        assert_eq!(c, 5);
        let f = &g["fractions"];
        let s: f64 = ["negative", "neutral", "positive", "other"]
            .iter()
            .map(|k| f[k].as_f64().unwrap())
            .sum();
        assert!((s - 1.0).abs() < 1e-12);
    }
    let axes = j["metrics"]["regard"]["axes"].as_array().unwrap();
    assert_eq!(axes.len(), 4, "(gender, race) × 2 contexts");
    let labels = std::fs::read_to_string(rd.join("seed-0.labels.tsv")).unwrap();
    assert_eq!(labels.lines().count(), 41);
    for f in ["regard-gender-respect", "regard-race-occupation"] {
        for ext in ["svg", "png"] {
            let p = rd.join(format!("seed-0.{f}.{ext}"));
            assert!(
                std::fs::metadata(&p)
                    .map(|m| m.len() > 1000)
                    .unwrap_or(false),
                "{}",
                p.display()
            );
        }
    }
    // different seeds: different bootstrap draws, same point estimates
    let j1: Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("seed-1.json")).unwrap()).unwrap();
    assert_eq!(
        j1["metrics"]["regard"]["groups"][0]["fractions"],
        groups[0]["fractions"]
    );
    // same config → skipped; a fresh run elsewhere gives identical metrics
    let o = run(args(&out, &[]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("skip:"));
    let out2 = dir.path().join("results2");
    assert!(run(args(&out2, &[])).status.success());
    let j2: Value = serde_json::from_str(
        &std::fs::read_to_string(out2.join("regard-score/t/seed-0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(j2["metrics"], j["metrics"]);
    // no temp files left
    let leftovers: Vec<_> = std::fs::read_dir(&rd)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn regard_bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let d = fixture("bert-tiny").join("m0");
    let scorer = format!("bert:{}", d.display());
    let score = |input: &Path, scorer: &str| {
        equirun(&[
            "regard",
            "score",
            "--input",
            input.to_str().unwrap(),
            "--scorer",
            scorer,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let check = |o: Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    };
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    check(score(&empty, &scorer), "no samples to score (empty input)");
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "The man worked as a cook.\nsomething else entirely\n").unwrap();
    check(score(&bad, &scorer), "bad.txt:2:");
    let tsv = dir.path().join("s.tsv");
    std::fs::write(
        &tsv,
        "method\tcontext\tdemographic\ttemplate\tseed\tsample\ttext\nvanilla\trespect\tman\tx\t0\n",
    )
    .unwrap();
    check(score(&tsv, &scorer), "s.tsv:2: malformed line");
    let unknown = dir.path().join("u.txt");
    std::fs::write(&unknown, "The tall person worked as a cook.\n").unwrap();
    check(
        score(&unknown, &scorer),
        "\"tall\" is not a member of any axis",
    );
    let ok = dir.path().join("ok.txt");
    std::fs::write(&ok, "The man worked as a cook.\n").unwrap();
    check(score(&ok, "sentiment"), "unknown --scorer");
    check(
        score(&ok, "bert:/nonexistent/model"),
        "regard classifier folder /nonexistent/model does not exist",
    );
    // annotations with an unknown label / malformed line, through `regard train`
    let data = dir.path().join("regard");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("train_other.tsv"),
        "1\tXYZ was nice.\n7\tXYZ was odd.\n",
    )
    .unwrap();
    std::fs::write(data.join("dev.tsv"), "1\tXYZ was nice.\n").unwrap();
    std::fs::write(data.join("test.tsv"), "1\tXYZ was nice.\n").unwrap();
    let m = equirun(&[
        "regard",
        "train",
        "--data-dir",
        data.to_str().unwrap(),
        "--minilm-dir",
        "/nonexistent",
        "--out",
        out.to_str().unwrap(),
    ]);
    check(m, "MiniLM folder /nonexistent does not exist");
    assert!(
        !out.join("regard-score").exists(),
        "no result written on errors"
    );
}
