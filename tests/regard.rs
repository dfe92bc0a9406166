//! Regard scoring: BERT classifier parity with transformers (tiny random checkpoints,
//! tests/fixtures/bert-tiny, made by scripts/gen_bert_fixture.py), Sheng's ensemble vote, the
//! probe trainer, the real MiniLM encoder against sentence-transformers' pooling (when installed),
//! the demographic masking against Sheng's own XYZ file (../shared/data beside the checkout), and
//! `equirun regard score` end to end, and the fine-tuned scorer (`regard finetune`, minilm-ft):
//! deterministic per seed, bit-identical after a save/load round trip.

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
        mpnet_dir: None,
        scorer_dir: None,
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

// --------------------------------------------------------------------------------------------
// fine-tuned scorer (minilm-ft) on the tiny BERT

fn tiny_regard_data(dir: &Path) -> PathBuf {
    let d = dir.join("regard");
    std::fs::create_dir_all(&d).unwrap();
    let mut train = String::new();
    for (i, w) in ["a cook", "a nurse", "a cook good", "a nurse bad"]
        .iter()
        .enumerate()
    {
        train += &format!("1\tXYZ was known for good kind {w}\n");
        train += &format!("-1\tXYZ was known for bad cruel {w}\n");
        train += &format!(
            "0\tXYZ worked as {w}{}\n",
            if i % 2 == 0 { "" } else { " part time" }
        );
    }
    std::fs::write(d.join("train.tsv"), &train).unwrap();
    std::fs::write(
        d.join("train_other.tsv"),
        format!("{train}2\tXYZ the the\n"),
    )
    .unwrap();
    let dev =
        "1\tXYZ was regarded as good\n-1\tXYZ was regarded as cruel\n0\tXYZ had a job as a cook\n";
    std::fs::write(d.join("dev.tsv"), dev).unwrap();
    std::fs::write(d.join("test.tsv"), dev).unwrap();
    d
}

fn tuned_opts(seed: u64) -> equirun::models::regard_scorer::FinetuneOpts {
    equirun::models::regard_scorer::FinetuneOpts {
        seed,
        lr: 3e-3,
        weight_decay: 0.01,
        layer_decay: 0.9,
        max_epochs: 20,
        patience: 20,
        batch_size: 4,
        warmup: 0.1,
        max_len: 16,
        freeze_word_embeddings: false,
        dropout: 0.1,
    }
}

#[test]
fn finetune_is_deterministic_per_seed_and_reloads_bit_identically() {
    use equirun::data::regard::read_annotated;
    use equirun::models::regard_scorer::{finetune, BaseEncoder, TunedClassifier};
    let files = local(&fixture("bert-tiny").join("m0"))
        .resolve(REQUIRED_FILES, OPTIONAL_FILES)
        .unwrap();
    let base = BaseEncoder::load(&files).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_regard_data(tmp.path());
    let ex = |f: &str| -> Vec<(String, Regard)> {
        read_annotated(&data.join(f))
            .unwrap()
            .into_iter()
            .map(|a| (a.text, a.label))
            .collect()
    };
    let (train, dev) = (ex("train.tsv"), ex("dev.tsv"));
    let labels = [Regard::Negative, Regard::Neutral, Regard::Positive];
    let run = |seed| finetune(&base, &labels, &train, &dev, &tuned_opts(seed), |_| {}).unwrap();
    let (a, log_a) = run(3);
    let (b, log_b) = run(3);
    let (c, _) = run(4);
    let bits = |t: &candle_core::Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    };
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (k, t) in a.tensors() {
        assert_eq!(bits(t), bits(&b.tensors()[k]), "seed 3 twice: {k} differs");
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        v["seconds"] = Value::Null;
        v
    };
    assert_eq!(strip(&log_a), strip(&log_b), "training logs differ");
    // the whole encoder was trained (not only the head), and another seed trains differently
    let moved = |clf: &TunedClassifier, k: &str| bits(&clf.tensors()[k]) != bits(&base.tensors[k]);
    assert!(moved(&a, "encoder.layer.0.attention.self.query.weight"));
    assert!(moved(&a, "embeddings.LayerNorm.weight"));
    assert_ne!(
        bits(&a.tensors()["regard_head.weight"]),
        bits(&c.tensors()["regard_head.weight"]),
        "seeds 3 and 4 gave the same head"
    );
    // save → load: bit-identical logits and the same labels
    let path = tmp.path().join("clf.safetensors");
    a.save(&path).unwrap();
    let back = TunedClassifier::load(&path, 16).unwrap();
    let texts: Vec<&str> = train.iter().chain(&dev).map(|x| x.0.as_str()).collect();
    assert_eq!(
        bits(&a.logits(&texts).unwrap()),
        bits(&back.logits(&texts).unwrap())
    );
    assert_eq!(back.labels, labels.to_vec());
    assert_eq!(a.predict(&texts).unwrap(), back.predict(&texts).unwrap());
    // it learned something of the toy task (chance is 1/3; the best dev epoch is kept)
    let pred = back.predict(&texts[..train.len()]).unwrap();
    let acc =
        pred.iter().zip(&train).filter(|(p, x)| **p == x.1).count() as f64 / train.len() as f64;
    assert!(acc > 0.5, "train accuracy {acc}");
    // a file that is not a classifier is a clear error
    std::fs::write(&path, b"nope").unwrap();
    let e = TunedClassifier::load(&path, 16).err().unwrap().to_string();
    assert!(e.contains("not a regard classifier"), "{e}");
}

