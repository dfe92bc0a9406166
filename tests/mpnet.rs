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
