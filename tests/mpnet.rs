//! MPNet parity with transformers' `MPNetModel`: a tiny random checkpoint
//! (tests/fixtures/mpnet-tiny, scripts/gen_mpnet_fixture.py --tiny) and, when installed, the real
//! all-mpnet-base-v2 (tests/fixtures/mpnet, --real).

use candle_core::Device;
use equirun::models::mpnet::{relative_position_bucket, MpnetEncoder};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference(name: &str) -> Value {
    let p = fixture(name).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        x => vec![x.as_f64().unwrap() as f32],
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn relative_position_buckets_match_transformers() {
    let r = reference("mpnet-tiny");
    let from = r["buckets"]["relative_positions_from"].as_i64().unwrap();
    let want = ids(&r["buckets"]["bucket"]);
    for (i, w) in want.iter().enumerate() {
        let rel = from + i as i64;
        assert_eq!(relative_position_bucket(rel), *w as usize, "relative {rel}");
    }
}

#[test]
fn tiny_mpnet_matches_transformers_padded_batch() {
    let r = reference("mpnet-tiny");
    let max_len = r["max_len"].as_u64().unwrap() as usize;
    let enc = MpnetEncoder::load(&fixture("mpnet-tiny"), max_len, &Device::Cpu).unwrap();
    let texts = strings(&r["texts"]);
    for (t, want) in texts.iter().zip(r["input_ids"].as_array().unwrap()) {
        assert_eq!(enc.token_ids(t).unwrap(), ids(want), "{t:?}");
    }
    // the whole padded batch: every position, padded ones included
    let batch = enc.batch(&texts).unwrap();
    assert_eq!(
        batch.ids.dims()[1],
        r["padded_len"].as_u64().unwrap() as usize
    );
    let h = enc.hidden(&batch).unwrap();
    let got: Vec<f32> = h.flatten_all().unwrap().to_vec1().unwrap();
    let d = max_diff(&got, &floats(&r["hidden"]));
    eprintln!("tiny MPNet hidden states: max |diff| = {d:.2e}");
    assert!(d <= 1e-4, "{d}");
    let pooled: Vec<f32> = enc
        .mean_pooled(&texts)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let d = max_diff(&pooled, &floats(&r["pooled"]));
    assert!(d <= 1e-4, "{d}");
    // one text alone (no padding) gives the batch's pooled vector
    for (i, t) in texts.iter().enumerate() {
        let one: Vec<f32> = enc
            .mean_pooled(&[t])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = &floats(&r["pooled"][i]);
        assert!(max_diff(&one, want) <= 1e-4, "{t:?}");
    }
}

#[test]
fn mpnet_rejects_bad_inputs_clearly() {
    let e = MpnetEncoder::load(&fixture("bert-tiny/m0"), 16, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tokenizer.json") || e.contains("mpnet"), "{e}");
    let e = MpnetEncoder::load(&fixture("mpnet-tiny"), 39, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--max-pieces"), "{e}");
    let e = MpnetEncoder::load(&fixture("no-such-folder"), 16, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("setup_mpnet.sh"), "{e}");
}

#[test]
#[ignore = "needs all-mpnet-base-v2 (scripts/setup_mpnet.sh)"]
fn all_mpnet_base_v2_matches_transformers() {
    let dir = equirun::experiments::regard::find_mpnet(None)
        .unwrap_or_else(|e| panic!("{e} (install it with scripts/setup_mpnet.sh)"));
    let r = reference("mpnet");
    let enc = MpnetEncoder::load(&dir, 128, &Device::Cpu).unwrap();
    let texts = strings(&r["texts"]);
    for (t, want) in texts.iter().zip(r["input_ids"].as_array().unwrap()) {
        assert_eq!(enc.token_ids(t).unwrap(), ids(want), "{t:?}");
    }
    let got: Vec<f32> = enc
        .mean_pooled(&texts)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let d = max_diff(&got, &floats(&r["pooled"]));
    eprintln!("all-mpnet-base-v2 pooled embeddings: max |diff| vs transformers = {d:.2e}");
    assert!(d <= 1e-4, "{d}");
}

/// A toy regard data folder (train/train_other/dev/test .tsv) in the tiny tokenizer's words.
fn toy_regard_data(dir: &Path) -> PathBuf {
    let d = dir.join("regard");
    std::fs::create_dir_all(&d).unwrap();
    let mut train = String::new();
    for (i, w) in ["a cook", "a nurse", "a good cook", "a bad nurse"]
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

fn toy_opts(seed: u64) -> equirun::models::regard_scorer::FinetuneOpts {
    equirun::models::regard_scorer::FinetuneOpts {
        seed,
        lr: 3e-3,
        weight_decay: 0.01,
        layer_decay: 0.9,
        max_epochs: 12,
        patience: 12,
        batch_size: 4,
        warmup: 0.1,
        max_len: 16,
        freeze_word_embeddings: true,
        dropout: 0.1,
    }
}

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn mpnet_top_layer_finetune_is_deterministic_and_reloads_bit_identically() {
    use equirun::data::regard::{read_annotated, Regard};
    use equirun::models::regard_scorer::{finetune_mpnet, MpnetBase, MpnetStack, MpnetTuned};
    use std::sync::Arc;
    let base = Arc::new(MpnetBase::load(&fixture("mpnet-tiny"), 16).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_regard_data(tmp.path());
    let ex = |f: &str| -> Vec<(String, Regard)> {
        read_annotated(&data.join(f))
            .unwrap()
            .into_iter()
            .map(|a| (a.text, a.label))
            .collect()
    };
    let (train, dev) = (ex("train.tsv"), ex("dev.tsv"));
    let labels = [Regard::Negative, Regard::Neutral, Regard::Positive];
    let run =
        |seed| finetune_mpnet(&base, 1, &labels, &train, &dev, &toy_opts(seed), |_| {}).unwrap();
    let (a, log_a) = run(3);
    let (b, log_b) = run(3);
    let (c, _) = run(4);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (k, t) in &a.tensors {
        assert_eq!(bits(t), bits(&b.tensors[k]), "seed 3 twice: {k} differs");
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        v["seconds"] = Value::Null;
        v
    };
    assert_eq!(strip(&log_a), strip(&log_b), "training logs differ");
    // only the top layer and the head are stored, and the top layer was trained
    assert_eq!(a.first_tuned, 1);
    assert!(
        a.tensors
            .keys()
            .all(|k| k.starts_with("encoder.layer.1.") || k.starts_with("regard_head.")),
        "{:?}",
        a.tensors.keys()
    );
    let k = "encoder.layer.1.attention.attn.q.weight";
    assert_ne!(bits(&a.tensors[k]), bits(&base.encoder.model.tensors[k]));
    assert_ne!(
        bits(&a.tensors["regard_head.weight"]),
        bits(&c.tensors["regard_head.weight"]),
        "seeds 3 and 4 gave the same head"
    );
    // save → load: bit-identical logits
    let path = tmp.path().join("clf.safetensors");
    a.save(&path).unwrap();
    let back = MpnetTuned::load(&path).unwrap();
    assert_eq!(back.labels, labels.to_vec());
    let texts: Vec<&str> = train.iter().chain(&dev).map(|x| x.0.as_str()).collect();
    let mem = MpnetStack::new(base.clone(), vec![a]).unwrap();
    let disk = MpnetStack::new(base.clone(), vec![back]).unwrap();
    assert_eq!(
        bits(&mem.logits(&texts).unwrap()[0]),
        bits(&disk.logits(&texts).unwrap()[0])
    );
    // it learned the toy task (chance is 1/3)
    let pred = disk
        .predict_members(&texts[..train.len()])
        .unwrap()
        .remove(0);
    let acc =
        pred.iter().zip(&train).filter(|(p, x)| **p == x.1).count() as f64 / train.len() as f64;
    assert!(acc > 0.5, "train accuracy {acc}");
    // a classifier of another base is refused; a non-classifier file is a clear error
    let mut other = MpnetTuned::load(&path).unwrap();
    other.set_metadata("base_fingerprint", "0".repeat(64));
    let e = MpnetStack::new(base.clone(), vec![other])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("different base encoder"), "{e}");
    std::fs::write(&path, b"nope").unwrap();
    let e = MpnetTuned::load(&path).err().unwrap().to_string();
    assert!(e.contains("not an MPNet regard classifier"), "{e}");
}

fn equirun(args: &[&str]) -> std::process::Output {
    equirun::testing::run_equirun(env!("CARGO_BIN_EXE_equirun"), args)
}

#[test]
fn mpnet_ft_cli_trains_evaluates_and_reports_a_missing_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = toy_regard_data(tmp.path());
    let enc = fixture("mpnet-tiny");
    let save = tmp.path().join("mpnet-ft");
    let (d, e, s) = (
        data.parent().unwrap().to_str().unwrap(),
        enc.to_str().unwrap(),
        save.to_str().unwrap(),
    );
    let o = equirun(&[
        "regard",
        "finetune",
        "--encoder",
        "mpnet",
        "--encoder-dir",
        e,
        "--data-dir",
        d,
        "--save-dir",
        s,
        "--seeds",
        "0,1",
        "--top-layers",
        "1",
        "--epochs",
        "2",
        "--max-pieces",
        "16",
        "--lr",
        "3e-3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "scorer.json",
        "report.json",
        "seed-0.safetensors",
        "seed-1.safetensors",
    ] {
        assert!(save.join(f).is_file(), "{f}");
    }
    let o = equirun(&[
        "regard",
        "eval",
        "--scorer",
        "mpnet-ft",
        "--scorer-dir",
        s,
        "--mpnet-dir",
        e,
        "--max-pieces",
        "16",
        "--data-dir",
        d,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // a vote of scorers: two copies of the same probe vote like the probe alone
    let acc = |scorer: &str| {
        let o = equirun(&[
            "regard",
            "eval",
            "--scorer",
            scorer,
            "--mpnet-dir",
            e,
            "--max-pieces",
            "16",
            "--data-dir",
            d,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        out.lines()
            .filter(|l| l.contains("accuracy"))
            .map(|l| l.split("per class").next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let one = acc("mpnet-probe");
    assert!(!one.is_empty());
    assert_eq!(acc("mpnet-probe+mpnet-probe"), one);
    let o = equirun(&[
        "regard",
        "eval",
        "--scorer",
        "mpnet-ft+mpnet-probe",
        "--scorer-dir",
        s,
        "--data-dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--scorer-dir"));
    // flags that do not apply are refused, not ignored
    let o = equirun(&["regard", "finetune", "--top-layers", "2", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--top-layers"));
    let o = equirun(&[
        "regard",
        "finetune",
        "--encoder",
        "mpnet",
        "--train-word-embeddings",
        "--data-dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--train-word-embeddings"));
    // no encoder where it is looked for: exit 2 naming the installer
    let missing = tmp.path().join("no-mpnet");
    let o = equirun(&[
        "regard",
        "eval",
        "--scorer",
        "mpnet-ft",
        "--scorer-dir",
        s,
        "--mpnet-dir",
        missing.to_str().unwrap(),
        "--data-dir",
        d,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("scripts/setup_mpnet.sh") && err.contains("--mpnet-dir"),
        "{err}"
    );
}