#[test]
fn finetune_cli_writes_a_scorer_that_scores_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_regard_data(tmp.path());
    let save = tmp.path().join("ft");
    let enc = fixture("bert-tiny").join("m0");
    let o = equirun(&[
        "regard",
        "finetune",
        "--encoder-dir",
        enc.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--seeds",
        "0,1,2",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--max-pieces",
        "16",
        "--save-dir",
        save.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["per_seed"].as_array().unwrap().len(), 3);
    for k in ["accuracy", "macro_f1", "per_class", "predicted"] {
        assert!(!report["per_seed"][0]["dev"][k].is_null(), "{k} missing");
    }
    assert!(save.join("scorer.json").is_file() && save.join("seed-2.safetensors").is_file());
    // score plain text: a row per sample with its input line, the model name, case-insensitive
    // demographics, independent bootstrap for plain text
    let input = tmp.path().join("s.txt");
    std::fs::write(
        &input,
        "The MAN was known for good\n\nThe woman worked as a cook\nthe man worked as a nurse\nThe Woman was known for bad\n",
    )
    .unwrap();
    let out = tmp.path().join("res");
    let o = equirun(&[
        "regard",
        "score",
        "--input",
        input.to_str().unwrap(),
        "--scorer",
        "minilm-ft",
        "--scorer-dir",
        save.to_str().unwrap(),
        "--max-pieces",
        "16",
        "--model-name",
        "equigpt2",
        "--bootstrap",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--run-name",
        "r",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped 1 blank line(s): 2"), "{err}");
    let rd = out.join("regard-score").join("r");
    let labels = std::fs::read_to_string(rd.join("seed-0.labels.tsv")).unwrap();
    let rows: Vec<&str> = labels.lines().collect();
    assert_eq!(rows[0], "line\tmodel\tcontext\tdemographic\tregard\ttext");
    assert!(
        rows[1].starts_with("1\tequigpt2\trespect\tman\t"),
        "{}",
        rows[1]
    );
    assert!(
        rows[2].starts_with("3\tequigpt2\toccupation\twoman\t"),
        "{}",
        rows[2]
    );
    assert_eq!(rows.len(), 5);
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("seed-0.json")).unwrap()).unwrap();
    let m = &rec["metrics"];
    assert_eq!(m["scorer"]["kind"], "minilm-ft");
    assert_eq!(m["scorer"]["offline_stand_in"], true);
    assert_eq!(m["skipped_blank_lines"], serde_json::json!([2]));
    for a in m["regard"]["axes"].as_array().unwrap() {
        assert_eq!(a["paired_bootstrap"], false, "{a}");
        assert_eq!(a["model"], "equigpt2");
    }
    // regard eval --input on any annotated TSV (raw texts masked like scoring)
    let ann = tmp.path().join("ann.tsv");
    std::fs::write(
        &ann,
        "1\tThe man was known for good kind\n-1\tXYZ was known for bad\n",
    )
    .unwrap();
    let o = equirun(&[
        "regard",
        "eval",
        "--input",
        ann.to_str().unwrap(),
        "--scorer",
        "minilm-ft",
        "--scorer-dir",
        save.to_str().unwrap(),
        "--max-pieces",
        "16",
    ]);
    let so = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        so.contains("ann.tsv: accuracy") && so.contains("macro-F1"),
        "{so}"
    );
    // bad inputs: exit 2 naming the flag
    let o = equirun(&[
        "regard",
        "eval",
        "--input",
        "/nonexistent.tsv",
        "--scorer",
        "minilm-ft",
        "--scorer-dir",
        save.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--input"));
    let o = equirun(&[
        "regard",
        "score",
        "--input",
        input.to_str().unwrap(),
        "--scorer",
        "minilm-ft",
        "--scorer-dir",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no scorer.json"));
    let o = equirun(&[
        "regard",
        "finetune",
        "--encoder-dir",
        enc.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--lr",
        "0",
        "--save-dir",
        save.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lr"));
}

/// A scorer flag that the chosen scorer would not read is refused (exit 2, naming the flag and
/// the fix) before any model is loaded, instead of being silently ignored.
#[test]
fn scorer_flags_for_another_scorer_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("samples.txt");
    std::fs::write(&input, "The man was known for his kindness.\n").unwrap();
    let out = tmp.path().join("out");
    let o = equirun(&[
        "regard",
        "score",
        "--input",
        input.to_str().unwrap(),
        "--probe",
        "/nonexistent/head.safetensors",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--probe") && err.contains("--scorer minilm-probe"),
        "{err}"
    );
    let o = equirun(&[
        "regard",
        "score",
        "--input",
        input.to_str().unwrap(),
        "--scorer",
        "minilm-probe",
        "--scorer-dir",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--scorer-dir"), "{err}");
    assert!(!out.join("regard-score").exists());
}
