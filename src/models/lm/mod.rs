//! The causal-language-model interface the generation wrappers use (GPT-2, GGUF llama).

pub mod gguf;
pub mod gpt2;
pub mod gpt2_tokenizer;
pub mod llama;
pub mod loader;

use anyhow::Result;
use candle_core::Tensor;

/// A causal LM holding one KV cache per row of a batch of independent sequences.
pub trait CausalLm {
    /// Vocabulary size of the logits.
    fn vocab_size(&self) -> usize;
    /// Starts `n` new empty sequences (drops any cached state).
    fn reset(&mut self, n: usize) -> Result<()>;
    /// Appends `ids` (`[n, t]` u32, the same `t` for every row) to the `n` sequences and returns
    /// the f32 logits of each row's last position, `[n, vocab]`.
    fn step(&mut self, ids: &Tensor) -> Result<Tensor>;
    /// Tokens currently cached per row.
    fn cached_len(&self) -> usize;
    /// A short description for result JSON (architecture, size).
    fn describe(&self) -> String;
}

/// Adapts a [`CausalLm`] to the wrappers' [`crate::equi::BatchModel`]: called with the full
/// `[rows, T]` prefixes at every decoding step, it feeds only the new tokens to the KV caches
/// (and starts over whenever the rows are not an extension of the previous call).
pub struct Incremental<'a> {
    lm: std::cell::RefCell<&'a mut dyn CausalLm>,
    last: std::cell::RefCell<Option<Vec<Vec<u32>>>>,
    /// Token positions processed (rows × new tokens), for throughput accounting.
    pub token_steps: std::cell::Cell<usize>,
}

impl<'a> Incremental<'a> {
    pub fn new(lm: &'a mut dyn CausalLm) -> Self {
        Incremental {
            lm: std::cell::RefCell::new(lm),
            last: std::cell::RefCell::new(None),
            token_steps: std::cell::Cell::new(0),
        }
    }
}

impl crate::equi::BatchModel for Incremental<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.to_vec2::<u32>()?;
        let (r, t) = x.dims2()?;
        let mut last = self.last.borrow_mut();
        let fed = match last.as_ref() {
            Some(prev)
                if prev.len() == r
                    && prev[0].len() < t
                    && prev.iter().zip(&rows).all(|(p, q)| q.starts_with(p)) =>
            {
                prev[0].len()
            }
            _ => 0,
        };
        let mut lm = self.lm.borrow_mut();
        if fed == 0 {
            lm.reset(r)?;
        }
        let new = x.narrow(1, fed, t - fed)?.contiguous()?;
        let logits = lm.step(&new)?;
        self.token_steps.set(self.token_steps.get() + r * (t - fed));
        *last = Some(rows);
        Ok(logits)
    }
}

/// Greedy generation throughput with the KV cache: `batch` random prompts of `prompt_len`
/// tokens, `new_tokens` steps (prefill included), one warm-up, best and median of 3 runs.
pub fn bench_greedy(
    lm: &mut dyn CausalLm,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    seed: u64,
) -> Result<serde_json::Value> {
    use rand::Rng;
    let dev = candle_core::Device::Cpu;
    let v = lm.vocab_size() as u32;
    let mut rng = crate::output::rng_for(seed, "bench-lm");
    let prompt: Vec<u32> = (0..batch * prompt_len)
        .map(|_| rng.random_range(0..v - 1))
        .collect();
    let prompt = Tensor::from_vec(prompt, (batch, prompt_len), &dev)?;
    let mut run = |n_new: usize| -> Result<f64> {
        let t0 = std::time::Instant::now();
        lm.reset(batch)?;
        let mut logits = lm.step(&prompt)?;
        for _ in 1..n_new {
            let next = logits.argmax(1)?.unsqueeze(1)?.contiguous()?;
            logits = lm.step(&next)?;
        }
        let _ = logits.argmax(1)?;
        Ok(t0.elapsed().as_secs_f64())
    };
    run(4.min(new_tokens))?;
    let mut times: Vec<f64> = (0..3).map(|_| run(new_tokens)).collect::<Result<_>>()?;
    times.sort_by(|a, b| a.total_cmp(b));
    let tokens = (batch * new_tokens) as f64;
    Ok(serde_json::json!({
        "framework": "equirun-candle", "task": "greedy_generate", "model": lm.describe(),
        "tokens_per_s": tokens / times[0], "tokens_per_s_median": tokens / times[1],
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "seconds": times,
    }))
}
