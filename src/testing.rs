//! Helpers shared by the test suites: seeded tensors, comparisons, tiny datasets. They panic
//! on error, as test code does.

use candle_core::{Device, Tensor};
use std::path::Path;

/// A tensor of N(0, 1) values from a ChaCha RNG seeded with `seed`.
pub fn randn(seed: u64, shape: &[usize]) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let d = Normal::new(0f32, 1.0).unwrap();
    Tensor::from_vec(
        (0..n).map(|_| d.sample(&mut rng)).collect::<Vec<_>>(),
        shape,
        &Device::Cpu,
    )
    .unwrap()
}

/// max |t| over all elements.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| over all elements (same shapes required).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    max_abs(&(a - b).unwrap())
}

/// Every word of the CIFAR templates and CIFAR-10 class names (lower case), plus ".": the
/// vocabulary of a tiny word-level CLIP tokenizer that covers the CIFAR-10 prompts.
pub fn cifar10_prompt_words() -> Vec<String> {
    let text = crate::data::prompts::cifar_templates().join(" ")
        + " "
        + &crate::data::prompts::cifar10_classes().join(" ");
    let mut words: Vec<String> = text
        .replace("{}", " ")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.push(".".into());
    words
}

/// A tiny CLIP snapshot whose tokenizer covers the CIFAR-10 prompts.
pub fn write_tiny_clip_for_cifar10(dir: &Path, seed: u64) {
    let words = cifar10_prompt_words();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    crate::models::clip::write_tiny_snapshot(dir, seed, &refs).unwrap();
}

/// `n` random CIFAR-10 records (labels `i % 10`) at `root/cifar-10-batches-bin/test_batch.bin`.
pub fn write_tiny_cifar10(root: &Path, n: usize, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = Vec::with_capacity(n * 3073);
    for i in 0..n {
        bytes.push((i % 10) as u8);
        bytes.extend((0..3072).map(|_| rng.random::<u8>()));
    }
    let d = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("test_batch.bin"), bytes).unwrap();
}

/// Writes an idx file (u8 data) with the given dims.
pub fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut b = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

/// A tiny Fashion-MNIST in `dir` (train and t10k idx files): 28×28 images of a class-dependent
/// horizontal bar plus noise, labels cycling 0..9.
pub fn write_tiny_fashion(dir: &Path, n_train: usize, n_test: usize) {
    use rand::{Rng, SeedableRng};
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut px = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let l = (i % 10) as u8;
            for r in 0..28 {
                for c in 0..28 {
                    let bar = r == 2 + 2 * l as usize && (4..24).contains(&c);
                    px.push(if bar { 220 } else { rng.random_range(0..40u8) });
                }
            }
            labels.push(l);
        }
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            &[n as u32, 28, 28],
            &px,
        );
        write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte")),
            &[n as u32],
            &labels,
        );
    }
}

/// Runs the `equirun` binary `bin` (pass `env!("CARGO_BIN_EXE_equirun")`) with `args`, offline,
/// without progress bars and without a `$EQUIRUN_DATA` inherited from the caller.
pub fn run_equirun(bin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin)
        .args(args)
        .env("EQUIRUN_NO_PROGRESS", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("EQUIRUN_DATA")
        .output()
        .expect("running the equirun binary")
}

/// Panics with the exit code and stderr unless the command succeeded.
pub fn assert_success(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `equirun cnn` on a tiny Fashion-MNIST folder (`write_tiny_fashion`) at test scale: tiny
/// validation, one pretraining epoch, 2 × 2 finetuning iterations of batch 4. Tests append their
/// own flags (methods, λ or canon phases, group).
pub fn tiny_cnn_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "cnn",
        "--data-dir",
        data,
        "--out",
        out,
        "--val-size",
        "20",
        "--val-eval",
        "20",
        "--pretrain-epochs",
        "1",
        "--pretrain-batch-size",
        "16",
        "--rounds",
        "2",
        "--iters",
        "2",
        "--batch-size",
        "4",
        "--eval-batch-size",
        "16",
    ]
}

/// Writes a tiny random llama GGUF (2 blocks, d = 32, 4 heads over 2 KV heads, FFN 64) with a
/// byte-level vocabulary of the 94 printable ASCII characters plus `Ġ` (space) and no merges.
/// Matrices are stored as `Q8_0` (dequantised on load like a real file); `tied`: no
/// `output.weight`, the output layer reuses the token embedding.
pub fn write_tiny_llama_gguf(path: &Path, seed: u64, tied: bool) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let (d, heads, kv, ffn, blocks) = (32usize, 4usize, 2usize, 64usize, 2usize);
    let mut tokens: Vec<String> = ('!'..='~').map(String::from).collect();
    tokens.push("Ġ".into());
    let vocab = tokens.len();
    let hd = d / heads;
    let mut s = seed;
    let mut mat = |rows: usize, cols: usize, scale: f64, dt: GgmlDType| {
        s += 1;
        let t = (randn(s, &[rows, cols]) * scale).unwrap();
        QTensor::quantize(&t, dt).unwrap()
    };
    let mut named: Vec<(String, QTensor)> = Vec::new();
    named.push((
        "token_embd.weight".into(),
        mat(vocab, d, 1.0, GgmlDType::F32),
    ));
    for b in 0..blocks {
        let p = format!("blk.{b}");
        let norm = |seed: u64| {
            let t = ((randn(seed, &[d]) * 0.1).unwrap() + 1.0).unwrap();
            QTensor::quantize(&t, GgmlDType::F32).unwrap()
        };
        named.push((format!("{p}.attn_norm.weight"), norm(seed + 100 + b as u64)));
        named.push((format!("{p}.ffn_norm.weight"), norm(seed + 200 + b as u64)));
        for (n, rows, cols) in [
            ("attn_q", heads * hd, d),
            ("attn_k", kv * hd, d),
            ("attn_v", kv * hd, d),
            ("attn_output", d, heads * hd),
            ("ffn_gate", ffn, d),
            ("ffn_up", ffn, d),
            ("ffn_down", d, ffn),
        ] {
            let scale = 1.0 / (cols as f64).sqrt();
            named.push((
                format!("{p}.{n}.weight"),
                mat(rows, cols, scale, GgmlDType::Q8_0),
            ));
        }
    }
    named.push((
        "output_norm.weight".into(),
        QTensor::quantize(
            &Tensor::ones(d, candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap(),
    ));
    if !tied {
        named.push(("output.weight".into(), mat(vocab, d, 0.3, GgmlDType::F32)));
    }
    use gguf_file::Value as V;
    let md: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("general.name", V::String("tiny-llama".into())),
        ("llama.block_count", V::U32(blocks as u32)),
        ("llama.embedding_length", V::U32(d as u32)),
        ("llama.feed_forward_length", V::U32(ffn as u32)),
        ("llama.attention.head_count", V::U32(heads as u32)),
        ("llama.attention.head_count_kv", V::U32(kv as u32)),
        ("llama.context_length", V::U32(64)),
        ("llama.rope.dimension_count", V::U32(hd as u32)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            V::Array(tokens.into_iter().map(V::String).collect()),
        ),
        ("tokenizer.ggml.merges", V::Array(Vec::new())),
        ("tokenizer.ggml.bos_token_id", V::U32(0)),
        ("tokenizer.ggml.eos_token_id", V::U32(1)),
    ];
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}
